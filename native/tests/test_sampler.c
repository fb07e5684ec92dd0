/* test_sampler.c — sampling against the distributions it must draw from.
 *
 * Greedy / ties / NaN, parameter validation, reproducibility by seed, empirical frequencies for a
 * plain softmax draw (temperature 1 and 0.5), top-k on a large random vocabulary (the quickselect),
 * top-p and min-p cut-offs, and the repetition penalty.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "specquant.h"
#include "test_util.h"

static sq_sampler_params plain(float temp) { /* no truncation, no penalty */
    sq_sampler_params p = sq_sampler_default_params();
    p.temperature = temp;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 1234;
    return p;
}

/* draws n times from logits (copied each time: the sampler may modify them) */
static void histogram(sq_sampler *s, const float *logits, int n_vocab, int n, int *counts) {
    float *l = malloc(sizeof(float) * (size_t)n_vocab);
    memset(counts, 0, sizeof(int) * (size_t)n_vocab);
    for (int i = 0; i < n; i++) {
        memcpy(l, logits, sizeof(float) * (size_t)n_vocab);
        int t = sq_sampler_sample(s, l, n_vocab);
        if (t >= 0 && t < n_vocab) counts[t]++;
    }
    free(l);
}

static void test_params(void) {
    sq_sampler_params p = sq_sampler_default_params();
    CHECK(p.temperature > 0 && p.top_k == 40 && p.top_p == 0.95f && p.seed == SQ_SEED_RANDOM, "defaults");
    sq_sampler_params bad[6];
    for (int i = 0; i < 6; i++) bad[i] = p;
    bad[0].temperature = -0.1f;
    bad[1].top_p = 0.0f;
    bad[2].top_p = 1.5f;
    bad[3].min_p = -1.0f;
    bad[4].repeat_penalty = 0.0f;
    bad[5].repeat_last_n = -2;
    for (int i = 0; i < 6; i++) CHECK(sq_sampler_new(&bad[i]) == NULL && *sq_last_error(), "bad params #%d rejected", i);
    bad[0].temperature = NAN;
    CHECK(sq_sampler_new(&bad[0]) == NULL, "NaN temperature");
    CHECK(sq_sampler_new(NULL) == NULL, "NULL params");
    sq_sampler *s = sq_sampler_new(&p);
    CHECK(s != NULL, "default sampler");
    float l[2] = {0, 1};
    CHECK(sq_sampler_sample(s, l, 0) == -1 && sq_sampler_sample(s, NULL, 2) == -1, "bad sample args");
    float nan2[2] = {NAN, -INFINITY};
    CHECK(sq_sampler_sample(s, nan2, 2) == -1, "no finite logit");
    sq_sampler_free(s);
    sq_sampler_free(NULL);
}

static void test_greedy(void) {
    sq_sampler_params p = plain(0.0f);
    sq_sampler *s = sq_sampler_new(&p);
    float l[5] = {1, 3, NAN, 3, -2};
    CHECK(sq_sampler_sample(s, l, 5) == 1, "argmax, first of ties, NaN ignored");
    float m[3] = {-INFINITY, -5, -7};
    CHECK(sq_sampler_sample(s, m, 3) == 1, "argmax with -inf");
    sq_sampler_free(s);
    p = plain(1.0f);
    p.top_k = 1;
    s = sq_sampler_new(&p);
    for (int i = 0; i < 50; i++) {
        float x[4] = {0.1f, 0.2f, 5.0f, 0.3f};
        CHECK(sq_sampler_sample(s, x, 4) == 2, "top_k 1 is greedy");
    }
    sq_sampler_free(s);
}

static void test_seed(void) {
    sq_sampler_params p = plain(1.0f);
    float logits[64];
    for (int i = 0; i < 64; i++) logits[i] = sinf((float)i) * 2;
    int a[100], b[100], c[100];
    sq_sampler *s1 = sq_sampler_new(&p), *s2 = sq_sampler_new(&p);
    p.seed = 99;
    sq_sampler *s3 = sq_sampler_new(&p);
    for (int i = 0; i < 100; i++) {
        float l[64];
        memcpy(l, logits, sizeof l);
        a[i] = sq_sampler_sample(s1, l, 64);
        memcpy(l, logits, sizeof l);
        b[i] = sq_sampler_sample(s2, l, 64);
        memcpy(l, logits, sizeof l);
        c[i] = sq_sampler_sample(s3, l, 64);
    }
    CHECK(memcmp(a, b, sizeof a) == 0, "same seed, same draws");
    CHECK(memcmp(a, c, sizeof a) != 0, "another seed, other draws");
    sq_sampler_reset(s1);
    for (int i = 0; i < 100; i++) {
        float l[64];
        memcpy(l, logits, sizeof l);
        CHECK(sq_sampler_sample(s1, l, 64) == a[i], "reset replays the seed (draw %d)", i);
    }
    sq_sampler_free(s1);
    sq_sampler_free(s2);
    sq_sampler_free(s3);
}

