/* kernels.h — internal interface of the compute kernels (not installed, not public).
 *
 * native/src/kernels/ holds the kernels, one file per ISA, and their dispatch:
 *   dispatch.c          CPUID / HWCAP detection, the one SQ_ISA parser, the table in use
 *   matmul_scalar.c     the reference kernels (portable C); quantize_act.c: the scalar activation
 *                       quantization they share with matmul_neon.c
 *   matmul_avx2.c, matmul_avx512.c (both matmul_x86_impl.h), matmul_neon.c: the SIMD tables, each
 *                       compiled with its own ISA flags (native/CMakeLists.txt, by file name suffix)
 * A new ISA: a file matmul_<isa>.c defining an sq_kernel_table, its flags in CMakeLists.txt, its
 * detection and name in dispatch.c (k_isas), a scalar-twin test in tests/test_kernels.c.
 *
 * The math is docs/FORMAT.md §4. Every kernel has a scalar twin in matmul_scalar.c /
 * quantize_act.c; SIMD versions must give the scalar kernel's integer group sums exactly.
 * sq_kernels() returns the table picked by CPUID (or forced by SQ_ISA=scalar|avx2|avx512|neon).
 *
 * Threading: every kernel works on a range (rows [r0, r1) of a matrix, or tokens [t0, t1) of an
 * activation), so the engine splits work across threads by calling one kernel per range. Kernels
 * never allocate and keep no mutable global state; ranges of different calls may run concurrently
 * as long as their outputs do not overlap. They use up to ~64 KB of stack (unpacked weight tiles,
 * the WHT buffer), so worker threads need ordinary (≥ 256 KB) stacks. The SIMD matmuls tile 16
 * rows at a time: splitting rows on multiples of 16 avoids computing padded tail tiles.
 *
 * Shapes: n_tok ≥ 3 takes the prefill path (weights unpacked once per row tile and reused across
 * tokens), fewer tokens the decode path (each weight byte read once, straight from the mapping).
 *
 * Canonical epilogue: every kernel forms exact int32 group sums acc_g (Q8_0: block sums), then
 *     y = 0;  for g = 0 … ng−1 in order:  y = y + (float)acc_g · (d_w[g] · d_x[g])
 * in fp32 with separate multiplies and adds (no FMA; the build uses -ffp-contract=off). So every
 * ISA gives bit-identical outputs, and a W4A4 model — whose next activation quantization turns a
 * 1-ulp difference into a different code — runs the same on every machine.
 *
 * Preconditions (checked once at load with sq_kernels_check_sq4(), not in the hot path):
 * K % G == 0, G % 32 == 0 (G = 32, 64, 128, 256 or per-row G = K with K % 32 == 0),
 * act bits 4 or 8, 0 <= r0 <= r1 <= rows, y has room for n_tok rows of ldy floats.
 */
#ifndef SQ_KERNELS_H
#define SQ_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "fp16.h"
#include "specquant.h"

/* Largest group the in-group Walsh–Hadamard transform supports (it runs in a stack buffer). */
#define SQ_WHT_MAX_G 8192

/* Quantized activations of n_tok rows of length K, group size G (K % G == 0).
 * q: n_tok*K bytes, one unsigned value per byte (u4 in [0,15] or u8 in [0,255]);
 * d: n_tok*(K/G) scales; z: n_tok*(K/G) zero points. */
typedef struct {
    uint8_t *q;
    float *d;
    int32_t *z;
    int n_tok, K, G, bits;
} sq_qact;

/* How an SQ4 matrix's bytes are laid out in memory (sq_sq4_matrix.layout).
 *
 * SQ_SQ4_ROWS: the file's layout (FORMAT.md §3.1), row after row, blocks of (fp16 d, G/2 nibble
 *   bytes; byte i holds value i in its low nibble and value i + G/2 in its high one); wsum[r*(K/G)+g]
 *   = Σ q_w of that group, precomputed at load by sq_sq4_group_sums.
 * SQ_SQ4_X16: repacked at load for kernels whose lanes are rows (sq_sq4_repack_x16; x86). Tiles
 *   of 16 rows, one after the other; tile T's group g is one record of SQ_X16_REC(G) = 64 + 8G bytes
 *   at (T·(K/G) + g)·SQ_X16_REC(G):
 *     [0, 32)        fp16 d of rows 0..15
 *     [32, 64)       int16 Σ q_w of rows 0..15 (|Σ| <= 8G)
 *     [64, 64 + 8G)  G/8 chunks of 64 bytes: byte 4i + j of chunk c holds row i's value 8c + j of the
 *                    group in its low nibble and value 8c + 4 + j in its high one, each as q_w + 8
 *   So a chunk is two "k-steps" (4 consecutive values of 16 rows; its 32-byte halves: rows 0-7 and
 *   8-15), 64-byte aligned, and a dot product with 4 broadcast activation bytes leaves one int32
 *   lane per row: no horizontal sums. A matrix is one stream. Fewer bytes than the file's blocks
 *   plus wsum (2 bytes per row and group instead of 4). rows % 16 == 0, K/G <= SQ_X16_MAX_GROUPS
 *   and G <= SQ_X16_MAX_G (sq_sq4_x16_ok); data 64-byte aligned (the kernels use aligned loads);
 *   wsum is NULL. */
enum { SQ_SQ4_ROWS = 0, SQ_SQ4_X16 = 1 };
#define SQ_X16_REC(G) (64 + 8 * (size_t)(G))
#define SQ_X16_TILE(K, G) ((size_t)((K) / (G)) * SQ_X16_REC(G))
#define SQ_X16_MAX_GROUPS 1024
#define SQ_X16_MAX_G 4096

