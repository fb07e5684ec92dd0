/* sq-chat — chat with a SpecQuant GGUF model from the terminal (the native twin of llama-cli).
 *
 *   sq-chat -m model.gguf                      interactive chat (the default without a prompt)
 *   sq-chat -m model.gguf -p "Why is the sky blue?" -n 128 --temp 0
 *
 * Behaviour worth knowing (README "Chat (sq-chat)"):
 * - -p / -f: the prompt is one user message wrapped in the model's chat template (like llama-cli's
 *   conversation mode), answered once; --raw feeds it as plain text to complete instead. A model
 *   with no (or an unrecognised) template runs -p as plain completion and says so on stderr; the
 *   interactive chat then needs --chat-template NAME (or --raw is refused: nothing to chat with).
 * - interactive: "> " asks for a line; Ctrl-C stops the answer being written, Ctrl-C at the prompt
 *   or EOF (Ctrl-D) exits; "/reset" starts a new conversation, "/exit" leaves.
 * - the KV cache is reused across turns: each turn tokenizes the whole conversation and evaluates
 *   only what differs from what the cache holds.
 * - context full: an answer that reaches n_ctx stops with a note on stderr; the next turn drops the
 *   oldest messages (never the system prompt) until the conversation fits again with room to answer.
 *   A prompt that cannot fit at all is an error (exit 1 with -p; a message and a new prompt in the
 *   interactive chat).
 * - the template choice and the context policy are the library's (sq_chat_template_pick,
 *   sq_chat_fit in specquant.h), shared with `specquant chat`.
 * - timings (prefill and decode tokens/s) go to stderr at exit, answers to stdout. When stdout
 *   cannot be written (a full disk, > /dev/full, a closed stdout) the answer stops and one line on
 *   stderr says why ("sq-chat: error: cannot write the answer: No space left on device"), exit 1.
 *   A reader that goes away (| head) ends sq-chat by SIGPIPE as usual, with no message (the shell
 *   shows status 141); with SIGPIPE ignored, the same status 141, also without a message.
 * Exit codes: 0 ok, 1 runtime error (missing model, bad file, prompt too long, stdout not
 * writable), 2 bad usage, 130 interrupted (-p), 141 the reader of stdout went away.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "specquant.h"

/* ---- options ----------------------------------------------------------------------------------- */

typedef struct {
    const char *model, *prompt, *prompt_file, *system, *tmpl;
    int n_predict, n_ctx, n_threads, kv_type, backend, act_bits, repeat_last_n;
    float temp, top_p, min_p, repeat_penalty, spectral_tau;
    int top_k;
    uint64_t seed;
    int interactive, raw, display_prompt;
} options;

static const char *g_prog = "sq-chat";

static void usage(FILE *f) {
    fprintf(f,
            "usage: %s -m FILE [options]\n"
            "\n"
            "Chat with a SpecQuant GGUF model. Without -p/-f the chat is interactive.\n"
            "\n"
            "  -m, --model FILE        model file (.gguf)\n"
            "  -p, --prompt TEXT       one user message; answer it and exit (with -i: then chat)\n"
            "  -f, --file FILE         read the prompt from FILE\n"
            "  -sys, --system TEXT     system prompt\n"
            "  -i, --interactive       chat interactively (default when no prompt is given)\n"
            "  -n, --n-predict N       max tokens per answer (-1 = until the end of turn or a full context) [-1]\n"
            "  -c, --ctx-size N        context size in tokens (0 = the model's, at most 2048) [0]\n"
            "  -t, --threads N         threads (0 = all cores) [0]\n"
            "  --temp T                temperature (0 = greedy) [0.8]\n"
            "  --top-k N               top-k (0 = off) [40]\n"
            "  --top-p P               top-p in (0, 1] (1 = off) [0.95]\n"
            "  --min-p P               min-p in [0, 1] (0 = off) [0.05]\n"
            "  --repeat-penalty X      repetition penalty (1 = off) [1.0]\n"
            "  --repeat-last-n N       tokens the penalty looks back on [64]\n"
            "  --seed N                random seed (-1 = random) [-1]\n"
            "  --kv-type f16|q8|q4     KV cache type [f16]\n"
            "  --spectral-tau X        keep this energy fraction of the spectral branch, (0, 1] [1.0]\n"
            "  --backend cpu|cuda|auto compute backend: auto = the GPU when the build has CUDA, a device\n"
            "                          is there and the model runs on it, else the CPU [auto]\n"
            "  -ngl, --n-gpu-layers N  llama.cpp-style alias: N > 0 = --backend cuda (all layers), 0 = cpu\n"
            "  --act-bits 4|8|auto     bits of the W4A4 layers' activations: auto = 8 on the CPU (decodes\n"
            "                          as fast as 4, more accurate), 4 on CUDA int4 tensor cores [auto]\n"
            "  --chat-template NAME    force a chat format: %s\n"
            "  --raw                   no chat template: complete the prompt as plain text\n"
            "  --no-display-prompt     do not echo the prompt\n"
            "  -h, --help              this help\n",
            g_prog, sq_chat_template_names());
}

