/* kernels.h — internal interface of the compute kernels (not installed, not public).
 *
 * The math is docs/FORMAT.md §4. Every kernel has a scalar twin in matmul_scalar.c /
 * quantize_act.c; SIMD versions (matmul_avx2.c, matmul_avx512.c, matmul_neon.c) must give the
 * scalar kernel's integer group sums exactly. sq_kernels() returns the table picked by CPUID
 * (or forced by SQ_ISA=scalar|avx2|avx512|neon).
 */
#ifndef SQ_KERNELS_H
#define SQ_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* Quantized activations of n_tok rows of length K, group size G (K % G == 0).
 * q: n_tok*K bytes, one unsigned value per byte (u4 in [0,15] or u8 in [0,255]);
 * d: n_tok*(K/G) scales; z: n_tok*(K/G) zero points. */
typedef struct {
    uint8_t *q;
    float *d;
    int32_t *z;
    int n_tok, K, G, bits;
} sq_qact;

/* SQ4 weight matrix: rows × K, blocks of (fp16 d, G/2 nibble bytes), see FORMAT.md §3.1.
 * wsum[r*(K/G)+g] = Σ q_w of that group (precomputed at load by sq_sq4_group_sums). */
typedef struct {
    const uint8_t *data;
    const int32_t *wsum;
    int rows, K, G;
} sq_sq4_matrix;

/* Q8_0 matrix (ggml type 8): rows × K, blocks of 32 (fp16 d, 32 int8). */
typedef struct {
    const uint8_t *data;
    int rows, K;
} sq_q8_matrix;

/* Activations quantized to Q8_0-style blocks for Q8_0 matrices: symmetric int8, block 32. */
typedef struct {
    int8_t *q;   /* n_tok*K */
    float *d;    /* n_tok*(K/32) */
    int n_tok, K;
} sq_q8act;

typedef struct {
    const char *name;
    /* y[t*ldy + r] = Σ_g acc_g·d_w·d_x  for rows r in [r0, r1), all tokens t of x. */
    void (*matmul_sq4)(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, float *y, int ldy);
    /* same for Q8_0 weights × Q8_0 activations (used for the output head). */
    void (*matmul_q8)(const sq_q8_matrix *w, const sq_q8act *x, int r0, int r1, float *y, int ldy);
    /* Integer group sums only (for tests): acc[t*(rows*K/G) + r*(K/G) + g], rows [r0,r1). */
    void (*group_sums_sq4)(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, int32_t *acc);
} sq_kernel_table;

const sq_kernel_table *sq_kernels(void);
/* The table for one ISA by name; NULL if not compiled in or not supported by this CPU. */
const sq_kernel_table *sq_kernels_for(const char *isa);

/* Activation quantization (FORMAT.md §4.1–4.2): rows t in [t0, t1) of x (n_tok × K fp32, row
 * stride K). wht != 0 applies the in-group Walsh–Hadamard butterfly first (G power of two). */
void sq_quantize_act(const float *x, int t0, int t1, int wht, sq_qact *out);
void sq_quantize_q8act(const float *x, int t0, int t1, sq_q8act *out);

/* Σ q_w per (row, group) of an SQ4 matrix; wsum has rows*(K/G) entries. */
void sq_sq4_group_sums(const uint8_t *data, int rows, int K, int G, int32_t *wsum);

/* fp16 <-> fp32 (IEEE half, round to nearest even). */
float sq_fp16_to_fp32(uint16_t h);
uint16_t sq_fp32_to_fp16(float f);

#endif
