/* matmul.cu — picks the kernel for a (matrix, activations) pair: the GEMV for a few tokens stored
 * as bytes, otherwise the tensor-core kernel matching the activations' storage. */
#include "common.cuh"

static sq_status check_pair(const sq_cuda_mat *w, const sq_cuda_act *a) {
    if (!w || !a) return sq_set_error(SQ_ERR_ARG, "CUDA matmul: NULL matrix or activations");
    if (a->n_tok < 1) return sq_set_error(SQ_ERR_ARG, "CUDA matmul: the activations were never quantized");
    if (w->type == SQ_CU_W_SQ4 && a->kind != SQ_CUDA_ACT_SQ4)
        return sq_set_error(SQ_ERR_ARG, "CUDA matmul: an SQ4 matrix needs SQ4 activations");
    if (w->type == SQ_CU_W_Q8 && a->kind != SQ_CUDA_ACT_Q8)
        return sq_set_error(SQ_ERR_ARG, "CUDA matmul: a Q8_0 matrix needs Q8_0 activations");
    if (w->K != a->K || w->G != a->G)
        return sq_set_error(SQ_ERR_ARG, "CUDA matmul: matrix K=%d G=%d but activations K=%d G=%d", w->K, w->G, a->K,
                            a->G);
    return SQ_OK;
}

static int use_gemv(const sq_cuda *c, const sq_cuda_act *a) {
    return a->fmt != SQ_CU_A_U4P && a->n_tok <= c->gemv_max;
}

extern "C" const char *sq_cuda_matmul_kernel(const sq_cuda *c, const sq_cuda_mat *w, const sq_cuda_act *a) {
    if (check_pair(w, a)) return NULL;
    if (use_gemv(c, a)) return w->type == SQ_CU_W_Q8 ? "gemv-q8" : "gemv-sq4";
    if (w->type == SQ_CU_W_Q8) return "mma-q8";
    if (a->fmt == SQ_CU_A_U8) return "mma-int8";
    return w->G % 64 == 0 ? "mma-int4" : "mma-int4-k32";
}

static sq_status run(sq_cuda *c, const sq_cu_gemm_args *g) {
    return use_gemv(c, g->a) ? sq_cu_launch_gemv(c, g) : sq_cu_launch_mma(c, g);
}

extern "C" sq_status sq_cuda_matmul(sq_cuda *c, const sq_cuda_mat *w, const sq_cuda_act *a, float *y, int ldy,
                                   const float *bias) {
    sq_status st = check_pair(w, a);
    if (st) return st;
    if (!y || ldy < w->rows) return sq_set_error(SQ_ERR_ARG, "CUDA matmul: no output or ldy %d < rows %d", ldy, w->rows);
    sq_cu_gemm_args g = {w, a, y, ldy, bias, NULL};
    return run(c, &g);
}

extern "C" sq_status sq_cuda_group_sums(sq_cuda *c, const sq_cuda_mat *w, const sq_cuda_act *a, int32_t *acc) {
    sq_status st = check_pair(w, a);
    if (st) return st;
    if (w->type != SQ_CU_W_SQ4 || !acc) return sq_set_error(SQ_ERR_ARG, "CUDA group sums: SQ4 matrices only");
    sq_cu_gemm_args g = {w, a, NULL, w->rows, NULL, acc};
    return run(c, &g);
}
