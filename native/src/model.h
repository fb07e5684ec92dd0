/* model.h — internal view of a loaded model (sq_model is opaque in specquant.h).
 *
 * For other modules of the library:
 *   const sq_gguf *sq_model_gguf(const sq_model *m);   // parsed metadata + tensor table (gguf.h)
 *   sq_model_vocab(m)                                   // tokenizer (tokenizer.h), NULL if the
 *                                                       // file has no tokenizer.ggml.model
 * For tests and fuzzing: sq_model_load_buffer() loads from memory instead of a file.
 */
#ifndef SQ_MODEL_H
#define SQ_MODEL_H

#include <pthread.h>
#include <stddef.h>

#include "arch.h"
#include "attention.h"
#include "gguf.h"
#include "kvcache.h"
#include "linear.h"
#include "rope.h"
#include "spectral.h"
#include "specquant.h"
#include "threads.h"

/* Tokens per forward chunk: prompts longer than this run in several chunks. */
#define SQ_MAX_BATCH 512

typedef struct {
    const float *attn_norm, *ffn_norm;
    const float *post_attn_norm, *post_ffn_norm; /* Gemma 2's branch-output norms; NULL elsewhere */
    union { /* by name, or lin[i] in sq_linear_names order (arch.h) */
        struct {
            sq_linear q, k, v, o, gate, up, down;
        };
        sq_linear lin[SQ_N_LINEAR];
    };
} sq_layer;

typedef struct {
    const sq_arch *arch; /* its row of the architecture table (arch.h) */
    int n_embd, n_layer, n_head, n_kv_head, head_dim, n_ff, n_vocab, n_ctx_train, n_rot;
    float eps, rope_base, rope_freq_scale;
    float attn_scale;                 /* score scale: 1/sqrt(head_dim), or the file's (Gemma 2) */
    float attn_softcap, final_softcap; /* Gemma 2's tanh caps (0 = none) */
    int n_swa;                        /* sliding window of the layers arch->swa_pattern names (0 = none) */
    int group_size;   /* SQ4 G (0 = per row) */
    int act_bits;     /* 4 or 8: what the file was calibrated for (specquant.act_bits); the run's
                         bits are exec.act_bits (sq_model_params.act_bits, auto per backend) */
    int a8_mask;      /* bit i: linear kind i (sq_linear_names) keeps 8-bit activations when the run's
                         act_bits is 4 (specquant.act_bits_a8_linears) */
    int wht;          /* in-group Walsh–Hadamard on activations */
    int spec_axis;    /* SQ_SPEC_IN / SQ_SPEC_OUT */
} sq_hparams;

struct sq_model {
    sq_gguf gguf;
    sq_hparams hp;
    int n_ctx, n_batch, n_past, kv_type;
    float spectral_tau;

    const sq_gguf_tensor *tok_embd;
    const float *out_norm;
    sq_linear head;
    sq_layer *layers;
    sq_basis *bases;
    int n_bases;
    sq_rope rope;
    sq_kvcache kv;
    sq_exec exec;

    /* scratch, sized at load for n_batch tokens */
    float *x, *xn, *q, *k, *v, *att, *tmp, *gate, *up;
    float *attn_scratch;
    size_t attn_scratch_floats;
    sq_lin_input in;

    int backend;              /* SQ_BACKEND_CPU or SQ_BACKEND_CUDA: where this model runs */
    int act_bits_req;         /* sq_model_params.act_bits (0 = auto); what runs: exec.act_bits */
    int any_sq4;              /* some linear is SQ4 (act_bits matters) */
    struct sq_model_gpu *gpu; /* CUDA state (model_cuda.c), NULL on the CPU */
    /* batch.c (sq_batch_eval): set during a multi-sequence forward; does RoPE, the KV stores and
     * attention of layer il for the nb tokens in m->q/k/v (each token its own sequence and
     * position), writing m->att. NULL: the model's own cache, positions pos0.. */
    void (*seq_attn)(struct sq_model *m, int il, int nb);
    void *seq_ctx;

    sq_vocab *vocab;          /* NULL when the file has no tokenizer.ggml.model */
    char **meta_text;         /* sq_model_meta results, one per key, made on first request */
    pthread_mutex_t meta_mu;
};

/* Loads from a buffer that must outlive the model (not copied). */
sq_model *sq_model_load_buffer(const void *data, size_t size, const sq_model_params *params);
const sq_gguf *sq_model_gguf(const sq_model *m);
/* The SQ4 activation bits the model runs: the requested ones, or auto's choice: 4 when int4_mma (the
 * backend multiplies int4 x int4 at twice the int8 rate: CUDA's int4 tensor-core path), else 8 (CPUs,
 * CUDA's int8 path on sm_90). */
int sq_model_act_bits_for(const sq_model *m, int int4_mma);
/* The forward pass in two halves (batch.c runs them with seq_attn set): every layer over nb
 * tokens at positions pos0.. (hidden states end in m->x), then the logits of m->x's rows
 * [first, first + rows) (final norm, output head). */
/* The attention settings of layer il (scale, soft-cap, sliding window) into a. */
void sq_model_attn_layer(const sq_model *m, int il, sq_attn_args *a);
void sq_model_forward_body(sq_model *m, const int32_t *tokens, int nb, int pos0);
void sq_model_forward_head(sq_model *m, int first, int rows, float *logits);

#endif
