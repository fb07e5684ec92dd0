/* specquant.h — the only public header of the SpecQuant-GGUF runtime.
 *
 * Opaque handles, plain C types, error codes plus sq_last_error() text (thread-local).
 * The file format and the integer math are specified in docs/FORMAT.md.
 */
#ifndef SPECQUANT_H
#define SPECQUANT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define SQ_API __declspec(dllexport)
#else
#define SQ_API __attribute__((visibility("default")))
#endif

/* ---- errors ------------------------------------------------------------------------------- */
typedef enum {
    SQ_OK = 0,
    SQ_ERR_IO = 1,         /* missing file, read/mmap failure */
    SQ_ERR_FORMAT = 2,     /* not a GGUF file, corrupt/truncated, bad offsets/shapes */
    SQ_ERR_UNSUPPORTED = 3,/* unknown architecture, tensor type, ISA */
    SQ_ERR_ARG = 4,        /* bad argument: n_ctx, token id, thread count, ... */
    SQ_ERR_CTX_FULL = 5,   /* eval past n_ctx */
    SQ_ERR_NOMEM = 6,
    SQ_ERR_BACKEND = 7     /* backend not available (e.g. CUDA not built / no GPU) */
} sq_status;

/* Text of the last error on this thread ("" when none). Valid until the next call that fails. */
SQ_API const char *sq_last_error(void);
/* Code of the last error on this thread (SQ_OK when none); pairs with sq_last_error(). */
SQ_API sq_status sq_last_status(void);

/* ---- CPU features ------------------------------------------------------------------------- */
/* "scalar", "avx2", "avx512" (AVX-512 VNNI), "avx512-mix" (VNNI, with the one-to-7-token SQ4
 * kernels of avx2: what AMD Zen 5 runs fastest) or "neon": the kernel set in use. SQ_ISA=... in the
 * environment forces one ("auto" or unset: the best this CPU has); an unknown name or an ISA this
 * CPU / build lacks makes sq_model_load fail with SQ_ERR_UNSUPPORTED (the message lists the valid
 * names). */
SQ_API const char *sq_isa_name(void);

/* ---- model -------------------------------------------------------------------------------- */
typedef struct sq_model sq_model;

/* SQ_KV_F32: full-precision cache (2x the f16 memory), what reference.py computes: parity tests. */
typedef enum { SQ_KV_F16 = 0, SQ_KV_Q8 = 1, SQ_KV_Q4 = 2, SQ_KV_F32 = 3 } sq_kv_type;
typedef enum { SQ_BACKEND_CPU = 0, SQ_BACKEND_CUDA = 1, SQ_BACKEND_AUTO = 2 } sq_backend;

typedef struct {
    int32_t n_ctx;         /* 0 = min(model's context length, 2048) */
    int32_t n_threads;     /* 0 = number of online cores */
    int32_t kv_type;       /* sq_kv_type */
    float spectral_tau;    /* 1.0 = all stored coefficients; (0,1] = energy threshold */
    int32_t backend;       /* sq_backend: cuda fails (SQ_ERR_BACKEND) without a usable GPU; auto takes
                              the GPU when the build has CUDA, a device is there, every linear
                              weight is SQ4/Q8_0 and kv_type is f16 — else the CPU */
    int32_t act_bits;      /* bits of the SQ4 (W4A4) layers' activations at run time: 4, 8, or 0 = auto
                              (8 on the CPU: every CPU dot-product instruction is 8-bit, decode runs
                              alike and 8 is more accurate; 4 on CUDA's int4 tensor-core path, sm_80,
                              86, 89; 8 on its int8 path, sm_90). The file's specquant.act_bits says
                              what it was calibrated for; SQ4 activations are quantized as
                              docs/FORMAT.md §4.2 with L = 2^act_bits - 1. Other weight types ignore
                              it. SQ_ERR_ARG for any other value. */
} sq_model_params;

