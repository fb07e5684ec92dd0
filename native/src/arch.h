/* arch.h — the architectures the runtime runs, and the linear layers of a block (internal).
 *
 * One row per name accepted in general.architecture (arch.c). A new architecture of the llama
 * family is one row there (and its twin in specquant_gguf/arch.py); the loader (model.c) and the
 * GPU path (model_cuda.c) read everything they need from the row.
 *
 * RoPE: llama.cpp stores llama / mistral q/k rows permuted for interleaved pairs (SQ_ROPE_NORMAL)
 * and qwen2 rows unpermuted, as Hugging Face has them, with NEOX (half-split) pairs. Our converter
 * writes every model as "llama" with permuted q/k, so its qwen2 files run in normal mode.
 */
#ifndef SQ_ARCH_H
#define SQ_ARCH_H

#include <stddef.h>

/* q/k/v bias tensors (blk.N.attn_{q,k,v}.bias) */
typedef enum { SQ_BIAS_NONE = 0, SQ_BIAS_OPTIONAL = 1, SQ_BIAS_REQUIRED = 2 } sq_bias_rule;

typedef struct {
    const char *name;   /* general.architecture, and the prefix of its metadata keys */
    int rope_mode;      /* SQ_ROPE_NORMAL or SQ_ROPE_NEOX (rope.h) */
    sq_bias_rule qkv_bias;
} sq_arch;

/* The row for a general.architecture value (len bytes, not NUL-terminated); NULL when unknown. */
const sq_arch *sq_arch_find(const char *name, size_t len);
/* "llama, mistral, qwen2": the accepted names, for messages. */
const char *sq_arch_names(void);

/* The seven linear layers of a block, in file order; sq_linear_names[i] is the tensor name part
 * (blk.N.<part>.weight). Loops over a block's linears run to SQ_N_LINEAR. */
enum { SQ_LIN_Q, SQ_LIN_K, SQ_LIN_V, SQ_LIN_O, SQ_LIN_GATE, SQ_LIN_UP, SQ_LIN_DOWN, SQ_N_LINEAR };
extern const char *const sq_linear_names[SQ_N_LINEAR];

#endif
