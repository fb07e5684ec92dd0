/* quantize.cu — activation quantization on the GPU, bit-identical to quantize_act.c.
 *
 * SQ4 activations (FORMAT.md §4.1–4.2): one block per (token, chunk of groups). The chunk is
 * copied to shared memory, the Walsh–Hadamard butterfly runs there stage by stage (each stage's
 * pairs are independent, so the parallel butterfly performs exactly the scalar one's additions),
 * then a team of threads per group finds min/max (order-free: min and max of the same numbers, NaN
 * skipped as the scalar loop skips it), and every value is rounded with the scalar code's
 * operations (__fmul_rn, the 1.5·2^23 rounding trick, same clamps).
 * Q8_0 activations (§4.5): one warp per block of 32.
 */
#include "common.cuh"

#include <stdlib.h>

#define QT 256 /* threads per quantization block */

/* Groups per block: a power of two with gpc*G <= 1024 (one group when G > 512). */
static int groups_per_chunk(int G) {
    int g = 1;
    while (g * 2 * G <= 1024 && g < 32) g *= 2;
    return g;
}

template <int FMT>
__global__ __launch_bounds__(QT) void k_quant_sq4(const float *x, int ldx, int K, int G, int gpc, float L, int wht,
                                                  uint8_t *q, int row_bytes, float *dout, int32_t *zout, int tok_cap) {
    SQ_DYN_SMEM(float, sm);
    __shared__ float red_mn[QT / 32], red_mx[QT / 32];
    const int t = blockIdx.y, tid = threadIdx.x;
    const int ng = K / G, g0 = blockIdx.x * gpc, ngc = ng - g0 < gpc ? ng - g0 : gpc, n = ngc * G;
    const float *xr = x + (size_t)t * ldx + (size_t)g0 * G;
    for (int e = tid; e < n; e += QT) sm[e] = xr[e];
    __syncthreads();
    if (wht) {
        for (int h = 1; h < G; h *= 2) {
            for (int p = tid; p < n / 2; p += QT) {
                int e = (p / h) * 2 * h + (p % h);
                float a = sm[e], b = sm[e + h];
                sm[e] = __fadd_rn(a, b);
                sm[e + h] = __fsub_rn(a, b);
            }
            __syncthreads();
        }
    }
    /* team tm of T threads handles group g0 + tm */
    const int T = QT / gpc, tm = tid / T, li = tid % T;
    float mn = 0.0f, mx = 0.0f;
    if (tm < ngc)
        for (int o = li; o < G; o += T) {
            float v = sm[tm * G + o];
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
    for (int off = (T < 32 ? T : 32) / 2; off > 0; off >>= 1) {
        float a = __shfl_xor_sync(0xffffffffu, mn, off), b = __shfl_xor_sync(0xffffffffu, mx, off);
        mn = a < mn ? a : mn;
        mx = b > mx ? b : mx;
    }
    if (T > 32) { /* teams wider than a warp: combine the warps' results */
        if (tid % 32 == 0) {
            red_mn[tid / 32] = mn;
            red_mx[tid / 32] = mx;
        }
        __syncthreads();
        const int w0 = tm * (T / 32);
        mn = red_mn[w0];
        mx = red_mx[w0];
        for (int i = 1; i < T / 32; i++) {
            mn = red_mn[w0 + i] < mn ? red_mn[w0 + i] : mn;
            mx = red_mx[w0 + i] > mx ? red_mx[w0 + i] : mx;
        }
    }
    const float d = __fdiv_rn(__fsub_rn(mx, mn), L);
    const float id = d > 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
    const float zf = sq_cu_rint_clamp(__fmul_rn(-mn, id), 0.0f, L);
    const int g = g0 + tm;
    if (tm < ngc) {
        if (li == 0) {
            dout[(size_t)g * tok_cap + t] = d;
            zout[(size_t)g * tok_cap + t] = (int32_t)zf;
        }
        uint8_t *qr = q + (size_t)t * row_bytes;
        for (int o = li; o < G; o += T) {
            float r = __fadd_rn(sq_cu_rint_clamp(__fmul_rn(sm[tm * G + o], id), -L, L), zf);
            r = r < 0.0f ? 0.0f : (r > L ? L : r);
            if (FMT == SQ_CU_A_U8) qr[(size_t)g * G + o] = (uint8_t)r;
            else sm[tm * G + o] = r; /* packed below, once the whole chunk is done */
        }
    }
    if (FMT == SQ_CU_A_U4P) {
        __syncthreads();
        uint8_t *qr = q + (size_t)t * row_bytes;
        for (int m = tid; m < n / 8; m += QT) {
            int k = g0 * G + 8 * m, c = k / 64, j = (k % 64) / 8;
            uint32_t w = 0;
            for (int b = 0; b < 4; b++) {
                uint32_t lo = (uint32_t)sm[8 * m + b], hi = (uint32_t)sm[8 * m + 4 + b];
                w |= (lo | (hi << 4)) << (8 * b);
            }
            *(uint32_t *)(qr + (size_t)c * 32 + 4 * sq_cu_wpos(j)) = w;
        }
    }
}

/* One warp per block of 32 values: d = amax/127, q = rint(v · (1/d)) clamped to ±127. */
__global__ __launch_bounds__(256) void k_quant_q8(const float *x, int ldx, int K, int8_t *q, int row_bytes, float *dout,
                                                  int tok_cap) {
    const int t = blockIdx.y, lane = threadIdx.x % 32, b = blockIdx.x * 8 + threadIdx.x / 32;
    if (b >= K / 32) return; /* whole warps only: no barrier below */
    float v = x[(size_t)t * ldx + (size_t)b * 32 + lane], a = fabsf(v), amax = a > 0.0f ? a : 0.0f;
    for (int off = 16; off > 0; off >>= 1) {
        float o = __shfl_xor_sync(0xffffffffu, amax, off);
        amax = o > amax ? o : amax;
    }
    const float d = __fdiv_rn(amax, 127.0f), id = d > 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
    q[(size_t)t * row_bytes + (size_t)b * 32 + lane] = (int8_t)sq_cu_rint_clamp(__fmul_rn(v, id), -127.0f, 127.0f);
    if (lane == 0) dout[(size_t)b * tok_cap + t] = d;
}

/* Back to the CPU layout (tests): q as one byte per value, d and z token-major. */
__global__ void k_act_to_cpu(const sq_cuda_act a, uint8_t *q, float *d, int32_t *z) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int K = a.K, t = (int)(idx / K), k = (int)(idx % K);
    if (t >= a.n_tok) return;
    const uint8_t *row = a.q + (size_t)t * a.row_bytes;
    uint8_t v;
    if (a.fmt == SQ_CU_A_U4P) {
        int c = k / 64, r = k % 64, j = r / 8, e = r % 8;
        uint8_t byte = row[c * 32 + 4 * sq_cu_wpos(j) + (e & 3)];
        v = e < 4 ? (byte & 15) : (byte >> 4);
    } else {
        v = row[k];
    }
    q[idx] = v;
    if (k % a.G == 0) {
        int g = k / a.G;
        d[(size_t)t * a.ng + g] = a.d[(size_t)g * a.tok_cap + t];
        if (z) z[(size_t)t * a.ng + g] = a.z[(size_t)g * a.tok_cap + t];
    }
}

