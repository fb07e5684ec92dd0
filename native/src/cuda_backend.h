/* cuda_backend.h — the CUDA backend's C interface (internal: the engine and the tests call it).
 *
 * Exists only in builds with CUDA: CMake defines SQ_HAVE_CUDA for the library and for everything
 * that links specquant_static when the .cu files under src/cuda were compiled. Design and numbers:
 * docs/CUDA.md. The math is docs/FORMAT.md §4, and the GPU reproduces the CPU bit for bit where
 * the CPU defines the result:
 *   - activation quantization (§4.1–4.2, §4.5): identical codes, scales and zero points;
 *   - SQ4 / Q8_0 matmuls: identical integer group sums (tensor-core accumulation of one group is
 *     exact int32) and identical float outputs (the canonical epilogue of kernels.h: groups in
 *     order, separate multiply and add, no FMA anywhere in the backend);
 *   - spectral branch and bias: the CPU's summation order, so identical too;
 *   - RMSNorm, RoPE, SiLU·mul, attention: same formulas, different summation order where a
 *     reduction is parallel (results within ~1e-6 relative of the CPU's).
 *
 * Conventions: every pointer named x, y, q, out, k, v, g, u, w, bias, acc, cs below is DEVICE
 * memory (sq_cuda_alloc); host pointers are named src/dst/data/host. Leading dimensions (ld*) are
 * in elements. All work runs in order on the context's one stream; functions return as soon as
 * the work is queued, except the downloads and sq_cuda_sync, which wait for it. A kernel fault
 * shows up at the next synchronising call. A context is not thread-safe: one thread at a time.
 * Errors: SQ_ERR_ARG (bad argument), SQ_ERR_NOMEM (device memory), SQ_ERR_BACKEND (no device,
 * driver or kernel failure), each with sq_last_error() text.
 */
#ifndef SQ_CUDA_BACKEND_H
#define SQ_CUDA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "specquant.h"

