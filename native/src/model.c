/* model.c — loading a llama-family model (validation, buffers) and its forward pass.
 *
 * Everything a forward pass needs is allocated here at load time (thread pool, scratch for
 * SQ_MAX_BATCH tokens, KV cache, RoPE and spectral tables); sq_model_eval allocates nothing.
 * Weights are read in place from the mapped file.
 */
#define _GNU_SOURCE
#include "model.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "error.h"
#include "fp16.h"
#include "kernels/kernels.h"
#include "model_cuda.h"
#include "norm.h"
#include "tokenizer.h"

/* Bounds on hyperparameters: far above any real model, low enough that products stay in range. */
#define MAX_EMBD (1 << 17)
#define MAX_FF (1 << 20)
#define MAX_LAYERS 4096
#define MAX_HEADS 4096
#define MAX_CTX (1 << 24)
/* specquant.version this runtime reads (docs/FORMAT.md §2); a newer file may mean other math. */
#define SQ_FORMAT_VERSION 1

_Static_assert(sizeof(((sq_layer *)0)->lin) == SQ_N_LINEAR * sizeof(sq_linear) &&
                   offsetof(sq_layer, down) == offsetof(sq_layer, lin) + SQ_LIN_DOWN * sizeof(sq_linear),
               "sq_layer: the named linears and lin[] must overlay in sq_linear_names order");

/* ---- parameters ------------------------------------------------------------------------------- */

SQ_API sq_model_params sq_model_default_params(void) {
    sq_model_params p = {0, 0, SQ_KV_F16, 1.0f, SQ_BACKEND_CPU, 0};
    return p;
}

static sq_status check_params(const sq_model_params *p) {
    if (p->n_ctx < 0) return sq_set_error(SQ_ERR_ARG, "n_ctx must be >= 0 (0 = the model's, at most 2048), got %d", p->n_ctx);
    if (p->n_threads < 0 || p->n_threads > 1024)
        return sq_set_error(SQ_ERR_ARG, "n_threads must be in 0..1024 (0 = all cores), got %d", p->n_threads);
    if (p->kv_type < SQ_KV_F16 || p->kv_type > SQ_KV_F32)
        return sq_set_error(SQ_ERR_ARG, "kv_type must be 0 (f16), 1 (q8), 2 (q4) or 3 (f32), got %d", p->kv_type);
    if (!(p->spectral_tau > 0.0f && p->spectral_tau <= 1.0f))
        return sq_set_error(SQ_ERR_ARG, "spectral_tau must be in (0, 1], got %g", (double)p->spectral_tau);
    if (p->backend != SQ_BACKEND_CPU && p->backend != SQ_BACKEND_CUDA && p->backend != SQ_BACKEND_AUTO)
        return sq_set_error(SQ_ERR_ARG, "backend must be 0 (cpu), 1 (cuda) or 2 (auto), got %d", p->backend);
    if (p->act_bits != 0 && p->act_bits != 4 && p->act_bits != 8)
        return sq_set_error(SQ_ERR_ARG, "act_bits must be 4, 8 or 0 (auto), got %d", p->act_bits);
#ifndef SQ_HAVE_CUDA
    if (p->backend == SQ_BACKEND_CUDA)
        return sq_set_error(SQ_ERR_BACKEND, "this build has no CUDA backend (rebuild with -DSPECQUANT_CUDA=ON)");
#endif
    return SQ_OK;
}

/* ---- hyperparameters -------------------------------------------------------------------------- */

typedef struct {
    const sq_gguf *g;
    const char *arch; /* metadata key prefix: the architecture's name */
} meta_reader;

/* <arch>.<key> as u32: required (no default) when def < 0. */
static sq_status arch_u32(const meta_reader *r, const char *key, int64_t def, int64_t lo, int64_t hi, int *out) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", r->arch, key);
    uint32_t v;
    int got = sq_gguf_get_u32(r->g, full, &v);
    if (got < 0) return SQ_ERR_FORMAT;
    if (got == 0) {
        if (def < 0) return sq_set_error(SQ_ERR_FORMAT, "metadata '%s' is missing", full);
        *out = (int)def;
        return SQ_OK;
    }
    if (v < lo || v > hi)
        return sq_set_error(SQ_ERR_FORMAT, "metadata '%s' = %u is out of range (%lld..%lld)", full, v, (long long)lo,
                            (long long)hi);
    *out = (int)v;
    return SQ_OK;
}

static sq_status arch_f32(const meta_reader *r, const char *key, float def, float lo, float hi, float *out) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", r->arch, key);
    int got = sq_gguf_get_f32(r->g, full, out);
    if (got < 0) return SQ_ERR_FORMAT;
    if (got == 0) *out = def;
    if (!(*out >= lo && *out <= hi)) /* also rejects NaN */
        return sq_set_error(SQ_ERR_FORMAT, "metadata '%s' = %g is out of range", full, (double)*out);
    return SQ_OK;
}

/* String metadata compared against a list of allowed values; returns the index or -1 (error set). */
static int str_choice(const sq_gguf *g, const char *key, const char *const *choices, int n, int def) {
    sq_str s;
    int got = sq_gguf_get_str(g, key, &s);
    if (got < 0) return -1;
    if (got == 0) return def;
    for (int i = 0; i < n; i++)
        if (sq_str_eq(s, choices[i])) return i;
    sq_set_error(SQ_ERR_UNSUPPORTED, "metadata '%s' = '%.*s' is not supported", key, (int)(s.len > 64 ? 64 : s.len), s.ptr);
    return -1;
}

static sq_status read_arch(sq_model *m, meta_reader *r) {
    sq_str s;
    int got = sq_gguf_get_str(&m->gguf, "general.architecture", &s);
    if (got <= 0) return got < 0 ? SQ_ERR_FORMAT : sq_set_error(SQ_ERR_FORMAT, "metadata 'general.architecture' is missing");
    m->hp.arch = sq_arch_find(s.ptr, s.len);
    if (!m->hp.arch)
        return sq_set_error(SQ_ERR_UNSUPPORTED, "architecture '%.*s' is not supported (%s)", (int)(s.len > 64 ? 64 : s.len),
                            s.ptr, sq_arch_names());
    r->arch = m->hp.arch->name;
    return SQ_OK;
}

