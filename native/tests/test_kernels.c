/* test_kernels.c — kernels against straightforward references, and every SIMD table against scalar.
 *
 * - fp16: exhaustive round trip over all 65536 halves, decode against ldexp, encode against a
 *   double-precision rounding reference.
 * - WHT butterfly against a naive H·v; activation quantization (§4.2) and Q8_0 activation
 *   quantization against a direct transcription of the spec using libm rint.
 * - SQ4 group sums: scalar against a naive unpack-and-multiply reference, SIMD against scalar
 *   exactly; float outputs within 1e-5 relative (relative to Σ|terms|, which is what an fp32 sum in
 *   any order can promise). Random shapes, odd row counts, n_tok 1..17, G 32..256 and per-row,
 *   bits 4/8, extreme weights and activations, row sub-ranges and ldy > rows.
 * SQ_FUZZ_ITERS sets the number of random matmul cases (default 300).
 */
#include "kernels/kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

/* The AVX-512 VNNI kernels are the x86 template with dpbusd. CPUs without AVX-512 cannot run them,
 * so the template is compiled here once more for AVX2 with dpbusd emulated by maddubs + madd (exact
 * for the value ranges the kernels use): the VNNI variant's logic is tested on every AVX2 machine,
 * and the real one too where the CPU has it. */
#if defined(__x86_64__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 9))
#define SQ_TEST_VNNI_EMU 1
#include <immintrin.h>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
#define SQ_X86_VNNI 1
#define SQ_VNNI_EMULATE 1
#define SQ_X86_NAME "avx512-emulated"
#define SQ_X86_TABLE sq_kernels_vnni_emulated
#include "kernels/matmul_x86_impl.h"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

/* the SIMD tables this CPU and build have (scalar excluded) */
static const sq_kernel_table *g_simd[6];
static int g_nsimd;

/* ---- fp16 ------------------------------------------------------------------------------------ */
static int is_nan32(float f) { return f != f; }

static void test_fp16(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = sq_fp16_to_fp32((uint16_t)h);
        uint16_t back = sq_fp32_to_fp16(f);
        if (back != h) bad++;
        uint32_t e = (h >> 10) & 31, m = h & 1023;
        if (e == 31) {
            if (m == 0) CHECK(isinf(f) && (signbit(f) != 0) == ((h >> 15) != 0), "half %04x -> %g", h, f);
            else CHECK(is_nan32(f), "half %04x should be NaN", h);
            continue;
        }
        double v = e ? ldexp(1024.0 + m, (int)e - 25) : ldexp((double)m, -24);
        if (h >> 15) v = -v;
        CHECK((double)f == v && (signbit(f) != 0) == ((h >> 15) != 0), "half %04x -> %.9g want %.9g", h, f, v);
    }
    CHECK(bad == 0, "fp16 round trip failed for %d halves", bad);

    /* encoding: random floats (all exponents) against round-half-even in double */
    for (int i = 0; i < 200000; i++) {
        uint32_t u = rnd() ^ (rnd() << 16);
        if (i % 4 == 0) u = (u & 0x807FFFFFu) | ((uint32_t)rnd_int(100, 145) << 23); /* near half range */
        if (i % 8 == 1) u = (u & 0xFFFFE000u) | 0x1000u;                              /* exact ties */
        float f;
        memcpy(&f, &u, 4);
        if (is_nan32(f)) {
            CHECK(is_nan32(sq_fp16_to_fp32(sq_fp32_to_fp16(f))), "NaN lost");
            continue;
        }
        double a = fabs((double)f), want;
        if (a >= 65520.0) want = INFINITY;
        else if (a == 0) want = 0;
        else {
            int ex = (int)floor(log2(a));
            if (ex < -14) ex = -14;
            double ulp = ldexp(1.0, ex - 10);
            want = nearbyint(a / ulp) * ulp;
        }
        if (signbit(f)) want = -want;
        float got = sq_fp16_to_fp32(sq_fp32_to_fp16(f));
        CHECK((double)got == want && signbit(got) == signbit(f), "fp32 %.9g (%08x) -> half %.9g want %.9g", f, u, got, want);
    }
    /* the fast paths (table, F16C rows) give the portable conversion's bits, both directions */
    sq_fp16_init();
    static uint16_t hs[65536], back[65536];
    static float buf[65536];
    for (uint32_t h = 0; h < 65536; h++) hs[h] = (uint16_t)h;
    sq_fp16_to_fp32_row(hs + 1, buf + 1, 65535); /* an odd start and length: the tail path too */
    buf[0] = sq_fp16_to_fp32_lut(0);
    for (uint32_t h = 0; h < 65536; h++) {
        float want = sq_fp16_to_fp32((uint16_t)h), lut = sq_fp16_to_fp32_lut((uint16_t)h);
        CHECK((is_nan32(want) && is_nan32(buf[h])) || memcmp(&want, &buf[h], 4) == 0, "row conversion %04x", h);
        CHECK((is_nan32(want) && is_nan32(lut)) || memcmp(&want, &lut, 4) == 0, "table %04x", h);
    }
    for (int i = 0; i < 65536; i++) {
        uint32_t u = rnd() ^ (rnd() << 16);
        if (i % 2) u = (u & 0x807FFFFFu) | ((uint32_t)rnd_int(100, 145) << 23);
        memcpy(&buf[i], &u, 4);
    }
    sq_fp32_to_fp16_row(buf, back, 65533);
    for (int i = 0; i < 65533; i++)
        CHECK(is_nan32(buf[i]) || back[i] == sq_fp32_to_fp16(buf[i]), "row to half %d: %.9g", i, buf[i]);
}

