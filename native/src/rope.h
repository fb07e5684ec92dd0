/* rope.h — rotary position embedding with a cos/sin table built at load (internal).
 *
 * mode normal (llama): rotates pairs (2i, 2i+1) of each head — the converter permuted q/k rows
 * for it, like llama.cpp's. mode neox (qwen2, as llama.cpp files store it): pairs (i, i + n_rot/2).
 * θ_i(pos) = pos · freq_scale · base^(-2i/n_rot) / factor_i (factor_i from rope_freqs, else 1).
 */
#ifndef SQ_ROPE_H
#define SQ_ROPE_H

#include "specquant.h"

enum { SQ_ROPE_NORMAL = 0, SQ_ROPE_NEOX = 1 };

typedef struct {
    int n_rot, n_ctx, mode;
    float *cs; /* cs[(pos * n_rot/2 + i) * 2 + {0,1}] = cos, sin */
} sq_rope;

sq_status sq_rope_init(sq_rope *r, int n_rot, int n_ctx, float base, float freq_scale, const float *factors, int mode);
void sq_rope_free(sq_rope *r);
/* Rotates n_heads consecutive heads of width head_dim (the first n_rot dims of each) at pos. */
void sq_rope_apply(const sq_rope *r, float *x, int n_heads, int head_dim, int pos);

#endif
