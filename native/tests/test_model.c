/* test_model.c — the forward pass against itself and the load/eval contract.
 *
 * On tiny random files (tiny_model.h): batch prefill = token-by-token decode, 1 thread = 3
 * threads, last_only = the last row of a full eval, a rewind with set_n_past = a fresh context,
 * prompts longer than one chunk, KV types (q8/q4 close to f16, f16 close to f32), spectral
 * truncation, every weight type; a qwen2 file in llama.cpp's layout (NEOX RoPE, q/k unpermuted)
 * against the same model stored as llama (q/k permuted, normal RoPE); SQ_ISA; act_bits (load-time
 * activation bits: auto, A4 vs A8 files, ISAs); then argument and
 * file errors: each gives its code and a message (specquant.version, block_count, FIFOs, ...).
 * Parity with reference.py is tests/test_parity.py (Python).
 */
#define _GNU_SOURCE /* memmem */
#define TEST_REPORT_LAST_ERROR /* test_util.h: FAIL lines on stdout with sq_last_error() */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "model.h"
#include "specquant.h"
#include "tiny_model.h"

#ifdef SQ_HAVE_CUDA
#include "cuda_backend.h"
#endif
#include "test_util.h"

static const int32_t k_toks[] = {3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43, 38, 32, 79, 50, 28, 8, 41};
#define NTOK ((int)(sizeof k_toks / sizeof k_toks[0]))

/* max |a-b| / max |b| */
static double rel_err(const float *a, const float *b, size_t n) {
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md)) md = d; /* NaN propagates as a failure */
        if (fabs(b[i]) > mb) mb = fabs(b[i]);
    }
    return mb > 0 ? md / mb : md;
}

static sq_model *load(const uint8_t *buf, size_t size, int n_threads, int kv, float tau) {
    sq_model_params p = sq_model_default_params();
    p.n_threads = n_threads;
    p.kv_type = kv;
    p.spectral_tau = tau;
    sq_model *m = sq_model_load_buffer(buf, size, &p);
    CHECK(m != NULL, "load failed");
    return m;
}

static float *eval_all(sq_model *m, const int32_t *t, int n) {
    float *out = malloc(sizeof(float) * (size_t)n * sq_model_n_vocab(m));
    CHECK(sq_model_eval(m, t, n, out, 0) == SQ_OK, "eval");
    return out;
}

/* Batch vs decode, threads, last_only, rewind: all on one configuration. SIMD kernels may sum a
 * batch in another float order than a single token (FORMAT.md §4.3 allows it); in a quantized
 * model such a last-bit difference can flip one activation's rounding in the next layer, so those
 * compare with a looser tolerance (a float model's path is order-identical: 1e-5). */
static void check_consistency(const char *what, const tiny_cfg *c) {
    const double tol = c->wtype == SQ_T_F16 ? 1e-5 : 5e-2;
    size_t size;
    uint8_t *buf = tiny_model_build(c, &size);
    sq_model *m1 = load(buf, size, 1, SQ_KV_F32, 1.0f), *m3 = load(buf, size, 3, SQ_KV_F32, 1.0f);
    if (!m1 || !m3) goto out;
    int V = sq_model_n_vocab(m1);
    float *batch = eval_all(m1, k_toks, NTOK), *thr = eval_all(m3, k_toks, NTOK);
    int finite = 1;
    for (int i = 0; i < V * NTOK; i++) finite &= isfinite(batch[i]) != 0;
    CHECK(finite, "%s: a logit is not finite", what);
    CHECK(rel_err(thr, batch, (size_t)V * NTOK) < tol, "%s: 3 threads differ from 1 (%g)", what,
          rel_err(thr, batch, (size_t)V * NTOK));
    /* decode one token at a time */
    CHECK(sq_model_set_n_past(m1, 0) == SQ_OK, "reset");
    float *row = malloc(sizeof(float) * V);
    double worst = 0;
    for (int t = 0; t < NTOK; t++) {
        CHECK(sq_model_eval(m1, &k_toks[t], 1, row, 1) == SQ_OK, "decode %d", t);
        double e = rel_err(row, batch + (size_t)t * V, (size_t)V);
        if (e > worst) worst = e;
    }
    CHECK(worst < tol, "%s: decode differs from batch (%g)", what, worst);
    CHECK(sq_model_n_past(m1) == NTOK, "n_past %d", sq_model_n_past(m1));
    /* last_only of a prefix + rewind: eval 12, rewind to 5, eval tokens 5..11 again */
    CHECK(sq_model_set_n_past(m3, 0) == SQ_OK, "reset");
    CHECK(sq_model_eval(m3, k_toks, 12, row, 1) == SQ_OK, "eval 12");
    CHECK(rel_err(row, batch + (size_t)11 * V, (size_t)V) < tol, "%s: last_only row differs", what);
    CHECK(sq_model_set_n_past(m3, 5) == SQ_OK, "rewind");
    CHECK(sq_model_eval(m3, k_toks + 5, 7, row, 1) == SQ_OK, "re-eval");
    CHECK(rel_err(row, batch + (size_t)11 * V, (size_t)V) < tol, "%s: rewind + re-eval differs", what);
    CHECK(sq_model_eval(m3, k_toks, 3, NULL, 0) == SQ_OK, "eval without logits");
    CHECK(sq_model_n_past(m3) == 15, "n_past after NULL-logits eval %d", sq_model_n_past(m3));
    free(row);
    free(batch);
    free(thr);
out:
    sq_model_free(m1);
    sq_model_free(m3);
    free(buf);
}