/* Dynamic shared memory the SQ4 quantizer may use: the opt-in limit less room for its static
 * arrays (CUDA refuses a dynamic limit that leaves no room for them). */
static size_t quant_smem_limit(const sq_cuda *c) { return c->smem_optin > 2048 ? c->smem_optin - 1024 : 0; }

sq_status sq_cu_prepare_quantize(sq_cuda *c) {
    /* A per-row group (G = K) may need more than the default 48 KB of shared memory. */
    int lim = (int)quant_smem_limit(c);
    SQ_CU_TRY(cudaFuncSetAttribute(k_quant_sq4<SQ_CU_A_U8>, cudaFuncAttributeMaxDynamicSharedMemorySize, lim));
    SQ_CU_TRY(cudaFuncSetAttribute(k_quant_sq4<SQ_CU_A_U4P>, cudaFuncAttributeMaxDynamicSharedMemorySize, lim));
    return SQ_OK;
}

extern "C" sq_status sq_cuda_act_create(sq_cuda *c, int kind, int max_tok, int K, int G, int bits, sq_cuda_act **out) {
    *out = NULL;
    if (kind != SQ_CUDA_ACT_SQ4 && kind != SQ_CUDA_ACT_Q8)
        return sq_set_error(SQ_ERR_ARG, "activation kind must be %d (SQ4) or %d (Q8_0), got %d", SQ_CUDA_ACT_SQ4,
                            SQ_CUDA_ACT_Q8, kind);
    if (max_tok < 1 || max_tok > 65535) /* one grid row per token */
        return sq_set_error(SQ_ERR_ARG, "token capacity %d outside 1..65535", max_tok);
    if (kind == SQ_CUDA_ACT_Q8) {
        G = 32;
        bits = 8;
        if (K <= 0 || K % 32 || K > (1 << 28))
            return sq_set_error(SQ_ERR_ARG, "Q8_0 activations need K a positive multiple of 32, got %d", K);
    } else {
        sq_status st = sq_kernels_check_sq4("activations", 1, K, G, bits, 0);
        if (st) return st;
        if ((size_t)groups_per_chunk(G) * G * 4 > quant_smem_limit(c))
            return sq_set_error(SQ_ERR_ARG, "group size %d is too large for this GPU's shared memory", G);
    }
    sq_cuda_act *a = (sq_cuda_act *)calloc(1, sizeof *a);
    if (!a) return sq_set_error(SQ_ERR_NOMEM, "out of memory");
    a->kind = kind;
    a->K = K;
    a->Kp = sq_cu_round_up(K, SQ_CU_BK);
    a->G = G;
    a->ng = K / G;
    a->bits = bits;
    a->max_tok = max_tok;
    a->tok_cap = sq_cu_round_up(max_tok, SQ_CU_BN);
    a->q = (uint8_t *)sq_cuda_alloc(c, (size_t)a->tok_cap * a->Kp);
    a->d = a->q ? (float *)sq_cuda_alloc(c, (size_t)a->ng * a->tok_cap * 4) : NULL;
    if (a->d && kind == SQ_CUDA_ACT_SQ4) a->z = (int32_t *)sq_cuda_alloc(c, (size_t)a->ng * a->tok_cap * 4);
    if (!a->q || !a->d || (kind == SQ_CUDA_ACT_SQ4 && !a->z)) {
        sq_status st = sq_last_status();
        sq_cuda_act_free(c, a);
        return st;
    }
    *out = a;
    return SQ_OK;
}

