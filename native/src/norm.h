/* norm.h — RMSNorm and the elementwise ops of a block (internal). */
#ifndef SQ_NORM_H
#define SQ_NORM_H

/* y = x / sqrt(mean(x²) + eps) · w  (y may alias x). The sum of squares is accumulated in double:
 * it is the one reduction here whose rounding would otherwise grow with the width. */
void sq_rmsnorm(const float *x, const float *w, float *y, int n, float eps);
/* g[i] = silu(g[i]) · u[i] */
void sq_silu_mul(float *g, const float *u, int n);
/* x[i] += y[i] */
void sq_add(float *x, const float *y, int n);

#endif