static void test_distribution(void) {
    const float probs[4] = {0.5f, 0.3f, 0.15f, 0.05f};
    float logits[4];
    for (int i = 0; i < 4; i++) logits[i] = logf(probs[i]) + 3.0f; /* softmax ignores the shift */
    int counts[4];
    const int n = 40000;
    sq_sampler_params p = plain(1.0f);
    sq_sampler *s = sq_sampler_new(&p);
    histogram(s, logits, 4, n, counts);
    for (int i = 0; i < 4; i++) {
        double f = (double)counts[i] / n, sd = sqrt(probs[i] * (1 - probs[i]) / n);
        CHECK(fabs(f - probs[i]) < 5 * sd, "T=1: token %d frequency %.4f vs %.4f", i, f, probs[i]);
    }
    sq_sampler_free(s);
    /* temperature 0.5 squares the probabilities (then renormalises) */
    p = plain(0.5f);
    s = sq_sampler_new(&p);
    histogram(s, logits, 4, n, counts);
    double z = 0;
    for (int i = 0; i < 4; i++) z += (double)probs[i] * probs[i];
    for (int i = 0; i < 4; i++) {
        double q = probs[i] * probs[i] / z, f = (double)counts[i] / n, sd = sqrt(q * (1 - q) / n) + 1e-4;
        CHECK(fabs(f - q) < 5 * sd, "T=0.5: token %d frequency %.4f vs %.4f", i, f, q);
    }
    sq_sampler_free(s);
    /* top-p 0.6: 0.5 < 0.6 <= 0.8 keeps tokens 0 and 1, renormalised to 0.625 / 0.375 */
    p = plain(1.0f);
    p.top_p = 0.6f;
    s = sq_sampler_new(&p);
    histogram(s, logits, 4, n, counts);
    CHECK(counts[2] == 0 && counts[3] == 0, "top-p cut: %d %d", counts[2], counts[3]);
    CHECK(fabs((double)counts[0] / n - 0.625) < 0.02, "top-p renormalised: %d", counts[0]);
    sq_sampler_free(s);
    /* min-p 0.5: keep p >= 0.25 -> tokens 0 and 1 */
    p = plain(1.0f);
    p.min_p = 0.5f;
    s = sq_sampler_new(&p);
    histogram(s, logits, 4, n, counts);
    CHECK(counts[0] > 0 && counts[1] > 0 && counts[2] == 0 && counts[3] == 0, "min-p cut");
    sq_sampler_free(s);
}

static void test_top_k_large(void) {
    enum { V = 5003, K = 17 };
    float *logits = malloc(sizeof(float) * V), *sorted = malloc(sizeof(float) * V);
    uint32_t x = 12345;
    for (int i = 0; i < V; i++) {
        x = x * 1664525u + 1013904223u;
        logits[i] = (float)(x >> 8) / (float)(1 << 24) * 10.0f - 5.0f;
        if (i % 101 == 0) logits[i] = 4.99f; /* ties across the cut */
    }
    memcpy(sorted, logits, sizeof(float) * V);
    /* the K-th largest value by selection sort of the first K (small K) */
    for (int i = 0; i < K; i++)
        for (int j = i + 1; j < V; j++)
            if (sorted[j] > sorted[i]) { float t = sorted[i]; sorted[i] = sorted[j]; sorted[j] = t; }
    float kth = sorted[K - 1];
    sq_sampler_params p = plain(50.0f); /* flat: every kept token gets drawn */
    p.top_k = K;
    sq_sampler *s = sq_sampler_new(&p);
    int *counts = malloc(sizeof(int) * V);
    histogram(s, logits, V, 20000, counts);
    int distinct = 0, outside = 0;
    for (int i = 0; i < V; i++) {
        if (!counts[i]) continue;
        distinct++;
        if (logits[i] < kth) outside++;
    }
    CHECK(outside == 0 && distinct == K, "top-k: %d distinct, %d outside the top %d", distinct, outside, K);
    sq_sampler_free(s);
    free(counts);
    free(logits);
    free(sorted);
}

static void test_penalty(void) {
    sq_sampler_params p = plain(0.0f);
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 2;
    sq_sampler *s = sq_sampler_new(&p);
    float l[3] = {3.0f, 2.0f, -1.0f};
    sq_sampler_accept(s, 0);
    sq_sampler_accept(s, 0);
    CHECK(sq_sampler_sample(s, l, 3) == 1, "penalised token loses: 3/2 < 2");
    CHECK(l[0] == 1.5f, "penalty applied once per distinct token: %g", (double)l[0]);
    float m[3] = {3.0f, 2.0f, -1.0f};
    sq_sampler_accept(s, 2);
    sq_sampler_accept(s, 2); /* the window (2) has forgotten token 0 */
    CHECK(sq_sampler_sample(s, m, 3) == 0 && m[2] == -2.0f, "window slides; negative logits multiplied");
    sq_sampler_accept(s, 70000); /* out of the vocabulary: ignored when sampling */
    float o[3] = {3.0f, 2.0f, -1.0f};
    CHECK(sq_sampler_sample(s, o, 3) == 0, "out-of-range history ignored");
    sq_sampler_free(s);
}

int main(void) {
    test_params();
    test_greedy();
    test_seed();
    test_distribution();
    test_top_k_large();
    test_penalty();
    return test_finish("test_sampler");
}
