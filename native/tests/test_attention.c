/* test_attention.c — the AVX2 attention kernel against the portable one, and both against a plain
 * double-precision reference: GQA groups of 1..4 query heads per KV head (3 takes its own P·V
 * path), head dims 8..128, prefill batches that span several query blocks, then decode steps, on
 * 1 and 2 threads, f32 and f16 caches; and Gemma 2's options: tanh soft-capped scores, sliding
 * windows shorter and longer than a query block, another score scale. The two kernels sum in
 * different orders, so they agree to float rounding (1e-5 relative to the output's scale), not bit
 * for bit. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "kernels/kernels.h"
#include "fp16.h"
#include "kvcache.h"
#include "test_util.h"
#include "threads.h"

/* softmax(cap(q·K·scale))·V over positions lo..n_pos-1 of KV head kvh, in double (cap 0: none) */
static void reference(const sq_kvcache *kv, int layer, int kvh, const float *q, int lo, int n_pos, int hd, double scale,
                      double cap, float *out) {
    float *K = xmalloc((size_t)n_pos * hd * 4), *V = xmalloc((size_t)n_pos * hd * 4);
    double *s = xmalloc((size_t)n_pos * sizeof *s);
    sq_kv_load_k(kv, layer, kvh, 0, n_pos, K);
    sq_kv_load_v(kv, layer, kvh, 0, n_pos, V);
    double mx = -INFINITY, sum = 0;
    for (int p = 0; p < n_pos; p++) {
        double d = 0;
        for (int i = 0; i < hd; i++) d += (double)q[i] * K[(size_t)p * hd + i];
        s[p] = d * scale;
        if (cap > 0) s[p] = cap * tanh(s[p] / cap);
        if (p < lo) s[p] = -INFINITY;
        mx = s[p] > mx ? s[p] : mx;
    }
    for (int p = 0; p < n_pos; p++) sum += (s[p] = exp(s[p] - mx));
    for (int i = 0; i < hd; i++) {
        double o = 0;
        for (int p = 0; p < n_pos; p++) o += s[p] * V[(size_t)p * hd + i];
        out[i] = (float)(o / sum);
    }
    free(K), free(V), free(s);
}

static float max_abs(const float *a, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; i++) m = fabsf(a[i]) > m ? fabsf(a[i]) : m;
    return m;
}

