/* quantize_act.c — per-token activation quantization (FORMAT.md §4.1–4.2) and Q8_0 activations.
 *
 * The scalar functions here are the reference every SIMD version must reproduce bit for bit.
 * Rounding is round-half-to-even via the 1.5·2^23 trick (valid for |v| < 2^22, which the clamp
 * ranges guarantee), so the result does not depend on libm and compiles to plain adds.
 */
#include "kernels.h"

#include <math.h>

#define SQ_RINT_MAGIC 12582912.0f /* 1.5 * 2^23 */

/* Round half to even for |v| < 2^22; NaN stays NaN. */
static inline float rint_small(float v) { return (v + SQ_RINT_MAGIC) - SQ_RINT_MAGIC; }

/* rint(v) clamped to [lo, hi]; NaN -> lo. Clamping first keeps rint_small in its valid range. */
static inline float rint_clamp(float v, float lo, float hi) {
    if (!(v >= lo)) return lo;
    if (v > hi) return hi;
    float r = rint_small(v);
    return r > hi ? hi : r;
}

void sq_wht_inplace(float *v, int n) {
    for (int h = 1; h < n; h *= 2)
        for (int i = 0; i < n; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
}

/* Quantizes one group v[0..G) into q, returns d and z (FORMAT.md §4.2). */
static void quantize_group(const float *v, int G, float L, uint8_t *q, float *d_out, int32_t *z_out) {
    float mn = 0.0f, mx = 0.0f;
    for (int j = 0; j < G; j++) {
        mn = v[j] < mn ? v[j] : mn;
        mx = v[j] > mx ? v[j] : mx;
    }
    float d = (mx - mn) / L;
    float id = d > 0.0f ? 1.0f / d : 0.0f;
    float z = rint_clamp(-mn * id, 0.0f, L);
    for (int j = 0; j < G; j++) {
        /* rint(v*id) + z, then clamp: identical to clamping the sum since z is an integer */
        float r = rint_clamp(v[j] * id, -L, L) + z;
        r = r < 0.0f ? 0.0f : (r > L ? L : r);
        q[j] = (uint8_t)r;
    }
    *d_out = d;
    *z_out = (int32_t)z;
}

void sq_quantize_act_scalar(const float *x, int t0, int t1, int wht, sq_qact *out) {
    const int K = out->K, G = out->G, ng = K / G;
    const float L = (float)((1 << out->bits) - 1);
    float buf[SQ_WHT_MAX_G];
    for (int t = t0; t < t1; t++) {
        for (int g = 0; g < ng; g++) {
            const float *v = x + (size_t)t * K + (size_t)g * G;
            if (wht) {
                for (int j = 0; j < G; j++) buf[j] = v[j];
                sq_wht_inplace(buf, G);
                v = buf;
            }
            quantize_group(v, G, L, out->q + (size_t)t * K + (size_t)g * G, &out->d[(size_t)t * ng + g],
                           &out->z[(size_t)t * ng + g]);
        }
    }
}

void sq_quantize_q8act_scalar(const float *x, int t0, int t1, sq_q8act *out) {
    const int K = out->K, nb = K / 32;
    for (int t = t0; t < t1; t++) {
        for (int b = 0; b < nb; b++) {
            const float *v = x + (size_t)t * K + (size_t)b * 32;
            int8_t *q = out->q + (size_t)t * K + (size_t)b * 32;
            float amax = 0.0f;
            for (int j = 0; j < 32; j++) {
                float a = fabsf(v[j]);
                amax = a > amax ? a : amax;
            }
            float d = amax / 127.0f;
            float id = d > 0.0f ? 1.0f / d : 0.0f;
            for (int j = 0; j < 32; j++) q[j] = (int8_t)rint_clamp(v[j] * id, -127.0f, 127.0f);
            out->d[(size_t)t * nb + b] = d;
        }
    }
}

void sq_quantize_act(const float *x, int t0, int t1, int wht, sq_qact *out) {
    sq_kernels()->quantize_act(x, t0, t1, wht, out);
}

void sq_quantize_q8act(const float *x, int t0, int t1, sq_q8act *out) {
    sq_kernels()->quantize_q8act(x, t0, t1, out);
}
