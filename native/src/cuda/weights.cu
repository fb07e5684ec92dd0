/* weights.cu — SQ4 and Q8_0 matrices into the GPU layout (common.cuh): the file's blocks are
 * copied to a staging buffer a slice of rows at a time and repacked there by a kernel, which also
 * converts the fp16 scales and (SQ4) computes the per-group weight sums Σ q_w of FORMAT.md §4.3. */
#include "common.cuh"

#include <stdlib.h>
#include <string.h>

#define STAGING_BYTES ((size_t)64 << 20)

/* Raw int4 nibble (two's-complement bits, 0..15) of value k in a row of SQ4 blocks; 0 past K. */
__device__ __forceinline__ uint32_t sq4_nibble(const uint8_t *row, int k, int K, int G) {
    if (k >= K) return 0;
    int g = k / G, i = k - g * G, h = G / 2;
    uint8_t b = row[(size_t)g * (2 + h) + 2 + (i < h ? i : i - h)];
    return i < h ? (b & 15u) : (b >> 4);
}

/* One thread per output word (8 values) of rows [r0, r0 + nr). */
__global__ void k_repack_sq4(const uint8_t *raw, int r0, int nr, int K, int G, int Kp, uint8_t *q) {
    const int wpr = Kp / 8; /* words per row */
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)nr * wpr) return;
    int rl = (int)(idx / wpr), wi = (int)(idx % wpr), c = wi / 8, j = wi % 8, k0 = 64 * c + 8 * j;
    const uint8_t *row = raw + (size_t)rl * ((size_t)(K / G) * (2 + G / 2));
    uint32_t w = 0;
    for (int b = 0; b < 4; b++) {
        uint32_t lo = sq4_nibble(row, k0 + b, K, G), hi = sq4_nibble(row, k0 + 4 + b, K, G);
        w |= (lo | (hi << 4)) << (8 * b);
    }
    *(uint32_t *)(q + sq_cu_piece(r0 + rl, c, Kp / 64) + 4 * sq_cu_wpos(j)) = w;
}

/* One thread per (row, group): the fp16 scale as float and the group's Σ q_w. */
__global__ void k_scales_sq4(const uint8_t *raw, int r0, int nr, int K, int G, int rows_pad, float *dw, int32_t *ws) {
    const int ng = K / G, h = G / 2;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)nr * ng) return;
    int rl = (int)(idx / ng), g = (int)(idx % ng);
    const uint8_t *blk = raw + ((size_t)rl * ng + g) * (2 + h);
    int32_t s = 0;
    for (int i = 0; i < h; i++) {
        int b = blk[2 + i];
        s += ((b & 15) ^ 8) - 8;
        s += ((b >> 4) ^ 8) - 8;
    }
    size_t o = (size_t)g * rows_pad + r0 + rl;
    dw[o] = sq_cu_h2f((uint16_t)(blk[0] | (blk[1] << 8)));
    ws[o] = s;
}

/* One thread per output word (4 int8 values) of rows [r0, r0 + nr); Q8_0 blocks are 34 bytes. */
__global__ void k_repack_q8(const uint8_t *raw, int r0, int nr, int K, int Kp, uint8_t *q) {
    const int wpr = Kp / 4, nb = K / 32;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)nr * wpr) return;
    int rl = (int)(idx / wpr), wi = (int)(idx % wpr), c = wi / 8, e = wi % 8;
    uint32_t w = 0;
    if (c < nb) {
        const uint8_t *p = raw + (size_t)rl * nb * 34 + (size_t)c * 34 + 2 + 4 * e;
        w = p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t)p[3] << 24);
    }
    *(uint32_t *)(q + sq_cu_piece(r0 + rl, c, Kp / 32) + 4 * e) = w;
}

__global__ void k_scales_q8(const uint8_t *raw, int r0, int nr, int K, int rows_pad, float *dw) {
    const int nb = K / 32;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)nr * nb) return;
    int rl = (int)(idx / nb), b = (int)(idx % nb);
    const uint8_t *p = raw + ((size_t)rl * nb + b) * 34;
    dw[(size_t)b * rows_pad + r0 + rl] = sq_cu_h2f((uint16_t)(p[0] | (p[1] << 8)));
}

static unsigned blocks_for(size_t n, int threads) { return (unsigned)((n + threads - 1) / threads); }

static sq_status alloc_mat(sq_cuda *c, sq_cuda_mat *m) {
    size_t per_row = m->type == SQ_CU_W_SQ4 ? (size_t)m->Kp / 2 : (size_t)m->Kp;
    size_t qb = per_row * m->rows_pad, sb = (size_t)m->ng * m->rows_pad * 4;
    m->q = (uint8_t *)sq_cuda_alloc(c, qb);
    m->dw = m->q ? (float *)sq_cuda_alloc(c, sb) : NULL;
    if (m->dw && m->type == SQ_CU_W_SQ4) m->ws = (int32_t *)sq_cuda_alloc(c, sb);
    if (!m->q || !m->dw || (m->type == SQ_CU_W_SQ4 && !m->ws)) return sq_last_status();
    m->bytes = qb + sb * (m->type == SQ_CU_W_SQ4 ? 2 : 1);
    return SQ_OK;
}

