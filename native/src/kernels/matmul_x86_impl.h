/* matmul_x86_impl.h — the x86 kernels, included by matmul_avx2.c (SQ_X86_VNNI 0) and
 * matmul_avx512.c (SQ_X86_VNNI 1), each compiled with its own ISA flags. Not a public header: it
 * defines functions and the table SQ_X86_TABLE named SQ_X86_NAME. The test also includes it once
 * more with SQ_VNNI_EMULATE, so the VNNI variant's logic is checked on AVX2-only machines.
 *
 * SQ4 × u4/u8 activations (FORMAT.md §4.3). The inner product is u8 act × s8 weight: AVX2
 * _mm256_maddubs_epi16 (s16 pair sums; a lane is at most |255·(−8)·2| = 4080, so 8 of them —
 * 256 values — add up in 16 bits, then _mm256_madd_epi16 widens) or VNNI _mm256_dpbusd_epi32
 * (int32 directly). Group sums are exact integers before any float is formed, so acc_g is
 * bit-identical to the scalar kernel; only then z·Σq_w is subtracted and the scales applied, in the
 * canonical order of kernels.h (fp32 terms added in group order, no FMA): outputs are bit-identical
 * to the scalar kernel's too.
 *
 * Two layouts (kernels.h). SQ_SQ4_X16, what a model load gives every matrix that qualifies: the
 * x16_* kernels (lanes = rows, any token count; x16_zmm with AVX-512, x16_tile with 256-bit
 * vectors), and with 256-bit vectors from PREFILL_MIN_TOK tokens on the prefill tile below, fed by
 * unpack_tile_x16. SQ_SQ4_ROWS (the file's layout: matrices that do not qualify, and the tests),
 * in two shapes:
 * - decode (few tokens): one row at a time; the 8-lane partial sums of 8 groups are reduced
 *   together by a transpose-add tree (reduce8). Weight nibbles are unpacked in registers and read
 *   exactly once, into maddubs as nibble ^ 8 (the weight + 8, no sign-LUT shuffle); 8·Σq_x per
 *   group is subtracted with z·Σq_w. One token: row_decode, rows prefetched DEC_PFD bytes ahead
 *   (without it, one thread read ~13 GB/s, below what the machine streams); at G = 32 two groups
 *   share a vector (pair_dot32) and 8 rows' terms are added up together (sum_rows8). 2..7 tokens
 *   (a batched decode step): row_few, each unpacked chunk used by up to 4 tokens.
 * - prefill (many tokens): 16 rows × 4 tokens per tile; weights unpacked once per segment into a
 *   row-interleaved stack buffer whose lanes are rows (see pf_tile), so no reduction is needed.
 */
#include "kernels.h"
#include "transpose8.h"

#include <immintrin.h>
#include <string.h>

#ifndef SQ_VNNI_EMULATE
#define SQ_VNNI_EMULATE 0
#endif
#ifndef SQ_X86_VNNI
#error "define SQ_X86_VNNI (0: AVX2 maddubs, 1: AVX-512 VNNI dpbusd) before including matmul_x86_impl.h"
#endif

#ifndef DEC_PFD
#define DEC_PFD 4096 /* decode: software prefetch distance in bytes of a row stream (bench_kernels --8b: +15% cold) */
#endif
#ifndef CX_MAX
#define CX_MAX 512 /* groups of a decode segment: act_sums8 (2 KB), terms of 8 rows (16 KB), G = 32's xp (16 KB) */
#endif
#define TB_STRIDE (CX_MAX + 8) /* floats between rows in the term buffer (not a multiple of 4 KB) */
#ifndef PF_RV
#define PF_RV 2             /* prefill tile: row vectors of 8 rows */
#endif
#define PF_R (8 * PF_RV)    /* prefill tile: rows */
#ifndef PF_T
#define PF_T 4              /* prefill tile: tokens */
#endif
#define SEG_MAX 1024        /* values of a row tile unpacked at a time (16 KB of s8 for 16 rows) */
#if SQ_X86_VNNI
#define SUB_MAX (1 << 30)   /* dpbusd accumulates in 32 bits: no widening needed */
#define SUBK_U4 (1 << 30)
#define SUBK_U8 (1 << 30)
#else
#define SUB_MAX 256         /* values summed in 16 bits before widening (8 maddubs of 4080 max) */
#define SUBK_U4 256         /* prefill sub-block, u4 acts: lane ≤ 60·256 */
#define SUBK_U8 32          /* prefill sub-block, u8 acts: lane ≤ 2040·16 */
#endif
#ifndef PREFILL_MIN_TOK
/* from this many tokens on the tiled prefill; 2..7: decode_rows_nt. bench_kernels -t 1 (Zen 3):
 * 5..7 tokens are 1.3-1.6x faster there (--8b, the shapes of one block summed). At 8 it is a tie:
 * the Llama-8B block ~9% faster on decode_rows_nt, SmolLM2's shapes 3-9% slower (and its batched
 * decode of 8 sequences ~10%), so 8 stays with the prefill; from 12 on the prefill wins. */
#define PREFILL_MIN_TOK SQ_X86_PREFILL_MIN_TOK
#endif
#ifndef FEW_PFD
#define FEW_PFD 4096 /* 2..7 tokens: the same (bench_kernels --8b -t 2 -n 2,3,4 on Zen 5: 1.4-2x faster cold) */
#endif
#define NT_MAX 4            /* tokens that share one unpack of a weight chunk (registers: 2 per token) */

/* ---- small helpers -------------------------------------------------------------------------- */

/* acc += the dot products of 4-byte pairs of u8 a and s8 b, in the accumulator's lane type:
 * VNNI: int32 lanes via dpbusd (sum of 4 products); AVX2: int16 lanes via maddubs (sum of 2
 * products, no saturation for |products| ≤ 2040 as here), widened later by WIDEN. */
#if SQ_X86_VNNI
#if SQ_VNNI_EMULATE
/* test-only stand-in for dpbusd on AVX2 machines: exact for the value ranges used here */
static inline __m256i sq_dpbusd(__m256i acc, __m256i a, __m256i b) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)));
}
#else
#define sq_dpbusd(acc, a, b) _mm256_dpbusd_epi32((acc), (a), (b))
#endif
#define DOT_ACC(p, a, b) sq_dpbusd((p), (a), (b))
#define WIDEN(p) (p)
#else
#define DOT_ACC(p, a, b) _mm256_add_epi16(_mm256_maddubs_epi16((a), (b)), (p))
#define WIDEN(p) _mm256_madd_epi16((p), _mm256_set1_epi16(1))
#endif

/* 4 bytes at p in every 32-bit lane */
static inline __m256i bcast4(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

static inline float fp16_load(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* nibble (0..15) -> two's complement int4 as s8, in both 128-bit lanes */
static inline __m256i nib_lut(void) {
    return _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, -8, -7,
                            -6, -5, -4, -3, -2, -1);
}

/* [Σ v0, Σ v1, …, Σ v7] of 8 vectors of 8 int32 lanes (transpose-add tree, 21 single-uop ops). */
static inline __m256i reduce8(const __m256i v[8]) {
    __m256i a01 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[0], v[1]), _mm256_unpackhi_epi32(v[0], v[1]));
    __m256i a23 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2], v[3]), _mm256_unpackhi_epi32(v[2], v[3]));
    __m256i a45 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[4], v[5]), _mm256_unpackhi_epi32(v[4], v[5]));
    __m256i a67 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[6], v[7]), _mm256_unpackhi_epi32(v[6], v[7]));
    __m256i a03 = _mm256_add_epi32(_mm256_unpacklo_epi64(a01, a23), _mm256_unpackhi_epi64(a01, a23));
    __m256i a47 = _mm256_add_epi32(_mm256_unpacklo_epi64(a45, a67), _mm256_unpackhi_epi64(a45, a67));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a03, a47, 0x20), _mm256_permute2x128_si256(a03, a47, 0x31));
}

static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- decode: one row × one token, groups read straight from the packed nibbles ----------------- */

#define SQ_INLINE static inline __attribute__((always_inline))

/* fp16 scales of 8 consecutive blocks (stride bs bytes) as floats. Eight 16-bit loads beat
 * vpgatherdd here (a gather is ~40 uops on Zen 3 and stalled the decode loop). */
static inline __m256 load_scales8(const uint8_t *blk0, int bs) {
    uint16_t h[8];
    for (int j = 0; j < 8; j++) memcpy(&h[j], blk0 + (size_t)j * bs, 2);
    /* packed in general registers (idle integer ALUs), not vpinsrw (a shuffle-port uop each) */
    uint64_t a = (uint64_t)h[0] | (uint64_t)h[1] << 16, a2 = (uint64_t)h[2] | (uint64_t)h[3] << 16;
    uint64_t b = (uint64_t)h[4] | (uint64_t)h[5] << 16, b2 = (uint64_t)h[6] | (uint64_t)h[7] << 16;
    __asm__("" : "+r"(a), "+r"(a2), "+r"(b), "+r"(b2)); /* keeps GCC's SLP vectorizer off (it shuffles) */
    a |= a2 << 32;
    b |= b2 << 32;
    return _mm256_cvtph_ps(_mm_set_epi64x((long long)b, (long long)a));
}

/* 8 int32 lanes whose sum is Σ q_x·(q_w + 8) over one group (nib = the group's G/2 bytes): the
 * nibbles enter maddubs as nibble ^ 8 (0..15, the int4 weight + 8: one xor per 32 bytes), not
 * through a sign LUT (two shuffle-port uops per 32 bytes, the decode loop's bottleneck on Zen 3);
 * the caller subtracts 8·Σq_x of the group (act_sums8). A lane is at most 2·255·15 = 7650, so 4
 * maddubs (128 values) add up in 16 bits. Inlined with a constant G, the loop unrolls and the
 * widening bookkeeping folds away. */
#if SQ_X86_VNNI
#define SUB_MAX_U (1 << 30)
#else
#define SUB_MAX_U 128
#endif
SQ_INLINE __m256i group_dot_u(const uint8_t *nib, const uint8_t *qx, int G) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), flip = _mm256_set1_epi8((char)0x88);
    const int h = G / 2;
    __m256i acc = _mm256_setzero_si256(), p = _mm256_setzero_si256();
    int o = 0, n = 0;
    for (; o + 32 <= h; o += 32) {
        __m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(nib + o)), flip);
        __m256i lo = _mm256_and_si256(v, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        p = DOT_ACC(p, _mm256_loadu_si256((const __m256i *)(qx + o)), lo);
        p = DOT_ACC(p, _mm256_loadu_si256((const __m256i *)(qx + h + o)), hi);
        n += 2;
        if (n == SUB_MAX_U / 32) {
            acc = _mm256_add_epi32(acc, WIDEN(p));
            p = _mm256_setzero_si256();
            n = 0;
        }
    }
    if (o < h) { /* G/2 ≡ 16 (mod 32): the last 16 bytes give values o..o+15 and h+o..h+o+15 */
        __m256i v = _mm256_xor_si256(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(nib + o))), flip);
        v = _mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
        __m256i a = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(qx + o))),
                                            _mm_loadu_si128((const __m128i *)(qx + h + o)), 1);
        p = DOT_ACC(p, a, _mm256_and_si256(v, m4));
    }
    return _mm256_add_epi32(acc, WIDEN(p));
}

/* cx[g] = 8·Σ q_x over group g (ng groups of G values, G % 32 == 0) */
static inline void act_sums8(const uint8_t *qx, int ng, int G, int32_t *cx) {
    for (int g = 0; g < ng; g++) {
        __m256i s = _mm256_setzero_si256();
        for (int o = 0; o < G; o += 32)
            s = _mm256_add_epi64(s, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i *)(qx + (size_t)g * G + o)),
                                                    _mm256_setzero_si256()));
        __m128i t = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        t = _mm_add_epi64(t, _mm_unpackhi_epi64(t, t));
        cx[g] = 8 * (int32_t)_mm_cvtsi128_si32(t);
    }
}

/* G = 32: [Σ q_x·(q_w + 8) of groups 0..7] of 8 consecutive blocks (blk: the first one's scale;
 * xp: the activations in pair_interleave32's order). A group is 16 nibble bytes, half a vector, so
 * groups k and k + 4 share one: lanes 0-3 hold group k's partial sums, lanes 4-7 group k + 4's.
 * Four such vectors reduce to the 8 sums in natural order with 9 ops (reduce8 needs 21 for eight
 * vectors), and every unpack and multiply works on full vectors. A 16-bit lane is at most
 * 2·7650 before the madd. */
SQ_INLINE __m256i pair_dot32(const uint8_t *blk, const uint8_t *xp) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), flip = _mm256_set1_epi8((char)0x88);
    const int bs = 18;
    __m256i v[4];
    for (int k = 0; k < 4; k++) {
        const uint8_t *a = blk + (size_t)k * bs + 2, *b = blk + (size_t)(k + 4) * bs + 2;
        __m256i n = _mm256_xor_si256(_mm256_loadu2_m128i((const __m128i *)b, (const __m128i *)a), flip);
        __m256i lo = _mm256_and_si256(n, m4), hi = _mm256_and_si256(_mm256_srli_epi16(n, 4), m4);
        __m256i p = DOT_ACC(_mm256_setzero_si256(), _mm256_load_si256((const __m256i *)(xp + (size_t)k * 64)), lo);
        p = DOT_ACC(p, _mm256_load_si256((const __m256i *)(xp + (size_t)k * 64 + 32)), hi);
        v[k] = WIDEN(p);
    }
    __m256i t0 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[0], v[1]), _mm256_unpackhi_epi32(v[0], v[1]));
    __m256i t1 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2], v[3]), _mm256_unpackhi_epi32(v[2], v[3]));
    return _mm256_add_epi32(_mm256_unpacklo_epi64(t0, t1), _mm256_unpackhi_epi64(t0, t1));
}

