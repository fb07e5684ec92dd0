/* tiny_model.h — writes small random GGUF model files in memory for the C tests (header-only).
 *
 * The files follow docs/FORMAT.md: llama metadata, specquant.* keys, norms F32, embeddings Q8_0 or
 * F16, the seven linear weights SQ4 / Q8_0 / F16 with random contents, optional spectral branch,
 * optional qwen2 biases. No tokenizer by default (a bare weights file is valid); tiny_cfg.vocab adds
 * a byte-level one (tiny_vocab_cfg). Values are random but small, so logits stay finite; tests
 * compare the runtime with itself (batch vs decode, threads, KV types), reference parity lives in
 * tests/test_parity.py.
 */
#ifndef SQ_TINY_MODEL_H
#define SQ_TINY_MODEL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "arch.h"
#include "gguf.h"
#include "kernels/kernels.h"
#include "test_util.h"
#include "unicode.h"

/* ---- a growable byte buffer with GGUF primitives -------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} tbuf;

static void tb_put(tbuf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p) abort();
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void tb_u32(tbuf *b, uint32_t v) { tb_put(b, &v, 4); }
static void tb_u64(tbuf *b, uint64_t v) { tb_put(b, &v, 8); }
static void tb_f32(tbuf *b, float v) { tb_put(b, &v, 4); }
static void tb_str(tbuf *b, const char *s) {
    tb_u64(b, strlen(s));
    tb_put(b, s, strlen(s));
}
static void tb_pad(tbuf *b, size_t align) {
    static const uint8_t zero[64] = {0};
    while (b->n % align) tb_put(b, zero, 1);
}

/* metadata writers: key, type, value */
static void kv_u32(tbuf *b, const char *k, uint32_t v) { tb_str(b, k); tb_u32(b, SQ_GGUF_U32); tb_u32(b, v); }
static void kv_f32(tbuf *b, const char *k, float v) { tb_str(b, k); tb_u32(b, SQ_GGUF_F32); tb_f32(b, v); }
static void kv_str(tbuf *b, const char *k, const char *v) { tb_str(b, k); tb_u32(b, SQ_GGUF_STRING); tb_str(b, v); }
static void kv_arr(tbuf *b, const char *k, uint32_t type, uint64_t n) {
    tb_str(b, k);
    tb_u32(b, SQ_GGUF_ARRAY);
    tb_u32(b, type);
    tb_u64(b, n);
}

/* ---- deterministic random numbers ------------------------------------------------------------ */

static uint64_t tm_rng = 0x9E3779B97F4A7C15ull;
static uint32_t tm_rand(void) { return (uint32_t)(xorshift64(&tm_rng) >> 11); } /* a stream of its own */
static float tm_uniform(void) { return (float)(tm_rand() & 0xFFFFFF) / 16777216.0f * 2.0f - 1.0f; } /* [-1, 1) */

/* ---- model description ----------------------------------------------------------------------- */

typedef struct {
    const char *arch;    /* "llama" / "qwen2" / "gemma2" (post-norms added, llama.cpp's default keys) */
    int n_layer, n_embd, n_head, n_kv_head, n_ff, n_vocab, n_ctx;
    int group;           /* SQ4 group size */
    int act_bits;
    int wht;
    uint32_t wtype;      /* SQ_T_SQ4 / SQ_T_Q8_0 / SQ_T_F16 for the linear layers */
    uint32_t embd_type;  /* SQ_T_Q8_0 / SQ_T_F16 */
    int spectral_k;      /* 0 = no branch */
    int axis_out;
    int tied;
    int bias;            /* q/k/v biases (qwen2 needs them) */
    /* fields a test may set (0 / NULL: the defaults) */
    uint64_t seed;       /* restart the random stream here first (0: go on where the last file ended) */
    int permute_qk;      /* store attn_q / attn_k rows (and biases) as llama.cpp does for normal RoPE */
    int version;         /* specquant.version (0: 1) */
    int block_count;     /* <arch>.block_count (0: n_layer) */
    int vocab;           /* a byte-level BPE tokenizer (n_vocab must be TINY_VOCAB_TOKENS) */
    const char *chat_template; /* tokenizer.chat_template (NULL: none) */
    int sliding_window;  /* <arch>.attention.sliding_window (0: no key) */
    int fused;           /* llama.cpp's phi3 layout: blk.N.attn_qkv = [q; k; v] rows, ffn_up = [gate; up] rows,
                            no attn_q/k/v or ffn_gate (the same random weights as unfused; no bias/spectral) */
    const char *extra_f32; /* one more F32 tensor of this name, [n_rot / 2] ones (NULL: none) */
} tiny_cfg;