static void test_variants(void) {
    tiny_cfg c = tiny_default();
    check_consistency("sq4 g32 wht", &c);
    c.group = 64, c.wht = 0, c.act_bits = 8;
    check_consistency("sq4 g64 none a8", &c);
    c = tiny_default();
    c.spectral_k = 4;
    check_consistency("spectral in", &c);
    c.axis_out = 1;
    check_consistency("spectral out", &c);
    c = tiny_default();
    c.wtype = SQ_T_Q8_0;
    check_consistency("q8", &c);
    c.wtype = SQ_T_F16, c.embd_type = SQ_T_F16, c.tied = 0;
    check_consistency("f16 untied", &c);
    c = tiny_default();
    c.arch = "qwen2", c.bias = 1, c.n_head = 8, c.n_kv_head = 2;
    check_consistency("qwen2 gqa 4", &c);
}

/* KV cache types: q8 / q4 / f16 runs stay close to the f32 run. */
static void test_kv_types(void) {
    tiny_cfg c = tiny_default();
    c.wtype = SQ_T_F16; /* no activation quantization: KV rounding is the only difference */
    size_t size;
    uint8_t *buf = tiny_model_build(&c, &size);
    sq_model *ref = load(buf, size, 2, SQ_KV_F32, 1.0f);
    float *r = ref ? eval_all(ref, k_toks, NTOK) : NULL;
    const double tol[3] = {2e-3, 2e-2, 1.5e-1}; /* f16, q8, q4 */
    for (int kv = 0; kv < 3 && r; kv++) {
        sq_model *m = load(buf, size, 2, kv, 1.0f);
        if (!m) continue;
        float *o = eval_all(m, k_toks, NTOK);
        double e = rel_err(o, r, (size_t)NTOK * sq_model_n_vocab(m));
        CHECK(e < tol[kv] && e > 0, "kv type %d: error %g vs f32 (tolerance %g)", kv, e, tol[kv]);
        free(o);
        sq_model_free(m);
    }
    free(r);
    sq_model_free(ref);
    free(buf);
}

/* Prompts longer than SQ_MAX_BATCH run in chunks; the result equals two separate evals. */
static void test_chunks(void) {
    tiny_cfg c = tiny_default();
    c.n_ctx = 1100, c.n_layer = 1;
    size_t size;
    uint8_t *buf = tiny_model_build(&c, &size);
    sq_model *m = load(buf, size, 2, SQ_KV_F32, 1.0f);
    if (!m) goto out;
    int n = 700, V = sq_model_n_vocab(m);
    int32_t *t = malloc(sizeof *t * n);
    for (int i = 0; i < n; i++) t[i] = (int32_t)((i * 37 + 11) % V);
    float *all = eval_all(m, t, n);
    float *last = malloc(sizeof(float) * V);
    CHECK(sq_model_set_n_past(m, 600) == SQ_OK, "rewind");
    CHECK(sq_model_eval(m, t + 600, 100, last, 1) == SQ_OK, "tail");
    CHECK(rel_err(last, all + (size_t)(n - 1) * V, (size_t)V) < 1e-5, "chunked prefill differs");
    CHECK(sq_model_n_ctx(m) == 1100, "n_ctx %d", sq_model_n_ctx(m));
    free(t);
    free(all);
    free(last);
out:
    sq_model_free(m);
    free(buf);
}

