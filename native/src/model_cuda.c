/* model_cuda.c — the forward pass on an NVIDIA GPU through the CUDA backend (cuda_backend.h).
 *
 * Compiled only with SQ_HAVE_CUDA. At load (sq_model_backend_select) everything the forward pass
 * needs goes to the device once: the seven linear weights of every block and the head in the GPU
 * layout, norms, biases, spectral branches and their bases, the RoPE table, an f16 KV cache and
 * buffers for the largest batch (m->n_batch tokens). Per chunk the token embeddings are looked up
 * on the host (one row per token, into model.c's host scratch) and uploaded; then per block the
 * sequence of docs/CUDA.md "Wiring it into the engine", and one download of the logits.
 *
 * The GPU reproduces the CPU's activation codes, integer sums, epilogues, spectral branch, bias,
 * RoPE, residual adds and KV stores bit for bit; RMSNorm, SiLU·mul and attention agree to ~1e-6
 * (parallel reductions), so logits match the CPU engine closely but not bitwise.
 *
 * Not on the GPU (backend cuda refuses with a clear message, auto stays on the CPU): F16/F32
 * linear weights, KV types other than f16, head_dim outside 8..256 or not a multiple of 8 or not
 * n_embd / n_head, gemma2 files (arch.h's Gemma 2 parts). llama.cpp's phi3 files need nothing of their
 * own: their q/k/v and gate/up are row views of the fused tensors (sq_linear_init_rows: data, rows,
 * cols describe the range), uploaded like any other matrix.
 */
#include "model_cuda.h"

#ifdef SQ_HAVE_CUDA

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_backend.h"
#include "error.h"

enum { W_D = 0, W_F = 1 }; /* activation widths: hidden (= n_head·head_dim) and ffn */

typedef struct {
    const sq_linear *l;     /* the host layer (shapes, wtype, spectral truncation) */
    sq_cuda_mat *w;
    sq_cuda_spec *spec;     /* NULL when there is no branch (or every channel truncated to K = 0) */
    const sq_cuda_basis *basis; /* axis in: the shared basis of its input */
    float *bias;            /* device copy, NULL when none */
} gpu_linear;

struct sq_model_gpu {
    sq_cuda *c;
    gpu_linear *lin;        /* n_layer × SQ_N_LINEAR, in sq_linear_names order (arch.h) */
    gpu_linear head;
    sq_cuda_basis **bases;  /* device copies of m->bases */
    float *norms;           /* [layer][attn, ffn][n_embd], then the output norm */
    float *rope_cs;
    sq_cuda_kv *kv;
    sq_cuda_act *a_sq4[2], *a_q8[2]; /* per width W_D / W_F, NULL when no layer needs that kind */
    sq_cuda_act *a_sq4_8[2];         /* 8-bit SQ4 activations of the a8 linears (specquant.act_bits_a8_linears)
                                        when act_bits is 4: they run the int8 path; NULL when none */
    float *x, *xn, *q, *k, *v, *att, *tmp, *gate, *up, *logits;
    float *spec_in, *spec_out[3];
    int spec_stride;
    int act_bits;           /* of the SQ4 activations: the requested ones, or 4 on the int4 path, 8 on int8 */
};

#define TRY(call)                   \
    do {                            \
        sq_status st_ = (call);     \
        if (st_ != SQ_OK) return st_; \
    } while (0)

/* ---- can the GPU run this model? ------------------------------------------------------------- */

static const char *wtype_name(int wtype) {
    return wtype == SQ_W_F16 ? "F16" : wtype == SQ_W_F32 ? "F32" : wtype == SQ_W_Q8 ? "Q8_0" : "SQ4";
}