static int usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: error: ", g_prog);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see %s -h)\n", g_prog);
    va_end(ap);
    return 2;
}

static int parse_int(const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return 0;
    *out = (int)v;
    return 1;
}

static int parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !isfinite(v)) return 0;
    *out = v;
    return 1;
}

static int parse_seed(const char *s, uint64_t *out) {
    if (strcmp(s, "-1") == 0) {
        *out = SQ_SEED_RANDOM;
        return 1;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v == UINT64_MAX) return 0;
    *out = v;
    return 1;
}

static int is_opt(const char *a, const char *s, const char *l) { return (s && !strcmp(a, s)) || (l && !strcmp(a, l)); }

/* One option with a value; returns 0 when `a` is not one of these, 2 on a bad value, 1 when used. */
static int parse_valued(options *o, const char *a, const char *v) {
#define BAD(...) return usage_error(__VA_ARGS__), 2
    if (is_opt(a, "-m", "--model")) o->model = v;
    else if (is_opt(a, "-p", "--prompt")) o->prompt = v;
    else if (is_opt(a, "-f", "--file")) o->prompt_file = v;
    else if (is_opt(a, "-sys", "--system")) o->system = v;
    else if (is_opt(a, NULL, "--chat-template")) {
        if (!sq_chat_template_detect(v) || strchr(v, '{')) BAD("unknown chat template '%s' (known: %s)", v, sq_chat_template_names());
        o->tmpl = v;
    } else if (is_opt(a, "-n", "--n-predict")) {
        if (!parse_int(v, -1, INT_MAX, &o->n_predict)) BAD("-n must be an integer >= -1, got '%s'", v);
    } else if (is_opt(a, "-c", "--ctx-size")) {
        if (!parse_int(v, 0, 1 << 24, &o->n_ctx)) BAD("-c must be an integer >= 0, got '%s'", v);
    } else if (is_opt(a, "-t", "--threads")) {
        if (!parse_int(v, 0, 1024, &o->n_threads)) BAD("-t must be an integer in 0..1024, got '%s'", v);
    } else if (is_opt(a, NULL, "--temp")) {
        if (!parse_float(v, &o->temp) || o->temp < 0) BAD("--temp must be a number >= 0, got '%s'", v);
    } else if (is_opt(a, NULL, "--top-k")) {
        if (!parse_int(v, 0, INT_MAX, &o->top_k)) BAD("--top-k must be an integer >= 0, got '%s'", v);
    } else if (is_opt(a, NULL, "--top-p")) {
        if (!parse_float(v, &o->top_p) || !(o->top_p > 0 && o->top_p <= 1)) BAD("--top-p must be in (0, 1], got '%s'", v);
    } else if (is_opt(a, NULL, "--min-p")) {
        if (!parse_float(v, &o->min_p) || !(o->min_p >= 0 && o->min_p <= 1)) BAD("--min-p must be in [0, 1], got '%s'", v);
    } else if (is_opt(a, NULL, "--repeat-penalty")) {
        if (!parse_float(v, &o->repeat_penalty) || !(o->repeat_penalty > 0)) BAD("--repeat-penalty must be > 0, got '%s'", v);
    } else if (is_opt(a, NULL, "--repeat-last-n")) {
        if (!parse_int(v, 0, 1 << 24, &o->repeat_last_n)) BAD("--repeat-last-n must be an integer >= 0, got '%s'", v);
    } else if (is_opt(a, NULL, "--seed")) {
        if (!parse_seed(v, &o->seed)) BAD("--seed must be -1 or an integer >= 0, got '%s'", v);
    } else if (is_opt(a, NULL, "--kv-type")) {
        if (!strcmp(v, "f16")) o->kv_type = SQ_KV_F16;
        else if (!strcmp(v, "q8")) o->kv_type = SQ_KV_Q8;
        else if (!strcmp(v, "q4")) o->kv_type = SQ_KV_Q4;
        else BAD("--kv-type must be f16, q8 or q4, got '%s'", v);
    } else if (is_opt(a, NULL, "--spectral-tau")) {
        if (!parse_float(v, &o->spectral_tau) || !(o->spectral_tau > 0 && o->spectral_tau <= 1))
            BAD("--spectral-tau must be in (0, 1], got '%s'", v);
    } else if (is_opt(a, NULL, "--backend")) {
        if (!strcmp(v, "cpu")) o->backend = SQ_BACKEND_CPU;
        else if (!strcmp(v, "cuda")) o->backend = SQ_BACKEND_CUDA;
        else if (!strcmp(v, "auto")) o->backend = SQ_BACKEND_AUTO;
        else BAD("--backend must be cpu, cuda or auto, got '%s'", v);
    } else if (is_opt(a, NULL, "--act-bits")) {
        if (!strcmp(v, "auto")) o->act_bits = 0;
        else if (!strcmp(v, "4")) o->act_bits = 4;
        else if (!strcmp(v, "8")) o->act_bits = 8;
        else BAD("--act-bits must be 4, 8 or auto, got '%s'", v);
    } else if (is_opt(a, "-ngl", "--n-gpu-layers")) {
        int n; /* the whole model runs on one backend: any N > 0 means all of it on the GPU */
        if (!parse_int(v, 0, INT_MAX, &n)) BAD("-ngl must be an integer >= 0, got '%s'", v);
        o->backend = n > 0 ? SQ_BACKEND_CUDA : SQ_BACKEND_CPU;
    } else return 0;
    return 1;
#undef BAD
}