/* tau < 1 drops coefficients (fewer per channel), and the model still runs. */
static void test_spectral_tau(void) {
    tiny_cfg c = tiny_default();
    c.spectral_k = 8;
    size_t size;
    uint8_t *buf = tiny_model_build(&c, &size);
    sq_model *a = load(buf, size, 1, SQ_KV_F32, 1.0f), *b = load(buf, size, 1, SQ_KV_F32, 0.5f);
    if (a && b) {
        long ka = 0, kb = 0;
        const sq_spectral *sa = a->layers[0].q.spec, *sb = b->layers[0].q.spec;
        CHECK(sa && sb, "no spectral branch loaded");
        for (int i = 0; sa && sb && i < sa->channels; i++) ka += sa->k[i], kb += sb->k[i];
        CHECK(kb < ka && kb > 0, "tau 0.5 kept %ld of %ld coefficients", kb, ka);
        float *x = eval_all(b, k_toks, 4);
        int finite = 1;
        for (int i = 0; i < 4 * sq_model_n_vocab(b); i++) finite &= isfinite(x[i]) != 0;
        CHECK(finite, "tau 0.5: a logit is not finite");
        free(x);
    }
    sq_model_free(a);
    sq_model_free(b);
    free(buf);
}

static void expect_load_error(const uint8_t *buf, size_t size, const sq_model_params *p, sq_status code, const char *what) {
    sq_model *m = sq_model_load_buffer(buf, size, p);
    CHECK(m == NULL && sq_last_status() == code && sq_last_error()[0], "%s: expected error %d, got %s (status %d)", what,
          code, m ? "a model" : "NULL", sq_last_status());
    sq_model_free(m);
}

static void test_param_errors(void) {
    tiny_cfg c = tiny_default();
    size_t size;
    uint8_t *buf = tiny_model_build(&c, &size);
    sq_model_params p = sq_model_default_params();
    p.n_ctx = 65;
    expect_load_error(buf, size, &p, SQ_ERR_ARG, "n_ctx > model");
    p.n_ctx = -1;
    expect_load_error(buf, size, &p, SQ_ERR_ARG, "n_ctx < 0");
    p = sq_model_default_params(), p.n_threads = -2;
    expect_load_error(buf, size, &p, SQ_ERR_ARG, "n_threads < 0");
    p = sq_model_default_params(), p.kv_type = 9;
    expect_load_error(buf, size, &p, SQ_ERR_ARG, "kv_type");
    p = sq_model_default_params(), p.spectral_tau = 0.0f;
    expect_load_error(buf, size, &p, SQ_ERR_ARG, "tau 0");
    p.spectral_tau = NAN;
    expect_load_error(buf, size, &p, SQ_ERR_ARG, "tau NaN");
    p = sq_model_default_params(), p.backend = SQ_BACKEND_CUDA;
#ifdef SQ_HAVE_CUDA
    if (sq_cuda_device_count() == 0) /* with a GPU, test_model_cuda covers backend=cuda */
#endif
        expect_load_error(buf, size, &p, SQ_ERR_BACKEND, "cuda");
    CHECK(sq_model_load("/nonexistent/x.gguf", NULL) == NULL && sq_last_status() == SQ_ERR_IO, "missing file");
    CHECK(sq_model_load(NULL, NULL) == NULL && sq_last_status() == SQ_ERR_ARG, "NULL path");

    /* eval errors leave the state unchanged */
    p = sq_model_default_params();
    p.n_ctx = 16;
    sq_model *m = sq_model_load_buffer(buf, size, &p);
    CHECK(m != NULL, "load n_ctx 16");
    if (m) {
        float *lg = malloc(sizeof(float) * 20 * sq_model_n_vocab(m));
        int32_t bad[2] = {1, 97};
        CHECK(sq_model_eval(m, bad, 2, lg, 0) == SQ_ERR_ARG && sq_model_n_past(m) == 0, "token out of range");
        bad[1] = -1;
        CHECK(sq_model_eval(m, bad, 2, lg, 0) == SQ_ERR_ARG, "negative token");
        CHECK(sq_model_eval(m, k_toks, 0, lg, 0) == SQ_ERR_ARG, "n = 0");
        CHECK(sq_model_eval(m, NULL, 3, lg, 0) == SQ_ERR_ARG, "NULL tokens");
        CHECK(sq_model_eval(m, k_toks, 17, lg, 0) == SQ_ERR_CTX_FULL && sq_model_n_past(m) == 0, "past n_ctx");
        CHECK(sq_model_eval(m, k_toks, 16, lg, 1) == SQ_OK, "exactly n_ctx");
        CHECK(sq_model_eval(m, k_toks, 1, lg, 1) == SQ_ERR_CTX_FULL && sq_model_n_past(m) == 16, "full");
        CHECK(sq_model_set_n_past(m, 17) == SQ_ERR_ARG && sq_model_set_n_past(m, -1) == SQ_ERR_ARG, "set_n_past");
        CHECK(sq_model_set_n_past(m, 15) == SQ_OK && sq_model_eval(m, k_toks, 1, lg, 1) == SQ_OK, "rewind 1");
        CHECK(sq_model_n_ctx_train(m) == 64 && sq_model_n_vocab(m) == 97, "sizes");
        const char *v = sq_model_meta(m, "llama.embedding_length");
        CHECK(v && !strcmp(v, "64"), "meta %s", v ? v : "NULL");
        v = sq_model_meta(m, "specquant.rotation");
        CHECK(v && !strcmp(v, "wht"), "meta string");
        v = sq_model_meta(m, "llama.rope.freq_base");
        CHECK(v && !strcmp(v, "10000"), "meta float %s", v ? v : "NULL");
        CHECK(sq_model_meta(m, "no.such.key") == NULL, "absent meta");
        free(lg);
        sq_model_free(m);
    }
    CHECK(sq_model_eval(NULL, k_toks, 1, NULL, 0) == SQ_ERR_ARG, "NULL model");
    sq_model_free(NULL);
    p = sq_model_default_params();
    m = sq_model_load_buffer(buf, size, &p);
    CHECK(m && sq_model_n_ctx(m) == 64, "default n_ctx = model's (64)");
    sq_model_free(m);
    free(buf);
}

