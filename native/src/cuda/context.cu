/* context.cu — device selection, the context (device + stream + kernel choices), device memory. */
#include "common.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

sq_status sq_cu_fail(cudaError_t e, const char *what) {
    sq_status code = e == cudaErrorMemoryAllocation ? SQ_ERR_NOMEM : SQ_ERR_BACKEND;
    return sq_set_error(code, "CUDA: %s (%s)", cudaGetErrorString(e), what);
}

extern "C" int sq_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
    (void)cudaGetLastError(); /* a missing driver is an answer here, not a sticky error */
    return n;
}

/* The int4 tensor-core path exists and is fast on sm_80..sm_89; Hopper (sm_90) executes int4 mma
 * only through emulation, so it and anything newer take the int8 path by default. */
static int default_path(int cc) { return cc >= 80 && cc < 90 ? SQ_CUDA_PATH_INT4 : SQ_CUDA_PATH_INT8; }

extern "C" sq_status sq_cuda_create(int device, sq_cuda **out) {
    *out = NULL;
    int n = sq_cuda_device_count();
    if (n == 0) return sq_set_error(SQ_ERR_BACKEND, "no CUDA device (or no NVIDIA driver) found");
    if (device < 0 || device >= n)
        return sq_set_error(SQ_ERR_ARG, "CUDA device %d does not exist (%d device%s)", device, n, n == 1 ? "" : "s");
    cudaDeviceProp prop;
    SQ_CU_TRY(cudaGetDeviceProperties(&prop, device));
    int cc = prop.major * 10 + prop.minor;
    if (cc < 80)
        return sq_set_error(SQ_ERR_BACKEND, "CUDA device %d (%s) has compute capability %d.%d; the backend needs 8.0+",
                            device, prop.name, prop.major, prop.minor);
    SQ_CU_TRY(cudaSetDevice(device));
    sq_cuda *c = (sq_cuda *)calloc(1, sizeof *c);
    if (!c) return sq_set_error(SQ_ERR_NOMEM, "out of memory");
    c->device = device;
    c->cc = cc;
    c->sms = prop.multiProcessorCount;
    c->smem_optin = prop.sharedMemPerBlockOptin;
    c->gemv_max = SQ_CUDA_GEMV_MAX;
    c->path = default_path(cc);
    snprintf(c->name, sizeof c->name, "%s (sm_%d, %d SMs)", prop.name, cc, prop.multiProcessorCount);
    const char *env = getenv("SQ_CUDA_PATH");
    sq_status st = SQ_OK;
    if (env && *env) {
        if (!strcmp(env, "int4")) c->path = SQ_CUDA_PATH_INT4;
        else if (!strcmp(env, "int8")) c->path = SQ_CUDA_PATH_INT8;
        else st = sq_set_error(SQ_ERR_ARG, "SQ_CUDA_PATH=%s: expected int4 or int8", env);
    }
    cudaError_t e = cudaSuccess;
    if (!st) e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    if (!st && e != cudaSuccess) st = sq_cu_fail(e, "cudaStreamCreateWithFlags");
    if (!st) st = sq_cu_prepare_kernels(c);
    if (!st) st = sq_cu_prepare_quantize(c);
    if (st) {
        sq_cuda_destroy(c);
        return st;
    }
    *out = c;
    return SQ_OK;
}

extern "C" void sq_cuda_destroy(sq_cuda *c) {
    if (!c) return;
    if (c->stream) {
        cudaStreamSynchronize(c->stream);
        cudaStreamDestroy(c->stream);
    }
    free(c);
}

extern "C" const char *sq_cuda_device_name(const sq_cuda *c) { return c ? c->name : ""; }
extern "C" int sq_cuda_cc(const sq_cuda *c) { return c ? c->cc : 0; }
extern "C" int sq_cuda_path(const sq_cuda *c) { return c ? c->path : 0; }

extern "C" sq_status sq_cuda_set_path(sq_cuda *c, int path) {
    if (path == SQ_CUDA_PATH_AUTO) path = default_path(c->cc);
    if (path != SQ_CUDA_PATH_INT4 && path != SQ_CUDA_PATH_INT8)
        return sq_set_error(SQ_ERR_ARG, "CUDA path must be 0 (auto), 1 (int4) or 2 (int8), got %d", path);
    c->path = path;
    return SQ_OK;
}

extern "C" sq_status sq_cuda_set_gemv_max(sq_cuda *c, int n_tok) {
    if (n_tok < 0 || n_tok > SQ_CUDA_GEMV_MAX)
        return sq_set_error(SQ_ERR_ARG, "GEMV token limit must be 0..%d, got %d", SQ_CUDA_GEMV_MAX, n_tok);
    c->gemv_max = n_tok;
    return SQ_OK;
}

extern "C" sq_status sq_cuda_sync(sq_cuda *c) {
    SQ_CU_TRY(cudaStreamSynchronize(c->stream));
    SQ_CU_TRY(cudaGetLastError());
    return SQ_OK;
}

extern "C" void *sq_cuda_alloc(sq_cuda *c, size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        sq_set_error(SQ_ERR_NOMEM, "CUDA: cannot allocate %.1f MB of device memory (%s)", bytes / 1e6,
                     cudaGetErrorString(e));
        return NULL;
    }
    e = cudaMemsetAsync(p, 0, bytes, c->stream);
    if (e != cudaSuccess) {
        sq_cu_fail(e, "cudaMemsetAsync");
        cudaFree(p);
        return NULL;
    }
    return p;
}

extern "C" void sq_cuda_free(sq_cuda *c, void *p) {
    if (!p) return;
    /* The stream may still use p: cudaFree waits for the device, but not for our non-blocking stream. */
    cudaStreamSynchronize(c->stream);
    cudaFree(p);
}

extern "C" sq_status sq_cuda_upload(sq_cuda *c, void *dst, const void *src, size_t bytes) {
    if (!bytes) return SQ_OK;
    if (!dst || !src) return sq_set_error(SQ_ERR_ARG, "sq_cuda_upload: NULL pointer");
    SQ_CU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    /* src is ordinary (pageable) memory that the caller may reuse at once. */
    SQ_CU_TRY(cudaStreamSynchronize(c->stream));
    return SQ_OK;
}

extern "C" sq_status sq_cuda_download(sq_cuda *c, void *dst, const void *src, size_t bytes) {
    if (!bytes) return SQ_OK;
    if (!dst || !src) return sq_set_error(SQ_ERR_ARG, "sq_cuda_download: NULL pointer");
    SQ_CU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    SQ_CU_TRY(cudaStreamSynchronize(c->stream));
    return SQ_OK;
}