SQ_API sq_model_params sq_model_default_params(void);

/* Loads (mmap) and validates a .gguf file. Returns NULL on error (see sq_last_error). */
SQ_API sq_model *sq_model_load(const char *path, const sq_model_params *params);
SQ_API void sq_model_free(sq_model *m);

SQ_API int32_t sq_model_n_vocab(const sq_model *m);
SQ_API int32_t sq_model_n_ctx(const sq_model *m);       /* the context this instance was made with */
SQ_API int32_t sq_model_n_ctx_train(const sq_model *m); /* the model's own context length */
SQ_API int32_t sq_model_n_past(const sq_model *m);      /* tokens in the KV cache */
/* The kernel set this model runs ("scalar", "avx2", ...): SQ_ISA when it was loaded, else CPUID. */
SQ_API const char *sq_model_isa(const sq_model *m);
/* Where this model runs: "cpu" or "cuda" (what backend auto chose; see sq_model_params.backend). */
SQ_API const char *sq_model_backend(const sq_model *m);
/* Bits of the SQ4 layers' activations this model runs (4 or 8: sq_model_params.act_bits, auto
 * resolved for the backend), or 0 when no layer is SQ4 (F16 / Q8_0 files). */
SQ_API int32_t sq_model_act_bits(const sq_model *m);
/* Metadata value as text (strings as is, numbers printed); NULL when absent. */
SQ_API const char *sq_model_meta(const sq_model *m, const char *key);

/* Runs n tokens starting at the current KV position and appends them to the cache.
 * logits: NULL, or room for n * n_vocab floats (all positions) — or for n_vocab floats when
 * last_only != 0 (only the last position's logits are computed: what decode needs). */
SQ_API sq_status sq_model_eval(sq_model *m, const int32_t *tokens, int32_t n, float *logits, int32_t last_only);

/* Forgets KV positions >= n_past (0 = reset). n_past must be <= the current position. */
SQ_API sq_status sq_model_set_n_past(sq_model *m, int32_t n_past);

/* ---- several sequences in one forward pass (batch.c) ---------------------------------------- */
/* A batch: n_seq independent KV caches (each n_ctx positions, the model's kv_type) that share the
 * model's weights, so that one decode step of n sequences reads every weight once (the linears run
 * as one matrix × matrix over the n tokens). Sequence s's logits equal what a model of its own
 * computes for the same tokens. The model's own cache (sq_model_eval) is separate and untouched.
 * Calls on a batch and on its model must not overlap (they share the model's scratch buffers);
 * free the batch before the model. CPU backend only (SQ_ERR_UNSUPPORTED on CUDA). */
typedef struct sq_batch sq_batch;
SQ_API sq_batch *sq_batch_new(sq_model *m, int32_t n_seq); /* NULL on error (sq_last_error) */
SQ_API void sq_batch_free(sq_batch *b);
SQ_API int32_t sq_batch_n_seq(const sq_batch *b);
SQ_API int32_t sq_batch_n_past(const sq_batch *b, int32_t seq); /* tokens in sequence seq's cache; -1: bad seq */
/* Forgets sequence seq's positions >= n_past (0 = a fresh sequence). */
SQ_API sq_status sq_batch_set_n_past(sq_batch *b, int32_t seq, int32_t n_past);
/* Runs n tokens: tokens[i] is appended to sequence seq_ids[i] (0 <= seq < n_seq) at its next
 * position; a sequence may appear several times (its tokens in order: a prompt), in any mix with
 * others (decode steps of other sequences). logits: NULL, or room for k * n_vocab floats where k is
 * the number of i with want[i] != 0 (want NULL: every token), rows in the order of i. Nothing is
 * stored when it fails: SQ_ERR_ARG (bad seq or token id), SQ_ERR_CTX_FULL (a sequence past n_ctx). */
SQ_API sq_status sq_batch_eval(sq_batch *b, const int32_t *seq_ids, const int32_t *tokens, int32_t n,
                               const int32_t *want, float *logits);

