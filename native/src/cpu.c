/* cpu.c — picks the kernel table once: CPUID (x86) / HWCAP (arm64), or SQ_ISA from the environment.
 *
 * The only global state of the kernels lives here and is written exactly once (pthread_once).
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

const sq_kernel_table *sq_kernels_for(const char *isa) {
    if (!isa) return NULL;
    if (strcmp(isa, "scalar") == 0) return &sq_kernels_scalar;
#if defined(SQ_HAVE_X86)
    if (strcmp(isa, "avx2") == 0) return x86_has_avx2() ? &sq_kernels_avx2 : NULL;
    if (strcmp(isa, "avx512") == 0) return x86_has_avx512vnni() ? &sq_kernels_avx512 : NULL;
#endif
#if defined(SQ_HAVE_NEON)
    if (strcmp(isa, "neon") == 0) return arm_has_dotprod() ? &sq_kernels_neon : NULL;
#endif
    return NULL;
}

static const sq_kernel_table *g_table;  /* written once under pthread_once */
static char g_isa_error[160];           /* non-empty when SQ_ISA could not be honoured */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static const sq_kernel_table *best_table(void) {
    static const char *const order[] = {"avx512", "avx2", "neon"};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        const sq_kernel_table *t = sq_kernels_for(order[i]);
        if (t) return t;
    }
    return &sq_kernels_scalar;
}

static void pick_table(void) {
    const char *env = getenv("SQ_ISA");
    g_table = best_table();
    if (env && *env && strcmp(env, "auto") != 0) {
        const sq_kernel_table *t = sq_kernels_for(env);
        if (t) {
            g_table = t;
        } else {
            /* copy at most 40 bytes of the user's text into the message */
            char shown[41];
            size_t n = strlen(env);
            n = n < 40 ? n : 40;
            memcpy(shown, env, n);
            shown[n] = '\0';
            snprintf(g_isa_error, sizeof g_isa_error,
                     "SQ_ISA=%s: unknown ISA or not supported by this CPU/build (valid: scalar, avx2, avx512, neon, auto)",
                     shown);
        }
    }
}

const sq_kernel_table *sq_kernels(void) {
    pthread_once(&g_once, pick_table);
    return g_table;
}

sq_status sq_kernels_check(void) {
    pthread_once(&g_once, pick_table);
    if (g_isa_error[0]) return sq_set_error(SQ_ERR_UNSUPPORTED, "%s", g_isa_error);
    return SQ_OK;
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
