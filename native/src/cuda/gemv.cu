/* gemv.cu — the decode matmul (1..8 tokens): bandwidth-bound, every weight byte read once.
 *
 * Integer dot products use dp4a on weights unpacked to s8 (activations u8 for SQ4, s8 for Q8_0).
 * The float epilogue must add the groups of a row in order (kernels.h), which is what shapes the
 * two kernels:
 *  - k_gemv_local (Q8_0, and SQ4 with G = 32, 64, 128 or 256): 8 lanes share a row (a warp covers
 *    4 rows); in super-iteration i lane q reads the row's 4 consecutive chunks starting at
 *    4(8i + q) (32 bytes each: 64 SQ4 values or a 32-value Q8_0 block). Every group then lies
 *    inside one lane, which computes its float term (float)acc_g · (d_w·d_x) alone; only those
 *    terms are passed around (shuffles) so that every lane adds them to y in group order. Eight
 *    16-byte loads in flight per lane keep enough bytes moving to saturate the memory.
 *  - k_gemv_sq4 (any G, e.g. per-row groups): 4 lanes share a row, one chunk per lane per
 *    iteration; the per-half integer sums are gathered and every lane of the quad runs the same
 *    ordered loop over halves (groups may span lanes and iterations).
 * Lane 0 of a row stores y (+ bias).
 */
#include "common.cuh"

typedef sq_cu_gemm_params gemv_params;

#define FULL 0xffffffffu

/* Integer dot product of 32 SQ4 values: wh, the weights' four words of one half of a chunk (s4
 * nibbles, unpacked to s8 here), × 32 u8 activations at ap. */
__device__ __forceinline__ int dot_s4u8_32(const uint32_t (&wh)[4], const uint8_t *ap) {
    const uint4 x0 = sq_cu_ldg16(ap), x1 = sq_cu_ldg16(ap + 16);
    const uint32_t xa[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
    int sum = 0;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        sum = sq_cu_dp4a<false>(sq_cu_s4lo(wh[j]), xa[2 * j], sum);
        sum = sq_cu_dp4a<false>(sq_cu_s4hi(wh[j]), xa[2 * j + 1], sum);
    }
    return sum;
}

template <int NT>
__global__ __launch_bounds__(128) void k_gemv_sq4(const gemv_params p) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, q = lane & 3;
    const int row = (blockIdx.x * 4 + warp) * 8 + (lane >> 2); /* < rows_pad */
    const int ncv = (p.K + 63) / 64, nh = p.K / 32, hpg = p.G / 32, ni = (ncv + 3) / 4;
    int acc[NT];
    float yv[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        acc[t] = 0;
        yv[t] = 0.0f;
    }
    for (int i = 0; i < ni; i++) {
        const int c = 4 * i + q;
        int s[NT][2];
#pragma unroll
        for (int t = 0; t < NT; t++) s[t][0] = s[t][1] = 0;
        if (c < ncv) {
            const uint8_t *wp = p.wq + sq_cu_piece(row, c, p.nch);
            const uint4 w0 = sq_cu_ldg16(wp), w1 = sq_cu_ldg16(wp + 16);
            /* logical words 0..3 (half 0) sit at positions 0,2,4,6; words 4..7 at 1,3,5,7 */
            const uint32_t wh[2][4] = {{w0.x, w0.z, w1.x, w1.z}, {w0.y, w0.w, w1.y, w1.w}};
#pragma unroll
            for (int t = 0; t < NT; t++) {
                const uint8_t *ap = p.aq + (size_t)t * p.a_row_bytes + (size_t)c * 64;
#pragma unroll
                for (int h = 0; h < 2; h++) s[t][h] = dot_s4u8_32(wh[h], ap + h * 32);
            }
        }
#pragma unroll
        for (int qq = 0; qq < 4; qq++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int v[NT];
#pragma unroll
                for (int t = 0; t < NT; t++) v[t] = __shfl_sync(FULL, s[t][h], (lane & ~3) | qq);
                const int u = 8 * i + 2 * qq + h; /* the half these sums cover */
                if (u >= nh) continue;
#pragma unroll
                for (int t = 0; t < NT; t++) acc[t] += v[t];
                if ((u + 1) % hpg) continue;
                const int g = u / hpg;
                const int32_t ws = __ldg(p.ws + (size_t)g * p.rows_pad + row);
                const float dw = __ldg(p.dw + (size_t)g * p.rows_pad + row);
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const int a = acc[t] - __ldg(p.az + (size_t)g * p.tok_cap + t) * ws;
                    const float dx = __ldg(p.ad + (size_t)g * p.tok_cap + t);
                    yv[t] = __fadd_rn(yv[t], __fmul_rn(__int2float_rn(a), __fmul_rn(dw, dx)));
                    if (p.acc && q == 0 && row < p.rows && t < p.n_tok)
                        p.acc[(size_t)t * p.rows * p.ng + (size_t)row * p.ng + g] = a;
                    acc[t] = 0;
                }
            }
    }
    if (q || row >= p.rows || p.acc) return;
