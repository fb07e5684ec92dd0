/* arch.c — the architecture table (arch.h). */
#include "arch.h"

#include <pthread.h>
#include <string.h>

#include "rope.h"

static const sq_arch k_archs[] = {
    {"llama", SQ_ROPE_NORMAL, SQ_BIAS_OPTIONAL, .act = SQ_ACT_SILU},
    {"mistral", SQ_ROPE_NORMAL, SQ_BIAS_OPTIONAL, .act = SQ_ACT_SILU}, /* = llama */
    {"qwen2", SQ_ROPE_NEOX, SQ_BIAS_REQUIRED, .act = SQ_ACT_SILU},
    /* Phi-3: llama.cpp's layout (NEOX, unpermuted q/k, fused attn_qkv and [gate; up] ffn_up as row views) */
    {"phi3", SQ_ROPE_NEOX, SQ_BIAS_NONE, .act = SQ_ACT_SILU, .fused = 1},
    /* Gemma 2: llama.cpp's layout (NEOX, unpermuted q/k); even layers local (llama.cpp's pattern 2) */
    {"gemma2", SQ_ROPE_NEOX, SQ_BIAS_NONE, .post_norms = 1, .act = SQ_ACT_GELU_TANH, .embd_scale = 1, .softcap = 1,
     .swa_pattern = 2},
};
#define N_ARCHS (sizeof k_archs / sizeof k_archs[0])

int sq_arch_layer_windowed(const sq_arch *a, int il) {
    const int p = a->swa_pattern;
    return p == 0 || il % p < p - 1;
}

const char *const sq_linear_names[SQ_N_LINEAR] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                                  "ffn_gate", "ffn_up", "ffn_down"};

const sq_arch *sq_arch_find(const char *name, size_t len) {
    for (size_t i = 0; i < N_ARCHS; i++)
        if (strlen(k_archs[i].name) == len && memcmp(k_archs[i].name, name, len) == 0) return &k_archs[i];
    return NULL;
}

static char g_names[128];
static pthread_once_t g_names_once = PTHREAD_ONCE_INIT;

static void build_names(void) {
    size_t n = 0;
    for (size_t i = 0; i < N_ARCHS; i++) {
        size_t len = strlen(k_archs[i].name);
        if (n + len + 3 > sizeof g_names) break;
        if (i) g_names[n++] = ',', g_names[n++] = ' ';
        memcpy(g_names + n, k_archs[i].name, len);
        n += len;
    }
    g_names[n] = '\0';
}

const char *sq_arch_names(void) {
    pthread_once(&g_names_once, build_names);
    return g_names;
}