/* NULL when it can, else the reason (static storage). */
static const char *gpu_unsupported(const sq_model *m) {
    static __thread char why[160];
    const sq_hparams *hp = &m->hp;
    /* Gemma 2's block parts (post-norms, GELU-tanh, soft-capping, embedding scale), a sliding window
     * and a head_dim other than n_embd / n_head are not in the GPU forward: refused, never run wrong */
    if (hp->arch->post_norms || hp->arch->act != SQ_ACT_SILU || hp->arch->embd_scale || hp->arch->softcap) {
        snprintf(why, sizeof why, "architecture %s runs on the CPU backend only", hp->arch->name);
        return why;
    }
    if (hp->n_swa > 0 && hp->n_swa < m->n_ctx) { /* a longer window never masks anything: no-op */
        snprintf(why, sizeof why, "a sliding window (%d positions) runs on the CPU backend only", hp->n_swa);
        return why;
    }
    if (hp->n_head * hp->head_dim != hp->n_embd) {
        snprintf(why, sizeof why, "head_dim %d x %d heads != embedding length %d", hp->head_dim, hp->n_head, hp->n_embd);
        return why;
    }
    for (int il = 0; il < hp->n_layer; il++)
        for (int i = 0; i < SQ_N_LINEAR; i++) {
            int wt = m->layers[il].lin[i].wtype;
            if (wt != SQ_W_SQ4 && wt != SQ_W_Q8) {
                snprintf(why, sizeof why, "blk.%d.%s.weight is %s (the GPU runs SQ4 and Q8_0 linear weights)", il,
                         sq_linear_names[i], wtype_name(wt));
                return why;
            }
        }
    if (m->head.wtype != SQ_W_SQ4 && m->head.wtype != SQ_W_Q8) {
        snprintf(why, sizeof why, "the output head is %s (the GPU runs SQ4 and Q8_0 heads)", wtype_name(m->head.wtype));
        return why;
    }
    if (hp->head_dim < 8 || hp->head_dim > 256 || hp->head_dim % 8) {
        snprintf(why, sizeof why, "head_dim %d (the GPU attention needs a multiple of 8 up to 256)", hp->head_dim);
        return why;
    }
    return NULL;
}

static const char *kv_name(int t) { return t == SQ_KV_Q8 ? "q8" : t == SQ_KV_Q4 ? "q4" : t == SQ_KV_F32 ? "f32" : "f16"; }

/* ---- upload at load ------------------------------------------------------------------------- */

static float *dev_floats(sq_cuda *c, const float *host, size_t n, sq_status *st) {
    if (*st) return NULL;
    float *d = sq_cuda_alloc(c, n * sizeof(float));
    if (!d) *st = sq_last_status();
    else if (host) *st = sq_cuda_upload(c, d, host, n * sizeof(float));
    return d;
}

static int basis_index(const sq_model *m, const sq_basis *b) {
    for (int j = 0; j < m->n_bases; j++)
        if (&m->bases[j] == b) return j;
    return -1;
}

static sq_status upload_linear(sq_model *m, struct sq_model_gpu *g, const sq_linear *l, gpu_linear *gl) {
    sq_cuda *c = g->c;
    gl->l = l;
    if (l->wtype == SQ_W_SQ4) TRY(sq_cuda_mat_sq4(c, l->data, l->rows, l->cols, l->sq4.G, &gl->w));
    else TRY(sq_cuda_mat_q8(c, l->data, l->rows, l->cols, &gl->w));
    sq_status st = SQ_OK;
    if (l->bias) gl->bias = dev_floats(c, l->bias, (size_t)l->rows, &st);
    if (st || !l->spec || !l->spec->k_used) return st;
    int j = basis_index(m, l->spec->basis);
    if (j < 0) return sq_set_error(SQ_ERR_BACKEND, "CUDA: a spectral branch has no basis");
    gl->basis = g->bases[j];
    return sq_cuda_spec_create(c, l->spec, l->spec->axis == SQ_SPEC_OUT ? g->bases[j] : NULL, &gl->spec);
}