#pragma unroll
    for (int t = 0; t < NT; t++)
        if (t < p.n_tok) p.y[(size_t)t * p.ldy + row] = p.bias ? __fadd_rn(yv[t], p.bias[row]) : yv[t];
}

#define LPR 8 /* lanes per row */
#define UNR 4 /* consecutive chunks per lane and super-iteration */

/* HPG: 32-value halves per group (SQ4: G/32 = 1, 2, 4, 8); Q8: blocks of 32 (HPG 1, chunks of 32). */
template <int NT, int HPG, bool Q8>
__global__ __launch_bounds__(128) void k_gemv_local(const gemv_params p) {
    constexpr int HPC = Q8 ? 1 : 2;            /* halves (or blocks) per chunk */
    constexpr int NGL = UNR * HPC / HPG;       /* groups per lane and super-iteration */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, q = lane % LPR, base = lane - q;
    const int row = (blockIdx.x * 4 + warp) * (32 / LPR) + lane / LPR; /* < rows_pad */
    const int ncv = Q8 ? p.K / 32 : (p.K + 63) / 64, ng = p.ng, ns = (ncv + LPR * UNR - 1) / (LPR * UNR);
    float yv[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) yv[t] = 0.0f;
    for (int i = 0; i < ns; i++) {
        const int c0 = (i * LPR + q) * UNR, g0 = c0 * HPC / HPG; /* first chunk, first group */
        uint4 w[UNR][2];
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            if (c0 + u < ncv) {
                const uint8_t *wp = p.wq + sq_cu_piece(row, c0 + u, p.nch);
                w[u][0] = sq_cu_ldg16(wp);
                w[u][1] = sq_cu_ldg16(wp + 16);
            } else {
                w[u][0] = w[u][1] = make_uint4(0, 0, 0, 0);
            }
        }
        float pg[NT][NGL];
#pragma unroll
        for (int t = 0; t < NT; t++) {
            int acc[NGL];
#pragma unroll
            for (int j = 0; j < NGL; j++) acc[j] = 0;
#pragma unroll
            for (int u = 0; u < UNR; u++) {
                if (c0 + u >= ncv) continue;
                const uint8_t *ap = p.aq + (size_t)t * p.a_row_bytes + (size_t)(c0 + u) * (Q8 ? 32 : 64);
                if (Q8) {
                    const uint4 x0 = sq_cu_ldg16(ap), x1 = sq_cu_ldg16(ap + 16);
                    const uint32_t wa[8] = {w[u][0].x, w[u][0].y, w[u][0].z, w[u][0].w,
                                            w[u][1].x, w[u][1].y, w[u][1].z, w[u][1].w};
                    const uint32_t xa[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
                    int sum = 0;
#pragma unroll
                    for (int j = 0; j < 8; j++) sum = sq_cu_dp4a<true>(wa[j], xa[j], sum);
                    acc[u] += sum;
                } else {
                    /* logical words 0..3 (half 0) at positions 0,2,4,6; words 4..7 at 1,3,5,7 */
                    const uint32_t wh[2][4] = {{w[u][0].x, w[u][0].z, w[u][1].x, w[u][1].z},
                                               {w[u][0].y, w[u][0].w, w[u][1].y, w[u][1].w}};
#pragma unroll
                    for (int h = 0; h < 2; h++) acc[(2 * u + h) / HPG] += dot_s4u8_32(wh[h], ap + h * 32);
                }
            }
            /* this lane's groups: float terms (and exact sums for the tests) */
#pragma unroll
            for (int j = 0; j < NGL; j++) {
                const int g = g0 + j;
                pg[t][j] = 0.0f;
                if (g >= ng) continue;
                const size_t wi = (size_t)g * p.rows_pad + row, ai = (size_t)g * p.tok_cap + t;
                const int a = Q8 ? acc[j] : acc[j] - __ldg(p.az + ai) * __ldg(p.ws + wi);
                pg[t][j] = __fmul_rn(__int2float_rn(a), __fmul_rn(__ldg(p.dw + wi), __ldg(p.ad + ai)));
                if (!Q8 && p.acc && row < p.rows && t < p.n_tok)
                    p.acc[(size_t)t * p.rows * p.ng + (size_t)row * p.ng + g] = a;
            }
        }
        /* y = y + term, groups in order: lane 0's groups, then lane 1's, ... */
#pragma unroll
        for (int qq = 0; qq < LPR; qq++)
#pragma unroll
            for (int j = 0; j < NGL; j++) {
                const int g = (i * LPR + qq) * UNR * HPC / HPG + j;
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const float v = __shfl_sync(FULL, pg[t][j], base + qq);
                    if (g < ng) yv[t] = __fadd_rn(yv[t], v);
                }
            }
    }
    if (q || row >= p.rows || p.acc) return;
