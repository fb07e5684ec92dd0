/* fp16.c — IEEE binary16 <-> binary32 (fp16.h): portable bit conversion, and fast fp16 -> fp32
 * rows through a table or F16C.
 *
 * The portable functions use bit manipulation only (no FPU tricks), so the result does not depend
 * on the compiler's -ffast-math or flush-to-zero settings and NaN payloads survive a round trip.
 */
#include "fp16.h"

#include <pthread.h>
#include <string.h>

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float sq_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    if (exp == 0x1F) /* inf / NaN: keep the payload */
        return bits_f32(sign | 0x7F800000u | (man << 13));
    if (exp != 0)
        return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
    if (man == 0)
        return bits_f32(sign);
    /* subnormal half: normalise; value = man * 2^-24 */
    int e = -1;
    do {
        man <<= 1;
        e++;
    } while ((man & 0x400u) == 0);
    return bits_f32(sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FFu) << 13));
}

uint16_t sq_fp32_to_fp16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t exp = (u >> 23) & 0xFFu;
    uint32_t man = u & 0x7FFFFFu;
    if (exp == 0xFF) { /* inf / NaN: NaN stays NaN (quiet bit forced if the payload is lost) */
        if (man == 0) return sign | 0x7C00u;
        uint16_t m = (uint16_t)(man >> 13);
        return sign | 0x7C00u | (m ? m : 0x200u);
    }
    int e = (int)exp - 127 + 15;
    if (e >= 0x1F) return sign | 0x7C00u; /* overflow -> inf */
    if (e <= 0) {                          /* half subnormal or zero */
        if (e < -10) return sign;          /* below half the smallest subnormal: rounds to 0 */
        uint32_t m = man | 0x800000u;      /* implicit bit */
        int shift = 14 - e;                /* 14..24 */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return sign | (uint16_t)q; /* q may carry into the exponent field: that is correct */
    }
    uint32_t q = ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++; /* carry may reach inf: correct */
    return sign | (uint16_t)q;
}

/* ---- table and F16C rows ---------------------------------------------------------------------- */

static float g_lut[65536];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_f16c;

static void build(void) {
    for (uint32_t i = 0; i < 65536; i++) g_lut[i] = sq_fp16_to_fp32((uint16_t)i);
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    g_f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
#endif
}

void sq_fp16_init(void) { pthread_once(&g_once, build); }

float sq_fp16_to_fp32_lut(uint16_t h) { return g_lut[h]; }

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx,f16c"))) static void to_float_f16c(const uint16_t *src, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = g_lut[src[i]];
}
__attribute__((target("avx,f16c"))) static void to_half_f16c(const float *src, uint16_t *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = sq_fp32_to_fp16(src[i]);
}
#endif

void sq_fp16_to_fp32_row(const uint16_t *src, float *dst, size_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (g_f16c) {
        to_float_f16c(src, dst, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++) dst[i] = g_lut[src[i]];
}

void sq_fp32_to_fp16_row(const float *src, uint16_t *dst, size_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (g_f16c) {
        to_half_f16c(src, dst, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++) dst[i] = sq_fp32_to_fp16(src[i]);
}
