/* spectral.h — the low-frequency (DFT) side branch of a linear layer, FORMAT.md §3.2 (internal).
 *
 * axis "in":  y[o] += Σ_{k<K_o} a_ok c_k + b_ok s_k,  c_k = Σ_j x_j cos(2πkj/N), s_k = Σ_j x_j sin(2πkj/N)
 * axis "out": z^a_k = Σ_j a_jk x_j, z^b_k = Σ_j b_jk x_j (over channels j with K_j > k),
 *             y[o] += Σ_k z^a_k cos(2πko/M) + z^b_k sin(2πko/M)
 * Both run in two phases: a projection per token (phase 1: c/s or z, 2·k_used floats) and an
 * application per output row (phase 2) that the matmul tasks run on the rows they own.
 */
#ifndef SQ_SPECTRAL_H
#define SQ_SPECTRAL_H

#include <stdint.h>

#include "specquant.h"

enum { SQ_SPEC_IN = 0, SQ_SPEC_OUT = 1 };

/* cos/sin(2πkj/L) for j < L, k < K, computed once at load, interleaved per j:
 * cs[j*2K + 2k] = cos(2πkj/L), cs[j*2K + 2k + 1] = sin(2πkj/L). Every phase then works on
 * contiguous (cos, sin) pairs that line up with the file's (a, b) pairs. */
typedef struct {
    int L, K;
    float *cs;
} sq_basis;

sq_status sq_basis_init(sq_basis *b, int L, int K);
void sq_basis_free(sq_basis *b);

typedef struct {
    int axis;               /* SQ_SPEC_IN / SQ_SPEC_OUT */
    int channels;           /* C_out (in) or C_in (out) */
    int k_max;              /* stored K_max: stride of coef */
    int k_used;             /* max over channels of the (truncated) K: width of phase-1 output */
    const uint16_t *coef;   /* [channels][k_max][2] fp16 (a, b) pairs, from the file */
    int16_t *k;             /* per-channel K after runtime truncation (owned) */
    const sq_basis *basis;  /* length N = C_in (in) or M = C_out (out), basis->K >= k_used */
} sq_spectral;

/* Validates each channel's K (0..k_max) and truncates it to the smallest K whose energy
 * Σ_{k<K}(a²+b²) reaches tau of the channel's total (tau = 1: keep all). basis is set later. */
sq_status sq_spectral_init(sq_spectral *s, int axis, const uint16_t *coef, const int16_t *k_file, int channels,
                           int k_max, float tau, const char *name);
void sq_spectral_free(sq_spectral *s);

/* Projections are interleaved like the coefficients: out[2k] = c_k (z^a_k), out[2k+1] = s_k (z^b_k).
 * Phase 1 for axis out, n_tok tokens of x (row stride x_stride). fbuf: scratch of 2*k_max floats. */
void sq_spectral_project(const sq_spectral *s, const float *x, int x_stride, int n_tok, float *out, int out_stride,
                         float *fbuf);
/* Phase 1 for axis in, shared by all layers with the same input: the first k (c, s) pairs. */
void sq_spectral_project_in(const sq_basis *b, int k, const float *x, int x_stride, int n_tok, float *out,
                            int out_stride);
/* Phase 2: y[t*ldy + o] += branch, rows o in [r0, r1), for n_tok tokens. fbuf: 2*k_max floats. */
void sq_spectral_apply(const sq_spectral *s, const float *proj, int proj_stride, int n_tok, int r0, int r1, float *y,
                       int ldy, float *fbuf);

#endif