extern "C" void sq_cuda_act_free(sq_cuda *c, sq_cuda_act *a) {
    if (!a) return;
    sq_cuda_free(c, a->q);
    sq_cuda_free(c, a->d);
    sq_cuda_free(c, a->z);
    free(a);
}

extern "C" sq_status sq_cuda_quantize(sq_cuda *c, const float *x, int ldx, int n_tok, int wht, sq_cuda_act *a) {
    if (!x || !a) return sq_set_error(SQ_ERR_ARG, "sq_cuda_quantize: NULL argument");
    if (n_tok < 1 || n_tok > a->max_tok)
        return sq_set_error(SQ_ERR_ARG, "sq_cuda_quantize: %d tokens, buffer holds 1..%d", n_tok, a->max_tok);
    if (ldx < a->K) return sq_set_error(SQ_ERR_ARG, "sq_cuda_quantize: row stride %d < K = %d", ldx, a->K);
    if (a->kind == SQ_CUDA_ACT_Q8) {
        a->fmt = SQ_CU_A_S8;
        a->row_bytes = a->Kp;
        a->n_tok = n_tok;
        dim3 grid((unsigned)sq_cu_div_up(a->K / 32, 8), (unsigned)n_tok);
        SQ_LAUNCH(k_quant_q8, grid, 256, 0, c->stream, x, ldx, a->K, (int8_t *)a->q, a->row_bytes, a->d, a->tok_cap);
        SQ_CU_LAUNCHED();
        return SQ_OK;
    }
    if (wht) {
        sq_status st = sq_kernels_check_sq4("activations", 1, a->K, a->G, a->bits, 1);
        if (st) return st;
    }
    /* Packed nibbles only where the int4 mma kernel reads them; the GEMV and the int8 path read bytes. */
    a->fmt = a->bits == 4 && n_tok > c->gemv_max && c->path == SQ_CUDA_PATH_INT4 ? SQ_CU_A_U4P : SQ_CU_A_U8;
    a->row_bytes = a->fmt == SQ_CU_A_U4P ? a->Kp / 2 : a->Kp;
    a->n_tok = n_tok;
    const int gpc = groups_per_chunk(a->G);
    const float L = (float)((1 << a->bits) - 1);
    dim3 grid((unsigned)sq_cu_div_up(a->ng, gpc), (unsigned)n_tok);
    size_t smem = (size_t)gpc * a->G * sizeof(float);
    if (a->fmt == SQ_CU_A_U4P) {
        auto kern = k_quant_sq4<SQ_CU_A_U4P>;
        SQ_LAUNCH(kern, grid, QT, smem, c->stream, x, ldx, a->K, a->G, gpc, L, wht ? 1 : 0, a->q, a->row_bytes, a->d,
                  a->z, a->tok_cap);
    } else {
        auto kern = k_quant_sq4<SQ_CU_A_U8>;
        SQ_LAUNCH(kern, grid, QT, smem, c->stream, x, ldx, a->K, a->G, gpc, L, wht ? 1 : 0, a->q, a->row_bytes, a->d,
                  a->z, a->tok_cap);
    }
    SQ_CU_LAUNCHED();
    return SQ_OK;
}

