/* linear.c — linear layers over a batch: SQ4 (W4A4), Q8_0 (W8A8), F16/F32 (fp32), + spectral, + bias. */
#include "linear.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "error.h"
#include "dotf.h"
#include "fp16.h"

/* ---- loading ---------------------------------------------------------------------------------- */

static sq_status check_shape(const sq_gguf_tensor *t, const char *name, int64_t ne0, int64_t ne1, int64_t ne2) {
    int64_t want[4] = {ne0, ne1 < 0 ? 1 : ne1, ne2 < 0 ? 1 : ne2, 1};
    for (int d = 0; d < 4; d++)
        if ((int64_t)t->ne[d] != want[d])
            return sq_set_error(SQ_ERR_FORMAT, "tensor '%s' has shape [%llu, %llu, %llu, %llu], expected [%lld, %lld, %lld, 1]",
                                name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                                (unsigned long long)t->ne[2], (unsigned long long)t->ne[3], (long long)want[0],
                                (long long)want[1], (long long)want[2]);
    return SQ_OK;
}

/* data: the first of l->rows rows of l->cols values in t's mapping (t->data, or a row range of it) */
static sq_status init_weight(sq_linear *l, const sq_gguf_tensor *t, const uint8_t *data, const char *tname, int G) {
    l->data = data;
    switch (t->type) {
    case SQ_T_SQ4: {
        if (l->cols % G)
            return sq_set_error(SQ_ERR_FORMAT, "tensor '%s': row length %d is not a multiple of the group size %d", tname,
                                l->cols, G);
        size_t n = (size_t)l->rows * (l->cols / G);
        l->wsum = malloc(n * sizeof *l->wsum);
        if (!l->wsum) return sq_set_error(SQ_ERR_NOMEM, "out of memory for the group sums of '%s'", tname);
        sq_sq4_group_sums(data, l->rows, l->cols, G, l->wsum);
        l->sq4 = (sq_sq4_matrix){data, l->wsum, l->rows, l->cols, G, SQ_SQ4_ROWS};
        l->wtype = SQ_W_SQ4;
        return SQ_OK;
    }
    case SQ_T_Q8_0:
        l->q8 = (sq_q8_matrix){data, l->rows, l->cols};
        l->wtype = SQ_W_Q8;
        return SQ_OK;
    case SQ_T_F16: l->wtype = SQ_W_F16; return SQ_OK;
    case SQ_T_F32: l->wtype = SQ_W_F32; return SQ_OK;
    default:
        return sq_set_error(SQ_ERR_UNSUPPORTED, "tensor '%s' has type %s; linear layers must be SQ4, Q8_0, F16 or F32",
                            tname, sq_ggml_type_name(t->type));
    }
}

static sq_status init_spectral(sq_linear *l, const sq_gguf *g, const char *name, int axis, float tau) {
    char cn[160], kn[160];
    snprintf(cn, sizeof cn, "%s.spectral", name);
    snprintf(kn, sizeof kn, "%s.spectral_k", name);
    const sq_gguf_tensor *tc = sq_gguf_tensor_find(g, cn), *tk = sq_gguf_tensor_find(g, kn);
    if (!tc && !tk) return SQ_OK;
    if (!tc || !tk) return sq_set_error(SQ_ERR_FORMAT, "'%s' has only one of %s / %s", name, cn, kn);
    if (tc->type != SQ_T_F16 || tk->type != SQ_T_I16)
        return sq_set_error(SQ_ERR_FORMAT, "'%s' must be F16 and '%s' I16 (got %s, %s)", cn, kn,
                            sq_ggml_type_name(tc->type), sq_ggml_type_name(tk->type));
    int channels = axis == SQ_SPEC_IN ? l->rows : l->cols, length = axis == SQ_SPEC_IN ? l->cols : l->rows;
    if (tc->ne[1] < 1 || tc->ne[1] > (uint64_t)length)
        return sq_set_error(SQ_ERR_FORMAT, "'%s': K_max = %llu must be in 1..%d", cn, (unsigned long long)tc->ne[1], length);
    int k_max = (int)tc->ne[1];
    sq_status st = check_shape(tc, cn, 2, k_max, channels);
    if (!st) st = check_shape(tk, kn, channels, -1, -1);
    if (st) return st;
    l->spec = calloc(1, sizeof *l->spec);
    if (!l->spec) return sq_set_error(SQ_ERR_NOMEM, "out of memory");
    return sq_spectral_init(l->spec, axis, (const uint16_t *)tc->data, (const int16_t *)tk->data, channels, k_max, tau,
                            kn);
}

