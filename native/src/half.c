/* half.c — fp16 <-> fp32 rows: F16C where the CPU has it, a lookup table otherwise. */
#include "half.h"

#include <pthread.h>

#include "kernels.h"

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

void sq_half_init(void) { pthread_once(&g_once, build); }

float sq_half_to_float(uint16_t h) { return g_lut[h]; }

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx,f16c"))) static void to_float_f16c(const uint16_t *src, float *dst, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = g_lut[src[i]];
}
__attribute__((target("avx,f16c"))) static void to_half_f16c(const float *src, uint16_t *dst, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = sq_fp32_to_fp16(src[i]);
}
#endif

void sq_half_to_float_row(const uint16_t *src, float *dst, int n) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (g_f16c) {
        to_float_f16c(src, dst, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++) dst[i] = g_lut[src[i]];
}

void sq_float_to_half_row(const float *src, uint16_t *dst, int n) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (g_f16c) {
        to_half_f16c(src, dst, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++) dst[i] = sq_fp32_to_fp16(src[i]);
}
