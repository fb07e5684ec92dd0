/* mma.cu — the prefill GEMM on integer tensor cores: y = W·x for many tokens.
 *
 * One block computes 128 weight rows × 64 tokens with 8 warps (4 × 2), each warp 32 rows × 32
 * tokens as 2 × 4 mma tiles of 16 rows × 8 tokens (A = weights, B = activations). K advances 128
 * values per stage; cp.async fills two shared-memory stages (double buffering).
 *
 * Exactness: every group's products are summed by the tensor cores into a fresh int32
 * accumulator, which is exact, so acc_g equals the scalar kernel's. The accumulator starts at
 * −z·Σq_w (the zero-point term of FORMAT.md §4.3); where |acc_g| < 2^22 it also starts with the
 * bits of 1.5·2^23, so that reading the sum as a float and subtracting 1.5·2^23 gives (float)acc_g
 * exactly with two full-rate instructions instead of a slow I2F. Then, groups in order:
 * y = y + (float)acc_g · (d_w·d_x) with __fmul_rn/__fadd_rn — the canonical epilogue.
 *
 * Variants (template <WF, AF, K64>):
 *   WF 0 AF U4P: s4 weights × u4 activations, m16n8k64 (K64, G % 64 == 0) or two m16n8k32;
 *   WF 0 AF U8:  weights unpacked to s8 in registers × u8 activations, m16n8k32 (int8 path);
 *   WF 1 AF S8:  Q8_0: s8 × s8, m16n8k32, groups of 32, no zero point.
 */
#include "common.cuh"

#define MAGIC_BITS 0x4B400000 /* bits of 1.5 * 2^23 */

struct mma_params : sq_cu_gemm_params {
    int magic; /* accumulators start with MAGIC_BITS (|acc_g| < 2^22) */
};

template <int WF, int AF>
struct mma_cfg {
    /* Row strides padded so that the 8-byte fragment loads of a half-warp hit 32 distinct banks. */
    static constexpr int A_STRIDE = WF == 0 ? 96 : 160;
    static constexpr int B_STRIDE = AF == SQ_CU_A_U4P ? 96 : 160;
    static constexpr int A_BYTES = SQ_CU_BM * A_STRIDE;
    static constexpr int B_BYTES = SQ_CU_BN * B_STRIDE;
    static constexpr int STAGE = A_BYTES + B_BYTES;
    static constexpr int SMEM = 2 * STAGE;
};

/* Queues stage s (K values [128 s, 128 s + 128)) of the block's tiles into As / Bs. */
template <int WF, int AF>
__device__ __forceinline__ void load_stage(const mma_params &p, uint8_t *As, uint8_t *Bs, int s, int row0, int tok0,
                                           int tid) {
    if (WF == 0) { /* 128 rows × 2 chunks × 2 halves of 16 bytes */
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int u = tid + 256 * i, r = u >> 2, cc = (u >> 1) & 1, hf = u & 1;
            sq_cu_cp16(As + r * 96 + cc * 32 + hf * 16, p.wq + sq_cu_piece(row0 + r, 2 * s + cc, p.nch) + hf * 16);
        }
    } else { /* 128 rows × 4 chunks × 2 halves */
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int u = tid + 256 * i, r = u >> 3, cc = (u >> 1) & 3, hf = u & 1;
            sq_cu_cp16(As + r * 160 + cc * 32 + hf * 16, p.wq + sq_cu_piece(row0 + r, 4 * s + cc, p.nch) + hf * 16);
        }
    }
    if (AF == SQ_CU_A_U4P) { /* 64 tokens × 64 bytes */
        int n = tid >> 2, part = tid & 3;
        sq_cu_cp16(Bs + n * 96 + part * 16, p.aq + (size_t)(tok0 + n) * p.a_row_bytes + (size_t)s * 64 + part * 16);
    } else { /* 64 tokens × 128 bytes */
#pragma unroll
        for (int i = 0; i < 2; i++) {
            int u = tid + 256 * i, n = u >> 3, part = u & 7;
            sq_cu_cp16(Bs + n * 160 + part * 16, p.aq + (size_t)(tok0 + n) * p.a_row_bytes + (size_t)s * 128 + part * 16);
        }
    }
}

