/* attention.c — causal GQA: softmax(q·Kᵀ·scale)·V per head, K/V read from the cache as floats.
 * Optionally (Gemma 2) the scores are soft-capped and a query sees only a sliding window of
 * positions; without those both kernels run exactly the plain path.
 *
 * Tasks: (KV head, block of queries): the head's K/V rows are converted once and serve every
 * query head of the group; for decode (few tokens) on more threads than KV heads, one task per
 * query head so that all threads get work, each converting its KV head's rows.
 *
 * Two inner kernels with the same math: a portable one (also what SQ_ISA=scalar runs) and an
 * AVX2/FMA one. The AVX2 kernel keeps K transposed in blocks of 8 positions (Kt[block][d][8]) so
 * that one FMA computes 8 scores without horizontal sums, and accumulates P·V in registers.
 */
#include "attention.h"

#include <math.h>
#include <string.h>

#include "dotf.h"
#include "norm.h"

#define QBLOCK 64 /* queries per task: each task loads (and transposes) its KV head once */
#define MAXQ 4 /* query heads that share one pass over K/V in the AVX2 kernel */

static size_t round32(int n) { return ((size_t)n + 31) / 32 * 32; }

size_t sq_attention_scratch_floats(int n_ctx, int head_dim) {
    /* Kt (rounded to whole blocks) + V + scores of up to MAXQ queries */
    return round32(n_ctx) * (size_t)head_dim + (size_t)n_ctx * head_dim + MAXQ * round32(n_ctx);
}

typedef struct {
    const sq_attn_args *a;
    int per_head;     /* 1: task = (query head, block); 0: task = (kv head, block) */
    int n_blocks;
} attn_job;

/* ---- portable kernel ------------------------------------------------------------------------- */

/* softmax of scores[0, n) in place; returns 1 / Σ exp */
static float softmax_unnormalized(float *scores, int n) {
    float mx = -INFINITY;
    for (int p = 0; p < n; p++) mx = scores[p] > mx ? scores[p] : mx;
    float sum = 0;
    for (int p = 0; p < n; p++) {
        scores[p] = expf(scores[p] - mx);
        sum += scores[p];
    }
    return 1.0f / sum;
}

/* One query row against positions [lo, n_pos); K and V row-major from position 0. */
static void attend_generic(const float *q, const float *K, const float *V, int lo, int n_pos, int hd, float scale,
                           float cap, float *scores, float *out) {
    K += (size_t)lo * hd, V += (size_t)lo * hd, n_pos -= lo;
    for (int p = 0; p < n_pos; p++) scores[p] = sq_dotf(q, K + (size_t)p * hd, hd) * scale;
    if (cap > 0) sq_softcap(scores, n_pos, cap);
    float inv = softmax_unnormalized(scores, n_pos);
    memset(out, 0, (size_t)hd * sizeof *out);
    for (int p = 0; p < n_pos; p++) {
        float w = scores[p] * inv;
        const float *v = V + (size_t)p * hd;
        for (int i = 0; i < hd; i++) out[i] += w * v[i];
    }
}

/* ---- AVX2 kernel ----------------------------------------------------------------------------- */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SQ_ATTN_AVX2 1

#include "transpose8.h"
#include "vexp.h"

/* K rows [0, n_pos) (row-major, hd wide, hd % 8 == 0) -> Kt[b][d][j] = K[8b + j][d], zero past
 * n_pos. Whole blocks go through an 8×8 register transpose; the last partial block is scalar. */
__attribute__((target("avx2,fma"))) static void transpose_k(const float *K, int n_pos, int hd, float *Kt) {
    const int full = n_pos / 8, nb = (n_pos + 7) / 8;
    for (int b = 0; b < full; b++) {
        const float *src = K + (size_t)b * 8 * hd;
        float *blk = Kt + (size_t)b * hd * 8;
        for (int d = 0; d < hd; d += 8) {
            __m256 r[8];
            for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_ps(src + (size_t)j * hd + d);
            sq_transpose8_ps(r); /* r[i] = column d + i of the 8 rows */
            for (int i = 0; i < 8; i++) _mm256_storeu_ps(blk + (size_t)(d + i) * 8, r[i]);
        }
    }
    for (int b = full; b < nb; b++) {
        float *blk = Kt + (size_t)b * hd * 8;
        for (int j = 0; j < 8; j++) {
            int p = 8 * b + j;
            for (int d = 0; d < hd; d++) blk[d * 8 + j] = p < n_pos ? K[(size_t)p * hd + d] : 0.0f;
        }
    }
}

