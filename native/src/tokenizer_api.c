/* tokenizer_api.c — the public sq_token* functions on a model: thin wrappers over the model's
 * vocabulary (tokenizer.c). Kept apart from tokenizer.c so that the tokenizer links (and is
 * tested) without the model code. */
#include <limits.h>

#include "error.h"
#include "specquant.h"

static const sq_vocab *vocab_of(const sq_model *m, const char *fn) {
    const sq_vocab *v = m ? sq_model_vocab(m) : NULL;
    if (!v) sq_set_error(SQ_ERR_ARG, "%s: no model (or the model has no tokenizer)", fn);
    return v;
}

SQ_API int32_t sq_tokenize(const sq_model *m, const char *text, int32_t text_len, int32_t *tokens,
                           int32_t max_tokens, int32_t add_bos, int32_t parse_special) {
    const sq_vocab *v = vocab_of(m, "sq_tokenize");
    return v ? sq_vocab_tokenize(v, text, text_len, tokens, max_tokens, add_bos, parse_special) : INT32_MIN;
}

SQ_API int32_t sq_token_to_piece(const sq_model *m, int32_t token, char *buf, int32_t buf_len, int32_t render_special) {
    const sq_vocab *v = vocab_of(m, "sq_token_to_piece");
    return v ? sq_vocab_token_to_piece(v, token, buf, buf_len, render_special) : INT32_MIN;
}

SQ_API int32_t sq_detokenize(const sq_model *m, const int32_t *tokens, int32_t n_tokens, char *buf,
                             int32_t buf_len, int32_t render_special) {
    const sq_vocab *v = vocab_of(m, "sq_detokenize");
    return v ? sq_vocab_detokenize(v, tokens, n_tokens, buf, buf_len, render_special) : INT32_MIN;
}

SQ_API int32_t sq_token_bos(const sq_model *m) { return m ? sq_vocab_bos(sq_model_vocab(m)) : -1; }
SQ_API int32_t sq_token_eos(const sq_model *m) { return m ? sq_vocab_eos(sq_model_vocab(m)) : -1; }
SQ_API int32_t sq_token_is_eog(const sq_model *m, int32_t token) {
    return m ? sq_vocab_is_eog(sq_model_vocab(m), token) : 0;
}