/* The activations of ngs groups of 32 in pair_dot32's order: per 8 groups, for k = 0..3, 64 bytes
 * [group k values 0-15, group k+4 0-15, group k 16-31, group k+4 16-31], the nibble layout of the
 * two blocks side by side. Done once per token and segment; the last ngs % 8 groups are read from
 * qx directly. */
static inline void pair_interleave32(const uint8_t *qx, int ngs, uint8_t *xp) {
    for (int g = 0; g + 8 <= ngs; g += 8)
        for (int k = 0; k < 4; k++) {
            const uint8_t *a = qx + (size_t)(g + k) * 32, *b = qx + (size_t)(g + k + 4) * 32;
            uint8_t *o = xp + (size_t)g * 32 + (size_t)k * 64;
            _mm256_store_si256((__m256i *)o, _mm256_loadu2_m128i((const __m128i *)b, (const __m128i *)a));
            _mm256_store_si256((__m256i *)(o + 32),
                               _mm256_loadu2_m128i((const __m128i *)(b + 16), (const __m128i *)(a + 16)));
        }
}

/* The exact sums Σ q_x·(q_w + 8) of 8 consecutive groups of one row (blk: the first block; qx /
 * xp: the token's activations at that group, xp only read at G = 32). */
SQ_INLINE __m256i block_sums8(const uint8_t *blk, const uint8_t *qx, const uint8_t *xp, const int G) {
    if (G == 32) return pair_dot32(blk, xp);
    const int bs = 2 + G / 2;
    __m256i v[8];
    for (int j = 0; j < 8; j++) v[j] = group_dot_u(blk + (size_t)j * bs + 2, qx + (size_t)j * G, G);
    return reduce8(v);
}

/* The token's per-segment inputs of the one-token decode: activations at the segment start (qx,
 * and xp at G = 32), their zero points, scales and cx = 8·Σq_x (act_sums8) per group. */
typedef struct {
    const uint8_t *qx, *xp;
    const int32_t *zt, *cx;
    const float *dt;
} dec_seg;

/* Row r, groups [g0, g0 + ngs) of segment sg, one of three outputs: the exact group sums into
 * acc[0..ngs) (acc != NULL); the terms acc_g·(d_w·d_x) into tb[0..ngs) for sum_rows8 (tb != NULL);
 * or their sum, in group order, into *y (continuing the running sum of earlier segments). */
SQ_INLINE void row_decode(const sq_sq4_matrix *w, const dec_seg *sg, int r, int g0, int ngs, float *y, float *tb,
                          int32_t *acc, const int G) {
    const int ng = w->K / G, bs = 2 + G / 2;
    const uint8_t *row = w->data + ((size_t)r * ng + g0) * bs;
    const int32_t *ws = w->wsum + (size_t)r * ng + g0;
    float ys = y && g0 ? *y : 0.0f;
    int g = 0;
    for (; g + 8 <= ngs; g += 8) {
#if DEC_PFD
        for (int j = 0; j < 8 * bs; j += 64) _mm_prefetch((const char *)row + (size_t)g * bs + DEC_PFD + j, _MM_HINT_T0);
        _mm_prefetch((const char *)(ws + g) + DEC_PFD / 4, _MM_HINT_T0);
#endif
        __m256i corr = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(sg->cx + g)),
                                        _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i *)(sg->zt + g)),
                                                           _mm256_loadu_si256((const __m256i *)(ws + g))));
        const __m256i sums = block_sums8(row + (size_t)g * bs, sg->qx + (size_t)g * G, sg->xp + (size_t)g * G, G);
        __m256i s = _mm256_sub_epi32(sums, corr);
        if (acc) {
            _mm256_storeu_si256((__m256i *)(acc + g), s);
            continue;
        }
        __m256 sc = _mm256_mul_ps(load_scales8(row + (size_t)g * bs, bs), _mm256_loadu_ps(sg->dt + g));
        __m256 tv = _mm256_mul_ps(_mm256_cvtepi32_ps(s), sc);
        if (tb) {
            _mm256_storeu_ps(tb + g, tv);
        } else { /* added in group order (kernels.h: canonical sum) */
            float term[8];
            _mm256_storeu_ps(term, tv);
            for (int j = 0; j < 8; j++) ys += term[j];
        }
    }
    for (; g < ngs; g++) {
        const uint8_t *blk = row + (size_t)g * bs;
        int32_t s = hsum_epi32(group_dot_u(blk + 2, sg->qx + (size_t)g * G, G)) - (sg->cx[g] + sg->zt[g] * ws[g]);
        if (acc) acc[g] = s;
        else if (tb) tb[g] = (float)s * (fp16_load(blk) * sg->dt[g]);
        else ys += (float)s * (fp16_load(blk) * sg->dt[g]);
    }
    if (y) *y = ys;
}

/* y[j] (j < nr ≤ 8) += the terms tb[j·TB_STRIDE + g], g = 0..ngs−1 in order (kernels.h: canonical
 * sum); y is set first when first != 0. One row's adds are a serial chain (3-cycle latency per
 * group on Zen 3), longer than a group's dot product at G = 32; here 8 groups × 8 rows of terms
 * are transposed so that lane j is row j, and one vector add per group advances all 8 chains. */
static inline void sum_rows8(const float *tb, int ngs, int nr, float *y, int first) {
    float ys[8] = {0};
    if (!first) memcpy(ys, y, sizeof(float) * nr);
    __m256 yv = _mm256_loadu_ps(ys);
    int g = 0;
    for (; g + 8 <= ngs; g += 8) {
        __m256 v[8];
        for (int j = 0; j < 8; j++)
            v[j] = j < nr ? _mm256_loadu_ps(tb + (size_t)j * TB_STRIDE + g) : _mm256_setzero_ps();
        sq_transpose8_ps(v);
        for (int i = 0; i < 8; i++) yv = _mm256_add_ps(yv, v[i]);
    }
    _mm256_storeu_ps(ys, yv);
    for (int j = 0; j < nr; j++) {
        float a = ys[j];
        for (int k = g; k < ngs; k++) a += tb[(size_t)j * TB_STRIDE + k];
        y[j] = a;
    }
}

/* ---- few tokens (a decode step of several sequences): one row, up to NT_MAX tokens -----------
 * group_dot_u for nt tokens at once: each 32-byte chunk of nibbles is unpacked once (nibble ^ 8, as
 * in row_decode) and multiplied with every token's activations, so the weights are read once per
 * step instead of once per token. Per token the integer sums are row_decode's (same bits).
 *
 * PK (u4 activations, AVX2): the 16-bit maddubs sums are not widened at all. A lane is at most
 * (G/32)·2·15·15 ≤ 3600 for G ≤ 256, so read as int32 lanes (lo + 65536·hi) they add up without
 * carries: reduce8 gives Σlo + 65536·Σhi with both sums ≤ G·112.5 < 32768, and lo + hi of that
 * (pk_fix8) is the group sum. That saves the madd per (group, token): at G = 64 a group is just two
 * maddubs per token, so the widening was a third of the multiply-port work. u8 activations (a lane
 * up to 7650 per maddubs) and VNNI (int32 lanes already) widen as group_dot_u does. */
#if SQ_X86_VNNI
#define FEW_PK(G, bits) 0
#else
#define FEW_PK(G, bits) ((bits) == 4 && (G) <= 256)
#endif
SQ_INLINE void group_dot_ntu(const uint8_t *nib, const uint8_t *const qx[NT_MAX], int G, const int nt, const int PK,
                             __m256i out[NT_MAX]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), flip = _mm256_set1_epi8((char)0x88);
    const int h = G / 2;
    __m256i acc[NT_MAX], p[NT_MAX];
    for (int t = 0; t < nt; t++) acc[t] = p[t] = _mm256_setzero_si256();
    int o = 0, n = 0;
    for (; o + 32 <= h; o += 32) {
        __m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(nib + o)), flip);
        __m256i lo = _mm256_and_si256(v, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        for (int t = 0; t < nt; t++) {
            if (PK) { /* u4 acts fit the signed operand: the weights go first, the loads fold into maddubs */
                p[t] = _mm256_add_epi16(p[t], _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(qx[t] + o))));
                p[t] = _mm256_add_epi16(p[t], _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(qx[t] + h + o))));
            } else {
                p[t] = DOT_ACC(p[t], _mm256_loadu_si256((const __m256i *)(qx[t] + o)), lo);
                p[t] = DOT_ACC(p[t], _mm256_loadu_si256((const __m256i *)(qx[t] + h + o)), hi);
            }
        }
        n += 2;
        if (!PK && n == SUB_MAX_U / 32) {
            for (int t = 0; t < nt; t++) {
                acc[t] = _mm256_add_epi32(acc[t], WIDEN(p[t]));
                p[t] = _mm256_setzero_si256();
            }
            n = 0;
        }
    }
    if (o < h) { /* as in group_dot_u: the last 16 bytes */
        __m256i v = _mm256_xor_si256(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(nib + o))), flip);
        v = _mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
        const __m256i wv = _mm256_and_si256(v, m4);
        for (int t = 0; t < nt; t++) {
            __m256i a = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(qx[t] + o))),
                                                _mm_loadu_si128((const __m128i *)(qx[t] + h + o)), 1);
            p[t] = PK ? _mm256_add_epi16(p[t], _mm256_maddubs_epi16(wv, a)) : DOT_ACC(p[t], a, wv);
        }
    }
    for (int t = 0; t < nt; t++) out[t] = PK ? p[t] : _mm256_add_epi32(acc[t], WIDEN(p[t]));
}

/* the group sums from reduce8 (or hsum_epi32) of PK vectors: low + high 16-bit halves. Both are
 * at most G·112.5 ≤ 28800, valid int16, so one madd with ones adds them (and + shift + add before). */
static inline __m256i pk_fix8(__m256i s) { return _mm256_madd_epi16(s, _mm256_set1_epi16(1)); }
static inline int32_t pk_fix1(int32_t s) { return (int32_t)(((uint32_t)s & 0xFFFF) + ((uint32_t)s >> 16)); }

/* Row `row` (its groups from the segment start on, ws its weight sums there), ngs groups of the
 * tokens qx[0..nt) (pointers at the segment start): the terms s·(d_w·d_x) into tb[group][NTP]
 * (lanes of missing tokens hold 0·d = 0 and are never read). The epilogue works on (group, token)
 * lanes: one reduce8 gives NG = 8 / NTP groups × NTP tokens (nt ≤ NTP), then s − (8·Σq_x +
 * z·Σq_w) and the terms, 8 lanes at a time. zt / ct / dxt: the tokens' zero points, 8·Σq_x and
 * scales in the same [group][NTP] order (few_interleave). Blocks of 8 groups take their scales
 * and weight sums in one load_scales8 / one load, spread to the lanes by a permute. The terms are
 * added up by the caller (few_sum), several rows at a time: one row's serial chain of adds
 * (3-cycle latency per group) had bounded the speed. */
SQ_INLINE void row_few(const uint8_t *row, const int32_t *ws, const uint8_t *const qx[NT_MAX], const int32_t *zt,
                       const int32_t *ct, const float *dxt, int ngs, const int nt, float *tb, const int G, const int NTP,
                       const int PK) {
    const int NG = 8 / NTP, bs = 2 + G / 2;
    int g = 0;
    for (; g + 8 <= ngs; g += 8) {
#if FEW_PFD
        for (int j = 0; j < 8 * bs; j += 64) _mm_prefetch((const char *)row + (size_t)g * bs + FEW_PFD + j, _MM_HINT_T0);
        _mm_prefetch((const char *)(ws + g) + FEW_PFD / 4, _MM_HINT_T0);
#endif
        const __m256 dw8 = load_scales8(row + (size_t)g * bs, bs);
        const __m256i ws8 = _mm256_loadu_si256((const __m256i *)(ws + g));
#pragma GCC unroll 4
        for (int k = 0; k < 8; k += NG) {
            __m256i v[8], o[NT_MAX];
            const uint8_t *q[NT_MAX];
            for (int kk = 0; kk < NG; kk++) {
                for (int t = 0; t < nt; t++) q[t] = qx[t] + (size_t)(g + k + kk) * G;
                group_dot_ntu(row + (size_t)(g + k + kk) * bs + 2, q, G, nt, PK, o);
                for (int t = 0; t < NTP; t++) v[kk * NTP + t] = t < nt ? o[t] : _mm256_setzero_si256();
            }
            /* lane i: group g + k + i / NTP */
            const __m256i idx = NTP == 4 ? _mm256_setr_epi32(k, k, k, k, k + 1, k + 1, k + 1, k + 1)
                                         : _mm256_setr_epi32(k, k, k + 1, k + 1, k + 2, k + 2, k + 3, k + 3);
            const size_t l = (size_t)(g + k) * NTP;
            __m256i s = reduce8(v);
            if (PK) s = pk_fix8(s);
            const __m256i corr =
                _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(ct + l)),
                                 _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i *)(zt + l)),
                                                    _mm256_permutevar8x32_epi32(ws8, idx)));
            const __m256 sc = _mm256_mul_ps(_mm256_permutevar8x32_ps(dw8, idx), _mm256_loadu_ps(dxt + l));
            _mm256_storeu_ps(tb + l, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(s, corr)), sc));
        }
    }
    for (; g < ngs; g++) { /* the last ngs % 8 groups, one at a time */
        const uint8_t *blk = row + (size_t)g * bs;
        __m256i o[NT_MAX];
        const uint8_t *q[NT_MAX];
        for (int t = 0; t < nt; t++) q[t] = qx[t] + (size_t)g * G;
        group_dot_ntu(blk + 2, q, G, nt, PK, o);
        const float dw = fp16_load(blk);
        for (int t = 0; t < nt; t++) {
            const size_t l = (size_t)g * NTP + t;
            int32_t sg = hsum_epi32(o[t]);
            if (PK) sg = pk_fix1(sg);
            sg -= ct[l] + zt[l] * ws[g];
            tb[l] = (float)sg * (dw * dxt[l]);
        }
    }
}