/* 0: go on; 2: usage error (printed); -1: help printed */
static int parse_args(int argc, char **argv, options *o) {
    *o = (options){.n_predict = -1, .kv_type = SQ_KV_F16, .backend = SQ_BACKEND_AUTO, .repeat_last_n = 64,
                   .temp = 0.8f, .top_p = 0.95f, .min_p = 0.05f, .repeat_penalty = 1.0f, .spectral_tau = 1.0f,
                   .top_k = 40, .seed = SQ_SEED_RANDOM, .display_prompt = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (is_opt(a, "-h", "--help")) { usage(stdout); return -1; }
        if (is_opt(a, "-i", "--interactive")) { o->interactive = 1; continue; }
        if (is_opt(a, NULL, "--raw")) { o->raw = 1; continue; }
        if (is_opt(a, NULL, "--no-display-prompt")) { o->display_prompt = 0; continue; }
        if (a[0] != '-') return usage_error("unexpected argument '%s'", a);
        if (i + 1 >= argc) {
            if (parse_valued(o, a, "0") == 0) return usage_error("unknown option '%s'", a);
            return usage_error("option '%s' needs a value", a);
        }
        int r = parse_valued(o, a, argv[i + 1]);
        if (r == 0) return usage_error("unknown option '%s'", a);
        if (r == 2) return 2;
        i++;
    }
    if (!o->model) return usage_error("no model: pass -m FILE");
    if (o->prompt && o->prompt_file) return usage_error("give -p or -f, not both");
    if (o->raw && o->tmpl) return usage_error("--raw and --chat-template exclude each other");
    if (o->raw && (o->interactive || (!o->prompt && !o->prompt_file)))
        return usage_error("--raw completes a prompt: it needs -p or -f and no -i");
    return 0;
}

/* ---- small helpers ----------------------------------------------------------------------------- */

static volatile sig_atomic_t g_sigint;