static sq_status read_rope_scaling(sq_model *m, const meta_reader *r) {
    static const char *const kinds[] = {"none", "linear"};
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", r->arch);
    int kind = str_choice(&m->gguf, key, kinds, 2, 0);
    if (kind < 0) return sq_last_status();
    float factor = 1.0f;
    sq_status st = SQ_OK;
    if (kind == 1) st = arch_f32(r, "rope.scaling.factor", 1.0f, 1e-3f, 1e3f, &factor);
    else /* older llama.cpp key */
        st = arch_f32(r, "rope.scale_linear", 1.0f, 1e-3f, 1e3f, &factor);
    m->hp.rope_freq_scale = 1.0f / factor;
    return st;
}

/* specquant.act_bits_a8_linears: string array of linear kinds (sq_linear_names) whose activations
 * stay 8-bit when the SQ4 layers run at 4 bits. Kinds that read one quantized input (attn_q/k/v;
 * ffn_gate/up) must be listed together. */
static sq_status read_a8_linears(const sq_gguf *g, int *mask) {
    static const char *const key = "specquant.act_bits_a8_linears";
    *mask = 0;
    const sq_gguf_kv *kv = sq_gguf_find(g, key);
    if (!kv) return SQ_OK;
    if (kv->type != SQ_GGUF_ARRAY || kv->arr_type != SQ_GGUF_STRING)
        return sq_set_error(SQ_ERR_FORMAT, "metadata '%s' must be an array of strings", key);
    for (uint64_t j = 0; j < kv->n; j++) {
        sq_str s = sq_gguf_arr_str(kv, j);
        int i = 0;
        while (i < SQ_N_LINEAR && !sq_str_eq(s, sq_linear_names[i])) i++;
        if (i == SQ_N_LINEAR)
            return sq_set_error(SQ_ERR_FORMAT, "metadata '%s' has '%.*s', not a linear kind (attn_q, attn_k, attn_v, "
                                "attn_output, ffn_gate, ffn_up, ffn_down)", key, (int)(s.len > 64 ? 64 : s.len), s.ptr);
        if (*mask & (1 << i))
            return sq_set_error(SQ_ERR_FORMAT, "metadata '%s' lists '%s' twice", key, sq_linear_names[i]);
        *mask |= 1 << i;
    }
    const int qkv = (1 << SQ_LIN_Q) | (1 << SQ_LIN_K) | (1 << SQ_LIN_V), gu = (1 << SQ_LIN_GATE) | (1 << SQ_LIN_UP);
    if ((*mask & qkv) && (*mask & qkv) != qkv)
        return sq_set_error(SQ_ERR_FORMAT, "metadata '%s': attn_q, attn_k and attn_v share one quantized input, list all "
                            "three or none", key);
    if ((*mask & gu) && (*mask & gu) != gu)
        return sq_set_error(SQ_ERR_FORMAT, "metadata '%s': ffn_gate and ffn_up share one quantized input, list both or "
                            "neither", key);
    return SQ_OK;
}

static sq_status read_specquant_keys(sq_model *m) {
    sq_hparams *hp = &m->hp;
    const sq_gguf *g = &m->gguf;
    hp->group_size = (int)g->sq4_group;
    uint32_t v;
    int got = sq_gguf_get_u32(g, "specquant.version", &v);
    if (got < 0) return SQ_ERR_FORMAT;
    if (got && v > SQ_FORMAT_VERSION)
        return sq_set_error(SQ_ERR_UNSUPPORTED, "specquant.version %u is newer than this runtime supports (%d): update "
                            "specquant-gguf", v, SQ_FORMAT_VERSION);
    got = sq_gguf_get_u32(g, "specquant.act_bits", &v);
    if (got < 0) return SQ_ERR_FORMAT;
    hp->act_bits = got ? (int)v : 4; /* f16 / q8 files record 16 / 8: checked only for SQ4 files */
    static const char *const rots[] = {"none", "wht"}, *const axes[] = {"in", "out"};
    int rot = str_choice(g, "specquant.rotation", rots, 2, 0);
    int axis = str_choice(g, "specquant.spectral.axis", axes, 2, 0);
    if (rot < 0 || axis < 0) return sq_last_status();
    hp->wht = rot == 1;
    hp->spec_axis = axis == 1 ? SQ_SPEC_OUT : SQ_SPEC_IN;
    return read_a8_linears(g, &hp->a8_mask);
}

/* The activation-quantization settings matter only when some layer is SQ4 (W4A4). */
static sq_status check_sq4_settings(const sq_model *m) {
    const sq_hparams *hp = &m->hp;
    const sq_gguf *g = &m->gguf;
    uint32_t v;
    if (hp->act_bits != 4 && hp->act_bits != 8)
        return sq_set_error(SQ_ERR_FORMAT, "specquant.act_bits = %d (4 or 8 expected)", hp->act_bits);
    int got = sq_gguf_get_u32(g, "specquant.act_group_size", &v);
    if (got < 0) return SQ_ERR_FORMAT;
    if (got && (int)v != hp->group_size)
        return sq_set_error(SQ_ERR_FORMAT, "specquant.act_group_size (%u) must equal specquant.group_size (%d)", v,
                            hp->group_size);
    if (hp->wht) {
        int G = hp->group_size;
        if (G < 2 || (G & (G - 1)))
            return sq_set_error(SQ_ERR_FORMAT, "rotation 'wht' needs a power-of-two specquant.group_size (got %d)", G);
        got = sq_gguf_get_u32(g, "specquant.rotation.block", &v);
        if (got < 0) return SQ_ERR_FORMAT;
        if (got && (int)v != G)
            return sq_set_error(SQ_ERR_FORMAT, "specquant.rotation.block (%u) must equal the group size (%d)", v, G);
    }
    return SQ_OK;
}