/* Half u (32 values) starts a group: accumulators := magic − z·Σq_w. rowb/tokb: this thread's
 * first row and token; its elements are rows rowb + 16 mt + 8 (e/2), tokens tokb + 8 nt + e%2. */
__device__ __forceinline__ void group_start(const mma_params &p, int u, int hpg, int rowb, int tokb,
                                            int (&acc)[2][4][4]) {
    if (u % hpg) return;
    const int g = u / hpg, base = p.magic ? MAGIC_BITS : 0;
    int ws[2][2], z[4][2];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int hh = 0; hh < 2; hh++)
            ws[mt][hh] = p.ws ? __ldg(p.ws + (size_t)g * p.rows_pad + rowb + mt * 16 + hh * 8) : 0;
#pragma unroll
    for (int nt = 0; nt < 4; nt++)
#pragma unroll
        for (int e = 0; e < 2; e++) z[nt][e] = p.az ? __ldg(p.az + (size_t)g * p.tok_cap + tokb + nt * 8 + e) : 0;
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mt][nt][e] = base - z[nt][e & 1] * ws[mt][e >> 1];
}

/* Half u ends a group: y = y + (float)acc · (d_w · d_x), in group order. */
__device__ __forceinline__ void group_end(const mma_params &p, int u, int hpg, int rowb, int tokb,
                                          const int (&acc)[2][4][4], float (&yv)[2][4][4]) {
    if ((u + 1) % hpg) return;
    const int g = u / hpg;
    float dw[2][2], dx[4][2];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int hh = 0; hh < 2; hh++) dw[mt][hh] = __ldg(p.dw + (size_t)g * p.rows_pad + rowb + mt * 16 + hh * 8);
#pragma unroll
    for (int nt = 0; nt < 4; nt++)
#pragma unroll
        for (int e = 0; e < 2; e++) dx[nt][e] = __ldg(p.ad + (size_t)g * p.tok_cap + tokb + nt * 8 + e);
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int a = acc[mt][nt][e];
                float f = p.magic ? __fsub_rn(__int_as_float(a), SQ_CU_RINT_MAGIC) : __int2float_rn(a);
                yv[mt][nt][e] = __fadd_rn(yv[mt][nt][e], __fmul_rn(f, __fmul_rn(dw[mt][e >> 1], dx[nt][e & 1])));
                if (p.acc) {
                    int row = rowb + mt * 16 + (e >> 1) * 8, tok = tokb + nt * 8 + (e & 1);
                    if (row < p.rows && tok < p.n_tok)
                        p.acc[(size_t)tok * p.rows * p.ng + (size_t)row * p.ng + g] = p.magic ? a - MAGIC_BITS : a;
                }
            }
}

/* Half u (32 values) of the s8 paths (the int8 path and Q8_0): the activations' fragments, then
 * 2 × 4 m16n8k32 tiles into the group's accumulators. a: this thread's weight fragments per mt;
 * Bk: its first activation fragment of the half in the stage (tiles nt lie 8 tokens apart). */
template <bool BSIGNED>
__device__ __forceinline__ void half_k32_s8(const mma_params &p, const uint32_t (&a)[2][4], const uint8_t *Bk, int u,
                                            int hpg, int rowb, int tokb, int (&acc)[2][4][4], float (&yv)[2][4][4]) {
    uint2 B[4];
#pragma unroll
    for (int nt = 0; nt < 4; nt++) B[nt] = sq_cu_ld8(Bk + nt * 8 * 160);
    group_start(p, u, hpg, rowb, tokb, acc);
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
            sq_cu_mma_k32_s8<BSIGNED>(acc[mt][nt], a[mt][0], a[mt][1], a[mt][2], a[mt][3], B[nt].x, B[nt].y);
    group_end(p, u, hpg, rowb, tokb, acc, yv);
}