static tiny_cfg tiny_default(void) {
    tiny_cfg c = {"llama", 2, 64, 4, 2, 128, 97, 64, 32, 4, 1, SQ_T_SQ4, SQ_T_Q8_0, 0, 0, 1, 0};
    return c;
}

/* The tokenizer of tiny_cfg.vocab: the 256 bytes (GPT-2 spelling, ids 0..255), then <|endoftext|>
 * (eos), <|im_start|>, <|im_end|> (control tokens); no merges, so a text's tokens are its bytes. */
#define TINY_VOCAB_TOKENS 259
static tiny_cfg tiny_vocab_cfg(void) {
    tiny_cfg c = tiny_default();
    c.vocab = 1;
    c.n_vocab = TINY_VOCAB_TOKENS;
    return c;
}

/* GPT-2's spelling of byte b (its code point in UTF-8) into out (at least 5 bytes). */
static void gpt2_spell(int b, char *out) {
    int extra = 0, cp = -1;
    for (int x = 0; x < 256; x++) {
        int keep = (x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
        int c = keep ? x : 256 + extra++;
        if (x == b) cp = c;
    }
    uint8_t u[4];
    int n = sq_utf8_encode((uint32_t)cp, u);
    memcpy(out, u, (size_t)n);
    out[n] = '\0';
}

typedef struct {
    char name[64];
    uint32_t n_dims, type;
    uint64_t ne[4];
    tbuf data;
} tiny_tensor;

typedef struct {
    tiny_tensor t[256];
    int n;
} tiny_list;

static tiny_tensor *tl_add(tiny_list *l, const char *name, uint32_t type, int nd, uint64_t ne0, uint64_t ne1,
                           uint64_t ne2) {
    tiny_tensor *t = &l->t[l->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->n_dims = (uint32_t)nd;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ne[2] = ne2;
    t->ne[3] = 1;
    return t;
}

static void fill_f32(tiny_tensor *t, size_t n, float base, float scale) {
    for (size_t i = 0; i < n; i++) {
        float v = base + scale * tm_uniform();
        tb_put(&t->data, &v, 4);
    }
}

static void fill_f16(tiny_tensor *t, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) {
        uint16_t h = sq_fp32_to_fp16(scale * tm_uniform());
        tb_put(&t->data, &h, 2);
    }
}

static void fill_q8(tiny_tensor *t, size_t rows, size_t cols, float scale) {
    for (size_t b = 0; b < rows * cols / 32; b++) {
        uint16_t d = sq_fp32_to_fp16(scale / 127.0f);
        tb_put(&t->data, &d, 2);
        for (int i = 0; i < 32; i++) {
            int8_t q = (int8_t)((int)(tm_rand() % 255) - 127);
            tb_put(&t->data, &q, 1);
        }
    }
}

static void fill_sq4(tiny_tensor *t, size_t rows, size_t cols, int G, float scale) {
    for (size_t b = 0; b < rows * cols / G; b++) {
        uint16_t d = sq_fp32_to_fp16(scale / 8.0f * (0.5f + 0.5f * (tm_uniform() + 1.0f) / 2.0f));
        tb_put(&t->data, &d, 2);
        for (int i = 0; i < G / 2; i++) {
            uint8_t q = (uint8_t)tm_rand();
            tb_put(&t->data, &q, 1);
        }
    }
}

static void add_matrix(tiny_list *l, const tiny_cfg *c, const char *name, uint32_t type, int cols, int rows) {
    tiny_tensor *t = tl_add(l, name, type, 2, (uint64_t)cols, (uint64_t)rows, 1);
    float scale = 1.0f / (float)cols; /* keeps activations O(1) through the layers */
    scale = scale * 8.0f;
    if (type == SQ_T_SQ4) fill_sq4(t, rows, cols, c->group, scale);
    else if (type == SQ_T_Q8_0) fill_q8(t, rows, cols, scale);
    else if (type == SQ_T_F16) fill_f16(t, (size_t)rows * cols, scale);
    else fill_f32(t, (size_t)rows * cols, 0, scale);
}

/* llama.cpp's permutation of q/k rows for normal RoPE: in each head of hd rows, row s·hd/2 + i
 * (NEOX pair member s of pair i, Hugging Face order) goes to row 2i + s. */
static void permute_rows(tbuf *d, int rows, int hd) {
    size_t rb = d->n / (size_t)rows;
    uint8_t *tmp = malloc(d->n);
    if (!tmp) abort();
    for (int r = 0; r < rows; r++) {
        int h = r / hd, j = r % hd, s = j / (hd / 2), i = j % (hd / 2);
        memcpy(tmp + (size_t)(h * hd + 2 * i + s) * rb, d->p + (size_t)r * rb, rb);
    }
    memcpy(d->p, tmp, d->n);
    free(tmp);
}

static void add_linear(tiny_list *l, const tiny_cfg *c, int il, const char *part, int cols, int rows) {
    char name[64];
    const int hd = c->n_embd / c->n_head, qk = !strcmp(part, "attn_q") || !strcmp(part, "attn_k");
    snprintf(name, sizeof name, "blk.%d.%s.weight", il, part);
    add_matrix(l, c, name, c->wtype, cols, rows);
    if (c->permute_qk && qk) permute_rows(&l->t[l->n - 1].data, rows, hd);
    if (c->spectral_k > 0 && c->wtype == SQ_T_SQ4) {
        int ch = c->axis_out ? cols : rows, K = c->spectral_k;
        snprintf(name, sizeof name, "blk.%d.%s.spectral", il, part);
        tiny_tensor *t = tl_add(l, name, SQ_T_F16, 3, 2, (uint64_t)K, (uint64_t)ch);
        int16_t *ks = malloc(sizeof *ks * (size_t)ch);
        for (int i = 0; i < ch; i++) ks[i] = (int16_t)(tm_rand() % (uint32_t)(K + 1));
        for (int i = 0; i < ch; i++)
            for (int k = 0; k < K; k++)
                for (int j = 0; j < 2; j++) {
                    uint16_t h = sq_fp32_to_fp16(k < ks[i] ? 0.02f * tm_uniform() : 0.0f);
                    tb_put(&t->data, &h, 2);
                }
        snprintf(name, sizeof name, "blk.%d.%s.spectral_k", il, part);
        t = tl_add(l, name, SQ_T_I16, 1, (uint64_t)ch, 1, 1);
        tb_put(&t->data, ks, sizeof *ks * (size_t)ch);
        free(ks);
    }
    if (c->bias && (!strcmp(part, "attn_q") || !strcmp(part, "attn_k") || !strcmp(part, "attn_v"))) {
        snprintf(name, sizeof name, "blk.%d.%s.bias", il, part);
        fill_f32(tl_add(l, name, SQ_T_F32, 1, (uint64_t)rows, 1, 1), (size_t)rows, 0, 0.1f);
        if (c->permute_qk && qk) permute_rows(&l->t[l->n - 1].data, rows, hd);
    }
}

static void write_metadata(tbuf *b, const tiny_cfg *c, uint64_t *n_kv) {
    char k[96];
    const char *a = c->arch;
    *n_kv = 0;
#define KV(stmt) (stmt, (*n_kv)++)
    KV(kv_str(b, "general.architecture", a));
    KV(kv_str(b, "general.name", "tiny"));
    KV(kv_u32(b, "general.alignment", 32));
    snprintf(k, sizeof k, "%s.context_length", a), KV(kv_u32(b, k, (uint32_t)c->n_ctx));
    snprintf(k, sizeof k, "%s.embedding_length", a), KV(kv_u32(b, k, (uint32_t)c->n_embd));
    snprintf(k, sizeof k, "%s.block_count", a), KV(kv_u32(b, k, (uint32_t)(c->block_count ? c->block_count : c->n_layer)));
    snprintf(k, sizeof k, "%s.feed_forward_length", a), KV(kv_u32(b, k, (uint32_t)c->n_ff));
    snprintf(k, sizeof k, "%s.attention.head_count", a), KV(kv_u32(b, k, (uint32_t)c->n_head));
    snprintf(k, sizeof k, "%s.attention.head_count_kv", a), KV(kv_u32(b, k, (uint32_t)c->n_kv_head));
    snprintf(k, sizeof k, "%s.rope.freq_base", a), KV(kv_f32(b, k, 10000.0f));
    snprintf(k, sizeof k, "%s.attention.layer_norm_rms_epsilon", a), KV(kv_f32(b, k, 1e-5f));
    if (c->sliding_window)
        snprintf(k, sizeof k, "%s.attention.sliding_window", a), KV(kv_u32(b, k, (uint32_t)c->sliding_window));
    KV(kv_u32(b, "specquant.version", c->version ? (uint32_t)c->version : 1));
    KV(kv_u32(b, "specquant.group_size", (uint32_t)c->group));
    KV(kv_u32(b, "specquant.act_bits", (uint32_t)c->act_bits));
    KV(kv_u32(b, "specquant.act_group_size", (uint32_t)c->group));
    KV(kv_str(b, "specquant.rotation", c->wht ? "wht" : "none"));
    KV(kv_str(b, "specquant.spectral.axis", c->axis_out ? "out" : "in"));
    KV(kv_u32(b, "specquant.spectral.k_max", (uint32_t)c->spectral_k));
    if (c->chat_template) KV(kv_str(b, "tokenizer.chat_template", c->chat_template));
    if (c->vocab) {
        static const char *const specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
        KV(kv_str(b, "tokenizer.ggml.model", "gpt2"));
        KV(kv_u32(b, "tokenizer.ggml.eos_token_id", 256));
        KV(kv_arr(b, "tokenizer.ggml.tokens", SQ_GGUF_STRING, TINY_VOCAB_TOKENS));
        for (int i = 0; i < TINY_VOCAB_TOKENS; i++) {
            char spelled[8];
            if (i < 256) gpt2_spell(i, spelled);
            tb_str(b, i < 256 ? spelled : specials[i - 256]);
        }
        KV(kv_arr(b, "tokenizer.ggml.token_type", SQ_GGUF_I32, TINY_VOCAB_TOKENS));
        for (int i = 0; i < TINY_VOCAB_TOKENS; i++) tb_u32(b, i < 256 ? 1 : 3); /* normal, control */
    }
#undef KV
}

/* The block's seven linears (the last seven tensors: q, k, v, o, gate, up, down) become llama.cpp's
 * phi3 four: attn_qkv (q, k, v rows one after another), attn_output, ffn_up ([gate; up]), ffn_down. */
static void tiny_fuse(tiny_list *l, int il, int D, int qkv_rows, int gu_rows) {
    tiny_tensor *t = &l->t[l->n - SQ_N_LINEAR], lin[SQ_N_LINEAR];
    memcpy(lin, t, sizeof lin);
    l->n -= SQ_N_LINEAR;
    tiny_tensor *qkv = tl_add(l, "", lin[SQ_LIN_Q].type, 2, (uint64_t)D, (uint64_t)qkv_rows, 1);
    snprintf(qkv->name, sizeof qkv->name, "blk.%d.attn_qkv.weight", il);
    for (int i = SQ_LIN_Q; i <= SQ_LIN_V; i++) tb_put(&qkv->data, lin[i].data.p, lin[i].data.n), free(lin[i].data.p);
    l->t[l->n++] = lin[SQ_LIN_O];
    tiny_tensor *gu = tl_add(l, "", lin[SQ_LIN_UP].type, 2, (uint64_t)D, (uint64_t)gu_rows, 1);
    snprintf(gu->name, sizeof gu->name, "blk.%d.ffn_up.weight", il);
    for (int i = SQ_LIN_GATE; i <= SQ_LIN_UP; i++) tb_put(&gu->data, lin[i].data.p, lin[i].data.n), free(lin[i].data.p);
    l->t[l->n++] = lin[SQ_LIN_DOWN];
}

/* Writes the model; returns a malloc'ed buffer (free it) and its size. */
static uint8_t *tiny_model_build(const tiny_cfg *c, size_t *size) {
    static tiny_list l; /* large: keep it off the stack */
    l.n = 0;
    if (c->seed) tm_rng = c->seed;
    if (c->vocab && c->n_vocab != TINY_VOCAB_TOKENS) abort(); /* tiny_vocab_cfg() sets it */
    if (c->fused && (c->bias || c->spectral_k)) abort(); /* tiny_fuse moves the seven weights only */
    int D = c->n_embd, hd = D / c->n_head, qw = c->n_head * hd, kvw = c->n_kv_head * hd, F = c->n_ff;
    add_matrix(&l, c, "token_embd.weight", c->embd_type, D, c->n_vocab);
    if (!c->tied) add_matrix(&l, c, "output.weight", c->embd_type, D, c->n_vocab);
    fill_f32(tl_add(&l, "output_norm.weight", SQ_T_F32, 1, (uint64_t)D, 1, 1), (size_t)D, 1.0f, 0.1f);
    for (int il = 0; il < c->n_layer; il++) {
        char name[64];
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", il);
        fill_f32(tl_add(&l, name, SQ_T_F32, 1, (uint64_t)D, 1, 1), (size_t)D, 1.0f, 0.1f);
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", il);
        fill_f32(tl_add(&l, name, SQ_T_F32, 1, (uint64_t)D, 1, 1), (size_t)D, 1.0f, 0.1f);
        for (int j = 0; j < 2 && !strcmp(c->arch, "gemma2"); j++) {
            snprintf(name, sizeof name, j ? "blk.%d.post_ffw_norm.weight" : "blk.%d.post_attention_norm.weight", il);
            fill_f32(tl_add(&l, name, SQ_T_F32, 1, (uint64_t)D, 1, 1), (size_t)D, 1.0f, 0.1f);
        }
        const int shape[SQ_N_LINEAR][2] = {{D, qw}, {D, kvw}, {D, kvw}, {qw, D}, {D, F}, {D, F}, {F, D}};
        for (int i = 0; i < SQ_N_LINEAR; i++) add_linear(&l, c, il, sq_linear_names[i], shape[i][0], shape[i][1]);
        if (c->fused) tiny_fuse(&l, il, D, qw + 2 * kvw, 2 * F);
    }
    if (c->extra_f32) fill_f32(tl_add(&l, c->extra_f32, SQ_T_F32, 1, (uint64_t)hd / 2, 1, 1), (size_t)hd / 2, 1.0f, 0.0f);
    tbuf kvs = {0}, out = {0};
    uint64_t n_kv;
    write_metadata(&kvs, c, &n_kv);
    tb_u32(&out, 0x46554747u);
    tb_u32(&out, 3);
    tb_u64(&out, (uint64_t)l.n);
    tb_u64(&out, n_kv);
    tb_put(&out, kvs.p, kvs.n);
    uint64_t off = 0;
    for (int i = 0; i < l.n; i++) {
        tiny_tensor *t = &l.t[i];
        tb_str(&out, t->name);
        tb_u32(&out, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) tb_u64(&out, t->ne[d]);
        tb_u32(&out, t->type);
        tb_u64(&out, off);
        off = (off + t->data.n + 31) / 32 * 32;
    }
    tb_pad(&out, 32);
    for (int i = 0; i < l.n; i++) {
        tb_put(&out, l.t[i].data.p, l.t[i].data.n);
        if (i + 1 < l.n) tb_pad(&out, 32);
        free(l.t[i].data.p);
    }
    free(kvs.p);
    *size = out.n;
    return out.p;
}

/* Writes the buffer to a temporary file; returns its path (static storage). */
static const char *tiny_model_file(const uint8_t *data, size_t size, const char *tag) {
    static char path[256];
    snprintf(path, sizeof path, "/tmp/sq_test_%s_%d.gguf", tag, (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size) abort();
    fclose(f);
    return path;
}

#endif