/* head_dim: <arch>.attention.key_length (Gemma 2: 256, not n_embd / n_head), else n_embd / n_head. */
static sq_status read_head_dim(const meta_reader *r, sq_hparams *hp) {
    char key[128];
    snprintf(key, sizeof key, "%s.attention.key_length", r->arch);
    if (hp->n_embd % hp->n_head && !sq_gguf_find(r->g, key))
        return sq_set_error(SQ_ERR_FORMAT, "embedding length %d is not a multiple of the head count %d and there is no "
                            "%s", hp->n_embd, hp->n_head, key);
    int vlen = 0;
    sq_status st = arch_u32(r, "attention.key_length", hp->n_embd / hp->n_head, 2, MAX_EMBD, &hp->head_dim);
    if (!st) st = arch_u32(r, "attention.value_length", hp->head_dim, 1, MAX_EMBD, &vlen);
    if (st) return st;
    if (vlen != hp->head_dim)
        return sq_set_error(SQ_ERR_UNSUPPORTED, "%s.attention.value_length %d differs from key_length %d", r->arch, vlen,
                            hp->head_dim);
    if (hp->head_dim % 2) return sq_set_error(SQ_ERR_FORMAT, "head dimension %d is odd", hp->head_dim);
    return SQ_OK;
}

/* Gemma 2's keys, with llama.cpp's defaults where absent (its loader's: caps 50 and 30, window 4096,
 * and the score scale by model size, 1/sqrt(n_embd / n_head) for the 46-layer 27B). 0 turns a cap or
 * the window off (our converter writes 0 for a config whose cap is null). */
static sq_status read_gemma2_keys(const meta_reader *r, sq_hparams *hp) {
    float def_scale = 1.0f / sqrtf((float)(hp->n_layer == 46 ? hp->n_embd / hp->n_head : hp->head_dim));
    sq_status st = arch_f32(r, "attn_logit_softcapping", 50.0f, 0.0f, 1e6f, &hp->attn_softcap);
    if (!st) st = arch_f32(r, "final_logit_softcapping", 30.0f, 0.0f, 1e6f, &hp->final_softcap);
    if (!st) st = arch_u32(r, "attention.sliding_window", 4096, 0, MAX_CTX, &hp->n_swa);
    if (!st) st = arch_f32(r, "attention.scale", def_scale, 1e-6f, 1e3f, &hp->attn_scale);
    return st;
}

/* The llama family's sliding window, on every layer (Mistral v0.1, Phi-3): only when the file has the
 * key; absent, full attention (our converter writes it only for a window shorter than the context). */
static sq_status read_window_key(const meta_reader *r, sq_hparams *hp) {
    return arch_u32(r, "attention.sliding_window", 0, 0, MAX_CTX, &hp->n_swa);
}

static sq_status read_hparams(sq_model *m) {
    meta_reader r = {&m->gguf, ""};
    sq_hparams *hp = &m->hp;
    sq_status st = read_arch(m, &r);
    if (!st) st = arch_u32(&r, "block_count", -1, 1, MAX_LAYERS, &hp->n_layer);
    if (!st) st = arch_u32(&r, "embedding_length", -1, 1, MAX_EMBD, &hp->n_embd);
    if (!st) st = arch_u32(&r, "feed_forward_length", -1, 1, MAX_FF, &hp->n_ff);
    if (!st) st = arch_u32(&r, "attention.head_count", -1, 1, MAX_HEADS, &hp->n_head);
    if (!st) st = arch_u32(&r, "attention.head_count_kv", hp->n_head, 1, MAX_HEADS, &hp->n_kv_head);
    if (!st) st = arch_u32(&r, "context_length", -1, 1, MAX_CTX, &hp->n_ctx_train);
    if (st) return st;
    if (hp->n_head % hp->n_kv_head)
        return sq_set_error(SQ_ERR_FORMAT, "head count %d is not a multiple of the KV head count %d", hp->n_head,
                            hp->n_kv_head);
    st = read_head_dim(&r, hp);
    if (!st) st = arch_u32(&r, "rope.dimension_count", hp->head_dim, 2, hp->head_dim, &hp->n_rot);
    if (!st && hp->n_rot % 2) st = sq_set_error(SQ_ERR_FORMAT, "rope.dimension_count %d is odd", hp->n_rot);
    if (!st) st = arch_f32(&r, "attention.layer_norm_rms_epsilon", 1e-5f, 1e-12f, 0.5f, &hp->eps);
    if (!st) st = arch_f32(&r, "rope.freq_base", 10000.0f, 1e-3f, 1e12f, &hp->rope_base);
    if (!st) st = read_rope_scaling(m, &r);
    hp->attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    if (!st) st = hp->arch->softcap ? read_gemma2_keys(&r, hp) : read_window_key(&r, hp);
    if (!st) st = read_specquant_keys(m);
    return st;
}

/* ---- tensors ---------------------------------------------------------------------------------- */

static sq_status norm_tensor(const sq_gguf *g, const char *name, int n, const float **out) {
    const sq_gguf_tensor *t = sq_gguf_tensor_find(g, name);
    if (!t) return sq_set_error(SQ_ERR_FORMAT, "tensor '%s' is missing", name);
    if (t->type != SQ_T_F32) return sq_set_error(SQ_ERR_FORMAT, "tensor '%s' must be F32, not %s", name, sq_ggml_type_name(t->type));
    if (t->ne[0] != (uint64_t)n || t->ne[1] != 1 || t->ne[2] != 1 || t->ne[3] != 1)
        return sq_set_error(SQ_ERR_FORMAT, "tensor '%s' has shape [%llu, %llu], expected [%d]", name,
                            (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], n);
    *out = (const float *)t->data;
    return SQ_OK;
}

static sq_status load_embeddings(sq_model *m) {
    const sq_gguf *g = &m->gguf;
    const sq_gguf_tensor *t = sq_gguf_tensor_find(g, "token_embd.weight");
    if (!t) return sq_set_error(SQ_ERR_FORMAT, "tensor 'token_embd.weight' is missing");
    if (!sq_tensor_row_type_ok(t->type))
        return sq_set_error(SQ_ERR_UNSUPPORTED, "token_embd.weight has type %s (F32, F16 or Q8_0 supported)",
                            sq_ggml_type_name(t->type));
    if (t->ne[0] != (uint64_t)m->hp.n_embd || t->ne[1] < 1 || t->ne[1] > INT32_MAX || t->ne[2] != 1 || t->ne[3] != 1)
        return sq_set_error(SQ_ERR_FORMAT, "token_embd.weight has shape [%llu, %llu], expected [%d, n_vocab]",
                            (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], m->hp.n_embd);
    m->tok_embd = t;
    m->hp.n_vocab = (int)t->ne[1];
    char key[128];
    uint32_t nv;
    snprintf(key, sizeof key, "%s.vocab_size", m->hp.arch->name);
    int got = sq_gguf_get_u32(g, key, &nv);
    if (got < 0) return SQ_ERR_FORMAT;
    if (got && nv != (uint32_t)m->hp.n_vocab)
        return sq_set_error(SQ_ERR_FORMAT, "%s = %u but token_embd.weight has %d rows", key, nv, m->hp.n_vocab);
    const char *head = sq_gguf_tensor_find(g, "output.weight") ? "output" : "token_embd";
    sq_status st = sq_linear_init(&m->head, g, head, m->hp.n_embd, m->hp.n_vocab, m->hp.group_size, -1, 1.0f);
    if (!st) st = norm_tensor(g, "output_norm.weight", m->hp.n_embd, &m->out_norm);
    return st;
}