template <int WF, int AF, bool K64>
__global__ __launch_bounds__(256) void k_mma(const mma_params p) {
    using C = mma_cfg<WF, AF>;
    SQ_DYN_SMEM(uint8_t, smem);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gid = lane >> 2, t4 = lane & 3;
    const int wm = warp & 3, wn = warp >> 2;
    const int row0 = blockIdx.x * SQ_CU_BM, tok0 = blockIdx.y * SQ_CU_BN;
    const int nst = (p.K + SQ_CU_BK - 1) / SQ_CU_BK, nh = p.K / 32, hpg = p.G / 32;
    const bool active = row0 + wm * 32 < p.rows && tok0 + wn * 32 < p.n_tok;
    const int rowb = row0 + wm * 32 + gid, tokb = tok0 + wn * 32 + 2 * t4;
    int acc[2][4][4];
    float yv[2][4][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                acc[mt][nt][e] = 0;
                yv[mt][nt][e] = 0.0f;
            }

    load_stage<WF, AF>(p, smem, smem + C::A_BYTES, 0, row0, tok0, tid);
    sq_cu_cp_commit();
    for (int s = 0; s < nst; s++) {
        if (s + 1 < nst) {
            uint8_t *nb = smem + ((s + 1) & 1) * C::STAGE;
            load_stage<WF, AF>(p, nb, nb + C::A_BYTES, s + 1, row0, tok0, tid);
            sq_cu_cp_commit();
            sq_cu_cp_wait<1>();
        } else {
            sq_cu_cp_wait<0>();
        }
        __syncthreads();
        const uint8_t *As = smem + (s & 1) * C::STAGE, *Bs = As + C::A_BYTES;
        if (active) {
#pragma unroll
            for (int ks = 0; ks < 2; ks++) {
                const int u0 = 4 * s + 2 * ks; /* global index of this k64 step's first 32-value half */
                if (u0 >= nh) break;
                if constexpr (WF == 0) {
                    uint2 A[2][2]; /* [mt][row gid / gid+8]: .x = word t4 (half 0), .y = word t4+4 (half 1) */
#pragma unroll
                    for (int mt = 0; mt < 2; mt++) {
                        const int r = wm * 32 + mt * 16 + gid;
                        A[mt][0] = sq_cu_ld8(As + r * 96 + ks * 32 + t4 * 8);
                        A[mt][1] = sq_cu_ld8(As + (r + 8) * 96 + ks * 32 + t4 * 8);
                    }
                    if constexpr (AF == SQ_CU_A_U4P) {
                        uint2 B[4];
#pragma unroll
                        for (int nt = 0; nt < 4; nt++)
                            B[nt] = sq_cu_ld8(Bs + (wn * 32 + nt * 8 + gid) * 96 + ks * 32 + t4 * 8);
                        if constexpr (K64) {
                            group_start(p, u0, hpg, rowb, tokb, acc);
#pragma unroll
                            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                                for (int nt = 0; nt < 4; nt++)
                                    sq_cu_mma_k64_s4u4(acc[mt][nt], A[mt][0].x, A[mt][1].x, A[mt][0].y, A[mt][1].y,
                                                       B[nt].x, B[nt].y);
                            group_end(p, u0 + 1, hpg, rowb, tokb, acc, yv);
                        } else {
#pragma unroll
                            for (int h = 0; h < 2; h++) {
                                const int u = u0 + h;
                                if (u >= nh) break;
                                group_start(p, u, hpg, rowb, tokb, acc);
#pragma unroll
                                for (int mt = 0; mt < 2; mt++)
#pragma unroll
                                    for (int nt = 0; nt < 4; nt++)
                                        sq_cu_mma_k32_s4u4(acc[mt][nt], h ? A[mt][0].y : A[mt][0].x,
                                                           h ? A[mt][1].y : A[mt][1].x, h ? B[nt].y : B[nt].x);
                                group_end(p, u, hpg, rowb, tokb, acc, yv);
                            }
                        }
                    } else { /* int8 path: unpack the weights' nibbles to s8 in registers */
#pragma unroll
                        for (int h = 0; h < 2; h++) {
                            const int u = u0 + h, kc = 2 * ks + h;
                            if (u >= nh) break;
                            uint32_t a[2][4];
#pragma unroll
                            for (int mt = 0; mt < 2; mt++) {
                                const uint32_t w0 = h ? A[mt][0].y : A[mt][0].x, w1 = h ? A[mt][1].y : A[mt][1].x;
                                a[mt][0] = sq_cu_s4lo(w0);
                                a[mt][1] = sq_cu_s4lo(w1);
                                a[mt][2] = sq_cu_s4hi(w0);
                                a[mt][3] = sq_cu_s4hi(w1);
                            }
                            half_k32_s8<false>(p, a, Bs + (wn * 32 + gid) * 160 + kc * 32 + t4 * 8, u, hpg, rowb, tokb,
                                               acc, yv);
                        }
                    }
                } else { /* Q8_0: s8 weights × s8 activations, one group per 32 values */
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const int u = u0 + h, kc = 2 * ks + h;
                        if (u >= nh) break;
                        uint32_t a[2][4]; /* rows gid, gid+8 of bytes 0-3, then of bytes 4-7 */
#pragma unroll
                        for (int mt = 0; mt < 2; mt++) {
                            const int r = wm * 32 + mt * 16 + gid;
                            const uint2 w0 = sq_cu_ld8(As + r * 160 + kc * 32 + t4 * 8),
                                        w1 = sq_cu_ld8(As + (r + 8) * 160 + kc * 32 + t4 * 8);
                            a[mt][0] = w0.x;
                            a[mt][1] = w1.x;
                            a[mt][2] = w0.y;
                            a[mt][3] = w1.y;
                        }
                        half_k32_s8<true>(p, a, Bs + (wn * 32 + gid) * 160 + kc * 32 + t4 * 8, u, hpg, rowb, tokb,
                                          acc, yv);
                    }
                }
            }
        }
        __syncthreads(); /* the next iteration's loads overwrite this stage */
    }
    if (!active || p.acc) return;
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int row = rowb + mt * 16 + (e >> 1) * 8, tok = tokb + nt * 8 + (e & 1);
                if (row < p.rows && tok < p.n_tok)
                    p.y[(size_t)tok * p.ldy + row] = p.bias ? __fadd_rn(yv[mt][nt][e], p.bias[row]) : yv[mt][nt][e];
            }
}

