/* norm.h — RMSNorm and the elementwise ops of a block (internal). */
#ifndef SQ_NORM_H
#define SQ_NORM_H

/* y = x / sqrt(mean(x²) + eps) · w  (y may alias x). The sum of squares is accumulated in double:
 * it is the one reduction here whose rounding would otherwise grow with the width. */
void sq_rmsnorm(const float *x, const float *w, float *y, int n, float eps);
/* g[i] = silu(g[i]) · u[i] */
void sq_silu_mul(float *g, const float *u, int n);
/* g[i] = gelu_tanh(g[i]) · u[i]: GELU with the tanh approximation (PyTorch's approximate="tanh") */
void sq_gelu_tanh_mul(float *g, const float *u, int n);
/* x[i] = cap · tanh(x[i] / cap): Gemma 2's soft-capping of attention scores and logits */
void sq_softcap(float *x, int n, float cap);
/* x[i] += y[i] */
void sq_add(float *x, const float *y, int n);

#endif