/* ---- prefill: 16 rows × 4 tokens per tile over pre-unpacked, row-interleaved weights ---------
 *
 * The weights of a 16-row tile are unpacked once per segment into "k-steps": 4 consecutive values
 * of each of 8 rows in one 32-byte vector. Broadcasting 4 activation bytes of one token against it,
 * maddubs + madd leave one int32 lane per row: no horizontal reduction at all, the lanes already
 * are the (row, token) outputs. Sums stay in 16 bits for a sub-block of subk values (u4: ≤ 256,
 * lane ≤ 60·256; u8: 32, lane ≤ 2040·16), then widen. */

typedef struct {
    int8_t w8[SEG_MAX / 4][PF_R][4] __attribute__((aligned(32))); /* [k-step][row][4 values] */
    float dw[SEG_MAX / 32][PF_R];                                  /* [local group][row] */
    int32_t ws[SEG_MAX / 32][PF_R];
} pf_tile;

/* 8 rows × 32 bytes -> 8 k-steps of 8 rows × 4 bytes: an 8×8 transpose of 32-bit units. rows[i]
 * points at row i's 32 bytes; k-step j is written to out + j·stride (32-byte aligned). */
static inline void transpose_8x32(const int8_t *const rows[8], int8_t *out, size_t stride) {
    __m256i r[8], t[8], u[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_si256((const __m256i *)rows[i]);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);     /* per lane: r_i[0] r_i+1[0] r_i[1] r_i+1[1] */
        t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]); /* per lane: units 2 and 3 */
    }
    for (int h = 0; h < 8; h += 4) {
        u[h + 0] = _mm256_unpacklo_epi64(t[h + 0], t[h + 2]); /* unit 0 (lane 1: unit 4) of rows h..h+3 */
        u[h + 1] = _mm256_unpackhi_epi64(t[h + 0], t[h + 2]); /* unit 1 (5) */
        u[h + 2] = _mm256_unpacklo_epi64(t[h + 1], t[h + 3]); /* unit 2 (6) */
        u[h + 3] = _mm256_unpackhi_epi64(t[h + 1], t[h + 3]); /* unit 3 (7) */
    }
    for (int j = 0; j < 4; j++) {
        _mm256_store_si256((__m256i *)(out + (size_t)j * stride), _mm256_permute2x128_si256(u[j], u[4 + j], 0x20));
        _mm256_store_si256((__m256i *)(out + (size_t)(j + 4) * stride), _mm256_permute2x128_si256(u[j], u[4 + j], 0x31));
    }
}

/* Unpacks groups [g0, g0+ngs) of rows rr[] into the k-step layout: each row's nibbles to s8 values
 * in k order, then 32 values of 8 rows at a time transposed into 8 k-steps (G is a multiple of 32). */
static void unpack_tile_x16(const sq_sq4_matrix *w, const int rr[PF_R], int g0, int ngs, pf_tile *tl);

static void unpack_tile(const sq_sq4_matrix *w, const int rr[PF_R], int g0, int ngs, pf_tile *tl) {
    if (w->layout == SQ_SQ4_X16) {
        unpack_tile_x16(w, rr, g0, ngs, tl);
        return;
    }
    const int G = w->G, ng = w->K / G, bs = 2 + G / 2, h = G / 2;
    const __m256i m4 = _mm256_set1_epi8(0x0F), lut = nib_lut();
    const __m128i m4x = _mm_set1_epi8(0x0F), lutx = _mm256_castsi256_si128(lut);
    int8_t tmp[8][SEG_MAX] __attribute__((aligned(32)));
    for (int v = 0; v < PF_RV; v++) {
        const int8_t *rows[8];
        for (int i = 0; i < 8; i++) {
            const int ri = rr[8 * v + i];
            const uint8_t *row = w->data + (size_t)ri * bs * ng;
            /* the chunk this row's unpack will read next: its next segment, or after its last
             * segment the row PF_R further down (the next tile's). 16 short streams per tile are
             * more than the hardware prefetcher follows; at 8 tokens the unpack is bound by them. */
            const uint8_t *next = NULL;
            int next_groups = ngs;
            if (g0 + ngs < ng) {
                next = row + (size_t)(g0 + ngs) * bs;
                next_groups = ng - g0 - ngs < ngs ? ng - g0 - ngs : ngs;
            } else if (ri + PF_R < w->rows) {
                next = row + (size_t)PF_R * bs * ng;
            }
            for (int j = 0; next && j < next_groups * bs; j += 64) _mm_prefetch((const char *)next + j, _MM_HINT_T0);
            for (int gl = 0; gl < ngs; gl++) {
                const uint8_t *blk = row + (size_t)(g0 + gl) * bs, *nib = blk + 2;
                int8_t *dst = tmp[i] + (size_t)gl * G;
                tl->dw[gl][8 * v + i] = fp16_load(blk);
                tl->ws[gl][8 * v + i] = w->wsum[(size_t)ri * ng + g0 + gl];
                int o = 0;
                for (; o + 32 <= h; o += 32) {
                    __m256i x = _mm256_loadu_si256((const __m256i *)(nib + o));
                    _mm256_storeu_si256((__m256i *)(dst + o), _mm256_shuffle_epi8(lut, _mm256_and_si256(x, m4)));
                    _mm256_storeu_si256((__m256i *)(dst + h + o),
                                        _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), m4)));
                }
                if (o < h) {
                    __m128i x = _mm_loadu_si128((const __m128i *)(nib + o));
                    _mm_storeu_si128((__m128i *)(dst + o), _mm_shuffle_epi8(lutx, _mm_and_si128(x, m4x)));
                    _mm_storeu_si128((__m128i *)(dst + h + o),
                                     _mm_shuffle_epi8(lutx, _mm_and_si128(_mm_srli_epi16(x, 4), m4x)));
                }
            }
        }
        for (int c = 0; c < ngs * G / 32; c++) {
            for (int i = 0; i < 8; i++) rows[i] = tmp[i] + 32 * c;
            transpose_8x32(rows, tl->w8[8 * c][8 * v], sizeof tl->w8[0]);
        }
    }
}

/* The same tile from an X16 matrix. When rr[] is one whole tile (always, in a model: the engine
 * splits rows on multiples of 16) its records are the k-step layout already: each 64-byte chunk
 * gives two k-steps of the 16 rows, minus 8. Other row sets (range edges in the tests) are
 * gathered value by value and transposed like the row layout. */
static void unpack_tile_x16(const sq_sq4_matrix *w, const int rr[PF_R], int g0, int ngs, pf_tile *tl) {
    const int G = w->G, K = w->K;
    const size_t rec = SQ_X16_REC(G), tile_bytes = SQ_X16_TILE(K, G);
    if (rr[0] % 16 == 0 && rr[PF_R - 1] == rr[0] + PF_R - 1) {
        const __m256i m4 = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
        const uint8_t *seg = w->data + (size_t)(rr[0] / 16) * tile_bytes + (size_t)g0 * rec;
        /* the next segment: of this tile, or the next tile's first (the records are one stream) */
        for (size_t j = 0; j < (size_t)ngs * rec; j += 64) _mm_prefetch((const char *)seg + (size_t)ngs * rec + j, _MM_HINT_T0);
        for (int gl = 0; gl < ngs; gl++) {
            const uint8_t *r = seg + (size_t)gl * rec, *nb = r + 64;
            for (int v = 0; v < PF_RV; v++) {
                _mm256_storeu_ps(&tl->dw[gl][8 * v], _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(r + 16 * v))));
                _mm256_storeu_si256((__m256i *)&tl->ws[gl][8 * v],
                                    _mm256_cvtepi16_epi32(_mm_load_si128((const __m128i *)(r + 32 + 16 * v))));
            }
            for (int c = 0; c < G / 8; c++)
                for (int v = 0; v < PF_RV; v++) {
                    const __m256i x = _mm256_load_si256((const __m256i *)(nb + 64 * c + 32 * v));
                    const int ks = gl * G / 4 + 2 * c;
                    _mm256_store_si256((__m256i *)tl->w8[ks][8 * v], _mm256_sub_epi8(_mm256_and_si256(x, m4), eight));
                    _mm256_store_si256((__m256i *)tl->w8[ks + 1][8 * v],
                                       _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(x, 4), m4), eight));
                }
        }
        return;
    }
    for (int v = 0; v < PF_RV; v++) {
        int8_t tmp[8][SEG_MAX] __attribute__((aligned(32)));
        const int8_t *rows[8];
        for (int i = 0; i < 8; i++) {
            const int ri = rr[8 * v + i], ii = ri % 16;
            for (int gl = 0; gl < ngs; gl++) {
                const uint8_t *r = w->data + (size_t)(ri / 16) * tile_bytes + (size_t)(g0 + gl) * rec;
                const uint8_t *nb = r + 64 + 32 * (ii / 8) + 4 * (ii % 8);
                int16_t ws;
                memcpy(&ws, r + 32 + 2 * ii, 2);
                tl->dw[gl][8 * v + i] = fp16_load(r + 2 * ii);
                tl->ws[gl][8 * v + i] = ws;
                for (int k = 0; k < G; k++) /* value k: chunk k / 8, byte k % 4, high nibble when k % 8 >= 4 */
                    tmp[i][gl * G + k] = (int8_t)(((nb[64 * (k / 8) + k % 4] >> (k % 8 >= 4 ? 4 : 0)) & 15) - 8);
            }
        }
        for (int c = 0; c < ngs * G / 32; c++) {
            for (int i = 0; i < 8; i++) rows[i] = tmp[i] + 32 * c;
            transpose_8x32(rows, tl->w8[8 * c][8 * v], sizeof tl->w8[0]);
        }
    }
}

/* One token quad over one segment. qa[t]: token t's activations at the segment start. yp[t]: the
 * running fp32 sums of token t's 16 rows (the output rows themselves for a full tile, a stack copy
 * for a tail tile); accv (group sums mode): [local group][token][row].
 *
 * Registers (16 ymm on AVX2): the k loop keeps PF_T·PF_RV = 8 s16 accumulators, 2 weight vectors
 * and a broadcast live. PF_KEEP pins each accumulator in its register after every step: without
 * it GCC reassociated the unrolled add chains into trees whose temporaries spilled, or kept an
 * accumulator on the stack, whose store-to-load forwarding (~7 cycles per k-step, on the chain of
 * 1-cycle adds) halved the speed. When a group spans several sub-blocks (u8 activations: 32 values
 * per sub-block for G = 64 … 256), the widened int32 sums of the earlier sub-blocks wait in accm,
 * explicitly in memory (touched once per sub-block), not in 8 more registers. */
#define PF_KEEP(v) __asm__("" : "+x"(v))

SQ_INLINE void pf_quad(const pf_tile *tl, const uint8_t *const qa[PF_T], const int32_t *const za[PF_T],
                       const float *const da[PF_T], int ngs, float *const yp[PF_T], int32_t *accv, const int G,
                       const int subk) {
    const int multi = G > subk; /* the group spans several sub-blocks */
    int32_t accm[PF_T][PF_R] __attribute__((aligned(32)));
    for (int gl = 0; gl < ngs; gl++) {
        const int k0 = gl * G;
        __m256i acc[PF_T][PF_RV];
        for (int t = 0; t < PF_T; t++) /* dead stores (every path assigns acc), for -Wmaybe-uninitialized */
            for (int v = 0; v < PF_RV; v++) acc[t][v] = _mm256_setzero_si256();
        for (int sb = k0; sb < k0 + G; sb += subk) {
            __m256i p[PF_T][PF_RV];
            for (int t = 0; t < PF_T; t++)
                for (int v = 0; v < PF_RV; v++) p[t][v] = _mm256_setzero_si256();
            /* k-steps of this sub-block: a compile-time constant for G ≤ subk or G % subk == 0 */
            const int nk = !multi ? G / 4 : G % subk == 0 ? subk / 4 : (k0 + G - sb < subk ? k0 + G - sb : subk) / 4;
            const int8_t *wp = tl->w8[sb / 4][0];
#pragma GCC unroll 8
            for (int j = 0; j < nk; j++) {
                __m256i wv[PF_RV];
                for (int v = 0; v < PF_RV; v++)
                    wv[v] = _mm256_load_si256((const __m256i *)(wp + (size_t)j * 4 * PF_R + 32 * v));
                for (int t = 0; t < PF_T; t++) {
                    const __m256i a = bcast4(qa[t] + sb + 4 * j);
                    for (int v = 0; v < PF_RV; v++) {
                        p[t][v] = DOT_ACC(p[t][v], a, wv[v]);
                        PF_KEEP(p[t][v]);
                    }
                }
            }
            if (multi) {
                for (int t = 0; t < PF_T; t++)
                    for (int v = 0; v < PF_RV; v++) {
                        __m256i *m = (__m256i *)&accm[t][8 * v];
                        const __m256i s = WIDEN(p[t][v]);
                        _mm256_store_si256(m, sb == k0 ? s : _mm256_add_epi32(_mm256_load_si256(m), s));
                    }
                __asm__("" : "+m"(accm)); /* keep accm a memory buffer (see above) */
            } else {
                for (int t = 0; t < PF_T; t++)
                    for (int v = 0; v < PF_RV; v++) acc[t][v] = WIDEN(p[t][v]);
            }
        }
        if (multi)
            for (int t = 0; t < PF_T; t++)
                for (int v = 0; v < PF_RV; v++) acc[t][v] = _mm256_load_si256((const __m256i *)&accm[t][8 * v]);
        for (int t = 0; t < PF_T; t++) {
            const __m256i zt = _mm256_set1_epi32(za[t][gl]);
            const __m256 dxt = _mm256_set1_ps(da[t][gl]);
            for (int v = 0; v < PF_RV; v++) {
                const __m256i wsv = _mm256_loadu_si256((const __m256i *)&tl->ws[gl][8 * v]);
                const __m256i s = _mm256_sub_epi32(acc[t][v], _mm256_mullo_epi32(zt, wsv));
                if (accv) {
                    _mm256_storeu_si256((__m256i *)(accv + ((size_t)gl * PF_T + t) * PF_R + 8 * v), s);
                } else {
                    const __m256 sc = _mm256_mul_ps(_mm256_loadu_ps(&tl->dw[gl][8 * v]), dxt);
                    float *y = yp[t] + 8 * v;
                    _mm256_storeu_ps(y, _mm256_add_ps(_mm256_loadu_ps(y), _mm256_mul_ps(_mm256_cvtepi32_ps(s), sc)));
                }
            }
        }
    }
}