/* A variant's launch: 256 threads, its two stages of dynamic shared memory. */
template <int WF, int AF, bool K64>
static void launch_variant(sq_cuda *c, dim3 grid, const mma_params &p) {
    auto k = k_mma<WF, AF, K64>;
    const int smem = mma_cfg<WF, AF>::SMEM; /* a name: a template-id's comma would split the macro's arguments */
    SQ_LAUNCH(k, grid, 256, smem, c->stream, p);
}

/* Lets a variant have its shared memory, which may exceed the default 48 KB. */
template <int WF, int AF, bool K64>
static cudaError_t allow_smem() {
    auto k = k_mma<WF, AF, K64>;
    return cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, mma_cfg<WF, AF>::SMEM);
}

sq_status sq_cu_prepare_kernels(sq_cuda *c) {
    /* The Q8_0 variant's two stages need 60 KB, above the 48 KB a block gets without asking. */
    SQ_CU_TRY((allow_smem<0, SQ_CU_A_U4P, true>()));
    SQ_CU_TRY((allow_smem<0, SQ_CU_A_U4P, false>()));
    SQ_CU_TRY((allow_smem<0, SQ_CU_A_U8, false>()));
    SQ_CU_TRY((allow_smem<1, SQ_CU_A_S8, false>()));
    return SQ_OK;
}

sq_status sq_cu_launch_mma(sq_cuda *c, const sq_cu_gemm_args *g) {
    const sq_cuda_mat *w = g->w;
    const sq_cuda_act *a = g->a;
    /* |acc_g| <= G · L · 8 (|q_x − z| <= L, |q_w| <= 8); Q8_0: 32 · 127 · 127 */
    const long bound = w->type == SQ_CU_W_SQ4 ? (long)w->G * ((1 << a->bits) - 1) * 8 : 32L * 127 * 127;
    const mma_params p{sq_cu_gemm_params_of(g), bound < (1L << 22)};
    dim3 grid((unsigned)(w->rows_pad / SQ_CU_BM), (unsigned)sq_cu_div_up(a->n_tok, SQ_CU_BN));
    if (w->type == SQ_CU_W_Q8) launch_variant<1, SQ_CU_A_S8, false>(c, grid, p);
    else if (a->fmt == SQ_CU_A_U8) launch_variant<0, SQ_CU_A_U8, false>(c, grid, p);
    else if (w->G % 64 == 0) launch_variant<0, SQ_CU_A_U4P, true>(c, grid, p);
    else launch_variant<0, SQ_CU_A_U4P, false>(c, grid, p);
    SQ_CU_LAUNCHED();
    return SQ_OK;
}
