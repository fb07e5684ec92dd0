/* transpose8.h — 8×8 float transpose in AVX registers (internal, x86 only). The function carries
 * its own target attribute, so it can be included both by files compiled with ISA flags (the
 * kernels) and by files that mark single functions with target("avx2") (attention.c). */
#ifndef SQ_TRANSPOSE8_H
#define SQ_TRANSPOSE8_H

#include <immintrin.h>

/* v[i] lane j <- v[j] lane i (unpack, shuffle, then swap 128-bit halves: 24 single-uop ops) */
__attribute__((target("avx2"))) static inline void sq_transpose8_ps(__m256 v[8]) {
    __m256 t[8], u[8];
    for (int j = 0; j < 8; j += 2) {
        t[j] = _mm256_unpacklo_ps(v[j], v[j + 1]);
        t[j + 1] = _mm256_unpackhi_ps(v[j], v[j + 1]);
    }
    for (int j = 0; j < 8; j += 4) {
        u[j] = _mm256_shuffle_ps(t[j], t[j + 2], 0x44);
        u[j + 1] = _mm256_shuffle_ps(t[j], t[j + 2], 0xEE);
        u[j + 2] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0x44);
        u[j + 3] = _mm256_shuffle_ps(t[j + 1], t[j + 3], 0xEE);
    }
    for (int j = 0; j < 4; j++) {
        v[j] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x20);
        v[j + 4] = _mm256_permute2f128_ps(u[j], u[j + 4], 0x31);
    }
}

#endif