typedef void (*pf_quad_fn)(const pf_tile *, const uint8_t *const[PF_T], const int32_t *const[PF_T],
                           const float *const[PF_T], int, float *const[PF_T], int32_t *);

/* one copy per (G, sub-block) so that the k loop has constant bounds */
#define DEF_PF_QUAD(NAME, GG, SUBK)                                                                            \
    static void NAME(const pf_tile *tl, const uint8_t *const qa[PF_T], const int32_t *const za[PF_T],           \
                     const float *const da[PF_T], int ngs, float *const yp[PF_T], int32_t *accv) {              \
        pf_quad(tl, qa, za, da, ngs, yp, accv, GG, SUBK);                                                       \
    }
DEF_PF_QUAD(pf_quad_32_4, 32, SUBK_U4)
DEF_PF_QUAD(pf_quad_64_4, 64, SUBK_U4)
DEF_PF_QUAD(pf_quad_128_4, 128, SUBK_U4)
DEF_PF_QUAD(pf_quad_256_4, 256, SUBK_U4)
DEF_PF_QUAD(pf_quad_32_8, 32, SUBK_U8)
DEF_PF_QUAD(pf_quad_64_8, 64, SUBK_U8)
DEF_PF_QUAD(pf_quad_128_8, 128, SUBK_U8)
DEF_PF_QUAD(pf_quad_256_8, 256, SUBK_U8)

/* generic G (per-row groups): the group size comes from the tile */
static void pf_quad_any(int G, int bits, const pf_tile *tl, const uint8_t *const qa[PF_T],
                        const int32_t *const za[PF_T], const float *const da[PF_T], int ngs, float *const yp[PF_T],
                        int32_t *accv) {
    if (bits == 4) pf_quad(tl, qa, za, da, ngs, yp, accv, G, SUBK_U4);
    else pf_quad(tl, qa, za, da, ngs, yp, accv, G, SUBK_U8);
}

static pf_quad_fn pick_pf_quad(int G, int bits) {
    if (bits == 4) {
        switch (G) {
        case 32: return pf_quad_32_4;
        case 64: return pf_quad_64_4;
        case 128: return pf_quad_128_4;
        case 256: return pf_quad_256_4;
        }
    } else {
        switch (G) {
        case 32: return pf_quad_32_8;
        case 64: return pf_quad_64_8;
        case 128: return pf_quad_128_8;
        case 256: return pf_quad_256_8;
        }
    }
    return NULL;
}

/* Shared driver of matmul (y != NULL) and group sums (acc != NULL) for the prefill shape. */
static void sq4_prefill(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, float *y, int ldy, int32_t *acc) {
    const int G = w->G, K = w->K, ng = K / G, nt = x->n_tok;
    const int seg_groups = SEG_MAX / G; /* ≥ 1: callers send G > SEG_MAX to the decode path */
    const pf_quad_fn fn = pick_pf_quad(G, x->bits);
    pf_tile tl;
    float yt[PF_T][PF_R] __attribute__((aligned(32)));
    int32_t accv[(SEG_MAX / 32) * PF_T * PF_R];
    for (int r = r0; r < r1; r += PF_R) {
        int rr[PF_R];
        for (int i = 0; i < PF_R; i++) rr[i] = r + i < r1 ? r + i : r1 - 1; /* tail rows repeat the last */
        const int nr = r1 - r < PF_R ? r1 - r : PF_R;
        for (int g0 = 0; g0 < ng; g0 += seg_groups) {
            const int ngs = ng - g0 < seg_groups ? ng - g0 : seg_groups;
            unpack_tile(w, rr, g0, ngs, &tl);
            for (int t = 0; t < nt; t += PF_T) {
                const uint8_t *qa[PF_T];
                const int32_t *za[PF_T];
                const float *da[PF_T];
                for (int j = 0; j < PF_T; j++) {
                    const int tj = t + j < nt ? t + j : nt - 1; /* tail tokens repeat the last */
                    qa[j] = x->q + (size_t)tj * K + (size_t)g0 * G;
                    za[j] = x->z + (size_t)tj * ng + g0;
                    da[j] = x->d + (size_t)tj * ng + g0;
                }
                const int ntt = nt - t < PF_T ? nt - t : PF_T;
                /* Later segments continue the running sums, so groups are added in order. A full
                 * tile (16 rows × 4 tokens) accumulates in y itself; a tail tile in the stack copy
                 * yt. (The memset + memcpy of yt for every tile, 9 short rep stos / movs, took 8 % of
                 * an 8B prefill's time.) */
                float *yp[PF_T];
                const int full = !acc && ntt == PF_T && nr == PF_R;
                if (full) {
                    for (int j = 0; j < PF_T; j++) {
                        yp[j] = y + (size_t)(t + j) * ldy + r;
                        if (g0 == 0) /* y starts at 0 (kernels.h: canonical sum) */
                            for (int v = 0; v < PF_RV; v++) _mm256_storeu_ps(yp[j] + 8 * v, _mm256_setzero_ps());
                    }
                } else {
                    memset(yt, 0, sizeof yt);
                    if (g0 > 0 && !acc)
                        for (int j = 0; j < ntt; j++) memcpy(yt[j], y + (size_t)(t + j) * ldy + r, sizeof(float) * nr);
                    for (int j = 0; j < PF_T; j++) yp[j] = yt[j];
                }
                if (fn) fn(&tl, qa, za, da, ngs, yp, acc ? accv : NULL);
                else pf_quad_any(G, x->bits, &tl, qa, za, da, ngs, yp, acc ? accv : NULL);
                if (full) continue;
                for (int j = 0; j < ntt; j++) {
                    if (acc) {
                        int32_t *dst = acc + (size_t)(t + j) * w->rows * ng + g0;
                        for (int gl = 0; gl < ngs; gl++)
                            for (int i = 0; i < nr; i++)
                                dst[(size_t)(r + i) * ng + gl] = accv[((size_t)gl * PF_T + j) * PF_R + i];
                        continue;
                    }
                    memcpy(y + (size_t)(t + j) * ldy + r, yt[j], sizeof(float) * nr);
                }
            }
        }
    }
}

/* rows [r0, r1) of token t; one copy per common G so that group_dot_u is compiled for it. Rows of
 * more than CX_MAX groups go segment by segment (all rows per segment, the sums wait in y). At
 * G = 32 the rows' terms wait in tb and are added up 8 rows at a time (sum_rows8): there a group's
 * dot product is cheaper than the 3-cycle add of its term to the row's running sum. At larger G
 * the in-row sum hides behind the dot products (and a separate summing pass measured slower:
 * nothing streams from memory during it). */
#define DEF_DECODE_ROWS(NAME, GEXPR)                                                                     \
    static void NAME(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, int t, float *y, int32_t *acc) { \
        const int G = (GEXPR), ng = w->K / G;                                                           \
        int32_t cx[CX_MAX];                                                                             \
        float tb[(GEXPR) == 32 ? 8 * TB_STRIDE : 1];                                                    \
        _Alignas(32) uint8_t xp[(GEXPR) == 32 ? CX_MAX * 32 : 32];                                      \
        for (int g0 = 0; g0 < ng; g0 += CX_MAX) {                                                       \
            const int ngs = ng - g0 < CX_MAX ? ng - g0 : CX_MAX;                                        \
            const uint8_t *qx = x->q + (size_t)t * w->K + (size_t)g0 * G;                               \
            act_sums8(qx, ngs, G, cx);                                                                  \
            if (G == 32) pair_interleave32(qx, ngs, xp);                                                \
            const dec_seg sg = {qx, xp, x->z + (size_t)t * ng + g0, cx, x->d + (size_t)t * ng + g0};    \
            if (acc || G != 32) {                                                                       \
                for (int r = r0; r < r1; r++)                                                           \
                    row_decode(w, &sg, r, g0, ngs, acc ? NULL : y + r, NULL,                            \
                               acc ? acc + (size_t)r * ng + g0 : NULL, GEXPR);                          \
                continue;                                                                               \
            }                                                                                           \
            for (int rb = r0; rb < r1; rb += 8) {                                                       \
                const int nr = r1 - rb < 8 ? r1 - rb : 8;                                               \
                for (int j = 0; j < nr; j++)                                                            \
                    row_decode(w, &sg, rb + j, g0, ngs, NULL, tb + (size_t)j * TB_STRIDE, NULL, GEXPR); \
                sum_rows8(tb, ngs, nr, y + rb, g0 == 0);                                                \
            }                                                                                           \
        }                                                                                               \
    }
DEF_DECODE_ROWS(decode_rows_32, 32)
DEF_DECODE_ROWS(decode_rows_64, 64)
DEF_DECODE_ROWS(decode_rows_128, 128)
DEF_DECODE_ROWS(decode_rows_256, 256)
DEF_DECODE_ROWS(decode_rows_any, w->G)

/* y: row 0 of token t's output (or NULL); acc: token t's group sums (or NULL) */
static void decode_rows(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, int t, float *y, int32_t *acc) {
    switch (w->G) {
    case 32: decode_rows_32(w, x, r0, r1, t, y, acc); break;
    case 64: decode_rows_64(w, x, r0, r1, t, y, acc); break;
    case 128: decode_rows_128(w, x, r0, r1, t, y, acc); break;
    case 256: decode_rows_256(w, x, r0, r1, t, y, acc); break;
    default: decode_rows_any(w, x, r0, r1, t, y, acc); break;
    }
}

/* Rows [r0, r1) of 2 or more tokens (fewer than PREFILL_MIN_TOK, or any count when G > SEG_MAX):
 * per row, the tokens in chunks of NT_MAX (the row stays in L1 between chunks: it is read from
 * memory once per FEW_TOK tokens). Groups go in segments whose interleaved zero points, act sums
 * and scales (few_interleave) fit FEW_BUF entries; between segments the running sums wait in y, so
 * groups are still added in order. Rows go FEW_ROWS at a time: their terms are summed together
 * (few_sum), so the serial adds of one row overlap those of the others. */
#define FEW_TOK 64
#define FEW_BUF 1024
#define FEW_ROWS 4

/* first token of chunk c of n_ch: the ntb tokens split as evenly as possible (5 = 2 + 3, not
 * 4 + 1: a chunk of one token fills half the lanes of row_few's epilogue, and costs about as much
 * as a chunk of two) */
static inline int few_chunk(int ntb, int n_ch, int c) { return c * ntb / n_ch; }

/* zt / ct / dxt of chunk c at c·seg·NT_MAX: [group][lane], the chunk's nt tokens padded to 2 or 4
 * lanes (zeros); ct = 8·Σq_x of the group (the unsigned-weight correction, act_sums8) */
static void few_interleave(const sq_qact *x, int ng, int tb, int ntb, int g0, int ngs, int seg, int32_t *zt,
                           int32_t *ct, float *dxt) {
    const int G = x->G;
    const int n_ch = (ntb + NT_MAX - 1) / NT_MAX;
    for (int c = 0; c < n_ch; c++) {
        const int c0 = few_chunk(ntb, n_ch, c), nt = few_chunk(ntb, n_ch, c + 1) - c0, ntp = nt <= 2 ? 2 : 4;
        int32_t *zc = zt + (size_t)c * seg * NT_MAX, *cc = ct + (size_t)c * seg * NT_MAX;
        float *dc = dxt + (size_t)c * seg * NT_MAX;
        for (int t = 0; t < ntp; t++) {
            const int tt = tb + c0 + t;
            int32_t cx[64];
            for (int g = 0; g < ngs; g += 64) {
                const int n = ngs - g < 64 ? ngs - g : 64;
                if (t < nt) act_sums8(x->q + (size_t)tt * x->K + (size_t)(g0 + g) * G, n, G, cx);
                for (int j = 0; j < n; j++) {
                    const size_t src = (size_t)tt * ng + g0 + g + j, dst = (size_t)(g + j) * ntp + t;
                    zc[dst] = t < nt ? x->z[src] : 0;
                    cc[dst] = t < nt ? cx[j] : 0;
                    dc[dst] = t < nt ? x->d[src] : 0.0f;
                }
            }
        }
    }
}