/* N of a tensor named blk.N.*, or -1 for any other name. */
static long block_of(sq_str name) {
    if (name.len < 6 || memcmp(name.ptr, "blk.", 4) != 0) return -1;
    long b = 0;
    uint64_t i = 4;
    for (; i < name.len && i < 13 && name.ptr[i] >= '0' && name.ptr[i] <= '9'; i++) b = b * 10 + (name.ptr[i] - '0');
    return i > 4 && i < name.len && name.ptr[i] == '.' ? b : -1;
}

/* block_count must match the blk.N tensors: every block 0..block_count-1 has some, none lies past. */
static sq_status check_block_count(const sq_model *m) {
    const int n = m->hp.n_layer;
    int present = 0;
    long beyond = -1;
    unsigned char *seen = calloc((size_t)n, 1);
    if (!seen) return sq_set_error(SQ_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < m->gguf.n_tensors; i++) {
        long b = block_of(m->gguf.tensors[i].name);
        if (b >= n && b > beyond) beyond = b;
        else if (b >= 0 && b < n && !seen[b]) seen[b] = 1, present++;
    }
    free(seen);
    if (beyond >= 0)
        return sq_set_error(SQ_ERR_FORMAT, "%s.block_count is %d but the file has tensors for block %ld (blk.%ld.*)",
                            m->hp.arch->name, n, beyond, beyond);
    if (present < n)
        return sq_set_error(SQ_ERR_FORMAT, "%s.block_count is %d but the file has tensors for only %d blocks",
                            m->hp.arch->name, n, present);
    return SQ_OK;
}

static sq_status load_layer(sq_model *m, int il) {
    const sq_hparams *hp = &m->hp;
    const sq_gguf *g = &m->gguf;
    sq_layer *L = &m->layers[il];
    int D = hp->n_embd, qw = hp->n_head * hp->head_dim, kvw = hp->n_kv_head * hp->head_dim, F = hp->n_ff;
    /* [cols, rows] of each linear, in sq_linear_names order */
    const int shape[SQ_N_LINEAR][2] = {{D, qw}, {D, kvw}, {D, kvw}, {qw, D}, {D, F}, {D, F}, {F, D}};
    char name[96];
    int fused_qkv = 0, fused_gu = 0;
    if (hp->arch->fused) { /* Phi-3 (llama.cpp): attn_qkv = [q; k; v] rows; ffn_up = [gate; up] rows, no ffn_gate */
        snprintf(name, sizeof name, "blk.%d.attn_qkv.weight", il);
        fused_qkv = sq_gguf_tensor_find(g, name) != NULL;
        snprintf(name, sizeof name, "blk.%d.ffn_gate.weight", il);
        fused_gu = sq_gguf_tensor_find(g, name) == NULL;
    }
    for (int i = 0; i < SQ_N_LINEAR; i++) {
        sq_status st;
        if (fused_qkv && i <= SQ_LIN_V) { /* rows [0, qw) q, [qw, qw + kvw) k, then v */
            snprintf(name, sizeof name, "blk.%d.attn_qkv", il);
            st = sq_linear_init_rows(&L->lin[i], g, name, D, qw + 2 * kvw, i == SQ_LIN_Q ? 0 : qw + (i - SQ_LIN_K) * kvw,
                                     shape[i][1], sq_linear_names[i]);
        } else if (fused_gu && (i == SQ_LIN_GATE || i == SQ_LIN_UP)) { /* rows [0, F) gate, [F, 2F) up */
            snprintf(name, sizeof name, "blk.%d.ffn_up", il);
            st = sq_linear_init_rows(&L->lin[i], g, name, D, 2 * F, i == SQ_LIN_GATE ? 0 : F, F, sq_linear_names[i]);
        } else {
            snprintf(name, sizeof name, "blk.%d.%s", il, sq_linear_names[i]);
            st = sq_linear_init(&L->lin[i], g, name, shape[i][0], shape[i][1], hp->group_size, hp->spec_axis,
                                m->spectral_tau);
        }
        if (st) return st;
        L->lin[i].a8 = (hp->a8_mask >> i) & 1;
    }
    int n_bias = (L->q.bias != NULL) + (L->k.bias != NULL) + (L->v.bias != NULL);
    if (hp->arch->qkv_bias == SQ_BIAS_REQUIRED && n_bias < 3)
        return sq_set_error(SQ_ERR_FORMAT, "%s layer %d lacks its attn_q/k/v biases", hp->arch->name, il);
    if (hp->arch->qkv_bias == SQ_BIAS_NONE && n_bias > 0)
        return sq_set_error(SQ_ERR_FORMAT, "%s layer %d has attn_q/k/v biases, which %s does not use", hp->arch->name, il,
                            hp->arch->name);
    snprintf(name, sizeof name, "blk.%d.attn_norm.weight", il);
    sq_status st = norm_tensor(g, name, D, &L->attn_norm);
    snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", il);
    if (!st) st = norm_tensor(g, name, D, &L->ffn_norm);
    if (!st && hp->arch->post_norms) {
        snprintf(name, sizeof name, "blk.%d.post_attention_norm.weight", il);
        st = norm_tensor(g, name, D, &L->post_attn_norm);
        snprintf(name, sizeof name, "blk.%d.post_ffw_norm.weight", il);
        if (!st) st = norm_tensor(g, name, D, &L->post_ffn_norm);
    }
    return st;
}