sq_status sq_linear_init(sq_linear *l, const sq_gguf *g, const char *name, int cols, int rows, int G, int spec_axis,
                         float tau) {
    memset(l, 0, sizeof *l);
    l->rows = rows;
    l->cols = cols;
    char wn[160], bn[160];
    snprintf(wn, sizeof wn, "%s.weight", name);
    snprintf(bn, sizeof bn, "%s.bias", name);
    const sq_gguf_tensor *t = sq_gguf_tensor_find(g, wn);
    if (!t) return sq_set_error(SQ_ERR_FORMAT, "tensor '%s' is missing", wn);
    sq_status st = check_shape(t, wn, cols, rows, -1);
    if (!st) st = init_weight(l, t, t->data, wn, G ? G : cols);
    if (!st && spec_axis >= 0) st = init_spectral(l, g, name, spec_axis, tau);
    const sq_gguf_tensor *b = st ? NULL : sq_gguf_tensor_find(g, bn);
    if (b) {
        if (b->type != SQ_T_F32) st = sq_set_error(SQ_ERR_FORMAT, "bias '%s' must be F32", bn);
        else if (!(st = check_shape(b, bn, rows, -1, -1))) l->bias = (const float *)b->data;
    }
    if (st) sq_linear_free(l);
    return st;
}

sq_status sq_linear_init_rows(sq_linear *l, const sq_gguf *g, const char *name, int cols, int total_rows, int row0,
                              int rows, const char *part) {
    memset(l, 0, sizeof *l);
    l->rows = rows;
    l->cols = cols;
    char wn[160], xn[160];
    snprintf(wn, sizeof wn, "%s.weight", name);
    const sq_gguf_tensor *t = sq_gguf_tensor_find(g, wn);
    if (!t) return sq_set_error(SQ_ERR_FORMAT, "tensor '%s' is missing", wn);
    sq_status st = check_shape(t, wn, cols, total_rows, -1);
    if (st) return st;
    size_t row_bytes;
    switch (t->type) { /* each output row is contiguous: a row range is a pointer offset */
    case SQ_T_F32: row_bytes = (size_t)cols * 4; break;
    case SQ_T_F16: row_bytes = (size_t)cols * 2; break;
    case SQ_T_Q8_0: row_bytes = (size_t)(cols / 32) * 34; break; /* the parser checked cols % 32 */
    default:
        return sq_set_error(SQ_ERR_UNSUPPORTED, "fused tensor '%s' has type %s; its %s rows are read in place from F32, "
                            "F16 or Q8_0 only", wn, sq_ggml_type_name(t->type), part);
    }
    /* what a separate linear may carry has no meaning for a row range: refused, never ignored */
    static const char *const extras[] = {"bias", "spectral", "spectral_k"};
    for (int i = 0; i < 3; i++) {
        snprintf(xn, sizeof xn, "%s.%s", name, extras[i]);
        if (sq_gguf_tensor_find(g, xn))
            return sq_set_error(SQ_ERR_UNSUPPORTED, "fused tensor '%s' has a '%s' tensor, which the runtime does not read",
                                wn, xn);
    }
    return init_weight(l, t, t->data + (size_t)row0 * row_bytes, wn, cols);
}

void sq_linear_free(sq_linear *l) {
    free(l->wsum);
    free(l->packed);
    if (l->spec) sq_spectral_free(l->spec);
    free(l->spec);
    memset(l, 0, sizeof *l);
}

/* ---- repacking for the kernels ------------------------------------------------------------ */

typedef struct {
    sq_linear *const *lins;
    int release;
} repack_job;

/* Drops the whole pages of [p, p + n) of a read-only file mapping from the resident set (they are
 * read back from the file if anything touches them again). */
