/* bench_kernels.c — timing of the matmul kernels on the SmolLM2-135M shapes (not a test).
 *
 *   bench_kernels [-t THREADS] [-g G] [-b BITS] [-n NTOK,...] [-i ISA,...] [--quick] [--hot] [--8b]
 *                 [--layout table|rows|x16]
 *
 * --8b: the linear shapes of Llama-3.1-8B instead (q/o 4096 x 4096, k/v 1024 x 4096, gate/up
 * 14336 x 4096, down 4096 x 14336). -b 4 / -b 8: the activation bits (A4 vs A8: bench/speed.py --act-bits).
 *
 * For each shape (rows × K) and token count it prints the time per call, GOPS (2·rows·K·n_tok / t)
 * and the effective weight bandwidth (weight bytes / t). "cold" cycles over copies of the matrix
 * totalling > 256 MB so the weights come from DRAM, as they do in a real decode (1 to 7 tokens: a
 * decode step of that many sequences); "hot" (prefill token counts) reuses one copy
 * (cache-resident for the small shapes); --hot uses one copy for decode token counts too. The 49152 × 576 head is Q8_0 × Q8_0.
 * --layout: the SQ4 layout (kernels.h) timed: "table" (default) is the one a model load gives the
 * kernel set (x16 on x86, rows elsewhere), "rows" the file's, "x16" the repacked one where the table
 * runs it. Rows are split across THREADS pthreads like the engine does. Times are the fastest of the calls
 * made in 0.5 s (the machine may be shared).
 */
#include "kernels/kernels.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* With one thread the clock is the thread's CPU time: on a shared machine, wall time would count
 * the time the scheduler gave to other processes. */
static clockid_t g_clock = CLOCK_MONOTONIC;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(g_clock, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t g_rng = 88172645463325252ull;
static uint32_t rnd(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 11);
}

typedef struct {
    const sq_kernel_table *kt;
    int is_q8;
    const sq_sq4_matrix *w4;
    const sq_qact *x4;
    const sq_q8_matrix *w8;
    const sq_q8act *x8;
    int r0, r1;
    float *y;
    int ldy;
} job;

static void *run_job(void *p) {
    job *j = p;
    if (j->is_q8) j->kt->matmul_q8(j->w8, j->x8, j->r0, j->r1, j->y, j->ldy);
    else j->kt->matmul_sq4(j->w4, j->x4, j->r0, j->r1, j->y, j->ldy);
    return NULL;
}

/* one matmul split over nth threads (thread 0 is the caller) */
static void matmul(const sq_kernel_table *kt, int is_q8, const sq_sq4_matrix *w4, const sq_qact *x4,
                   const sq_q8_matrix *w8, const sq_q8act *x8, int rows, float *y, int ldy, int nth) {
    pthread_t th[64];
    job jobs[64];
    for (int i = 0; i < nth; i++) {
        /* split on multiples of 16 rows so SIMD tiles stay whole (as the engine does) */
        int per = ((rows + nth - 1) / nth + 15) / 16 * 16;
        int r0 = i * per < rows ? i * per : rows, r1 = (i + 1) * per < rows ? (i + 1) * per : rows;
        jobs[i] = (job){kt, is_q8, w4, x4, w8, x8, r0, r1, y, ldy};
        if (i) pthread_create(&th[i], NULL, run_job, &jobs[i]);
    }
    run_job(&jobs[0]);
    for (int i = 1; i < nth; i++) pthread_join(th[i], NULL);
}

static const char *g_layout = "table";

