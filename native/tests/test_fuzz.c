/* test_fuzz.c — corrupted model files never crash the loader or the forward pass.
 *
 *   test_fuzz                       tiny random model (tiny_model.h): SQ_FUZZ_ITERS truncations
 *                                   and 10 × SQ_FUZZ_ITERS byte flips (default 50 -> 50 + 500)
 *   test_fuzz FILE [TRUNC FLIPS]    a real model file (bench/fuzz.py: SmolLM2, 1000 + 10000)
 *
 * Truncation: the first n bytes, for n spread over the whole file (plus random n), copied into a
 * buffer of exactly n bytes so that any read past the end is caught by ASan (scripts/test.sh).
 * Flips: 1–4 random bytes of the first 64 KiB (header, metadata, tensor table) XORed with random
 * values. Each variant is loaded; a load must either fail with a known status and a message, or
 * succeed, in which case two tokens are evaluated (with logits) and the model freed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TEST_RNG_SEED 0x243F6A8885A308D3ull /* test_util.h: this test's own stream */
#include "error.h"
#include "model.h"
#include "specquant.h"
#include "test_util.h"
#include "tiny_model.h"

typedef struct {
    long loaded, rejected, bad;
    long by_code[8];
} stats;

static void try_load(const uint8_t *buf, size_t n, stats *s, const char *what, size_t where) {
    sq_model_params p = sq_model_default_params();
    p.n_ctx = 8;
    p.n_threads = 1;
    sq_model *m = sq_model_load_buffer(buf, n, &p);
    if (!m) {
        sq_status st = sq_last_status();
        if (st <= SQ_OK || st > SQ_ERR_BACKEND || !sq_last_error()[0]) {
            printf("FAIL %s at %zu: status %d, message '%s'\n", what, where, st, sq_last_error());
            s->bad++;
        } else s->by_code[st]++;
        s->rejected++;
        return;
    }
    s->loaded++;
    int32_t n_vocab = sq_model_n_vocab(m), toks[2] = {0, n_vocab > 1 ? 1 : 0};
    float *logits = malloc(sizeof(float) * 2 * (size_t)n_vocab);
    if (logits && sq_model_eval(m, toks, 2, logits, 0) != SQ_OK) {
        printf("FAIL %s at %zu: loaded but eval failed: %s\n", what, where, sq_last_error());
        s->bad++;
    }
    free(logits);
    sq_model_free(m);
}

static void fuzz(const uint8_t *data, size_t size, long n_trunc, long n_flip, stats *s) {
    /* truncations: evenly spread (always including the very small sizes), then random */
    for (long i = 0; i < n_trunc; i++) {
        size_t n = i < n_trunc / 2 ? (size_t)((double)size * i / (n_trunc / 2 + 1)) : (size_t)(rnd64() % size);
        if (i < 16) n = (size_t)i * 3;
        uint8_t *b = malloc(n ? n : 1);
        memcpy(b, data, n);
        try_load(b, n, s, "truncation", n);
        free(b);
    }
    uint8_t *b = malloc(size);
    memcpy(b, data, size);
    size_t span = size < 65536 ? size : 65536;
    for (long i = 0; i < n_flip; i++) {
        size_t pos[4];
        int k = 1 + (int)(rnd64() % 4);
        for (int j = 0; j < k; j++) {
            pos[j] = (size_t)(rnd64() % span);
            b[pos[j]] ^= (uint8_t)(1 + rnd64() % 255);
        }
        try_load(b, size, s, "flip", pos[0]);
        for (int j = 0; j < k; j++) b[pos[j]] = data[pos[j]];
    }
    free(b);
}

static uint8_t *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = n > 0 ? malloc((size_t)n) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return b;
}

int main(int argc, char **argv) {
    const char *env = getenv("SQ_FUZZ_ITERS");
    long iters = env ? atol(env) : 50;
    long n_trunc = iters, n_flip = 10 * iters;
    uint8_t *data;
    size_t size;
    if (argc > 1) {
        data = read_file(argv[1], &size);
        if (!data) {
            printf("test_fuzz: cannot read %s\n", argv[1]);
            return 2;
        }
        if (argc > 2) n_trunc = atol(argv[2]);
        if (argc > 3) n_flip = atol(argv[3]);
    } else {
        tiny_cfg c = tiny_default();
        c.spectral_k = 4, c.tied = 0, c.n_layer = 1; /* every tensor kind once */
        data = tiny_model_build(&c, &size);
    }
    stats s = {0};
    clock_t t0 = clock();
    fuzz(data, size, n_trunc, n_flip, &s);
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    printf("test_fuzz: %zu-byte file, %ld truncations + %ld flips: %ld loaded, %ld rejected "
           "(io %ld, format %ld, unsupported %ld, arg %ld, nomem %ld), %ld bad, %.1f s\n",
           size, n_trunc, n_flip, s.loaded, s.rejected, s.by_code[SQ_ERR_IO], s.by_code[SQ_ERR_FORMAT],
           s.by_code[SQ_ERR_UNSUPPORTED], s.by_code[SQ_ERR_ARG], s.by_code[SQ_ERR_NOMEM], s.bad, secs);
    free(data);
    return s.bad ? 1 : 0;
}
