/* dotf.h — the portable fp32 dot product shared by the scalar paths (attention, float linear
 * layers, the spectral branch). Header-only so that each caller's compiler inlines and
 * vectorises it in place. */
#ifndef SQ_DOTF_H
#define SQ_DOTF_H

/* Eight independent partial sums, combined in one fixed tree: an order the compiler can
 * vectorise that is the same on every machine (no FMA contraction: -ffp-contract=off). */
static inline float sq_dotf(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int u = 0; u < 8; u++) acc[u] += a[i + u] * b[i + u];
    float r = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++) r += a[i] * b[i];
    return r;
}

#endif /* SQ_DOTF_H */
