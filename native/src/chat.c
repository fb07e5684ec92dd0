/* chat.c — chat templates: detection from a model's Jinja text and rendering (see chat.h).
 *
 * Formats (what the models' own templates print; BOS is left to the tokenizer's add_bos):
 *   chatml  <|im_start|>ROLE\nTEXT<|im_end|>\n ...            then <|im_start|>assistant\n
 *   llama3  <|start_header_id|>ROLE<|end_header_id|>\n\nTEXT<|eot_id|> ...  (text trimmed)
 *   llama2  [INST] <<SYS>>\nSYS\n<</SYS>>\n\nUSER [/INST] ANSWER </s><s>[INST] USER [/INST]
 *   gemma   <start_of_turn>user\nTEXT<end_of_turn>\n<start_of_turn>model\n... (system joins the
 *           first user turn; text trimmed)
 *   phi3    <|system|>\nTEXT<|end|>\n<|user|>\nTEXT<|end|>\n<|assistant|>\n
 */
#include "chat.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

static const struct {
    const char *name;
    sq_chat_format f;
} k_names[] = {
    {"chatml", SQ_CHAT_CHATML}, {"llama3", SQ_CHAT_LLAMA3}, {"llama-3", SQ_CHAT_LLAMA3},
    {"llama2", SQ_CHAT_LLAMA2}, {"llama-2", SQ_CHAT_LLAMA2}, {"gemma", SQ_CHAT_GEMMA},
    {"phi3", SQ_CHAT_PHI3}, {"phi-3", SQ_CHAT_PHI3},
};

const char *sq_chat_format_name(sq_chat_format f) {
    switch (f) {
    case SQ_CHAT_CHATML: return "chatml";
    case SQ_CHAT_LLAMA3: return "llama3";
    case SQ_CHAT_LLAMA2: return "llama2";
    case SQ_CHAT_GEMMA: return "gemma";
    case SQ_CHAT_PHI3: return "phi3";
    default: return NULL;
    }
}

sq_chat_format sq_chat_format_of(const char *t) {
    if (!t) return SQ_CHAT_UNKNOWN;
    for (size_t i = 0; i < sizeof k_names / sizeof k_names[0]; i++)
        if (strcmp(t, k_names[i].name) == 0) return k_names[i].f;
    /* a Jinja text: the markers each format cannot do without (llama.cpp checks the same) */
    if (strstr(t, "<|im_start|>")) return SQ_CHAT_CHATML;
    if (strstr(t, "<|start_header_id|>") && strstr(t, "<|end_header_id|>")) return SQ_CHAT_LLAMA3;
    if (strstr(t, "<start_of_turn>")) return SQ_CHAT_GEMMA;
    if (strstr(t, "<|assistant|>") && strstr(t, "<|end|>")) return SQ_CHAT_PHI3;
    if (strstr(t, "[INST]") && strstr(t, "[/INST]")) return SQ_CHAT_LLAMA2;
    return SQ_CHAT_UNKNOWN;
}

SQ_API const char *sq_chat_template_detect(const char *tmpl) { return sq_chat_format_name(sq_chat_format_of(tmpl)); }

SQ_API const char *sq_chat_template_names(void) { return "chatml, llama3, llama2, gemma, phi3"; }