/* ys[j][0..nt) += the terms tb[j][group][NTP] of nr rows, in group order per row. With 4 rows the
 * four chains of adds are independent, so they overlap (one row alone: 3 cycles per group). */
SQ_INLINE void few_sum(const float *tb, int ngs, int nr, const int nt, const int NTP, float ys[FEW_ROWS][NT_MAX]) {
    const size_t st = FEW_BUF; /* row stride of tb */
    if (NTP == 4 && nr == FEW_ROWS) {
        __m128 y0 = _mm_loadu_ps(ys[0]), y1 = _mm_loadu_ps(ys[1]), y2 = _mm_loadu_ps(ys[2]), y3 = _mm_loadu_ps(ys[3]);
        for (int g = 0; g < ngs; g++) {
            y0 = _mm_add_ps(y0, _mm_loadu_ps(tb + (size_t)g * 4));
            y1 = _mm_add_ps(y1, _mm_loadu_ps(tb + st + (size_t)g * 4));
            y2 = _mm_add_ps(y2, _mm_loadu_ps(tb + 2 * st + (size_t)g * 4));
            y3 = _mm_add_ps(y3, _mm_loadu_ps(tb + 3 * st + (size_t)g * 4));
        }
        _mm_storeu_ps(ys[0], y0);
        _mm_storeu_ps(ys[1], y1);
        _mm_storeu_ps(ys[2], y2);
        _mm_storeu_ps(ys[3], y3);
        return;
    }
    if (NTP == 2 && nr == FEW_ROWS) { /* rows j and j + 2 share a vector: lanes [row j: 2 tokens, row j + 2] */
        __m128 y02 = _mm_setr_ps(ys[0][0], ys[0][1], ys[2][0], ys[2][1]);
        __m128 y13 = _mm_setr_ps(ys[1][0], ys[1][1], ys[3][0], ys[3][1]);
        for (int g = 0; g < ngs; g++) {
            const size_t o = (size_t)g * 2;
            y02 = _mm_add_ps(y02, _mm_loadh_pi(_mm_castpd_ps(_mm_load_sd((const double *)(tb + o))),
                                               (const __m64 *)(tb + 2 * st + o)));
            y13 = _mm_add_ps(y13, _mm_loadh_pi(_mm_castpd_ps(_mm_load_sd((const double *)(tb + st + o))),
                                               (const __m64 *)(tb + 3 * st + o)));
        }
        float a[4], b[4];
        _mm_storeu_ps(a, y02);
        _mm_storeu_ps(b, y13);
        ys[0][0] = a[0], ys[0][1] = a[1], ys[2][0] = a[2], ys[2][1] = a[3];
        ys[1][0] = b[0], ys[1][1] = b[1], ys[3][0] = b[2], ys[3][1] = b[3];
        return;
    }
    for (int j = 0; j < nr; j++)
        for (int t = 0; t < nt; t++) {
            float y = ys[j][t];
            for (int g = 0; g < ngs; g++) y += tb[j * st + (size_t)g * NTP + t];
            ys[j][t] = y;
        }
}

SQ_INLINE void decode_few(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, float *y, int ldy, const int G) {
    const int K = w->K, ng = K / G, bs = 2 + G / 2, pk = FEW_PK(G, x->bits);
    int32_t zt[FEW_BUF], ct[FEW_BUF];
    float dxt[FEW_BUF], terms[FEW_ROWS * FEW_BUF];
    for (int tb = 0; tb < x->n_tok; tb += FEW_TOK) {
        const int ntb = x->n_tok - tb < FEW_TOK ? x->n_tok - tb : FEW_TOK, n_ch = (ntb + NT_MAX - 1) / NT_MAX;
        const int seg = FEW_BUF / (n_ch * NT_MAX);
        for (int g0 = 0; g0 < ng; g0 += seg) {
            const int ngs = ng - g0 < seg ? ng - g0 : seg;
            few_interleave(x, ng, tb, ntb, g0, ngs, seg, zt, ct, dxt);
            for (int rb = r0; rb < r1; rb += FEW_ROWS) {
                const int nr = r1 - rb < FEW_ROWS ? r1 - rb : FEW_ROWS;
                for (int c = 0; c < n_ch; c++) {
                    const int t0 = tb + few_chunk(ntb, n_ch, c), nt = tb + few_chunk(ntb, n_ch, c + 1) - t0;
                    const uint8_t *qx[NT_MAX];
                    float ys[FEW_ROWS][NT_MAX] = {{0}};
                    for (int t = 0; t < nt; t++) {
                        qx[t] = x->q + (size_t)(t0 + t) * K + (size_t)g0 * G;
                        if (g0 > 0)
                            for (int j = 0; j < nr; j++) ys[j][t] = y[(size_t)(t0 + t) * ldy + rb + j];
                    }
                    const size_t co = (size_t)c * seg * NT_MAX;
                    for (int j = 0; j < nr; j++) {
                        const uint8_t *row = w->data + (size_t)(rb + j) * bs * ng + (size_t)g0 * bs;
                        const int32_t *ws = w->wsum + (size_t)(rb + j) * ng + g0;
                        float *tj = terms + (size_t)j * FEW_BUF;
#define FEW_ROW(NT, NTP, PK) row_few(row, ws, qx, zt + co, ct + co, dxt + co, ngs, NT, tj, G, NTP, PK)
                        if (pk) {
                            switch (nt) { /* constant nt: the token loops unroll */
                            case 1: FEW_ROW(1, 2, 1); break;
                            case 2: FEW_ROW(2, 2, 1); break;
                            case 3: FEW_ROW(3, 4, 1); break;
                            default: FEW_ROW(4, 4, 1); break;
                            }
                        } else {
                            switch (nt) {
                            case 1: FEW_ROW(1, 2, 0); break;
                            case 2: FEW_ROW(2, 2, 0); break;
                            case 3: FEW_ROW(3, 4, 0); break;
                            default: FEW_ROW(4, 4, 0); break;
                            }
                        }
#undef FEW_ROW
                    }
                    if (nt <= 2) few_sum(terms, ngs, nr, nt, 2, ys);
                    else few_sum(terms, ngs, nr, nt, 4, ys);
                    for (int t = 0; t < nt; t++)
                        for (int j = 0; j < nr; j++) y[(size_t)(t0 + t) * ldy + rb + j] = ys[j][t];
                }
            }
        }
    }
}

#define DEF_DECODE_FEW(NAME, GEXPR)                                                                 \
    static void NAME(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, float *y, int ldy) { \
        decode_few(w, x, r0, r1, y, ldy, GEXPR);                                                    \
    }
DEF_DECODE_FEW(decode_few_32, 32)
DEF_DECODE_FEW(decode_few_64, 64)
DEF_DECODE_FEW(decode_few_128, 128)
DEF_DECODE_FEW(decode_few_any, w->G)

static void decode_rows_nt(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, float *y, int ldy) {
    switch (w->G) {
    case 32: decode_few_32(w, x, r0, r1, y, ldy); break;
    case 64: decode_few_64(w, x, r0, r1, y, ldy); break;
    case 128: decode_few_128(w, x, r0, r1, y, ldy); break;
    default: decode_few_any(w, x, r0, r1, y, ldy); break;
    }
}

/* ---- SQ_SQ4_X16 (kernels.h: repacked at load): lanes are rows ---------------------------------
 * A 64-byte chunk of a group record is two k-steps (4 consecutive values, as q_w + 8) of 16 rows,
 * unpacked with two ands and a shift (no LUT); each k-step meets 4 broadcast activation bytes of a
 * token in one dot-product instruction, and the int32 lanes are the rows' sums: no horizontal
 * reduction and no transpose, so a decode step of several sequences costs little more than one
 * token (the row-layout kernels above spend most of their work per (row, group, token) on the
 * reduction) and a prompt needs no unpacking pass. Then per (group, token): s − (8·Σq_x + z·Σq_w)
 * (the weights entered as q_w + 8) and the term, added to the rows' running sums in group order:
 * the canonical epilogue with lanes = rows. AVX-512 takes the 16 rows in one 512-bit vector
 * (x16_zmm), 256-bit vectors take rows 0-7 and 8-15 of each record in turn (x16_tile). A matrix is
 * one contiguous stream of records (scales and weight sums inline), prefetched X16_PFD bytes ahead:
 * a separate header region per tile was a second stream that restarted at every tile, and decoded
 * one token 10-20 % slower. */

#define X16_NT 4                          /* tokens per pass with 256-bit vectors */
#define X16_TOK 8                         /* tokens whose 8·Σq_x per group are computed per block (32 KB) */
#define X16_PFD 4096                      /* software prefetch distance (bench_kernels --8b -t 2, Zen 5: 2-16 KB tried) */
#define X16_CHUNK (384 << 10)             /* bytes of weights per chunk of rows (x16_decode) */
#if SQ_X86_VNNI
#define X16_SUB(bits) (1 << 30)           /* dpbusd: int32 lanes */
#else
#define X16_SUB(bits) ((bits) == 4 ? 32 : 2) /* chunks summed in 16 bits: a maddubs lane ≤ 2·15·15 (u4) or 2·255·15 (u8) */
#endif

/* A matrix is one stream of records: prefetch the record X16_PFD bytes ahead of r (past the end of
 * the matrix is harmless) */
SQ_INLINE void x16_prefetch(const uint8_t *r, int G) {
    for (size_t j = 0; j < SQ_X16_REC(G); j += 64) _mm_prefetch((const char *)r + X16_PFD + j, _MM_HINT_T0);
}

/* Per token of a pass: its activations, 8·Σq_x, zero points and scales, each at group 0. */
typedef struct {
    const uint8_t *q[X16_TOK];
    const int32_t *cx[X16_TOK], *z[X16_TOK];
    const float *d[X16_TOK];
} x16_toks;

/* tokens [t0, t0 + nt) of x; their 8·Σq_x are rows c0.. of the block's cxb */
static inline void x16_toks_at(const sq_qact *x, int t0, int nt, const int32_t cxb[X16_TOK][SQ_X16_MAX_GROUPS], int c0,
                               x16_toks *tk) {
    const int ng = x->K / x->G;
    for (int t = 0; t < nt; t++) {
        tk->q[t] = x->q + (size_t)(t0 + t) * x->K;
        tk->cx[t] = cxb[c0 + t];
        tk->z[t] = x->z + (size_t)(t0 + t) * ng;
        tk->d[t] = x->d + (size_t)(t0 + t) * ng;
    }
}

/* 256-bit vectors: tile `tile` (its first record), all ng groups, nt ≤ X16_NT tokens: ys[h][t] =
 * rows 8h .. 8h + 7 of token t, or with acc != NULL the group sums into acc[t·acc_ts + i·ng + g]
 * for the rows i0 <= i < i1. With dpbusd two chains per token: one chain of 16 dependent dpbusd
 * per group (G = 64) would be bound by their latency. */
SQ_INLINE void x16_tile(const uint8_t *tile, int ng, const int G, const int nt, const int sub,
                        const x16_toks *tk, __m256 ys[2][X16_NT], int32_t *acc, size_t acc_ts, int i0,
                        int i1) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int h = 0; h < 2; h++)
        for (int t = 0; t < nt; t++) ys[h][t] = _mm256_setzero_ps();
    for (int g = 0; g < ng; g++) {
        const uint8_t *r = tile + (size_t)g * SQ_X16_REC(G), *nbg = r + 64;
        x16_prefetch(r, G);
        for (int h = 0; h < 2; h++) {
            const uint8_t *nb = nbg + 32 * h;
            __m256i p[X16_NT], p2[X16_NT], s[X16_NT];
            for (int t = 0; t < nt; t++) p[t] = p2[t] = s[t] = _mm256_setzero_si256();
            int n = 0;
            for (int c = 0; c < G / 8; c++) {
                const __m256i v = _mm256_load_si256((const __m256i *)(nb + 64 * c));
                const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                for (int t = 0; t < nt; t++) {
                    const uint8_t *q = tk->q[t] + (size_t)g * G + 8 * c;
                    p[t] = DOT_ACC(p[t], bcast4(q), lo);
                    if (SQ_X86_VNNI) p2[t] = DOT_ACC(p2[t], bcast4(q + 4), hi);
                    else p[t] = DOT_ACC(p[t], bcast4(q + 4), hi);
                }
                if (++n == sub && c + 1 < G / 8) {
                    for (int t = 0; t < nt; t++) {
                        s[t] = _mm256_add_epi32(s[t], WIDEN(p[t]));
                        p[t] = _mm256_setzero_si256();
                    }
                    n = 0;
                }
            }
            const __m256i ws = _mm256_cvtepi16_epi32(_mm_load_si128((const __m128i *)(r + 32 + 16 * h)));
            const __m256 dw = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(r + 16 * h)));
            for (int t = 0; t < nt; t++) {
                const __m256i corr = _mm256_add_epi32(_mm256_set1_epi32(tk->cx[t][g]),
                                                      _mm256_mullo_epi32(_mm256_set1_epi32(tk->z[t][g]), ws));
                const __m256i a =
                    _mm256_sub_epi32(_mm256_add_epi32(_mm256_add_epi32(s[t], WIDEN(p[t])), p2[t]), corr);
                if (acc) {
                    int32_t v8[8];
                    _mm256_storeu_si256((__m256i *)v8, a);
                    for (int i = 8 * h; i < 8 * h + 8; i++)
                        if (i >= i0 && i < i1) acc[(size_t)t * acc_ts + (size_t)i * ng + g] = v8[i - 8 * h];
                    continue;
                }
                const __m256 sc = _mm256_mul_ps(dw, _mm256_set1_ps(tk->d[t][g]));
                ys[h][t] = _mm256_add_ps(ys[h][t], _mm256_mul_ps(_mm256_cvtepi32_ps(a), sc));
            }
        }
    }
}