/* Structural errors in otherwise valid files: hyperparameters and tensor shapes. */
static void test_model_errors(void) {
    sq_model_params p = sq_model_default_params();
    size_t size;
    tiny_cfg c = tiny_default();
    c.n_head = 5; /* 64 % 5 != 0 */
    c.n_kv_head = 5;
    uint8_t *buf = tiny_model_build(&c, &size);
    expect_load_error(buf, size, &p, SQ_ERR_FORMAT, "heads do not divide hidden");
    free(buf);
    c = tiny_default();
    c.n_kv_head = 3; /* 4 % 3 */
    buf = tiny_model_build(&c, &size);
    expect_load_error(buf, size, &p, SQ_ERR_FORMAT, "kv heads do not divide heads");
    free(buf);
    c = tiny_default();
    c.arch = "qwen2"; /* without biases */
    buf = tiny_model_build(&c, &size);
    expect_load_error(buf, size, &p, SQ_ERR_FORMAT, "qwen2 without biases");
    free(buf);
    /* a renamed tensor = a missing one */
    c = tiny_default();
    buf = tiny_model_build(&c, &size);
    uint8_t *hit = memmem(buf, size, "blk.1.ffn_up.weight", 19);
    CHECK(hit != NULL, "tensor name not found");
    if (hit) {
        hit[0] = 'x';
        expect_load_error(buf, size, &p, SQ_ERR_FORMAT, "missing tensor");
        hit[0] = 'b';
    }
    /* a wrong rotation block */
    free(buf);
    c = tiny_default();
    c.group = 24; /* not a power of two: the WHT is impossible */
    c.n_embd = 48, c.n_ff = 96;
    buf = tiny_model_build(&c, &size);
    expect_load_error(buf, size, &p, SQ_ERR_FORMAT, "wht with G = 24");
    free(buf);
}

static void expect_load_message(const uint8_t *buf, size_t size, sq_status code, const char *what, const char *part1,
                                const char *part2) {
    sq_model_params p = sq_model_default_params();
    expect_load_error(buf, size, &p, code, what);
    CHECK(strstr(sq_last_error(), part1) && (!part2 || strstr(sq_last_error(), part2)), "%s: message lacks '%s' / '%s'",
          what, part1, part2 ? part2 : "");
}

/* llama.cpp stores qwen2 q/k unpermuted for NEOX RoPE and llama q/k permuted for normal RoPE: the
 * same weights in both layouts must give the same logits (up to the order of the q·k sums). */