/* One basis per distinct transform length, wide enough for every branch of that length. */
static sq_status build_bases(sq_model *m) {
    int lens[16], ks[16], n = 0;
    for (int il = 0; il < m->hp.n_layer; il++)
        for (int i = 0; i < SQ_N_LINEAR; i++) {
            sq_linear *l = &m->layers[il].lin[i];
            if (!l->spec || !l->spec->k_used) continue;
            int L = l->spec->axis == SQ_SPEC_IN ? l->cols : l->rows, j = 0;
            while (j < n && lens[j] != L) j++;
            if (j == n) {
                if (n == 16) return sq_set_error(SQ_ERR_FORMAT, "too many distinct spectral branch lengths");
                lens[n] = L;
                ks[n++] = 0;
            }
            if (l->spec->k_used > ks[j]) ks[j] = l->spec->k_used;
        }
    m->bases = calloc(n ? n : 1, sizeof *m->bases);
    if (!m->bases) return sq_set_error(SQ_ERR_NOMEM, "out of memory");
    for (int j = 0; j < n; j++, m->n_bases++) {
        sq_status st = sq_basis_init(&m->bases[j], lens[j], ks[j]);
        if (st) return st;
    }
    for (int il = 0; il < m->hp.n_layer; il++)
        for (int i = 0; i < SQ_N_LINEAR; i++) {
            sq_linear *l = &m->layers[il].lin[i];
            if (!l->spec || !l->spec->k_used) continue;
            int L = l->spec->axis == SQ_SPEC_IN ? l->cols : l->rows;
            for (int j = 0; j < n; j++)
                if (m->bases[j].L == L) l->spec->basis = &m->bases[j];
        }
    return SQ_OK;
}

static sq_status load_rope(sq_model *m) {
    /* Phi-3-128k's "longrope": per-frequency factors switched by sequence length plus an attention
     * factor (llama.cpp's rope_factors_long / rope_factors_short): not implemented, refused */
    for (uint64_t i = 0; i < m->gguf.n_tensors; i++) {
        sq_str n = m->gguf.tensors[i].name;
        if (memmem(n.ptr, n.len, "rope_factors_", 13))
            return sq_set_error(SQ_ERR_UNSUPPORTED, "tensor '%.*s': LongRoPE scaling (Phi-3 128k) is not supported",
                                (int)(n.len > 64 ? 64 : n.len), n.ptr);
    }
    const sq_gguf_tensor *t = sq_gguf_tensor_find(&m->gguf, "rope_freqs.weight");
    const float *factors = NULL;
    if (t) { /* llama3-style per-frequency divisors */
        if (t->type != SQ_T_F32 || t->ne[0] != (uint64_t)m->hp.n_rot / 2 || t->ne[1] != 1)
            return sq_set_error(SQ_ERR_FORMAT, "rope_freqs.weight must be F32 [%d]", m->hp.n_rot / 2);
        factors = (const float *)t->data;
        for (int i = 0; i < m->hp.n_rot / 2; i++)
            if (!(factors[i] > 0 && factors[i] < 1e9f))
                return sq_set_error(SQ_ERR_FORMAT, "rope_freqs.weight[%d] = %g is not a positive number", i, (double)factors[i]);
    }
    return sq_rope_init(&m->rope, m->hp.n_rot, m->n_ctx, m->hp.rope_base, m->hp.rope_freq_scale, factors,
                        m->hp.arch->rope_mode);
}

/* ---- buffers ---------------------------------------------------------------------------------- */

static void *alloc_floats(size_t n, int *oom) {
    void *p = malloc((n ? n : 1) * sizeof(float));
    if (!p) *oom = 1;
    return p;
}

static sq_status alloc_buffers(sq_model *m) {
    const sq_hparams *hp = &m->hp;
    size_t B = (size_t)m->n_batch, D = hp->n_embd, qw = (size_t)hp->n_head * hp->head_dim,
           kvw = (size_t)hp->n_kv_head * hp->head_dim, F = hp->n_ff;
    size_t max_cols = D > qw ? D : qw;
    if (F > max_cols) max_cols = F;
    int spec_k = 1, kmax_stored = 1;
    for (int il = 0; il < hp->n_layer; il++)
        for (int i = 0; i < SQ_N_LINEAR; i++) {
            const sq_spectral *s = m->layers[il].lin[i].spec;
            if (s && s->k_used > spec_k) spec_k = s->k_used;
            if (s && s->k_max > kmax_stored) kmax_stored = s->k_max;
        }
    size_t groups = hp->group_size ? max_cols / hp->group_size : 1;
    int oom = 0;
    m->x = alloc_floats(B * D, &oom);
    m->xn = alloc_floats(B * D, &oom);
    m->tmp = alloc_floats(B * D, &oom);
    m->q = alloc_floats(B * qw, &oom);
    m->att = alloc_floats(B * qw, &oom);
    m->k = alloc_floats(B * kvw, &oom);
    m->v = alloc_floats(B * kvw, &oom);
    m->gate = alloc_floats(B * F, &oom);
    m->up = alloc_floats(B * F, &oom);
    sq_lin_input *in = &m->in;
    in->qa.q = malloc(B * max_cols);
    in->qa.d = alloc_floats(B * groups, &oom);
    in->qa.z = malloc(B * groups * sizeof(int32_t));
    in->q8a.q = malloc(B * max_cols);
    in->q8a.d = alloc_floats(B * (max_cols / 32 + 1), &oom);
    in->spec_stride = 2 * spec_k;
    in->spec_in = alloc_floats(B * in->spec_stride, &oom);
    for (int i = 0; i < 3; i++) in->spec_out[i] = alloc_floats(B * in->spec_stride, &oom);
    int nt = m->exec.n_threads;
    m->exec.scratch_floats = 2 * max_cols > (size_t)2 * kmax_stored ? 2 * max_cols : (size_t)2 * kmax_stored;
    m->exec.scratch = alloc_floats(nt * m->exec.scratch_floats, &oom);
    m->attn_scratch_floats = sq_attention_scratch_floats(m->n_ctx, hp->head_dim);
    m->attn_scratch = alloc_floats(nt * m->attn_scratch_floats, &oom);
    if (oom || !in->qa.q || !in->qa.z || !in->q8a.q) return sq_set_error(SQ_ERR_NOMEM, "out of memory for scratch buffers");
    return SQ_OK;
}

/* ---- load / free ------------------------------------------------------------------------------ */