static sq_status upload_weights(sq_model *m, struct sq_model_gpu *g) {
    const sq_hparams *hp = &m->hp;
    g->bases = calloc(m->n_bases ? m->n_bases : 1, sizeof *g->bases);
    g->lin = calloc((size_t)hp->n_layer * SQ_N_LINEAR, sizeof *g->lin);
    if (!g->bases || !g->lin) return sq_set_error(SQ_ERR_NOMEM, "out of memory");
    for (int j = 0; j < m->n_bases; j++) TRY(sq_cuda_basis_create(g->c, &m->bases[j], &g->bases[j]));
    for (int il = 0; il < hp->n_layer; il++)
        for (int i = 0; i < SQ_N_LINEAR; i++) TRY(upload_linear(m, g, &m->layers[il].lin[i], &g->lin[il * SQ_N_LINEAR + i]));
    TRY(upload_linear(m, g, &m->head, &g->head));
    /* norms: one device array, uploaded piece by piece */
    size_t D = (size_t)hp->n_embd;
    sq_status st = SQ_OK;
    g->norms = dev_floats(g->c, NULL, (2 * (size_t)hp->n_layer + 1) * D, &st);
    for (int il = 0; il < hp->n_layer && !st; il++) {
        st = sq_cuda_upload(g->c, g->norms + 2 * il * D, m->layers[il].attn_norm, D * sizeof(float));
        if (!st) st = sq_cuda_upload(g->c, g->norms + (2 * il + 1) * D, m->layers[il].ffn_norm, D * sizeof(float));
    }
    if (!st) st = sq_cuda_upload(g->c, g->norms + 2 * hp->n_layer * D, m->out_norm, D * sizeof(float));
    g->rope_cs = dev_floats(g->c, m->rope.cs, (size_t)m->rope.n_ctx * m->rope.n_rot, &st);
    return st;
}

/* Activation buffers for the widths and kinds some layer reads, and the float activations. */
static sq_status alloc_activations(sq_model *m, struct sq_model_gpu *g) {
    const sq_hparams *hp = &m->hp;
    const int width[2] = {hp->n_embd, hp->n_ff};
    int need[2][2] = {{0, 0}, {0, 0}}; /* [width][sq4, q8] */
    int need_a8[2] = {0, 0};
    int spec_k = 1;
    for (int il = 0; il < hp->n_layer; il++)
        for (int i = 0; i < SQ_N_LINEAR; i++) {
            const sq_linear *l = &m->layers[il].lin[i];
            need[i == SQ_LIN_DOWN ? W_F : W_D][l->wtype == SQ_W_Q8] = 1;
            if (l->wtype == SQ_W_SQ4 && l->a8 && g->act_bits == 4) need_a8[i == SQ_LIN_DOWN ? W_F : W_D] = 1;
            if (l->spec && l->spec->k_used > spec_k) spec_k = l->spec->k_used;
        }
    need[W_D][m->head.wtype == SQ_W_Q8] = 1;
    if (m->head.spec && m->head.spec->k_used > spec_k) spec_k = m->head.spec->k_used;
    for (int w = 0; w < 2; w++) {
        int G = hp->group_size ? hp->group_size : width[w];
        if (need[w][0])
            TRY(sq_cuda_act_create(g->c, SQ_CUDA_ACT_SQ4, m->n_batch, width[w], G, g->act_bits, &g->a_sq4[w]));
        if (need_a8[w]) TRY(sq_cuda_act_create(g->c, SQ_CUDA_ACT_SQ4, m->n_batch, width[w], G, 8, &g->a_sq4_8[w]));
        if (need[w][1]) TRY(sq_cuda_act_create(g->c, SQ_CUDA_ACT_Q8, m->n_batch, width[w], 0, 0, &g->a_q8[w]));
    }
    size_t B = (size_t)m->n_batch, D = hp->n_embd, kvw = (size_t)hp->n_kv_head * hp->head_dim, F = hp->n_ff;
    sq_status st = SQ_OK;
    g->spec_stride = 2 * spec_k;
    g->x = dev_floats(g->c, NULL, B * D, &st);
    g->xn = dev_floats(g->c, NULL, B * D, &st);
    g->tmp = dev_floats(g->c, NULL, B * D, &st);
    g->q = dev_floats(g->c, NULL, B * D, &st);
    g->att = dev_floats(g->c, NULL, B * D, &st);
    g->k = dev_floats(g->c, NULL, B * kvw, &st);
    g->v = dev_floats(g->c, NULL, B * kvw, &st);
    g->gate = dev_floats(g->c, NULL, B * F, &st);
    g->up = dev_floats(g->c, NULL, B * F, &st);
    g->logits = dev_floats(g->c, NULL, B * hp->n_vocab, &st);
    g->spec_in = dev_floats(g->c, NULL, B * g->spec_stride, &st);
    for (int i = 0; i < 3; i++) g->spec_out[i] = dev_floats(g->c, NULL, B * g->spec_stride, &st);
    return st;
}

