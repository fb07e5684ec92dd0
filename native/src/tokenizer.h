/* tokenizer.h — internal: the vocabulary and tokenizer built from tokenizer.ggml.* metadata.
 *
 * Two tokenizer kinds, as llama.cpp names them in tokenizer.ggml.model:
 *  - "gpt2": byte-level BPE (GPT-2 byte-to-unicode spelling, merges by rank) with a hand-written
 *    pre-tokenizer chosen by tokenizer.ggml.pre: gpt2 (default), smollm / starcoder (digits split
 *    one by one, then gpt2), llama-bpe / llama3 (Llama-3 regex), qwen2 (Qwen2 regex);
 *  - "llama": SentencePiece BPE (scores, byte fallback <0xNN>, ▁ for spaces, dummy prefix).
 *    The dummy prefix (tokenizer.ggml.add_space_prefix, default on) is sentencepiece's as llama.cpp
 *    runs it: a ▁ before every piece of text (the start, and after each special token), even one
 *    that already starts with a space; specquant.tokenizer.space_prefix = "metaspace-first" /
 *    "metaspace-always" gives HF's Metaspace pre-tokenizer instead (no ▁ before a leading space;
 *    "first": only before the text's first piece).
 * A file whose specquant.tokenizer.normalizer is "nfc" (Qwen2's tokenizer.json normalizer) has each
 * piece of text between special tokens put in Unicode NFC before it is split and merged, like HF.
 * Control tokens (<|im_end|>, <s>, ...) are recognised in text only when parse_special; user-defined
 * tokens always, like the Hugging Face tokenizer. A recognised token listed in
 * specquant.tokenizer.lstrip / rstrip (HF added tokens with lstrip / rstrip: Phi-3's <|assistant|>,
 * </s>) takes the whitespace before / after it with it, as HF does. The result equals Hugging Face's
 * ids (tests).
 *
 * Wiring (model.c): at load, after parsing the file,
 *     m->vocab = sq_vocab_from_gguf(&m->gguf);      // NULL -> error already set, fail the load
 * at free: sq_vocab_free(m->vocab); and define
 *     const sq_vocab *sq_model_vocab(const sq_model *m) { return m->vocab; }   (specquant.h)
 * The public sq_tokenize / sq_token_to_piece / sq_token_bos / ... (tokenizer_api.c) call the
 * sq_vocab_* functions on sq_model_vocab(m). A vocab is immutable after construction: any number of
 * threads may tokenize with it at once.
 */
#ifndef SQ_TOKENIZER_H
#define SQ_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "specquant.h"

/* llama.cpp token types (tokenizer.ggml.token_type) */
enum {
    SQ_TOKTYPE_UNDEFINED = 0,
    SQ_TOKTYPE_NORMAL = 1,
    SQ_TOKTYPE_UNKNOWN = 2,
    SQ_TOKTYPE_CONTROL = 3,
    SQ_TOKTYPE_USER_DEFINED = 4,
    SQ_TOKTYPE_UNUSED = 5,
    SQ_TOKTYPE_BYTE = 6
};

typedef enum { SQ_VOCAB_BPE = 0, SQ_VOCAB_SPM = 1 } sq_vocab_kind;

/* pre-tokenizers of byte-level BPE vocabularies (tokenizer.ggml.pre) */
typedef enum {
    SQ_PRE_GPT2 = 0,   /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    SQ_PRE_SMOLLM = 1, /* every \p{N} alone, then GPT2 on the rest (HF: Digits + ByteLevel) */
    SQ_PRE_LLAMA3 = 2, /* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
                          ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
    SQ_PRE_QWEN2 = 3   /* LLAMA3 with \p{N} instead of \p{N}{1,3} */
} sq_pre_kind;

/* Everything a vocabulary is built from, in plain arrays (what sq_vocab_from_gguf extracts from
 * the file; tests fill it by hand). Strings are ptr+len, not NUL-terminated. */
typedef struct {
    const char *model;        /* "gpt2" or "llama" (NUL-terminated) */
    const char *pre;          /* tokenizer.ggml.pre, NULL = "default" */
    int32_t n_tokens;
    const sq_str *tokens;
    const float *scores;      /* NULL: all 0 */
    const int32_t *types;     /* NULL: all NORMAL */
    int32_t n_merges;
    const sq_str *merges;     /* "left right" in the file's spelling (BPE only) */
    int32_t bos, eos, unk, eot, eom; /* -1: none */
    int add_bos, add_eos, add_space_prefix; /* -1: the kind's default (SPM: 1, 0, 1; BPE: 0, 0, 0) */
    const char *normalizer;   /* specquant.tokenizer.normalizer: NULL or "none", or "nfc" (NUL-terminated) */
    /* specquant.tokenizer.space_prefix (SPM): NULL or "sentencepiece", "metaspace-first",
     * "metaspace-always" (NUL-terminated) */
    const char *space_prefix;
    /* specquant.tokenizer.lstrip / rstrip: ids of the tokens that, when recognised in the text,
     * swallow the whitespace (Unicode White_Space) before / after them; NULL / 0: none */
    const int32_t *lstrip, *rstrip;
    int32_t n_lstrip, n_rstrip;
} sq_vocab_desc;

/* NULL on error (set with sq_set_error: SQ_ERR_FORMAT for bad metadata, SQ_ERR_UNSUPPORTED for an
 * unknown tokenizer model or pre-tokenizer, SQ_ERR_NOMEM). The vocab copies what it needs. */
sq_vocab *sq_vocab_new(const sq_vocab_desc *d);
/* Builds the vocabulary from tokenizer.ggml.* keys of a parsed file (copies; g may be closed after). */
sq_vocab *sq_vocab_from_gguf(const sq_gguf *g);

sq_vocab_kind sq_vocab_kind_of(const sq_vocab *v);
sq_pre_kind sq_vocab_pre_of(const sq_vocab *v);

/* The pre-tokenizer alone (for tests): calls emit(ud, offset, length) for each piece of text. */
void sq_pretokenize(sq_pre_kind pre, const char *text, size_t len,
                    void (*emit)(void *ud, size_t off, size_t n), void *ud);

#endif