static sq_status setup_exec(sq_model *m, int n_threads) {
    sq_status st = sq_kernels_from_env(&m->exec.kt); /* SQ_ISA, or the best kernels for this CPU */
    if (st) return st;
    m->exec.n_threads = n_threads > 0 ? n_threads : sq_cpu_count();
    m->exec.pool = sq_pool_new(m->exec.n_threads);
    if (!m->exec.pool) return sq_last_status();
    m->exec.act_bits = sq_model_act_bits_for(m, 0); /* the CPU's; backend cuda sets its own (model_cuda.c) */
    m->exec.wht = m->hp.wht;
    m->exec.G = m->hp.group_size;
    m->exec.simd = strcmp(m->exec.kt->name, "scalar") != 0;
    return SQ_OK;
}

/* SQ4 weights into the layout the CPU kernels run (kernels.h: SQ_SQ4_X16 on x86), once at load. */
static sq_status repack_weights(sq_model *m) {
    const int n = m->hp.n_layer * SQ_N_LINEAR + 1;
    sq_linear **lins = malloc(sizeof *lins * (size_t)n);
    if (!lins) return sq_set_error(SQ_ERR_NOMEM, "out of memory");
    int k = 0;
    for (int il = 0; il < m->hp.n_layer; il++)
        for (int i = 0; i < SQ_N_LINEAR; i++) lins[k++] = &m->layers[il].lin[i];
    lins[k++] = &m->head;
    sq_status st = sq_linear_repack(lins, k, m->exec.kt, m->exec.pool, m->gguf.map != NULL);
    free(lins);
    return st;
}

/* The tokenizer is optional (a bare weights file still runs) but must be valid when present. */
static sq_status load_vocab(sq_model *m) {
    if (!sq_gguf_find(&m->gguf, "tokenizer.ggml.model")) return SQ_OK;
    m->vocab = sq_vocab_from_gguf(&m->gguf);
    return m->vocab ? SQ_OK : sq_last_status();
}

static sq_status load_model(sq_model *m, const sq_model_params *p) {
    sq_status st = read_hparams(m);
    if (st) return st;
    if (p->n_ctx > m->hp.n_ctx_train)
        return sq_set_error(SQ_ERR_ARG, "n_ctx %d exceeds the model's context length %d", p->n_ctx, m->hp.n_ctx_train);
    m->n_ctx = p->n_ctx ? p->n_ctx : (m->hp.n_ctx_train < 2048 ? m->hp.n_ctx_train : 2048);
    m->n_batch = m->n_ctx < SQ_MAX_BATCH ? m->n_ctx : SQ_MAX_BATCH;
    m->kv_type = p->kv_type;
    m->spectral_tau = p->spectral_tau;
    st = check_block_count(m);
    if (!st) st = load_embeddings(m);
    if (st) return st;
    m->layers = calloc((size_t)m->hp.n_layer, sizeof *m->layers);
    if (!m->layers) return sq_set_error(SQ_ERR_NOMEM, "out of memory");
    for (int il = 0; il < m->hp.n_layer && !st; il++) st = load_layer(m, il);
    int any_sq4 = m->head.wtype == SQ_W_SQ4;
    for (int il = 0; il < m->hp.n_layer && !st; il++)
        for (int i = 0; i < SQ_N_LINEAR; i++) any_sq4 |= m->layers[il].lin[i].wtype == SQ_W_SQ4;
    if (!st && any_sq4) st = check_sq4_settings(m);
    m->any_sq4 = any_sq4;
    m->act_bits_req = p->act_bits;
    if (!st) st = build_bases(m);
    if (!st) st = load_rope(m);
    if (!st) st = setup_exec(m, p->n_threads);
    if (!st) st = sq_model_backend_select(m, p->backend); /* model_cuda.h; the GPU has its own KV cache */
    if (!st && !m->gpu) st = repack_weights(m);
    if (!st && !m->gpu) st = sq_kv_init(&m->kv, m->kv_type, m->hp.n_layer, m->hp.n_kv_head, m->hp.head_dim, m->n_ctx);
    if (!st) st = alloc_buffers(m);
    if (!st) st = load_vocab(m);
    return st;
}

static sq_model *load_common(sq_model *m, const sq_model_params *params, sq_status parse_status) {
    sq_model_params p = params ? *params : sq_model_default_params();
    sq_status st = parse_status;
    if (!st) st = check_params(&p);
    if (!st) st = load_model(m, &p);
    if (st) {
        sq_model_free(m);
        return NULL;
    }
    return m;
}