#pragma unroll
    for (int t = 0; t < NT; t++)
        if (t < p.n_tok) p.y[(size_t)t * p.ldy + row] = p.bias ? __fadd_rn(yv[t], p.bias[row]) : yv[t];
}

template <int NT>
static void launch(sq_cuda *c, const gemv_params &p, int q8) {
    const unsigned local_blocks = (unsigned)sq_cu_div_up(p.rows, 4 * (32 / LPR));
    const unsigned quad_blocks = (unsigned)sq_cu_div_up(p.rows, 32); /* 4 warps × 8 rows */
    if (q8) {
        auto k = k_gemv_local<NT, 1, true>;
        SQ_LAUNCH(k, local_blocks, 128, 0, c->stream, p);
        return;
    }
    switch (p.G) {
    case 32: {
        auto k = k_gemv_local<NT, 1, false>;
        SQ_LAUNCH(k, local_blocks, 128, 0, c->stream, p);
        break;
    }
    case 64: {
        auto k = k_gemv_local<NT, 2, false>;
        SQ_LAUNCH(k, local_blocks, 128, 0, c->stream, p);
        break;
    }
    case 128: {
        auto k = k_gemv_local<NT, 4, false>;
        SQ_LAUNCH(k, local_blocks, 128, 0, c->stream, p);
        break;
    }
    case 256: {
        auto k = k_gemv_local<NT, 8, false>;
        SQ_LAUNCH(k, local_blocks, 128, 0, c->stream, p);
        break;
    }
    default: {
        auto k = k_gemv_sq4<NT>;
        SQ_LAUNCH(k, quad_blocks, 128, 0, c->stream, p);
    }
    }
}

sq_status sq_cu_launch_gemv(sq_cuda *c, const sq_cu_gemm_args *g) {
    const sq_cuda_act *a = g->a;
    const int q8 = g->w->type == SQ_CU_W_Q8;
    const gemv_params p = sq_cu_gemm_params_of(g);
    if (a->n_tok <= 1) launch<1>(c, p, q8);
    else if (a->n_tok <= 2) launch<2>(c, p, q8);
    else if (a->n_tok <= 4) launch<4>(c, p, q8);
    else launch<8>(c, p, q8);
    SQ_CU_LAUNCHED();
    return SQ_OK;
}
