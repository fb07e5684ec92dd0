/* chat.h — internal side of the chat templates (public API: sq_chat_* in specquant.h).
 *
 * A GGUF file carries its chat format as a Jinja template (tokenizer.chat_template). We do not run
 * Jinja: like llama.cpp we recognise the handful of formats by their markers and render them in C.
 */
#ifndef SQ_CHAT_H
#define SQ_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "specquant.h"

typedef enum {
    SQ_CHAT_UNKNOWN = -1,
    SQ_CHAT_CHATML = 0,
    SQ_CHAT_LLAMA3 = 1,
    SQ_CHAT_LLAMA2 = 2,
    SQ_CHAT_GEMMA = 3,
    SQ_CHAT_PHI3 = 4
} sq_chat_format;

/* The format a built-in name ("chatml", "llama-3", ...) or a Jinja text stands for. */
sq_chat_format sq_chat_format_of(const char *tmpl);
const char *sq_chat_format_name(sq_chat_format f);

/* A chatml Jinja template's built-in system prompt (written when the conversation has none, as
 * SmolLM2's and Qwen2's templates do): copies it into out (NUL-terminated) and returns its length,
 * or returns -1 when the template has none (or it does not fit in cap bytes). */
int sq_chat_default_system(const char *tmpl, char *out, size_t cap);

#endif