static void release_pages(const uint8_t *p, size_t n) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t a = ((uintptr_t)p + page - 1) / page * page, b = ((uintptr_t)p + n) / page * page;
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

static void repack_task(void *ctx, int task, int thread) {
    (void)thread;
    const repack_job *j = ctx;
    sq_linear *l = j->lins[task];
    const int G = l->sq4.G;
    sq_sq4_repack_x16(l->data, l->wsum, l->cols, G, 0, l->rows / 16, l->packed);
    if (j->release) release_pages(l->data, (size_t)l->rows * (l->cols / G) * (2 + (size_t)G / 2));
}

sq_status sq_linear_repack(sq_linear *const *lins, int n, const sq_kernel_table *kt, sq_pool *pool, int release) {
    if (kt->sq4_layout != SQ_SQ4_X16) return SQ_OK;
    sq_linear **todo = malloc(sizeof *todo * (size_t)(n > 0 ? n : 1));
    if (!todo) return sq_set_error(SQ_ERR_NOMEM, "out of memory");
    int nt = 0;
    for (int i = 0; i < n; i++) {
        sq_linear *l = lins[i];
        if (l->wtype != SQ_W_SQ4 || l->packed || !sq_sq4_x16_ok(l->rows, l->cols, l->sq4.G)) continue;
        const size_t bytes = sq_sq4_x16_bytes(l->rows, l->cols, l->sq4.G);
        l->packed = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (!l->packed) {
            for (int k = 0; k < nt; k++) free(todo[k]->packed), todo[k]->packed = NULL;
            free(todo);
            return sq_set_error(SQ_ERR_NOMEM, "out of memory repacking the weights (%zu bytes for one layer)", bytes);
        }
        todo[nt++] = l;
    }
    repack_job j = {todo, release};
    sq_pool_run(pool, repack_task, &j, nt);
    for (int k = 0; k < nt; k++) {
        sq_linear *l = todo[k];
        free(l->wsum); /* the records carry the sums */
        l->wsum = NULL;
        l->sq4 = (sq_sq4_matrix){l->packed, NULL, l->rows, l->cols, l->sq4.G, SQ_SQ4_X16};
    }
    free(todo);
#if defined(__GLIBC__)
    malloc_trim(0); /* the freed sums (4 bytes per row and group) back to the system, not kept in RSS */
#endif
    return SQ_OK;
}

/* ---- embedding rows --------------------------------------------------------------------------- */

int sq_tensor_row_type_ok(uint32_t type) { return type == SQ_T_F32 || type == SQ_T_F16 || type == SQ_T_Q8_0; }

void sq_tensor_row(const sq_gguf_tensor *t, int64_t row, float *out) {
    int64_t n = (int64_t)t->ne[0];
    switch (t->type) {
    case SQ_T_F32: memcpy(out, (const float *)t->data + row * n, (size_t)n * sizeof *out); break;
    case SQ_T_F16: sq_fp16_to_fp32_row((const uint16_t *)t->data + row * n, out, (int)n); break;
    case SQ_T_Q8_0: {
        const uint8_t *p = t->data + row * (n / 32) * 34;
        for (int64_t b = 0; b < n / 32; b++, p += 34) {
            uint16_t dh;
            memcpy(&dh, p, 2);
            float d = sq_fp16_to_fp32_lut(dh);
            for (int i = 0; i < 32; i++) out[b * 32 + i] = d * (float)(int8_t)p[2 + i];
        }
        break;
    }
    default: memset(out, 0, (size_t)n * sizeof *out);
    }
}

/* ---- prepare: quantize activations, spectral projections (split by tokens) --------------------- */

typedef struct {
    const sq_exec *e;
    sq_lin_input *in;
    const sq_linear *const *lins;
    int n, need_qa, need_q8, n_chunks;
} prep_job;

