/* test_activations.c — Gemma 2's elementwise ops against double-precision formulas: GELU with the
 * tanh approximation (times up) and tanh soft-capping, over a wide range of inputs, including
 * values far past the cap and the GELU's saturation; SiLU·mul as a control. */
#include <math.h>
#include <stdlib.h>

#include "norm.h"
#include "test_util.h"

static double gelu_tanh(double x) { return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))); }

/* |got - want| <= tol · max(1, |want|) */
static int off(double got, double want, double tol) { return fabs(got - want) > tol * (fabs(want) > 1 ? fabs(want) : 1); }

static void check_gelu(int n) {
    float *g = xmalloc((size_t)n * 4), *u = xmalloc((size_t)n * 4), *x = xmalloc((size_t)n * 4);
    for (int i = 0; i < n; i++) x[i] = g[i] = 4.0f * rnd_normal(), u[i] = rnd_normal();
    g[0] = x[0] = 30.0f, g[1] = x[1] = -30.0f, g[2] = x[2] = 0.0f; /* saturated both ways, and zero */
    sq_gelu_tanh_mul(g, u, n);
    int bad = 0;
    for (int i = 0; i < n; i++) bad += off(g[i], gelu_tanh(x[i]) * u[i], 2e-6);
    CHECK(!bad, "gelu_tanh_mul: %d of %d off", bad, n);
    free(g), free(u), free(x);
}

static void check_softcap(int n, float cap) {
    float *v = xmalloc((size_t)n * 4), *x = xmalloc((size_t)n * 4);
    for (int i = 0; i < n; i++) x[i] = v[i] = 3.0f * cap * rnd_normal();
    v[0] = x[0] = 1e30f, v[1] = x[1] = -1e30f; /* far past the cap: exactly ±cap */
    sq_softcap(v, n, cap);
    int bad = 0;
    for (int i = 0; i < n; i++) bad += off(v[i], cap * tanh((double)x[i] / cap), 2e-6) || fabsf(v[i]) > cap;
    CHECK(!bad, "softcap %g: %d of %d off", (double)cap, bad, n);
    CHECK(v[0] == cap && v[1] == -cap, "softcap %g of ±1e30: %g %g", (double)cap, (double)v[0], (double)v[1]);
    free(v), free(x);
}

static void check_silu(int n) {
    float *g = xmalloc((size_t)n * 4), *u = xmalloc((size_t)n * 4), *x = xmalloc((size_t)n * 4);
    for (int i = 0; i < n; i++) x[i] = g[i] = 4.0f * rnd_normal(), u[i] = rnd_normal();
    sq_silu_mul(g, u, n);
    int bad = 0;
    for (int i = 0; i < n; i++) bad += off(g[i], x[i] / (1.0 + exp(-(double)x[i])) * u[i], 2e-6);
    CHECK(!bad, "silu_mul: %d of %d off", bad, n);
    free(g), free(u), free(x);
}

int main(void) {
    check_gelu(4099);
    check_silu(4099);
    check_softcap(4099, 50.0f);
    check_softcap(1001, 30.0f);
    check_softcap(77, 0.5f);
    return test_finish("test_activations");
}
