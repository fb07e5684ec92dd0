/* common.cuh — what the CUDA backend's files share: the objects behind cuda_backend.h, the GPU
 * data layouts, error handling, and one wrapper per special instruction (mma, dp4a, cp.async), so
 * that the kernels hold no inline asm and also compile for the host emulator (emu.cuh).
 *
 * GPU layouts (docs/CUDA.md has the diagrams):
 *   Rows are padded to a multiple of SQ_CU_BM (128) and K to a multiple of SQ_CU_BK (128); the
 *   padding holds zero weights, so it adds nothing to any sum.
 *   SQ4 weights: rows are cut into blocks of 32 rows and K into chunks of 64 values; the 32 rows'
 *   32-byte pieces of one chunk lie together (1 KB), blocks of rows after each other:
 *       byte offset of (row r, chunk c) = ((r/32) * (Kp/64) + c) * 1024 + (r%32) * 32.
 *   So a warp reading 8 rows × 4 chunks (the decode GEMV) or a tile loader reading 128 rows reads
 *   whole 32-byte sectors. A chunk's 32 bytes are 8 words; logical word j (values 8j..8j+7 of the
 *   chunk) sits at word position 2*(j%4) + j/4 (order w0 w4 w1 w5 w2 w6 w3 w7), and byte b of a
 *   word holds value 8j+b in its low nibble and value 8j+4+b in its high nibble (int4, two's
 *   complement). Word positions (2i, 2i+1) then hold exactly what mma thread i needs for both
 *   halves of a k64 step (one 8-byte load), and the low/high nibbles of a word are the s8 bytes of
 *   values 8j..8j+3 and 8j+4..8j+7 (natural order) after unpacking.
 *   Q8_0 weights: the same with chunks of 32 int8 values in natural order (Kp/32 chunks).
 *   Scales and group sums: dw[g*rows_pad + r] (float, exact copy of the fp16 d), ws[g*rows_pad + r].
 *   Activations: one row of bytes per token, tokens padded to a multiple of SQ_CU_BN (64):
 *     U8  (bits 8, any GEMV, the int8 path): Kp bytes per token, natural order;
 *     U4P (bits 4 on the int4 path): Kp/2 bytes per token, words packed like the weights' words;
 *     S8  (Q8_0 activations): Kp signed bytes per token, natural order;
 *   and d[g*tok_cap + t], z[g*tok_cap + t].
 */
#ifndef SQ_CUDA_COMMON_CUH
#define SQ_CUDA_COMMON_CUH

#include <stddef.h>
#include <stdint.h>

#ifdef SQ_CUDA_EMU
#include "emu.cuh"
#else
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

extern "C" {
#include "../cuda_backend.h"
#include "../error.h"
#include "../rope.h"
}

#define SQ_CU_BM 128 /* rows per mma block tile; row padding */
#define SQ_CU_BN 64  /* tokens per mma block tile; token padding */
#define SQ_CU_BK 128 /* K per pipeline stage; K padding */

enum { SQ_CU_W_SQ4 = 1, SQ_CU_W_Q8 = 2 };
enum { SQ_CU_A_U8 = 0, SQ_CU_A_U4P = 1, SQ_CU_A_S8 = 2 };

struct sq_cuda {
    int device, cc, sms, path, gemv_max;
    size_t smem_optin;
    cudaStream_t stream;
    char name[300];
};

struct sq_cuda_mat {
    int type, rows, rows_pad, K, Kp, G, ng;
    uint8_t *q;
    float *dw;
    int32_t *ws; /* SQ4 only */
    size_t bytes;
};

struct sq_cuda_act {
    int kind, K, Kp, G, ng, bits, max_tok, tok_cap;
    int n_tok, fmt, row_bytes; /* of the last quantization */
    uint8_t *q;                /* tok_cap * Kp bytes (room for every format) */
    float *d;
    int32_t *z; /* SQ4 only */
};

struct sq_cuda_basis {
    int L, K;
    float *cs; /* L × 2K, as sq_basis */
};