static void bench_shape(const char *isa, int rows, int K, int G, int bits, int is_q8, int nt, int nth, int cold) {
    const sq_kernel_table *kt = sq_kernels_for(isa);
    if (!kt) return;
    const int want_x16 = !strcmp(g_layout, "x16") || (!strcmp(g_layout, "table") && kt->sq4_layout == SQ_SQ4_X16);
    const int use_x16 = !is_q8 && want_x16 && kt->sq4_layout == SQ_SQ4_X16 && sq_sq4_x16_ok(rows, K, G);
    const size_t wbytes = is_q8 ? (size_t)rows * (K / 32) * 34 : (size_t)rows * (K / G) * (2 + G / 2);
    int copies = cold ? (int)((256u << 20) / wbytes + 1) : 1;
    if (copies > 4096) copies = 4096;
    uint8_t *data = malloc(wbytes * copies);
    int32_t *wsum = malloc(sizeof(int32_t) * rows * (K / G));
    if (!data || !wsum) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < wbytes * copies; i++) data[i] = (uint8_t)rnd();
    /* valid fp16 scales in every block */
    const size_t bs = is_q8 ? 34 : 2 + G / 2;
    for (size_t off = 0; off < wbytes * copies; off += bs) {
        uint16_t h = sq_fp32_to_fp16(0.01f);
        memcpy(data + off, &h, 2);
    }
    if (!is_q8) sq_sq4_group_sums(data, rows, K, G, wsum);
    /* X16: every copy repacked (the weight sums of copy 0 serve all: timing only) */
    const size_t xbytes = use_x16 ? sq_sq4_x16_bytes(rows, K, G) : 0;
    uint8_t *xdata = use_x16 ? aligned_alloc(64, (xbytes * copies + 63) / 64 * 64) : NULL; /* tiles 64-byte aligned */
    if (use_x16 && !xdata) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int c = 0; use_x16 && c < copies; c++) sq_sq4_repack_x16(data + wbytes * c, wsum, K, G, 0, rows / 16, xdata + xbytes * c);

    float *xf = malloc(sizeof(float) * nt * K);
    for (int i = 0; i < nt * K; i++) xf[i] = (float)(rnd() % 2001) / 1000.0f - 1.0f;
    sq_qact x4 = {malloc(nt * K), malloc(sizeof(float) * nt * (K / G)), malloc(sizeof(int32_t) * nt * (K / G)), nt, K, G,
                  bits};
    sq_q8act x8 = {malloc(nt * K), malloc(sizeof(float) * nt * (K / 32)), nt, K};
    if (is_q8) kt->quantize_q8act(xf, 0, nt, &x8);
    else kt->quantize_act(xf, 0, nt, 1, &x4);
    float *y = malloc(sizeof(float) * nt * rows);

    /* repeat for 0.5 s (at least 3 calls); report the fastest call: the machine is shared, and
     * the minimum is the least noisy estimate of what the kernel itself costs */
    int calls = 0;
    double t0 = now_s(), per = 1e30;
    do {
        const uint8_t *d = data + wbytes * (calls % copies);
        sq_sq4_matrix w4 = {d, wsum, rows, K, G, SQ_SQ4_ROWS};
        if (use_x16) w4 = (sq_sq4_matrix){xdata + xbytes * (calls % copies), NULL, rows, K, G, SQ_SQ4_X16};
        sq_q8_matrix w8 = {d, rows, K};
        double tc = now_s();
        matmul(kt, is_q8, &w4, &x4, &w8, &x8, rows, y, rows, nth);
        tc = now_s() - tc;
        per = tc < per ? tc : per;
        calls++;
    } while (now_s() - t0 < 0.5 || calls < 3);
    const double gops = 2.0 * rows * K * (double)nt / per * 1e-9;
    printf("%-7s %-5s %6d x %-5d %3d %5d  %10.1f us  %8.1f GOPS  %7.2f GB/s  %s\n", isa, is_q8 ? "q8_0" : use_x16 ? "sq4x16" : "sq4", rows, K,
           is_q8 ? 32 : G, nt, per * 1e6, gops, wbytes / per * 1e-9, cold ? "cold" : "hot");
    free(data), free(xdata), free(wsum), free(xf), free(x4.q), free(x4.d), free(x4.z), free(x8.q), free(x8.d), free(y);
}

/* activation quantization (with the in-group WHT) of n_tok × K, single thread */
static void bench_quantize(const char *isa, int K, int G, int bits, int nt) {
    const sq_kernel_table *kt = sq_kernels_for(isa);
    if (!kt || K % G) return;
    float *xf = malloc(sizeof(float) * nt * K);
    sq_qact a = {malloc(nt * K), malloc(sizeof(float) * nt * (K / G)), malloc(sizeof(int32_t) * nt * (K / G)), nt, K, G,
                 bits};
    sq_q8act a8 = {malloc(nt * K), malloc(sizeof(float) * nt * (K / 32)), nt, K};
    for (int i = 0; i < nt * K; i++) xf[i] = (float)(rnd() % 2001) / 1000.0f - 1.0f;
    double best = 1e30, best8 = 1e30, t0 = now_s();
    int calls = 0;
    do {
        double tc = now_s();
        kt->quantize_act(xf, 0, nt, G <= SQ_WHT_MAX_G && (G & (G - 1)) == 0, &a);
        tc = now_s() - tc;
        best = tc < best ? tc : best;
        tc = now_s();
        kt->quantize_q8act(xf, 0, nt, &a8);
        tc = now_s() - tc;
        best8 = tc < best8 ? tc : best8;
        calls++;
    } while (now_s() - t0 < 0.3 || calls < 3);
    printf("%-7s quantize_act (wht, G=%d, %d bit) %4d x %-5d %9.1f us  %6.2f ns/value   q8act %9.1f us\n", isa, G,
           bits, nt, K, best * 1e6, best / ((double)nt * K) * 1e9, best8 * 1e6);
    free(xf), free(a.q), free(a.d), free(a.z), free(a8.q), free(a8.d);
}

