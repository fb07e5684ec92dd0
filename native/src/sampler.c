/* sampler.c — next-token sampling: repetition penalty, then greedy, or top-k -> top-p -> min-p ->
 * temperature -> a draw from the distribution (llama.cpp's default order: the truncations look at
 * the model's own probabilities, the temperature only reshapes what is left).
 *
 * Randomness comes from our own xoshiro256** seeded through splitmix64, so the same seed gives the
 * same tokens on every platform (rand() differs between C libraries). Buffers are allocated once,
 * at the first call for a vocabulary size; sampling itself does not allocate.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "specquant.h"

typedef struct {
    float logit;
    float p;
    int32_t id;
} cand;

struct sq_sampler {
    sq_sampler_params p;
    uint64_t rng[4];
    int32_t *recent;      /* ring buffer of the last repeat_last_n accepted tokens */
    int32_t n_recent, head;
    cand *cands;          /* n_vocab candidates */
    uint32_t *seen;       /* per token: the stamp of the last penalty pass that touched it */
    uint32_t stamp;
    int32_t cap_vocab;
};

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t s[4]) {
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* uniform in [0, 1) with 53 random bits */
static double uniform01(uint64_t s[4]) { return (double)(xoshiro_next(s) >> 11) * (1.0 / 9007199254740992.0); }

static void seed_rng(sq_sampler *s) {
    uint64_t x = s->p.seed;
    if (x == SQ_SEED_RANDOM) { /* a fresh seed: time and the object's address */
        struct timespec ts;
        timespec_get(&ts, TIME_UTC);
        x = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)s;
    }
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
}

SQ_API sq_sampler_params sq_sampler_default_params(void) {
    sq_sampler_params p;
    p.temperature = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    p.seed = SQ_SEED_RANDOM;
    return p;
}

SQ_API sq_sampler *sq_sampler_new(const sq_sampler_params *p) {
    if (!p) {
        sq_set_error(SQ_ERR_ARG, "sampler: no parameters");
        return NULL;
    }
    if (isnan(p->temperature) || p->temperature < 0) {
        sq_set_error(SQ_ERR_ARG, "sampler: temperature must be >= 0 (0 = greedy), got %g", (double)p->temperature);
        return NULL;
    }
    if (!(p->top_p > 0 && p->top_p <= 1)) {
        sq_set_error(SQ_ERR_ARG, "sampler: top_p must be in (0, 1], got %g", (double)p->top_p);
        return NULL;
    }
    if (!(p->min_p >= 0 && p->min_p <= 1)) {
        sq_set_error(SQ_ERR_ARG, "sampler: min_p must be in [0, 1], got %g", (double)p->min_p);
        return NULL;
    }
    if (!(p->repeat_penalty > 0) || isinf(p->repeat_penalty)) {
        sq_set_error(SQ_ERR_ARG, "sampler: repeat_penalty must be > 0 (1 = off), got %g", (double)p->repeat_penalty);
        return NULL;
    }
    if (p->repeat_last_n < 0 || p->repeat_last_n > (1 << 24)) {
        sq_set_error(SQ_ERR_ARG, "sampler: repeat_last_n must be in [0, 2^24], got %d", p->repeat_last_n);
        return NULL;
    }
    sq_sampler *s = calloc(1, sizeof *s);
    if (!s) {
        sq_set_error(SQ_ERR_NOMEM, "sampler: out of memory");
        return NULL;
    }
    s->p = *p;
    if (s->p.top_k < 0) s->p.top_k = 0;
    if (p->repeat_last_n > 0) {
        s->recent = malloc(sizeof(int32_t) * (size_t)p->repeat_last_n);
        if (!s->recent) {
            free(s);
            sq_set_error(SQ_ERR_NOMEM, "sampler: out of memory");
            return NULL;
        }
    }
    seed_rng(s);
    return s;
}

SQ_API void sq_sampler_free(sq_sampler *s) {
    if (!s) return;
    free(s->recent);
    free(s->cands);
    free(s->seen);
    free(s);
}

SQ_API void sq_sampler_accept(sq_sampler *s, int32_t token) {
    if (!s || s->p.repeat_last_n == 0 || token < 0) return;
    s->recent[s->head] = token;
    s->head = (s->head + 1) % s->p.repeat_last_n;
    if (s->n_recent < s->p.repeat_last_n) s->n_recent++;
}

SQ_API void sq_sampler_reset(sq_sampler *s) {
    if (!s) return;
    s->n_recent = 0;
    s->head = 0;
    seed_rng(s);
}

static int reserve(sq_sampler *s, int32_t n_vocab) {
    if (n_vocab <= s->cap_vocab) return 1;
    cand *c = realloc(s->cands, sizeof(cand) * (size_t)n_vocab);
    if (!c) return 0;
    s->cands = c;
    uint32_t *seen = realloc(s->seen, sizeof(uint32_t) * (size_t)n_vocab);
    if (!seen) return 0;
    memset(seen, 0, sizeof(uint32_t) * (size_t)n_vocab);
    s->seen = seen;
    s->stamp = 0;
    s->cap_vocab = n_vocab;
    return 1;
}