/* Tile T (rows 16T .. 16T + 15; only those in [r0, r1) are stored) of tokens [tb, tb + ntb) in
 * passes of up to X16_NT tokens (5 = 2 + 3: few_chunk), the tile re-read from L1 between passes. */
SQ_INLINE void x16_tile_tokens(const sq_sq4_matrix *w, const sq_qact *x, int T, int r0, int r1, int tb, int ntb,
                               const int32_t cxb[X16_TOK][SQ_X16_MAX_GROUPS], float *y, int ldy, int32_t *acc,
                               const int sub, const int G) {
    const int K = w->K, ng = K / G, rows = w->rows, n_ch = (ntb + X16_NT - 1) / X16_NT;
    const uint8_t *tile = w->data + (size_t)T * SQ_X16_TILE(K, G);
    const int i0 = r0 > 16 * T ? r0 - 16 * T : 0, i1 = r1 < 16 * T + 16 ? r1 - 16 * T : 16;
    for (int c = 0; c < n_ch; c++) {
        const int c0 = few_chunk(ntb, n_ch, c), nt = few_chunk(ntb, n_ch, c + 1) - c0;
        x16_toks tk;
        x16_toks_at(x, tb + c0, nt, cxb, c0, &tk);
        __m256 ys[2][X16_NT];
        if (acc) { /* group sums (tests only): token count not constant */
            x16_tile(tile, ng, G, nt, sub, &tk, ys,
                     acc + (size_t)(tb + c0) * rows * ng + (size_t)16 * T * ng, (size_t)rows * ng, i0, i1);
            continue;
        }
        switch (nt) { /* constant token counts: the token loops unroll */
        case 1: x16_tile(tile, ng, G, 1, sub, &tk, ys, NULL, 0, 0, 0); break;
        case 2: x16_tile(tile, ng, G, 2, sub, &tk, ys, NULL, 0, 0, 0); break;
        case 3: x16_tile(tile, ng, G, 3, sub, &tk, ys, NULL, 0, 0, 0); break;
        default: x16_tile(tile, ng, G, 4, sub, &tk, ys, NULL, 0, 0, 0); break;
        }
        for (int t = 0; t < nt; t++) {
            float *yt = y + (size_t)(tb + c0 + t) * ldy + 16 * T;
            if (i0 == 0 && i1 == 16) {
                _mm256_storeu_ps(yt, ys[0][t]);
                _mm256_storeu_ps(yt + 8, ys[1][t]);
            } else {
                float v16[16];
                _mm256_storeu_ps(v16, ys[0][t]);
                _mm256_storeu_ps(v16 + 8, ys[1][t]);
                for (int i = i0; i < i1; i++) yt[i] = v16[i];
            }
        }
    }
}

#if SQ_X86_VNNI && !SQ_VNNI_EMULATE
/* AVX-512 VNNI: the 16 rows of a tile in one 512-bit vector, up to X16_NT_ZMM tokens per pass (32
 * registers: a token's sums in 2 or 4 chains, plus its running outputs). The same integer sums
 * and the same canonical epilogue as x16_tile. */
#define X16_NT_ZMM 8

SQ_INLINE void x16_zmm(const uint8_t *tile, int ng, const int G, const int nt, const x16_toks *tk,
                       __m512 ys[X16_NT_ZMM]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int t = 0; t < nt; t++) ys[t] = _mm512_setzero_ps();
    for (int g = 0; g < ng; g++) {
        const uint8_t *r = tile + (size_t)g * SQ_X16_REC(G), *nb = r + 64;
        x16_prefetch(r, G);
        /* two dpbusd chains per token (lo and hi k-steps), four for up to 4 tokens (chunks c and
         * c + 1: G/8 is even); one chain of 16 per group (G = 64) would be bound by its latency.
         * Named registers, not an array indexed by chunk: GCC kept such an array on the stack. */
        __m512i p0[X16_NT_ZMM], p1[X16_NT_ZMM], p2[X16_NT_ZMM], p3[X16_NT_ZMM];
        for (int t = 0; t < nt; t++) p0[t] = p1[t] = p2[t] = p3[t] = _mm512_setzero_si512();
        for (int c = 0; c < G / 8; c += 2) {
            const __m512i v0 = _mm512_load_si512((const void *)(nb + 64 * c));
            const __m512i v1 = _mm512_load_si512((const void *)(nb + 64 * c + 64));
            const __m512i lo0 = _mm512_and_si512(v0, m4), hi0 = _mm512_and_si512(_mm512_srli_epi16(v0, 4), m4);
            const __m512i lo1 = _mm512_and_si512(v1, m4), hi1 = _mm512_and_si512(_mm512_srli_epi16(v1, 4), m4);
            for (int t = 0; t < nt; t++) {
                const uint8_t *q = tk->q[t] + (size_t)g * G + 8 * c;
                int32_t b[4];
                memcpy(b, q, 16);
                p0[t] = _mm512_dpbusd_epi32(p0[t], _mm512_set1_epi32(b[0]), lo0);
                p1[t] = _mm512_dpbusd_epi32(p1[t], _mm512_set1_epi32(b[1]), hi0);
                if (nt <= 4) {
                    p2[t] = _mm512_dpbusd_epi32(p2[t], _mm512_set1_epi32(b[2]), lo1);
                    p3[t] = _mm512_dpbusd_epi32(p3[t], _mm512_set1_epi32(b[3]), hi1);
                } else {
                    p0[t] = _mm512_dpbusd_epi32(p0[t], _mm512_set1_epi32(b[2]), lo1);
                    p1[t] = _mm512_dpbusd_epi32(p1[t], _mm512_set1_epi32(b[3]), hi1);
                }
            }
        }
        const __m512i ws = _mm512_cvtepi16_epi32(_mm256_load_si256((const __m256i *)(r + 32)));
        const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)r));
        for (int t = 0; t < nt; t++) {
            const __m512i s = _mm512_add_epi32(_mm512_add_epi32(p0[t], p1[t]), _mm512_add_epi32(p2[t], p3[t]));
            const __m512i corr = _mm512_add_epi32(_mm512_set1_epi32(tk->cx[t][g]),
                                                  _mm512_mullo_epi32(_mm512_set1_epi32(tk->z[t][g]), ws));
            const __m512 sc = _mm512_mul_ps(dw, _mm512_set1_ps(tk->d[t][g]));
            ys[t] = _mm512_add_ps(ys[t], _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(s, corr)), sc));
        }
    }
}

/* Tile T (all 16 rows in range) of tokens [tb, tb + ntb), ntb <= X16_TOK, in passes of up to
 * X16_NT_ZMM tokens. */
static void x16_zmm_tokens(const sq_sq4_matrix *w, const sq_qact *x, int T, int tb, int ntb,
                           const int32_t cxb[X16_TOK][SQ_X16_MAX_GROUPS], float *y, int ldy, const int G) {
    const int K = w->K, ng = K / G;
    const uint8_t *tile = w->data + (size_t)T * SQ_X16_TILE(K, G);
    for (int c0 = 0; c0 < ntb; c0 += X16_NT_ZMM) {
        const int nt = ntb - c0 < X16_NT_ZMM ? ntb - c0 : X16_NT_ZMM;
        x16_toks tk;
        x16_toks_at(x, tb + c0, nt, cxb, c0, &tk);
        __m512 ys[X16_NT_ZMM];
        switch (nt) { /* constant token counts: the token loops unroll */
        case 1: x16_zmm(tile, ng, G, 1, &tk, ys); break;
        case 2: x16_zmm(tile, ng, G, 2, &tk, ys); break;
        case 3: x16_zmm(tile, ng, G, 3, &tk, ys); break;
        case 4: x16_zmm(tile, ng, G, 4, &tk, ys); break;
        case 5: x16_zmm(tile, ng, G, 5, &tk, ys); break;
        case 6: x16_zmm(tile, ng, G, 6, &tk, ys); break;
        case 7: x16_zmm(tile, ng, G, 7, &tk, ys); break;
        default: x16_zmm(tile, ng, G, 8, &tk, ys); break;
        }
        for (int t = 0; t < nt; t++) _mm512_storeu_ps(y + (size_t)(tb + c0 + t) * ldy + 16 * T, ys[t]);
    }
}
#endif

/* Rows [r0, r1) of any number of tokens from an X16 matrix (tiles that r0 / r1 cut are computed
 * whole and only their rows in range stored): y (ldy) or, with acc != NULL, the group sums
 * (group_sums_sq4's layout). Rows go in chunks of about X16_CHUNK bytes of weights; per chunk, per
 * block of X16_TOK tokens: 8·Σq_x of every group, then each tile with the tokens in passes. A
 * chunk stays in L2 while its blocks of tokens go by, so a prompt reads each weight from memory
 * once, not once per 8 tokens. */
SQ_INLINE void x16_decode(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, float *y, int ldy, int32_t *acc,
                          const int G) {
    const int K = w->K, ng = K / G;
    const int sub = X16_SUB(x->bits);
    const size_t tile_bytes = SQ_X16_TILE(K, G);
    const int chunk = X16_CHUNK / tile_bytes > 1 ? (int)(X16_CHUNK / tile_bytes) : 1; /* tiles */
    int32_t cxb[X16_TOK][SQ_X16_MAX_GROUPS];
    for (int Tc = r0 / 16; 16 * Tc < r1; Tc += chunk) {
        const int c0r = 16 * Tc > r0 ? 16 * Tc : r0, c1r = 16 * (Tc + chunk) < r1 ? 16 * (Tc + chunk) : r1;
        for (int tb = 0; tb < x->n_tok; tb += X16_TOK) {
            const int ntb = x->n_tok - tb < X16_TOK ? x->n_tok - tb : X16_TOK;
            for (int t = 0; t < ntb; t++) act_sums8(x->q + (size_t)(tb + t) * K, ng, G, cxb[t]);
            for (int T = Tc; 16 * T < c1r; T++) {
#if SQ_X86_VNNI && !SQ_VNNI_EMULATE
                if (!acc && 16 * T >= c0r && 16 * T + 16 <= c1r) {
                    x16_zmm_tokens(w, x, T, tb, ntb, (const int32_t(*)[SQ_X16_MAX_GROUPS])cxb, y, ldy, G);
                    continue;
                }
#endif
                x16_tile_tokens(w, x, T, c0r, c1r, tb, ntb, (const int32_t(*)[SQ_X16_MAX_GROUPS])cxb, y, ldy, acc,
                                sub, G);
            }
        }
    }
}

#define DEF_X16_DECODE(NAME, GEXPR)                                                                             \
    static void NAME(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, float *y, int ldy, int32_t *acc) { \
        x16_decode(w, x, r0, r1, y, ldy, acc, GEXPR);                                                             \
    }
DEF_X16_DECODE(x16_decode_32, 32)
DEF_X16_DECODE(x16_decode_64, 64)
DEF_X16_DECODE(x16_decode_128, 128)
DEF_X16_DECODE(x16_decode_any, w->G)

static void x16_decode_g(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, float *y, int ldy, int32_t *acc) {
    switch (w->G) {
    case 32: x16_decode_32(w, x, r0, r1, y, ldy, acc); break;
    case 64: x16_decode_64(w, x, r0, r1, y, ldy, acc); break;
    case 128: x16_decode_128(w, x, r0, r1, y, ldy, acc); break;
    default: x16_decode_any(w, x, r0, r1, y, ldy, acc); break;
    }
}

/* X16 matrices: the tiled prefill from this many tokens on. With AVX-512 never: x16_zmm multiplies
 * 16 rows per instruction and beat the prefill tile at every count measured (Zen 5, bench_kernels
 * --8b -t 2: 1.5x at 64 tokens, 1.5-1.8x at 512). With 256-bit vectors from 8 tokens on, like the
 * row layout (the prefill tile measured faster from 12 tokens, about even at 8). */
#if SQ_X86_VNNI && !SQ_VNNI_EMULATE
#define X16_PREFILL_MIN_TOK (1 << 30)
#else
#define X16_PREFILL_MIN_TOK PREFILL_MIN_TOK
#endif
static int use_prefill(const sq_sq4_matrix *w, const sq_qact *x) {
    return x->n_tok >= (w->layout == SQ_SQ4_X16 ? X16_PREFILL_MIN_TOK : PREFILL_MIN_TOK) && w->G <= SEG_MAX;
}

static void matmul_sq4_x86(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, float *y, int ldy) {
    if (use_prefill(w, x)) {
        sq4_prefill(w, x, r0, r1, y, ldy, NULL);
        return;
    }
    if (w->layout == SQ_SQ4_X16) {
        x16_decode_g(w, x, r0, r1, y, ldy, NULL);
        return;
    }
    if (x->n_tok == 1)
        decode_rows(w, x, r0, r1, 0, y, NULL);
    else
        decode_rows_nt(w, x, r0, r1, y, ldy);
}

static void group_sums_sq4_x86(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, int32_t *acc) {
    const int ng = w->K / w->G;
    if (use_prefill(w, x)) {
        sq4_prefill(w, x, r0, r1, NULL, 0, acc);
        return;
    }
    if (w->layout == SQ_SQ4_X16) {
        x16_decode_g(w, x, r0, r1, NULL, 0, acc);
        return;
    }
    for (int t = 0; t < x->n_tok; t++) decode_rows(w, x, r0, r1, t, NULL, acc + (size_t)t * w->rows * ng);
}