/* Scores of nq query rows (scaled) against blocks [0, nb) of Kt: s[i][8b + j]. */
__attribute__((target("avx2,fma"))) static void scores_avx2(const float *const *q, int nq, const float *Kt, int nb,
                                                             int hd, float scale, float *const *s) {
    const size_t bs = (size_t)hd * 8;
    for (int b = 0; b < nb; b += 2) {
        const int two = b + 1 < nb;
        __m256 acc[MAXQ][2];
        for (int i = 0; i < nq; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        const float *k0 = Kt + (size_t)b * bs, *k1 = two ? k0 + bs : k0;
        for (int d = 0; d < hd; d++) {
            const __m256 ka = _mm256_loadu_ps(k0 + d * 8), kb = _mm256_loadu_ps(k1 + d * 8);
            for (int i = 0; i < nq; i++) {
                const __m256 qd = _mm256_set1_ps(q[i][d]);
                acc[i][0] = _mm256_fmadd_ps(qd, ka, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(qd, kb, acc[i][1]);
            }
        }
        const __m256 sc = _mm256_set1_ps(scale);
        for (int i = 0; i < nq; i++) {
            _mm256_storeu_ps(s[i] + 8 * b, _mm256_mul_ps(acc[i][0], sc));
            if (two) _mm256_storeu_ps(s[i] + 8 * b + 8, _mm256_mul_ps(acc[i][1], sc));
        }
    }
}

/* In place: s[p] = exp(s[p] - max) for p < n (the tail of the last block becomes ~1e-38, which
 * P·V never reads); returns 1/Σ. */
__attribute__((target("avx2,fma"))) static float softmax_avx2(float *s, int n) {
    const int n8 = (n + 7) / 8 * 8;
    for (int p = n; p < n8; p++) s[p] = -INFINITY;
    __m256 mx = _mm256_set1_ps(-INFINITY);
    for (int p = 0; p < n8; p += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + p));
    float m8[8], mxs = -INFINITY;
    _mm256_storeu_ps(m8, mx);
    for (int i = 0; i < 8; i++) mxs = m8[i] > mxs ? m8[i] : mxs;
    const __m256 vm = _mm256_set1_ps(mxs);
    __m256 sum = _mm256_setzero_ps();
    for (int p = 0; p < n8; p += 8) {
        const __m256 e = sq_exp256(_mm256_sub_ps(_mm256_loadu_ps(s + p), vm));
        _mm256_storeu_ps(s + p, e);
        sum = _mm256_add_ps(sum, e);
    }
    float s8[8];
    _mm256_storeu_ps(s8, sum);
    return 1.0f / (((s8[0] + s8[4]) + (s8[1] + s8[5])) + ((s8[2] + s8[6]) + (s8[3] + s8[7])));
}

/* Three queries in one pass, 16 output dims at a time (6 accumulators): a GQA group of 3 heads
 * (SmolLM2, many Llama sizes) would otherwise leave its third head alone in a pass whose 4
 * accumulator chains cannot hide the FMA latency. Per output element the sum runs over p in the
 * same order as pv_avx2's, so the results are the same bits. */
__attribute__((target("avx2,fma"))) static void pv3_avx2(float *const *s, const float *inv, const float *V, int n_pos,
                                                         int hd, float *const *out) {
    for (int c = 0; c < hd; c += 16) {
        __m256 acc[3][2];
        for (int i = 0; i < 3; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        for (int p = 0; p < n_pos; p++) {
            const float *v = V + (size_t)p * hd + c;
            const __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8);
            for (int i = 0; i < 3; i++) {
                const __m256 w = _mm256_set1_ps(s[i][p]);
                acc[i][0] = _mm256_fmadd_ps(w, v0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(w, v1, acc[i][1]);
            }
        }
        for (int i = 0; i < 3; i++) {
            const __m256 sc = _mm256_set1_ps(inv[i]);
            _mm256_storeu_ps(out[i] + c, _mm256_mul_ps(acc[i][0], sc));
            _mm256_storeu_ps(out[i] + c + 8, _mm256_mul_ps(acc[i][1], sc));
        }
    }
}

/* out_i = Σ_p s_i[p]·V[p] · inv_i for nq (≤ 2 per pass) queries, 32 output dims at a time. */
__attribute__((target("avx2,fma"))) static void pv_avx2(float *const *s, const float *inv, int nq, const float *V,
                                                        int n_pos, int hd, float *const *out) {
    if (nq == 3 && hd % 16 == 0) {
        pv3_avx2(s, inv, V, n_pos, hd, out);
        return;
    }
    for (int q0 = 0; q0 < nq; q0 += 2) {
        const int nqq = nq - q0 < 2 ? nq - q0 : 2;
        for (int c = 0; c < hd; c += 32) {
            const int nv = (hd - c) / 8 < 4 ? (hd - c) / 8 : 4;
            __m256 acc[2][4];
            for (int i = 0; i < 2; i++)
                for (int k = 0; k < 4; k++) acc[i][k] = _mm256_setzero_ps();
            for (int p = 0; p < n_pos; p++) {
                const float *v = V + (size_t)p * hd + c;
                __m256 vv[4];
                for (int k = 0; k < nv; k++) vv[k] = _mm256_loadu_ps(v + 8 * k);
                for (int i = 0; i < nqq; i++) {
                    const __m256 w = _mm256_set1_ps(s[q0 + i][p]);
                    for (int k = 0; k < nv; k++) acc[i][k] = _mm256_fmadd_ps(w, vv[k], acc[i][k]);
                }
            }
            for (int i = 0; i < nqq; i++) {
                const __m256 sc = _mm256_set1_ps(inv[q0 + i]);
                for (int k = 0; k < nv; k++) _mm256_storeu_ps(out[q0 + i] + c + 8 * k, _mm256_mul_ps(acc[i][k], sc));
            }
        }
    }
}

/* nq query rows (same KV head, same position) against positions [lo, n_pos): scores from lo's block
 * of 8 on (the positions of that block before lo masked to -inf), P·V from lo. lo = 0 and no cap:
 * the plain path, unchanged. */
static void attend_avx2(const float *const *q, int nq, const float *Kt, const float *V, int lo, int n_pos, int hd,
                        float scale, float cap, float *scores, size_t score_stride, float *const *out) {
    const int b0 = lo / 8, p0 = 8 * b0;
    float *s[MAXQ], *sv[MAXQ], inv[MAXQ];
    for (int i = 0; i < nq; i++) s[i] = scores + (size_t)i * score_stride + p0, sv[i] = s[i] + (lo - p0);
    scores_avx2(q, nq, Kt + (size_t)b0 * hd * 8, (n_pos + 7) / 8 - b0, hd, scale, s);
    for (int i = 0; i < nq; i++) {
        if (cap > 0) sq_softcap(sv[i], n_pos - lo, cap);
        for (int p = 0; p < lo - p0; p++) s[i][p] = -INFINITY;
        inv[i] = softmax_avx2(s[i], n_pos - p0);
    }
    pv_avx2(sv, inv, nq, V + (size_t)lo * hd, n_pos - lo, hd, out);
}
#endif

/* ---- tasks ----------------------------------------------------------------------------------- */

/* The first position query t sees: 0, or the start of its sliding window. */
static int first_visible(const sq_attn_args *a, int t) {
    int lo = a->window > 0 ? a->pos0 + t - a->window + 1 : 0;
    return lo > 0 ? lo : 0;
}

static void attn_task(void *ctx, int task, int thread) {
    const attn_job *j = ctx;
    const sq_attn_args *a = j->a;
    const sq_kvcache *kv = a->kv;
    int hd = kv->head_dim, group = a->n_head / kv->n_kv_head, width = a->n_head * hd;
    int blk = task % j->n_blocks, head = task / j->n_blocks;
    int kvh = j->per_head ? head / group : head;
    int h0 = j->per_head ? head : head * group, h1 = j->per_head ? head + 1 : (head + 1) * group;
    int t0 = blk * QBLOCK, t1 = t0 + QBLOCK < a->n_tok ? t0 + QBLOCK : a->n_tok;
    int n_pos = a->pos0 + t1; /* the block's last query sees this many positions */
    float *Kt = a->scratch + (size_t)thread * a->scratch_floats, *V = Kt + round32(kv->n_ctx) * hd,
          *scores = V + (size_t)kv->n_ctx * hd;
#ifdef SQ_ATTN_AVX2
    if (a->simd && hd % 8 == 0) {
        sq_kv_load_k(kv, a->layer, kvh, 0, n_pos, V); /* V's space holds K until it is transposed */
        transpose_k(V, n_pos, hd, Kt);
        sq_kv_load_v(kv, a->layer, kvh, 0, n_pos, V);
        for (int t = t0; t < t1; t++)
            for (int h = h0; h < h1; h += MAXQ) { /* the heads of a group share each K/V load */
                int nq = h1 - h < MAXQ ? h1 - h : MAXQ;
                const float *qs[MAXQ];
                float *outs[MAXQ];
                for (int i = 0; i < nq; i++) {
                    qs[i] = a->q + (size_t)t * width + (size_t)(h + i) * hd;
                    outs[i] = a->out + (size_t)t * width + (size_t)(h + i) * hd;
                }
                attend_avx2(qs, nq, Kt, V, first_visible(a, t), a->pos0 + t + 1, hd, a->scale, a->softcap, scores,
                            round32(kv->n_ctx), outs);
            }
        return;
    }
#endif
    sq_kv_load_k(kv, a->layer, kvh, 0, n_pos, Kt);
    sq_kv_load_v(kv, a->layer, kvh, 0, n_pos, V);
    for (int t = t0; t < t1; t++)
        for (int h = h0; h < h1; h++)
            attend_generic(a->q + (size_t)t * width + (size_t)h * hd, Kt, V, first_visible(a, t), a->pos0 + t + 1, hd,
                           a->scale, a->softcap, scores, a->out + (size_t)t * width + (size_t)h * hd);
}

/* One task per query head only when there are more threads than KV heads to keep busy:
 * otherwise a group's heads share one conversion (and transpose) of the head's K/V rows. */
static attn_job make_job(sq_pool *pool, const sq_attn_args *a) {
    attn_job j = {a, a->n_tok < 8 && sq_pool_size(pool) > a->kv->n_kv_head, (a->n_tok + QBLOCK - 1) / QBLOCK};
    return j;
}

static int job_tasks(const attn_job *j) { return (j->per_head ? j->a->n_head : j->a->kv->n_kv_head) * j->n_blocks; }

void sq_attention(sq_pool *pool, const sq_attn_args *a) {
    attn_job j = make_job(pool, a);
    sq_pool_run(pool, attn_task, &j, job_tasks(&j));
}

/* ---- several independent attentions in one pool job (batch.c: one per sequence) ------------- */

typedef struct {
    attn_job jobs[SQ_ATTN_MULTI_MAX];
    int first[SQ_ATTN_MULTI_MAX + 1]; /* task index where call i starts */
    int n;
} multi_job;

static void multi_task(void *ctx, int task, int thread) {
    multi_job *mj = ctx;
    int i = 0;
    while (task >= mj->first[i + 1]) i++;
    attn_task(&mj->jobs[i], task - mj->first[i], thread);
}

void sq_attention_multi(sq_pool *pool, const sq_attn_args *a, int n) {
    while (n > 0) {
        multi_job mj;
        mj.n = n < SQ_ATTN_MULTI_MAX ? n : SQ_ATTN_MULTI_MAX;
        mj.first[0] = 0;
        for (int i = 0; i < mj.n; i++) {
            mj.jobs[i] = make_job(pool, &a[i]);
            mj.first[i + 1] = mj.first[i] + job_tasks(&mj.jobs[i]);
        }
        sq_pool_run(pool, multi_task, &mj, mj.first[mj.n]);
        a += mj.n;
        n -= mj.n;
    }
}