/* ---- Walsh–Hadamard ------------------------------------------------------------------------ */
static int popcount32(unsigned v) {
    int c = 0;
    for (; v; v &= v - 1) c++;
    return c;
}

static void test_wht(void) {
    for (int n = 1; n <= 1024; n *= 2) {
        float *v = xmalloc(sizeof(float) * n);
        double *x = xmalloc(sizeof(double) * n);
        for (int rep = 0; rep < 3; rep++) {
            double scale = 0;
            for (int i = 0; i < n; i++) {
                /* rep 0: small integers (exact in fp32), otherwise random floats */
                v[i] = rep == 0 ? (float)rnd_int(-9, 9) : rnd_normal();
                x[i] = v[i];
                scale += fabs(x[i]);
            }
            sq_wht_inplace(v, n);
            for (int i = 0; i < n; i++) {
                double want = 0;
                for (int j = 0; j < n; j++) want += (popcount32((unsigned)(i & j)) & 1) ? -x[j] : x[j];
                if (rep == 0) CHECK((double)v[i] == want, "WHT n=%d i=%d: %g want %g", n, i, v[i], want);
                else CHECK(fabs(v[i] - want) <= 1e-6 * scale, "WHT n=%d i=%d: %g want %g", n, i, v[i], want);
            }
        }
        free(v);
        free(x);
    }
}

/* ---- activation quantization --------------------------------------------------------------- */
/* FORMAT.md §4.1–4.2 transcribed with libm rint (round half to even in the default mode). */
static void ref_quantize(const float *x, int n_tok, int K, int G, int bits, int wht, uint8_t *q, float *d, int32_t *z) {
    const int ng = K / G;
    const int L = (1 << bits) - 1;
    float *v = xmalloc(sizeof(float) * G);
    for (int t = 0; t < n_tok; t++)
        for (int g = 0; g < ng; g++) {
            memcpy(v, x + (size_t)t * K + (size_t)g * G, sizeof(float) * G);
            if (wht) sq_wht_inplace(v, G);
            float mn = 0, mx = 0;
            for (int j = 0; j < G; j++) {
                if (v[j] < mn) mn = v[j];
                if (v[j] > mx) mx = v[j];
            }
            float dd = (mx - mn) / (float)L;
            float id = dd > 0 ? 1.0f / dd : 0.0f;
            int zz = (int)rintf(-mn * id);
            for (int j = 0; j < G; j++) {
                int qq = (int)rintf(v[j] * id) + zz;
                q[(size_t)t * K + (size_t)g * G + j] = (uint8_t)(qq < 0 ? 0 : qq > L ? L : qq);
            }
            d[t * ng + g] = dd;
            z[t * ng + g] = zz;
        }
    free(v);
}

/* fills x with one of several activation patterns */
static void fill_acts(float *x, size_t n, int G, int pattern) {
    for (size_t i = 0; i < n; i++) {
        switch (pattern) {
        case 0: x[i] = rnd_normal(); break;
        case 1: x[i] = 0.0f; break;                                      /* all zero */
        case 2: x[i] = 1.25f; break;                                     /* constant positive */
        case 3: x[i] = -3.0f; break;                                     /* constant negative */
        case 4: x[i] = (float)rnd_int(0, 15) * 0.5f; break;              /* many exact .5 ties */
        case 5: x[i] = (i % G == 0) ? 50.0f : rnd_normal() * 0.01f; break; /* one outlier a group */
        case 6: x[i] = ((i / G) % 2) ? 0.0f : rnd_normal(); break;       /* zero and random groups */
        default: x[i] = rnd_normal() * 1e-30f; break;                    /* tiny values */
        }
    }
}

