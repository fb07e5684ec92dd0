/* spectral.cu — the DFT side branch (FORMAT.md §3.2) on the GPU with spectral.c's exact summation
 * order, so the branch and the bias give the CPU's floats bit for bit:
 *   phase 1 (projections): one thread per (token, output), a sequential sum over the input in the
 *   same order as the CPU's axpy loop; phase 2 (apply): one thread per (token, channel), the
 *   CPU's 8-accumulator dot product, then + bias. */
#include "common.cuh"

#include <stdlib.h>

/* spectral.c's dot(): eight partial sums, combined as ((0+4)+(1+5))+((2+6)+(3+7)), then the tail.
 * A(i) and B(i) load the operands (fp16 coefficients are converted exactly). */
template <class FA, class FB>
__device__ __forceinline__ float dot8(FA A, FB B, int n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
#pragma unroll
        for (int u = 0; u < 8; u++) acc[u] = __fadd_rn(acc[u], __fmul_rn(A(i + u), B(i + u)));
    float r = __fadd_rn(__fadd_rn(__fadd_rn(acc[0], acc[4]), __fadd_rn(acc[1], acc[5])),
                        __fadd_rn(__fadd_rn(acc[2], acc[6]), __fadd_rn(acc[3], acc[7])));
    for (; i < n; i++) r = __fadd_rn(r, __fmul_rn(A(i), B(i)));
    return r;
}

__global__ void k_project_in(const float *cs, int L, int Kb, int n2, const float *x, int ldx, float *out, int ld_out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (i >= n2) return;
    const float *xt = x + (size_t)t * ldx;
    float acc = 0.0f;
    for (int j = 0; j < L; j++) acc = __fadd_rn(acc, __fmul_rn(xt[j], cs[(size_t)j * 2 * Kb + i]));
    out[(size_t)t * ld_out + i] = acc;
}

__global__ void k_project_out(const uint16_t *coef, const int16_t *kk, int channels, int k_max, int n2, const float *x,
                              int ldx, float *out, int ld_out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (i >= n2) return;
    const float *xt = x + (size_t)t * ldx;
    float acc = 0.0f;
    for (int j = 0; j < channels; j++)
        if (2 * kk[j] > i) acc = __fadd_rn(acc, __fmul_rn(xt[j], sq_cu_h2f(coef[(size_t)j * k_max * 2 + i])));
    out[(size_t)t * ld_out + i] = acc;
}

__global__ void k_apply(int axis, const uint16_t *coef, const int16_t *kk, int channels, int k_max, int k_used,
                        const float *bcs, int bK, const float *proj, int ld_proj, float *y, int ldy, const float *bias) {
    const int o = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (o >= channels) return;
    const float *pt = proj + (size_t)t * ld_proj;
    float v = y[(size_t)t * ldy + o];
    if (axis == SQ_SPEC_IN) {
        const int k = kk[o];
        const uint16_t *co = coef + (size_t)o * k_max * 2;
        if (k) v = __fadd_rn(v, dot8([&](int i) { return sq_cu_h2f(co[i]); }, [&](int i) { return pt[i]; }, 2 * k));
    } else {
        const float *bo = bcs + (size_t)o * 2 * bK;
        if (k_used) v = __fadd_rn(v, dot8([&](int i) { return pt[i]; }, [&](int i) { return bo[i]; }, 2 * k_used));
    }
    if (bias) v = __fadd_rn(v, bias[o]);
    y[(size_t)t * ldy + o] = v;
}

extern "C" sq_status sq_cuda_basis_create(sq_cuda *c, const sq_basis *b, sq_cuda_basis **out) {
    *out = NULL;
    if (!b || !b->cs || b->L < 1 || b->K < 1) return sq_set_error(SQ_ERR_ARG, "sq_cuda_basis_create: empty basis");
    sq_cuda_basis *d = (sq_cuda_basis *)calloc(1, sizeof *d);
    if (!d) return sq_set_error(SQ_ERR_NOMEM, "out of memory");
    d->L = b->L;
    d->K = b->K;
    size_t bytes = (size_t)b->L * b->K * 2 * sizeof(float);
    d->cs = (float *)sq_cuda_alloc(c, bytes);
    sq_status st = d->cs ? sq_cuda_upload(c, d->cs, b->cs, bytes) : sq_last_status();
    if (st) {
        sq_cuda_basis_free(c, d);
        return st;
    }
    *out = d;
    return SQ_OK;
}

extern "C" void sq_cuda_basis_free(sq_cuda *c, sq_cuda_basis *b) {
    if (!b) return;
    sq_cuda_free(c, b->cs);
    free(b);
}