/* ---- Q8_0 × Q8_0 ----------------------------------------------------------------------------- */

/* s8·s8 via maddubs: |w| (u8, 128 for −128) times act with w's sign; |product pair| ≤ 32512.
 * 8 int32 lanes whose sum is the exact block dot product. */
static inline __m256i dot_s8(__m256i wv, __m256i av) {
#if SQ_X86_VNNI
    return sq_dpbusd(_mm256_setzero_si256(), _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(av, wv));
#else
    return WIDEN(_mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(av, wv)));
#endif
}

/* One token: one row at a time, each weight byte read once. Walking one row after the other
 * keeps the access a single sequential stream: interleaving 4 rows measured half the bandwidth.
 * Block sums are exact int32 (8 blocks per reduce8), then added in block order. */
static void q8_decode(const sq_q8_matrix *w, const sq_q8act *x, int r0, int r1, float *y, int ldy) {
    const int K = w->K, nb = K / 32;
    const size_t row_bytes = (size_t)34 * nb;
    for (int t = 0; t < x->n_tok; t++) {
        const int8_t *qx = x->q + (size_t)t * K;
        const float *dx = x->d + (size_t)t * nb;
        for (int r = r0; r < r1; r++) {
            const uint8_t *row = w->data + (size_t)r * row_bytes;
            float ys = 0.0f;
            int b = 0;
            for (; b + 8 <= nb; b += 8) {
                __m256i v[8];
                for (int j = 0; j < 8; j++)
                    v[j] = dot_s8(_mm256_loadu_si256((const __m256i *)(row + (size_t)(b + j) * 34 + 2)),
                                  _mm256_loadu_si256((const __m256i *)(qx + (size_t)(b + j) * 32)));
                const __m256 sc = _mm256_mul_ps(load_scales8(row + (size_t)b * 34, 34), _mm256_loadu_ps(dx + b));
                float term[8];
                _mm256_storeu_ps(term, _mm256_mul_ps(_mm256_cvtepi32_ps(reduce8(v)), sc));
                for (int j = 0; j < 8; j++) ys += term[j];
            }
            for (; b < nb; b++) {
                const uint8_t *blk = row + (size_t)b * 34;
                const int32_t s = hsum_epi32(dot_s8(_mm256_loadu_si256((const __m256i *)(blk + 2)),
                                                    _mm256_loadu_si256((const __m256i *)(qx + (size_t)b * 32))));
                ys += (float)s * (fp16_load(blk) * dx[b]);
            }
            y[(size_t)t * ldy + r] = ys;
        }
    }
}

/* ---- Q8_0, few tokens (a decode step of several sequences) -----------------------------------
 * One row at a time, all tokens of a chunk (up to 8) against it: the row comes from memory once
 * and stays in L1 while every token uses it. A reduce8 turns 8 (block, token) vectors into 8 exact
 * int32 block sums at once, with the lanes laid out as 8 / NTP blocks × NTP tokens (the token count
 * nt padded to NTP = 2, 4 or 8; padding lanes are zero vectors, never stored). The fp32 terms
 * acc·(d_w·d_x) are formed 8 at
 * a time and added to each token's sum in block order (kernels.h canonical epilogue): for 4 and 8
 * tokens that is a vector add per block, with one lane per token. The activation scales of a
 * segment of blocks are first laid out in the same (block, token) order (dxt), once per call. */
#define Q8_FEW_MAX 8      /* up to this many tokens per call: the few-token path */
#define Q8_SEG_FEW 256    /* blocks of activation scales interleaved at a time (8 KB of floats) */

/* |w| (u8, 128 for −128) and w for the sign: wa, wq. One block · one token: 8 int32 lanes. */
static inline __m256i dot_s8_pre(__m256i wa, __m256i wq, __m256i av) {
#if SQ_X86_VNNI
    return sq_dpbusd(_mm256_setzero_si256(), wa, _mm256_sign_epi8(av, wq));
#else
    return WIDEN(_mm256_maddubs_epi16(wa, _mm256_sign_epi8(av, wq)));
#endif
}

/* Row `row` (nbs blocks, running sums in ys[0..NTP)), blocks [b0, b0+nbs) of tokens qx[0..NTP). */
SQ_INLINE void q8_row_few(const uint8_t *row, const int8_t *const qx[Q8_FEW_MAX], const float *dxt, int nbs,
                          float ys[Q8_FEW_MAX], const int nt, const int NTP) {
    const int NB = 8 / NTP; /* blocks per reduce8 */
    __m128 y4 = _mm_setzero_ps();
    __m256 y8 = _mm256_setzero_ps();
    if (NTP == 4) y4 = _mm_loadu_ps(ys);
    if (NTP == 8) y8 = _mm256_loadu_ps(ys);
    int b = 0;
    for (; b + NB <= nbs; b += NB) {
        __m256i v[8];
        float dw[8];
        for (int k = 0; k < NB; k++) {
            const uint8_t *blk = row + (size_t)(b + k) * 34;
            const __m256i wq = _mm256_loadu_si256((const __m256i *)(blk + 2)), wa = _mm256_sign_epi8(wq, wq);
            dw[k] = fp16_load(blk);
            for (int t = 0; t < NTP; t++) /* padding lanes: zero, never stored */
                v[k * NTP + t] = t < nt ? dot_s8_pre(wa, wq, _mm256_loadu_si256((const __m256i *)(qx[t] + (size_t)(b + k) * 32)))
                                        : _mm256_setzero_si256();
        }
        __m256 dwv;
        if (NTP == 8) dwv = _mm256_set1_ps(dw[0]);
        else if (NTP == 4) dwv = _mm256_setr_m128(_mm_set1_ps(dw[0]), _mm_set1_ps(dw[1]));
        else if (NTP == 2) dwv = _mm256_setr_ps(dw[0], dw[0], dw[1], dw[1], dw[2], dw[2], dw[3], dw[3]);
        else dwv = _mm256_setr_ps(dw[0], dw[1], dw[2], dw[3], dw[4], dw[5], dw[6], dw[7]);
        const __m256 sc = _mm256_mul_ps(dwv, _mm256_loadu_ps(dxt + (size_t)b * NTP));
        const __m256 term = _mm256_mul_ps(_mm256_cvtepi32_ps(reduce8(v)), sc);
        if (NTP == 8) {
            y8 = _mm256_add_ps(y8, term);
        } else if (NTP == 4) {
            y4 = _mm_add_ps(y4, _mm256_castps256_ps128(term));
            y4 = _mm_add_ps(y4, _mm256_extractf128_ps(term, 1));
        } else {
            float tm[8];
            _mm256_storeu_ps(tm, term);
            for (int k = 0; k < NB; k++)
                for (int t = 0; t < NTP; t++) ys[t] += tm[k * NTP + t];
        }
    }
    if (NTP == 4) _mm_storeu_ps(ys, y4);
    if (NTP == 8) _mm256_storeu_ps(ys, y8);
    for (; b < nbs; b++) { /* the last nbs % NB blocks, one at a time */
        const uint8_t *blk = row + (size_t)b * 34;
        const __m256i wq = _mm256_loadu_si256((const __m256i *)(blk + 2)), wa = _mm256_sign_epi8(wq, wq);
        const float dw = fp16_load(blk);
        for (int t = 0; t < nt; t++) {
            const int32_t s = hsum_epi32(dot_s8_pre(wa, wq, _mm256_loadu_si256((const __m256i *)(qx[t] + (size_t)b * 32))));
            ys[t] += (float)s * (dw * dxt[(size_t)b * NTP + t]);
        }
    }
}

/* Rows [r0, r1) of tokens [t0, t0 + nt), nt <= NTP: blocks in segments of Q8_SEG_FEW, running
 * sums kept in y between segments (so blocks are still added in order). */
SQ_INLINE void q8_few_chunk(const sq_q8_matrix *w, const sq_q8act *x, int t0, int nt, int r0, int r1, float *y,
                            int ldy, const int NTP) {
    const int K = w->K, nb = K / 32;
    const size_t row_bytes = (size_t)34 * nb;
    float dxt[Q8_SEG_FEW * Q8_FEW_MAX] __attribute__((aligned(32)));
    for (int b0 = 0; b0 < nb; b0 += Q8_SEG_FEW) {
        const int nbs = nb - b0 < Q8_SEG_FEW ? nb - b0 : Q8_SEG_FEW;
        const int8_t *qx[Q8_FEW_MAX];
        for (int t = 0; t < NTP; t++) {
            const int tt = t0 + (t < nt ? t : nt - 1); /* padding lanes: any valid pointer and scale */
            qx[t] = x->q + (size_t)tt * K + (size_t)b0 * 32;
            for (int b = 0; b < nbs; b++) dxt[(size_t)b * NTP + t] = x->d[(size_t)tt * nb + b0 + b];
        }
        for (int r = r0; r < r1; r++) {
            float ys[Q8_FEW_MAX] = {0};
            if (b0 > 0)
                for (int t = 0; t < nt; t++) ys[t] = y[(size_t)(t0 + t) * ldy + r];
            q8_row_few(w->data + (size_t)r * row_bytes + (size_t)b0 * 34, qx, dxt, nbs, ys, nt, NTP);
            for (int t = 0; t < nt; t++) y[(size_t)(t0 + t) * ldy + r] = ys[t];
        }
    }
}

#define DEF_Q8_FEW(NAME, NT, NTP)                                                                 \
    static void NAME(const sq_q8_matrix *w, const sq_q8act *x, int r0, int r1, float *y, int ldy) { \
        q8_few_chunk(w, x, 0, NT, r0, r1, y, ldy, NTP);                                             \
    }
DEF_Q8_FEW(q8_few_2, 2, 2)
DEF_Q8_FEW(q8_few_3, 3, 4)
DEF_Q8_FEW(q8_few_4, 4, 4)
DEF_Q8_FEW(q8_few_5, 5, 8)
DEF_Q8_FEW(q8_few_6, 6, 8)
DEF_Q8_FEW(q8_few_7, 7, 8)
DEF_Q8_FEW(q8_few_8, 8, 8)

/* 2 .. Q8_FEW_MAX tokens, as one chunk; constant token counts so that the token loops unroll */
static void q8_few(const sq_q8_matrix *w, const sq_q8act *x, int r0, int r1, float *y, int ldy) {
    static void (*const fn[Q8_FEW_MAX + 1])(const sq_q8_matrix *, const sq_q8act *, int, int, float *, int) = {
        NULL, NULL, q8_few_2, q8_few_3, q8_few_4, q8_few_5, q8_few_6, q8_few_7, q8_few_8};
    fn[x->n_tok](w, x, r0, r1, y, ldy);
}

/* Prefill: 16 rows × 4 tokens, rows interleaved per k-step like the SQ4 tile. maddubs needs one
 * unsigned operand, so the weights are stored as |w| plus w itself for the sign: each (row vector,
 * token) step is sign(a, w), then maddubs(|w|, ·) + madd (or one dpbusd). Lanes are rows, so each
 * block's sum is an exact int32 lane; one fp32 term per block, added in block order. */
#define Q8_SEG 512 /* values per segment: 2 × 8 KB of interleaved bytes for 16 rows */

typedef struct {
    uint8_t wa[Q8_SEG / 4][PF_R][4] __attribute__((aligned(32))); /* |w| */
    int8_t wq[Q8_SEG / 4][PF_R][4] __attribute__((aligned(32)));  /* w (sign source) */
    float dw[Q8_SEG / 32][PF_R];
} q8_tile;

static void q8_unpack_tile(const sq_q8_matrix *w, const int rr[PF_R], int b0, int nbs, q8_tile *tl) {
    const size_t row_bytes = (size_t)34 * (w->K / 32);
    for (int v = 0; v < PF_RV; v++)
        for (int bl = 0; bl < nbs; bl++) {
            const int8_t *rows[8];
            for (int i = 0; i < 8; i++) {
                const uint8_t *blk = w->data + (size_t)rr[8 * v + i] * row_bytes + (size_t)(b0 + bl) * 34;
                tl->dw[bl][8 * v + i] = fp16_load(blk);
                rows[i] = (const int8_t *)(blk + 2);
            }
            transpose_8x32(rows, tl->wq[bl * 8][8 * v], sizeof tl->wq[0]); /* a block: 32 values, 8 k-steps */
        }
    for (int j = 0; j < nbs * 8; j++)
        for (int v = 0; v < PF_RV; v++) {
            const __m256i q = _mm256_load_si256((const __m256i *)tl->wq[j][8 * v]);
            _mm256_store_si256((__m256i *)tl->wa[j][8 * v], _mm256_sign_epi8(q, q)); /* |−128| = 128 as u8 */
        }
}

