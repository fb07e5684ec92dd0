/* attention.h — causal grouped-query attention over the KV cache (internal). */
#ifndef SQ_ATTENTION_H
#define SQ_ATTENTION_H

#include <stddef.h>

#include "kvcache.h"
#include "threads.h"

typedef struct {
    const sq_kvcache *kv;
    int layer;
    const float *q;     /* n_tok × (n_head·head_dim), RoPE applied */
    float *out;         /* n_tok × (n_head·head_dim) */
    int n_tok, pos0;    /* token t sits at position pos0 + t and sees positions 0..pos0+t */
    int n_head;
    float scale;        /* 1/sqrt(head_dim), or the model's (Gemma 2: query_pre_attn_scalar^-0.5) */
    int simd;           /* 1: the AVX2/FMA kernel (x86 with the avx2/avx512 kernel set), 0: portable */
    float *scratch;     /* per thread: sq_attention_scratch_floats() floats */
    size_t scratch_floats;
    float softcap;      /* > 0: scores become softcap·tanh(score/softcap) before the softmax (Gemma 2) */
    int window;         /* > 0: a query at position p sees only positions p - window + 1 .. p */
} sq_attn_args;

size_t sq_attention_scratch_floats(int n_ctx, int head_dim);
void sq_attention(sq_pool *pool, const sq_attn_args *a);
/* n independent attentions (each as sq_attention computes it, same bits) in one pool job; they
 * must write disjoint outputs. batch.c: one per sequence of a multi-sequence step. */
#define SQ_ATTN_MULTI_MAX 64
void sq_attention_multi(sq_pool *pool, const sq_attn_args *a, int n);

#endif
