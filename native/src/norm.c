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

#if defined(__x86_64__) && defined(__GNUC__)
#include "vexp.h"

__attribute__((target("avx2,fma"))) void sq_silu_mul_avx2(float *g, const float *u, int n) {
    int i = 0;
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 e = sq_exp256(_mm256_sub_ps(zero, x));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    sq_silu_mul(g + i, u + i, n - i);
}
#else
void sq_silu_mul_avx2(float *g, const float *u, int n) { sq_silu_mul(g, u, n); }
#endif

void sq_add(float *x, const float *y, int n) {
    for (int i = 0; i < n; i++) x[i] += y[i];
}
