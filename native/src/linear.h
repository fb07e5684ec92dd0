/* linear.h — one linear layer y = W·x (+ spectral branch, + bias) over a batch of tokens (internal).
 *
 * Weights stay in the mapped file, except SQ4 weights that the kernels want repacked (x86:
 * SQ_SQ4_X16, sq_linear_repack); besides those only the SQ4 group sums (wsum) and the spectral K
 * table are allocated at load. A batch's input is prepared once (sq_linear_prepare: activation quantization
 * for SQ4 or Q8_0 weights, spectral projections) and then shared by every layer that reads it
 * (q/k/v; gate/up), which sq_linear_run computes in one pool job split by output rows.
 */
#ifndef SQ_LINEAR_H
#define SQ_LINEAR_H

#include <stdint.h>

#include "gguf.h"
#include "kernels/kernels.h"
#include "spectral.h"
#include "threads.h"

enum { SQ_W_SQ4 = 1, SQ_W_Q8 = 2, SQ_W_F16 = 3, SQ_W_F32 = 4 };

typedef struct {
    int wtype;               /* SQ_W_* */
    int rows, cols;          /* C_out, C_in */
    const uint8_t *data;     /* weight bytes in the mapping */
    sq_sq4_matrix sq4;
    int32_t *wsum;           /* SQ4 only: Σ q_w per (row, group), owned (NULL once repacked) */
    uint8_t *packed;         /* SQ4 repacked for the kernels (sq_linear_repack), owned; else NULL */
    sq_q8_matrix q8;
    sq_spectral *spec;       /* NULL when there is no branch (owned) */
    const float *bias;       /* NULL when there is no bias */
    int a8;                  /* SQ4: its input is quantized to 8 bits also when the run's act_bits is 4
                                (specquant.act_bits_a8_linears; an input shared by several layers:
                                8 bits when any of them says so) */
} sq_linear;

/* Execution context: pool, kernels, per-thread scratch. */
typedef struct {
    sq_pool *pool;
    const sq_kernel_table *kt;
    int n_threads;
    float *scratch;          /* n_threads × scratch_floats */
    size_t scratch_floats;   /* >= max(2·C_in, 2·K_max) */
    int simd;                /* AVX2/FMA fp32 paths allowed (x86 with the avx2/avx512 kernel set) */
    int act_bits;            /* 4 or 8: SQ4 activations */
    int wht;                 /* in-group Walsh–Hadamard before activation quantization */
    int G;                   /* SQ4 group size (activation group = weight group) */
} sq_exec;

/* Prepared input of a batch (buffers sized at load for the largest batch and width). */
typedef struct {
    const float *x;          /* n_tok × K, row stride K */
    int n_tok, K;
    sq_qact qa;              /* valid when an SQ4 layer reads this input */
    sq_q8act q8a;            /* valid when a Q8_0 layer reads it */
    float *spec_in;          /* axis-in projections: n_tok × spec_stride, first 2·spec_k used */
    int spec_k, spec_stride;
    float *spec_out[3];      /* axis-out projections per layer of the group (n_tok × spec_stride) */
} sq_lin_input;

/* Builds a linear layer from tensor t (SQ4 / Q8_0 / F16 / F32, ne = [cols, rows]); validates the
 * optional spectral tensors and bias. name is used in error messages. */
sq_status sq_linear_init(sq_linear *l, const sq_gguf *g, const char *name, int cols, int rows, int G,
                         int spec_axis, float tau);
/* Builds a linear layer from rows [row0, row0 + rows) of tensor name.weight (F32 / F16 / Q8_0,
 * ne = [cols, total_rows]): a view into the mapping, no copy (Phi-3's fused attn_qkv / ffn_up). part
 * names the layer in messages; a bias or spectral branch of the fused tensor is refused. */
sq_status sq_linear_init_rows(sq_linear *l, const sq_gguf *g, const char *name, int cols, int total_rows, int row0,
                              int rows, const char *part);
void sq_linear_free(sq_linear *l);

/* Repacks the SQ4 layers of lins[0..n) into the layout the kernel table runs (kt->sq4_layout;
 * nothing to do for SQ_SQ4_ROWS), those that qualify (sq_sq4_x16_ok), in parallel on pool. The
 * repacked copy replaces the weights and their group sums; with release != 0 (the weights are in
 * a file mapping) the source pages leave the process's resident set as each layer is done, so a
 * load never holds both copies of the model. */
sq_status sq_linear_repack(sq_linear *const *lins, int n, const sq_kernel_table *kt, sq_pool *pool, int release);

/* Quantizes / projects x (n_tok × K) for the n layers in lins (all with cols == K). */
void sq_linear_prepare(const sq_exec *e, sq_lin_input *in, const float *x, int n_tok, const sq_linear *const *lins,
                       int n);
/* ys[i][t*ldys[i] + r] = layer i applied to token t, for every layer, every row. */
void sq_linear_run(const sq_exec *e, const sq_lin_input *in, const sq_linear *const *lins, float *const *ys,
                   const int *ldys, int n);

/* One row of an embedding-like tensor (F32 / F16 / Q8_0, ne = [width, n_rows]) as floats. */
void sq_tensor_row(const sq_gguf_tensor *t, int64_t row, float *out);
int sq_tensor_row_type_ok(uint32_t type);

#endif
