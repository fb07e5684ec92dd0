/* batch.c — several sequences in one forward pass (sq_batch_*, specquant.h).
 *
 * A batch owns n_seq KV caches (the model's kv_type, n_ctx positions each) and their positions.
 * sq_batch_eval runs the model's own forward pass (model.c: sq_model_forward_body / _head) over
 * the n tokens of the call as one batch, so every linear layer reads its weights once for all of
 * them, with one difference: model.c's seq_attn hook is set, and the RoPE, KV stores and attention
 * of each layer happen here, per token at its own sequence's position and against its own cache.
 * Consecutive tokens of one sequence (a prompt) share one sq_attention call, like a single-sequence
 * prefill; a decode token is a call of one, like a single-sequence decode step, so each sequence's
 * attention math is the one a model of its own runs. The linears compute each token's row from
 * that token alone (activation quantization per token, integer sums per row), so a sequence's
 * logits do not depend on the other sequences in the batch (tests/test_batch.py checks the bits).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "error.h"
#include "model.h"

struct sq_batch {
    sq_model *m;
    int n_seq;
    sq_kvcache *kv; /* n_seq caches */
    int *n_past;    /* n_seq positions */
    /* per call (sized for the model's n_batch tokens) */
    int *seq, *pos;
    sq_attn_args *runs;
};

SQ_API sq_batch *sq_batch_new(sq_model *m, int32_t n_seq) {
    if (!m) {
        sq_set_error(SQ_ERR_ARG, "model is NULL");
        return NULL;
    }
    if (m->gpu) {
        sq_set_error(SQ_ERR_UNSUPPORTED, "batches of sequences run on the CPU backend only (load with backend cpu)");
        return NULL;
    }
    if (n_seq < 1 || n_seq > 4096) {
        sq_set_error(SQ_ERR_ARG, "n_seq must be in 1..4096, got %d", n_seq);
        return NULL;
    }
    sq_batch *b = calloc(1, sizeof *b);
    if (!b) goto oom;
    b->m = m;
    b->kv = calloc((size_t)n_seq, sizeof *b->kv);
    b->n_past = calloc((size_t)n_seq, sizeof *b->n_past);
    b->seq = malloc((size_t)m->n_batch * sizeof *b->seq);
    b->pos = malloc((size_t)m->n_batch * sizeof *b->pos);
    b->runs = malloc((size_t)m->n_batch * sizeof *b->runs);
    if (!b->kv || !b->n_past || !b->seq || !b->pos || !b->runs) goto oom;
    for (int s = 0; s < n_seq; s++) {
        sq_status st = sq_kv_init(&b->kv[s], m->kv_type, m->hp.n_layer, m->hp.n_kv_head, m->hp.head_dim, m->n_ctx);
        b->n_seq = s + 1; /* what sq_batch_free must free */
        if (st) {
            sq_batch_free(b);
            return NULL;
        }
    }
    return b;
oom:
    sq_batch_free(b);
    sq_set_error(SQ_ERR_NOMEM, "out of memory for a batch of %d sequences", n_seq);
    return NULL;
}

SQ_API void sq_batch_free(sq_batch *b) {
    if (!b) return;
    if (b->kv)
        for (int s = 0; s < b->n_seq; s++) sq_kv_free(&b->kv[s]);
    free(b->kv);
    free(b->n_past);
    free(b->seq);
    free(b->pos);
    free(b->runs);
    free(b);
}

SQ_API int32_t sq_batch_n_seq(const sq_batch *b) { return b ? b->n_seq : 0; }

SQ_API int32_t sq_batch_n_past(const sq_batch *b, int32_t seq) {
    return b && seq >= 0 && seq < b->n_seq ? b->n_past[seq] : -1;
}

SQ_API sq_status sq_batch_set_n_past(sq_batch *b, int32_t seq, int32_t n_past) {
    if (!b) return sq_set_error(SQ_ERR_ARG, "batch is NULL");
    if (seq < 0 || seq >= b->n_seq) return sq_set_error(SQ_ERR_ARG, "sequence %d is not in 0..%d", seq, b->n_seq - 1);
    if (n_past < 0 || n_past > b->n_past[seq])
        return sq_set_error(SQ_ERR_ARG, "n_past %d must be in 0..%d (sequence %d's position)", n_past, b->n_past[seq],
                            seq);
    b->n_past[seq] = n_past;
    return SQ_OK;
}

/* ---- the attention hook ----------------------------------------------------------------------- */

typedef struct {
    sq_batch *b;
    int layer, nb, n_chunks;
} rope_job;