/* Every token seen in the window once, whatever its count (llama.cpp's repeat penalty):
 * positive logits are divided by the penalty, negative ones multiplied. */
static void apply_penalty(sq_sampler *s, float *logits, int32_t n_vocab) {
    if (s->p.repeat_penalty == 1.0f || s->n_recent == 0) return;
    if (++s->stamp == 0) { /* the stamp wrapped: forget old marks */
        memset(s->seen, 0, sizeof(uint32_t) * (size_t)s->cap_vocab);
        s->stamp = 1;
    }
    for (int32_t i = 0; i < s->n_recent; i++) {
        int32_t t = s->recent[i];
        if (t >= n_vocab || s->seen[t] == s->stamp) continue;
        s->seen[t] = s->stamp;
        logits[t] = logits[t] > 0 ? logits[t] / s->p.repeat_penalty : logits[t] * s->p.repeat_penalty;
    }
}

static int cand_desc(const void *a, const void *b) {
    float x = ((const cand *)a)->logit, y = ((const cand *)b)->logit;
    if (x != y) return x > y ? -1 : 1;
    int32_t i = ((const cand *)a)->id, j = ((const cand *)b)->id;
    return (i > j) - (i < j); /* ties: lower id first, so the order is total and reproducible */
}

/* Moves the k largest candidates to the front (any order): quickselect on logits. */
static void select_top(cand *c, int32_t n, int32_t k) {
    int32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        cand pivot = c[lo + (hi - lo) / 2];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (cand_desc(&c[i], &pivot) < 0) i++;
            while (cand_desc(&c[j], &pivot) > 0) j--;
            if (i <= j) {
                cand t = c[i];
                c[i] = c[j];
                c[j] = t;
                i++;
                j--;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

/* softmax of c[0..n) (sorted, c[0] the largest) into c[].p; returns nothing, sums to 1 */
static void softmax(cand *c, int32_t n, float inv_temp) {
    double sum = 0;
    float mx = c[0].logit;
    for (int32_t i = 0; i < n; i++) {
        c[i].p = expf((c[i].logit - mx) * inv_temp);
        sum += c[i].p;
    }
    for (int32_t i = 0; i < n; i++) c[i].p = (float)(c[i].p / sum);
}

SQ_API int32_t sq_sampler_sample(sq_sampler *s, float *logits, int32_t n_vocab) {
    if (!s || !logits || n_vocab <= 0) {
        sq_set_error(SQ_ERR_ARG, "sampler: bad arguments (n_vocab %d)", n_vocab);
        return -1;
    }
    if (!reserve(s, n_vocab)) {
        sq_set_error(SQ_ERR_NOMEM, "sampler: out of memory");
        return -1;
    }
    apply_penalty(s, logits, n_vocab);
    /* candidates: every finite logit (NaN / -inf never win) */
    int32_t n = 0, best = -1;
    for (int32_t i = 0; i < n_vocab; i++) {
        float l = logits[i];
        if (isnan(l) || l == -INFINITY) continue;
        if (best < 0 || l > logits[best]) best = i;
        s->cands[n++] = (cand){l, 0.0f, i};
    }
    if (n == 0) {
        sq_set_error(SQ_ERR_ARG, "sampler: no finite logits");
        return -1;
    }
    if (s->p.temperature <= 0 || n == 1) return best; /* greedy: the first of equal maxima */
    cand *c = s->cands;
    if (logits[best] == INFINITY) return best;
    /* top-k, then sort what is left (the full vocabulary when top-k is off) */
    if (s->p.top_k > 0 && s->p.top_k < n) {
        select_top(c, n, s->p.top_k);
        n = s->p.top_k;
    }
    qsort(c, (size_t)n, sizeof(cand), cand_desc);
    /* top-p and min-p on the model's probabilities */
    softmax(c, n, 1.0f);
    if (s->p.top_p < 1.0f) {
        double cum = 0;
        int32_t keep = n;
        for (int32_t i = 0; i < n; i++) {
            cum += c[i].p;
            if (cum >= s->p.top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    if (s->p.min_p > 0) {
        float floor_p = c[0].p * s->p.min_p;
        int32_t keep = 1;
        while (keep < n && c[keep].p >= floor_p) keep++;
        n = keep;
    }
    /* temperature on what is left, then one draw */
    softmax(c, n, 1.0f / s->p.temperature);
    double u = uniform01(s->rng), cum = 0;
    for (int32_t i = 0; i < n; i++) {
        cum += c[i].p;
        if (u < cum) return c[i].id;
    }
    return c[n - 1].id; /* rounding: u fell past the last cumulative sum */
}