static void test_quantize_act(void) {
    static const int groups[] = {32, 64, 128, 256};
    for (int it = 0; it < 200; it++) {
        int G = groups[rnd_int(0, 3)];
        int ng = rnd_int(1, 4);
        int K = G * ng, n_tok = rnd_int(1, 9), bits = rnd_int(0, 1) ? 8 : 4, wht = rnd_int(0, 1);
        int pattern = it % 8;
        size_t n = (size_t)n_tok * K;
        float *x = xmalloc(sizeof(float) * n);
        fill_acts(x, n, G, pattern);
        uint8_t *qr = xmalloc(n), *qs = xmalloc(n);
        float *dr = xmalloc(sizeof(float) * n_tok * ng), *ds = xmalloc(sizeof(float) * n_tok * ng);
        int32_t *zr = xmalloc(sizeof(int32_t) * n_tok * ng), *zs = xmalloc(sizeof(int32_t) * n_tok * ng);
        ref_quantize(x, n_tok, K, G, bits, wht, qr, dr, zr);
        for (int k = -1; k < g_nsimd; k++) {
            const sq_kernel_table *kt = k < 0 ? &sq_kernels_scalar : g_simd[k];
            sq_qact a = {qs, ds, zs, n_tok, K, G, bits};
            memset(qs, 0xAB, n);
            /* two calls on a split token range: ranges must be independent */
            int mid = n_tok / 2;
            kt->quantize_act(x, 0, mid, wht, &a);
            kt->quantize_act(x, mid, n_tok, wht, &a);
            CHECK(memcmp(qr, qs, n) == 0, "%s quantize_act q differs (G=%d bits=%d wht=%d pattern=%d)", kt->name, G, bits,
                  wht, pattern);
            CHECK(memcmp(dr, ds, sizeof(float) * n_tok * ng) == 0, "%s quantize_act d differs (pattern %d)", kt->name,
                  pattern);
            CHECK(memcmp(zr, zs, sizeof(int32_t) * n_tok * ng) == 0, "%s quantize_act z differs (pattern %d)", kt->name,
                  pattern);
        }
        /* invariants: zero is exactly representable, all-zero groups have d = 0 and q = z */
        int L = (1 << bits) - 1;
        for (int i = 0; i < n_tok * ng; i++) CHECK(zr[i] >= 0 && zr[i] <= L, "z out of range");
        if (pattern == 1)
            for (size_t i = 0; i < n; i++) CHECK(qr[i] == 0 && dr[0] == 0.0f, "zero group must quantize to 0");
        if (pattern == 2 && !wht)
            for (size_t i = 0; i < n; i++) CHECK(qr[i] == L && zr[0] == 0, "constant positive group");
        if (pattern == 3 && !wht)
            for (size_t i = 0; i < n; i++) CHECK(qr[i] == 0 && zr[0] == L, "constant negative group");
        free(x), free(qr), free(qs), free(dr), free(ds), free(zr), free(zs);
    }
    /* a hand-made tie: group [0, 15, 2.5, 3.5, ...] with L = 15: d = 1, 2.5 -> 2 and 3.5 -> 4 */
    float x[32] = {0};
    x[1] = 15.0f, x[2] = 2.5f, x[3] = 3.5f, x[4] = 0.5f;
    uint8_t q[32];
    float d;
    int32_t z;
    sq_qact a = {q, &d, &z, 1, 32, 32, 4};
    sq_quantize_act_scalar(x, 0, 1, 0, &a);
    CHECK(d == 1.0f && z == 0 && q[1] == 15 && q[2] == 2 && q[3] == 4 && q[4] == 0, "half-even ties");

    /* Q8_0 activations */
    for (int it = 0; it < 100; it++) {
        int K = 32 * rnd_int(1, 12), n_tok = rnd_int(1, 5), nb = K / 32;
        size_t n = (size_t)n_tok * K;
        float *xx = xmalloc(sizeof(float) * n);
        fill_acts(xx, n, 32, it % 8);
        int8_t *qr = xmalloc(n), *qs = xmalloc(n);
        float *dr = xmalloc(sizeof(float) * n_tok * nb), *ds = xmalloc(sizeof(float) * n_tok * nb);
        for (int t = 0; t < n_tok; t++)
            for (int b = 0; b < nb; b++) {
                const float *v = xx + (size_t)t * K + b * 32;
                float amax = 0;
                for (int j = 0; j < 32; j++) amax = fabsf(v[j]) > amax ? fabsf(v[j]) : amax;
                float dd = amax / 127.0f, id = dd > 0 ? 1.0f / dd : 0.0f;
                for (int j = 0; j < 32; j++) {
                    int qq = (int)rintf(v[j] * id);
                    qr[(size_t)t * K + b * 32 + j] = (int8_t)(qq < -127 ? -127 : qq > 127 ? 127 : qq);
                }
                dr[t * nb + b] = dd;
            }
        for (int k = -1; k < g_nsimd; k++) {
            const sq_kernel_table *kt = k < 0 ? &sq_kernels_scalar : g_simd[k];
            sq_q8act a8 = {qs, ds, n_tok, K};
            kt->quantize_q8act(xx, 0, n_tok, &a8);
            CHECK(memcmp(qr, qs, n) == 0 && memcmp(dr, ds, sizeof(float) * n_tok * nb) == 0,
                  "%s quantize_q8act differs (pattern %d)", kt->name, it % 8);
        }
        free(xx), free(qr), free(qs), free(dr), free(ds);
    }
}