/* ---- tokenizer (built from tokenizer.ggml.* metadata) -------------------------------------- */
/* Writes up to max_tokens ids; returns the number of tokens, or -(needed) if max_tokens is too
 * small, or INT32_MIN on error. parse_special: recognise special/control tokens written in text. */
SQ_API int32_t sq_tokenize(const sq_model *m, const char *text, int32_t text_len, int32_t *tokens,
                           int32_t max_tokens, int32_t add_bos, int32_t parse_special);
/* Bytes of one token's text (raw bytes, may be a partial UTF-8 sequence). Returns the length, or
 * -(needed) if buf is too small. Special tokens render as their text only if render_special. */
SQ_API int32_t sq_token_to_piece(const sq_model *m, int32_t token, char *buf, int32_t buf_len, int32_t render_special);
SQ_API int32_t sq_token_bos(const sq_model *m);
SQ_API int32_t sq_token_eos(const sq_model *m);
SQ_API int32_t sq_token_is_eog(const sq_model *m, int32_t token); /* eos, eot, <|im_end|>, ... */
/* add_bos above: 0 = no BOS, 1 = as the model says (tokenizer.ggml.add_bos_token, default on for
 * SentencePiece; also adds EOS when tokenizer.ggml.add_eos_token), 2 = always BOS (if it has one). */
/* All tokens' text; SentencePiece's dummy-prefix space is dropped, like Hugging Face's decode.
 * Returns the length, or -(needed) if buf is too small, or INT32_MIN on error. */
SQ_API int32_t sq_detokenize(const sq_model *m, const int32_t *tokens, int32_t n_tokens, char *buf,
                             int32_t buf_len, int32_t render_special);

/* ---- vocabulary alone (tokenizer without weights) ----------------------------------------- */
/* The same tokenizer as a standalone object: sq_vocab_load reads only the tokenizer.ggml.* metadata
 * of any GGUF file (also files whose tensors this runtime cannot run); sq_model_vocab is the one
 * a loaded model owns (valid until sq_model_free). The sq_token* functions above are these. */
typedef struct sq_vocab sq_vocab;
SQ_API sq_vocab *sq_vocab_load(const char *path);
SQ_API void sq_vocab_free(sq_vocab *v);
SQ_API const sq_vocab *sq_model_vocab(const sq_model *m);
SQ_API int32_t sq_vocab_n_tokens(const sq_vocab *v);
SQ_API int32_t sq_vocab_tokenize(const sq_vocab *v, const char *text, int32_t text_len, int32_t *tokens,
                                 int32_t max_tokens, int32_t add_bos, int32_t parse_special);
SQ_API int32_t sq_vocab_token_to_piece(const sq_vocab *v, int32_t token, char *buf, int32_t buf_len,
                                       int32_t render_special);
SQ_API int32_t sq_vocab_detokenize(const sq_vocab *v, const int32_t *tokens, int32_t n_tokens, char *buf,
                                   int32_t buf_len, int32_t render_special);
SQ_API int32_t sq_vocab_bos(const sq_vocab *v);  /* -1 when none */
SQ_API int32_t sq_vocab_eos(const sq_vocab *v);
SQ_API int32_t sq_vocab_is_eog(const sq_vocab *v, int32_t token);
SQ_API int32_t sq_vocab_add_bos(const sq_vocab *v); /* 1 if the model wants BOS first */

/* ---- chat templates ----------------------------------------------------------------------- */
/* Built-in formats: "chatml", "llama3", "llama2", "gemma", "phi3" (sq_chat_template_names()).
 * sq_chat_template_detect: the built-in name for a template — a built-in name itself, or a model's
 * Jinja text (tokenizer.chat_template, matched by its markers like llama.cpp); NULL if unknown. */
