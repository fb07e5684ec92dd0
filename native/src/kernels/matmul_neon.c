/* matmul_neon.c — arm64 kernels with the dot-product extension (compiled with
 * -march=armv8.2-a+dotprod+fp16; dispatch.c picks them when HWCAP reports ASIMDDP).
 *
 * vdotq_s32 is s8 × s8, so activations become signed first: u4 values already fit, u8 values are
 * shifted by c = 128 (q ^ 0x80 = q − 128). Then
 *     acc_g = Σ (q_x − c)·q_w − (z − c)·Σ q_w,
 * the same integer as FORMAT.md §4.3. Weight nibbles sign-extend with shifts. Group sums are exact
 * int32 before the canonical float epilogue (kernels.h), so outputs match the scalar kernel bit for
 * bit (the build passes -ffp-contract=off so no multiply-add gets fused).
 * Decode reads each weight byte once; prefill unpacks a row's segment once and reuses it for every
 * token. Activation quantization uses the scalar code (it is O(K) per token).
 */
#include "kernels.h"

#include <arm_neon.h>
#include <string.h>

#define SEG_MAX 2048 /* prefill: values of one row unpacked at a time */

static inline float fp16_load(const uint8_t *p) {
    __fp16 h;
    memcpy(&h, p, 2);
    return (float)h;
}

/* 16 activation bytes as s8 (u8 acts: minus 128) */
static inline int8x16_t act16(const uint8_t *q, uint8x16_t flip) { return vreinterpretq_s8_u8(veorq_u8(vld1q_u8(q), flip)); }

/* Σ (q_x − c)·q_w over one group straight from the nibbles (G/2 is a multiple of 16). */
static inline int32_t group_dot(const uint8_t *nib, const uint8_t *qx, int G, uint8x16_t flip) {
    const int h = G / 2;
    int32x4_t acc0 = vdupq_n_s32(0), acc1 = vdupq_n_s32(0);
    for (int o = 0; o < h; o += 16) {
        const int8x16_t v = vreinterpretq_s8_u8(vld1q_u8(nib + o));
        const int8x16_t lo = vshrq_n_s8(vshlq_n_s8(v, 4), 4); /* arithmetic shift sign-extends */
        const int8x16_t hi = vshrq_n_s8(v, 4);
        acc0 = vdotq_s32(acc0, lo, act16(qx + o, flip));
        acc1 = vdotq_s32(acc1, hi, act16(qx + h + o, flip));
    }
    return vaddvq_s32(vaddq_s32(acc0, acc1));
}

/* Σ (q_x − c)·q_w over n values of an unpacked s8 row */
static inline int32_t dot_s8(const int8_t *w, const uint8_t *qx, int n, uint8x16_t flip) {
    int32x4_t acc0 = vdupq_n_s32(0), acc1 = vdupq_n_s32(0);
    int k = 0;
    for (; k + 32 <= n; k += 32) {
        acc0 = vdotq_s32(acc0, vld1q_s8(w + k), act16(qx + k, flip));
        acc1 = vdotq_s32(acc1, vld1q_s8(w + k + 16), act16(qx + k + 16, flip));
    }
    for (; k < n; k += 16) acc0 = vdotq_s32(acc0, vld1q_s8(w + k), act16(qx + k, flip));
    return vaddvq_s32(vaddq_s32(acc0, acc1));
}

/* group sums (acc != NULL) or outputs of rows [r0, r1), token by token, from the nibbles */
static void sq4_decode(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, float *y, int ldy, int32_t *acc) {
    const int K = w->K, G = w->G, ng = K / G, bs = 2 + G / 2, c = x->bits == 8 ? 128 : 0;
    const uint8x16_t flip = vdupq_n_u8((uint8_t)c);
    for (int t = 0; t < x->n_tok; t++) {
        const uint8_t *qx = x->q + (size_t)t * K;
        const int32_t *zt = x->z + (size_t)t * ng;
        const float *dt = x->d + (size_t)t * ng;
        for (int r = r0; r < r1; r++) {
            const uint8_t *row = w->data + (size_t)r * bs * ng;
            const int32_t *ws = w->wsum + (size_t)r * ng;
            float sum = 0.0f;
            for (int g = 0; g < ng; g++) {
                const uint8_t *blk = row + (size_t)g * bs;
                const int32_t s = group_dot(blk + 2, qx + (size_t)g * G, G, flip) - (zt[g] - c) * ws[g];
                if (acc) acc[(size_t)t * w->rows * ng + (size_t)r * ng + g] = s;
                else sum += (float)s * (fp16_load(blk) * dt[g]);
            }
            if (!acc) y[(size_t)t * ldy + r] = sum;
        }
    }
}