struct sq_cuda_spec {
    int axis, channels, k_max, k_used;
    uint16_t *coef; /* channels × k_max × 2 fp16 */
    int16_t *k;     /* channels */
    const sq_cuda_basis *basis;
};

struct sq_cuda_kv {
    int n_layer, n_kv_head, head_dim, n_ctx;
    uint16_t *k, *v;
};

/* ---- host-side helpers ---------------------------------------------------------------------- */
static inline int sq_cu_round_up(int v, int m) { return (v + m - 1) / m * m; }
static inline int sq_cu_div_up(int v, int m) { return (v + m - 1) / m; }

/* Sets the error for a failed CUDA call and returns its sq_status. */
sq_status sq_cu_fail(cudaError_t e, const char *what);
#define SQ_CU_TRY(call)                                                        \
    do {                                                                       \
        cudaError_t e_ = (call);                                               \
        if (e_ != cudaSuccess) return sq_cu_fail(e_, #call);                   \
    } while (0)
/* After a launch: configuration errors show up here, faults at the next sync. */
#define SQ_CU_LAUNCHED() SQ_CU_TRY(cudaGetLastError())

#ifdef SQ_CUDA_EMU
#define SQ_LAUNCH(kern, grid, block, smem, stream, ...) \
    sq_emu_launch((grid), (block), (smem), [&]() { kern(__VA_ARGS__); })
#define SQ_DYN_SMEM(T, name) T *name = (T *)SQ_EMU_DYN_SMEM()
#else
#define SQ_LAUNCH(kern, grid, block, smem, stream, ...) kern<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#define SQ_DYN_SMEM(T, name)                                  \
    extern __shared__ __align__(16) unsigned char sq_dyn_smem_[]; \
    T *name = reinterpret_cast<T *>(sq_dyn_smem_)
#endif

/* Internal launchers (one file each, sq_cuda_matmul in matmul.cu dispatches). */
struct sq_cu_gemm_args {
    const sq_cuda_mat *w;
    const sq_cuda_act *a;
    float *y;
    int ldy;
    const float *bias;
    int32_t *acc; /* group sums instead of y (tests), or NULL */
};
/* What both GEMM kernels (gemv.cu, mma.cu) read, taken from a launch's arguments. */
struct sq_cu_gemm_params {
    const uint8_t *wq;
    const float *dw;
    const int32_t *ws; /* NULL for Q8_0 */
    int rows, rows_pad, K, G, ng, nch;
    const uint8_t *aq;
    int a_row_bytes;
    const float *ad;
    const int32_t *az; /* NULL for Q8_0 */
    int tok_cap, n_tok;
    float *y;
    int ldy;
    const float *bias;
    int32_t *acc;
};
static inline sq_cu_gemm_params sq_cu_gemm_params_of(const sq_cu_gemm_args *g) {
    const sq_cuda_mat *w = g->w;
    const sq_cuda_act *a = g->a;
    const bool sq4 = w->type == SQ_CU_W_SQ4;
    sq_cu_gemm_params p;
    p.wq = w->q;
    p.dw = w->dw;
    p.ws = sq4 ? w->ws : NULL;
    p.rows = w->rows;
    p.rows_pad = w->rows_pad;
    p.K = w->K;
    p.G = w->G;
    p.ng = w->ng;
    p.nch = sq4 ? w->Kp / 64 : w->Kp / 32;
    p.aq = a->q;
    p.a_row_bytes = a->row_bytes;
    p.ad = a->d;
    p.az = sq4 ? a->z : NULL;
    p.tok_cap = a->tok_cap;
    p.n_tok = a->n_tok;
    p.y = g->y;
    p.ldy = g->ldy;
    p.bias = g->bias;
    p.acc = g->acc;
    return p;
}
sq_status sq_cu_launch_mma(sq_cuda *c, const sq_cu_gemm_args *g);
sq_status sq_cu_launch_gemv(sq_cuda *c, const sq_cu_gemm_args *g);
sq_status sq_cu_prepare_kernels(sq_cuda *c); /* raises shared-memory limits once per context */
sq_status sq_cu_prepare_quantize(sq_cuda *c);

/* ---- layout helpers (host and device) ----------------------------------------------------- */
/* word position of logical word j (0..7) inside a 64-value SQ4 chunk */
__host__ __device__ __forceinline__ int sq_cu_wpos(int j) { return 2 * (j & 3) + (j >> 2); }
/* byte offset of the 32-byte piece (row r, chunk c) in a matrix with nch chunks per row */
__host__ __device__ __forceinline__ size_t sq_cu_piece(int r, int c, int nch) {
    return (((size_t)(r >> 5) * (size_t)nch + (size_t)c) << 10) + ((size_t)(r & 31) << 5);
}

/* ---- exact float helpers (FORMAT.md §4.2): the same operations as quantize_act.c ------------ */
#define SQ_CU_RINT_MAGIC 12582912.0f /* 1.5 * 2^23 */
__device__ __forceinline__ float sq_cu_rint_small(float v) {
    return __fsub_rn(__fadd_rn(v, SQ_CU_RINT_MAGIC), SQ_CU_RINT_MAGIC);
}
__device__ __forceinline__ float sq_cu_rint_clamp(float v, float lo, float hi) {
    if (!(v >= lo)) return lo;
    if (v > hi) return hi;
    float r = sq_cu_rint_small(v);
    return r > hi ? hi : r;
}

__device__ __forceinline__ float sq_cu_h2f(uint16_t h) {
#ifdef SQ_CUDA_EMU
    return sq_fp16_to_fp32(h);
#else
    return __half2float(__ushort_as_half(h));
#endif
}
__device__ __forceinline__ uint16_t sq_cu_f2h(float f) {
#ifdef SQ_CUDA_EMU
    return sq_fp32_to_fp16(f);
#else
    return __half_as_ushort(__float2half_rn(f));
#endif
}

/* Four int4 nibbles (low nibbles of the bytes of w) -> four s8 bytes: (n ^ 8) - 8 per byte,
 * done as ((n ^ 8) + 0x78) ^ 0x80 so that no byte borrows from its neighbour. */
__host__ __device__ __forceinline__ uint32_t sq_cu_s4lo(uint32_t w) {
    return (((w & 0x0F0F0F0Fu) ^ 0x08080808u) + 0x78787878u) ^ 0x80808080u;
}
__host__ __device__ __forceinline__ uint32_t sq_cu_s4hi(uint32_t w) { return sq_cu_s4lo(w >> 4); }

/* ---- instruction wrappers ---------------------------------------------------------------- */
#ifdef SQ_CUDA_EMU
inline int sq_emu_nib(uint32_t w, int e, int sgn) {
    int n = (int)((w >> (4 * e)) & 15);
    return sgn && n >= 8 ? n - 16 : n;
}
inline int sq_emu_byte(uint32_t w, int e, int sgn) {
    int n = (int)((w >> (8 * e)) & 255);
    return sgn && n >= 128 ? n - 256 : n;
}
/* D = A·B + C for one m16n8kK tile from the warp's deposited fragments (PTX ISA layouts):
 * 4-bit: A[i][k] in lane (i%8)*4 + (k%32)/8, register 2*(k/32) + (i/8), nibble k%8;
 *        B[k][n] in lane n*4 + (k%32)/8, register k/32, nibble k%8;
 * 8-bit: A[i][k] in lane (i%8)*4 + (k%16)/4, register 2*(k/16) + (i/8), byte k%4;
 *        B[k][n] in lane n*4 + (k%16)/4, register k/16, byte k%4;
 * C/D:   c[e] = element (row gid + 8*(e/2), column 2*(lane%4) + e%2). */
inline void sq_emu_mma(int c[4], const uint32_t *a, int na, const uint32_t *b, int nb, int kdim, int bits, int asgn,
                       int bsgn) {
    uint32_t(*s)[12] = sq_emu_warp_slots();
    int lane = sq_emu_lane();
    for (int i = 0; i < na; i++) s[lane][i] = a[i];
    for (int i = 0; i < nb; i++) s[lane][4 + i] = b[i];
    sq_emu_warp_sync();
    int gid = lane / 4, t4 = lane % 4, d[4];
    for (int e = 0; e < 4; e++) {
        int row = gid + 8 * (e / 2), col = 2 * t4 + (e % 2), sum = 0;
        for (int k = 0; k < kdim; k++) {
            int av, bv;
            if (bits == 4) {
                av = sq_emu_nib(s[(row % 8) * 4 + (k % 32) / 8][2 * (k / 32) + row / 8], k % 8, asgn);
                bv = sq_emu_nib(s[col * 4 + (k % 32) / 8][4 + k / 32], k % 8, bsgn);
            } else {
                av = sq_emu_byte(s[(row % 8) * 4 + (k % 16) / 4][2 * (k / 16) + row / 8], k % 4, asgn);
                bv = sq_emu_byte(s[col * 4 + (k % 16) / 4][4 + k / 16], k % 4, bsgn);
            }
            sum += av * bv;
        }
        d[e] = c[e] + sum;
    }
    sq_emu_warp_sync();
    for (int e = 0; e < 4; e++) c[e] = d[e];
}
#endif

/* m16n8k64, A = s4 weights (rows), B = u4 activations (tokens). */
__device__ __forceinline__ void sq_cu_mma_k64_s4u4(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                   uint32_t b0, uint32_t b1) {
#ifdef SQ_CUDA_EMU
    uint32_t a[4] = {a0, a1, a2, a3}, b[2] = {b0, b1};
    sq_emu_mma(c, a, 4, b, 2, 64, 4, 1, 0);
#else
    asm volatile("mma.sync.aligned.m16n8k64.row.col.s32.s4.u4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}
/* m16n8k32, 4-bit: A = s4 (2 registers), B = u4 (1 register). */
__device__ __forceinline__ void sq_cu_mma_k32_s4u4(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t b0) {
#ifdef SQ_CUDA_EMU
    uint32_t a[2] = {a0, a1}, b[1] = {b0};
    sq_emu_mma(c, a, 2, b, 1, 32, 4, 1, 0);
#else
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s4.u4.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a0), "r"(a1), "r"(b0));
#endif
}
/* m16n8k32, 8-bit: A = s8, B = u8 (SQ4 activations) or s8 (Q8_0 activations). */
template <bool BSIGNED>
__device__ __forceinline__ void sq_cu_mma_k32_s8(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                 uint32_t b0, uint32_t b1) {
#ifdef SQ_CUDA_EMU
    uint32_t a[4] = {a0, a1, a2, a3}, b[2] = {b0, b1};
    sq_emu_mma(c, a, 4, b, 2, 32, 8, 1, BSIGNED);
#else
    if (BSIGNED)
        asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.u8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

/* 4-way byte dot product + c: a signed bytes; b unsigned (BSIGNED false) or signed bytes. */
template <bool BSIGNED>
__device__ __forceinline__ int sq_cu_dp4a(uint32_t a, uint32_t b, int c) {
#ifdef SQ_CUDA_EMU
    for (int e = 0; e < 4; e++) c += sq_emu_byte(a, e, 1) * sq_emu_byte(b, e, BSIGNED);
    return c;
#else
    int d;
    if (BSIGNED)
        asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    else
        asm("dp4a.s32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
#endif
}

/* 16-byte asynchronous global -> shared copy (sm_80+), and its group fences. */
__device__ __forceinline__ void sq_cu_cp16(void *smem, const void *gmem) {
#ifdef SQ_CUDA_EMU
    memcpy(smem, gmem, 16);
#else
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
#endif
}
__device__ __forceinline__ void sq_cu_cp_commit() {
#ifndef SQ_CUDA_EMU
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void sq_cu_cp_wait() {
#ifndef SQ_CUDA_EMU
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

/* Loads through the read-only path; vector loads of 8 and 16 bytes. */
__device__ __forceinline__ uint2 sq_cu_ld8(const void *p) { return *reinterpret_cast<const uint2 *>(p); }
__device__ __forceinline__ uint4 sq_cu_ldg16(const void *p) { return __ldg(reinterpret_cast<const uint4 *>(p)); }

#endif