SQ_API const char *sq_chat_template_detect(const char *tmpl);
SQ_API const char *sq_chat_template_names(void); /* "chatml, llama3, llama2, gemma, phi3" */
/* Formats n messages (roles "system", "user", "assistant") with tmpl (a built-in name or a Jinja
 * text it recognises; a Jinja text's own default system prompt is kept). add_assistant: end with
 * the assistant's header. Returns the length written (plus a NUL), or -(length + 1) when buf has
 * fewer than length + 1 bytes, or INT32_MIN on error (unknown template, bad role: sq_last_error). */
SQ_API int32_t sq_chat_apply(const char *tmpl, const char *const *roles, const char *const *contents,
                             int32_t n, int32_t add_assistant, char *buf, int32_t buf_len);

/* ---- chat session policy (what sq-chat and specquant chat both do) ------------------------ */
/* The template a chat uses: forced (a built-in name or a Jinja text sq_chat_apply recognises) when
 * not NULL, else the model's tokenizer.chat_template when recognised. Returns forced itself or the
 * model's text (valid while the model lives), or NULL: SQ_ERR_ARG for an unknown forced template or
 * a NULL model, SQ_ERR_UNSUPPORTED when the model has none or an unrecognised one (sq_last_error:
 * "the model has no chat template (tokenizer.chat_template)" / "the model has an unrecognised chat
 * template"; the caller then completes plain text or asks for a template). */
SQ_API const char *sq_chat_template_pick(const sq_model *m, const char *forced);
/* How many of the oldest non-system messages (a leading "system" message is never dropped) to drop
 * so that the rest, formatted with tmpl (with the assistant's header) and tokenized as a prompt (BOS
 * as the model says, special tokens parsed), plus a reserve for the answer fits in n_ctx: reserve =
 * n_ctx / 4 while more than one non-system message remains, else 1. Writes *n_drop and *n_tokens
 * (the kept conversation's tokens) and returns SQ_OK; SQ_ERR_CTX_FULL when the last message alone
 * does not fit (*n_drop = 0, *n_tokens = what it needs; sq_last_error: "the prompt needs N tokens,
 * the context holds M"); SQ_ERR_ARG for a bad template / role / argument or a model without a
 * tokenizer. */
SQ_API sq_status sq_chat_fit(const sq_model *m, const char *tmpl, const char *const *roles,
                             const char *const *contents, int32_t n_msgs, int32_t *n_drop, int32_t *n_tokens);

/* ---- sampling ----------------------------------------------------------------------------- */
typedef struct sq_sampler sq_sampler;
typedef struct {
    float temperature;     /* <= 0: greedy */
    int32_t top_k;         /* <= 0: off */
    float top_p;           /* 1.0: off */
    float min_p;           /* 0.0: off */
    float repeat_penalty;  /* 1.0: off */
    int32_t repeat_last_n; /* window for the penalty */
    uint64_t seed;         /* SQ_SEED_RANDOM: a fresh seed each time */
} sq_sampler_params;
#define SQ_SEED_RANDOM UINT64_MAX
/* sq_sampler_new returns NULL (sq_last_error) for temperature < 0, top_p outside (0, 1], min_p
 * outside [0, 1], repeat_penalty <= 0, repeat_last_n < 0. sq_sampler_sample returns -1 on error. */
SQ_API sq_sampler_params sq_sampler_default_params(void);
SQ_API sq_sampler *sq_sampler_new(const sq_sampler_params *p);
SQ_API void sq_sampler_free(sq_sampler *s);
/* Picks a token from logits (n_vocab floats; the array may be modified). */
SQ_API int32_t sq_sampler_sample(sq_sampler *s, float *logits, int32_t n_vocab);
/* Records an accepted token (for the repetition penalty). */
SQ_API void sq_sampler_accept(sq_sampler *s, int32_t token);
SQ_API void sq_sampler_reset(sq_sampler *s);

#ifdef __cplusplus
}
#endif
#endif /* SPECQUANT_H */