/* prefill: each row's segment is unpacked once, then dotted with every token */
static void sq4_prefill(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, float *y, int ldy, int32_t *acc) {
    const int K = w->K, G = w->G, ng = K / G, bs = 2 + G / 2, h = G / 2, c = x->bits == 8 ? 128 : 0;
    const int seg_groups = SEG_MAX / G;
    const uint8x16_t flip = vdupq_n_u8((uint8_t)c);
    int8_t buf[SEG_MAX] __attribute__((aligned(16)));
    float dw[SEG_MAX / 32];
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = w->data + (size_t)r * bs * ng;
        const int32_t *ws = w->wsum + (size_t)r * ng;
        for (int g0 = 0; g0 < ng; g0 += seg_groups) {
            const int ngs = ng - g0 < seg_groups ? ng - g0 : seg_groups;
            for (int gl = 0; gl < ngs; gl++) {
                const uint8_t *blk = row + (size_t)(g0 + gl) * bs;
                dw[gl] = fp16_load(blk);
                for (int o = 0; o < h; o += 16) {
                    const int8x16_t v = vreinterpretq_s8_u8(vld1q_u8(blk + 2 + o));
                    vst1q_s8(buf + gl * G + o, vshrq_n_s8(vshlq_n_s8(v, 4), 4));
                    vst1q_s8(buf + gl * G + h + o, vshrq_n_s8(v, 4));
                }
            }
            for (int t = 0; t < x->n_tok; t++) {
                const uint8_t *qx = x->q + (size_t)t * K + (size_t)g0 * G;
                const int32_t *zt = x->z + (size_t)t * ng + g0;
                const float *dt = x->d + (size_t)t * ng + g0;
                /* later segments continue the running sum: groups are added in order */
                float sum = g0 == 0 || acc ? 0.0f : y[(size_t)t * ldy + r];
                for (int gl = 0; gl < ngs; gl++) {
                    const int32_t s = dot_s8(buf + gl * G, qx + (size_t)gl * G, G, flip) - (zt[gl] - c) * ws[g0 + gl];
                    if (acc) acc[(size_t)t * w->rows * ng + (size_t)r * ng + g0 + gl] = s;
                    else sum += (float)s * (dw[gl] * dt[gl]);
                }
                if (!acc) y[(size_t)t * ldy + r] = sum;
            }
        }
    }
}

static int use_prefill(const sq_sq4_matrix *w, const sq_qact *x) { return x->n_tok >= 2 && w->G <= SEG_MAX; }

static void matmul_sq4_neon(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, float *y, int ldy) {
    if (use_prefill(w, x)) sq4_prefill(w, x, r0, r1, y, ldy, NULL);
    else sq4_decode(w, x, r0, r1, y, ldy, NULL);
}

static void group_sums_sq4_neon(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, int32_t *acc) {
    if (use_prefill(w, x)) sq4_prefill(w, x, r0, r1, NULL, 0, acc);
    else sq4_decode(w, x, r0, r1, NULL, 0, acc);
}

/* Q8_0 × Q8_0: s8·s8 is exactly what vdotq_s32 does; the canonical float epilogue runs per block. */
static void matmul_q8_neon(const sq_q8_matrix *w, const sq_q8act *x, int r0, int r1, float *y, int ldy) {
    const int K = w->K, nb = K / 32;
    const size_t row_bytes = (size_t)34 * nb;
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = w->data + (size_t)r * row_bytes;
        for (int t = 0; t < x->n_tok; t++) {
            const int8_t *qx = x->q + (size_t)t * K;
            const float *dx = x->d + (size_t)t * nb;
            float sum = 0.0f;
            for (int b = 0; b < nb; b++) {
                const uint8_t *blk = row + (size_t)b * 34;
                int32x4_t a = vdotq_s32(vdupq_n_s32(0), vld1q_s8((const int8_t *)blk + 2), vld1q_s8(qx + b * 32));
                a = vdotq_s32(a, vld1q_s8((const int8_t *)blk + 18), vld1q_s8(qx + b * 32 + 16));
                sum += (float)vaddvq_s32(a) * (fp16_load(blk) * dx[b]); /* exact block sum, block order */
            }
            y[(size_t)t * ldy + r] = sum;
        }
    }
}

const sq_kernel_table sq_kernels_neon = {
    .name = "neon",
    .matmul_sq4 = matmul_sq4_neon,
    .matmul_q8 = matmul_q8_neon,
    .group_sums_sq4 = group_sums_sq4_neon,
    .quantize_act = sq_quantize_act_scalar,
    .quantize_q8act = sq_quantize_q8act_scalar,
};