static void on_sigint(int sig) {
    (void)sig;
    g_sigint++;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int error_msg(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: error: ", g_prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

/* ---- stdout: every write checked ------------------------------------------------------------- */

static int g_out_err; /* errno of the first failed write to stdout; 0 while all went out */

/* Writes n bytes to stdout (then flushes if flush); 0 once a write has failed (g_out_err). */
static int out_write(const char *p, size_t n, int flush) {
    if (g_out_err) return 0;
    errno = 0;
    if ((n && fwrite(p, 1, n, stdout) != n) || (flush && fflush(stdout) != 0)) {
        g_out_err = errno ? errno : EIO;
        return 0;
    }
    return 1;
}

/* The exit status for g_out_err, after its one line on stderr (none for a reader gone away). */
static int out_error(void) {
    if (g_out_err == EPIPE) return 141; /* as if killed by SIGPIPE (ignored here): quiet */
    return error_msg(1, "cannot write the answer: %s", strerror(g_out_err));
}

/* Whole file into a NUL-terminated buffer (at most 64 MiB). */
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        error_msg(1, "cannot open prompt file '%s': %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) break;
        if (n + 1 >= cap) {
            if (cap >= ((size_t)64 << 20)) {
                error_msg(1, "prompt file '%s' is larger than 64 MiB", path);
                free(buf);
                buf = NULL;
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - 1 - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) { error_msg(1, "cannot read '%s'", path); free(buf); buf = NULL; }
            break;
        }
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        *len = n;
    }
    return buf;
}

/* 1 if s[0..n) is well-formed UTF-8 without NUL bytes */
static int utf8_ok(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        size_t len = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
        if (!len || i + len > n || c == 0) return 0;
        for (size_t k = 1; k < len; k++)
            if ((u[i + k] & 0xC0) != 0x80) return 0;
        if (len == 3 && ((c == 0xE0 && u[i + 1] < 0xA0) || (c == 0xED && u[i + 1] > 0x9F))) return 0;
        if (len == 4 && ((c == 0xF0 && u[i + 1] < 0x90) || (c == 0xF4 && u[i + 1] > 0x8F))) return 0;
        i += len;
    }
    return 1;
}

/* How many bytes of s can be printed now: all but an unfinished UTF-8 sequence at the end. */
static size_t printable(const unsigned char *s, size_t n) {
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned c = s[n - back];
        if ((c & 0xC0) == 0x80) continue; /* continuation byte: look further back */
        size_t need = (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 1;
        return need > back ? n - back : n;
    }
    return n;
}

/* ---- the session ------------------------------------------------------------------------------- */

typedef struct {
    char *role;
    char *text;
} message;

typedef struct {
    sq_model *m;
    const sq_vocab *v;
    sq_sampler *smp;
    const options *o;
    const char *tmpl;     /* NULL: plain completion */
    int n_ctx, n_vocab;
    int32_t *kv;          /* tokens in the KV cache, in order */
    int n_kv;
    int32_t *toks;        /* scratch: the conversation's tokens */
    float *logits;
    message *msgs;
    int n_msgs, cap_msgs;
    char *reply;          /* the answer being written */
    size_t reply_len, reply_cap;
    double t_prefill, t_decode;
    long n_prefill, n_decode;
    const char *echo;     /* prompt to show before its answer (-p without --no-display-prompt) */
    size_t echo_len;
} session;

static int add_message(session *s, const char *role, const char *text, size_t len) {
    if (s->n_msgs == s->cap_msgs) {
        int cap = s->cap_msgs ? 2 * s->cap_msgs : 8;
        message *m = realloc(s->msgs, sizeof(message) * (size_t)cap);
        if (!m) return 0;
        s->msgs = m;
        s->cap_msgs = cap;
    }
    char *r = strdup(role), *t = malloc(len + 1);
    if (!r || !t) { free(r); free(t); return 0; }
    memcpy(t, text, len);
    t[len] = '\0';
    s->msgs[s->n_msgs++] = (message){r, t};
    return 1;
}

static void drop_message(session *s, int i) {
    free(s->msgs[i].role);
    free(s->msgs[i].text);
    memmove(s->msgs + i, s->msgs + i + 1, sizeof(message) * (size_t)(s->n_msgs - i - 1));
    s->n_msgs--;
}

/* Roles then texts of the conversation: a[0..n) roles, a[n..2n) texts (malloc'ed; NULL on OOM). */
static const char **msg_arrays(const session *s) {
    const char **a = malloc(sizeof(char *) * (size_t)(2 * s->n_msgs + 1));
    for (int i = 0; a && i < s->n_msgs; i++) {
        a[i] = s->msgs[i].role;
        a[s->n_msgs + i] = s->msgs[i].text;
    }
    return a;
}

/* The conversation in the template (with the assistant's header); malloc'ed, NULL on error. */
static char *format_chat(session *s) {
    int n = s->n_msgs;
    const char **a = msg_arrays(s);
    char *buf = NULL;
    int32_t need = a ? sq_chat_apply(s->tmpl, a, a + n, n, 1, NULL, 0) : 0;
    if (!a) error_msg(1, "out of memory");
    else if (need == INT32_MIN) error_msg(1, "%s", sq_last_error());
    else if ((buf = malloc((size_t)-need))) sq_chat_apply(s->tmpl, a, a + n, n, 1, buf, -need);
    else error_msg(1, "out of memory");
    free(a);
    return buf;
}