/* kernels.h and spectral.h have no C++ guards of their own: the .cu files see them through here. */
#ifdef __cplusplus
extern "C" {
#endif

#include "kernels/kernels.h"
#include "spectral.h"

typedef struct sq_cuda sq_cuda;             /* one device + stream */
typedef struct sq_cuda_mat sq_cuda_mat;     /* an SQ4 or Q8_0 weight matrix in the GPU layout */
typedef struct sq_cuda_act sq_cuda_act;     /* quantized activations of up to max_tok tokens */
typedef struct sq_cuda_basis sq_cuda_basis; /* cos/sin table of the spectral branch (sq_basis) */
typedef struct sq_cuda_spec sq_cuda_spec;   /* one layer's spectral branch (sq_spectral) */
typedef struct sq_cuda_kv sq_cuda_kv;       /* f16 KV cache, layout of kvcache.h */

/* SQ4 prefill kernels: INT4 = s4 x u4 tensor-core mma (default on sm_80/86/89), INT8 = weights
 * unpacked to s8 in registers, s8 x u8 mma (default on sm_90 and later, which have no fast int4
 * mma; also the only path for 8-bit activations). SQ_CUDA_PATH=int4|int8 in the environment
 * overrides the default when the context is created. */
enum { SQ_CUDA_PATH_AUTO = 0, SQ_CUDA_PATH_INT4 = 1, SQ_CUDA_PATH_INT8 = 2 };
/* Activation kinds: for SQ4 matrices (asymmetric u4/u8 per group, §4.2) or Q8_0 ones (§4.5). */
enum { SQ_CUDA_ACT_SQ4 = 0, SQ_CUDA_ACT_Q8 = 1 };
/* Up to this many tokens a matmul runs the decode GEMV (weights read once, dp4a); default 8. */
#define SQ_CUDA_GEMV_MAX 8

/* ---- device and context ------------------------------------------------------------------- */
/* Number of usable CUDA devices (0 when there is no driver or no device; never an error). */
int sq_cuda_device_count(void);
/* Opens device `device` (0-based). Needs compute capability 8.0 or newer. */
sq_status sq_cuda_create(int device, sq_cuda **out);
void sq_cuda_destroy(sq_cuda *c);
const char *sq_cuda_device_name(const sq_cuda *c); /* e.g. "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)" */
int sq_cuda_cc(const sq_cuda *c);                  /* compute capability as 10*major + minor */
/* SQ_CUDA_PATH_*; AUTO picks by compute capability. SQ_ERR_ARG for an unknown value. */
sq_status sq_cuda_set_path(sq_cuda *c, int path);
int sq_cuda_path(const sq_cuda *c);                /* the resolved path (INT4 or INT8) */
/* Largest token count that takes the GEMV (0..SQ_CUDA_GEMV_MAX; 0 = always the mma kernels). */
sq_status sq_cuda_set_gemv_max(sq_cuda *c, int n_tok);
/* Waits for all queued work; reports a kernel fault as SQ_ERR_BACKEND. */
sq_status sq_cuda_sync(sq_cuda *c);

/* ---- memory ------------------------------------------------------------------------------- */
void *sq_cuda_alloc(sq_cuda *c, size_t bytes); /* zero-filled; NULL + SQ_ERR_NOMEM */
void sq_cuda_free(sq_cuda *c, void *p);        /* NULL is fine */
sq_status sq_cuda_upload(sq_cuda *c, void *dst, const void *src, size_t bytes);   /* host -> device */
sq_status sq_cuda_download(sq_cuda *c, void *dst, const void *src, size_t bytes); /* device -> host, waits */

/* ---- weight matrices ---------------------------------------------------------------------- */
/* Copies an SQ4 matrix (FORMAT.md §3.1 blocks, rows × K, group G) to the device in the GPU layout
 * (docs/CUDA.md) and computes its group sums there. Same preconditions as sq_kernels_check_sq4. */
sq_status sq_cuda_mat_sq4(sq_cuda *c, const uint8_t *data, int rows, int K, int G, sq_cuda_mat **out);
/* Same for a Q8_0 matrix (ggml blocks of 32: fp16 d + 32 int8), K % 32 == 0. */
sq_status sq_cuda_mat_q8(sq_cuda *c, const uint8_t *data, int rows, int K, sq_cuda_mat **out);
void sq_cuda_mat_free(sq_cuda *c, sq_cuda_mat *m);
size_t sq_cuda_mat_bytes(const sq_cuda_mat *m); /* device bytes held */

/* ---- activations -------------------------------------------------------------------------- */
/* Buffers for up to max_tok tokens of width K. kind SQ_CUDA_ACT_SQ4: group G, bits 4 or 8;
 * kind SQ_CUDA_ACT_Q8: G and bits ignored (blocks of 32, int8). */
sq_status sq_cuda_act_create(sq_cuda *c, int kind, int max_tok, int K, int G, int bits, sq_cuda_act **out);
void sq_cuda_act_free(sq_cuda *c, sq_cuda_act *a);
/* Quantizes rows 0..n_tok-1 of x (row stride ldx >= K floats) into a (FORMAT.md §4.1–4.2 with
 * the in-group Walsh–Hadamard first when wht != 0, or §4.5 for kind Q8). The storage layout
 * depends on n_tok and the path, so quantize once per batch before the matmuls that read it. */
sq_status sq_cuda_quantize(sq_cuda *c, const float *x, int ldx, int n_tok, int wht, sq_cuda_act *a);
/* Copies the last quantization back in the CPU layout of kernels.h (tests): out->q, d, z must
 * have room for n_tok*K, n_tok*(K/G), n_tok*(K/G) entries; n_tok, K, G, bits are filled in. */
sq_status sq_cuda_act_download_sq4(sq_cuda *c, const sq_cuda_act *a, sq_qact *out);
sq_status sq_cuda_act_download_q8(sq_cuda *c, const sq_cuda_act *a, sq_q8act *out);

/* ---- matmuls ------------------------------------------------------------------------------ */
/* y[t*ldy + r] = Σ_g (float)acc_g · (d_w·d_x) (kernels.h canonical epilogue) for every row r of w
 * and token t < n_tok of the last quantization, then + bias[r] when bias != NULL. ldy >= rows.
 * An SQ4 matrix needs an SQ4 act of the same K and G; a Q8 matrix a Q8 act of the same K. */
sq_status sq_cuda_matmul(sq_cuda *c, const sq_cuda_mat *w, const sq_cuda_act *a, float *y, int ldy,
                         const float *bias);
/* Integer group sums (tests): acc[t*(rows*ng) + r*ng + g], ng = K/G, like group_sums_sq4 of
 * kernels.h; runs the same kernel sq_cuda_matmul would. SQ4 only. */
sq_status sq_cuda_group_sums(sq_cuda *c, const sq_cuda_mat *w, const sq_cuda_act *a, int32_t *acc);
/* Name of the kernel sq_cuda_matmul runs for this pair now: "gemv-sq4", "mma-int4", "mma-int4-k32",
 * "mma-int8", "gemv-q8" or "mma-q8" (NULL for a mismatched pair). */
const char *sq_cuda_matmul_kernel(const sq_cuda *c, const sq_cuda_mat *w, const sq_cuda_act *a);

/* ---- spectral branch (FORMAT.md §3.2, spectral.h; same summation order as spectral.c) ------- */
sq_status sq_cuda_basis_create(sq_cuda *c, const sq_basis *b, sq_cuda_basis **out);
void sq_cuda_basis_free(sq_cuda *c, sq_cuda_basis *b);
/* Phase 1, axis in: out[t*ld_out + 2k'+{0,1}] = (c_k', s_k') for k' < k (k <= basis K). */
sq_status sq_cuda_spectral_project_in(sq_cuda *c, const sq_cuda_basis *b, int k, const float *x, int ldx, int n_tok,
                                      float *out, int ld_out);
/* Copies a layer's branch (its truncated per-channel K, its fp16 coefficients); basis: the device
 * copy of s->basis for axis out (NULL for axis in). */
sq_status sq_cuda_spec_create(sq_cuda *c, const sq_spectral *s, const sq_cuda_basis *basis, sq_cuda_spec **out);
void sq_cuda_spec_free(sq_cuda *c, sq_cuda_spec *s);
/* Phase 1, axis out: out[t*ld_out + 2k'+{0,1}] = (z^a_k', z^b_k') for k' < k_used. */
sq_status sq_cuda_spectral_project_out(sq_cuda *c, const sq_cuda_spec *s, const float *x, int ldx, int n_tok,
                                       float *out, int ld_out);
/* Phase 2: y[t*ldy + o] = (y + branch) + bias[o] for every channel o (bias may be NULL). Call
 * sq_cuda_matmul with bias NULL first, so that the bias comes last as on the CPU. */
sq_status sq_cuda_spectral_apply(sq_cuda *c, const sq_cuda_spec *s, const float *proj, int ld_proj, int n_tok,
                                 float *y, int ldy, const float *bias);

/* ---- the rest of a block ------------------------------------------------------------------ */
/* y = x / sqrt(mean(x²) + eps) · w per token (norm.c; y may alias x). */
sq_status sq_cuda_rmsnorm(sq_cuda *c, const float *x, int ldx, const float *w, float *y, int ldy, int n_tok, int n,
                          float eps);
/* RoPE (rope.c) on n_heads heads of width head_dim per token, token t at position pos0 + t.
 * cs: device copy of sq_rope.cs (n_ctx × n_rot/2 × (cos, sin)); mode SQ_ROPE_NORMAL (pairs 2i,
 * 2i+1) or SQ_ROPE_NEOX; n_ctx bounds the positions. */
sq_status sq_cuda_rope(sq_cuda *c, const float *cs, int n_ctx, int n_rot, int mode, float *x, int ldx, int n_tok,
                       int n_heads, int head_dim, int pos0);
/* g = silu(g) · u elementwise over n_tok rows of n values. */
sq_status sq_cuda_silu_mul(sq_cuda *c, float *g, int ldg, const float *u, int ldu, int n_tok, int n);
/* x += y elementwise over n_tok rows of n values. */
sq_status sq_cuda_add(sq_cuda *c, float *x, int ldx, const float *y, int ldy, int n_tok, int n);

sq_status sq_cuda_kv_create(sq_cuda *c, int n_layer, int n_kv_head, int head_dim, int n_ctx, sq_cuda_kv **out);
void sq_cuda_kv_free(sq_cuda *c, sq_cuda_kv *kv);
/* Device pointers of the f16 K and V caches, [layer][kv_head][pos][head_dim] like kvcache.h. */
const uint16_t *sq_cuda_kv_k(const sq_cuda_kv *kv);
const uint16_t *sq_cuda_kv_v(const sq_cuda_kv *kv);
/* Stores K and V rows (n_kv_head*head_dim floats per token, RoPE already applied to k) of n_tok
 * tokens at positions pos0.. (fp32 -> f16 round to nearest even, like sq_kv_store). */
sq_status sq_cuda_kv_store(sq_cuda *c, sq_cuda_kv *kv, int layer, const float *k, int ldk, const float *v, int ldv,
                           int n_tok, int pos0);
/* Causal GQA (attention.c): out[t] for query rows q[t] (n_head*head_dim floats, RoPE applied),
 * token t at position pos0 + t sees positions 0..pos0+t of the cache. head_dim <= 256. */
sq_status sq_cuda_attention(sq_cuda *c, const sq_cuda_kv *kv, int layer, const float *q, int ldq, float *out, int ldo,
                            int n_tok, int pos0, int n_head, float scale);

#ifdef __cplusplus
}
#endif
#endif