static void q8_quad(const q8_tile *tl, const int8_t *const qa[PF_T], const float *const da[PF_T], int nbs,
                    float yt[PF_T][PF_R]) {
    for (int bl = 0; bl < nbs; bl++) {
        __m256i acc[PF_T][PF_RV];
        for (int t = 0; t < PF_T; t++)
            for (int v = 0; v < PF_RV; v++) acc[t][v] = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int j = 0; j < 8; j++) {
            __m256i wa[PF_RV], wq[PF_RV];
            for (int v = 0; v < PF_RV; v++) {
                wa[v] = _mm256_load_si256((const __m256i *)tl->wa[bl * 8 + j][8 * v]);
                wq[v] = _mm256_load_si256((const __m256i *)tl->wq[bl * 8 + j][8 * v]);
            }
            for (int t = 0; t < PF_T; t++) {
                const __m256i a = bcast4((const uint8_t *)(qa[t] + bl * 32 + 4 * j));
                for (int v = 0; v < PF_RV; v++) {
#if SQ_X86_VNNI
                    acc[t][v] = sq_dpbusd(acc[t][v], wa[v], _mm256_sign_epi8(a, wq[v]));
#else
                    acc[t][v] = _mm256_add_epi32(acc[t][v], WIDEN(_mm256_maddubs_epi16(wa[v], _mm256_sign_epi8(a, wq[v]))));
#endif
                }
            }
        }
        for (int t = 0; t < PF_T; t++) {
            const __m256 dxt = _mm256_set1_ps(da[t][bl]);
            for (int v = 0; v < PF_RV; v++) {
                const __m256 sc = _mm256_mul_ps(_mm256_loadu_ps(&tl->dw[bl][8 * v]), dxt);
                float *yp = &yt[t][8 * v];
                _mm256_storeu_ps(yp, _mm256_add_ps(_mm256_loadu_ps(yp), _mm256_mul_ps(_mm256_cvtepi32_ps(acc[t][v]), sc)));
            }
        }
    }
}

static void matmul_q8_x86(const sq_q8_matrix *w, const sq_q8act *x, int r0, int r1, float *y, int ldy) {
    const int K = w->K, nb = K / 32, nt = x->n_tok;
    if (nt == 1) {
        q8_decode(w, x, r0, r1, y, ldy);
        return;
    }
    if (nt <= Q8_FEW_MAX) {
        q8_few(w, x, r0, r1, y, ldy);
        return;
    }
    const int seg_blocks = Q8_SEG / 32;
    q8_tile tl;
    float yt[PF_T][PF_R] __attribute__((aligned(32)));
    for (int r = r0; r < r1; r += PF_R) {
        int rr[PF_R];
        for (int i = 0; i < PF_R; i++) rr[i] = r + i < r1 ? r + i : r1 - 1;
        const int nr = r1 - r < PF_R ? r1 - r : PF_R;
        for (int b0 = 0; b0 < nb; b0 += seg_blocks) {
            const int nbs = nb - b0 < seg_blocks ? nb - b0 : seg_blocks;
            q8_unpack_tile(w, rr, b0, nbs, &tl);
            for (int t = 0; t < nt; t += PF_T) {
                const int8_t *qa[PF_T];
                const float *da[PF_T];
                for (int j = 0; j < PF_T; j++) {
                    const int tj = t + j < nt ? t + j : nt - 1;
                    qa[j] = x->q + (size_t)tj * K + (size_t)b0 * 32;
                    da[j] = x->d + (size_t)tj * nb + b0;
                }
                const int ntt = nt - t < PF_T ? nt - t : PF_T;
                memset(yt, 0, sizeof yt); /* later segments continue the running sums */
                if (b0 > 0)
                    for (int j = 0; j < ntt; j++) memcpy(yt[j], y + (size_t)(t + j) * ldy + r, sizeof(float) * nr);
                q8_quad(&tl, qa, da, nbs, yt);
                for (int j = 0; j < ntt; j++) memcpy(y + (size_t)(t + j) * ldy + r, yt[j], sizeof(float) * nr);
            }
        }
    }
}

/* ---- activation quantization (bit-identical to quantize_act.c) ------------------------------ */

/* Butterfly stages h = 1, 2, 4 of FORMAT.md §4.1 inside one vector of 8. x + (−y) == x − y exactly
 * and ×±1 is exact, so every output is the same a+b / a−b as the scalar loop. */
static inline __m256 wht8(__m256 a) {
    const __m256 sgn1 = _mm256_setr_ps(1, -1, 1, -1, 1, -1, 1, -1);
    const __m256 sgn2 = _mm256_setr_ps(1, 1, -1, -1, 1, 1, -1, -1);
    const __m256 sgn4 = _mm256_setr_ps(1, 1, 1, 1, -1, -1, -1, -1);
    a = _mm256_add_ps(_mm256_permute_ps(a, 0xA0), _mm256_mul_ps(_mm256_permute_ps(a, 0xF5), sgn1)); /* pairs */
    a = _mm256_add_ps(_mm256_permute_ps(a, 0x44), _mm256_mul_ps(_mm256_permute_ps(a, 0xEE), sgn2)); /* quads */
    return _mm256_add_ps(_mm256_permute2f128_ps(a, a, 0x00), _mm256_mul_ps(_mm256_permute2f128_ps(a, a, 0x11), sgn4));
}

/* In-place butterfly of FORMAT.md §4.1 on n = 2^k ≥ 8 floats. */
static void wht_x86(float *v, int n) {
    for (int i = 0; i < n; i += 8) _mm256_storeu_ps(v + i, wht8(_mm256_loadu_ps(v + i)));
    for (int h = 8; h < n; h *= 2)
        for (int i = 0; i < n; i += 2 * h)
            for (int j = i; j < i + h; j += 8) {
                __m256 a = _mm256_loadu_ps(v + j), b = _mm256_loadu_ps(v + j + h);
                _mm256_storeu_ps(v + j, _mm256_add_ps(a, b));
                _mm256_storeu_ps(v + j + h, _mm256_sub_ps(a, b));
            }
}

#define SQ_RINT_MAGIC 12582912.0f
static inline float rint_clamp_s(float v, float lo, float hi) {
    if (!(v >= lo)) return lo;
    if (v > hi) return hi;
    float r = (v + SQ_RINT_MAGIC) - SQ_RINT_MAGIC;
    return r > hi ? hi : r;
}

static inline float hmin_ps(__m256 v) {
    __m128 s = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_min_ps(s, _mm_movehl_ps(s, s));
    s = _mm_min_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax_ps(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 32 floats -> 32 bytes (values already integral and in [-128, 255]) */
static inline __m256i pack32(__m256 f0, __m256 f1, __m256 f2, __m256 f3, int is_signed) {
    __m256i i0 = _mm256_cvtps_epi32(f0), i1 = _mm256_cvtps_epi32(f1);
    __m256i i2 = _mm256_cvtps_epi32(f2), i3 = _mm256_cvtps_epi32(f3);
    __m256i w01 = _mm256_packs_epi32(i0, i1), w23 = _mm256_packs_epi32(i2, i3);
    __m256i b = is_signed ? _mm256_packs_epi16(w01, w23) : _mm256_packus_epi16(w01, w23);
    /* packs interleave 128-bit lanes: [0,2,4,6 | 1,3,5,7] in 32-bit units -> restore order */
    return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* Scale, zero point and codes of one group held in n ≤ 8 registers (FORMAT.md §4.2). */
SQ_INLINE void quant_regs(__m256 *r, int n, float L, uint8_t *q, float *d_out, int32_t *z_out) {
    const __m256 zero = _mm256_setzero_ps(), Lv = _mm256_set1_ps(L), nLv = _mm256_set1_ps(-L);
    __m256 mn = zero, mx = zero;
#pragma GCC unroll 8
    for (int j = 0; j < n; j++) {
        mn = _mm256_min_ps(r[j], mn); /* (a < mn) ? a : mn, like the scalar loop (NaN ignored) */
        mx = _mm256_max_ps(r[j], mx);
    }
    const float fmn = hmin_ps(mn), fmx = hmax_ps(mx);
    const float d = (fmx - fmn) / L;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    const float z = rint_clamp_s(-fmn * id, 0.0f, L);
    const __m256 idv = _mm256_set1_ps(id), zv = _mm256_set1_ps(z);
#pragma GCC unroll 8
    for (int j = 0; j < n; j++) {
        __m256 a = _mm256_mul_ps(r[j], idv);
        a = _mm256_min_ps(_mm256_max_ps(a, nLv), Lv); /* NaN -> -L (max returns its 2nd operand) */
        a = _mm256_add_ps(_mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), zv);
        r[j] = _mm256_min_ps(_mm256_max_ps(a, zero), Lv);
    }
#pragma GCC unroll 2
    for (int j = 0; j < n; j += 4) _mm256_storeu_si256((__m256i *)(q + 8 * j), pack32(r[j], r[j + 1], r[j + 2], r[j + 3], 0));
    *d_out = d;
    *z_out = (int32_t)z;
}

/* Groups of G = 32 or 64 stay in registers through the rotation and the quantization. */
SQ_INLINE void quant_small(const float *x, int t0, int t1, int wht, sq_qact *out, const int G) {
    const int K = out->K, ng = K / G, n = G / 8;
    const float L = (float)((1 << out->bits) - 1);
    for (int t = t0; t < t1; t++)
        for (int g = 0; g < ng; g++) {
            const float *v = x + (size_t)t * K + (size_t)g * G;
            __m256 r[8];
#pragma GCC unroll 8
            for (int j = 0; j < n; j++) r[j] = _mm256_loadu_ps(v + 8 * j);
            if (wht) {
#pragma GCC unroll 8
                for (int j = 0; j < n; j++) r[j] = wht8(r[j]);
#pragma GCC unroll 3
                for (int h = 1; h < n; h *= 2) /* stages h = 8, 16, 32 values = 1, 2, 4 vectors */
#pragma GCC unroll 4
                    for (int i = 0; i < n; i += 2 * h)
#pragma GCC unroll 4
                        for (int j = i; j < i + h; j++) {
                            const __m256 a = r[j], b = r[j + h];
                            r[j] = _mm256_add_ps(a, b);
                            r[j + h] = _mm256_sub_ps(a, b);
                        }
            }
            quant_regs(r, n, L, out->q + (size_t)t * K + (size_t)g * G, &out->d[(size_t)t * ng + g],
                       &out->z[(size_t)t * ng + g]);
        }
}

static void quantize_act_x86(const float *x, int t0, int t1, int wht, sq_qact *out) {
    const int K = out->K, G = out->G, ng = K / G;
    if (G == 32 || G == 64) {
        if (G == 32) quant_small(x, t0, t1, wht, out, 32);
        else quant_small(x, t0, t1, wht, out, 64);
        return;
    }
    const float L = (float)((1 << out->bits) - 1);
    float buf[SQ_WHT_MAX_G] __attribute__((aligned(32)));
    for (int t = t0; t < t1; t++) {
        for (int g = 0; g < ng; g++) {
            const float *v = x + (size_t)t * K + (size_t)g * G;
            if (wht) {
                memcpy(buf, v, sizeof(float) * G);
                wht_x86(buf, G);
                v = buf;
            }
            /* larger groups: min/max over the whole group, then the codes 32 at a time */
            const __m256 zero = _mm256_setzero_ps();
            __m256 mn = zero, mx = zero;
            for (int j = 0; j < G; j += 8) {
                const __m256 a = _mm256_loadu_ps(v + j);
                mn = _mm256_min_ps(a, mn);
                mx = _mm256_max_ps(a, mx);
            }
            const float fmn = hmin_ps(mn), fmx = hmax_ps(mx);
            const float d = (fmx - fmn) / L;
            const float id = d > 0.0f ? 1.0f / d : 0.0f;
            const float z = rint_clamp_s(-fmn * id, 0.0f, L);
            const __m256 idv = _mm256_set1_ps(id), zv = _mm256_set1_ps(z), Lv = _mm256_set1_ps(L),
                         nLv = _mm256_set1_ps(-L);
            uint8_t *q = out->q + (size_t)t * K + (size_t)g * G;
            for (int j = 0; j < G; j += 32) {
                __m256 f[4];
                for (int u = 0; u < 4; u++) {
                    __m256 a = _mm256_mul_ps(_mm256_loadu_ps(v + j + 8 * u), idv);
                    a = _mm256_min_ps(_mm256_max_ps(a, nLv), Lv);
                    a = _mm256_add_ps(_mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), zv);
                    f[u] = _mm256_min_ps(_mm256_max_ps(a, zero), Lv);
                }
                _mm256_storeu_si256((__m256i *)(q + j), pack32(f[0], f[1], f[2], f[3], 0));
            }
            out->d[(size_t)t * ng + g] = d;
            out->z[(size_t)t * ng + g] = (int32_t)z;
        }
    }
}

static void quantize_q8act_x86(const float *x, int t0, int t1, sq_q8act *out) {
    const int K = out->K, nb = K / 32;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    for (int t = t0; t < t1; t++) {
        for (int b = 0; b < nb; b++) {
            const float *v = x + (size_t)t * K + (size_t)b * 32;
            __m256 a[4], am = _mm256_setzero_ps();
            for (int u = 0; u < 4; u++) {
                a[u] = _mm256_loadu_ps(v + 8 * u);
                am = _mm256_max_ps(_mm256_and_ps(a[u], absmask), am);
            }
            const float amax = hmax_ps(am);
            const float d = amax / 127.0f;
            const __m256 idv = _mm256_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
            for (int u = 0; u < 4; u++) {
                __m256 s = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(a[u], idv), lo), hi);
                a[u] = _mm256_round_ps(s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            }
            _mm256_storeu_si256((__m256i *)(out->q + (size_t)t * K + (size_t)b * 32), pack32(a[0], a[1], a[2], a[3], 1));
            out->d[(size_t)t * nb + b] = d;
        }
    }
}

const sq_kernel_table SQ_X86_TABLE = {
    .name = SQ_X86_NAME,
    .sq4_layout = SQ_SQ4_X16,
    .matmul_sq4 = matmul_sq4_x86,
    .matmul_q8 = matmul_q8_x86,
    .group_sums_sq4 = group_sums_sq4_x86,
    .quantize_act = quantize_act_x86,
    .quantize_q8act = quantize_q8act_x86,
};