/* ---- SQ4 matmul ------------------------------------------------------------------------------ */
/* weight patterns: 0 random, 1 all -8, 2 all 7, 3 alternating extremes, 4 zero */
static uint8_t weight_byte(int pattern) {
    switch (pattern) {
    case 1: return 0x88;
    case 2: return 0x77;
    case 3: return (rnd() & 1) ? 0x78 : 0x87;
    case 4: return 0x00;
    default: return (uint8_t)rnd();
    }
}

static int8_t nib(uint8_t b, int hi) { return (int8_t)((((hi ? b >> 4 : b) & 15) ^ 8) - 8); }

typedef struct {
    int rows, K, G, n_tok, bits;
    int wpat, apat;
} mm_case;

static void run_sq4_case(const mm_case *c) {
    const int rows = c->rows, K = c->K, G = c->G, nt = c->n_tok, ng = K / G;
    const size_t bs = 2 + (size_t)G / 2;
    uint8_t *data = xmalloc(bs * ng * rows);
    int8_t *wq = xmalloc((size_t)rows * K);
    float *dw = xmalloc(sizeof(float) * rows * ng);
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < ng; g++) {
            uint8_t *blk = data + ((size_t)r * ng + g) * bs;
            uint16_t h = sq_fp32_to_fp16(rnd_unit() * 0.1f + 0.001f);
            if (c->wpat == 4 && g == 0) h = 0;
            memcpy(blk, &h, 2);
            dw[r * ng + g] = sq_fp16_to_fp32(h);
            for (int i = 0; i < G / 2; i++) {
                blk[2 + i] = weight_byte(c->wpat);
                wq[(size_t)r * K + g * G + i] = nib(blk[2 + i], 0);
                wq[(size_t)r * K + g * G + i + G / 2] = nib(blk[2 + i], 1);
            }
        }
    int32_t *wsum = xmalloc(sizeof(int32_t) * rows * ng);
    sq_sq4_group_sums(data, rows, K, G, wsum);
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < ng; g++) {
            int32_t s = 0;
            for (int j = 0; j < G; j++) s += wq[(size_t)r * K + g * G + j];
            CHECK(s == wsum[r * ng + g], "wsum r=%d g=%d", r, g);
        }

    /* activations: quantized values directly (patterns beyond what quantize_act produces) */
    const int L = (1 << c->bits) - 1;
    uint8_t *q = xmalloc((size_t)nt * K);
    float *d = xmalloc(sizeof(float) * nt * ng);
    int32_t *z = xmalloc(sizeof(int32_t) * nt * ng);
    for (int t = 0; t < nt; t++) {
        for (int g = 0; g < ng; g++) {
            d[t * ng + g] = rnd_unit() + 0.01f;
            z[t * ng + g] = c->apat == 1 ? 0 : c->apat == 2 ? L : rnd_int(0, L);
        }
        for (int k = 0; k < K; k++) {
            uint8_t v;
            switch (c->apat) {
            case 1: v = 0; break;
            case 2: v = (uint8_t)L; break;
            case 3: v = (uint8_t)(L / 2); break;
            default: v = (uint8_t)rnd_int(0, L); break;
            }
            q[(size_t)t * K + k] = v;
        }
    }
    sq_qact x = {q, d, z, nt, K, G, c->bits};
    sq_sq4_matrix w = {data, wsum, rows, K, G, SQ_SQ4_ROWS};

    /* naive reference */
    const size_t nacc = (size_t)nt * rows * ng;
    int32_t *ref = xmalloc(sizeof(int32_t) * nacc);
    double *yref = xmalloc(sizeof(double) * nt * rows), *yabs = xmalloc(sizeof(double) * nt * rows);
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < rows; r++) {
            double ys = 0, ya = 0;
            for (int g = 0; g < ng; g++) {
                int64_t s = 0;
                for (int j = 0; j < G; j++)
                    s += (int64_t)(q[(size_t)t * K + g * G + j] - z[t * ng + g]) * wq[(size_t)r * K + g * G + j];
                ref[(size_t)t * rows * ng + r * ng + g] = (int32_t)s;
                double term = (double)s * dw[r * ng + g] * d[t * ng + g];
                ys += term;
                ya += fabs(term);
            }
            yref[t * rows + r] = ys;
            yabs[t * rows + r] = ya;
        }

    const int ldy = rows + 3;
    int32_t *acc = xmalloc(sizeof(int32_t) * nacc);
    float *y = xmalloc(sizeof(float) * nt * ldy), *yscalar = xmalloc(sizeof(float) * nt * ldy);
    /* the X16 layout (kernels.h) of the same matrix, for the tables built for it */
    uint8_t *x16 = NULL;
    sq_sq4_matrix w16 = w;
    if (sq_sq4_x16_ok(rows, K, G)) {
        x16 = aligned_alloc(64, (sq_sq4_x16_bytes(rows, K, G) + 63) / 64 * 64); /* kernels.h: 64-byte aligned */
        CHECK(x16 != NULL, "out of memory");
        sq_sq4_repack_x16(data, wsum, K, G, 0, rows / 16, x16);
        w16 = (sq_sq4_matrix){x16, NULL, rows, K, G, SQ_SQ4_X16};
    }
    for (int k = -1; k < 2 * g_nsimd; k++) {
        const sq_kernel_table *kt = k < 0 ? &sq_kernels_scalar : g_simd[k % g_nsimd];
        const int use_x16 = k >= g_nsimd;
        if (use_x16 && (!x16 || kt->sq4_layout != SQ_SQ4_X16)) continue;
        const sq_sq4_matrix *wm = use_x16 ? &w16 : &w;
        /* group sums on two row ranges (exercises r0 > 0 and odd splits) */
        int split = rnd_int(0, rows);
        memset(acc, 0x5A, sizeof(int32_t) * nacc);
        kt->group_sums_sq4(wm, &x, 0, split, acc);
        kt->group_sums_sq4(wm, &x, split, rows, acc);
        CHECK(memcmp(acc, ref, sizeof(int32_t) * nacc) == 0,
              "%s%s group sums differ: rows=%d K=%d G=%d n_tok=%d bits=%d wpat=%d apat=%d", kt->name, use_x16 ? " (x16)" : "", rows, K, G, nt,
              c->bits, c->wpat, c->apat);

        for (int i = 0; i < nt * ldy; i++) y[i] = -12345.0f;
        int r0 = rnd_int(0, rows), r1 = rnd_int(r0, rows);
        kt->matmul_sq4(wm, &x, 0, r0, y, ldy);
        kt->matmul_sq4(wm, &x, r0, r1, y, ldy);
        kt->matmul_sq4(wm, &x, r1, rows, y, ldy);
        int bad = 0;
        for (int t = 0; t < nt; t++) {
            for (int r = 0; r < rows; r++) {
                double got = y[t * ldy + r], want = yref[t * rows + r];
                if (!(fabs(got - want) <= 1e-5 * yabs[t * rows + r] + 1e-30)) bad++;
            }
            for (int r = rows; r < ldy; r++)
                if (y[t * ldy + r] != -12345.0f) bad++;
        }
        CHECK(bad == 0, "%s%s matmul_sq4: %d bad outputs (rows=%d K=%d G=%d n_tok=%d bits=%d)", kt->name, use_x16 ? " (x16)" : "", bad, rows, K, G,
              nt, c->bits);
        /* canonical epilogue (kernels.h): every ISA's floats equal the scalar kernel's bit for bit */
        if (k < 0) memcpy(yscalar, y, sizeof(float) * nt * ldy);
        else CHECK(memcmp(y, yscalar, sizeof(float) * nt * ldy) == 0,
                   "%s%s matmul_sq4 floats differ from scalar (rows=%d K=%d G=%d n_tok=%d bits=%d)", kt->name, use_x16 ? " (x16)" : "", rows, K, G, nt,
                   c->bits);
    }
    free(data), free(wq), free(dw), free(wsum), free(q), free(d), free(z), free(ref), free(yref), free(yabs);
    free(acc), free(y), free(yscalar), free(x16);
}