/* cap > 0: soft-capped scores; window > 0: a sliding window; both with the score scale 0.3 */
static void run_case(int kv_type, int n_kv, int group, int hd, int threads, int simd_ok, float cap, int window) {
    const float sc = cap > 0 || window > 0 ? 0.3f : 1.0f / sqrtf((float)hd);
    const int n_layer = 2, layer = 1, n_head = n_kv * group, n_ctx = 200, kw = n_kv * hd, qw = n_head * hd;
    sq_kvcache kc;
    if (sq_kv_init(&kc, kv_type, n_layer, n_kv, hd, n_ctx) != SQ_OK) {
        CHECK(0, "sq_kv_init: %s", sq_last_error());
        return;
    }
    sq_pool *pool = sq_pool_new(threads);
    CHECK(pool != NULL, "sq_pool_new(%d)", threads);
    const size_t sf = sq_attention_scratch_floats(n_ctx, hd);
    float *scratch = xmalloc(sf * threads * 4);
    int pos = 0;
    const int batches[4] = {rnd_int(70, 150), 1, 1, rnd_int(2, 9)}; /* prefill over several query blocks */
    for (int bi = 0; bi < 4 && pool; bi++) {
        const int nt = batches[bi];
        float *k = xmalloc((size_t)nt * kw * 4), *v = xmalloc((size_t)nt * kw * 4), *q = xmalloc((size_t)nt * qw * 4);
        float *out[2] = {xmalloc((size_t)nt * qw * 4), xmalloc((size_t)nt * qw * 4)}, *ref = xmalloc((size_t)hd * 4);
        for (int i = 0; i < nt * kw; i++) k[i] = rnd_normal(), v[i] = rnd_normal();
        for (int i = 0; i < nt * qw; i++) q[i] = 2.0f * rnd_normal();
        for (int t = 0; t < nt; t++)
            for (int h = 0; h < n_kv; h++)
                sq_kv_store(&kc, layer, h, pos + t, k + (size_t)t * kw + h * hd, v + (size_t)t * kw + h * hd);
        for (int simd = 0; simd <= simd_ok; simd++) {
            sq_attn_args a = {.kv = &kc, .layer = layer, .q = q, .out = out[simd], .n_tok = nt, .pos0 = pos,
                              .n_head = n_head, .scale = sc, .simd = simd, .scratch = scratch,
                              .scratch_floats = sf, .softcap = cap, .window = window};
            sq_attention(pool, &a);
        }
        const float scale = max_abs(out[0], (size_t)nt * qw) + 1e-30f;
        int bad_ref = 0, bad_simd = 0;
        for (int t = 0; t < nt; t++)
            for (int h = 0; h < n_head; h++) {
                const size_t o = (size_t)t * qw + (size_t)h * hd;
                const int lo = window > 0 && pos + t + 1 > window ? pos + t + 1 - window : 0;
                reference(&kc, layer, h / group, q + o, lo, pos + t + 1, hd, sc, cap, ref);
                for (int i = 0; i < hd; i++) {
                    bad_ref += fabsf(out[0][o + i] - ref[i]) > 1e-5f * scale;
                    if (simd_ok) bad_simd += fabsf(out[1][o + i] - out[0][o + i]) > 1e-5f * scale;
                }
            }
        CHECK(!bad_ref, "portable kernel vs reference (kv %d, %d x %d heads, hd %d, %d threads, batch %d at %d, cap %g, "
              "window %d): %d off", kv_type, n_kv, group, hd, threads, nt, pos, (double)cap, window, bad_ref);
        CHECK(!bad_simd, "AVX2 kernel vs portable (kv %d, %d x %d heads, hd %d, %d threads, batch %d at %d, cap %g, "
              "window %d): %d off", kv_type, n_kv, group, hd, threads, nt, pos, (double)cap, window, bad_simd);
        pos += nt;
        free(k), free(v), free(q), free(out[0]), free(out[1]), free(ref);
    }
    free(scratch);
    sq_pool_free(pool);
    sq_kv_free(&kc);
}

int main(void) {
    sq_fp16_init(); /* the f16 cache's conversion tables (the model loader does this) */
    /* the AVX2 attention kernel runs where the CPU has the avx2 kernel set */
    const sq_kernel_table *kt = sq_kernels_for("avx2");
    const int simd_ok = kt != NULL && strcmp(kt->name, "avx2") == 0;
    if (!simd_ok) printf("test_attention: no AVX2 on this CPU, checking the portable kernel only\n");
    const int hds[4] = {8, 64, 72, 128};
    for (int group = 1; group <= 4; group++)
        for (int i = 0; i < 4; i++)
            for (int threads = 1; threads <= 2; threads++)
                run_case(i % 2 ? SQ_KV_F16 : SQ_KV_F32, group == 3 ? 3 : rnd_int(1, 2), group, hds[i], threads, simd_ok, 0, 0);
    /* Gemma 2: soft-cap alone, windows of 1, inside a block of 8, across blocks and past a query
     * block (64), with and without the cap */
    const int windows[5] = {1, 5, 13, 70, 0};
    for (int w = 0; w < 5; w++)
        for (int i = 0; i < 4; i++)
            run_case(i % 2 ? SQ_KV_F16 : SQ_KV_F32, rnd_int(1, 2), 1 + i % 3, hds[i], 1 + w % 2, simd_ok,
                     w % 2 ? 0.0f : 5.0f, windows[w]);
    return test_finish("test_attention");
}
