/* bench_cuda.c — times one decoder layer on the GPU through cuda_backend.h (not a test).
 *
 *   bench_cuda FILE.gguf [-n 512,2048] [-c DECODE_CTX] [-r REPS] [--path int4|int8] [--gemv-max N]
 *
 * FILE holds the blk.0.* tensors of a llama-shaped model (SQ4 linear weights, F32 norms) and its
 * hyper-parameters (bench/cuda.py writes an 8B-shaped one). For each prompt length it times
 *   linear: the 4 activation quantizations + 7 W4A4 matmuls of the layer, and
 *   layer:   the whole layer (RMSNorm, q/k/v, RoPE, KV store, attention, o, residual, RMSNorm,
 *            gate/up, SiLU·mul, down, residual),
 * for a prefill at position 0 and for one decode token after DECODE_CTX cached positions.
 * Prints one JSON object on stdout; times are medians of REPS runs in milliseconds.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "arch.h"
#include "cuda_backend.h"
#include "gguf.h"
#include "rope.h"

#define MAX_N 16

enum { Q = SQ_LIN_Q, K = SQ_LIN_K, V = SQ_LIN_V, O = SQ_LIN_O, GATE = SQ_LIN_GATE, UP = SQ_LIN_UP, DOWN = SQ_LIN_DOWN };

typedef struct {
    sq_cuda *c;
    int hidden, ffn, n_head, n_kv, hd, G, bits, wht, n_ctx;
    float eps;
    sq_cuda_mat *w[SQ_N_LINEAR];
    sq_cuda_act *ah, *af;
    sq_cuda_kv *kv;
    float *x, *xn, *q, *k, *v, *att, *o, *g, *u, *cs, *norm_a, *norm_f;
} bench;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static void die(const char *what) {
    fprintf(stderr, "bench_cuda: %s: %s\n", what, sq_last_error());
    exit(1);
}
#define TRY(call)                          \
    do {                                   \
        if ((call) != SQ_OK) die(#call);   \
    } while (0)

static uint32_t meta_u32(const sq_gguf *g, const char *key, uint32_t def) {
    uint32_t v;
    return sq_gguf_get_u32(g, key, &v) == 1 ? v : def;
}

static float *dev_floats(bench *b, size_t n) {
    float *p = sq_cuda_alloc(b->c, n * sizeof(float));
    if (!p) die("sq_cuda_alloc");
    return p;
}

static float *upload_f32(bench *b, const sq_gguf *g, const char *name, int n) {
    const sq_gguf_tensor *t = sq_gguf_tensor_find(g, name);
    if (!t || t->type != SQ_T_F32 || t->ne[0] != (uint64_t)n) {
        fprintf(stderr, "bench_cuda: missing or bad F32 tensor %s\n", name);
        exit(1);
    }
    float *p = dev_floats(b, (size_t)n);
    TRY(sq_cuda_upload(b->c, p, t->data, (size_t)n * 4));
    return p;
}

/* One layer over n tokens at positions pos0..; linear_only: just quantizations and matmuls. */
static void layer(bench *b, int n, int pos0, int linear_only) {
    const int H = b->hidden, F = b->ffn, kvw = b->n_kv * b->hd;
    if (!linear_only) TRY(sq_cuda_rmsnorm(b->c, b->x, H, b->norm_a, b->xn, H, n, H, b->eps));
    TRY(sq_cuda_quantize(b->c, b->xn, H, n, b->wht, b->ah));
    TRY(sq_cuda_matmul(b->c, b->w[Q], b->ah, b->q, H, NULL));
    TRY(sq_cuda_matmul(b->c, b->w[K], b->ah, b->k, kvw, NULL));
    TRY(sq_cuda_matmul(b->c, b->w[V], b->ah, b->v, kvw, NULL));
    if (!linear_only) {
        TRY(sq_cuda_rope(b->c, b->cs, b->n_ctx, b->hd, SQ_ROPE_NORMAL, b->q, H, n, b->n_head, b->hd, pos0));
        TRY(sq_cuda_rope(b->c, b->cs, b->n_ctx, b->hd, SQ_ROPE_NORMAL, b->k, kvw, n, b->n_kv, b->hd, pos0));
        TRY(sq_cuda_kv_store(b->c, b->kv, 0, b->k, kvw, b->v, kvw, n, pos0));
        TRY(sq_cuda_attention(b->c, b->kv, 0, b->q, H, b->att, H, n, pos0, b->n_head, 1.0f / sqrtf((float)b->hd)));
    }
    TRY(sq_cuda_quantize(b->c, b->att, H, n, b->wht, b->ah));
    TRY(sq_cuda_matmul(b->c, b->w[O], b->ah, b->o, H, NULL));
    if (!linear_only) {
        TRY(sq_cuda_add(b->c, b->x, H, b->o, H, n, H));
        TRY(sq_cuda_rmsnorm(b->c, b->x, H, b->norm_f, b->xn, H, n, H, b->eps));
    }
    TRY(sq_cuda_quantize(b->c, b->xn, H, n, b->wht, b->ah));
    TRY(sq_cuda_matmul(b->c, b->w[GATE], b->ah, b->g, F, NULL));
    TRY(sq_cuda_matmul(b->c, b->w[UP], b->ah, b->u, F, NULL));
    if (!linear_only) TRY(sq_cuda_silu_mul(b->c, b->g, F, b->u, F, n, F));
    TRY(sq_cuda_quantize(b->c, b->g, F, n, b->wht, b->af));
    TRY(sq_cuda_matmul(b->c, b->w[DOWN], b->af, b->o, H, NULL));
    if (!linear_only) TRY(sq_cuda_add(b->c, b->x, H, b->o, H, n, H));
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median wall time of reps runs (after two warm-ups), each ended by a device sync. */
static double time_layer(bench *b, int n, int pos0, int linear_only, int reps) {
    double t[64];
    if (reps > 64) reps = 64;
    for (int i = 0; i < reps + 2; i++) {
        double t0 = now_ms();
        layer(b, n, pos0, linear_only);
        TRY(sq_cuda_sync(b->c));
        if (i >= 2) t[i - 2] = now_ms() - t0;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_d);
    return t[reps / 2];
}

static void usage(void) {
    fprintf(stderr, "usage: bench_cuda FILE.gguf [-n 512,2048] [-c DECODE_CTX] [-r REPS] [--path int4|int8] "
                    "[--gemv-max N]\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    const char *path = argv[1], *want_path = NULL;
    int ns[MAX_N] = {512, 2048}, nn = 2, ctx = 512, reps = 10, gemv_max = -1;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "-n") && i + 1 < argc) {
            nn = 0;
            for (char *s = strtok(argv[++i], ","); s && nn < MAX_N; s = strtok(NULL, ",")) ns[nn++] = atoi(s);
        } else if (!strcmp(argv[i], "-c") && i + 1 < argc) ctx = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-r") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--path") && i + 1 < argc) want_path = argv[++i];
        else if (!strcmp(argv[i], "--gemv-max") && i + 1 < argc) gemv_max = atoi(argv[++i]);
        else usage();
    }
    int max_n = ctx;
    for (int i = 0; i < nn; i++) {
        if (ns[i] < 1) usage();
        if (ns[i] > max_n) max_n = ns[i];
    }
    if (reps < 1 || ctx < 0) usage();
    if (sq_cuda_device_count() == 0) {
        fprintf(stderr, "bench_cuda: no CUDA device\n");
        return 3;
    }
    sq_gguf g;
    if (sq_gguf_open(&g, path) != SQ_OK) die(path);
    bench b;
    memset(&b, 0, sizeof b);
    b.hidden = (int)meta_u32(&g, "llama.embedding_length", 0);
    b.ffn = (int)meta_u32(&g, "llama.feed_forward_length", 0);
    b.n_head = (int)meta_u32(&g, "llama.attention.head_count", 0);
    b.n_kv = (int)meta_u32(&g, "llama.attention.head_count_kv", (uint32_t)b.n_head);
    b.G = (int)meta_u32(&g, "specquant.group_size", 64);
    b.bits = (int)meta_u32(&g, "specquant.act_bits", 4);
    sq_str rot;
    b.wht = sq_gguf_get_str(&g, "specquant.rotation", &rot) == 1 && sq_str_eq(rot, "wht");
    b.eps = 1e-5f;
    if (!b.hidden || !b.ffn || !b.n_head || b.hidden % b.n_head || !b.G) {
        fprintf(stderr, "bench_cuda: %s lacks llama.* hyper-parameters or specquant.group_size\n", path);
        return 1;
    }
    b.hd = b.hidden / b.n_head;
    b.n_ctx = max_n + 1;
    TRY(sq_cuda_create(0, &b.c));
    if (want_path) TRY(sq_cuda_set_path(b.c, !strcmp(want_path, "int4") ? SQ_CUDA_PATH_INT4 : SQ_CUDA_PATH_INT8));
    if (gemv_max >= 0) TRY(sq_cuda_set_gemv_max(b.c, gemv_max));
    size_t wbytes = 0;
    for (int i = 0; i < SQ_N_LINEAR; i++) {
        char name[64];
        snprintf(name, sizeof name, "blk.0.%s.weight", sq_linear_names[i]);
        const sq_gguf_tensor *t = sq_gguf_tensor_find(&g, name);
        if (!t || t->type != SQ_T_SQ4) {
            fprintf(stderr, "bench_cuda: %s is missing or not SQ4\n", name);
            return 1;
        }
        TRY(sq_cuda_mat_sq4(b.c, t->data, (int)t->ne[1], (int)t->ne[0], b.G, &b.w[i]));
        wbytes += t->nbytes;
    }
    b.norm_a = upload_f32(&b, &g, "blk.0.attn_norm.weight", b.hidden);
    b.norm_f = upload_f32(&b, &g, "blk.0.ffn_norm.weight", b.hidden);
    TRY(sq_cuda_act_create(b.c, SQ_CUDA_ACT_SQ4, max_n, b.hidden, b.G, b.bits, &b.ah));
    TRY(sq_cuda_act_create(b.c, SQ_CUDA_ACT_SQ4, max_n, b.ffn, b.G, b.bits, &b.af));
    TRY(sq_cuda_kv_create(b.c, 1, b.n_kv, b.hd, b.n_ctx, &b.kv));
    size_t N = (size_t)max_n;
    b.x = dev_floats(&b, N * b.hidden), b.xn = dev_floats(&b, N * b.hidden), b.q = dev_floats(&b, N * b.hidden);
    b.k = dev_floats(&b, N * b.n_kv * b.hd), b.v = dev_floats(&b, N * b.n_kv * b.hd);
    b.att = dev_floats(&b, N * b.hidden), b.o = dev_floats(&b, N * b.hidden);
    b.g = dev_floats(&b, N * b.ffn), b.u = dev_floats(&b, N * b.ffn);
    sq_rope rope;
    TRY(sq_rope_init(&rope, b.hd, b.n_ctx, 500000.0f, 1.0f, NULL, SQ_ROPE_NORMAL));
    b.cs = dev_floats(&b, (size_t)b.n_ctx * b.hd);
    TRY(sq_cuda_upload(b.c, b.cs, rope.cs, (size_t)b.n_ctx * b.hd * 4));
    /* inputs: a deterministic pseudo-random hidden state (attention output starts as a copy) */
    float *hx = malloc(N * b.hidden * 4);
    if (!hx) return 1;
    uint32_t s = 12345;
    for (size_t i = 0; i < N * b.hidden; i++) {
        s = s * 1664525u + 1013904223u;
        hx[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * 4.0f;
    }
    TRY(sq_cuda_upload(b.c, b.x, hx, N * b.hidden * 4));
    TRY(sq_cuda_upload(b.c, b.att, hx, N * b.hidden * 4));
    TRY(sq_cuda_upload(b.c, b.xn, hx, N * b.hidden * 4));
    TRY(sq_cuda_upload(b.c, b.g, hx, (N * b.hidden < N * b.ffn ? N * b.hidden : N * b.ffn) * 4));
    free(hx);

    printf("{\"device\": \"%s\", \"path\": \"%s\", \"hidden\": %d, \"ffn\": %d, \"heads\": %d, \"kv_heads\": %d, "
           "\"group_size\": %d, \"act_bits\": %d, \"wht\": %d, \"weight_bytes\": %zu, \"reps\": %d,\n",
           sq_cuda_device_name(b.c), sq_cuda_path(b.c) == SQ_CUDA_PATH_INT4 ? "int4" : "int8", b.hidden, b.ffn,
           b.n_head, b.n_kv, b.G, b.bits, b.wht, wbytes, reps);
    printf(" \"prefill\": [");
    for (int i = 0; i < nn; i++) {
        const int n = ns[i];
        double lin = time_layer(&b, n, 0, 1, reps), full = time_layer(&b, n, 0, 0, reps);
        TRY(sq_cuda_quantize(b.c, b.xn, b.hidden, n, b.wht, b.ah));
        printf("%s\n  {\"n_tok\": %d, \"linear_ms\": %.4f, \"layer_ms\": %.4f, \"kernel\": \"%s\"}", i ? "," : "", n,
               lin, full, sq_cuda_matmul_kernel(b.c, b.w[Q], b.ah));
    }
    /* decode: ctx cached positions, then one token at position ctx (rewritten every run) */
    if (ctx > 0) layer(&b, ctx, 0, 0);
    double lin = time_layer(&b, 1, ctx, 1, reps * 5), full = time_layer(&b, 1, ctx, 0, reps * 5);
    TRY(sq_cuda_quantize(b.c, b.xn, b.hidden, 1, b.wht, b.ah));
    printf("],\n \"decode\": {\"ctx\": %d, \"linear_ms\": %.4f, \"layer_ms\": %.4f, \"kernel\": \"%s\", "
           "\"weight_gbps\": %.1f}}\n",
           ctx, lin, full, sq_cuda_matmul_kernel(b.c, b.w[Q], b.ah), wbytes / (lin * 1e6));
    sq_rope_free(&rope);
    sq_gguf_close(&g);
    return 0;
}