/* sequential read bandwidth of one thread over 512 MB, for reference */
static void bench_read_bw(void) {
    const size_t n = (512u << 20) / 8;
    uint64_t *buf = malloc(n * 8);
    if (!buf) return;
    for (size_t i = 0; i < n; i++) buf[i] = i;
    double best = 1e9;
    uint64_t s = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now_s();
        uint64_t a = 0, b = 0, c = 0, d = 0;
        for (size_t i = 0; i < n; i += 4) a += buf[i], b += buf[i + 1], c += buf[i + 2], d += buf[i + 3];
        s += a + b + c + d;
        double t = now_s() - t0;
        best = t < best ? t : best;
    }
    printf("memory read bandwidth (1 thread, 512 MB, scalar loop): %.2f GB/s  [%llu]\n", n * 8 / best * 1e-9,
           (unsigned long long)(s & 1));
    free(buf);
}

int main(int argc, char **argv) {
    int nth = 1, G = 64, bits = 4, quick = 0, hot = 0, llama8b = 0;
    const char *isas = "scalar,avx2,avx512,avx512-mix,neon", *ntoks = "1,512";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc) nth = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-g") && i + 1 < argc) G = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-b") && i + 1 < argc) bits = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-n") && i + 1 < argc) ntoks = argv[++i];
        else if (!strcmp(argv[i], "-i") && i + 1 < argc) isas = argv[++i];
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--hot")) hot = 1;
        else if (!strcmp(argv[i], "--8b")) llama8b = 1;
        else if (!strcmp(argv[i], "--layout") && i + 1 < argc) g_layout = argv[++i];
        else {
            fprintf(stderr, "usage: %s [-t THREADS] [-g G] [-b BITS] [-n NTOK,...] [-i ISA,...] [--quick] [--hot] [--8b] [--layout table|rows|x16]\n",
                    argv[0]);
            return 2;
        }
    }
    if (nth < 1 || nth > 64 || (bits != 4 && bits != 8) || G < 32 || G % 32 ||
        (strcmp(g_layout, "table") && strcmp(g_layout, "rows") && strcmp(g_layout, "x16"))) {
        fprintf(stderr, "bad -t/-g/-b/--layout\n");
        return 2;
    }
    if (nth == 1) g_clock = CLOCK_THREAD_CPUTIME_ID;
    static const int smol[][3] = {{576, 576, 0}, {192, 576, 0}, {1536, 576, 0}, {576, 1536, 0}, {49152, 576, 1}};
    static const int l8b[][3] = {{4096, 4096, 0}, {1024, 4096, 0}, {14336, 4096, 0}, {4096, 14336, 0}};
    const int(*shapes)[3] = llama8b ? l8b : smol;
    const size_t n_shapes = llama8b ? sizeof l8b / sizeof l8b[0] : sizeof smol / sizeof smol[0];
    printf("threads %d (%s time), SQ4 G=%d, act bits %d, dispatch: %s\n", nth, nth == 1 ? "thread CPU" : "wall", G, bits,
           sq_isa_name());
    printf("isa     type    rows x K     G  ntok   time/call          GOPS   weight GB/s\n");
    char isabuf[128], ntbuf[128];
    snprintf(isabuf, sizeof isabuf, "%s", isas);
    for (char *isa = strtok(isabuf, ","); isa; isa = strtok(NULL, ",")) {
        if (!sq_kernels_for(isa)) continue;
        snprintf(ntbuf, sizeof ntbuf, "%s", ntoks);
        char *save = NULL;
        for (char *ns = strtok_r(ntbuf, ",", &save); ns; ns = strtok_r(NULL, ",", &save)) {
            int nt = atoi(ns);
            if (nt < 1) continue;
            for (size_t s = 0; s < n_shapes; s++) {
                if (shapes[s][1] % G && !shapes[s][2]) continue;
                /* the scalar prefill of the head takes ~10 s: skip it in --quick */
                if (quick && !strcmp(isa, "scalar") && nt > 1 && shapes[s][2]) continue;
                bench_shape(isa, shapes[s][0], shapes[s][1], G, bits, shapes[s][2], nt, nth, nt < SQ_X86_PREFILL_MIN_TOK && !hot);
            }
        }
    }
    snprintf(isabuf, sizeof isabuf, "%s", isas);
    for (char *isa = strtok(isabuf, ","); isa; isa = strtok(NULL, ","))
        for (int k = llama8b ? 4096 : 576; k <= (llama8b ? 14336 : 1536); k += llama8b ? 10240 : 960) {
            bench_quantize(isa, k, G, bits, 1);
            bench_quantize(isa, k, G, bits, 512);
        }
    if (!quick) bench_read_bw();
    return 0;
}
