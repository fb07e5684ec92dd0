/* layer.cu — the non-matmul parts of a block on the GPU: RMSNorm, RoPE, SiLU·mul, residual add,
 * the f16 KV cache and causal GQA attention. Same formulas as norm.c, rope.c, kvcache.c and
 * attention.c; RoPE, SiLU·mul, add and the cache stores use the CPU's exact operations, the
 * reductions (RMSNorm's sum of squares, attention) run in parallel order. */
#include "common.cuh"

#include <math.h>
#include <stdlib.h>

static unsigned grid_for(size_t n, int threads) {
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b > 65535u * 16 ? 65535u * 16 : b); /* kernels below loop over the rest */
}

/* ---- RMSNorm: sum of squares in double (norm.c), one block per token ----------------------- */
__global__ __launch_bounds__(256) void k_rmsnorm(const float *x, int ldx, const float *w, float *y, int ldy, int n,
                                                 float eps) {
    __shared__ double red[256];
    const int t = blockIdx.x, tid = threadIdx.x;
    const float *xr = x + (size_t)t * ldx;
    double ss = 0;
    for (int i = tid; i < n; i += 256) ss += (double)xr[i] * xr[i];
    red[tid] = ss;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if (tid < s) red[tid] += red[tid + s];
        __syncthreads();
    }
    const float scale = (float)(1.0 / sqrt(red[0] / n + (double)eps));
    float *yr = y + (size_t)t * ldy;
    for (int i = tid; i < n; i += 256) yr[i] = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);
}

extern "C" sq_status sq_cuda_rmsnorm(sq_cuda *c, const float *x, int ldx, const float *w, float *y, int ldy, int n_tok,
                                     int n, float eps) {
    if (!x || !w || !y || n_tok < 1 || n < 1 || ldx < n || ldy < n)
        return sq_set_error(SQ_ERR_ARG, "sq_cuda_rmsnorm: bad arguments (n_tok %d, n %d)", n_tok, n);
    SQ_LAUNCH(k_rmsnorm, (unsigned)n_tok, 256, 0, c->stream, x, ldx, w, y, ldy, n, eps);
    SQ_CU_LAUNCHED();
    return SQ_OK;
}

/* ---- RoPE: one thread per rotated pair ---------------------------------------------------- */
__global__ void k_rope(const float *cs, int half, int mode, float *x, int ldx, int n_tok, int n_heads, int hd,
                       int pos0) {
    const size_t total = (size_t)n_tok * n_heads * half;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(idx % half), h = (int)(idx / half % n_heads), t = (int)(idx / ((size_t)half * n_heads));
        const float *cp = cs + ((size_t)(pos0 + t) * half + i) * 2;
        const float co = cp[0], si = cp[1];
        const int a = mode == SQ_ROPE_NEOX ? i : 2 * i, b = mode == SQ_ROPE_NEOX ? i + half : 2 * i + 1;
        float *xp = x + (size_t)t * ldx + (size_t)h * hd;
        const float x0 = xp[a], x1 = xp[b];
        xp[a] = __fsub_rn(__fmul_rn(x0, co), __fmul_rn(x1, si));
        xp[b] = __fadd_rn(__fmul_rn(x0, si), __fmul_rn(x1, co));
    }
}

extern "C" sq_status sq_cuda_rope(sq_cuda *c, const float *cs, int n_ctx, int n_rot, int mode, float *x, int ldx,
                                  int n_tok, int n_heads, int head_dim, int pos0) {
    if (!cs || !x || n_tok < 1 || n_heads < 1 || n_rot < 2 || n_rot % 2 || n_rot > head_dim ||
        ldx < n_heads * head_dim || pos0 < 0 || pos0 + n_tok > n_ctx || (mode != SQ_ROPE_NORMAL && mode != SQ_ROPE_NEOX))
        return sq_set_error(SQ_ERR_ARG, "sq_cuda_rope: bad arguments (n_rot %d, head_dim %d, positions %d..%d of %d)",
                            n_rot, head_dim, pos0, pos0 + n_tok, n_ctx);
    const int half = n_rot / 2;
    SQ_LAUNCH(k_rope, grid_for((size_t)n_tok * n_heads * half, 256), 256, 0, c->stream, cs, half, mode, x, ldx, n_tok,
              n_heads, head_dim, pos0);
    SQ_CU_LAUNCHED();
    return SQ_OK;
}

/* ---- elementwise ---------------------------------------------------------------------------- */
__global__ void k_silu_mul(float *g, int ldg, const float *u, int ldu, int n_tok, int n) {
    const size_t total = (size_t)n_tok * n;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        const size_t t = idx / n, i = idx % n;
        float *gp = g + t * ldg + i;
        const float v = *gp;
        *gp = __fmul_rn(__fdiv_rn(v, __fadd_rn(1.0f, expf(-v))), u[t * ldu + i]);
    }
}