static void prep_task(void *ctx, int task, int thread) {
    prep_job *j = ctx;
    sq_lin_input *in = j->in;
    int t0 = (int)((int64_t)in->n_tok * task / j->n_chunks), t1 = (int)((int64_t)in->n_tok * (task + 1) / j->n_chunks);
    if (t0 >= t1) return;
    if (j->need_qa) j->e->kt->quantize_act(in->x, t0, t1, j->e->wht, &in->qa);
    if (j->need_q8) j->e->kt->quantize_q8act(in->x, t0, t1, &in->q8a);
    const float *xt = in->x + (size_t)t0 * in->K;
    if (in->spec_k) {
        const sq_basis *b = NULL;
        for (int i = 0; i < j->n && !b; i++)
            if (j->lins[i]->spec && j->lins[i]->spec->axis == SQ_SPEC_IN && j->lins[i]->spec->k_used)
                b = j->lins[i]->spec->basis;
        sq_spectral_project_in(b, in->spec_k, xt, in->K, t1 - t0, in->spec_in + (size_t)t0 * in->spec_stride,
                               in->spec_stride);
    }
    float *fbuf = j->e->scratch + (size_t)thread * j->e->scratch_floats;
    for (int i = 0; i < j->n; i++) {
        const sq_spectral *s = j->lins[i]->spec;
        if (s && s->axis == SQ_SPEC_OUT && s->k_used)
            sq_spectral_project(s, xt, in->K, t1 - t0, in->spec_out[i] + (size_t)t0 * in->spec_stride, in->spec_stride,
                                fbuf);
    }
}

void sq_linear_prepare(const sq_exec *e, sq_lin_input *in, const float *x, int n_tok, const sq_linear *const *lins,
                       int n) {
    prep_job j = {e, in, lins, n, 0, 0, 0};
    in->x = x;
    in->n_tok = n_tok;
    in->K = lins[0]->cols;
    in->spec_k = 0;
    for (int i = 0; i < n; i++) {
        j.need_qa |= lins[i]->wtype == SQ_W_SQ4;
        j.need_q8 |= lins[i]->wtype == SQ_W_Q8;
        const sq_spectral *s = lins[i]->spec;
        if (s && s->axis == SQ_SPEC_IN && s->k_used > in->spec_k) in->spec_k = s->k_used;
    }
    in->qa.n_tok = n_tok;
    in->qa.K = in->K;
    in->qa.G = e->G ? e->G : in->K;
    in->qa.bits = e->act_bits;
    for (int i = 0; i < n; i++)
        if (lins[i]->a8 && lins[i]->wtype == SQ_W_SQ4) in->qa.bits = 8;
    in->q8a.n_tok = n_tok;
    in->q8a.K = in->K;
    /* Enough chunks to keep every thread busy, never more than tokens. */
    j.n_chunks = n_tok < e->n_threads ? n_tok : e->n_threads;
    sq_pool_run(e->pool, prep_task, &j, j.n_chunks);
}

/* ---- run: the matmuls of a group of layers, split by output rows ------------------------------- */

typedef struct {
    const sq_exec *e;
    const sq_lin_input *in;
    const sq_linear *const *lins;
    float *const *ys;
    const int *ldys;
    int n, rows_per_task;
    int first_task[4]; /* task index where layer i starts; [n] = total */
} run_job;

