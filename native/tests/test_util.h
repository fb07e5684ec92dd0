/* test_util.h — what every C test shares (header-only): the CHECK macro with its failure count,
 * the summary at the end of main, a deterministic random generator and an allocator that exits.
 *
 * CHECK(cond, fmt, ...) counts a failure and prints "FAIL file:line: message" without stopping the
 * test, so one run shows every broken case. By default the lines go to stderr, the first
 * TEST_MAX_REPORTS of them (a broken kernel fails thousands of checks). A test of error paths
 * defines TEST_REPORT_LAST_ERROR before including this header: its lines then go to stdout, every
 * one, each followed by "  [sq_last_error()]", which is what such a failure needs to be read.
 *
 * The random generator is xorshift64, so a test draws the same numbers on every machine; a test
 * may pick its own start by defining TEST_RNG_SEED before the include.
 */
#ifndef SQ_TEST_UTIL_H
#define SQ_TEST_UTIL_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "specquant.h"

/* ---- checks ------------------------------------------------------------------------------------ */

#define TEST_MAX_REPORTS 30

static int g_failures;

#if defined(__GNUC__) || defined(__clang__)
__attribute__((format(printf, 3, 4)))
#endif
static inline void test_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
#ifdef TEST_REPORT_LAST_ERROR
    printf("FAIL %s:%d: ", file, line);
    vprintf(fmt, ap);
    printf("  [%s]\n", sq_last_error());
#else
    if (g_failures < TEST_MAX_REPORTS) {
        fprintf(stderr, "FAIL %s:%d: ", file, line);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
    }
#endif
    va_end(ap);
    g_failures++;
}

#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (!(cond)) test_fail(__FILE__, __LINE__, __VA_ARGS__);      \
    } while (0)

/* The last line of a test: its failure count (where the FAIL lines went) or that all passed; the
 * exit code for main. */
static inline int test_finish(const char *name) {
    if (g_failures) {
#ifdef TEST_REPORT_LAST_ERROR
        printf("%s: %d failure(s)\n", name, g_failures);
#else
        fprintf(stderr, "%s: %d failure(s)\n", name, g_failures);
#endif
        return 1;
    }
    printf("%s: all passed\n", name);
    return 0;
}

/* ---- deterministic random numbers ---------------------------------------------------------------- */

/* one xorshift64 step on a state of the caller's (tiny_model.h keeps a stream of its own) */
static inline uint64_t xorshift64(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

#ifndef TEST_RNG_SEED
#define TEST_RNG_SEED 0x9E3779B97F4A7C15ull
#endif
static uint64_t g_rng = TEST_RNG_SEED;

static inline uint64_t rnd64(void) { return xorshift64(&g_rng); }
static inline uint32_t rnd(void) { return (uint32_t)(rnd64() >> 16); }
static inline int rnd_int(int lo, int hi) { return lo + (int)(rnd() % (uint32_t)(hi - lo + 1)); } /* [lo, hi] */
static inline float rnd_unit(void) { return (float)(rnd() & 0xFFFFFF) / 16777216.0f; }            /* [0, 1) */
/* roughly N(0, 1): a scaled sum of four uniforms (bounded, so no extreme outliers by chance) */
static inline float rnd_normal(void) {
    float s = 0;
    for (int i = 0; i < 4; i++) s += rnd_unit();
    return (s - 2.0f) * 1.7f;
}

/* ---- memory -------------------------------------------------------------------------------------- */

/* zeroed memory or exit(2): a test has no way on without its buffers */
static inline void *xmalloc(size_t n) {
    void *p = calloc(n ? n : 1, 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

#endif /* SQ_TEST_UTIL_H */