extern "C" sq_status sq_cuda_silu_mul(sq_cuda *c, float *g, int ldg, const float *u, int ldu, int n_tok, int n) {
    if (!g || !u || n_tok < 1 || n < 1 || ldg < n || ldu < n) return sq_set_error(SQ_ERR_ARG, "sq_cuda_silu_mul: bad arguments");
    SQ_LAUNCH(k_silu_mul, grid_for((size_t)n_tok * n, 256), 256, 0, c->stream, g, ldg, u, ldu, n_tok, n);
    SQ_CU_LAUNCHED();
    return SQ_OK;
}

__global__ void k_add(float *x, int ldx, const float *y, int ldy, int n_tok, int n) {
    const size_t total = (size_t)n_tok * n;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        const size_t t = idx / n, i = idx % n;
        x[t * ldx + i] = __fadd_rn(x[t * ldx + i], y[t * ldy + i]);
    }
}

extern "C" sq_status sq_cuda_add(sq_cuda *c, float *x, int ldx, const float *y, int ldy, int n_tok, int n) {
    if (!x || !y || n_tok < 1 || n < 1 || ldx < n || ldy < n) return sq_set_error(SQ_ERR_ARG, "sq_cuda_add: bad arguments");
    SQ_LAUNCH(k_add, grid_for((size_t)n_tok * n, 256), 256, 0, c->stream, x, ldx, y, ldy, n_tok, n);
    SQ_CU_LAUNCHED();
    return SQ_OK;
}

/* ---- KV cache ------------------------------------------------------------------------------- */
extern "C" sq_status sq_cuda_kv_create(sq_cuda *c, int n_layer, int n_kv_head, int head_dim, int n_ctx, sq_cuda_kv **out) {
    *out = NULL;
    if (n_layer < 1 || n_kv_head < 1 || head_dim < 8 || head_dim % 8 || head_dim > 256 || n_ctx < 1)
        return sq_set_error(SQ_ERR_ARG, "CUDA KV cache: bad shape (layers %d, kv heads %d, head_dim %d (8..256, a multiple "
                            "of 8), n_ctx %d)", n_layer, n_kv_head, head_dim, n_ctx);
    sq_cuda_kv *kv = (sq_cuda_kv *)calloc(1, sizeof *kv);
    if (!kv) return sq_set_error(SQ_ERR_NOMEM, "out of memory");
    kv->n_layer = n_layer;
    kv->n_kv_head = n_kv_head;
    kv->head_dim = head_dim;
    kv->n_ctx = n_ctx;
    size_t bytes = (size_t)n_layer * n_kv_head * n_ctx * head_dim * sizeof(uint16_t);
    kv->k = (uint16_t *)sq_cuda_alloc(c, bytes);
    kv->v = kv->k ? (uint16_t *)sq_cuda_alloc(c, bytes) : NULL;
    if (!kv->v) {
        sq_status st = sq_last_status();
        sq_cuda_kv_free(c, kv);
        return st;
    }
    *out = kv;
    return SQ_OK;
}

extern "C" void sq_cuda_kv_free(sq_cuda *c, sq_cuda_kv *kv) {
    if (!kv) return;
    sq_cuda_free(c, kv->k);
    sq_cuda_free(c, kv->v);
    free(kv);
}

extern "C" const uint16_t *sq_cuda_kv_k(const sq_cuda_kv *kv) { return kv ? kv->k : NULL; }
extern "C" const uint16_t *sq_cuda_kv_v(const sq_cuda_kv *kv) { return kv ? kv->v : NULL; }

__global__ void k_kv_store(uint16_t *K, uint16_t *V, int n_kv_head, int n_ctx, int hd, int layer, const float *k,
                           int ldk, const float *v, int ldv, int n_tok, int pos0) {
    const int width = n_kv_head * hd;
    const size_t total = (size_t)n_tok * width;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        const int t = (int)(idx / width), j = (int)(idx % width), h = j / hd, i = j % hd;
        const size_t o = (((size_t)layer * n_kv_head + h) * n_ctx + pos0 + t) * hd + i;
        K[o] = sq_cu_f2h(k[(size_t)t * ldk + j]);
        V[o] = sq_cu_f2h(v[(size_t)t * ldv + j]);
    }
}

extern "C" sq_status sq_cuda_kv_store(sq_cuda *c, sq_cuda_kv *kv, int layer, const float *k, int ldk, const float *v,
                                      int ldv, int n_tok, int pos0) {
    const int width = kv ? kv->n_kv_head * kv->head_dim : 0;
    if (!kv || !k || !v || layer < 0 || layer >= kv->n_layer || n_tok < 1 || pos0 < 0 || pos0 + n_tok > kv->n_ctx ||
        ldk < width || ldv < width)
        return sq_set_error(SQ_ERR_ARG, "sq_cuda_kv_store: bad arguments (layer %d, positions %d..%d)", layer, pos0,
                            pos0 + n_tok);
    SQ_LAUNCH(k_kv_store, grid_for((size_t)n_tok * width, 256), 256, 0, c->stream, kv->k, kv->v, kv->n_kv_head,
              kv->n_ctx, kv->head_dim, layer, k, ldk, v, ldv, n_tok, pos0);
    SQ_CU_LAUNCHED();
    return SQ_OK;
}