/* Number of tokens of text, written to s->toks when they fit in n_ctx + 1; -1 on error. */
static int tokenize_text(session *s, const char *text, size_t len) {
    if (len > INT32_MAX) return error_msg(-1, "the prompt is too long (%zu bytes)", len);
    int32_t n = sq_vocab_tokenize(s->v, text, (int32_t)len, s->toks, s->n_ctx + 1, 1, 1);
    if (n == INT32_MIN) return error_msg(-1, "%s", sq_last_error());
    return n < 0 ? -n : n;
}

/* The user's prompt, once it is known to fit (so that a rejected prompt prints nothing); 0 when
 * stdout failed. */
static int echo_prompt(session *s) {
    if (!s->echo) return 1;
    const char *echo = s->echo;
    s->echo = NULL;
    return out_write(echo, s->echo_len, !s->tmpl) && (!s->tmpl || out_write("\n", 1, 1));
}

/* Makes the KV cache hold s->toks[0..n): keeps the common prefix, evaluates the rest. */
static int prefill(session *s, int n) {
    int p = 0;
    while (p < n && p < s->n_kv && s->kv[p] == s->toks[p]) p++;
    if (p == n) p = n - 1; /* re-evaluate the last token: its logits are needed */
    if (sq_model_set_n_past(s->m, p) != SQ_OK) return error_msg(1, "%s", sq_last_error());
    s->n_kv = p;
    double t0 = now_s();
    if (sq_model_eval(s->m, s->toks + p, n - p, s->logits, 1) != SQ_OK) return error_msg(1, "%s", sq_last_error());
    s->t_prefill += now_s() - t0;
    s->n_prefill += n - p;
    memcpy(s->kv + p, s->toks + p, sizeof(int32_t) * (size_t)(n - p));
    s->n_kv = n;
    return 0;
}

static void reply_add(session *s, const char *p, size_t n) {
    if (s->reply_len + n + 1 > s->reply_cap) {
        size_t cap = s->reply_cap ? s->reply_cap : 1024;
        while (cap < s->reply_len + n + 1) cap *= 2;
        char *r = realloc(s->reply, cap);
        if (!r) return; /* the answer was printed; only the history loses it */
        s->reply = r;
        s->reply_cap = cap;
    }
    memcpy(s->reply + s->reply_len, p, n);
    s->reply_len += n;
    s->reply[s->reply_len] = '\0';
}

/* Appends token t's text to the reply (pieces longer than the stack buffer go through the heap). */
static void add_piece(session *s, int32_t t) {
    char small[256];
    int32_t n = sq_vocab_token_to_piece(s->v, t, small, sizeof small, 0);
    if (n >= 0) {
        reply_add(s, small, (size_t)n);
        return;
    }
    char *big = n == INT32_MIN ? NULL : malloc((size_t)-n);
    if (big && sq_vocab_token_to_piece(s->v, t, big, -n, 0) == -n) reply_add(s, big, (size_t)-n);
    free(big);
}

/* Samples and prints up to n_predict tokens. Returns 0, 1 on error, 3 when the context filled, 5
 * when stdout failed (g_out_err). */
static int decode(session *s) {
    s->reply_len = 0;
    size_t shown = 0; /* bytes of s->reply already printed */
    int rc = 0;
    for (int i = 0; s->o->n_predict < 0 || i < s->o->n_predict; i++) {
        if (g_sigint) break;
        int32_t t = sq_sampler_sample(s->smp, s->logits, s->n_vocab);
        if (t < 0) { rc = error_msg(1, "%s", sq_last_error()); break; }
        if (sq_vocab_is_eog(s->v, t)) break;
        sq_sampler_accept(s->smp, t);
        add_piece(s, t);
        size_t ready = printable((const unsigned char *)s->reply, s->reply_len);
        if (ready > shown) {
            if (!out_write(s->reply + shown, ready - shown, 1)) { rc = 5; break; }
            shown = ready;
        }
        if (s->n_kv >= s->n_ctx) { rc = 3; break; }
        double t0 = now_s();
        if (sq_model_eval(s->m, &t, 1, s->logits, 1) != SQ_OK) { rc = error_msg(1, "%s", sq_last_error()); break; }
        s->t_decode += now_s() - t0;
        s->n_decode++;
        s->kv[s->n_kv++] = t;
    }
    if (!out_write(s->reply + shown, s->reply_len - shown, 1)) rc = 5; /* a cut sequence, and the flush */
    if (rc == 3)
        fprintf(stderr, "\n%s: context full (%d tokens): answer cut; older turns will be dropped to go on\n", g_prog,
                s->n_ctx);
    return rc;
}

