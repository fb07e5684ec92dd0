/* norm.c — RMSNorm, SiLU·mul, GELU-tanh·mul, soft-capping, residual add. */
#include "norm.h"

#include <math.h>

void sq_rmsnorm(const float *x, const float *w, float *y, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++) y[i] = x[i] * scale * w[i];
}

void sq_silu_mul(float *g, const float *u, int n) {
    for (int i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void sq_gelu_tanh_mul(float *g, const float *u, int n) {
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    for (int i = 0; i < n; i++) {
        float x = g[i];
        g[i] = 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x))) * u[i];
    }
}

void sq_softcap(float *x, int n, float cap) {
    /* libm tanhf and a true division, as transformers computes it: a few logits near the cap
     * decide greedy tokens */
    for (int i = 0; i < n; i++) x[i] = cap * tanhf(x[i] / cap);
}

void sq_add(float *x, const float *y, int n) {
    for (int i = 0; i < n; i++) x[i] += y[i];
}
