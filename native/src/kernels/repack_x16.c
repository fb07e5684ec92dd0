/* repack_x16.c — the SQ_SQ4_X16 layout (kernels.h): SQ4 matrices repacked at load so that a SIMD lane
 * is an output row. Portable C, run once per matrix at load (memory-bound: each byte read and written
 * once).
 */
#include "kernels.h"

#include <string.h>

int sq_sq4_x16_ok(int rows, int K, int G) {
    return rows > 0 && rows % 16 == 0 && G >= 32 && G % 32 == 0 && G <= SQ_X16_MAX_G && K % G == 0 &&
           K / G <= SQ_X16_MAX_GROUPS;
}

size_t sq_sq4_x16_bytes(int rows, int K, int G) { return (size_t)(rows / 16) * SQ_X16_TILE(K, G); }

void sq_sq4_repack_x16(const uint8_t *src, const int32_t *wsum, int K, int G, int t0, int t1, uint8_t *dst) {
    const int ng = K / G, h = G / 2;
    const size_t bs = 2 + (size_t)h, rec = SQ_X16_REC(G);
    uint8_t v[SQ_X16_MAX_G]; /* one group's values as q_w + 8, in k order */
    for (int tile = t0; tile < t1; tile++) {
        for (int g = 0; g < ng; g++) {
            uint8_t *out = dst + ((size_t)tile * ng + g) * rec, *nib = out + 64;
            for (int i = 0; i < 16; i++) {
                const size_t rg = (size_t)(16 * tile + i) * ng + g;
                const uint8_t *blk = src + rg * bs;
                memcpy(out + 2 * i, blk, 2);
                const int16_t ws = (int16_t)wsum[rg]; /* -8G <= Σ q_w <= 7G: int16 for G <= 4096 (sq_sq4_x16_ok) */
                memcpy(out + 32 + 2 * i, &ws, 2);
                for (int k = 0; k < h; k++) { /* FORMAT.md §3.1: byte k holds values k and k + G/2 */
                    v[k] = (uint8_t)((blk[2 + k] & 0x0F) ^ 8);
                    v[k + h] = (uint8_t)((blk[2 + k] >> 4) ^ 8);
                }
                for (int c = 0; c < G / 8; c++) { /* 4 bytes: values 8c..8c+3 low, 8c+4..8c+7 high (byte order
                                                     does not matter: each byte stays in place) */
                    uint32_t lo, hi;
                    memcpy(&lo, v + 8 * c, 4);
                    memcpy(&hi, v + 8 * c + 4, 4);
                    const uint32_t b = lo | hi << 4;
                    memcpy(nib + 64 * (size_t)c + 4 * i, &b, 4);
                }
            }
        }
    }
}