static sq_status gpu_init(sq_model *m) {
    struct sq_model_gpu *g = calloc(1, sizeof *g);
    if (!g) return sq_set_error(SQ_ERR_NOMEM, "out of memory");
    m->gpu = g;
    TRY(sq_cuda_create(0, &g->c));
    g->act_bits = sq_model_act_bits_for(m, sq_cuda_path(g->c) == SQ_CUDA_PATH_INT4);
    TRY(upload_weights(m, g));
    TRY(alloc_activations(m, g));
    TRY(sq_cuda_kv_create(g->c, m->hp.n_layer, m->hp.n_kv_head, m->hp.head_dim, m->n_ctx, &g->kv));
    return sq_cuda_sync(g->c);
}

static void free_linear(sq_cuda *c, gpu_linear *gl) {
    sq_cuda_mat_free(c, gl->w);
    sq_cuda_spec_free(c, gl->spec);
    sq_cuda_free(c, gl->bias);
}

void sq_model_cuda_free(sq_model *m) {
    struct sq_model_gpu *g = m->gpu;
    if (!g) return;
    m->gpu = NULL;
    sq_cuda *c = g->c;
    if (c) {
        if (g->lin)
            for (int i = 0; i < m->hp.n_layer * SQ_N_LINEAR; i++) free_linear(c, &g->lin[i]);
        free_linear(c, &g->head);
        if (g->bases)
            for (int j = 0; j < m->n_bases; j++) sq_cuda_basis_free(c, g->bases[j]);
        for (int w = 0; w < 2; w++) {
            sq_cuda_act_free(c, g->a_sq4[w]);
            sq_cuda_act_free(c, g->a_sq4_8[w]);
            sq_cuda_act_free(c, g->a_q8[w]);
        }
        sq_cuda_kv_free(c, g->kv);
        float *bufs[] = {g->norms, g->rope_cs, g->x, g->xn, g->q, g->k, g->v, g->att, g->tmp, g->gate, g->up,
                         g->logits, g->spec_in, g->spec_out[0], g->spec_out[1], g->spec_out[2]};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) sq_cuda_free(c, bufs[i]);
        sq_cuda_destroy(c);
    }
    free(g->lin);
    free(g->bases);
    free(g);
}

sq_status sq_model_backend_select(sq_model *m, int requested) {
    m->backend = SQ_BACKEND_CPU;
    if (requested == SQ_BACKEND_CPU) return SQ_OK;
    const int want = requested == SQ_BACKEND_CUDA;
    if (m->kv_type != SQ_KV_F16) {
        if (!want) return SQ_OK;
        return sq_set_error(SQ_ERR_ARG, "kv_type %s is not available with backend cuda (its KV cache is f16); use kv_type "
                            "f16, or backend cpu", kv_name(m->kv_type));
    }
    if (sq_cuda_device_count() == 0) {
        if (!want) return SQ_OK;
        return sq_set_error(SQ_ERR_BACKEND, "backend cuda: no CUDA device found (no NVIDIA GPU or no driver); use backend "
                            "cpu or auto");
    }
    const char *why = gpu_unsupported(m);
    if (why) {
        if (!want) return SQ_OK;
        return sq_set_error(SQ_ERR_BACKEND, "backend cuda cannot run this model: %s; use backend cpu or auto", why);
    }
    sq_status st = gpu_init(m);
    if (st) {
        sq_model_cuda_free(m);
        if (!want) { /* auto: the CPU is always there */
            sq_clear_error();
            return SQ_OK;
        }
        return st;
    }
    m->backend = SQ_BACKEND_CUDA;
    m->exec.act_bits = m->gpu->act_bits;
    return SQ_OK;
}