static void test_qwen2_neox(void) {
    tiny_cfg c = tiny_default();
    c.arch = "qwen2", c.bias = 1, c.n_head = 8, c.n_kv_head = 2; /* head_dim 8, GQA 4 */
    c.wtype = SQ_T_F16, c.embd_type = SQ_T_F16, c.seed = 0x5EED;  /* no activation rounding */
    size_t sa, sb;
    uint8_t *qwen = tiny_model_build(&c, &sa);
    c.arch = "llama", c.permute_qk = 1;
    uint8_t *llama = tiny_model_build(&c, &sb);
    sq_model *a = load(qwen, sa, 2, SQ_KV_F32, 1.0f), *b = load(llama, sb, 2, SQ_KV_F32, 1.0f);
    if (a && b) {
        CHECK(a->rope.mode == SQ_ROPE_NEOX && b->rope.mode == SQ_ROPE_NORMAL, "rope modes %d %d", a->rope.mode,
              b->rope.mode);
        float *la = eval_all(a, k_toks, NTOK), *lb = eval_all(b, k_toks, NTOK);
        double e = rel_err(la, lb, (size_t)NTOK * sq_model_n_vocab(a));
        CHECK(e < 1e-4, "qwen2 (neox) vs llama (permuted q/k): relative error %g", e);
        free(la);
        free(lb);
    }
    sq_model_free(a);
    sq_model_free(b);
    free(qwen);
    free(llama);
    /* mistral reads as llama */
    c = tiny_default();
    c.arch = "mistral";
    uint8_t *buf = tiny_model_build(&c, &sa);
    sq_model *m = load(buf, sa, 1, SQ_KV_F16, 1.0f);
    CHECK(m && m->rope.mode == SQ_ROPE_NORMAL, "mistral");
    sq_model_free(m);
    free(buf);
}

/* A llama file with <arch>.attention.sliding_window windows every layer. With a window of 1 a query
 * sees only its own key, whose softmax weight is then exactly 1: each position's logits are those of
 * its token run alone, whatever came before. The same weights without the key see earlier tokens.
 * Batch, decode, threads and rewinds agree with a window of 4. */
static void test_sliding_window(void) {
    tiny_cfg c = tiny_default();
    c.wtype = SQ_T_F16, c.embd_type = SQ_T_F16, c.seed = 0x5A5A, c.sliding_window = 1;
    size_t sw, sf;
    uint8_t *win = tiny_model_build(&c, &sw);
    c.sliding_window = 0;
    uint8_t *full = tiny_model_build(&c, &sf);
    sq_model *mw = load(win, sw, 1, SQ_KV_F32, 1.0f), *mf = load(full, sf, 1, SQ_KV_F32, 1.0f);
    if (mw && mf) {
        const int V = sq_model_n_vocab(mw);
        float *lw = eval_all(mw, k_toks, NTOK), *lf = eval_all(mf, k_toks, NTOK), *alone = malloc(sizeof(float) * V);
        double worst = 0, least = 1e9;
        for (int t = 1; t < NTOK; t++) {
            CHECK(sq_model_set_n_past(mw, 0) == SQ_OK, "reset");
            CHECK(sq_model_eval(mw, &k_toks[t], 1, alone, 1) == SQ_OK, "token %d alone", t);
            double e = rel_err(lw + (size_t)t * V, alone, (size_t)V), d = rel_err(lf + (size_t)t * V, alone, (size_t)V);
            if (e > worst) worst = e;
            if (d < least) least = d;
        }
        CHECK(worst < 1e-5, "window 1: a position's logits differ from its token alone (%g)", worst);
        CHECK(least > 1e-3, "without the window, earlier tokens should change every position (%g)", least);
        free(lw);
        free(lf);
        free(alone);
    }
    sq_model_free(mw);
    sq_model_free(mf);
    free(win);
    free(full);
    c = tiny_default();
    c.sliding_window = 4; /* < NTOK: decode, rewinds and threads all cross the window */
    check_consistency("llama window 4", &c);
}

/* llama.cpp's phi3 files fuse q/k/v (attn_qkv) and gate/up (ffn_up = [gate; up]); the runtime takes
 * each linear as a row range of the mapped tensor. The same weights fused and as seven tensors give
 * identical logits (same bytes, same kernels) for F32, F16 and Q8_0; the views point into the
 * mapping at the right rows (no copies); SQ4 fused tensors and LongRoPE factors are refused. */