/* fp32 matmul for F16/F32 weights: each row is converted once, then used for every token. */
static void matmul_float(const sq_linear *l, const sq_lin_input *in, int r0, int r1, float *y, int ldy, float *rowbuf) {
    for (int r = r0; r < r1; r++) {
        const float *w = l->wtype == SQ_W_F32 ? (const float *)l->data + (size_t)r * l->cols : rowbuf;
        if (l->wtype == SQ_W_F16) sq_fp16_to_fp32_row((const uint16_t *)l->data + (size_t)r * l->cols, rowbuf, l->cols);
        for (int t = 0; t < in->n_tok; t++) y[(size_t)t * ldy + r] = sq_dotf(w, in->x + (size_t)t * in->K, l->cols);
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SQ_LINEAR_AVX2 1

__attribute__((target("avx2,fma"))) static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The same with AVX2/FMA, 2 rows × 4 tokens per step (each weight and activation load feeds 4 or
 * 2 FMAs). Needs cols % 8 == 0; rowbuf holds 2 converted rows. */
__attribute__((target("avx2,fma"))) static void matmul_float_avx2(const sq_linear *l, const sq_lin_input *in, int r0,
                                                                   int r1, float *y, int ldy, float *rowbuf) {
    const int K = l->cols, nt = in->n_tok;
    for (int r = r0; r < r1; r += 2) {
        const int nr = r + 1 < r1 ? 2 : 1;
        const float *w[2];
        for (int i = 0; i < nr; i++) {
            if (l->wtype == SQ_W_F32) w[i] = (const float *)l->data + (size_t)(r + i) * K;
            else {
                sq_fp16_to_fp32_row((const uint16_t *)l->data + (size_t)(r + i) * K, rowbuf + (size_t)i * K, K);
                w[i] = rowbuf + (size_t)i * K;
            }
        }
        if (nr == 1) w[1] = w[0];
        for (int t = 0; t < nt; t += 4) {
            const int ntt = nt - t < 4 ? nt - t : 4;
            const float *x[4];
            for (int j = 0; j < 4; j++) x[j] = in->x + (size_t)(t + (j < ntt ? j : 0)) * in->K;
            __m256 acc[2][4];
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 4; j++) acc[i][j] = _mm256_setzero_ps();
            for (int k = 0; k < K; k += 8) {
                const __m256 w0 = _mm256_loadu_ps(w[0] + k), w1 = _mm256_loadu_ps(w[1] + k);
                for (int j = 0; j < 4; j++) {
                    const __m256 xv = _mm256_loadu_ps(x[j] + k);
                    acc[0][j] = _mm256_fmadd_ps(w0, xv, acc[0][j]);
                    acc[1][j] = _mm256_fmadd_ps(w1, xv, acc[1][j]);
                }
            }
            for (int i = 0; i < nr; i++)
                for (int j = 0; j < ntt; j++) y[(size_t)(t + j) * ldy + r + i] = hsum8(acc[i][j]);
        }
    }
}
#endif

static void run_task(void *ctx, int task, int thread) {
    run_job *j = ctx;
    int i = 0;
    while (task >= j->first_task[i + 1]) i++;
    const sq_linear *l = j->lins[i];
    int r0 = (task - j->first_task[i]) * j->rows_per_task, r1 = r0 + j->rows_per_task;
    if (r1 > l->rows) r1 = l->rows;
    float *y = j->ys[i], *scratch = j->e->scratch + (size_t)thread * j->e->scratch_floats;
    int ldy = j->ldys[i];
    const sq_lin_input *in = j->in;
    switch (l->wtype) {
    case SQ_W_SQ4: j->e->kt->matmul_sq4(&l->sq4, &in->qa, r0, r1, y, ldy); break;
    case SQ_W_Q8: j->e->kt->matmul_q8(&l->q8, &in->q8a, r0, r1, y, ldy); break;
    default:
#ifdef SQ_LINEAR_AVX2
        if (j->e->simd && l->cols % 8 == 0) {
            matmul_float_avx2(l, in, r0, r1, y, ldy, scratch);
            break;
        }
#endif
        matmul_float(l, in, r0, r1, y, ldy, scratch);
        break;
    }
    const sq_spectral *s = l->spec;
    if (s && s->k_used) {
        const float *proj = s->axis == SQ_SPEC_IN ? in->spec_in : in->spec_out[i];
        sq_spectral_apply(s, proj, in->spec_stride, in->n_tok, r0, r1, y, ldy, scratch);
    }
    if (l->bias)
        for (int t = 0; t < in->n_tok; t++)
            for (int r = r0; r < r1; r++) y[(size_t)t * ldy + r] += l->bias[r];
}

void sq_linear_run(const sq_exec *e, const sq_lin_input *in, const sq_linear *const *lins, float *const *ys,
                   const int *ldys, int n) {
    run_job j = {e, in, lins, ys, ldys, n, 0, {0}};
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += lins[i]->rows;
    /* ~4 tasks per thread (rows in multiples of 16) balance layers of different heights. */
    int64_t per = (total + 4 * (int64_t)e->n_threads - 1) / (4 * (int64_t)e->n_threads);
    per = (per + 15) / 16 * 16;
    j.rows_per_task = (int)per;
    for (int i = 0; i < n; i++) j.first_task[i + 1] = j.first_task[i] + (int)((lins[i]->rows + per - 1) / per);
    sq_pool_run(e->pool, run_task, &j, j.first_task[n]);
}