/* SQ4 weight matrix: rows × K in group size G, in the given layout (SQ_SQ4_ROWS when zero). */
typedef struct {
    const uint8_t *data;
    const int32_t *wsum; /* SQ_SQ4_ROWS only */
    int rows, K, G;
    int layout;
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
    /* the SQ4 layout this table's matmul_sq4 is built for; a model load repacks its matrices to it
     * where they qualify (SQ_SQ4_X16: sq_sq4_x16_ok). A table whose layout is X16 runs SQ_SQ4_ROWS
     * matrices too. */
    int sq4_layout;
    /* y[t*ldy + r] = Σ_g acc_g·(d_w·d_x) (canonical order, see above) for rows r in [r0, r1), all
     * tokens t of x; y is overwritten. */
    void (*matmul_sq4)(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, float *y, int ldy);
    /* same for Q8_0 weights × Q8_0 activations (used for the output head). */
    void (*matmul_q8)(const sq_q8_matrix *w, const sq_q8act *x, int r0, int r1, float *y, int ldy);
    /* Integer group sums only (for tests): acc[t*(rows*K/G) + r*(K/G) + g], rows [r0,r1). */
    void (*group_sums_sq4)(const sq_sq4_matrix *w, const sq_qact *x, int r0, int r1, int32_t *acc);
    /* Implementations behind sq_quantize_act / sq_quantize_q8act (same contract). */
    void (*quantize_act)(const float *x, int t0, int t1, int wht, sq_qact *out);
    void (*quantize_q8act)(const float *x, int t0, int t1, sq_q8act *out);
} sq_kernel_table;

/* x86: from this many tokens on, matmul_sq4 runs the tiled prefill kernel; fewer run the decode
 * kernels (one token, or a batched decode step of 2..7). dispatch.c's avx512-mix splits there. */
#define SQ_X86_PREFILL_MIN_TOK 8

/* The one SQ_ISA parser. NULL, "" or "auto": the best table for this CPU; a name this build and
 * CPU support ("scalar", "avx2", "avx512", "avx512-mix", "neon"): its table. Anything else: NULL,
 * and why (one line naming the valid choices here) in why[0..cap) when why is not NULL. */
const sq_kernel_table *sq_kernels_parse(const char *isa, char *why, size_t cap);
/* The table SQ_ISA (read now from the environment) asks for: SQ_OK, or SQ_ERR_UNSUPPORTED with
 * sq_kernels_parse's line as sq_last_error(). What a model load uses (each load reads SQ_ISA). */
sq_status sq_kernels_from_env(const sq_kernel_table **out);
/* The process-wide table (sq_isa_name, sq_quantize_act): SQ_ISA as the first call found it,
 * chosen once (thread-safe). Never NULL: an invalid SQ_ISA falls back to "auto" here (a model load
 * reports it). */
const sq_kernel_table *sq_kernels(void);
/* The table for one ISA by name ("scalar", "avx2", "avx512", "avx512-mix", "neon"); NULL if not
 * compiled in or not supported by this CPU ("auto" is not a name here: see sq_kernels_parse). */
const sq_kernel_table *sq_kernels_for(const char *isa);

/* SQ_OK or SQ_ERR_FORMAT (with sq_last_error() text) if an SQ4 matrix of this shape, or its
 * activations (bits), cannot run through the kernels; wht != 0 also requires G a power of two
 * and G <= SQ_WHT_MAX_G. name is used in the message. */
sq_status sq_kernels_check_sq4(const char *name, int rows, int K, int G, int bits, int wht);

/* Activation quantization (FORMAT.md §4.1–4.2): rows t in [t0, t1) of x (n_tok × K fp32, row
 * stride K). wht != 0 applies the in-group Walsh–Hadamard butterfly first (G power of two). */
void sq_quantize_act(const float *x, int t0, int t1, int wht, sq_qact *out);
/* Q8_0 activations: per block of 32, d = amax/127, q = rint(x/d) (via x * (1/d)). K % 32 == 0. */
void sq_quantize_q8act(const float *x, int t0, int t1, sq_q8act *out);

/* Σ q_w per (row, group) of an SQ4 matrix; wsum has rows*(K/G) entries. */
void sq_sq4_group_sums(const uint8_t *data, int rows, int K, int G, int32_t *wsum);

/* SQ_SQ4_X16 (see above): whether a rows × K matrix in groups of G can be repacked, its size in
 * bytes, and the repack of the file-layout matrix src (with its wsum) into dst, tiles [t0, t1) of
 * 16 rows (so that a load can split the work). */
int sq_sq4_x16_ok(int rows, int K, int G);
size_t sq_sq4_x16_bytes(int rows, int K, int G);
void sq_sq4_repack_x16(const uint8_t *src, const int32_t *wsum, int K, int G, int t0, int t1, uint8_t *dst);

/* Per-ISA tables and scalar building blocks (used by dispatch.c and the tests). */
extern const sq_kernel_table sq_kernels_scalar;
void sq_quantize_act_scalar(const float *x, int t0, int t1, int wht, sq_qact *out);
void sq_quantize_q8act_scalar(const float *x, int t0, int t1, sq_q8act *out);
/* The in-place butterfly of FORMAT.md §4.1 on n = 2^k floats. */
void sq_wht_inplace(float *v, int n);

#endif