static void test_phi3_fused(void) {
    static const uint32_t types[] = {SQ_T_F32, SQ_T_F16, SQ_T_Q8_0};
    static const size_t elt[] = {4, 2, 0};
    for (int ti = 0; ti < 3; ti++) {
        tiny_cfg c = tiny_default();
        c.arch = "phi3", c.wtype = types[ti], c.embd_type = SQ_T_F16, c.seed = 0xF1F1 + ti, c.tied = 0;
        c.n_head = 8, c.n_kv_head = 2; /* head_dim 8, GQA 4: q, k and v rows of different lengths */
        size_t sf, ss;
        c.fused = 1;
        uint8_t *fused = tiny_model_build(&c, &sf);
        c.fused = 0;
        uint8_t *split = tiny_model_build(&c, &ss);
        sq_model *a = load(fused, sf, 2, SQ_KV_F32, 1.0f), *b = load(split, ss, 2, SQ_KV_F32, 1.0f);
        if (a && b) {
            CHECK(a->rope.mode == SQ_ROPE_NEOX, "phi3 rope mode %d", a->rope.mode);
            const sq_layer *L = &a->layers[1];
            const int D = a->hp.n_embd, hd = a->hp.head_dim, F = a->hp.n_ff;
            const size_t rb = elt[ti] ? (size_t)D * elt[ti] : (size_t)D / 32 * 34;
            const sq_gguf_tensor *qkv = sq_gguf_tensor_find(&a->gguf, "blk.1.attn_qkv.weight"),
                                 *up = sq_gguf_tensor_find(&a->gguf, "blk.1.ffn_up.weight");
            CHECK(qkv && up && L->q.data == qkv->data && L->k.data == qkv->data + (size_t)8 * hd * rb &&
                      L->v.data == qkv->data + (size_t)10 * hd * rb && L->gate.data == up->data &&
                      L->up.data == up->data + (size_t)F * rb,
                  "type %u: the views are not the fused tensors' row ranges", types[ti]);
            CHECK(L->q.rows == 8 * hd && L->k.rows == 2 * hd && L->v.rows == 2 * hd && L->gate.rows == F &&
                      L->up.rows == F && L->q.cols == D,
                  "type %u: view shapes", types[ti]);
            float *la = eval_all(a, k_toks, NTOK), *lb = eval_all(b, k_toks, NTOK);
            size_t n = (size_t)NTOK * sq_model_n_vocab(a);
            CHECK(memcmp(la, lb, n * sizeof *la) == 0, "type %u: fused vs separate tensors differ (%g)", types[ti],
                  rel_err(la, lb, n));
            free(la);
            free(lb);
        }
        sq_model_free(a);
        sq_model_free(b);
        free(fused);
        free(split);
    }
    tiny_cfg c = tiny_default(); /* batch, decode, threads and rewinds with views and a window */
    c.arch = "phi3", c.fused = 1, c.wtype = SQ_T_Q8_0, c.sliding_window = 4, c.seed = 0xF2F2;
    check_consistency("phi3 fused q8 window 4", &c);
    size_t size;
    c = tiny_default();
    c.arch = "phi3", c.fused = 1, c.seed = 0xF3F3; /* SQ4 */
    uint8_t *buf = tiny_model_build(&c, &size);
    expect_load_message(buf, size, SQ_ERR_UNSUPPORTED, "phi3 fused SQ4", "attn_qkv", "SQ4");
    free(buf);
    c.wtype = SQ_T_F16, c.extra_f32 = "rope_factors_long.weight";
    buf = tiny_model_build(&c, &size);
    expect_load_message(buf, size, SQ_ERR_UNSUPPORTED, "phi3 longrope", "rope_factors_long", "LongRoPE");
    free(buf);
}

/* Logits of buf run at act_bits (0 = auto), checking what sq_model_act_bits reports. */
static float *run_bits(const uint8_t *buf, size_t size, int act_bits, int want) {
    sq_model_params p = sq_model_default_params();
    p.n_threads = 2;
    p.act_bits = act_bits;
    sq_model *m = sq_model_load_buffer(buf, size, &p);
    CHECK(m != NULL, "act_bits %d: load", act_bits);
    if (!m) return NULL;
    CHECK(sq_model_act_bits(m) == want, "act_bits %d runs %d, expected %d", act_bits, sq_model_act_bits(m), want);
    float *out = eval_all(m, k_toks, NTOK);
    sq_model_free(m);
    return out;
}

