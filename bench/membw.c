/* membw.c — the machine's sustained memory READ bandwidth, the ceiling for decode speed.
 *
 * Streams a buffer much larger than the last-level cache and sums it (so the loads cannot be
 * optimised away), with 1..T threads each reading its own contiguous slice, and prints one JSON
 * line per thread count: {"threads": t, "gb_per_s": best, "bytes": n, "reps": r}.
 * The sum uses four independent 256-bit accumulators when AVX2 is available (compiled with
 * -march=native), plain 64-bit adds otherwise; either way the loop is load-bound, not ALU-bound.
 *
 *   cc -O2 -march=native -pthread bench/membw.c -o membw && ./membw [MiB=1024] [max_threads=2] [reps=5]
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

typedef struct {
    const uint64_t *p;
    size_t n;          /* 64-bit words in this slice */
    uint64_t sum;
} slice_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *read_slice(void *arg) {
    slice_t *s = (slice_t *)arg;
    size_t i = 0;
    uint64_t total = 0;
#if defined(__AVX2__)
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (; i + 16 <= s->n; i += 16) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(s->p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(s->p + i + 4)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(s->p + i + 8)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(s->p + i + 12)));
    }
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
    total = lanes[0] + lanes[1] + lanes[2] + lanes[3];
#endif
    for (; i < s->n; i++) total += s->p[i];
    s->sum = total;
    return NULL;
}

/* One timed pass over the whole buffer with t threads; returns seconds. */
static double pass(const uint64_t *buf, size_t words, int t, uint64_t *sink) {
    pthread_t th[64];
    slice_t sl[64];
    size_t per = (words / (size_t)t) & ~(size_t)15; /* keep slices 128-byte aligned */
    double t0 = now_s();
    for (int k = 0; k < t; k++) {
        sl[k].p = buf + (size_t)k * per;
        sl[k].n = (k == t - 1) ? words - (size_t)k * per : per;
        if (k > 0 && pthread_create(&th[k], NULL, read_slice, &sl[k]) != 0) {
            fprintf(stderr, "membw: pthread_create failed\n");
            exit(1);
        }
    }
    read_slice(&sl[0]);
    for (int k = 1; k < t; k++) pthread_join(th[k], NULL);
    double dt = now_s() - t0;
    for (int k = 0; k < t; k++) *sink += sl[k].sum;
    return dt;
}

static long arg_or(int argc, char **argv, int i, long def, long lo, long hi) {
    if (argc <= i) return def;
    char *end = NULL;
    long v = strtol(argv[i], &end, 10);
    if (!end || *end || v < lo || v > hi) {
        fprintf(stderr, "membw: argument %d must be an integer in [%ld, %ld]\n", i, lo, hi);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    long mib = arg_or(argc, argv, 1, 1024, 64, 1 << 16);
    int max_t = (int)arg_or(argc, argv, 2, 2, 1, 64);
    int reps = (int)arg_or(argc, argv, 3, 5, 1, 1000);
    size_t bytes = (size_t)mib << 20;
    size_t words = bytes / sizeof(uint64_t);
    uint64_t *buf = NULL;
    if (posix_memalign((void **)&buf, 4096, bytes) != 0) {
        fprintf(stderr, "membw: cannot allocate %ld MiB\n", mib);
        return 1;
    }
    for (size_t i = 0; i < words; i++) buf[i] = i; /* touch every page: no zero-page shortcuts */
    uint64_t sink = 0;
    for (int t = 1; t <= max_t; t++) {
        double best = 1e30;
        pass(buf, words, t, &sink); /* warm-up */
        for (int r = 0; r < reps; r++) {
            double dt = pass(buf, words, t, &sink);
            if (dt < best) best = dt;
        }
        printf("{\"threads\": %d, \"gb_per_s\": %.3f, \"bytes\": %zu, \"reps\": %d}\n", t,
               (double)bytes / best / 1e9, bytes, reps);
        fflush(stdout);
    }
    free(buf);
    return sink == 42 ? 3 : 0; /* use the sum so the reads stay */
}