static void test_sq4(int iters) {
    static const int groups[] = {32, 64, 128, 256};
    /* hand-picked extremes first, then random cases */
    for (int wp = 0; wp < 5; wp++)
        for (int ap = 0; ap < 4; ap++)
            for (int bits = 4; bits <= 8; bits += 4) {
                mm_case c = {rnd_int(1, 9), 256, groups[(wp + ap) % 4], rnd_int(1, 17), bits, wp, ap};
                run_sq4_case(&c);
            }
    for (int it = 0; it < iters; it++) {
        mm_case c;
        c.rows = rnd_int(1, 37);
        if (it % 5 == 4) { /* per-row groups: G = K */
            c.K = 32 * rnd_int(1, 24);
            c.G = c.K;
        } else {
            c.G = groups[rnd_int(0, 3)];
            c.K = c.G * rnd_int(1, 4);
        }
        c.n_tok = rnd_int(1, 17);
        c.bits = rnd_int(0, 1) ? 8 : 4;
        c.wpat = rnd_int(0, 9) < 8 ? 0 : rnd_int(1, 4);
        c.apat = rnd_int(0, 9) < 8 ? 0 : rnd_int(1, 3);
        run_sq4_case(&c);
    }
    /* the few-token path (a batched decode step): many groups per row, so the epilogue's
     * (group, token) lanes and the leftover groups are both exercised */
    for (int it = 0; it < iters / 3 + 1; it++) {
        mm_case c = {rnd_int(1, 37), 0, groups[rnd_int(0, 3)], rnd_int(2, 8), rnd_int(0, 1) ? 8 : 4, 0, 0};
        c.K = c.G * rnd_int(1, 40);
        if (it % 8 == 7) c.wpat = rnd_int(1, 4), c.apat = rnd_int(1, 3);
        run_sq4_case(&c);
    }
    /* every token count of the few-token path (2..8: chunks of 2..4 tokens) × both activation
     * widths (u4: the unwidened 16-bit sums), odd group counts (8-group blocks + leftovers), and
     * the extreme patterns */
    for (int nt = 2; nt <= 8; nt++)
        for (int bits = 4; bits <= 8; bits += 4)
            for (int gi = 0; gi < 4; gi++) {
                mm_case few = {rnd_int(5, 13), groups[gi] * (2 * rnd_int(4, 12) + 1), groups[gi], nt, bits,
                               (nt + gi) % 5, (nt + gi) % 4};
                run_sq4_case(&few);
            }
    /* the largest unwidened u4 sums: every weight 7 (nibble ^ 8 = 15) × every activation 15, G = 256 */
    for (int gi = 0; gi < 4; gi++)
        for (int nt = 2; nt <= 4; nt++) {
            mm_case ext = {3, groups[gi] * 9, groups[gi], nt, 4, 2, 2};
            run_sq4_case(&ext);
        }
    /* the X16 layout (rows % 16 == 0, every x86 table): token counts 1..9 (passes of 1..4 or 1..8
     * tokens, blocks of 8 tokens, the prefill tile from 8 on with 256-bit vectors), every G and
     * per-row groups, both widths, the extreme patterns (u8: 16-bit sums at their limit, 2·255·15
     * per maddubs lane) */
    for (int nt = 1; nt <= 9; nt++)
        for (int bits = 4; bits <= 8; bits += 4)
            for (int gi = 0; gi < 5; gi++) {
                const int G = gi < 4 ? groups[gi] : 32 * rnd_int(1, 40);
                mm_case x16 = {16 * rnd_int(1, 4), gi < 4 ? G * rnd_int(1, 12) : G, G, nt, bits, (nt + gi) % 5,
                               (nt + gi + bits) % 4};
                run_sq4_case(&x16);
            }
    /* X16 rows in several chunks of weights (x16_decode: about 384 KB each; here 1 tile of 211 KB),
     * with token blocks of 8 going by each chunk */
    for (int nt = 1; nt <= 17; nt += 4) {
        mm_case chunks = {48, 32 * 600, 32, nt, nt % 3 ? 8 : 4, 0, 0};
        run_sq4_case(&chunks);
    }
    /* more groups than one segment of interleaved scales (1024 / 4 per token chunk) */
    for (int nt = 2; nt <= 8; nt++) {
        mm_case many = {5, 32 * 600, 32, nt, nt % 2 ? 8 : 4, 0, 0};
        run_sq4_case(&many);
    }
    /* the prefill path over several segments of a row tile (K > 1024 values: the running sums
     * continue across segments, in y itself for full 16-row × 4-token tiles, in a stack copy for
     * the tail rows and tokens), both activation widths, extreme values included */
    for (int gi = 0; gi < 4; gi++)
        for (int bits = 4; bits <= 8; bits += 4) {
            mm_case seg = {rnd_int(33, 47), groups[gi] * (2560 / groups[gi] + rnd_int(0, 3)), groups[gi], rnd_int(9, 15),
                           bits, gi == 1 ? 1 : 0, gi == 2 ? 2 : 0};
            run_sq4_case(&seg);
        }
    /* the largest per-row group the math must hold: K = G = 8192, u8 activations at the extremes */
    mm_case big = {3, 8192, 8192, 2, 8, 1, 2};
    run_sq4_case(&big);
    /* one token (the unsigned-weight decode: nibble ^ 8 and 8·Σq_x per group): every G, both
     * widths, extreme patterns, 8-group blocks plus leftover groups; K = G = 8192 at the extremes;
     * more groups than CX_MAX (row_decode segment by segment) */
    for (int gi = 0; gi < 4; gi++)
        for (int bits = 4; bits <= 8; bits += 4)
            for (int pat = 0; pat < 5; pat++) {
                mm_case one = {rnd_int(1, 37), groups[gi] * rnd_int(9, 19), groups[gi], 1, bits, pat, pat % 4};
                run_sq4_case(&one);
            }
    mm_case big1 = {3, 8192, 8192, 1, 8, 1, 2};
    run_sq4_case(&big1);
    for (int bits = 4; bits <= 8; bits += 4) { /* > CX_MAX groups: two segments, the sum continues in y */
        mm_case many_groups = {3, 32 * 1100, 32, 1, bits, 0, 0};
        run_sq4_case(&many_groups);
        mm_case many_odd = {5, 64 * 1027, 64, 1, bits, bits == 8 ? 1 : 3, 2};
        run_sq4_case(&many_odd);
        /* G = 32's 8-row term sums (sum_rows8) across segments, with a partial last batch of rows */
        mm_case many_rows = {21, 32 * 1100 + 32 * 3, 32, 1, bits, bits == 8 ? 2 : 4, 1};
        run_sq4_case(&many_rows);
    }
    /* per-row groups larger than a prefill segment, with enough tokens for the prefill path */
    for (int bits = 4; bits <= 8; bits += 4) {
        mm_case wide = {19, 2080, 2080, 5, bits, 0, 0};
        run_sq4_case(&wide);
        mm_case wide_many = {7, 2080, 2080, 71, bits, 0, 0}; /* more tokens than one block of the few-token path */
        run_sq4_case(&wide_many);
    }
}