/* sq_model_params.act_bits: a load-time choice. auto = 8 on the CPU; a file calibrated for A4 run at
 * A8 computes bit for bit what the same weights recorded as A8 compute (the file's specquant.act_bits
 * is only its calibration record), and the other way round, on every ISA. Across ISAs the integer
 * sums are identical in both modes (test_kernels: bits 4 and 8); logits agree closely, not bitwise
 * (attention and norms use FMA on the SIMD ISAs). F16 files ignore act_bits; bad values are refused. */
static void test_act_bits(void) {
    tiny_cfg c = tiny_default(); /* specquant.act_bits = 4 */
    c.seed = 16;                 /* both files: the same weights */
    tiny_cfg c8 = c;
    c8.act_bits = 8;
    size_t size, size8;
    uint8_t *buf = tiny_model_build(&c, &size), *buf8 = tiny_model_build(&c8, &size8);
    const size_t n = (size_t)NTOK * 97;
    const char *old = getenv("SQ_ISA");
    char *saved = old ? strdup(old) : NULL;
    float *first[2] = {NULL, NULL}; /* A4, A8 logits of the first ISA */
    const char *isas[] = {"scalar", "auto"};
    for (int ii = 0; ii < 2; ii++) {
        setenv("SQ_ISA", isas[ii], 1);
        float *a4 = run_bits(buf, size, 4, 4), *a8 = run_bits(buf, size, 0, 8); /* auto = 8 on the CPU */
        float *b8 = run_bits(buf8, size8, 8, 8), *b4 = run_bits(buf8, size8, 4, 4);
        if (a4 && a8 && b8 && b4) {
            CHECK(!memcmp(a8, b8, n * sizeof(float)), "SQ_ISA=%s: an A4 file at act_bits 8 differs from the A8 file",
                  isas[ii]);
            CHECK(!memcmp(a4, b4, n * sizeof(float)), "SQ_ISA=%s: an A8 file at act_bits 4 differs from the A4 file",
                  isas[ii]);
            CHECK(memcmp(a4, a8, n * sizeof(float)) != 0, "SQ_ISA=%s: A4 and A8 give the same logits", isas[ii]);
            if (!first[0]) {
                first[0] = a4, first[1] = a8, a4 = a8 = NULL;
            } else {
                CHECK(rel_err(a4, first[0], n) < 5e-2 && rel_err(a8, first[1], n) < 5e-2,
                      "SQ_ISA=%s vs scalar: A4 %g, A8 %g", isas[ii], rel_err(a4, first[0], n), rel_err(a8, first[1], n));
            }
        }
        free(a4), free(a8), free(b8), free(b4);
    }
    if (saved) setenv("SQ_ISA", saved, 1);
    else unsetenv("SQ_ISA");
    free(saved);
    free(first[0]), free(first[1]);
    sq_model *m = sq_model_load_buffer(buf, size, NULL);
    const char *rec = m ? sq_model_meta(m, "specquant.act_bits") : NULL;
    CHECK(m && sq_model_act_bits(m) == 8 && rec && !strcmp(rec, "4"), "auto runs A8; the file still says 4 (%s)",
          rec ? rec : "NULL");
    sq_model_free(m);
    int bad[] = {5, -1, 16, 2};
    for (int i = 0; i < 4; i++) {
        sq_model_params p = sq_model_default_params();
        p.act_bits = bad[i];
        expect_load_error(buf, size, &p, SQ_ERR_ARG, "act_bits");
        CHECK(strstr(sq_last_error(), "act_bits must be 4, 8 or 0 (auto)") != NULL, "act_bits %d: message '%s'", bad[i],
              sq_last_error());
    }
    /* no SQ4 layer: act_bits is accepted and changes nothing */
    tiny_cfg f = tiny_default();
    f.wtype = SQ_T_F16;
    size_t fsize;
    uint8_t *fbuf = tiny_model_build(&f, &fsize);
    float *f4 = run_bits(fbuf, fsize, 4, 0), *f8 = run_bits(fbuf, fsize, 8, 0);
    CHECK(f4 && f8 && !memcmp(f4, f8, n * sizeof(float)), "F16 file: act_bits changed the logits");
    free(f4), free(f8);
    free(fbuf);
    free(buf);
    free(buf8);
}

