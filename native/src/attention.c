/* attention.c — causal GQA: softmax(q·Kᵀ·scale)·V per head, K/V read from the cache as floats.
 *
 * Tasks: for prefill, (KV head, block of queries): the head's K/V rows are converted once and
 * serve every query head of the group; for decode (few tokens), one task per query head so that
 * all threads get work, each converting its KV head's rows (cheap next to the dot products).
 */
#include "attention.h"

#include <math.h>
#include <string.h>

#define QBLOCK 32

size_t sq_attention_scratch_floats(int n_ctx, int head_dim) { return (size_t)n_ctx * (2 * (size_t)head_dim + 1); }

typedef struct {
    const sq_attn_args *a;
    int per_head;     /* 1: task = (query head, block); 0: task = (kv head, block) */
    int n_blocks;
} attn_job;

static float dotf(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int u = 0; u < 8; u++) acc[u] += a[i + u] * b[i + u];
    float r = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++) r += a[i] * b[i];
    return r;
}

/* One query row against positions [0, n_pos). */
static void attend(const float *q, const float *K, const float *V, int n_pos, int hd, float scale, float *scores,
                   float *out) {
    float mx = -INFINITY;
    for (int p = 0; p < n_pos; p++) {
        scores[p] = dotf(q, K + (size_t)p * hd, hd) * scale;
        if (scores[p] > mx) mx = scores[p];
    }
    float sum = 0;
    for (int p = 0; p < n_pos; p++) {
        scores[p] = expf(scores[p] - mx);
        sum += scores[p];
    }
    float inv = 1.0f / sum;
    memset(out, 0, (size_t)hd * sizeof *out);
    for (int p = 0; p < n_pos; p++) {
        float w = scores[p] * inv;
        const float *v = V + (size_t)p * hd;
        for (int i = 0; i < hd; i++) out[i] += w * v[i];
    }
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
    float *K = a->scratch + (size_t)thread * a->scratch_floats, *V = K + (size_t)kv->n_ctx * hd,
          *scores = V + (size_t)kv->n_ctx * hd;
    sq_kv_load_k(kv, a->layer, kvh, 0, n_pos, K);
    sq_kv_load_v(kv, a->layer, kvh, 0, n_pos, V);
    for (int t = t0; t < t1; t++)
        for (int h = h0; h < h1; h++)
            attend(a->q + (size_t)t * width + (size_t)h * hd, K, V, a->pos0 + t + 1, hd, a->scale, scores,
                   a->out + (size_t)t * width + (size_t)h * hd);
}

void sq_attention(sq_pool *pool, const sq_attn_args *a) {
    attn_job j = {a, a->n_tok < 8, (a->n_tok + QBLOCK - 1) / QBLOCK};
    int heads = j.per_head ? a->n_head : a->kv->n_kv_head;
    sq_pool_run(pool, attn_task, &j, heads * j.n_blocks);
}
