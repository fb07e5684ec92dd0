/* test_cuda.c — the CUDA backend (cuda_backend.h) against the CPU's scalar kernels.
 *
 * Bit-exact: activation codes, scales and zero points (SQ4 with and without the Walsh–Hadamard
 * rotation, bits 4/8; Q8_0), SQ4 integer group sums and float outputs (every kernel: GEMV,
 * int4 and int8 mma), Q8_0 outputs, the spectral branch and bias, RoPE, the residual add and the
 * f16 KV cache. Within 1e-5: RMSNorm, SiLU·mul and attention (parallel reductions).
 * Random shapes: G 32/64/96/128/256 and per-row, bits 4/8, n_tok 1..600, odd row counts.
 *
 * Exit code 77 (ctest SKIP_RETURN_CODE) with a one-line reason when the build has no CUDA backend
 * or the machine has no CUDA device. Built a second time as test_cuda_emu against the host
 * emulator (SQ_CUDA_EMU, see src/cuda/emu.cuh), with smaller shapes, so that the kernels' logic is
 * checked on every machine. SQ_CUDA_CASES overrides the number of random matmul cases.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "test_util.h"

#define SKIP_CODE 77

#ifndef SQ_HAVE_CUDA
int main(void) {
    printf("test_cuda: SKIP: this build has no CUDA backend (configure with -DSPECQUANT_CUDA=ON on a machine with nvcc)\n");
    return SKIP_CODE;
}
#else

#include "attention.h"
#include "cuda_backend.h"
#include "fp16.h"
#include "kvcache.h"
#include "norm.h"
#include "rope.h"
#include "spectral.h"
#include "threads.h"

#ifdef SQ_CUDA_EMU
#define SCALE 0 /* emulator: small shapes */
#else
#define SCALE 1
#endif