/* One user turn in chat mode. Returns 0, 1 on a fatal error, 4 when the prompt cannot fit, 5 when
 * stdout failed. The oldest messages go first when the context is short (sq_chat_fit). */
static int chat_turn(session *s, const char *text, size_t len) {
    if (!add_message(s, "user", text, len)) return error_msg(1, "out of memory");
    const char **a = msg_arrays(s);
    if (!a) return error_msg(1, "out of memory");
    int32_t dropped = 0, n_fit = 0;
    sq_status st = sq_chat_fit(s->m, s->tmpl, a, a + s->n_msgs, s->n_msgs, &dropped, &n_fit);
    free(a);
    if (st == SQ_ERR_CTX_FULL) { /* this message alone does not fit: forget it, keep the rest */
        drop_message(s, s->n_msgs - 1);
        fprintf(stderr, "%s: error: %s (use -c)\n", g_prog, sq_last_error());
        return 4;
    }
    if (st) return error_msg(1, "%s", sq_last_error());
    int first = !strcmp(s->msgs[0].role, "system") ? 1 : 0;
    for (int i = 0; i < dropped; i++) drop_message(s, first);
    if (dropped) fprintf(stderr, "%s: dropped the %d oldest message(s) to fit the context (%d tokens)\n", g_prog, dropped, s->n_ctx);
    char *conv = format_chat(s);
    if (!conv) return 1;
    int n = tokenize_text(s, conv, strlen(conv));
    free(conv);
    if (n < 0) return 1;
    if (!echo_prompt(s)) return 5;
    if (prefill(s, n)) return 1;
    int rc = decode(s);
    if (rc == 1 || rc == 5) return rc;
    if (!add_message(s, "assistant", s->reply ? s->reply : "", s->reply_len)) return error_msg(1, "out of memory");
    return 0;
}

/* Plain completion of text (no template). */
static int raw_turn(session *s, const char *text, size_t len) {
    int n = tokenize_text(s, text, len);
    if (n < 0) return 1;
    if (n >= s->n_ctx) {
        fprintf(stderr, "%s: error: the prompt needs %d tokens, the context holds %d (use -c)\n", g_prog, n, s->n_ctx);
        return 4;
    }
    if (n == 0) return error_msg(4, "the prompt has no tokens");
    if (!echo_prompt(s)) return 5;
    if (prefill(s, n)) return 1;
    int rc = decode(s);
    return rc == 1 || rc == 5 ? rc : 0;
}

static int turn(session *s, const char *text, size_t len) {
    return s->tmpl ? chat_turn(s, text, len) : raw_turn(s, text, len);
}

/* stdin is read line by line through our own buffer, not stdio's, so that whether a whole line is
 * already here is known before blocking, and the wait for more input is a pselect that unblocks
 * SIGINT atomically: a Ctrl-C that lands between printing "> " and the wait is never lost (with
 * getline the read then blocked although the signal had already been handled). */
static struct {
    char *buf;
    size_t len, cap;
    int eof;
} g_in;

/* Waits until stdin is readable: 0, or -1 when a Ctrl-C came before or during the wait. */
static int wait_stdin(void) {
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &old);
    int rc = 0;
    for (;;) {
        if (g_sigint) {
            rc = -1;
            break;
        }
        fd_set rd;
        FD_ZERO(&rd);
        FD_SET(STDIN_FILENO, &rd);
        int n = pselect(STDIN_FILENO + 1, &rd, NULL, NULL, NULL, &old);
        if (n > 0 || (n < 0 && errno != EINTR)) break; /* readable, or an error read() will report */
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    return rc;
}

/* Moves the first n bytes of the input buffer into *line (NUL-terminated), dropping `drop` more. */
static int take_line(char **line, size_t *cap, size_t n, size_t drop) {
    if (n + 1 > *cap) {
        char *p = realloc(*line, n + 1);
        if (!p) return 0;
        *line = p;
        *cap = n + 1;
    }
    memcpy(*line, g_in.buf, n);
    (*line)[n] = '\0';
    memmove(g_in.buf, g_in.buf + n + drop, g_in.len - n - drop);
    g_in.len -= n + drop;
    return 1;
}