/* RoPE of token t's q and k at its position, and its K/V rows into its sequence's cache. */
static void rope_store_task(void *ctx, int task, int thread) {
    (void)thread;
    const rope_job *j = ctx;
    sq_batch *b = j->b;
    sq_model *m = b->m;
    const sq_hparams *hp = &m->hp;
    int hd = hp->head_dim, qw = hp->n_head * hd, kvw = hp->n_kv_head * hd;
    int t0 = j->nb * task / j->n_chunks, t1 = j->nb * (task + 1) / j->n_chunks;
    for (int t = t0; t < t1; t++) {
        int pos = b->pos[t];
        sq_rope_apply(&m->rope, m->q + (size_t)t * qw, hp->n_head, hd, pos);
        sq_rope_apply(&m->rope, m->k + (size_t)t * kvw, hp->n_kv_head, hd, pos);
        for (int h = 0; h < hp->n_kv_head; h++)
            sq_kv_store(&b->kv[b->seq[t]], j->layer, h, pos, m->k + (size_t)t * kvw + (size_t)h * hd,
                        m->v + (size_t)t * kvw + (size_t)h * hd);
    }
}

static void seq_attention(sq_model *m, int il, int nb) {
    sq_batch *b = m->seq_ctx;
    const sq_hparams *hp = &m->hp;
    int qw = hp->n_head * hp->head_dim;
    rope_job j = {b, il, nb, nb < m->exec.n_threads ? nb : m->exec.n_threads};
    sq_pool_run(m->exec.pool, rope_store_task, &j, j.n_chunks);
    /* runs of consecutive tokens of one sequence at consecutive positions: one attention each (what
     * a single-sequence forward of those tokens computes), all in one pool job */
    int n_runs = 0;
    for (int t0 = 0; t0 < nb;) {
        int t1 = t0 + 1;
        while (t1 < nb && b->seq[t1] == b->seq[t0] && b->pos[t1] == b->pos[t1 - 1] + 1) t1++;
        sq_attn_args a = {.kv = &b->kv[b->seq[t0]], .layer = il, .q = m->q + (size_t)t0 * qw,
                          .out = m->att + (size_t)t0 * qw, .n_tok = t1 - t0, .pos0 = b->pos[t0], .n_head = hp->n_head,
                          .simd = m->exec.simd, .scratch = m->attn_scratch, .scratch_floats = m->attn_scratch_floats};
        sq_model_attn_layer(m, il, &a);
        b->runs[n_runs++] = a;
        t0 = t1;
    }
    sq_attention_multi(m->exec.pool, b->runs, n_runs);
}

/* ---- eval --------------------------------------------------------------------------------------- */

SQ_API sq_status sq_batch_eval(sq_batch *b, const int32_t *seq_ids, const int32_t *tokens, int32_t n,
                               const int32_t *want, float *logits) {
    if (!b) return sq_set_error(SQ_ERR_ARG, "batch is NULL");
    sq_model *m = b->m;
    if (n <= 0 || !tokens || !seq_ids) return sq_set_error(SQ_ERR_ARG, "eval needs at least one token (got n = %d)", n);
    int *count = calloc((size_t)b->n_seq, sizeof *count);
    if (!count) return sq_set_error(SQ_ERR_NOMEM, "out of memory");
    sq_status st = SQ_OK;
    for (int32_t i = 0; i < n && !st; i++) {
        if (seq_ids[i] < 0 || seq_ids[i] >= b->n_seq)
            st = sq_set_error(SQ_ERR_ARG, "sequence id %d at index %d is not in 0..%d", seq_ids[i], i, b->n_seq - 1);
        else if (tokens[i] < 0 || tokens[i] >= m->hp.n_vocab)
            st = sq_set_error(SQ_ERR_ARG, "token id %d at index %d is out of range [0, %d)", tokens[i], i,
                              m->hp.n_vocab);
        else if (b->n_past[seq_ids[i]] + ++count[seq_ids[i]] > m->n_ctx)
            st = sq_set_error(SQ_ERR_CTX_FULL, "context full: sequence %d holds %d tokens + %d new > n_ctx %d",
                              seq_ids[i], b->n_past[seq_ids[i]], count[seq_ids[i]], m->n_ctx);
    }
    free(count);
    if (st) return st;

    size_t nv = (size_t)m->hp.n_vocab;
    float *out = logits;
    for (int32_t start = 0; start < n; start += m->n_batch) {
        int nb = n - start < m->n_batch ? n - start : m->n_batch;
        for (int t = 0; t < nb; t++) {
            b->seq[t] = seq_ids[start + t];
            b->pos[t] = b->n_past[b->seq[t]]++;
        }
        m->seq_attn = seq_attention;
        m->seq_ctx = b;
        sq_model_forward_body(m, tokens + start, nb, 0);
        m->seq_attn = NULL;
        m->seq_ctx = NULL;
        if (!logits) continue;
        /* the rows that want logits, moved to the front of m->x (in order), then the head on them */
        int k = 0, D = m->hp.n_embd;
        for (int t = 0; t < nb; t++)
            if (!want || want[start + t]) {
                if (k != t) memcpy(m->x + (size_t)k * D, m->x + (size_t)t * D, (size_t)D * sizeof *m->x);
                k++;
            }
        if (k) {
            sq_model_forward_head(m, 0, k, out);
            out += (size_t)k * nv;
        }
    }
    return SQ_OK;
}
