/* dispatch.c — which kernel table runs: CPUID (x86) / HWCAP (arm64), and the one parser of SQ_ISA.
 *
 * The only global state of the kernels lives here and is written exactly once (pthread_once).
 *
 * x86 with AVX-512 VNNI has two tables: "avx512" (every kernel with dpbusd) and "avx512-mix",
 * measured on AMD Zen 5 (docs/RESULTS.md, "Kernel sets on AVX-512 VNNI"), where a 256-bit dpbusd
 * issues once per cycle and maddubs twice. The mix runs SQ4 matmuls of fewer than
 * SQ_X86_PREFILL_MIN_TOK tokens in the file's row layout on the AVX2 kernels (those widen once per
 * group, where maddubs was 10-40 % faster) and everything else on the VNNI ones: the X16 matmuls
 * (512-bit dpbusd, 16 rows per instruction: what a model load gives every matrix that qualifies),
 * the prefill tile and the Q8_0 kernels (which widen every block). auto picks the mix on AMD family
 * 0x1A (Zen 5) and later; other VNNI CPUs keep "avx512" (Intel's tables list dpbusd at the maddubs
 * rate; neither Intel nor Zen 4 was measured here). All tables give the same bits.
 */
#include "kernels.h"
#include "error.h"

#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#if defined(SQ_HAVE_X86)
#include <cpuid.h>
extern const sq_kernel_table sq_kernels_avx2;
extern const sq_kernel_table sq_kernels_avx512;
#endif
#if defined(SQ_HAVE_NEON)
extern const sq_kernel_table sq_kernels_neon;
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif
#endif

#if defined(SQ_HAVE_X86)
/* XCR0: which register states the OS saves on context switch (CPUID alone is not enough). */
static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static int x86_has_avx2(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const unsigned osxsave = 1u << 27, avx = 1u << 28, fma = 1u << 12, f16c = 1u << 29;
    if ((c & (osxsave | avx | fma | f16c)) != (osxsave | avx | fma | f16c)) return 0;
    if ((read_xcr0() & 0x6) != 0x6) return 0; /* XMM + YMM state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b & (1u << 5)) != 0; /* AVX2 */
}

/* AMD family 0x1A (Zen 5) or later: the CPUs where "avx512-mix" measured faster than "avx512" */
static int x86_prefers_mix(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return 0;
    if (!(b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u)) return 0; /* "AuthenticAMD" */
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    unsigned family = (a >> 8) & 0xF;
    if (family == 0xF) family += (a >> 20) & 0xFF;
    return family >= 0x1A;
}

static int x86_has_avx512vnni(void) {
    unsigned a, b, c, d;
    if (!x86_has_avx2()) return 0;
    if ((read_xcr0() & 0xE6) != 0xE6) return 0; /* + opmask, ZMM_Hi256, Hi16_ZMM */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    const unsigned f = 1u << 16, dq = 1u << 17, bw = 1u << 30, vl = 1u << 31;
    if ((b & (f | dq | bw | vl)) != (f | dq | bw | vl)) return 0;
    return (c & (1u << 11)) != 0; /* AVX512_VNNI */
}
#endif

#if defined(SQ_HAVE_X86)
/* "avx512-mix": the SQ4 decode kernels of the AVX2 table, the rest of the VNNI table (file comment) */
static const sq_kernel_table *mix_sq4_table(const sq_sq4_matrix *w, const sq_qact *x) {
    if (w->layout == SQ_SQ4_X16) return &sq_kernels_avx512; /* rows in lanes: 512-bit dpbusd, 16 rows each */
    return x->n_tok < SQ_X86_PREFILL_MIN_TOK ? &sq_kernels_avx2 : &sq_kernels_avx512;
}
static void mix_matmul_sq4(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, float *y, int ldy) {
    mix_sq4_table(w, x)->matmul_sq4(w, x, r0, r1, y, ldy);
}
static void mix_group_sums_sq4(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, int32_t *acc) {
    mix_sq4_table(w, x)->group_sums_sq4(w, x, r0, r1, acc);
}
static void mix_matmul_q8(const sq_q8_matrix *w, const sq_q8act *x, int r0, int r1, float *y, int ldy) {
    sq_kernels_avx512.matmul_q8(w, x, r0, r1, y, ldy);
}
static void mix_quantize_act(const float *x, int t0, int t1, int wht, sq_qact *out) {
    sq_kernels_avx512.quantize_act(x, t0, t1, wht, out);
}
static void mix_quantize_q8act(const float *x, int t0, int t1, sq_q8act *out) {
    sq_kernels_avx512.quantize_q8act(x, t0, t1, out);
}
static const sq_kernel_table sq_kernels_avx512_mix = {
    .name = "avx512-mix",
    .sq4_layout = SQ_SQ4_X16,
    .matmul_sq4 = mix_matmul_sq4,
    .matmul_q8 = mix_matmul_q8,
    .group_sums_sq4 = mix_group_sums_sq4,
    .quantize_act = mix_quantize_act,
    .quantize_q8act = mix_quantize_q8act,
};
#endif