#define OK(call)                                                                                        \
    do {                                                                                                \
        sq_status st_ = (call);                                                                         \
        if (st_ != SQ_OK) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: %s -> %d: %s\n", __FILE__, __LINE__, #call, st_, sq_last_error()); \
            exit(1);                                                                                    \
        }                                                                                               \
    } while (0)

static sq_cuda *g_c;

static void *dev(size_t bytes) {
    void *p = sq_cuda_alloc(g_c, bytes);
    if (!p) {
        fprintf(stderr, "FAIL: sq_cuda_alloc(%zu): %s\n", bytes, sq_last_error());
        exit(1);
    }
    return p;
}
static void *dev_copy(const void *src, size_t bytes) {
    void *p = dev(bytes);
    OK(sq_cuda_upload(g_c, p, src, bytes));
    return p;
}
static void download(void *dst, const void *src, size_t bytes) { OK(sq_cuda_download(g_c, dst, src, bytes)); }

static int same_f32(float a, float b) { return memcmp(&a, &b, 4) == 0 || (a != a && b != b); }
static int close_f32(float got, float want, float tol) {
    if (want != want) return got != got;
    return fabsf(got - want) <= tol * (fabsf(want) > 1.0f ? fabsf(want) : 1.0f);
}
/* values of an n_tok x n block (row stride ld) off by more than tol (relative to max(1, |want|)),
 * or, with tol < 0, not bit-identical */
static int count_off(const float *got, const float *want, int n_tok, int ld, int n, float tol) {
    int bad = 0;
    for (int t = 0; t < n_tok; t++)
        for (int i = 0; i < n; i++) {
            float g = got[(size_t)t * ld + i], w = want[(size_t)t * ld + i];
            bad += tol < 0 ? !same_f32(g, w) : !close_f32(g, w, tol);
        }
    return bad;
}

/* Activations with the shapes the quantizer must survive: outliers, an all-zero group, a
 * constant group, one-signed groups, tiny (subnormal-scale) values. */
static void fill_acts(float *x, int n_tok, int ldx, int K, int G) {
    for (int t = 0; t < n_tok; t++)
        for (int g = 0; g < K / G; g++) {
            float *v = x + (size_t)t * ldx + (size_t)g * G;
            int kind = rnd_int(0, 11);
            float s = kind == 1 ? 1e-3f : kind == 2 ? 50.0f : 1.0f;
            for (int j = 0; j < G; j++) {
                float r = rnd_normal() * s;
                switch (kind) {
                case 3: r = 0.0f; break;
                case 4: r = 0.375f; break;
                case 5: r = fabsf(r); break;
                case 6: r = -fabsf(r); break;
                case 7: r = r * 1e-38f; break;
                default: break;
                }
                v[j] = r;
            }
            if (kind == 8) v[rnd_int(0, G - 1)] = 1e4f; /* one outlier */
        }
}

/* The CPU quantizers read rows of stride K; the GPU ones take any ldx >= K. */
static float *compact(const float *x, int n_tok, int ldx, int K) {
    float *c = xmalloc((size_t)n_tok * K * 4);
    for (int t = 0; t < n_tok; t++) memcpy(c + (size_t)t * K, x + (size_t)t * ldx, (size_t)K * 4);
    return c;
}

/* ---- activation quantization ------------------------------------------------------------- */
static int pick_group(int *K) {
    static const int gs[] = {32, 64, 96, 128, 256, 0};
    int G = gs[rnd_int(0, 5)];
    if (G == 0) { /* per row */
        *K = 32 * rnd_int(1, SCALE ? 48 : 12);
        return *K;
    }
    *K = G * rnd_int(1, SCALE ? (G >= 128 ? 8 : 16) : 4);
    return G;
}

static int pick_tokens(void) {
    int r = rnd_int(0, 9);
    if (r < 4) return rnd_int(1, 8);                 /* GEMV sizes */
    if (r < 8) return rnd_int(9, SCALE ? 130 : 70); /* a tile or two */
    return rnd_int(SCALE ? 131 : 65, SCALE ? 600 : 140);
}

static void compare_qact(const sq_qact *cpu, const sq_qact *gpu, const char *what) {
    size_t nq = (size_t)cpu->n_tok * cpu->K, ns = (size_t)cpu->n_tok * (cpu->K / cpu->G);
    int bad_q = 0, bad_d = 0, bad_z = 0;
    for (size_t i = 0; i < nq; i++) bad_q += cpu->q[i] != gpu->q[i];
    for (size_t i = 0; i < ns; i++) {
        if ((!same_f32(cpu->d[i], gpu->d[i]) || cpu->z[i] != gpu->z[i]) && !bad_d && !bad_z)
            fprintf(stderr, "  first difference: token %zu group %zu: d %.9g / %.9g, z %d / %d (cpu / gpu)\n",
                    i / (cpu->K / cpu->G), i % (cpu->K / cpu->G), cpu->d[i], gpu->d[i], cpu->z[i], gpu->z[i]);
        bad_d += !same_f32(cpu->d[i], gpu->d[i]);
        bad_z += cpu->z[i] != gpu->z[i];
    }
    CHECK(!bad_q && !bad_d && !bad_z, "%s: %d codes, %d scales, %d zero points differ (n_tok %d K %d G %d bits %d)", what,
          bad_q, bad_d, bad_z, cpu->n_tok, cpu->K, cpu->G, cpu->bits);
}

static void test_quantize(int cases) {
    for (int it = 0; it < cases; it++) {
        int K, G = pick_group(&K), bits = rnd_int(0, 3) ? 4 : 8, n_tok = pick_tokens(), ldx = K + rnd_int(0, 3);
        int pow2 = (G & (G - 1)) == 0, wht = pow2 && G <= SQ_WHT_MAX_G && rnd_int(0, 2) != 0;
        float *x = xmalloc((size_t)n_tok * ldx * 4);
        fill_acts(x, n_tok, ldx, K, G);
        if (it % 7 == 3) x[rnd_int(0, K - 1)] = NAN;
        sq_qact cpu = {xmalloc((size_t)n_tok * K), xmalloc((size_t)n_tok * (K / G) * 4),
                       xmalloc((size_t)n_tok * (K / G) * 4), n_tok, K, G, bits};
        sq_qact gpu = {xmalloc((size_t)n_tok * K), xmalloc((size_t)n_tok * (K / G) * 4),
                       xmalloc((size_t)n_tok * (K / G) * 4), 0, 0, 0, 0};
        float *xc = compact(x, n_tok, ldx, K);
        sq_quantize_act_scalar(xc, 0, n_tok, wht, &cpu);
        free(xc);
        float *dx = dev_copy(x, (size_t)n_tok * ldx * 4);
        sq_cuda_act *a;
        OK(sq_cuda_act_create(g_c, SQ_CUDA_ACT_SQ4, n_tok + rnd_int(0, 70), K, G, bits, &a));
        for (int path = SQ_CUDA_PATH_INT4; path <= SQ_CUDA_PATH_INT8; path++) {
            OK(sq_cuda_set_path(g_c, path));
            OK(sq_cuda_quantize(g_c, dx, ldx, n_tok, wht, a));
            OK(sq_cuda_act_download_sq4(g_c, a, &gpu));
            compare_qact(&cpu, &gpu, path == SQ_CUDA_PATH_INT4 ? "quantize (int4 path)" : "quantize (int8 path)");
        }
        sq_cuda_act_free(g_c, a);
        sq_cuda_free(g_c, dx);
        free(x);
        free(cpu.q), free(cpu.d), free(cpu.z), free(gpu.q), free(gpu.d), free(gpu.z);
    }
    /* Q8_0 activations */
    for (int it = 0; it < cases / 2 + 1; it++) {
        int K = 32 * rnd_int(1, SCALE ? 64 : 12), n_tok = pick_tokens();
        float *x = xmalloc((size_t)n_tok * K * 4);
        fill_acts(x, n_tok, K, K, 32);
        sq_q8act cpu = {xmalloc((size_t)n_tok * K), xmalloc((size_t)n_tok * (K / 32) * 4), n_tok, K};
        sq_q8act gpu = {xmalloc((size_t)n_tok * K), xmalloc((size_t)n_tok * (K / 32) * 4), 0, 0};
        sq_quantize_q8act_scalar(x, 0, n_tok, &cpu);
        float *dx = dev_copy(x, (size_t)n_tok * K * 4);
        sq_cuda_act *a;
        OK(sq_cuda_act_create(g_c, SQ_CUDA_ACT_Q8, n_tok, K, 0, 0, &a));
        OK(sq_cuda_quantize(g_c, dx, K, n_tok, 0, a));
        OK(sq_cuda_act_download_q8(g_c, a, &gpu));
        int bad = 0;
        for (size_t i = 0; i < (size_t)n_tok * K; i++) bad += cpu.q[i] != gpu.q[i];
        for (size_t i = 0; i < (size_t)n_tok * (K / 32); i++) bad += !same_f32(cpu.d[i], gpu.d[i]);
        CHECK(!bad, "Q8_0 quantize: %d values differ (n_tok %d K %d)", bad, n_tok, K);
        sq_cuda_act_free(g_c, a);
        sq_cuda_free(g_c, dx);
        free(x), free(cpu.q), free(cpu.d), free(gpu.q), free(gpu.d);
    }
}

/* ---- SQ4 matmuls --------------------------------------------------------------------------- */
static void random_sq4(uint8_t *data, int rows, int K, int G) {
    size_t bs = 2 + (size_t)G / 2, nb = (size_t)rows * (K / G);
    int extreme = rnd_int(0, 5) == 0;
    for (size_t b = 0; b < nb; b++) {
        uint8_t *blk = data + b * bs;
        uint16_t d = sq_fp32_to_fp16(rnd_normal() * 0.02f);
        memcpy(blk, &d, 2);
        for (int i = 0; i < G / 2; i++) blk[2 + i] = extreme ? (rnd() & 1 ? 0x88 : 0x77) : (uint8_t)rnd();
    }
}

/* Runs one matmul configuration and compares group sums and outputs with the CPU's. */
static void check_sq4_run(const sq_cuda_mat *m, sq_cuda_act *a, const float *dx, int ldx, const sq_qact *cq,
                          const int32_t *acc_ref, const float *y_ref, const float *bias, const float *dbias, int rows,
                          int wht, const char *label) {
    const int K = cq->K, G = cq->G, ng = K / G, n_tok = cq->n_tok, ldy = rows + rnd_int(0, 5);
    OK(sq_cuda_quantize(g_c, dx, ldx, n_tok, wht, a));
    const char *kname = sq_cuda_matmul_kernel(g_c, m, a);
    size_t nacc = (size_t)n_tok * rows * ng, ny = (size_t)n_tok * ldy;
    int32_t *dacc = dev(nacc * 4), *acc = xmalloc(nacc * 4);
    OK(sq_cuda_group_sums(g_c, m, a, dacc));
    download(acc, dacc, nacc * 4);
    int bad = 0;
    for (size_t i = 0; i < nacc; i++) bad += acc[i] != acc_ref[i];
    CHECK(!bad, "%s %s: %d of %zu group sums differ (rows %d K %d G %d bits %d n_tok %d)", label, kname, bad, nacc, rows,
          K, G, cq->bits, n_tok);
    /* outputs, once without and once with the bias; the gaps of ldy > rows must stay untouched */
    float *y = xmalloc(ny * 4), *dy = dev(ny * 4);
    for (int pass = 0; pass < 2; pass++) {
        const float fill = -12345.0f;
        for (size_t i = 0; i < ny; i++) y[i] = fill;
        OK(sq_cuda_upload(g_c, dy, y, ny * 4));
        OK(sq_cuda_matmul(g_c, m, a, dy, ldy, pass ? dbias : NULL));
        download(y, dy, ny * 4);
        bad = 0;
        for (int t = 0; t < n_tok; t++)
            for (int r = 0; r < ldy; r++) {
                float got = y[(size_t)t * ldy + r];
                if (r >= rows) {
                    bad += got != fill;
                    continue;
                }
                float want = y_ref[(size_t)t * rows + r];
                if (pass) want += bias[r];
                bad += !same_f32(got, want);
            }
        CHECK(!bad, "%s %s%s: %d outputs differ (rows %d K %d G %d bits %d n_tok %d)", label, kname,
              pass ? " + bias" : "", bad, rows, K, G, cq->bits, n_tok);
    }
    sq_cuda_free(g_c, dy);
    sq_cuda_free(g_c, dacc);
    free(y), free(acc);
}

/* One SQ4 case: CPU reference, then every GPU kernel that can run it. extreme: all weights -8
 * and activations that quantize near the top code, so |acc_g| reaches G·L·8 (beyond 2^22 and
 * 2^24 for big 8-bit groups: the epilogue's exact-float shortcut must step aside there). */
static void sq4_case(int K, int G, int bits, int rows, int n_tok, int wht, int extreme) {
    const sq_kernel_table *ref = sq_kernels_for("scalar");
    const int ldx = K + rnd_int(0, 2);
    size_t bytes = (size_t)rows * (K / G) * (2 + G / 2);
    uint8_t *data = xmalloc(bytes);
    random_sq4(data, rows, K, G);
    if (extreme)
        for (size_t b = 0; b < bytes; b += 2 + G / 2) memset(data + b + 2, 0x88, (size_t)G / 2);
    int32_t *wsum = xmalloc((size_t)rows * (K / G) * 4);
    sq_sq4_group_sums(data, rows, K, G, wsum);
    float *x = xmalloc((size_t)n_tok * ldx * 4), *bias = xmalloc((size_t)rows * 4);
    fill_acts(x, n_tok, ldx, K, G);
    if (extreme)
        for (int t = 0; t < n_tok; t++)
            for (int k = 0; k < K; k++) x[(size_t)t * ldx + k] = k ? 1000.0f + rnd_unit() : 0.0f;
    for (int r = 0; r < rows; r++) bias[r] = rnd_normal();
    sq_qact cq = {xmalloc((size_t)n_tok * K), xmalloc((size_t)n_tok * (K / G) * 4), xmalloc((size_t)n_tok * (K / G) * 4),
                  n_tok, K, G, bits};
    float *xc = compact(x, n_tok, ldx, K);
    sq_quantize_act_scalar(xc, 0, n_tok, wht, &cq);
    free(xc);
    sq_sq4_matrix wm = {data, wsum, rows, K, G, SQ_SQ4_ROWS};
    size_t nacc = (size_t)n_tok * rows * (K / G);
    int32_t *acc_ref = xmalloc(nacc * 4);
    float *y_ref = xmalloc((size_t)n_tok * rows * 4);
    ref->group_sums_sq4(&wm, &cq, 0, rows, acc_ref);
    ref->matmul_sq4(&wm, &cq, 0, rows, y_ref, rows);

    sq_cuda_mat *m;
    OK(sq_cuda_mat_sq4(g_c, data, rows, K, G, &m));
    float *dx = dev_copy(x, (size_t)n_tok * ldx * 4), *dbias = dev_copy(bias, (size_t)rows * 4);
    sq_cuda_act *a;
    OK(sq_cuda_act_create(g_c, SQ_CUDA_ACT_SQ4, n_tok, K, G, bits, &a));
    for (int path = SQ_CUDA_PATH_INT4; path <= SQ_CUDA_PATH_INT8; path++)
        for (int gemv = 0; gemv < 2; gemv++) {
            if (gemv && n_tok > SQ_CUDA_GEMV_MAX) continue;
            OK(sq_cuda_set_path(g_c, path));
            OK(sq_cuda_set_gemv_max(g_c, gemv ? SQ_CUDA_GEMV_MAX : 0));
            check_sq4_run(m, a, dx, ldx, &cq, acc_ref, y_ref, bias, dbias, rows, wht,
                          path == SQ_CUDA_PATH_INT4 ? "int4 path" : "int8 path");
        }
    OK(sq_cuda_set_path(g_c, SQ_CUDA_PATH_AUTO));
    OK(sq_cuda_set_gemv_max(g_c, SQ_CUDA_GEMV_MAX));
    sq_cuda_act_free(g_c, a);
    sq_cuda_mat_free(g_c, m);
    sq_cuda_free(g_c, dx);
    sq_cuda_free(g_c, dbias);
    free(data), free(wsum), free(x), free(bias), free(cq.q), free(cq.d), free(cq.z), free(acc_ref), free(y_ref);
}

static void test_sq4(int cases) {
    for (int it = 0; it < cases; it++) {
        int K, G = pick_group(&K), bits = rnd_int(0, 2) ? 4 : 8, n_tok = pick_tokens();
        int rows = rnd_int(1, 3) == 1 ? rnd_int(1, 40) : rnd_int(1, SCALE ? 300 : 140);
        sq4_case(K, G, bits, rows, n_tok, (G & (G - 1)) == 0 && rnd_int(0, 1), rnd_int(0, 15) == 0);
    }
    /* per-row groups with sums beyond 2^22 (8-bit, G 4096) and 2^24 (G 16384), and a 4-bit one */
    const int n_big = SCALE ? 70 : 3; /* <= 8 tokens: the GEMV and (with the GEMV off) the mma kernels */
    sq4_case(16384, 16384, 8, 3, 2, 0, 1);
    if (SCALE) sq4_case(16384, 16384, 8, 3, n_big, 0, 1);
    sq4_case(4096, 4096, 8, 5, n_big, 1, 1);
    sq4_case(4096, 4096, 4, 5, n_big, 1, 1);
    /* long rows with small groups: several GEMV super-iterations (2048 values each), odd chunk counts */
    sq4_case(4608, 64, 4, 37, 3, 1, 0);
    sq4_case(3104, 32, 8, 21, 5, 0, 0);
    sq4_case(5120, 256, 4, 9, 1, 1, 0);
}

/* ---- Q8_0 matmuls (output head) ------------------------------------------------------------- */
static void test_q8(int cases) {
    const sq_kernel_table *ref = sq_kernels_for("scalar");
    for (int it = 0; it < cases; it++) {
        int K = 32 * (it % 3 ? rnd_int(1, SCALE ? 32 : 8) : rnd_int(33, SCALE ? 160 : 80)); /* 2 with > 1024 */
        int rows = rnd_int(1, SCALE ? 300 : 140), n_tok = it % 3 == 1 ? rnd_int(1, 8) : pick_tokens();
        size_t bytes = (size_t)rows * (K / 32) * 34;
        uint8_t *data = xmalloc(bytes);
        for (size_t b = 0; b < bytes / 34; b++) {
            uint16_t d = sq_fp32_to_fp16(rnd_normal() * 0.01f);
            memcpy(data + b * 34, &d, 2);
            for (int i = 0; i < 32; i++) data[b * 34 + 2 + i] = (uint8_t)rnd_int(-127, 127);
        }
        float *x = xmalloc((size_t)n_tok * K * 4), *y_ref = xmalloc((size_t)n_tok * rows * 4),
              *y = xmalloc((size_t)n_tok * rows * 4);
        fill_acts(x, n_tok, K, K, 32);
        sq_q8act cq = {xmalloc((size_t)n_tok * K), xmalloc((size_t)n_tok * (K / 32) * 4), n_tok, K};
        sq_quantize_q8act_scalar(x, 0, n_tok, &cq);
        sq_q8_matrix wm = {data, rows, K};
        ref->matmul_q8(&wm, &cq, 0, rows, y_ref, rows);
        sq_cuda_mat *m;
        OK(sq_cuda_mat_q8(g_c, data, rows, K, &m));
        float *dx = dev_copy(x, (size_t)n_tok * K * 4), *dy = dev((size_t)n_tok * rows * 4);
        sq_cuda_act *a;
        OK(sq_cuda_act_create(g_c, SQ_CUDA_ACT_Q8, n_tok, K, 0, 0, &a));
        for (int gemv = 0; gemv < 2; gemv++) {
            if (gemv && n_tok > SQ_CUDA_GEMV_MAX) continue;
            OK(sq_cuda_set_gemv_max(g_c, gemv ? SQ_CUDA_GEMV_MAX : 0));
            OK(sq_cuda_quantize(g_c, dx, K, n_tok, 0, a));
            OK(sq_cuda_matmul(g_c, m, a, dy, rows, NULL));
            download(y, dy, (size_t)n_tok * rows * 4);
            int bad = 0;
            for (size_t i = 0; i < (size_t)n_tok * rows; i++) bad += !same_f32(y[i], y_ref[i]);
            CHECK(!bad, "Q8_0 %s: %d outputs differ (rows %d K %d n_tok %d)", sq_cuda_matmul_kernel(g_c, m, a), bad, rows,
                  K, n_tok);
        }
        OK(sq_cuda_set_gemv_max(g_c, SQ_CUDA_GEMV_MAX));
        sq_cuda_act_free(g_c, a);
        sq_cuda_mat_free(g_c, m);
        sq_cuda_free(g_c, dx);
        sq_cuda_free(g_c, dy);
        free(data), free(x), free(y_ref), free(y), free(cq.q), free(cq.d);
    }
}

/* ---- spectral branch ------------------------------------------------------------------------ */
static void test_spectral(void) {
    for (int it = 0; it < (SCALE ? 8 : 4); it++) {
        const int axis = it % 2 ? SQ_SPEC_OUT : SQ_SPEC_IN;
        const int C_in = 8 * rnd_int(4, SCALE ? 64 : 12), C_out = rnd_int(5, SCALE ? 300 : 60);
        const int k_max = rnd_int(1, 12), n_tok = rnd_int(1, SCALE ? 40 : 9);
        const int channels = axis == SQ_SPEC_IN ? C_out : C_in;
        uint16_t *coef = xmalloc((size_t)channels * k_max * 2 * 2);
        int16_t *kf = xmalloc((size_t)channels * 2);
        for (int c = 0; c < channels; c++) {
            kf[c] = (int16_t)rnd_int(0, k_max);
            for (int k = 0; k < k_max * 2; k++)
                coef[(size_t)c * k_max * 2 + k] = sq_fp32_to_fp16(k / 2 < kf[c] ? rnd_normal() * 0.1f : 0.0f);
        }
        sq_spectral s;
        OK(sq_spectral_init(&s, axis, coef, kf, channels, k_max, it % 3 ? 1.0f : 0.9f, "test"));
        sq_basis b;
        OK(sq_basis_init(&b, axis == SQ_SPEC_IN ? C_in : C_out, k_max));
        s.basis = &b;
        const int stride = 2 * k_max + rnd_int(0, 3);
        float *x = xmalloc((size_t)n_tok * C_in * 4), *proj = xmalloc((size_t)n_tok * stride * 4),
              *gproj = xmalloc((size_t)n_tok * stride * 4), *y = xmalloc((size_t)n_tok * C_out * 4),
              *gy = xmalloc((size_t)n_tok * C_out * 4), *bias = xmalloc((size_t)C_out * 4),
              *fbuf = xmalloc((size_t)k_max * 2 * 4);
        for (int i = 0; i < n_tok * C_in; i++) x[i] = rnd_normal();
        for (int i = 0; i < n_tok * C_out; i++) y[i] = rnd_normal();
        for (int i = 0; i < C_out; i++) bias[i] = rnd_normal();
        float *dx = dev_copy(x, (size_t)n_tok * C_in * 4), *dy = dev_copy(y, (size_t)n_tok * C_out * 4),
              *dproj = dev((size_t)n_tok * stride * 4), *dbias = dev_copy(bias, (size_t)C_out * 4);
        sq_cuda_basis *db;
        sq_cuda_spec *ds;
        OK(sq_cuda_basis_create(g_c, &b, &db));
        OK(sq_cuda_spec_create(g_c, &s, db, &ds));
        const int n2 = 2 * s.k_used;
        if (s.k_used) {
            if (axis == SQ_SPEC_IN) {
                sq_spectral_project_in(&b, s.k_used, x, C_in, n_tok, proj, stride);
                OK(sq_cuda_spectral_project_in(g_c, db, s.k_used, dx, C_in, n_tok, dproj, stride));
            } else {
                sq_spectral_project(&s, x, C_in, n_tok, proj, stride, fbuf);
                OK(sq_cuda_spectral_project_out(g_c, ds, dx, C_in, n_tok, dproj, stride));
            }
            download(gproj, dproj, (size_t)n_tok * stride * 4);
            int bad = 0;
            for (int t = 0; t < n_tok; t++)
                for (int i = 0; i < n2; i++) bad += !same_f32(gproj[t * stride + i], proj[t * stride + i]);
            CHECK(!bad, "spectral projection (axis %s): %d values differ", axis == SQ_SPEC_IN ? "in" : "out", bad);
            sq_spectral_apply(&s, proj, stride, n_tok, 0, C_out, y, C_out, fbuf);
            OK(sq_cuda_spectral_apply(g_c, ds, dproj, stride, n_tok, dy, C_out, dbias));
        } else {
            OK(sq_cuda_spectral_apply(g_c, ds, dproj, stride, n_tok, dy, C_out, dbias));
        }
        for (int t = 0; t < n_tok; t++)
            for (int o = 0; o < C_out; o++) y[t * C_out + o] += bias[o];
        download(gy, dy, (size_t)n_tok * C_out * 4);
        int bad = 0;
        for (int i = 0; i < n_tok * C_out; i++) bad += !same_f32(gy[i], y[i]);
        CHECK(!bad, "spectral apply + bias (axis %s, k_used %d): %d outputs differ", axis == SQ_SPEC_IN ? "in" : "out",
              s.k_used, bad);
        sq_cuda_spec_free(g_c, ds);
        sq_cuda_basis_free(g_c, db);
        sq_cuda_free(g_c, dx), sq_cuda_free(g_c, dy), sq_cuda_free(g_c, dproj), sq_cuda_free(g_c, dbias);
        sq_spectral_free(&s);
        sq_basis_free(&b);
        free(coef), free(kf), free(x), free(proj), free(gproj), free(y), free(gy), free(bias), free(fbuf);
    }
}

/* ---- RMSNorm, RoPE, SiLU·mul, add --------------------------------------------------------- */
static void test_elementwise(void) {
    const int n_tok = rnd_int(1, SCALE ? 70 : 9), n = 8 * rnd_int(1, SCALE ? 200 : 40), ld = n + 3;
    float *x = xmalloc((size_t)n_tok * ld * 4), *u = xmalloc((size_t)n_tok * ld * 4), *w = xmalloc((size_t)n * 4),
          *ref = xmalloc((size_t)n_tok * ld * 4), *got = xmalloc((size_t)n_tok * ld * 4);
    for (int i = 0; i < n_tok * ld; i++) x[i] = rnd_normal() * (i % 97 == 0 ? 30.0f : 1.0f), u[i] = rnd_normal();
    for (int i = 0; i < n; i++) w[i] = 1.0f + 0.1f * rnd_normal();
    float *dx = dev_copy(x, (size_t)n_tok * ld * 4), *du = dev_copy(u, (size_t)n_tok * ld * 4),
          *dw = dev_copy(w, (size_t)n * 4), *dy = dev((size_t)n_tok * ld * 4);
    /* RMSNorm */
    memcpy(ref, x, (size_t)n_tok * ld * 4);
    for (int t = 0; t < n_tok; t++) sq_rmsnorm(x + (size_t)t * ld, w, ref + (size_t)t * ld, n, 1e-5f);
    OK(sq_cuda_rmsnorm(g_c, dx, ld, dw, dy, ld, n_tok, n, 1e-5f));
    download(got, dy, (size_t)n_tok * ld * 4);
    int bad = count_off(got, ref, n_tok, ld, n, 1e-5f);
    CHECK(!bad, "rmsnorm: %d values off by more than 1e-5", bad);
    /* SiLU·mul */
    memcpy(ref, x, (size_t)n_tok * ld * 4);
    for (int t = 0; t < n_tok; t++) sq_silu_mul(ref + (size_t)t * ld, u + (size_t)t * ld, n);
    OK(sq_cuda_upload(g_c, dy, x, (size_t)n_tok * ld * 4));
    OK(sq_cuda_silu_mul(g_c, dy, ld, du, ld, n_tok, n));
    download(got, dy, (size_t)n_tok * ld * 4);
    bad = count_off(got, ref, n_tok, ld, n, 1e-5f);
    CHECK(!bad, "silu_mul: %d values off by more than 1e-5", bad);
    /* add (exact) */
    memcpy(ref, x, (size_t)n_tok * ld * 4);
    for (int t = 0; t < n_tok; t++) sq_add(ref + (size_t)t * ld, u + (size_t)t * ld, n);
    OK(sq_cuda_upload(g_c, dy, x, (size_t)n_tok * ld * 4));
    OK(sq_cuda_add(g_c, dy, ld, du, ld, n_tok, n));
    download(got, dy, (size_t)n_tok * ld * 4);
    bad = count_off(got, ref, n_tok, ld, n, -1.0f);
    CHECK(!bad, "add: %d values differ", bad);
    /* RoPE (exact: same table, same operations), both modes */
    for (int mode = SQ_ROPE_NORMAL; mode <= SQ_ROPE_NEOX; mode++) {
        const int hd = 8 * rnd_int(1, 16), heads = rnd_int(1, 6), n_rot = mode ? hd / 2 : hd, nt = rnd_int(1, 20);
        const int n_ctx = 64, pos0 = rnd_int(0, n_ctx - nt), w2 = heads * hd;
        sq_rope r;
        OK(sq_rope_init(&r, n_rot, n_ctx, 10000.0f, 1.0f, NULL, mode));
        float *cs = dev_copy(r.cs, (size_t)n_ctx * (n_rot / 2) * 2 * 4);
        float *q = xmalloc((size_t)nt * w2 * 4), *qg = xmalloc((size_t)nt * w2 * 4);
        for (int i = 0; i < nt * w2; i++) q[i] = rnd_normal();
        float *dq = dev_copy(q, (size_t)nt * w2 * 4);
        for (int t = 0; t < nt; t++) sq_rope_apply(&r, q + (size_t)t * w2, heads, hd, pos0 + t);
        OK(sq_cuda_rope(g_c, cs, n_ctx, n_rot, mode, dq, w2, nt, heads, hd, pos0));
        download(qg, dq, (size_t)nt * w2 * 4);
        bad = count_off(qg, q, nt, w2, w2, -1.0f);
        CHECK(!bad, "rope (mode %d): %d values differ", mode, bad);
        sq_cuda_free(g_c, cs), sq_cuda_free(g_c, dq);
        sq_rope_free(&r);
        free(q), free(qg);
    }
    sq_cuda_free(g_c, dx), sq_cuda_free(g_c, du), sq_cuda_free(g_c, dw), sq_cuda_free(g_c, dy);
    free(x), free(u), free(w), free(ref), free(got);
}

/* ---- KV cache and attention --------------------------------------------------------------- */
static void test_attention(void) {
    const int n_layer = 2, layer = 1, n_kv = rnd_int(1, 3), group = rnd_int(1, 3), n_head = n_kv * group;
    const int hd = 8 * rnd_int(1, SCALE ? 32 : 8), n_ctx = SCALE ? 400 : 80;
    sq_kvcache kc;
    OK(sq_kv_init(&kc, SQ_KV_F16, n_layer, n_kv, hd, n_ctx));
    sq_cuda_kv *kv;
    OK(sq_cuda_kv_create(g_c, n_layer, n_kv, hd, n_ctx, &kv));
    sq_pool *pool = sq_pool_new(1);
    CHECK(pool != NULL, "sq_pool_new");
    if (!pool) return;
    const int kw = n_kv * hd, qw = n_head * hd;
    int pos = 0;
    /* a prefill batch, then decode steps */
    const int batches[3] = {rnd_int(1, SCALE ? 300 : 60), 1, rnd_int(1, 3)};
    for (int bi = 0; bi < 3; bi++) {
        const int nt = batches[bi];
        float *k = xmalloc((size_t)nt * kw * 4), *v = xmalloc((size_t)nt * kw * 4), *q = xmalloc((size_t)nt * qw * 4),
              *out = xmalloc((size_t)nt * qw * 4), *gout = xmalloc((size_t)nt * qw * 4);
        for (int i = 0; i < nt * kw; i++) k[i] = rnd_normal(), v[i] = rnd_normal();
        for (int i = 0; i < nt * qw; i++) q[i] = rnd_normal();
        for (int t = 0; t < nt; t++)
            for (int h = 0; h < n_kv; h++)
                sq_kv_store(&kc, layer, h, pos + t, k + (size_t)t * kw + h * hd, v + (size_t)t * kw + h * hd);
        float *dk = dev_copy(k, (size_t)nt * kw * 4), *dv = dev_copy(v, (size_t)nt * kw * 4),
              *dq = dev_copy(q, (size_t)nt * qw * 4), *dout = dev((size_t)nt * qw * 4);
        OK(sq_cuda_kv_store(g_c, kv, layer, dk, kw, dv, kw, nt, pos));
        float *scratch = xmalloc(sq_attention_scratch_floats(n_ctx, hd) * 4);
        sq_attn_args aa = {.kv = &kc, .layer = layer, .q = q, .out = out, .n_tok = nt, .pos0 = pos, .n_head = n_head,
                           .scale = 1.0f / sqrtf((float)hd), .scratch = scratch,
                           .scratch_floats = sq_attention_scratch_floats(n_ctx, hd)};
        sq_attention(pool, &aa);
        OK(sq_cuda_attention(g_c, kv, layer, dq, qw, dout, qw, nt, pos, n_head, 1.0f / sqrtf((float)hd)));
        download(gout, dout, (size_t)nt * qw * 4);
        int bad = count_off(gout, out, nt, qw, qw, 1e-5f);
        CHECK(!bad, "attention (batch of %d at %d, %d heads / %d kv, head_dim %d): %d values off by more than 1e-5", nt, pos,
              n_head, n_kv, hd, bad);
        pos += nt;
        sq_cuda_free(g_c, dk), sq_cuda_free(g_c, dv), sq_cuda_free(g_c, dq), sq_cuda_free(g_c, dout);
        free(k), free(v), free(q), free(out), free(gout), free(scratch);
    }
    /* the caches hold the same halves */
    size_t n = (size_t)n_layer * n_kv * n_ctx * hd;
    uint16_t *gk = xmalloc(n * 2), *gv = xmalloc(n * 2);
    download(gk, sq_cuda_kv_k(kv), n * 2);
    download(gv, sq_cuda_kv_v(kv), n * 2);
    CHECK(!memcmp(gk, kc.k, n * 2) && !memcmp(gv, kc.v, n * 2), "f16 KV caches differ");
    free(gk), free(gv);
    sq_pool_free(pool);
    sq_cuda_kv_free(g_c, kv);
    sq_kv_free(&kc);
}

/* ---- argument checks ------------------------------------------------------------------------ */
static void test_errors(void) {
    sq_cuda_act *a = NULL;
    CHECK(sq_cuda_act_create(g_c, SQ_CUDA_ACT_SQ4, 4, 100, 32, 4, &a) != SQ_OK && !a, "K not a multiple of G accepted");
    CHECK(sq_cuda_act_create(g_c, SQ_CUDA_ACT_SQ4, 4, 64, 32, 5, &a) != SQ_OK, "5-bit activations accepted");
    CHECK(sq_cuda_set_path(g_c, 7) == SQ_ERR_ARG, "path 7 accepted");
    CHECK(sq_cuda_set_gemv_max(g_c, 99) == SQ_ERR_ARG, "gemv_max 99 accepted");
    OK(sq_cuda_act_create(g_c, SQ_CUDA_ACT_SQ4, 4, 96, 96, 4, &a));
    float *x = dev(4 * 96 * 4);
    CHECK(sq_cuda_quantize(g_c, x, 96, 5, 0, a) == SQ_ERR_ARG, "more tokens than the buffer accepted");
    CHECK(sq_cuda_quantize(g_c, x, 96, 1, 1, a) != SQ_OK, "WHT with a non-power-of-two group accepted");
    uint8_t blk[34] = {0};
    sq_cuda_mat *m = NULL;
    CHECK(sq_cuda_mat_sq4(g_c, blk, 1, 64, 64, &m) == SQ_OK, "%s", sq_last_error());
    CHECK(sq_cuda_matmul(g_c, m, a, x, 1, NULL) == SQ_ERR_ARG, "mismatched K accepted");
    CHECK(sq_cuda_matmul(g_c, m, a, x, 1, NULL) == SQ_ERR_ARG && strlen(sq_last_error()) > 0, "no error text");
    sq_cuda_mat_free(g_c, m);
    sq_cuda_act_free(g_c, a);
    sq_cuda_free(g_c, x);
}

int main(void) {
    if (sq_cuda_device_count() == 0) {
        printf("test_cuda: SKIP: no CUDA device (or no NVIDIA driver) on this machine\n");
        return SKIP_CODE;
    }
    sq_fp16_init();
    OK(sq_cuda_create(0, &g_c));
    printf("test_cuda: %s, default path %s\n", sq_cuda_device_name(g_c),
           sq_cuda_path(g_c) == SQ_CUDA_PATH_INT4 ? "int4" : "int8");
    const char *env = getenv("SQ_CUDA_CASES");
    int cases = env ? atoi(env) : (SCALE ? 40 : 10);
    if (cases < 1) cases = 1;
    test_errors();
    test_quantize(cases);
    test_sq4(cases);
    test_q8(cases / 2 + 1);
    test_spectral();
    test_elementwise();
    test_attention();
    OK(sq_cuda_sync(g_c));
    sq_cuda_destroy(g_c);
    printf("test_cuda: %d random cases per kind\n", cases);
    return test_finish("test_cuda");
}
#endif