int sq_chat_default_system(const char *t, char *out, size_t cap) {
    static const char head[] = "<|im_start|>system";
    if (!t || sq_chat_format_of(t) != SQ_CHAT_CHATML || strcmp(t, "chatml") == 0) return -1;
    for (const char *p = strstr(t, head); p; p = strstr(p + 1, head)) {
        const char *s = p + sizeof head - 1;
        if (*s == '\n') s++;
        else if (s[0] == '\\' && s[1] == 'n') s += 2; /* an escaped newline inside a Jinja string */
        else continue;
        const char *e = strstr(s, "<|im_end|>");
        if (!e) return -1;
        /* a literal prompt, not an expression such as ' + message['content'] + ' */
        size_t n = 0;
        int literal = e > s;
        for (const char *q = s; q < e && literal; q++)
            if (*q == '\'' || *q == '"' || *q == '{' || *q == '}' || *q == '+') literal = 0;
        if (!literal) continue;
        for (const char *q = s; q < e; q++) {
            char c = *q;
            if (c == '\\' && q + 1 < e && q[1] == 'n') { c = '\n'; q++; }
            if (n + 1 >= cap) return -1;
            out[n++] = c;
        }
        out[n] = '\0';
        return (int)n;
    }
    return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* rendering into a caller's buffer that may be too small: count everything, copy what fits */

typedef struct {
    char *buf;
    size_t cap, len;
} sbuf;

static void put_n(sbuf *b, const char *s, size_t n) {
    if (b->len + n < b->cap) memcpy(b->buf + b->len, s, n);
    b->len += n;
}

static void put(sbuf *b, const char *s) { put_n(b, s, strlen(s)); }

/* Jinja's |trim: strips ASCII whitespace at both ends */
static void put_trim(sbuf *b, const char *s) {
    size_t n = strlen(s), i = 0;
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    while (n > i && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r')) n--;
    put_n(b, s + i, n - i);
}

typedef enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT } role_t;

/* The formats that print every message the same way: open, role, mid, content (Jinja-trimmed or
 * not), close; then gen to open the assistant's answer. */
typedef struct {
    const char *open, *mid, *close, *gen;
    int trim;
} turn_format;

static const turn_format k_chatml = {"<|im_start|>", "\n", "<|im_end|>\n", "<|im_start|>assistant\n", 0};
static const turn_format k_llama3 = {"<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>",
                                     "<|start_header_id|>assistant<|end_header_id|>\n\n", 1};
static const turn_format k_phi3 = {"<|", "|>\n", "<|end|>\n", "<|assistant|>\n", 0};

static void render_turns(sbuf *b, const turn_format *f, const char *const *roles, const char *const *c, int32_t n,
                         int add) {
    for (int32_t i = 0; i < n; i++) {
        put(b, f->open);
        put(b, roles[i]);
        put(b, f->mid);
        if (f->trim) put_trim(b, c[i]);
        else put(b, c[i]);
        put(b, f->close);
    }
    if (add) put(b, f->gen);
}

/* chatml, led by the template's default system prompt when the conversation has no system turn */
static void render_chatml(sbuf *b, const role_t *r, const char *const *roles, const char *const *c, int32_t n,
                          const char *def_sys, int add) {
    static const char *const sys_role[1] = {"system"};
    if (def_sys && (n == 0 || r[0] != ROLE_SYSTEM)) render_turns(b, &k_chatml, sys_role, &def_sys, 1, 0);
    render_turns(b, &k_chatml, roles, c, n, add);
}

static void render_llama2(sbuf *b, const role_t *r, const char *const *c, int32_t n, int add) {
    const char *sys = NULL;
    int open = 0, first = 1; /* open: an [INST] waits for its answer */
    for (int32_t i = 0; i < n; i++) {
        if (r[i] == ROLE_SYSTEM) { sys = c[i]; continue; }
        if (r[i] == ROLE_USER) {
            put(b, first ? "[INST] " : "<s>[INST] "); /* the first BOS is the tokenizer's */
            first = 0;
            if (sys) {
                put(b, "<<SYS>>\n");
                put_trim(b, sys);
                put(b, "\n<</SYS>>\n\n");
                sys = NULL;
            }
            put_trim(b, c[i]);
            put(b, " [/INST]");
            open = 1;
        } else {
            if (!open) { put(b, first ? "[INST]  [/INST]" : "<s>[INST]  [/INST]"); first = 0; }
            put(b, " ");
            put_trim(b, c[i]);
            put(b, " </s>");
            open = 0;
        }
    }
    (void)add; /* the answer follows "[/INST]" directly */
}

static void render_gemma(sbuf *b, const role_t *r, const char *const *c, int32_t n, int add) {
    const char *sys = NULL;
    for (int32_t i = 0; i < n; i++) {
        if (r[i] == ROLE_SYSTEM) { sys = c[i]; continue; }
        put(b, r[i] == ROLE_USER ? "<start_of_turn>user\n" : "<start_of_turn>model\n");
        if (sys && r[i] == ROLE_USER) { /* gemma has no system turn: it leads the first user turn */
            put_trim(b, sys);
            put(b, "\n\n");
            sys = NULL;
        }
        put_trim(b, c[i]);
        put(b, "<end_of_turn>\n");
    }
    if (add) put(b, "<start_of_turn>model\n");
}

SQ_API int32_t sq_chat_apply(const char *tmpl, const char *const *roles, const char *const *contents, int32_t n,
                             int32_t add_assistant, char *buf, int32_t buf_len) {
    if (n < 0 || (n > 0 && (!roles || !contents)) || buf_len < 0 || (!buf && buf_len > 0)) {
        sq_set_error(SQ_ERR_ARG, "sq_chat_apply: bad arguments");
        return INT32_MIN;
    }
    sq_chat_format f = sq_chat_format_of(tmpl);
    if (f == SQ_CHAT_UNKNOWN) {
        sq_set_error(SQ_ERR_UNSUPPORTED, "%s; known: %s",
                     tmpl ? (strlen(tmpl) < 32 ? "unknown chat template name" : "unrecognised chat template (Jinja text)")
                          : "no chat template",
                     sq_chat_template_names());
        return INT32_MIN;
    }
    role_t small[16];
    role_t *r = small;
    if (n > 16 && !(r = malloc(sizeof(role_t) * (size_t)n))) {
        sq_set_error(SQ_ERR_NOMEM, "sq_chat_apply: out of memory");
        return INT32_MIN;
    }
    int32_t result = INT32_MIN;
    for (int32_t i = 0; i < n; i++) {
        if (!roles[i] || !contents[i]) {
            sq_set_error(SQ_ERR_ARG, "sq_chat_apply: message %d has no role or content", i);
            goto done;
        }
        if (strcmp(roles[i], "system") == 0) r[i] = ROLE_SYSTEM;
        else if (strcmp(roles[i], "user") == 0) r[i] = ROLE_USER;
        else if (strcmp(roles[i], "assistant") == 0) r[i] = ROLE_ASSISTANT;
        else {
            sq_set_error(SQ_ERR_ARG, "sq_chat_apply: message %d has role '%.32s' (expected system, user or assistant)", i,
                         roles[i]);
            goto done;
        }
    }
    char def_sys[1024];
    int have_def = f == SQ_CHAT_CHATML && sq_chat_default_system(tmpl, def_sys, sizeof def_sys) >= 0;
    sbuf b = {buf, (size_t)buf_len, 0};
    switch (f) {
    case SQ_CHAT_CHATML: render_chatml(&b, r, roles, contents, n, have_def ? def_sys : NULL, add_assistant); break;
    case SQ_CHAT_LLAMA3: render_turns(&b, &k_llama3, roles, contents, n, add_assistant); break;
    case SQ_CHAT_LLAMA2: render_llama2(&b, r, contents, n, add_assistant); break;
    case SQ_CHAT_GEMMA: render_gemma(&b, r, contents, n, add_assistant); break;
    case SQ_CHAT_PHI3: render_turns(&b, &k_phi3, roles, contents, n, add_assistant); break;
    default: break;
    }
    if (b.len >= (size_t)INT32_MAX) {
        sq_set_error(SQ_ERR_ARG, "sq_chat_apply: conversation too long");
        goto done;
    }
    if (b.len < b.cap) {
        buf[b.len] = '\0';
        result = (int32_t)b.len;
    } else {
        result = -(int32_t)(b.len + 1);
    }
done:
    if (r != small) free(r);
    return result;
}