/* Reads one line (without its newline) into *line; returns its length, -1 on EOF / Ctrl-C. */
static long read_line(char **line, size_t *cap) {
    for (;;) {
        char *nl = g_in.len ? memchr(g_in.buf, '\n', g_in.len) : NULL;
        if (nl || (g_in.eof && g_in.len)) { /* a whole line, or the unterminated last one */
            size_t n = nl ? (size_t)(nl - g_in.buf) : g_in.len;
            if (!take_line(line, cap, n, nl ? 1 : 0)) return -1;
            while (n > 0 && (*line)[n - 1] == '\r') (*line)[--n] = '\0';
            return (long)n;
        }
        if (g_in.eof || wait_stdin() < 0) return -1;
        if (g_in.cap - g_in.len < 4096) {
            char *p = realloc(g_in.buf, g_in.cap * 2 + 4096);
            if (!p) return -1;
            g_in.buf = p;
            g_in.cap = g_in.cap * 2 + 4096;
        }
        ssize_t r = read(STDIN_FILENO, g_in.buf + g_in.len, g_in.cap - g_in.len);
        if (r < 0 && errno == EINTR && !g_sigint) continue;
        if (r < 0) return -1;
        if (r == 0) g_in.eof = 1;
        g_in.len += (size_t)r;
    }
}

static int interactive(session *s) {
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;
    for (;;) {
        g_sigint = 0;
        if (!out_write("\n> ", 3, 1)) break;
        long n = read_line(&line, &cap);
        if (n < 0) { out_write("\n", 1, 1); break; }
        if (n == 0) continue;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (!strcmp(line, "/reset")) {
            while (s->n_msgs > 0 && !(s->n_msgs == 1 && !strcmp(s->msgs[0].role, "system"))) drop_message(s, s->n_msgs - 1);
            fprintf(stderr, "%s: new conversation\n", g_prog);
            continue;
        }
        if (!utf8_ok(line, (size_t)n)) {
            fprintf(stderr, "%s: error: that line is not valid UTF-8; type it again\n", g_prog);
            continue;
        }
        rc = turn(s, line, (size_t)n);
        if (rc == 1 || rc == 5) break;
        rc = 0;
        if (g_sigint > 1) break; /* a second Ctrl-C while answering: leave */
    }
    free(line);
    free(g_in.buf);
    g_in.buf = NULL;
    g_in.len = g_in.cap = 0;
    return rc;
}

static void print_timings(const session *s, double t_load) {
    double pf = s->t_prefill > 0 ? (double)s->n_prefill / s->t_prefill : 0;
    double dc = s->t_decode > 0 ? (double)s->n_decode / s->t_decode : 0;
    int bits = sq_model_act_bits(s->m);
    char acts[192] = "", a8[128] = "";
    /* at 4 bits, the kinds the file keeps at 8 (specquant.act_bits_a8_linears, printed as ["a", "b"]) */
    const char *listed = bits == 4 ? sq_model_meta(s->m, "specquant.act_bits_a8_linears") : NULL;
    for (size_t n = 0; listed && *listed && n + 1 < sizeof a8; listed++)
        if (*listed != '[' && *listed != ']' && *listed != '"') a8[n++] = *listed, a8[n] = 0;
    if (bits) snprintf(acts, sizeof acts, ", activations %d-bit%s%s%s", bits, a8[0] ? " (" : "", a8, a8[0] ? " 8-bit)" : "");
    fprintf(stderr, "\n%s: load    %8.2f ms (backend %s%s)\n", g_prog, t_load * 1e3, sq_model_backend(s->m), acts);
    fprintf(stderr, "%s: prefill %8.2f ms / %5ld tokens (%8.2f tokens/s)\n", g_prog, s->t_prefill * 1e3, s->n_prefill, pf);
    fprintf(stderr, "%s: decode  %8.2f ms / %5ld tokens (%8.2f tokens/s)\n", g_prog, s->t_decode * 1e3, s->n_decode, dc);
}

/* The chat template to use (NULL = plain completion); *rc != 0 when chatting is impossible. */
static const char *pick_template(const options *o, sq_model *m, int chatting, int *rc) {
    *rc = 0;
    if (o->raw) return NULL;
    const char *t = sq_chat_template_pick(m, o->tmpl); /* forced > the model's > none */
    if (t) return t;
    if (sq_last_status() != SQ_ERR_UNSUPPORTED) { /* not "the model has none" */
        *rc = error_msg(1, "%s", sq_last_error());
        return NULL;
    }
    if (chatting) {
        *rc = error_msg(1, "%s; choose one with --chat-template %s", sq_last_error(), "chatml|llama3|llama2|gemma|phi3");
        return NULL;
    }
    fprintf(stderr, "%s: %s: completing the prompt as plain text (--chat-template NAME to chat)\n", g_prog, sq_last_error());
    return NULL;
}

