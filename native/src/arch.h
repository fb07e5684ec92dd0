/* arch.h — the architectures the runtime runs, and the linear layers of a block (internal).
 *
 * One row per name accepted in general.architecture (arch.c). A new architecture of the llama
 * family is one row there (and its twin in specquant_gguf/arch.py); the loader (model.c) and the
 * GPU path (model_cuda.c) read everything they need from the row.
 *
 * RoPE: llama.cpp stores llama / mistral q/k rows permuted for interleaved pairs (SQ_ROPE_NORMAL)
 * and qwen2 rows unpermuted, as Hugging Face has them, with NEOX (half-split) pairs. Our converter
 * writes the llama family as "llama" with permuted q/k, so its qwen2 files run in normal mode;
 * gemma2 files (ours and llama.cpp's alike) keep NEOX order and carry Gemma 2's extra parts:
 * post-norms on both branch outputs, GELU-tanh, embeddings times sqrt(n_embd), tanh soft-capping of
 * attention scores and logits, and a sliding window on every other layer. Norm weights are stored
 * with Gemma's +1 already added, so every norm is the plain RMSNorm.
 *
 * Sliding window: <arch>.attention.sliding_window (hp->n_swa) applies to the layers swa_pattern
 * names. Gemma 2 (pattern 2): the even layers, window 4096 when the key is absent (llama.cpp's).
 * The llama family (pattern 0): every layer, when the file has the key (Mistral v0.1, Phi-3);
 * absent, no window.
 *
 * Phi-3 (llama.cpp's phi3 files): a llama block with NEOX RoPE on unpermuted q/k, no biases, SiLU,
 * the fused attn_qkv / ffn_up tensors taken as row views (sq_linear_init_rows), and
 * phi3.attention.sliding_window on every layer (0 or absent: none). Phi-3-128k's "longrope"
 * (rope_factors_long / rope_factors_short tensors) is refused at load.
 */
#ifndef SQ_ARCH_H
#define SQ_ARCH_H

#include <stddef.h>

/* q/k/v bias tensors (blk.N.attn_{q,k,v}.bias) */
typedef enum { SQ_BIAS_NONE = 0, SQ_BIAS_OPTIONAL = 1, SQ_BIAS_REQUIRED = 2 } sq_bias_rule;

/* the gated MLP's activation: act(gate) · up */
typedef enum { SQ_ACT_SILU = 0, SQ_ACT_GELU_TANH = 1 } sq_act;

typedef struct {
    const char *name;   /* general.architecture, and the prefix of its metadata keys */
    int rope_mode;      /* SQ_ROPE_NORMAL or SQ_ROPE_NEOX (rope.h) */
    sq_bias_rule qkv_bias;
    /* Gemma 2 (0 elsewhere) */
    int post_norms;     /* blk.N.post_attention_norm / post_ffw_norm on each branch's output */
    sq_act act;
    int embd_scale;     /* embeddings times sqrt(n_embd) */
    int softcap;        /* <arch>.attn_logit_softcapping / final_logit_softcapping / attention.scale keys */
    int swa_pattern;    /* p > 0: layers il % p < p - 1 attend within the sliding window; 0: every layer */
    /* Phi-3 (0 elsewhere): q/k/v may come fused as blk.N.attn_qkv.weight ([q; k; v] output rows) and gate/up
     * as blk.N.ffn_up.weight ([gate; up] rows, no ffn_gate): the loader takes each linear as a row range
     * (a view into the mapped tensor, no copy) */
    int fused;
} sq_arch;

/* Whether layer il of the architecture attends within the file's sliding window (if it has one). */
int sq_arch_layer_windowed(const sq_arch *a, int il);

/* The row for a general.architecture value (len bytes, not NUL-terminated); NULL when unknown. */
const sq_arch *sq_arch_find(const char *name, size_t len);
/* "llama, mistral, qwen2, phi3, gemma2": the accepted names, for messages. */
const char *sq_arch_names(void);

/* The seven linear layers of a block, in file order; sq_linear_names[i] is the tensor name part
 * (blk.N.<part>.weight). Loops over a block's linears run to SQ_N_LINEAR. */
enum { SQ_LIN_Q, SQ_LIN_K, SQ_LIN_V, SQ_LIN_O, SQ_LIN_GATE, SQ_LIN_UP, SQ_LIN_DOWN, SQ_N_LINEAR };
extern const char *const sq_linear_names[SQ_N_LINEAR];

#endif
