/* chat_session.c — the chat session policy, once for sq-chat and Python (specquant.h):
 * which template a chat uses, and which old messages go when the context fills up.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "specquant.h"

SQ_API const char *sq_chat_template_pick(const sq_model *m, const char *forced) {
    if (!m) {
        sq_set_error(SQ_ERR_ARG, "sq_chat_template_pick: model is NULL");
        return NULL;
    }
    if (forced) {
        if (sq_chat_template_detect(forced)) return forced;
        sq_set_error(SQ_ERR_ARG, "unknown chat template '%.40s' (known: %s)", forced, sq_chat_template_names());
        return NULL;
    }
    const char *t = sq_model_meta(m, "tokenizer.chat_template");
    if (t && sq_chat_template_detect(t)) return t;
    sq_set_error(SQ_ERR_UNSUPPORTED, "the model has %s",
                 t ? "an unrecognised chat template" : "no chat template (tokenizer.chat_template)");
    return NULL;
}

/* Tokens of messages [0, first) + [from, n) in tmpl (assistant header added); -1 on error (set). */
static int32_t count_tokens(const sq_vocab *v, const char *tmpl, const char **roles, const char **texts,
                            const char *const *all_roles, const char *const *all_texts, int32_t first, int32_t from,
                            int32_t n) {
    int32_t k = 0;
    for (int32_t i = 0; i < n; i++)
        if (i < first || i >= from) roles[k] = all_roles[i], texts[k++] = all_texts[i];
    int32_t need = sq_chat_apply(tmpl, roles, texts, k, 1, NULL, 0);
    if (need == INT32_MIN) return -1;
    char *buf = malloc((size_t)-need);
    if (!buf) return sq_set_error(SQ_ERR_NOMEM, "out of memory"), -1;
    int32_t len = sq_chat_apply(tmpl, roles, texts, k, 1, buf, -need);
    int32_t n_tok = len < 0 ? INT32_MIN : sq_vocab_tokenize(v, buf, len, NULL, 0, 1, 1);
    free(buf);
    if (n_tok == INT32_MIN) return -1;
    return n_tok < 0 ? -n_tok : n_tok;
}

SQ_API sq_status sq_chat_fit(const sq_model *m, const char *tmpl, const char *const *roles,
                             const char *const *contents, int32_t n_msgs, int32_t *n_drop, int32_t *n_tokens) {
    if (!m || !tmpl || n_msgs < 0 || (n_msgs && (!roles || !contents)) || !n_drop || !n_tokens)
        return sq_set_error(SQ_ERR_ARG, "sq_chat_fit: bad arguments");
    const sq_vocab *v = sq_model_vocab(m);
    if (!v) return sq_set_error(SQ_ERR_ARG, "sq_chat_fit: the model has no tokenizer (tokenizer.ggml.model)");
    *n_drop = 0;
    *n_tokens = 0;
    const int32_t n_ctx = sq_model_n_ctx(m);
    const int32_t first = n_msgs > 0 && roles[0] && strcmp(roles[0], "system") == 0; /* never dropped */
    const char **r = malloc(sizeof *r * (size_t)(n_msgs + 1)), **t = malloc(sizeof *t * (size_t)(n_msgs + 1));
    sq_status st = r && t ? SQ_OK : sq_set_error(SQ_ERR_NOMEM, "out of memory");
    for (int32_t drop = 0; !st; drop++) {
        int32_t n = count_tokens(v, tmpl, r, t, roles, contents, first, first + drop, n_msgs);
        if (n < 0) {
            st = sq_last_status() ? sq_last_status() : sq_set_error(SQ_ERR_ARG, "sq_chat_fit: cannot format the chat");
            break;
        }
        int32_t left = n_msgs - first - drop; /* non-system messages kept */
        int32_t reserve = left > 1 ? n_ctx / 4 : 1; /* room to answer, while turns can go */
        if (n <= n_ctx - reserve) {
            *n_drop = drop;
            *n_tokens = n;
            break;
        }
        if (left <= 1) { /* the last message alone does not fit */
            *n_tokens = n;
            st = sq_set_error(SQ_ERR_CTX_FULL, "the prompt needs %d tokens, the context holds %d", n, n_ctx);
        }
    }
    free(r);
    free(t);
    return st;
}