/* ---- Q8_0 matmul ----------------------------------------------------------------------------- */
static void test_q8(int iters) {
    for (int it = 0; it < iters; it++) {
        int rows = rnd_int(1, 37), nb = rnd_int(1, 20), K = 32 * nb, nt = rnd_int(1, 17);
        if (it % 2) nt = rnd_int(2, 8);                     /* the few-token path (a batched decode step) */
        if (it % 16 == 5) nb = rnd_int(250, 530), K = 32 * nb; /* past one segment of activation scales */
        int pat = it % 4; /* 0 random, 1 all -128, 2 all 127, 3 random with -128 */
        uint8_t *data = xmalloc((size_t)rows * nb * 34);
        for (int r = 0; r < rows; r++)
            for (int b = 0; b < nb; b++) {
                uint8_t *blk = data + ((size_t)r * nb + b) * 34;
                uint16_t h = sq_fp32_to_fp16(rnd_unit() * 0.05f);
                memcpy(blk, &h, 2);
                for (int j = 0; j < 32; j++) {
                    int v = pat == 1 ? -128 : pat == 2 ? 127 : pat == 3 && (rnd() & 1) ? -128 : rnd_int(-127, 127);
                    blk[2 + j] = (uint8_t)(int8_t)v;
                }
            }
        int8_t *q = xmalloc((size_t)nt * K);
        float *d = xmalloc(sizeof(float) * nt * nb);
        for (int i = 0; i < nt * K; i++) q[i] = (int8_t)(it % 7 == 6 ? -127 : rnd_int(-127, 127));
        for (int i = 0; i < nt * nb; i++) d[i] = rnd_unit();
        sq_q8_matrix w = {data, rows, K};
        sq_q8act x = {q, d, nt, K};
        const int ldy = rows + 1;
        float *y = xmalloc(sizeof(float) * nt * ldy), *yscalar = xmalloc(sizeof(float) * nt * ldy);
        for (int k = -1; k < g_nsimd; k++) {
            const sq_kernel_table *kt = k < 0 ? &sq_kernels_scalar : g_simd[k];
            for (int i = 0; i < nt * ldy; i++) y[i] = -7.0f;
            int split = rnd_int(0, rows);
            kt->matmul_q8(&w, &x, 0, split, y, ldy);
            kt->matmul_q8(&w, &x, split, rows, y, ldy);
            int bad = 0;
            for (int t = 0; t < nt; t++) {
                for (int r = 0; r < rows; r++) {
                    double want = 0, wabs = 0;
                    for (int b = 0; b < nb; b++) {
                        const uint8_t *blk = data + ((size_t)r * nb + b) * 34;
                        uint16_t h;
                        memcpy(&h, blk, 2);
                        int64_t s = 0, sa = 0;
                        for (int j = 0; j < 32; j++) {
                            int64_t p = (int64_t)(int8_t)blk[2 + j] * q[(size_t)t * K + b * 32 + j];
                            s += p;
                            sa += p < 0 ? -p : p;
                        }
                        double sc = (double)sq_fp16_to_fp32(h) * d[t * nb + b];
                        want += (double)s * sc;
                        /* Q8_0 kernels may sum partial products in fp32 lanes (like ggml): bound by Σ|p| */
                        wabs += (double)sa * fabs(sc);
                    }
                    if (!(fabs(y[t * ldy + r] - want) <= 1e-5 * wabs + 1e-30)) bad++;
                }
                if (y[t * ldy + rows] != -7.0f) bad++;
            }
            CHECK(bad == 0, "%s matmul_q8: %d bad outputs (rows=%d K=%d n_tok=%d pat=%d)", kt->name, bad, rows, K, nt,
                  pat);
            if (k < 0) memcpy(yscalar, y, sizeof(float) * nt * ldy);
            else CHECK(memcmp(y, yscalar, sizeof(float) * nt * ldy) == 0,
                       "%s matmul_q8 floats differ from scalar (rows=%d K=%d n_tok=%d)", kt->name, rows, K, nt);
        }
        free(data), free(q), free(d), free(y), free(yscalar);
    }
}