/* Converts the last quantization to the CPU layout in temporary device memory and downloads it. */
static sq_status download_act(sq_cuda *c, const sq_cuda_act *a, uint8_t *q, float *d, int32_t *z) {
    if (a->n_tok < 1) return sq_set_error(SQ_ERR_ARG, "activations were never quantized");
    size_t nq = (size_t)a->n_tok * a->K, ns = (size_t)a->n_tok * a->ng;
    uint8_t *tq = (uint8_t *)sq_cuda_alloc(c, nq + 8 * ns + 16);
    if (!tq) return sq_last_status();
    float *td = (float *)(tq + (nq + 15) / 16 * 16);
    int32_t *tz = z ? (int32_t *)(td + ns) : NULL;
    SQ_LAUNCH(k_act_to_cpu, (unsigned)((nq + 255) / 256), 256, 0, c->stream, *a, tq, td, tz);
    cudaError_t e = cudaGetLastError();
    sq_status st = e == cudaSuccess ? SQ_OK : sq_cu_fail(e, "k_act_to_cpu");
    if (!st) st = sq_cuda_download(c, q, tq, nq);
    if (!st) st = sq_cuda_download(c, d, td, ns * 4);
    if (!st && z) st = sq_cuda_download(c, z, tz, ns * 4);
    sq_cuda_free(c, tq);
    return st;
}

extern "C" sq_status sq_cuda_act_download_sq4(sq_cuda *c, const sq_cuda_act *a, sq_qact *out) {
    if (a->kind != SQ_CUDA_ACT_SQ4) return sq_set_error(SQ_ERR_ARG, "not SQ4 activations");
    out->n_tok = a->n_tok;
    out->K = a->K;
    out->G = a->G;
    out->bits = a->bits;
    return download_act(c, a, out->q, out->d, out->z);
}

extern "C" sq_status sq_cuda_act_download_q8(sq_cuda *c, const sq_cuda_act *a, sq_q8act *out) {
    if (a->kind != SQ_CUDA_ACT_Q8) return sq_set_error(SQ_ERR_ARG, "not Q8_0 activations");
    out->n_tok = a->n_tok;
    out->K = a->K;
    return download_act(c, a, (uint8_t *)out->q, out->d, NULL);
}
