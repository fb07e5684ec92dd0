/* rope.c — RoPE table and rotation. */
#include "rope.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

sq_status sq_rope_init(sq_rope *r, int n_rot, int n_ctx, float base, float freq_scale, const float *factors, int mode) {
    memset(r, 0, sizeof *r);
    int half = n_rot / 2;
    r->cs = malloc((size_t)n_ctx * (half ? half : 1) * 2 * sizeof *r->cs);
    if (!r->cs) return sq_set_error(SQ_ERR_NOMEM, "out of memory for the RoPE table");
    r->n_rot = n_rot;
    r->n_ctx = n_ctx;
    r->mode = mode;
    for (int i = 0; i < half; i++) {
        /* Angles in double (like reference.py): at position 8000 a float angle would already be
         * off by ~5e-4 rad. */
        double inv = pow((double)base, -2.0 * i / n_rot) * freq_scale;
        if (factors) inv /= factors[i];
        for (int p = 0; p < n_ctx; p++) {
            double ang = (double)p * inv;
            r->cs[((size_t)p * half + i) * 2] = (float)cos(ang);
            r->cs[((size_t)p * half + i) * 2 + 1] = (float)sin(ang);
        }
    }
    return SQ_OK;
}

void sq_rope_free(sq_rope *r) {
    free(r->cs);
    r->cs = NULL;
}

void sq_rope_apply(const sq_rope *r, float *x, int n_heads, int head_dim, int pos) {
    int half = r->n_rot / 2;
    const float *cs = r->cs + (size_t)pos * half * 2;
    for (int h = 0; h < n_heads; h++, x += head_dim)
        for (int i = 0; i < half; i++) {
            int a = r->mode == SQ_ROPE_NEOX ? i : 2 * i, b = r->mode == SQ_ROPE_NEOX ? i + half : 2 * i + 1;
            float c = cs[2 * i], s = cs[2 * i + 1], x0 = x[a], x1 = x[b];
            x[a] = x0 * c - x1 * s;
            x[b] = x0 * s + x1 * c;
        }
}
