/* gemv.cu — the decode matmul (1..8 tokens): bandwidth-bound, every weight byte read once.
 *
 * Four lanes (a quad) share a row; a warp covers 8 rows. In iteration i lane q of the quad reads
 * the row's chunk 4i + q (32 bytes: 64 SQ4 values, or a 32-value Q8_0 block), so a warp reads
 * 8 rows × 4 chunks = whole 32-byte sectors of the GPU layout, and computes integer dot products
 * with dp4a on values unpacked to s8 (activations u8 for SQ4, s8 for Q8_0).
 * The float epilogue must add the groups in order (kernels.h): the quad's per-half (or per-block)
 * integer sums are gathered with shuffles and every lane of the quad runs the same ordered loop
 * (integer sums per group, then y = y + (float)acc_g · (d_w·d_x)); lane 0 stores. Any G that is a
 * multiple of 32 works, also groups that span iterations.
 */
#include "common.cuh"

struct gemv_params {
    const uint8_t *wq;
    const float *dw;
    const int32_t *ws;
    int rows, rows_pad, K, G, ng, nch;
    const uint8_t *aq;
    int a_row_bytes;
    const float *ad;
    const int32_t *az;
    int tok_cap, n_tok;
    float *y;
    int ldy;
    const float *bias;
    int32_t *acc;
};

#define FULL 0xffffffffu

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
                for (int h = 0; h < 2; h++) {
                    const uint4 x0 = sq_cu_ldg16(ap + h * 32), x1 = sq_cu_ldg16(ap + h * 32 + 16);
                    const uint32_t xa[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
                    int sum = 0;
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        sum = sq_cu_dp4a<false>(sq_cu_s4lo(wh[h][j]), xa[2 * j], sum);
                        sum = sq_cu_dp4a<false>(sq_cu_s4hi(wh[h][j]), xa[2 * j + 1], sum);
                    }
                    s[t][h] = sum;
                }
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

template <int NT>
__global__ __launch_bounds__(128) void k_gemv_q8(const gemv_params p) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, q = lane & 3;
    const int row = (blockIdx.x * 4 + warp) * 8 + (lane >> 2);
    const int nb = p.K / 32, ni = (nb + 3) / 4;
    float yv[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) yv[t] = 0.0f;
    for (int i = 0; i < ni; i++) {
        const int c = 4 * i + q;
        int s[NT];
#pragma unroll
        for (int t = 0; t < NT; t++) s[t] = 0;
        if (c < nb) {
            const uint8_t *wp = p.wq + sq_cu_piece(row, c, p.nch);
            const uint4 w0 = sq_cu_ldg16(wp), w1 = sq_cu_ldg16(wp + 16);
            const uint32_t wa[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
            for (int t = 0; t < NT; t++) {
                const uint8_t *ap = p.aq + (size_t)t * p.a_row_bytes + (size_t)c * 32;
                const uint4 x0 = sq_cu_ldg16(ap), x1 = sq_cu_ldg16(ap + 16);
                const uint32_t xa[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
                int sum = 0;
#pragma unroll
                for (int j = 0; j < 8; j++) sum = sq_cu_dp4a<true>(wa[j], xa[j], sum);
                s[t] = sum;
            }
        }
#pragma unroll
        for (int qq = 0; qq < 4; qq++) {
            int v[NT];
#pragma unroll
            for (int t = 0; t < NT; t++) v[t] = __shfl_sync(FULL, s[t], (lane & ~3) | qq);
            const int b = 4 * i + qq;
            if (b >= nb) continue;
            const float dw = __ldg(p.dw + (size_t)b * p.rows_pad + row);
#pragma unroll
            for (int t = 0; t < NT; t++)
                yv[t] = __fadd_rn(yv[t],
                                  __fmul_rn(__int2float_rn(v[t]), __fmul_rn(dw, __ldg(p.ad + (size_t)b * p.tok_cap + t))));
        }
    }
    if (q || row >= p.rows) return;
#pragma unroll
    for (int t = 0; t < NT; t++)
        if (t < p.n_tok) p.y[(size_t)t * p.ldy + row] = p.bias ? __fadd_rn(yv[t], p.bias[row]) : yv[t];
}

template <int NT>
static void launch(sq_cuda *c, const gemv_params &p, int q8, unsigned blocks) {
    if (q8) {
        auto k = k_gemv_q8<NT>;
        SQ_LAUNCH(k, blocks, 128, 0, c->stream, p);
    } else {
        auto k = k_gemv_sq4<NT>;
        SQ_LAUNCH(k, blocks, 128, 0, c->stream, p);
    }
}

sq_status sq_cu_launch_gemv(sq_cuda *c, const sq_cu_gemm_args *g) {
    const sq_cuda_mat *w = g->w;
    const sq_cuda_act *a = g->a;
    const int q8 = w->type == SQ_CU_W_Q8;
    gemv_params p;
    p.wq = w->q;
    p.dw = w->dw;
    p.ws = w->ws;
    p.rows = w->rows;
    p.rows_pad = w->rows_pad;
    p.K = w->K;
    p.G = w->G;
    p.ng = w->ng;
    p.nch = q8 ? w->Kp / 32 : w->Kp / 64;
    p.aq = a->q;
    p.a_row_bytes = a->row_bytes;
    p.ad = a->d;
    p.az = a->z;
    p.tok_cap = a->tok_cap;
    p.n_tok = a->n_tok;
    p.y = g->y;
    p.ldy = g->ldy;
    p.bias = g->bias;
    p.acc = g->acc;
    const unsigned blocks = (unsigned)sq_cu_div_up(w->rows, 32); /* 4 warps × 8 rows */
    if (a->n_tok <= 1) launch<1>(c, p, q8, blocks);
    else if (a->n_tok <= 2) launch<2>(c, p, q8, blocks);
    else if (a->n_tok <= 4) launch<4>(c, p, q8, blocks);
    else launch<8>(c, p, q8, blocks);
    SQ_CU_LAUNCHED();
    return SQ_OK;
}