/* ---- forward -------------------------------------------------------------------------------- */

/* ys[i] = lins[i](x) for n layers reading the same input x (n_tok rows of width index w): the
 * input is quantized / projected once, like sq_linear_prepare; then each matmul, and the spectral
 * branch with the bias last (the CPU's order). */
static sq_status run_linears(sq_model *m, const float *x, int w, int nb, gpu_linear *const *lins, float *const *ys,
                             const int *ldys, int n) {
    struct sq_model_gpu *g = m->gpu;
    sq_cuda *c = g->c;
    const int K = lins[0]->l->cols;
    int need_sq4 = 0, need_q8 = 0, spec_k = 0, a8 = 0;
    const sq_cuda_basis *basis = NULL;
    for (int i = 0; i < n; i++) {
        const sq_linear *l = lins[i]->l;
        need_sq4 |= l->wtype == SQ_W_SQ4;
        a8 |= l->wtype == SQ_W_SQ4 && l->a8;
        need_q8 |= l->wtype == SQ_W_Q8;
        if (lins[i]->spec && l->spec->axis == SQ_SPEC_IN) {
            if (l->spec->k_used > spec_k) spec_k = l->spec->k_used;
            if (!basis) basis = lins[i]->basis;
        }
    }
    /* like sq_linear_prepare: an input read by an a8 linear is quantized to 8 bits (int8 path) */
    sq_cuda_act *a_sq4 = a8 && g->a_sq4_8[w] ? g->a_sq4_8[w] : g->a_sq4[w];
    if (need_sq4) TRY(sq_cuda_quantize(c, x, K, nb, m->hp.wht, a_sq4));
    if (need_q8) TRY(sq_cuda_quantize(c, x, K, nb, 0, g->a_q8[w]));
    if (spec_k) TRY(sq_cuda_spectral_project_in(c, basis, spec_k, x, K, nb, g->spec_in, g->spec_stride));
    for (int i = 0; i < n; i++) {
        const gpu_linear *gl = lins[i];
        const sq_cuda_act *a = gl->l->wtype == SQ_W_SQ4 ? a_sq4 : g->a_q8[w];
        if (!gl->spec) {
            TRY(sq_cuda_matmul(c, gl->w, a, ys[i], ldys[i], gl->bias));
            continue;
        }
        const float *proj = g->spec_in;
        if (gl->l->spec->axis == SQ_SPEC_OUT) {
            TRY(sq_cuda_spectral_project_out(c, gl->spec, x, K, nb, g->spec_out[i], g->spec_stride));
            proj = g->spec_out[i];
        }
        TRY(sq_cuda_matmul(c, gl->w, a, ys[i], ldys[i], NULL));
        TRY(sq_cuda_spectral_apply(c, gl->spec, proj, g->spec_stride, nb, ys[i], ldys[i], gl->bias));
    }
    return SQ_OK;
}