static int run(const options *o, const char *prompt, size_t prompt_len) {
    int chatting = o->interactive || !prompt;
    sq_model_params mp = sq_model_default_params();
    mp.n_ctx = o->n_ctx;
    mp.n_threads = o->n_threads;
    mp.kv_type = o->kv_type;
    mp.spectral_tau = o->spectral_tau;
    mp.backend = o->backend;
    mp.act_bits = o->act_bits;
    double t0 = now_s();
    sq_model *m = sq_model_load(o->model, &mp);
    if (!m) return error_msg(1, "cannot load '%s': %s", o->model, sq_last_error());
    double t_load = now_s() - t0;
    session s = {.m = m, .v = sq_model_vocab(m), .o = o, .n_ctx = sq_model_n_ctx(m), .n_vocab = sq_model_n_vocab(m)};
    int rc = 0;
    if (!s.v) { rc = error_msg(1, "'%s' has no tokenizer (tokenizer.ggml.model)", o->model); goto done; }
    s.tmpl = pick_template(o, m, chatting, &rc);
    if (rc) goto done;
    sq_sampler_params sp = {o->temp, o->top_k, o->top_p, o->min_p, o->repeat_penalty, o->repeat_last_n, o->seed};
    s.smp = sq_sampler_new(&sp);
    s.kv = malloc(sizeof(int32_t) * (size_t)(s.n_ctx + 1));
    s.toks = malloc(sizeof(int32_t) * (size_t)(s.n_ctx + 1));
    s.logits = malloc(sizeof(float) * (size_t)s.n_vocab);
    if (!s.smp || !s.kv || !s.toks || !s.logits) { rc = error_msg(1, "%s", s.smp ? "out of memory" : sq_last_error()); goto done; }
    if (o->system && s.tmpl && !add_message(&s, "system", o->system, strlen(o->system))) { rc = error_msg(1, "out of memory"); goto done; }
    if (prompt) {
        if (o->display_prompt) {
            s.echo = prompt;
            s.echo_len = prompt_len;
        }
        rc = turn(&s, prompt, prompt_len);
        if (rc == 4) rc = 1;
        if (!rc && !o->interactive) out_write("\n", 1, 1);
        if (!rc && g_sigint && !o->interactive) rc = 130;
    }
    if (!rc && !g_out_err && (!prompt || o->interactive)) rc = interactive(&s);
    if (g_out_err) rc = out_error(); /* the answer did not go out: that is the error */
    if (rc == 0 || rc == 130) print_timings(&s, t_load); /* an error stays the last line */
done:
    for (int i = 0; i < s.n_msgs; i++) {
        free(s.msgs[i].role);
        free(s.msgs[i].text);
    }
    free(s.msgs);
    free(s.reply);
    free(s.kv);
    free(s.toks);
    free(s.logits);
    sq_sampler_free(s.smp);
    sq_model_free(m);
    return rc;
}

int main(int argc, char **argv) {
    options o;
    int rc = parse_args(argc, argv, &o);
    if (rc < 0) return fclose(stdout) == 0 ? 0 : (g_out_err = errno, out_error()); /* -h */
    if (rc) return rc;
    if (fcntl(STDOUT_FILENO, F_GETFD) < 0) { /* closed (>&-): say so before loading anything */
        g_out_err = EBADF;
        return out_error();
    }
    char *file_text = NULL;
    size_t prompt_len = 0;
    const char *prompt = o.prompt;
    if (o.prompt_file) {
        if (!(file_text = read_file(o.prompt_file, &prompt_len))) return 1;
        prompt = file_text;
    } else if (prompt) {
        prompt_len = strlen(prompt);
    }
    if (prompt && prompt_len == 0) rc = usage_error("the prompt is empty");
    else if (prompt && !utf8_ok(prompt, prompt_len)) rc = error_msg(1, "the prompt is not valid UTF-8 text");
    else if (o.system && (!*o.system || !utf8_ok(o.system, strlen(o.system))))
        rc = error_msg(1, "the system prompt is empty or not valid UTF-8 text");
    if (!rc) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_sigint; /* no SA_RESTART: Ctrl-C interrupts a blocked read */
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        rc = run(&o, prompt, prompt_len);
    }
    free(file_text);
    if (fclose(stdout) != 0 && rc == 0) { /* what was still buffered did not go out */
        g_out_err = errno ? errno : EIO;
        rc = out_error();
    }
    return rc;
}
