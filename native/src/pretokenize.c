/* pretokenize.c — the pre-tokenizer regexes of byte-level BPE vocabularies, written by hand.
 *
 * Each matcher returns the length of the regex match at the start of its input, trying the
 * alternatives in order exactly as a backtracking engine (Oniguruma in HF tokenizers) does:
 *   gpt2    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   llama3  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*
 *           |\s*[\r\n]+|\s+(?!\S)|\s+
 *   qwen2   llama3 with \p{N} for \p{N}{1,3}
 *   smollm  every \p{N} alone (HF Digits(individual_digits)), then gpt2 between them
 * Every character is a letter, a number, white space or "other", so every position matches
 * something and the pieces cover the text. Bytes that are not UTF-8 count as "other".
 */
#include "tokenizer.h"
#include "unicode.h"

/* Each matcher returns the length of the match at s[0..n), n > 0 (always >= 1). */

typedef struct {
    uint32_t cp;
    int len;
    int cls;   /* SQ_UCLASS_* */
    int space; /* \s */
} uchar;

static inline uchar uchar_at(const uint8_t *s, size_t n) {
    uchar c;
    c.len = sq_utf8_decode(s, n, &c.cp);
    if (c.cp == SQ_UTF8_INVALID) { /* an invalid byte is "other": kept as a byte of its own */
        c.cls = SQ_UCLASS_OTHER;
        c.space = 0;
    } else {
        c.cls = sq_uclass(c.cp);
        c.space = sq_uis_space(c.cp);
    }
    return c;
}

#define IS_L(c) ((c).cls == SQ_UCLASS_L)
#define IS_N(c) ((c).cls == SQ_UCLASS_N)
#define IS_OTHER(c) (!(c).space && !IS_L(c) && !IS_N(c)) /* [^\s\p{L}\p{N}] */

/* end of a run of characters with class test f, from i */
#define RUN(i, f)                                          \
    do {                                                   \
        while ((i) < n) {                                  \
            uchar c_ = uchar_at(s + (i), n - (i));         \
            if (!(f)) break;                               \
            (i) += (size_t)c_.len;                         \
        }                                                  \
    } while (0)

/* 's|'t|'re|'ve|'m|'ll|'d, ASCII case-insensitive when icase */
static size_t match_contraction(const uint8_t *s, size_t n, int icase) {
    if (n < 2 || s[0] != '\'') return 0;
    uint8_t a = s[1], b = n >= 3 ? s[2] : 0;
    if (icase) {
        a = (a >= 'A' && a <= 'Z') ? (uint8_t)(a | 0x20) : a;
        b = (b >= 'A' && b <= 'Z') ? (uint8_t)(b | 0x20) : b;
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* \s+(?!\S)|\s+ at a whitespace character: the run, minus its last character when a non-space
 * follows and the run is longer than one (that character then goes with the next word). */
static size_t match_space_run(const uint8_t *s, size_t n) {
    size_t i = 0, last = 0;
    while (i < n) {
        uchar c = uchar_at(s + i, n - i);
        if (!c.space) break;
        last = i;
        i += (size_t)c.len;
    }
    if (i < n && last > 0) return last; /* followed by \S: leave the last space */
    return i;
}

static size_t pre_gpt2(const uint8_t *s, size_t n) {
    size_t m = match_contraction(s, n, 0);
    if (m) return m;
    size_t i = (s[0] == ' ' && n > 1) ? 1 : 0; /* " ?" */
    uchar c = uchar_at(s + i, n - i);
    if (IS_L(c)) { i += (size_t)c.len; RUN(i, IS_L(c_)); return i; }
    if (IS_N(c)) { i += (size_t)c.len; RUN(i, IS_N(c_)); return i; }
    if (IS_OTHER(c)) { i += (size_t)c.len; RUN(i, IS_OTHER(c_)); return i; }
    /* s[0] is whitespace here (a space followed by whitespace, or another space character) */
    c = uchar_at(s, n);
    if (c.space) return match_space_run(s, n);
    return (size_t)c.len; /* unreachable: every character is L, N, other or space */
}

static size_t pre_llama3(const uint8_t *s, size_t n, int max_digits) {
    size_t m = match_contraction(s, n, 1);
    if (m) return m;
    uchar c = uchar_at(s, n);
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (IS_L(c)) { size_t i = (size_t)c.len; RUN(i, IS_L(c_)); return i; }
    if (!IS_N(c) && c.cp != '\r' && c.cp != '\n' && (size_t)c.len < n) {
        uchar d = uchar_at(s + c.len, n - (size_t)c.len);
        if (IS_L(d)) { size_t i = (size_t)(c.len + d.len); RUN(i, IS_L(c_)); return i; }
    }
    /* \p{N}{1,max} */
    if (IS_N(c)) {
        size_t i = (size_t)c.len;
        for (int k = 1; k < max_digits && i < n; k++) {
            uchar d = uchar_at(s + i, n - i);
            if (!IS_N(d)) break;
            i += (size_t)d.len;
        }
        return i;
    }
    /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    size_t i = (s[0] == ' ' && n > 1) ? 1 : 0;
    uchar o = uchar_at(s + i, n - i);
    if (IS_OTHER(o)) {
        i += (size_t)o.len;
        RUN(i, IS_OTHER(c_));
        while (i < n && (s[i] == '\r' || s[i] == '\n')) i++;
        return i;
    }
    /* \s*[\r\n]+ : the whitespace run up to its last \r or \n */
    if (c.space) {
        size_t j = 0, end_nl = 0;
        while (j < n) {
            uchar d = uchar_at(s + j, n - j);
            if (!d.space) break;
            j += (size_t)d.len;
            if (d.cp == '\r' || d.cp == '\n') end_nl = j;
        }
        if (end_nl) return end_nl;
        return match_space_run(s, n); /* \s+(?!\S)|\s+ */
    }
    return (size_t)c.len; /* unreachable */
}

static size_t pre_match(sq_pre_kind pre, const uint8_t *s, size_t n) {
    switch (pre) {
    case SQ_PRE_LLAMA3: return pre_llama3(s, n, 3);
    case SQ_PRE_QWEN2: return pre_llama3(s, n, 1);
    default: return pre_gpt2(s, n);
    }
}

void sq_pretokenize(sq_pre_kind pre, const char *text, size_t len,
                    void (*emit)(void *ud, size_t off, size_t n), void *ud) {
    const uint8_t *s = (const uint8_t *)text;
    size_t i = 0;
    while (i < len) {
        size_t end = len;
        if (pre == SQ_PRE_SMOLLM) { /* every \p{N} is a piece; the regex runs between them */
            uchar c = uchar_at(s + i, len - i);
            if (IS_N(c)) {
                emit(ud, i, (size_t)c.len);
                i += (size_t)c.len;
                continue;
            }
            end = i;
            while (end < len) {
                uchar d = uchar_at(s + end, len - end);
                if (IS_N(d)) break;
                end += (size_t)d.len;
            }
        }
        while (i < end) {
            size_t m = pre_match(pre, s + i, end - i);
            emit(ud, i, m);
            i += m;
        }
    }
}