static sq_model *new_model(void) {
    sq_fp16_init();
    sq_model *m = calloc(1, sizeof *m);
    if (!m) {
        sq_set_error(SQ_ERR_NOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&m->meta_mu, NULL);
    return m;
}

SQ_API sq_model *sq_model_load(const char *path, const sq_model_params *params) {
    sq_model *m = new_model();
    if (!m) return NULL;
    return load_common(m, params, sq_gguf_open(&m->gguf, path));
}

sq_model *sq_model_load_buffer(const void *data, size_t size, const sq_model_params *params) {
    sq_model *m = new_model();
    if (!m) return NULL;
    return load_common(m, params, sq_gguf_parse(&m->gguf, data, size));
}

SQ_API void sq_model_free(sq_model *m) {
    if (!m) return;
    sq_model_cuda_free(m);
    if (m->exec.pool) sq_pool_free(m->exec.pool);
    if (m->vocab) sq_vocab_free(m->vocab);
    if (m->layers)
        for (int il = 0; il < m->hp.n_layer; il++)
            for (int i = 0; i < SQ_N_LINEAR; i++) sq_linear_free(&m->layers[il].lin[i]);
    free(m->layers);
    sq_linear_free(&m->head);
    for (int j = 0; j < m->n_bases; j++) sq_basis_free(&m->bases[j]);
    free(m->bases);
    sq_rope_free(&m->rope);
    sq_kv_free(&m->kv);
    float *bufs[] = {m->x, m->xn, m->tmp, m->q, m->att, m->k, m->v, m->gate, m->up, m->in.qa.d, m->in.q8a.d,
                     m->in.spec_in, m->in.spec_out[0], m->in.spec_out[1], m->in.spec_out[2], m->exec.scratch,
                     m->attn_scratch};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(m->in.qa.q);
    free(m->in.qa.z);
    free(m->in.q8a.q);
    if (m->meta_text)
        for (uint64_t i = 0; i < m->gguf.n_kv; i++) free(m->meta_text[i]);
    free(m->meta_text);
    pthread_mutex_destroy(&m->meta_mu);
    sq_gguf_close(&m->gguf);
    free(m);
}

/* ---- accessors -------------------------------------------------------------------------------- */

const sq_gguf *sq_model_gguf(const sq_model *m) { return m ? &m->gguf : NULL; }
SQ_API const sq_vocab *sq_model_vocab(const sq_model *m) { return m ? m->vocab : NULL; }
SQ_API int32_t sq_model_n_vocab(const sq_model *m) { return m ? m->hp.n_vocab : 0; }
SQ_API int32_t sq_model_n_ctx(const sq_model *m) { return m ? m->n_ctx : 0; }
SQ_API int32_t sq_model_n_ctx_train(const sq_model *m) { return m ? m->hp.n_ctx_train : 0; }
SQ_API int32_t sq_model_n_past(const sq_model *m) { return m ? m->n_past : 0; }
SQ_API const char *sq_model_isa(const sq_model *m) { return m && m->exec.kt ? m->exec.kt->name : ""; }
SQ_API const char *sq_model_backend(const sq_model *m) {
    return !m ? "" : m->backend == SQ_BACKEND_CUDA ? "cuda" : "cpu";
}

/* Auto's choice (docs/RESULTS.md "Activation bits"): 4 only where the hardware multiplies int4 x int4
 * (CUDA's int4 tensor-core path: twice the int8 rate); on every CPU ISA the kernels multiply 8-bit
 * codes, decode runs alike and A8 is more accurate (AVX2's prefill kernels are ~1.35x faster at A4:
 * `--act-bits 4` for them). */
int sq_model_act_bits_for(const sq_model *m, int int4_mma) {
    if (m->act_bits_req) return m->act_bits_req;
    return int4_mma ? 4 : 8;
}

SQ_API int32_t sq_model_act_bits(const sq_model *m) { return m && m->any_sq4 ? m->exec.act_bits : 0; }

SQ_API const char *sq_model_meta(const sq_model *m, const char *key) {
    if (!m || !key) return NULL;
    const sq_gguf_kv *kv = sq_gguf_find(&m->gguf, key);
    if (!kv) return NULL;
    sq_model *mm = (sq_model *)m; /* the text cache is logically const: filled once per key */
    size_t idx = (size_t)(kv - m->gguf.kv);
    const char *out = NULL;
    pthread_mutex_lock(&mm->meta_mu);
    if (!mm->meta_text) mm->meta_text = calloc(m->gguf.n_kv, sizeof *mm->meta_text);
    if (mm->meta_text) {
        if (!mm->meta_text[idx]) mm->meta_text[idx] = sq_gguf_kv_to_text(kv, 1024);
        out = mm->meta_text[idx];
    }
    pthread_mutex_unlock(&mm->meta_mu);
    if (!out) sq_set_error(SQ_ERR_NOMEM, "out of memory formatting metadata '%s'", key);
    return out;
}

SQ_API sq_status sq_model_set_n_past(sq_model *m, int32_t n_past) {
    if (!m) return sq_set_error(SQ_ERR_ARG, "model is NULL");
    if (n_past < 0 || n_past > m->n_past)
        return sq_set_error(SQ_ERR_ARG, "n_past %d must be in 0..%d (the current position)", n_past, m->n_past);
    m->n_past = n_past; /* positions >= n_past are simply overwritten by the next eval */
    return SQ_OK;
}

/* ---- forward ---------------------------------------------------------------------------------- */

/* Per-token work (norms, RoPE, SiLU / GELU) split over the pool by token ranges. */
typedef struct {
    sq_model *m;
    int layer, nb, pos0, n_chunks, what;
    const float *norm_w;
    const float *src;
    float *dst;
} tok_job;

enum { TOK_NORM, TOK_ROPE_STORE, TOK_SILU, TOK_EMBED };

static void tok_task(void *ctx, int task, int thread) {
    tok_job *j = ctx;
    sq_model *m = j->m;
    const sq_hparams *hp = &m->hp;
    int t0 = j->nb * task / j->n_chunks, t1 = j->nb * (task + 1) / j->n_chunks;
    int D = hp->n_embd, hd = hp->head_dim, qw = hp->n_head * hd, kvw = hp->n_kv_head * hd;
    for (int t = t0; t < t1; t++) switch (j->what) {
        case TOK_NORM: sq_rmsnorm(j->src + (size_t)t * D, j->norm_w, j->dst + (size_t)t * D, D, hp->eps); break;
        case TOK_SILU:
            /* libm expf, not a faster vector exp: a 2-ulp exp here measurably changed SmolLM2
             * W4A4's greedy tokens vs reference.py (activation rounding flips downstream). */
            if (hp->arch->act == SQ_ACT_GELU_TANH)
                sq_gelu_tanh_mul(m->gate + (size_t)t * hp->n_ff, m->up + (size_t)t * hp->n_ff, hp->n_ff);
            else
                sq_silu_mul(m->gate + (size_t)t * hp->n_ff, m->up + (size_t)t * hp->n_ff, hp->n_ff);
            break;
        case TOK_ROPE_STORE: {
            int pos = j->pos0 + t;
            sq_rope_apply(&m->rope, m->q + (size_t)t * qw, hp->n_head, hd, pos);
            sq_rope_apply(&m->rope, m->k + (size_t)t * kvw, hp->n_kv_head, hd, pos);
            for (int h = 0; h < hp->n_kv_head; h++)
                sq_kv_store(&m->kv, j->layer, h, pos, m->k + (size_t)t * kvw + (size_t)h * hd,
                            m->v + (size_t)t * kvw + (size_t)h * hd);
            break;
        }
        }
}

static void per_token(sq_model *m, int what, int layer, int nb, int pos0, const float *w, const float *src, float *dst) {
    tok_job j = {m, layer, nb, pos0, nb < m->exec.n_threads ? nb : m->exec.n_threads, what, w, src, dst};
    sq_pool_run(m->exec.pool, tok_task, &j, j.n_chunks);
}

static void run_linears(sq_model *m, const float *x, int nb, sq_linear *const *lins, float *const *ys, const int *ldys,
                        int n) {
    sq_linear_prepare(&m->exec, &m->in, x, nb, (const sq_linear *const *)lins, n);
    sq_linear_run(&m->exec, &m->in, (const sq_linear *const *)lins, ys, ldys, n);
}

static void forward_layer(sq_model *m, int il, int nb, int pos0) {
    const sq_hparams *hp = &m->hp;
    sq_layer *L = &m->layers[il];
    int D = hp->n_embd, qw = hp->n_head * hp->head_dim, kvw = hp->n_kv_head * hp->head_dim, F = hp->n_ff;

    per_token(m, TOK_NORM, il, nb, pos0, L->attn_norm, m->x, m->xn);
    sq_linear *qkv[3] = {&L->q, &L->k, &L->v};
    float *qkv_out[3] = {m->q, m->k, m->v};
    int qkv_ld[3] = {qw, kvw, kvw};
    run_linears(m, m->xn, nb, qkv, qkv_out, qkv_ld, 3);
    if (m->seq_attn) /* batch.c: tokens of several sequences, each with its own cache and position */
        m->seq_attn(m, il, nb);
    else {
        per_token(m, TOK_ROPE_STORE, il, nb, pos0, NULL, NULL, NULL);
        sq_attn_args a = {.kv = &m->kv, .layer = il, .q = m->q, .out = m->att, .n_tok = nb, .pos0 = pos0,
                          .n_head = hp->n_head, .simd = m->exec.simd, .scratch = m->attn_scratch,
                          .scratch_floats = m->attn_scratch_floats};
        sq_model_attn_layer(m, il, &a);
        sq_attention(m->exec.pool, &a);
    }
    sq_linear *o[1] = {&L->o};
    float *o_out[1] = {m->tmp};
    int ld_d[1] = {D};
    run_linears(m, m->att, nb, o, o_out, ld_d, 1);
    if (L->post_attn_norm) per_token(m, TOK_NORM, il, nb, pos0, L->post_attn_norm, m->tmp, m->tmp);
    sq_add(m->x, m->tmp, nb * D);

    per_token(m, TOK_NORM, il, nb, pos0, L->ffn_norm, m->x, m->xn);
    sq_linear *gu[2] = {&L->gate, &L->up};
    float *gu_out[2] = {m->gate, m->up};
    int gu_ld[2] = {F, F};
    run_linears(m, m->xn, nb, gu, gu_out, gu_ld, 2);
    per_token(m, TOK_SILU, il, nb, pos0, NULL, NULL, NULL);
    sq_linear *down[1] = {&L->down};
    run_linears(m, m->gate, nb, down, o_out, ld_d, 1);
    if (L->post_ffn_norm) per_token(m, TOK_NORM, il, nb, pos0, L->post_ffn_norm, m->tmp, m->tmp);
    sq_add(m->x, m->tmp, nb * D);
}

void sq_model_attn_layer(const sq_model *m, int il, sq_attn_args *a) {
    const sq_hparams *hp = &m->hp;
    a->scale = hp->attn_scale;
    a->softcap = hp->attn_softcap;
    a->window = sq_arch_layer_windowed(hp->arch, il) ? hp->n_swa : 0;
}

/* Runs nb tokens at positions pos0.. (every layer; the hidden states end in m->x). */
void sq_model_forward_body(sq_model *m, const int32_t *tokens, int nb, int pos0) {
    int D = m->hp.n_embd;
    for (int t = 0; t < nb; t++) sq_tensor_row(m->tok_embd, tokens[t], m->x + (size_t)t * D);
    if (m->hp.arch->embd_scale) { /* Gemma: embeddings times sqrt(n_embd), rounded to f32 as transformers does */
        const float sc = sqrtf((float)D);
        for (size_t i = 0; i < (size_t)nb * D; i++) m->x[i] *= sc;
    }
    for (int il = 0; il < m->hp.n_layer; il++) forward_layer(m, il, nb, pos0);
}

/* Logits of the hidden states in m->x rows [first, first + rows): final norm and output head. */
void sq_model_forward_head(sq_model *m, int first, int rows, float *logits) {
    int D = m->hp.n_embd;
    per_token(m, TOK_NORM, -1, rows, 0, m->out_norm, m->x + (size_t)first * D, m->xn);
    sq_linear *head[1] = {&m->head};
    float *out[1] = {logits};
    int ld[1] = {m->hp.n_vocab};
    run_linears(m, m->xn, rows, head, out, ld, 1);
    if (m->hp.final_softcap > 0) /* Gemma 2 */
        for (int r = 0; r < rows; r++) sq_softcap(logits + (size_t)r * m->hp.n_vocab, m->hp.n_vocab, m->hp.final_softcap);
}

/* Runs nb tokens at positions pos0.. and writes logits of the rows [first, nb) to logits. */
static void forward_chunk(sq_model *m, const int32_t *tokens, int nb, int pos0, float *logits, int first) {
    sq_model_forward_body(m, tokens, nb, pos0);
    if (logits) sq_model_forward_head(m, first, nb - first, logits);
}

SQ_API sq_status sq_model_eval(sq_model *m, const int32_t *tokens, int32_t n, float *logits, int32_t last_only) {
    if (!m) return sq_set_error(SQ_ERR_ARG, "model is NULL");
    if (n <= 0 || !tokens) return sq_set_error(SQ_ERR_ARG, "eval needs at least one token (got n = %d)", n);
    if (n > m->n_ctx - m->n_past)
        return sq_set_error(SQ_ERR_CTX_FULL, "context full: %d tokens in the cache + %d new > n_ctx %d", m->n_past, n,
                            m->n_ctx);
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->hp.n_vocab)
            return sq_set_error(SQ_ERR_ARG, "token id %d at index %d is out of range [0, %d)", tokens[i], i, m->hp.n_vocab);
    for (int32_t start = 0; start < n; start += m->n_batch) {
        int nb = n - start < m->n_batch ? n - start : m->n_batch;
        int last_chunk = start + nb == n;
        float *out = NULL;
        int first = 0;
        if (logits && !last_only) out = logits + (size_t)start * m->hp.n_vocab;
        else if (logits && last_chunk) {
            out = logits;
            first = nb - 1;
        }
        if (m->gpu) {
            sq_status st = sq_model_cuda_forward(m, tokens + start, nb, m->n_past, out, first);
            if (st) return st;
        } else
            forward_chunk(m, tokens + start, nb, m->n_past, out, first);
        m->n_past += nb;
    }
    return SQ_OK;
}
