/* spectral.c — the DFT side branch: basis tables, per-channel K truncation, both phases. */
#include "spectral.h"

#include <math.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "dotf.h"
#include "fp16.h"

/* Basis tables above this size are refused: a corrupt K_max or length must not make us allocate
 * (or, with overcommit, touch) gigabytes. Real branches need well under a megabyte. */
#define MAX_BASIS_BYTES (256u << 20)

sq_status sq_basis_init(sq_basis *b, int L, int K) {
    memset(b, 0, sizeof *b);
    if (L < 1 || K < 1 || (double)L * K * 2 * sizeof(float) > MAX_BASIS_BYTES)
        return sq_set_error(SQ_ERR_FORMAT, "spectral branch too large (length %d, K %d)", L, K);
    b->cs = malloc((size_t)L * K * 2 * sizeof(float));
    if (!b->cs) return sq_set_error(SQ_ERR_NOMEM, "out of memory for the spectral basis");
    b->L = L;
    b->K = K;
    /* (k*j) mod L keeps the argument small, so the tables are exact to float rounding. */
    for (int j = 0; j < L; j++)
        for (int k = 0; k < K; k++) {
            double ang = 2.0 * M_PI * (double)(((int64_t)k * j) % L) / (double)L;
            b->cs[(size_t)j * 2 * K + 2 * k] = (float)cos(ang);
            b->cs[(size_t)j * 2 * K + 2 * k + 1] = (float)sin(ang);
        }
    return SQ_OK;
}

void sq_basis_free(sq_basis *b) {
    free(b->cs);
    memset(b, 0, sizeof *b);
}

/* Smallest K whose cumulative (a²+b²) energy, in frequency order, reaches tau of the total. */
static int truncate_k(const uint16_t *c, int k, float tau) {
    if (tau >= 1.0f || k == 0) return k;
    double total = 0, run = 0;
    for (int i = 0; i < 2 * k; i++) {
        double v = sq_fp16_to_fp32_lut(c[i]);
        total += v * v;
    }
    if (!(total > 0)) return 0;
    for (int i = 0; i < k; i++) {
        double a = sq_fp16_to_fp32_lut(c[2 * i]), bb = sq_fp16_to_fp32_lut(c[2 * i + 1]);
        run += a * a + bb * bb;
        if (run >= tau * total) return i + 1;
    }
    return k;
}

sq_status sq_spectral_init(sq_spectral *s, int axis, const uint16_t *coef, const int16_t *k_file, int channels,
                           int k_max, float tau, const char *name) {
    memset(s, 0, sizeof *s);
    s->k = malloc((size_t)(channels > 0 ? channels : 1) * sizeof *s->k);
    if (!s->k) return sq_set_error(SQ_ERR_NOMEM, "out of memory for %s", name);
    s->axis = axis;
    s->channels = channels;
    s->k_max = k_max;
    s->coef = coef;
    for (int c = 0; c < channels; c++) {
        int16_t k = k_file[c]; /* tensor data is at least 8-byte aligned (gguf.c) */
        if (k < 0 || k > k_max) {
            sq_spectral_free(s);
            return sq_set_error(SQ_ERR_FORMAT, "%s: channel %d has K = %d outside 0..%d", name, c, k, k_max);
        }
        int kt = truncate_k(coef + (size_t)c * k_max * 2, k, tau);
        s->k[c] = (int16_t)kt;
        if (kt > s->k_used) s->k_used = kt;
    }
    return SQ_OK;
}

void sq_spectral_free(sq_spectral *s) {
    free(s->k);
    s->k = NULL;
}

/* Coefficient pairs of channel c as floats (fbuf: 2*k_max floats). */
static const float *channel_coef(const sq_spectral *s, int c, float *fbuf) {
    int k = s->k[c];
    if (k) sq_fp16_to_fp32_row(s->coef + (size_t)c * s->k_max * 2, fbuf, 2 * k);
    return fbuf;
}

static void axpy(float a, const float *x, float *y, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

void sq_spectral_project_in(const sq_basis *b, int k, const float *x, int x_stride, int n_tok, float *out,
                            int out_stride) {
    for (int t = 0; t < n_tok; t++) {
        float *o = out + (size_t)t * out_stride;
        const float *xt = x + (size_t)t * x_stride;
        memset(o, 0, (size_t)2 * k * sizeof *o);
        for (int j = 0; j < b->L; j++) axpy(xt[j], b->cs + (size_t)j * 2 * b->K, o, 2 * k);
    }
}

void sq_spectral_project(const sq_spectral *s, const float *x, int x_stride, int n_tok, float *out, int out_stride,
                         float *fbuf) {
    /* axis out: z[0..2K_j) += x_j · (a, b)_j, channel by channel (coefficients converted once). */
    for (int t = 0; t < n_tok; t++) memset(out + (size_t)t * out_stride, 0, (size_t)2 * s->k_used * sizeof *out);
    for (int j = 0; j < s->channels; j++) {
        int k = s->k[j];
        if (!k) continue;
        const float *c = channel_coef(s, j, fbuf);
        for (int t = 0; t < n_tok; t++) axpy(x[(size_t)t * x_stride + j], c, out + (size_t)t * out_stride, 2 * k);
    }
}

void sq_spectral_apply(const sq_spectral *s, const float *proj, int proj_stride, int n_tok, int r0, int r1, float *y,
                       int ldy, float *fbuf) {
    if (s->axis == SQ_SPEC_IN) {
        for (int o = r0; o < r1; o++) {
            int k = s->k[o];
            if (!k) continue;
            const float *c = channel_coef(s, o, fbuf);
            for (int t = 0; t < n_tok; t++) y[(size_t)t * ldy + o] += sq_dotf(c, proj + (size_t)t * proj_stride, 2 * k);
        }
        return;
    }
    const sq_basis *b = s->basis;
    for (int o = r0; o < r1; o++) {
        const float *bo = b->cs + (size_t)o * 2 * b->K;
        for (int t = 0; t < n_tok; t++) y[(size_t)t * ldy + o] += sq_dotf(proj + (size_t)t * proj_stride, bo, 2 * s->k_used);
    }
}