/* SQ_ISA: one parser (kernels/dispatch.c), read at each load. */
static void test_isa_env(void) {
    tiny_cfg c = tiny_default();
    size_t size;
    uint8_t *buf = tiny_model_build(&c, &size);
    const char *old = getenv("SQ_ISA");
    char *saved = old ? strdup(old) : NULL;
    setenv("SQ_ISA", "auto", 1);
    sq_model *m = load(buf, size, 1, SQ_KV_F16, 1.0f);
    CHECK(m && !strcmp(sq_model_isa(m), sq_kernels_parse(NULL, NULL, 0)->name), "SQ_ISA=auto: %s",
          m ? sq_model_isa(m) : "no model");
    sq_model_free(m);
    setenv("SQ_ISA", "scalar", 1);
    m = load(buf, size, 1, SQ_KV_F16, 1.0f);
    CHECK(m && !strcmp(sq_model_isa(m), "scalar"), "SQ_ISA=scalar");
    sq_model_free(m);
    setenv("SQ_ISA", "bogus", 1);
    expect_load_message(buf, size, SQ_ERR_UNSUPPORTED, "SQ_ISA=bogus", "SQ_ISA=bogus", "valid here: auto, ");
    CHECK(strstr(sq_last_error(), "scalar") != NULL, "the valid names include scalar: %s", sq_last_error());
    if (saved) setenv("SQ_ISA", saved, 1);
    else unsetenv("SQ_ISA");
    free(saved);
    free(buf);
}

/* What a file may say that this runtime cannot honour: each a clear error. */
static void test_file_limits(void) {
    size_t size;
    tiny_cfg c = tiny_default();
    c.version = 2;
    uint8_t *buf = tiny_model_build(&c, &size);
    expect_load_message(buf, size, SQ_ERR_UNSUPPORTED, "newer specquant.version",
                        "specquant.version 2 is newer than this runtime supports (1): update specquant-gguf", NULL);
    free(buf);
    c = tiny_default();
    c.block_count = 3; /* tensors for blocks 0 and 1 only */
    buf = tiny_model_build(&c, &size);
    expect_load_message(buf, size, SQ_ERR_FORMAT, "block_count > blocks", "block_count is 3", "only 2 blocks");
    free(buf);
    c = tiny_default();
    c.block_count = 1; /* and blk.1.* tensors */
    buf = tiny_model_build(&c, &size);
    expect_load_message(buf, size, SQ_ERR_FORMAT, "block_count < blocks", "block_count is 1", "block 1 (blk.1.*)");
    free(buf);
    c = tiny_default();
    c.arch = "gpt2";
    buf = tiny_model_build(&c, &size);
    expect_load_message(buf, size, SQ_ERR_UNSUPPORTED, "unknown architecture", "'gpt2' is not supported",
                        "(llama, mistral, qwen2, phi3, gemma2)");
    free(buf);
    /* a directory and a FIFO as the model path: a clear error, never a hang in open() */
    CHECK(sq_model_load("/tmp", NULL) == NULL && sq_last_status() == SQ_ERR_IO && strstr(sq_last_error(), "is a directory"),
          "directory: %s", sq_last_error());
    char fifo[64];
    snprintf(fifo, sizeof fifo, "/tmp/sq_test_fifo_%d", (int)getpid());
    unlink(fifo);
    if (mkfifo(fifo, 0600) == 0) {
        alarm(30); /* a hang in open() ends the test (SIGALRM) instead of the CI job */
        CHECK(sq_model_load(fifo, NULL) == NULL && sq_last_status() == SQ_ERR_IO &&
                  strstr(sq_last_error(), "is not a regular file"),
              "FIFO: %s", sq_last_error());
        CHECK(sq_vocab_load(fifo) == NULL && sq_last_status() == SQ_ERR_IO, "FIFO (vocab): %s", sq_last_error());
        alarm(0);
        unlink(fifo);
    } else CHECK(0, "mkfifo %s failed", fifo);
}

int main(void) {
    test_variants();
    test_kv_types();
    test_chunks();
    test_spectral_tau();
    test_param_errors();
    test_model_errors();
    test_qwen2_neox();
    test_isa_env();
    test_act_bits();
    test_file_limits();
    test_sliding_window(); /* last: its files draw from the shared random stream the tests above share */
    test_phi3_fused();     /* after it: seeded files only */
    return test_finish("test_model");
}
