/* norm.c — RMSNorm, SiLU·mul, residual add. */
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

void sq_add(float *x, const float *y, int n) {
    for (int i = 0; i < n; i++) x[i] += y[i];
}
