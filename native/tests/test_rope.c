/* test_rope.c — RoPE (rope.c) against the formula, in both pair layouts.
 *
 * For a head x of width head_dim, the first n_rot dims rotate by θ_i(pos) = pos · freq_scale ·
 * base^(-2i/n_rot) / factor_i, i < n_rot/2, on the pairs
 *   normal (llama, interleaved):  (x[2i], x[2i+1])
 *   neox   (qwen2, half-split):   (x[i],  x[i + n_rot/2])      — Hugging Face's rotate_half
 * as x_a' = x_a cos θ − x_b sin θ, x_b' = x_a sin θ + x_b cos θ; dims from n_rot on are unchanged.
 * The formula runs in double here; the table is float, so results agree to float rounding. Also:
 * a neox rotation equals a normal rotation of the same head with its dims permuted the way
 * llama.cpp permutes q/k rows (what makes a llama file and a qwen2 file of one model agree).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "rope.h"
#include "test_util.h"

static void rope_formula(double *x, int n_rot, int pos, double base, double freq_scale, const float *factors, int mode) {
    int half = n_rot / 2;
    for (int i = 0; i < half; i++) {
        double th = pos * freq_scale * pow(base, -2.0 * i / n_rot) / (factors ? factors[i] : 1.0);
        int a = mode == SQ_ROPE_NEOX ? i : 2 * i, b = mode == SQ_ROPE_NEOX ? i + half : 2 * i + 1;
        double xa = x[a], xb = x[b];
        x[a] = xa * cos(th) - xb * sin(th);
        x[b] = xa * sin(th) + xb * cos(th);
    }
}

static void check_mode(int mode, int head_dim, int n_rot, float freq_scale, const float *factors) {
    enum { N_HEADS = 3, N_CTX = 300 };
    sq_rope r;
    CHECK(sq_rope_init(&r, n_rot, N_CTX, 10000.0f, freq_scale, factors, mode) == SQ_OK, "init");
    float x[N_HEADS * 256];
    double want[N_HEADS * 256];
    const int positions[] = {0, 1, 7, 100, N_CTX - 1};
    for (size_t p = 0; p < sizeof positions / sizeof positions[0]; p++) {
        for (int i = 0; i < N_HEADS * head_dim; i++) want[i] = x[i] = rnd_normal();
        sq_rope_apply(&r, x, N_HEADS, head_dim, positions[p]);
        double worst = 0;
        for (int h = 0; h < N_HEADS; h++) {
            rope_formula(want + h * head_dim, n_rot, positions[p], 10000.0, freq_scale, factors, mode);
            for (int i = n_rot; i < head_dim; i++)
                CHECK(x[h * head_dim + i] == (float)want[h * head_dim + i], "mode %d: dim %d >= n_rot changed", mode, i);
        }
        for (int i = 0; i < N_HEADS * head_dim; i++)
            if (fabs(x[i] - want[i]) > worst) worst = fabs(x[i] - want[i]);
        CHECK(worst < 2e-5, "mode %d, head_dim %d, n_rot %d, pos %d: max error %g", mode, head_dim, n_rot, positions[p],
              worst);
    }
    sq_rope_free(&r);
}

/* neox on a head = normal on the head with dims permuted (s·hd/2 + i -> 2i + s), bit for bit. */
static void check_permuted(int hd) {
    sq_rope neox, normal;
    CHECK(sq_rope_init(&neox, hd, 64, 10000.0f, 1.0f, NULL, SQ_ROPE_NEOX) == SQ_OK, "init neox");
    CHECK(sq_rope_init(&normal, hd, 64, 10000.0f, 1.0f, NULL, SQ_ROPE_NORMAL) == SQ_OK, "init normal");
    float a[256], b[256];
    for (int i = 0; i < hd; i++) a[i] = rnd_normal();
    for (int j = 0; j < hd; j++) b[2 * (j % (hd / 2)) + j / (hd / 2)] = a[j];
    sq_rope_apply(&neox, a, 1, hd, 37);
    sq_rope_apply(&normal, b, 1, hd, 37);
    int same = 1;
    for (int j = 0; j < hd; j++) same &= memcmp(&b[2 * (j % (hd / 2)) + j / (hd / 2)], &a[j], sizeof(float)) == 0;
    CHECK(same, "head_dim %d: neox differs from normal on permuted dims", hd);
    sq_rope_free(&neox);
    sq_rope_free(&normal);
}

int main(void) {
    float factors[64];
    for (int i = 0; i < 64; i++) factors[i] = 1.0f + 0.25f * (float)(i % 5);
    for (int mode = SQ_ROPE_NORMAL; mode <= SQ_ROPE_NEOX; mode++) {
        check_mode(mode, 64, 64, 1.0f, NULL);
        check_mode(mode, 128, 128, 1.0f, NULL);
        check_mode(mode, 64, 32, 1.0f, NULL);    /* partial rotary: the first n_rot dims only */
        check_mode(mode, 64, 64, 0.25f, NULL);   /* linear scaling */
        check_mode(mode, 64, 64, 1.0f, factors); /* llama3-style per-frequency divisors */
    }
    check_permuted(64);
    check_permuted(16);
    return test_finish("test_rope");
}