/* Copies rows in slices through a staging buffer and runs `repack(staging, r0, nr)` on each. */
template <class F>
static sq_status upload_rows(sq_cuda *c, const uint8_t *data, int rows, size_t row_bytes, F repack) {
    int per = (int)(STAGING_BYTES / row_bytes);
    if (per < 1) per = 1;
    if (per > rows) per = rows;
    uint8_t *stage = (uint8_t *)sq_cuda_alloc(c, (size_t)per * row_bytes);
    if (!stage) return sq_last_status();
    sq_status st = SQ_OK;
    for (int r0 = 0; r0 < rows && !st; r0 += per) {
        int nr = rows - r0 < per ? rows - r0 : per;
        st = sq_cuda_upload(c, stage, data + (size_t)r0 * row_bytes, (size_t)nr * row_bytes);
        if (!st) st = repack(stage, r0, nr);
        if (!st) st = sq_cuda_sync(c); /* the next slice overwrites the staging buffer */
    }
    sq_cuda_free(c, stage);
    return st;
}

static sq_status new_mat(int type, int rows, int K, int G, sq_cuda_mat **out) {
    sq_cuda_mat *m = (sq_cuda_mat *)calloc(1, sizeof *m);
    if (!m) return sq_set_error(SQ_ERR_NOMEM, "out of memory");
    m->type = type;
    m->rows = rows;
    m->rows_pad = sq_cu_round_up(rows, SQ_CU_BM);
    m->K = K;
    m->Kp = sq_cu_round_up(K, SQ_CU_BK);
    m->G = G;
    m->ng = K / G;
    *out = m;
    return SQ_OK;
}

extern "C" sq_status sq_cuda_mat_sq4(sq_cuda *c, const uint8_t *data, int rows, int K, int G, sq_cuda_mat **out) {
    *out = NULL;
    if (!data) return sq_set_error(SQ_ERR_ARG, "sq_cuda_mat_sq4: NULL data");
    sq_status st = sq_kernels_check_sq4("SQ4 matrix", rows, K, G, 4, 0);
    if (st) return st;
    if (rows > (1 << 28) || K > (1 << 28)) return sq_set_error(SQ_ERR_ARG, "SQ4 matrix %d x %d is too large", rows, K);
    sq_cuda_mat *m;
    if ((st = new_mat(SQ_CU_W_SQ4, rows, K, G, &m))) return st;
    st = alloc_mat(c, m);
    const size_t row_bytes = (size_t)(K / G) * (2 + G / 2);
    if (!st)
        st = upload_rows(c, data, rows, row_bytes, [&](const uint8_t *raw, int r0, int nr) -> sq_status {
            size_t nw = (size_t)nr * (m->Kp / 8), ns = (size_t)nr * m->ng;
            SQ_LAUNCH(k_repack_sq4, blocks_for(nw, 256), 256, 0, c->stream, raw, r0, nr, K, G, m->Kp, m->q);
            SQ_CU_LAUNCHED();
            SQ_LAUNCH(k_scales_sq4, blocks_for(ns, 256), 256, 0, c->stream, raw, r0, nr, K, G, m->rows_pad, m->dw,
                      m->ws);
            SQ_CU_LAUNCHED();
            return SQ_OK;
        });
    if (st) {
        sq_cuda_mat_free(c, m);
        return st;
    }
    *out = m;
    return SQ_OK;
}

extern "C" sq_status sq_cuda_mat_q8(sq_cuda *c, const uint8_t *data, int rows, int K, sq_cuda_mat **out) {
    *out = NULL;
    if (!data) return sq_set_error(SQ_ERR_ARG, "sq_cuda_mat_q8: NULL data");
    if (rows <= 0 || K <= 0 || K % 32 || rows > (1 << 28) || K > (1 << 28))
        return sq_set_error(SQ_ERR_ARG, "bad Q8_0 matrix shape %d x %d (K must be a multiple of 32)", rows, K);
    sq_cuda_mat *m;
    sq_status st = new_mat(SQ_CU_W_Q8, rows, K, 32, &m);
    if (st) return st;
    st = alloc_mat(c, m);
    const size_t row_bytes = (size_t)(K / 32) * 34;
    if (!st)
        st = upload_rows(c, data, rows, row_bytes, [&](const uint8_t *raw, int r0, int nr) -> sq_status {
            size_t nw = (size_t)nr * (m->Kp / 4), ns = (size_t)nr * m->ng;
            SQ_LAUNCH(k_repack_q8, blocks_for(nw, 256), 256, 0, c->stream, raw, r0, nr, K, m->Kp, m->q);
            SQ_CU_LAUNCHED();
            SQ_LAUNCH(k_scales_q8, blocks_for(ns, 256), 256, 0, c->stream, raw, r0, nr, K, m->rows_pad, m->dw);
            SQ_CU_LAUNCHED();
            return SQ_OK;
        });
    if (st) {
        sq_cuda_mat_free(c, m);
        return st;
    }
    *out = m;
    return SQ_OK;
}

extern "C" void sq_cuda_mat_free(sq_cuda *c, sq_cuda_mat *m) {
    if (!m) return;
    sq_cuda_free(c, m->q);
    sq_cuda_free(c, m->dw);
    sq_cuda_free(c, m->ws);
    free(m);
}

extern "C" size_t sq_cuda_mat_bytes(const sq_cuda_mat *m) { return m ? m->bytes : 0; }