static sq_status forward_layer(sq_model *m, int il, int nb, int pos0) {
    const sq_hparams *hp = &m->hp;
    struct sq_model_gpu *g = m->gpu;
    sq_cuda *c = g->c;
    gpu_linear *L = &g->lin[il * SQ_N_LINEAR];
    const int D = hp->n_embd, kvw = hp->n_kv_head * hp->head_dim, F = hp->n_ff;
    const float *attn_norm = g->norms + (size_t)2 * il * D, *ffn_norm = attn_norm + D;

    TRY(sq_cuda_rmsnorm(c, g->x, D, attn_norm, g->xn, D, nb, D, hp->eps));
    gpu_linear *qkv[3] = {&L[SQ_LIN_Q], &L[SQ_LIN_K], &L[SQ_LIN_V]};
    float *qkv_out[3] = {g->q, g->k, g->v};
    const int qkv_ld[3] = {D, kvw, kvw};
    TRY(run_linears(m, g->xn, W_D, nb, qkv, qkv_out, qkv_ld, 3));
    TRY(sq_cuda_rope(c, g->rope_cs, m->rope.n_ctx, m->rope.n_rot, m->rope.mode, g->q, D, nb, hp->n_head, hp->head_dim,
                     pos0));
    TRY(sq_cuda_rope(c, g->rope_cs, m->rope.n_ctx, m->rope.n_rot, m->rope.mode, g->k, kvw, nb, hp->n_kv_head,
                     hp->head_dim, pos0));
    TRY(sq_cuda_kv_store(c, g->kv, il, g->k, kvw, g->v, kvw, nb, pos0));
    TRY(sq_cuda_attention(c, g->kv, il, g->q, D, g->att, D, nb, pos0, hp->n_head, 1.0f / sqrtf((float)hp->head_dim)));
    gpu_linear *o[1] = {&L[SQ_LIN_O]};
    float *tmp[1] = {g->tmp};
    const int ld_d[1] = {D};
    TRY(run_linears(m, g->att, W_D, nb, o, tmp, ld_d, 1));
    TRY(sq_cuda_add(c, g->x, D, g->tmp, D, nb, D));

    TRY(sq_cuda_rmsnorm(c, g->x, D, ffn_norm, g->xn, D, nb, D, hp->eps));
    gpu_linear *gu[2] = {&L[SQ_LIN_GATE], &L[SQ_LIN_UP]};
    float *gu_out[2] = {g->gate, g->up};
    const int gu_ld[2] = {F, F};
    TRY(run_linears(m, g->xn, W_D, nb, gu, gu_out, gu_ld, 2));
    TRY(sq_cuda_silu_mul(c, g->gate, F, g->up, F, nb, F));
    gpu_linear *down[1] = {&L[SQ_LIN_DOWN]};
    TRY(run_linears(m, g->gate, W_F, nb, down, tmp, ld_d, 1));
    return sq_cuda_add(c, g->x, D, g->tmp, D, nb, D);
}

sq_status sq_model_cuda_forward(sq_model *m, const int32_t *tokens, int nb, int pos0, float *logits, int first) {
    struct sq_model_gpu *g = m->gpu;
    const int D = m->hp.n_embd, V = m->hp.n_vocab;
    /* embeddings on the host (model.c's scratch holds n_batch rows), one upload per chunk */
    for (int t = 0; t < nb; t++) sq_tensor_row(m->tok_embd, tokens[t], m->x + (size_t)t * D);
    TRY(sq_cuda_upload(g->c, g->x, m->x, (size_t)nb * D * sizeof(float)));
    for (int il = 0; il < m->hp.n_layer; il++) TRY(forward_layer(m, il, nb, pos0));
    if (!logits) return sq_cuda_sync(g->c); /* reports a kernel fault now, not at the next eval */
    const int rows = nb - first;
    TRY(sq_cuda_rmsnorm(g->c, g->x + (size_t)first * D, D, g->norms + (size_t)2 * m->hp.n_layer * D, g->xn, D, rows, D,
                        m->hp.eps));
    gpu_linear *head[1] = {&g->head};
    float *out[1] = {g->logits};
    const int ld[1] = {V};
    TRY(run_linears(m, g->xn, W_D, rows, head, out, ld, 1));
    return sq_cuda_download(g->c, logits, g->logits, (size_t)rows * V * sizeof(float));
}

#else
typedef int sq_model_cuda_unused; /* ISO C: a translation unit must not be empty */
#endif