extern "C" sq_status sq_cuda_spectral_project_in(sq_cuda *c, const sq_cuda_basis *b, int k, const float *x, int ldx,
                                                 int n_tok, float *out, int ld_out) {
    if (!b || !x || !out || k < 1 || k > b->K || n_tok < 1 || n_tok > 65535 || ldx < b->L || ld_out < 2 * k)
        return sq_set_error(SQ_ERR_ARG, "sq_cuda_spectral_project_in: bad arguments (k %d, n_tok %d)", k, n_tok);
    dim3 grid((unsigned)sq_cu_div_up(2 * k, 64), (unsigned)n_tok);
    SQ_LAUNCH(k_project_in, grid, 64, 0, c->stream, b->cs, b->L, b->K, 2 * k, x, ldx, out, ld_out);
    SQ_CU_LAUNCHED();
    return SQ_OK;
}

extern "C" sq_status sq_cuda_spec_create(sq_cuda *c, const sq_spectral *s, const sq_cuda_basis *basis,
                                         sq_cuda_spec **out) {
    *out = NULL;
    if (!s || !s->k || !s->coef || s->channels < 1 || s->k_max < 1)
        return sq_set_error(SQ_ERR_ARG, "sq_cuda_spec_create: empty spectral branch");
    if (s->axis == SQ_SPEC_OUT && (!basis || basis->K < s->k_used))
        return sq_set_error(SQ_ERR_ARG, "sq_cuda_spec_create: axis out needs a basis with K >= %d", s->k_used);
    sq_cuda_spec *d = (sq_cuda_spec *)calloc(1, sizeof *d);
    if (!d) return sq_set_error(SQ_ERR_NOMEM, "out of memory");
    d->axis = s->axis;
    d->channels = s->channels;
    d->k_max = s->k_max;
    d->k_used = s->k_used;
    d->basis = s->axis == SQ_SPEC_OUT ? basis : NULL;
    size_t cb = (size_t)s->channels * s->k_max * 2 * sizeof(uint16_t), kb = (size_t)s->channels * sizeof(int16_t);
    d->coef = (uint16_t *)sq_cuda_alloc(c, cb);
    d->k = d->coef ? (int16_t *)sq_cuda_alloc(c, kb) : NULL;
    sq_status st = d->k ? sq_cuda_upload(c, d->coef, s->coef, cb) : sq_last_status();
    if (!st) st = sq_cuda_upload(c, d->k, s->k, kb);
    if (st) {
        sq_cuda_spec_free(c, d);
        return st;
    }
    *out = d;
    return SQ_OK;
}

extern "C" void sq_cuda_spec_free(sq_cuda *c, sq_cuda_spec *s) {
    if (!s) return;
    sq_cuda_free(c, s->coef);
    sq_cuda_free(c, s->k);
    free(s);
}

extern "C" sq_status sq_cuda_spectral_project_out(sq_cuda *c, const sq_cuda_spec *s, const float *x, int ldx, int n_tok,
                                                  float *out, int ld_out) {
    if (!s || s->axis != SQ_SPEC_OUT || !x || !out || n_tok < 1 || n_tok > 65535 || ldx < s->channels ||
        ld_out < 2 * s->k_used)
        return sq_set_error(SQ_ERR_ARG, "sq_cuda_spectral_project_out: bad arguments");
    if (!s->k_used) return SQ_OK;
    dim3 grid((unsigned)sq_cu_div_up(2 * s->k_used, 64), (unsigned)n_tok);
    SQ_LAUNCH(k_project_out, grid, 64, 0, c->stream, s->coef, s->k, s->channels, s->k_max, 2 * s->k_used, x, ldx, out,
              ld_out);
    SQ_CU_LAUNCHED();
    return SQ_OK;
}

extern "C" sq_status sq_cuda_spectral_apply(sq_cuda *c, const sq_cuda_spec *s, const float *proj, int ld_proj, int n_tok,
                                            float *y, int ldy, const float *bias) {
    if (!s || !proj || !y || n_tok < 1 || n_tok > 65535)
        return sq_set_error(SQ_ERR_ARG, "sq_cuda_spectral_apply: bad arguments");
    /* axis in: channels are the output rows; axis out: the outputs are the basis positions */
    const int n_out = s->axis == SQ_SPEC_IN ? s->channels : s->basis->L;
    if (ldy < n_out) return sq_set_error(SQ_ERR_ARG, "sq_cuda_spectral_apply: ldy %d < %d outputs", ldy, n_out);
    const float *bcs = s->axis == SQ_SPEC_OUT ? s->basis->cs : NULL;
    const int bK = s->axis == SQ_SPEC_OUT ? s->basis->K : 0;
    dim3 grid((unsigned)sq_cu_div_up(n_out, 128), (unsigned)n_tok);
    SQ_LAUNCH(k_apply, grid, 128, 0, c->stream, s->axis, s->coef, s->k, n_out, s->k_max, s->k_used, bcs, bK, proj,
              ld_proj, y, ldy, bias);
    SQ_CU_LAUNCHED();
    return SQ_OK;
}
