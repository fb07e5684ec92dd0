/* matmul_scalar.c — reference kernels in portable C (FORMAT.md §4.3, §4.5).
 *
 * These define the results: SIMD kernels reproduce the integer group sums exactly and, through the
 * canonical epilogue of kernels.h (y = Σ_g in group order of (float)acc_g · (d_w·d_x), no fused
 * multiply-add), the float outputs bit for bit too.
 */
#include "kernels.h"

#include <string.h>

/* int4 two's complement nibble -> int */
static inline int nib_lo(uint8_t b) { return (int)((b & 0x0F) ^ 8) - 8; }
static inline int nib_hi(uint8_t b) { return (int)((b >> 4) ^ 8) - 8; }

static inline float load_fp16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return sq_fp16_to_fp32(h);
}

/* Σ q_x·q_w over one group (FORMAT.md §3.1: byte i = values i and i + G/2). */
static inline int32_t sq4_dot(const uint8_t *nib, const uint8_t *qx, int G) {
    const int h = G / 2;
    int32_t s = 0;
    for (int i = 0; i < h; i++) s += (int32_t)qx[i] * nib_lo(nib[i]) + (int32_t)qx[i + h] * nib_hi(nib[i]);
    return s;
}

void sq_sq4_group_sums(const uint8_t *data, int rows, int K, int G, int32_t *wsum) {
    const int ng = K / G;
    const size_t bs = 2 + (size_t)G / 2;
    for (size_t rg = 0; rg < (size_t)rows * ng; rg++) {
        const uint8_t *nib = data + rg * bs + 2;
        int32_t s = 0;
        for (int i = 0; i < G / 2; i++) s += nib_lo(nib[i]) + nib_hi(nib[i]);
        wsum[rg] = s;
    }
}

static void group_sums_sq4_scalar(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, int32_t *acc) {
    const int K = w->K, G = w->G, ng = K / G;
    const size_t bs = 2 + (size_t)G / 2, row_bytes = bs * ng;
    for (int t = 0; t < x->n_tok; t++)
        for (int r = r0; r < r1; r++)
            for (int g = 0; g < ng; g++) {
                const uint8_t *blk = w->data + (size_t)r * row_bytes + g * bs;
                const uint8_t *qx = x->q + (size_t)t * K + (size_t)g * G;
                int32_t s = sq4_dot(blk + 2, qx, G) - x->z[(size_t)t * ng + g] * w->wsum[(size_t)r * ng + g];
                acc[(size_t)t * w->rows * ng + (size_t)r * ng + g] = s;
            }
}

static void matmul_sq4_scalar(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, float *y, int ldy) {
    const int K = w->K, G = w->G, ng = K / G, nt = x->n_tok;
    const size_t bs = 2 + (size_t)G / 2, row_bytes = bs * ng;
    for (int r = r0; r < r1; r++) {
        for (int t = 0; t < nt; t++) y[(size_t)t * ldy + r] = 0.0f;
        for (int g = 0; g < ng; g++) {
            const uint8_t *blk = w->data + (size_t)r * row_bytes + g * bs;
            const float dw = load_fp16(blk);
            const int32_t ws = w->wsum[(size_t)r * ng + g];
            for (int t = 0; t < nt; t++) {
                const uint8_t *qx = x->q + (size_t)t * K + (size_t)g * G;
                int32_t acc = sq4_dot(blk + 2, qx, G) - x->z[(size_t)t * ng + g] * ws;
                y[(size_t)t * ldy + r] += (float)acc * (dw * x->d[(size_t)t * ng + g]);
            }
        }
    }
}

static void matmul_q8_scalar(const sq_q8_matrix *w, const sq_q8act *x, int r0, int r1, float *y, int ldy) {
    const int K = w->K, nb = K / 32, nt = x->n_tok;
    const size_t row_bytes = (size_t)34 * nb;
    for (int r = r0; r < r1; r++) {
        for (int t = 0; t < nt; t++) {
            const uint8_t *row = w->data + (size_t)r * row_bytes;
            float sum = 0.0f;
            for (int b = 0; b < nb; b++) {
                const int8_t *qw = (const int8_t *)(row + (size_t)b * 34 + 2);
                const int8_t *qx = x->q + (size_t)t * K + (size_t)b * 32;
                int32_t s = 0;
                for (int j = 0; j < 32; j++) s += (int32_t)qw[j] * qx[j];
                sum += (float)s * (load_fp16(row + (size_t)b * 34) * x->d[(size_t)t * nb + b]);
            }
            y[(size_t)t * ldy + r] = sum;
        }
    }
}

const sq_kernel_table sq_kernels_scalar = {
    .name = "scalar",
    .matmul_sq4 = matmul_sq4_scalar,
    .matmul_q8 = matmul_q8_scalar,
    .group_sums_sq4 = group_sums_sq4_scalar,
    .quantize_act = sq_quantize_act_scalar,
    .quantize_q8act = sq_quantize_q8act_scalar,
};
