/* model_cuda.h — the engine's hook into the CUDA backend (internal; model.c calls these).
 *
 * sq_model_backend_select() runs at load, after the weights, bases and RoPE table are set up:
 * it decides where the model runs (m->backend) and, for the GPU, uploads everything once
 * (weights in the GPU layout, norms, biases, spectral branches, RoPE table, an f16 KV cache and
 * the activation buffers for the largest batch). sq_model_cuda_forward() then replaces model.c's
 * forward_chunk(): nb tokens at positions pos0.., logits of rows [first, nb) downloaded to the
 * host (none when logits is NULL). It allocates nothing.
 *
 * Builds without the backend (no SQ_HAVE_CUDA) get the inline versions below: backend auto runs
 * on the CPU, and check_params() has already refused backend cuda with SQ_ERR_BACKEND.
 */
#ifndef SQ_MODEL_CUDA_H
#define SQ_MODEL_CUDA_H

#include "model.h"

#ifdef SQ_HAVE_CUDA
/* requested: sq_backend (validated); kv_type: the model's. Sets m->backend (and m->gpu for CUDA).
 * backend cuda: SQ_ERR_ARG for a KV type the GPU lacks, SQ_ERR_BACKEND when there is no device
 * or the model has something the GPU cannot run; backend auto falls back to the CPU instead. */
sq_status sq_model_backend_select(sq_model *m, int requested);
sq_status sq_model_cuda_forward(sq_model *m, const int32_t *tokens, int nb, int pos0, float *logits, int first);
void sq_model_cuda_free(sq_model *m);
#else
static inline sq_status sq_model_backend_select(sq_model *m, int requested) {
    (void)requested;
    m->backend = SQ_BACKEND_CPU;
    return SQ_OK;
}
static inline sq_status sq_model_cuda_forward(sq_model *m, const int32_t *tokens, int nb, int pos0, float *logits,
                                              int first) {
    (void)m, (void)tokens, (void)nb, (void)pos0, (void)logits, (void)first;
    return SQ_ERR_BACKEND; /* unreachable: m->gpu is never set in such a build */
}
static inline void sq_model_cuda_free(sq_model *m) { (void)m; }
#endif

#endif