#if defined(SQ_HAVE_NEON)
static int arm_has_dotprod(void) {
#if defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
    return 1; /* every Apple arm64 core has the dot-product extension */
#else
    return 0;
#endif
}
#endif

/* Every ISA name, best first: what the error message lists, and what "auto" tries in this order
 * on CPUs without AVX-512 VNNI (with it, auto picks avx512-mix or avx512: sq_kernels_parse). */
static const char *const k_isas[] = {"avx512-mix", "avx512", "avx2", "neon", "scalar"};
#define N_ISAS (sizeof k_isas / sizeof k_isas[0])

const sq_kernel_table *sq_kernels_for(const char *isa) {
    if (!isa) return NULL;
    if (strcmp(isa, "scalar") == 0) return &sq_kernels_scalar;
#if defined(SQ_HAVE_X86)
    if (strcmp(isa, "avx2") == 0) return x86_has_avx2() ? &sq_kernels_avx2 : NULL;
    if (strcmp(isa, "avx512") == 0) return x86_has_avx512vnni() ? &sq_kernels_avx512 : NULL;
    if (strcmp(isa, "avx512-mix") == 0) return x86_has_avx512vnni() ? &sq_kernels_avx512_mix : NULL;
#endif
#if defined(SQ_HAVE_NEON)
    if (strcmp(isa, "neon") == 0) return arm_has_dotprod() ? &sq_kernels_neon : NULL;
#endif
    return NULL;
}

const sq_kernel_table *sq_kernels_parse(const char *isa, char *why, size_t cap) {
    if (!isa || !*isa || strcmp(isa, "auto") == 0) {
#if defined(SQ_HAVE_X86)
        if (x86_has_avx512vnni()) return x86_prefers_mix() ? &sq_kernels_avx512_mix : &sq_kernels_avx512;
#endif
        for (size_t i = 0; i < N_ISAS; i++) {
            const sq_kernel_table *t = sq_kernels_for(k_isas[i]);
            if (t) return t;
        }
        return &sq_kernels_scalar; /* not reached: scalar is always there */
    }
    const sq_kernel_table *t = sq_kernels_for(isa);
    if (t || !why || !cap) return t;
    char valid[96] = "auto";
    for (size_t i = 0; i < N_ISAS; i++)
        if (sq_kernels_for(k_isas[i])) {
            strcat(valid, ", ");
            strcat(valid, k_isas[i]);
        }
    /* at most 40 bytes of the user's text in the message */
    snprintf(why, cap, "SQ_ISA=%.40s: unknown ISA or not supported by this CPU/build (valid here: %s)", isa, valid);
    return NULL;
}

sq_status sq_kernels_from_env(const sq_kernel_table **out) {
    char why[160];
    *out = sq_kernels_parse(getenv("SQ_ISA"), why, sizeof why);
    return *out ? SQ_OK : sq_set_error(SQ_ERR_UNSUPPORTED, "%s", why);
}

static const sq_kernel_table *g_table;  /* written once under pthread_once */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void pick_table(void) {
    g_table = sq_kernels_parse(getenv("SQ_ISA"), NULL, 0);
    if (!g_table) g_table = sq_kernels_parse("auto", NULL, 0);
}

const sq_kernel_table *sq_kernels(void) {
    pthread_once(&g_once, pick_table);
    return g_table;
}

SQ_API const char *sq_isa_name(void) { return sq_kernels()->name; }

sq_status sq_kernels_check_sq4(const char *name, int rows, int K, int G, int bits, int wht) {
    if (!name) name = "tensor";
    if (rows <= 0 || K <= 0) return sq_set_error(SQ_ERR_FORMAT, "%s: bad SQ4 shape %d x %d", name, rows, K);
    if (G <= 0 || G % 32 != 0 || K % G != 0)
        return sq_set_error(SQ_ERR_FORMAT, "%s: SQ4 group size %d must be a multiple of 32 dividing K=%d", name, G, K);
    if (bits != 4 && bits != 8) return sq_set_error(SQ_ERR_FORMAT, "%s: activation bits %d (must be 4 or 8)", name, bits);
    if (wht && ((G & (G - 1)) != 0 || G > SQ_WHT_MAX_G))
        return sq_set_error(SQ_ERR_FORMAT, "%s: Walsh-Hadamard rotation needs a power-of-two group <= %d, got %d", name,
                            SQ_WHT_MAX_G, G);
    return SQ_OK;
}