/* ---- attention: one block per (query head, token), positions in tiles of AT with an online
 * softmax (running max and sum, rescaled per tile); scores one position per thread, the weighted
 * sum of V one dimension per thread. Not bit-exact with the CPU (different order, FMAs), so the
 * dot products use explicit fused multiply-adds. ------------------------------------------ */
#define AT 128

__global__ __launch_bounds__(AT) void k_attention(const uint16_t *Kc, const uint16_t *Vc, int n_kv_head, int n_ctx,
                                                  int hd, int layer, const float *q, int ldq, float *out, int ldo,
                                                  int pos0, int group, float scale) {
    __shared__ float qs[256], sc[AT], red[AT / 32];
    const int h = blockIdx.x, t = blockIdx.y, tid = threadIdx.x, lane = tid & 31;
    const size_t base = ((size_t)layer * n_kv_head + h / group) * n_ctx * hd;
    for (int i = tid; i < hd; i += AT) qs[i] = q[(size_t)t * ldq + (size_t)h * hd + i];
    __syncthreads();
    const int n_pos = pos0 + t + 1;
    float o[2] = {0.0f, 0.0f}, m = -INFINITY, l = 0.0f;
    for (int p0 = 0; p0 < n_pos; p0 += AT) {
        const int np = n_pos - p0 < AT ? n_pos - p0 : AT;
        float s = -INFINITY;
        if (tid < np) {
            const uint16_t *kr = Kc + base + (size_t)(p0 + tid) * hd;
            float acc = 0.0f;
            for (int i = 0; i < hd; i += 8) {
                const uint4 v = sq_cu_ldg16(kr + i);
                const uint32_t wv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int e = 0; e < 8; e++)
                    acc = __fmaf_rn(qs[i + e], sq_cu_h2f((uint16_t)(wv[e / 2] >> (16 * (e % 2)))), acc);
            }
            s = __fmul_rn(acc, scale);
        }
        float mx = s;
        for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        if (lane == 0) red[tid / 32] = mx;
        __syncthreads();
        for (int w = 0; w < AT / 32; w++) mx = fmaxf(mx, red[w]);
        const float m_new = fmaxf(m, mx), alpha = expf(m - m_new);
        sc[tid] = tid < np ? expf(s - m_new) : 0.0f;
        __syncthreads();
        float psum = 0.0f;
        for (int i = 0; i < np; i++) psum = __fadd_rn(psum, sc[i]);
        l = __fadd_rn(__fmul_rn(l, alpha), psum);
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int d = tid + r * AT;
            if (d >= hd) continue;
            float acc = __fmul_rn(o[r], alpha);
            const uint16_t *vp = Vc + base + (size_t)p0 * hd + d;
            for (int i = 0; i < np; i++) acc = __fmaf_rn(sc[i], sq_cu_h2f(vp[(size_t)i * hd]), acc);
            o[r] = acc;
        }
        m = m_new;
        __syncthreads(); /* sc and red are rewritten by the next tile */
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int d = tid + r * AT;
        if (d < hd) out[(size_t)t * ldo + (size_t)h * hd + d] = __fdiv_rn(o[r], l);
    }
}

extern "C" sq_status sq_cuda_attention(sq_cuda *c, const sq_cuda_kv *kv, int layer, const float *q, int ldq, float *out,
                                       int ldo, int n_tok, int pos0, int n_head, float scale) {
    if (!kv || !q || !out || layer < 0 || layer >= kv->n_layer || n_tok < 1 || n_tok > 65535 || pos0 < 0 ||
        pos0 + n_tok > kv->n_ctx || n_head < kv->n_kv_head || n_head % kv->n_kv_head || ldq < n_head * kv->head_dim || ldo < n_head * kv->head_dim)
        return sq_set_error(SQ_ERR_ARG, "sq_cuda_attention: bad arguments (layer %d, heads %d/%d, positions %d..%d)",
                            layer, n_head, kv->n_kv_head, pos0, pos0 + n_tok);
    dim3 grid((unsigned)n_head, (unsigned)n_tok);
    SQ_LAUNCH(k_attention, grid, AT, 0, c->stream, kv->k, kv->v, kv->n_kv_head, kv->n_ctx, kv->head_dim, layer, q, ldq,
              out, ldo, pos0, n_head / kv->n_kv_head, scale);
    SQ_CU_LAUNCHED();
    return SQ_OK;
}