/* ---- dispatch and validation ------------------------------------------------------------------ */
static void test_dispatch(void) {
    CHECK(sq_kernels() != NULL && sq_kernels()->name != NULL, "sq_kernels");
    CHECK(strcmp(sq_isa_name(), sq_kernels()->name) == 0, "sq_isa_name");
    CHECK(sq_kernels_for("scalar") == &sq_kernels_scalar, "scalar table");
    CHECK(sq_kernels_for("bogus") == NULL && sq_kernels_for(NULL) == NULL, "unknown ISA");
    /* the mixed table exists exactly where the VNNI one does, and auto picks one of the two there */
    CHECK((sq_kernels_for("avx512-mix") != NULL) == (sq_kernels_for("avx512") != NULL), "avx512-mix iff avx512");
    if (sq_kernels_for("avx512")) {
        const sq_kernel_table *a = sq_kernels_parse("auto", NULL, 0);
        CHECK(a == sq_kernels_for("avx512") || a == sq_kernels_for("avx512-mix"), "auto on a VNNI CPU");
    }
    CHECK(sq_kernels_check_sq4("w", 4, 544, 64, 4, 0) == SQ_ERR_FORMAT, "544 %% 64 != 0 must fail");
    CHECK(sq_kernels_check_sq4("w", 4, 576, 576, 4, 0) == SQ_OK, "per-row G=576");
    CHECK(sq_kernels_check_sq4("w", 4, 576, 576, 4, 1) == SQ_ERR_FORMAT, "WHT needs a power of two");
    CHECK(sq_kernels_check_sq4("w", 4, 512, 64, 6, 0) == SQ_ERR_FORMAT, "bits 6");
    CHECK(sq_kernels_check_sq4("w", 4, 48, 16, 4, 0) == SQ_ERR_FORMAT, "G 16");
    CHECK(sq_kernels_check_sq4("w", 0, 64, 64, 4, 0) == SQ_ERR_FORMAT, "0 rows");
    CHECK(sq_kernels_check_sq4("w", 2, 64, 64, 8, 1) == SQ_OK, "G 64 wht");
}

int main(void) {
    static const char *const isas[] = {"avx2", "avx512", "avx512-mix", "neon"};
    for (int i = 0; i < 4; i++) {
        const sq_kernel_table *t = sq_kernels_for(isas[i]);
        if (t) g_simd[g_nsimd++] = t;
    }
#if SQ_TEST_VNNI_EMU
    if (sq_kernels_for("avx2")) g_simd[g_nsimd++] = &sq_kernels_vnni_emulated;
#endif
    printf("kernel tables under test: scalar");
    for (int i = 0; i < g_nsimd; i++) printf(", %s", g_simd[i]->name);
    printf(" (dispatch picks %s)\n", sq_isa_name());

    const char *env = getenv("SQ_FUZZ_ITERS");
    int iters = env ? atoi(env) : 300;
    if (iters < 1) iters = 1;

    test_dispatch();
    test_fp16();
    test_wht();
    test_quantize_act();
    test_sq4(iters);
    test_q8(iters / 3 + 1);
    return test_finish("test_kernels");
}
