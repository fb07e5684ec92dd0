/* test_tokenizer.c — the tokenizer on hand-built vocabularies (no model file needed).
 *
 * - Unicode: UTF-8 decoding of valid / invalid input, classes, the streaming printable prefix.
 * - Pre-tokenizers: splits of the gpt2 / smollm / llama3 / qwen2 regexes, expected pieces taken
 *   from the Hugging Face tokenizers library (Split(Regex(...)) / Digits) on the same strings.
 * - Byte-level BPE: merge order by rank (and leftmost first on ties), special and user-defined
 *   tokens in text, the -(needed) convention, and a fuzz round trip: random bytes (invalid UTF-8
 *   included) -> tokens -> bytes is the identity.
 * - SentencePiece: merges by score, dummy prefix, byte fallback, detokenize.
 * - Bad input: unknown tokenizer model / pre-tokenizer, ids out of range, NULL buffers.
 * The exactness against Hugging Face on real text is tests/test_tokenizer.py.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "tokenizer.h"
#include "unicode.h"

#define TEST_RNG_SEED 0x2545F4914F6CDD1Dull /* this test's own stream (its fuzz cases) */
#include "test_util.h"
#include "tiny_model.h" /* gpt2_spell */

/* ---- unicode -------------------------------------------------------------------------------- */

static void test_unicode(void) {
    uint32_t cp;
    CHECK(sq_utf8_decode((const uint8_t *)"\xC3\xA9", 2, &cp) == 2 && cp == 0xE9, "é");
    CHECK(sq_utf8_decode((const uint8_t *)"\xF0\x9F\x98\x80", 4, &cp) == 4 && cp == 0x1F600, "emoji");
    const char *bad[] = {"\x80", "\xC0\xAF", "\xE0\x80\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xFF", "\xC3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t n = strlen(bad[i]);
        CHECK(sq_utf8_decode((const uint8_t *)bad[i], n, &cp) == 1 && cp == SQ_UTF8_INVALID, "invalid #%zu", i);
        CHECK(!sq_utf8_valid((const uint8_t *)bad[i], n), "valid() on invalid #%zu", i);
    }
    for (uint32_t c = 0; c < 0x110000; c += 97) {
        if (c >= 0xD800 && c <= 0xDFFF) continue;
        uint8_t b[4];
        int n = sq_utf8_encode(c, b);
        uint32_t d;
        CHECK(sq_utf8_decode(b, (size_t)n, &d) == n && d == c, "round trip U+%X", c);
    }
    CHECK(sq_uclass('a') == SQ_UCLASS_L && sq_uclass(0xE9) == SQ_UCLASS_L && sq_uclass(0x4F60) == SQ_UCLASS_L, "L");
    CHECK(sq_uclass('7') == SQ_UCLASS_N && sq_uclass(0xBD) == SQ_UCLASS_N && sq_uclass(0x0663) == SQ_UCLASS_N, "N");
    CHECK(sq_uclass(0x301) == SQ_UCLASS_M && sq_uclass('!') == SQ_UCLASS_P && sq_uclass('$') == SQ_UCLASS_S, "M P S");
    CHECK(sq_uclass(0x1F600) == SQ_UCLASS_S && sq_uclass(' ') == SQ_UCLASS_OTHER, "emoji, space");
    CHECK(sq_uis_space(' ') && sq_uis_space('\t') && sq_uis_space(0xA0) && sq_uis_space(0x3000) && sq_uis_space(0x2028),
          "space");
    CHECK(!sq_uis_space('x') && !sq_uis_space(0x200B) && !sq_uis_space(0x1C), "not space");
    /* streaming: hold back only an unfinished sequence */
    const uint8_t *s = (const uint8_t *)"ab\xE2\x82\xAC\xE2\x82";
    CHECK(sq_utf8_printable_prefix(s, 7) == 5, "prefix before an unfinished €");
    CHECK(sq_utf8_printable_prefix(s, 5) == 5, "complete");
    CHECK(sq_utf8_printable_prefix((const uint8_t *)"a\xF0\x9F", 3) == 1, "unfinished emoji");
    CHECK(sq_utf8_printable_prefix((const uint8_t *)"a\xFF", 2) == 2, "invalid byte never blocks");
    CHECK(sq_utf8_printable_prefix((const uint8_t *)"a\xE0\x80", 3) == 3, "overlong start never blocks");
    CHECK(sq_utf8_printable_prefix((const uint8_t *)"\xC3", 1) == 0, "lone lead byte waits");
}

/* ---- pre-tokenizers ------------------------------------------------------------------------- */

typedef struct {
    const char *text;
    const char *pieces[64];
    int n, ok;
} split_ctx;

typedef struct {
    size_t pos;
    int ok;
} coverage;

static void on_cover(void *ud, size_t off, size_t n) {
    coverage *c = (coverage *)ud;
    if (off != c->pos || n == 0) c->ok = 0;
    c->pos = off + n;
}

static void on_piece(void *ud, size_t off, size_t n) {
    split_ctx *c = (split_ctx *)ud;
    const char *want = c->pieces[c->n];
    if (!want || strlen(want) != n || memcmp(want, c->text + off, n) != 0) c->ok = 0;
    if (want) c->n++;
}

static const struct {
    sq_pre_kind pre;
    const char *text;
    const char *pieces[32];
} k_splits[] = {
    /* generated with the Hugging Face tokenizers library (see the file comment) */
    {SQ_PRE_GPT2, "Hello world!  It's 12345 o'CLOCK\n\n\tdone ", {"Hello", " world", "!", " ", " It", "'s", " 12345", " o", "'", "CLOCK", "\n\n", "\t", "done", " ", NULL}},
    {SQ_PRE_GPT2, "x  \n\n y\r\n z\xc2\xbd 3.14", {"x", "  \n\n", " y", "\r\n", " z", "\xc2\xbd", " 3", ".", "14", NULL}},
    {SQ_PRE_GPT2, " caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd\xf0\x9f\x98\x80!!", {" caf\xc3\xa9", " \xe4\xbd\xa0\xe5\xa5\xbd", "\xf0\x9f\x98\x80!!", NULL}},
    {SQ_PRE_GPT2, "I'M  'll''ve 42nd", {"I", "'", "M", " ", " '", "ll", "''", "ve", " 42", "nd", NULL}},
    {SQ_PRE_SMOLLM, "Hello world!  It's 12345 o'CLOCK\n\n\tdone ", {"Hello", " world", "!", " ", " It", "'s", " ", "1", "2", "3", "4", "5", " o", "'", "CLOCK", "\n\n", "\t", "done", " ", NULL}},
    {SQ_PRE_SMOLLM, "x  \n\n y\r\n z\xc2\xbd 3.14", {"x", "  \n\n", " y", "\r\n", " z", "\xc2\xbd", " ", "3", ".", "1", "4", NULL}},
    {SQ_PRE_SMOLLM, " caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd\xf0\x9f\x98\x80!!", {" caf\xc3\xa9", " \xe4\xbd\xa0\xe5\xa5\xbd", "\xf0\x9f\x98\x80!!", NULL}},
    {SQ_PRE_SMOLLM, "I'M  'll''ve 42nd", {"I", "'", "M", " ", " '", "ll", "''", "ve", " ", "4", "2", "nd", NULL}},
    {SQ_PRE_LLAMA3, "Hello world!  It's 12345 o'CLOCK\n\n\tdone ", {"Hello", " world", "!", " ", " It", "'s", " ", "123", "45", " o", "'CLOCK", "\n\n", "\tdone", " ", NULL}},
    {SQ_PRE_LLAMA3, "x  \n\n y\r\n z\xc2\xbd 3.14", {"x", "  \n\n", " y", "\r\n", " z", "\xc2\xbd", " ", "3", ".", "14", NULL}},
    {SQ_PRE_LLAMA3, " caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd\xf0\x9f\x98\x80!!", {" caf\xc3\xa9", " \xe4\xbd\xa0\xe5\xa5\xbd", "\xf0\x9f\x98\x80!!", NULL}},
    {SQ_PRE_LLAMA3, "I'M  'll''ve 42nd", {"I", "'M", " ", " '", "ll", "''", "ve", " ", "42", "nd", NULL}},
    {SQ_PRE_QWEN2, "Hello world!  It's 12345 o'CLOCK\n\n\tdone ", {"Hello", " world", "!", " ", " It", "'s", " ", "1", "2", "3", "4", "5", " o", "'CLOCK", "\n\n", "\tdone", " ", NULL}},
    {SQ_PRE_QWEN2, "x  \n\n y\r\n z\xc2\xbd 3.14", {"x", "  \n\n", " y", "\r\n", " z", "\xc2\xbd", " ", "3", ".", "1", "4", NULL}},
    {SQ_PRE_QWEN2, " caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd\xf0\x9f\x98\x80!!", {" caf\xc3\xa9", " \xe4\xbd\xa0\xe5\xa5\xbd", "\xf0\x9f\x98\x80!!", NULL}},
    {SQ_PRE_QWEN2, "I'M  'll''ve 42nd", {"I", "'M", " ", " '", "ll", "''", "ve", " ", "4", "2", "nd", NULL}},
};

static void test_pretokenizers(void) {
    for (size_t i = 0; i < sizeof k_splits / sizeof k_splits[0]; i++) {
        split_ctx c = {k_splits[i].text, {0}, 0, 1};
        for (int k = 0; k < 32 && k_splits[i].pieces[k]; k++) c.pieces[k] = k_splits[i].pieces[k];
        sq_pretokenize(k_splits[i].pre, c.text, strlen(c.text), on_piece, &c);
        CHECK(c.ok && c.pieces[c.n] == NULL, "split #%zu (pre %d) of \"%s\"", i, (int)k_splits[i].pre, c.text);
    }
    /* every byte of random input lands in exactly one piece, in order */
    for (int it = 0; it < 500; it++) {
        char buf[64];
        size_t n = rnd() % sizeof buf;
        for (size_t k = 0; k < n; k++) buf[k] = rnd() % 3 ? " a1.\n\t'\xC3\xA9\xE2\r"[rnd() % 11] : (char)rnd();
        for (int pre = 0; pre < 4; pre++) {
            coverage cv = {0, 1};
            sq_pretokenize((sq_pre_kind)pre, buf, n, on_cover, &cv);
            CHECK(cv.ok && cv.pos == n, "coverage: pre %d, %zu bytes", pre, n);
        }
    }
}

/* ---- byte-level BPE ------------------------------------------------------------------------- */

enum { N_SPECIAL = 4, N_BYTES = 256 };
static const char *k_merges[] = {"h e", "l l", "\xC4\xA0 t", "\xC4\xA0t he", "he ll", "hell o"};
static const char *k_merged[] = {"he", "ll", "\xC4\xA0t", "\xC4\xA0the", "hell", "hello"};
#define N_MERGES 6

static sq_vocab *make_bpe(const char *pre) {
    static char spelled[N_BYTES][8];
    sq_str tok[N_SPECIAL + N_BYTES + N_MERGES + 1], mg[N_MERGES];
    int32_t types[N_SPECIAL + N_BYTES + N_MERGES + 1];
    const char *specials[N_SPECIAL] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool>"};
    int n = 0;
    for (int i = 0; i < N_SPECIAL; i++) {
        tok[n] = (sq_str){specials[i], strlen(specials[i])};
        types[n++] = i == 3 ? SQ_TOKTYPE_USER_DEFINED : SQ_TOKTYPE_CONTROL;
    }
    for (int b = 0; b < N_BYTES; b++) {
        gpt2_spell(b, spelled[b]);
        tok[n] = (sq_str){spelled[b], strlen(spelled[b])};
        types[n++] = SQ_TOKTYPE_NORMAL;
    }
    for (int i = 0; i < N_MERGES; i++) {
        tok[n] = (sq_str){k_merged[i], strlen(k_merged[i])};
        types[n++] = SQ_TOKTYPE_NORMAL;
        mg[i] = (sq_str){k_merges[i], strlen(k_merges[i])};
    }
    tok[n] = (sq_str){"xyz", 3}; /* a token no merge leads to */
    types[n++] = SQ_TOKTYPE_NORMAL;
    sq_vocab_desc d = {.model = "gpt2", .pre = pre, .n_tokens = n, .tokens = tok, .types = types,
                       .n_merges = N_MERGES, .merges = mg, .bos = 1, .eos = 2, .unk = -1, .eot = -1, .eom = -1,
                       .add_bos = 0, .add_eos = 0, .add_space_prefix = -1};
    return sq_vocab_new(&d);
}

static int byte_id(int b) { return N_SPECIAL + b; }
static int merged_id(int i) { return N_SPECIAL + N_BYTES + i; }

static int tokenize(const sq_vocab *v, const char *s, int32_t *out, int max, int special) {
    return sq_vocab_tokenize(v, s, (int32_t)strlen(s), out, max, 0, special);
}

static int same(const int32_t *a, int na, const int32_t *b, int nb) {
    return na == nb && memcmp(a, b, sizeof(int32_t) * (size_t)na) == 0;
}

static void test_bpe(void) {
    sq_vocab *v = make_bpe("smollm");
    CHECK(v != NULL, "build: %s", sq_last_error());
    if (!v) return;
    int32_t t[64];
    int n = tokenize(v, "hello", t, 64, 1);
    CHECK(n == 1 && t[0] == merged_id(5), "hello -> one token (n=%d)", n);
    n = tokenize(v, " the", t, 64, 1);
    CHECK(n == 1 && t[0] == merged_id(3), "' the' (n=%d)", n);
    n = tokenize(v, "lll", t, 64, 1);
    int32_t lll[] = {merged_id(1), byte_id('l')};
    CHECK(same(t, n, lll, 2), "lll: leftmost pair first");
    n = tokenize(v, "hello<|im_end|>x<tool>", t, 64, 1);
    int32_t sp[] = {merged_id(5), 2, byte_id('x'), 3};
    CHECK(same(t, n, sp, 4), "specials parsed (n=%d)", n);
    n = tokenize(v, "<|im_end|><tool>", t, 64, 0);
    CHECK(n == 11 && t[10] == 3 && t[0] == byte_id('<'), "control not parsed, user-defined always (n=%d)", n);
    n = tokenize(v, "<|im_end", t, 64, 1);
    CHECK(n == 8, "a prefix of a special is text");
    /* -(needed) and a NULL buffer to count */
    CHECK(tokenize(v, "a b c", t, 2, 1) == -5, "too small buffer -> -(needed)");
    CHECK(sq_vocab_tokenize(v, "a b c", 5, NULL, 0, 0, 1) == -5, "count only");
    CHECK(sq_vocab_tokenize(v, "", 0, t, 4, 2, 1) == 1 && t[0] == 1, "add_bos=2 forces BOS");
    CHECK(sq_vocab_tokenize(v, "", 0, t, 4, 1, 1) == 0, "add_bos=1 follows the model (no BOS)");
    CHECK(sq_vocab_tokenize(v, NULL, 3, t, 4, 0, 1) == INT32_MIN, "NULL text");
    CHECK(sq_vocab_tokenize(v, "x", -1, t, 4, 0, 1) == INT32_MIN, "negative length");
    char piece[32];
    CHECK(sq_vocab_token_to_piece(v, merged_id(3), piece, 32, 0) == 4 && memcmp(piece, " the", 4) == 0, "piece");
    CHECK(sq_vocab_token_to_piece(v, 2, piece, 32, 0) == 0, "control hidden");
    CHECK(sq_vocab_token_to_piece(v, 2, piece, 32, 1) == 10, "control rendered");
    CHECK(sq_vocab_token_to_piece(v, merged_id(5), piece, 2, 0) == -5, "small piece buffer");
    CHECK(sq_vocab_token_to_piece(v, 99999, piece, 32, 0) == INT32_MIN, "bad id");
    CHECK(sq_vocab_token_to_piece(v, -1, piece, 32, 0) == INT32_MIN, "negative id");
    CHECK(sq_vocab_is_eog(v, 2) && sq_vocab_is_eog(v, 0) && !sq_vocab_is_eog(v, 1) && !sq_vocab_is_eog(v, -3), "eog");
    /* fuzz: random bytes (special texts mixed in) round-trip exactly */
    static const char *frag[] = {"hello", " the", "<|im_end|>", "<tool>", "\xC3\xA9", "\xF0\x9F", "\xFF", "  ", "\n"};
    for (int it = 0; it < 2000; it++) {
        char text[256];
        size_t len = 0;
        while (len < 200 && rnd() % 16) {
            if (rnd() % 2) {
                text[len++] = (char)rnd();
            } else {
                const char *f = frag[rnd() % (sizeof frag / sizeof frag[0])];
                size_t fl = strlen(f);
                memcpy(text + len, f, fl);
                len += fl;
            }
        }
        int32_t ids[512];
        int special = (int)(rnd() % 2);
        int k = sq_vocab_tokenize(v, text, (int32_t)len, ids, 512, 0, special);
        CHECK(k >= 0, "fuzz tokenize");
        if (k < 0) continue;
        char back[512];
        int m = sq_vocab_detokenize(v, ids, k, back, sizeof back, 1);
        CHECK(m == (int)len && memcmp(back, text, len) == 0, "fuzz round trip (len %zu, got %d)", len, m);
    }
    n = tokenize(v, "xyz", t, 64, 1);
    CHECK(n == 3 && t[0] == byte_id('x'), "no merge reaches xyz (n=%d)", n);
    sq_vocab_free(v);
    /* Llama-3 (ignore_merges): a pre-token that is a token is taken whole */
    v = make_bpe("llama-bpe");
    CHECK(v && tokenize(v, "hello", t, 64, 1) == 1, "llama-bpe hello");
    n = v ? tokenize(v, "xyz", t, 64, 1) : 0;
    CHECK(n == 1 && t[0] == N_SPECIAL + N_BYTES + N_MERGES, "ignore_merges takes xyz whole (n=%d)", n);
    sq_vocab_free(v);
}

/* ---- SentencePiece -------------------------------------------------------------------------- */

static sq_vocab *make_spm(const char *space_prefix) {
    static char bytes[256][8];
    static const char *pieces[] = {"\xE2\x96\x81", "a", "b", "c", "\xE2\x96\x81" "a", "ab", "\xE2\x96\x81" "ab", "<x>"};
    static const float scores[] = {-1, -2, -3, -4, -5, -6, -7, 0};
    sq_str tok[3 + 256 + 8];
    float sc[3 + 256 + 8];
    int32_t ty[3 + 256 + 8];
    int n = 0;
    const char *sp[3] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++) {
        tok[n] = (sq_str){sp[i], strlen(sp[i])};
        sc[n] = 0;
        ty[n++] = i == 0 ? SQ_TOKTYPE_UNKNOWN : SQ_TOKTYPE_CONTROL;
    }
    for (int b = 0; b < 256; b++) {
        snprintf(bytes[b], sizeof bytes[b], "<0x%02X>", b);
        tok[n] = (sq_str){bytes[b], 6};
        sc[n] = 0;
        ty[n++] = SQ_TOKTYPE_BYTE;
    }
    for (int i = 0; i < 8; i++) {
        tok[n] = (sq_str){pieces[i], strlen(pieces[i])};
        sc[n] = scores[i];
        ty[n++] = i == 7 ? SQ_TOKTYPE_USER_DEFINED : SQ_TOKTYPE_NORMAL;
    }
    sq_vocab_desc d = {.model = "llama", .n_tokens = n, .tokens = tok, .scores = sc, .types = ty, .bos = 1, .eos = 2,
                       .unk = 0, .eot = -1, .eom = -1, .add_bos = -1, .add_eos = -1, .add_space_prefix = -1,
                       .space_prefix = space_prefix};
    return sq_vocab_new(&d);
}

/* random text (no leading space, no ▁ byte 0xE2; with_specials: "<x>" may occur) tokenizes and
 * comes back exactly through byte fallback */
static void spm_fuzz(const sq_vocab *v, int with_specials, const char *what) {
    for (int it = 0; it < 2000; it++) {
        char text[128];
        size_t len = rnd() % sizeof text;
        for (size_t k = 0; k < len; k++) {
            text[k] = rnd() % 2 ? "ab c<x>"[rnd() % (with_specials ? 7 : 4)] : (char)rnd();
            if ((uint8_t)text[k] == 0xE2 || (k == 0 && text[k] == ' ') || (!with_specials && text[k] == '<'))
                text[k] = 'a';
        }
        int32_t ids[512];
        int k = sq_vocab_tokenize(v, text, (int32_t)len, ids, 512, (int32_t)(rnd() % 3), 0);
        char back[512];
        int m = k >= 0 ? sq_vocab_detokenize(v, ids, k, back, sizeof back, 0) : -1;
        CHECK(m == (int)len && memcmp(back, text, len) == 0, "%s fuzz round trip (len %zu, got %d)", what, len, m);
    }
}

static void test_spm(void) {
    /* sentencepiece's dummy prefix (the default, llama.cpp's): ▁ before every piece of text */
    sq_vocab *v = make_spm(NULL);
    CHECK(v != NULL, "spm build: %s", sq_last_error());
    if (!v) return;
    enum { P = 259 }; /* first piece id */
    int32_t t[64];
    int n = sq_vocab_tokenize(v, "ab", 2, t, 64, 1, 1);
    int32_t want1[] = {1, P + 6};
    CHECK(same(t, n, want1, 2), "BOS + ▁ab (n=%d)", n);
    n = sq_vocab_tokenize(v, "ba c", 4, t, 64, 0, 1);
    int32_t want2[] = {P, P + 2, P + 1, P + 0, P + 3};
    CHECK(same(t, n, want2, 5), "▁ b a ▁ c (n=%d)", n);
    n = sq_vocab_tokenize(v, "\xC3\xA9", 2, t, 64, 0, 1);
    int32_t want3[] = {P, 3 + 0xC3, 3 + 0xA9};
    CHECK(same(t, n, want3, 3), "byte fallback (n=%d)", n);
    n = sq_vocab_tokenize(v, "a<x>a</s>", 9, t, 64, 0, 1);
    int32_t want4[] = {P + 4, P + 7, P + 4, 2};
    CHECK(same(t, n, want4, 4), "user-defined + control, a prefix after a special too (n=%d)", n);
    n = sq_vocab_tokenize(v, " a", 2, t, 64, 0, 1);
    int32_t want5[] = {P, P + 4};
    CHECK(same(t, n, want5, 2), "a prefix before a leading space too (sentencepiece) (n=%d)", n);
    char buf[64];
    int32_t ids[] = {1, P + 6, P, P + 3, 3 + 0xC3, 3 + 0xA9};
    n = sq_vocab_detokenize(v, ids, 6, buf, 64, 0);
    CHECK(n == 6 && memcmp(buf, "ab c\xC3\xA9", 6) == 0, "detokenize strips the prefix (n=%d)", n);
    CHECK(sq_vocab_token_to_piece(v, P + 6, buf, 64, 0) == 3 && memcmp(buf, " ab", 3) == 0, "piece keeps the space");
    CHECK(sq_vocab_token_to_piece(v, 3 + 0x41, buf, 64, 0) == 1 && buf[0] == 'A', "byte piece");
    CHECK(sq_vocab_add_bos(v) == 1 && sq_vocab_bos(v) == 1 && sq_vocab_eos(v) == 2, "spm defaults");
    spm_fuzz(v, 0, "spm");
    sq_vocab_free(v);
    /* HF's Metaspace: no ▁ before a leading space; "first": none after a special */
    v = make_spm("metaspace-first");
    CHECK(v != NULL, "spm metaspace-first build: %s", sq_last_error());
    if (!v) return;
    n = sq_vocab_tokenize(v, "a<x>a</s>", 9, t, 64, 0, 1);
    int32_t want6[] = {P + 4, P + 7, P + 1, 2};
    CHECK(same(t, n, want6, 4), "metaspace-first: no prefix after a special (n=%d)", n);
    n = sq_vocab_tokenize(v, " a", 2, t, 64, 0, 1);
    int32_t want7[] = {P + 4};
    CHECK(same(t, n, want7, 1), "metaspace-first: a leading space is the prefix (n=%d)", n);
    spm_fuzz(v, 1, "spm metaspace-first");
    sq_vocab_free(v);
    v = make_spm("metaspace-always");
    CHECK(v != NULL, "spm metaspace-always build: %s", sq_last_error());
    if (!v) return;
    n = sq_vocab_tokenize(v, " a<x>a<x> a", 11, t, 64, 0, 1);
    int32_t want8[] = {P + 4, P + 7, P + 4, P + 7, P + 4};
    CHECK(same(t, n, want8, 5), "metaspace-always: a prefix after a special, none before a space (n=%d)", n);
    sq_vocab_free(v);
    CHECK(make_spm("sometimes") == NULL && strstr(sq_last_error(), "space_prefix"), "unknown space prefix: %s",
          sq_last_error());
}

/* ---- bad vocabularies ----------------------------------------------------------------------- */

static void test_errors(void) {
    sq_str tok[2] = {{"a", 1}, {"b", 1}};
    sq_vocab_desc d = {.model = "bert", .n_tokens = 2, .tokens = tok, .bos = -1, .eos = -1, .unk = -1, .eot = -1,
                       .eom = -1, .add_bos = -1, .add_eos = -1, .add_space_prefix = -1};
    CHECK(sq_vocab_new(&d) == NULL && strstr(sq_last_error(), "bert"), "unknown model: %s", sq_last_error());
    d.model = "gpt2";
    d.pre = "klingon";
    CHECK(sq_vocab_new(&d) == NULL && strstr(sq_last_error(), "klingon"), "unknown pre: %s", sq_last_error());
    d.pre = NULL;
    d.eos = 7;
    CHECK(sq_vocab_new(&d) == NULL && sq_last_status() == SQ_ERR_FORMAT, "eos out of range");
    d.eos = -1;
    int32_t ty[2] = {1, 42};
    d.types = ty;
    CHECK(sq_vocab_new(&d) == NULL, "bad token type");
    d.types = NULL;
    d.n_tokens = 0;
    CHECK(sq_vocab_new(&d) == NULL, "empty vocabulary");
    d.n_tokens = 2;
    sq_vocab *v = sq_vocab_new(&d); /* no merges, no bytes: letters still map to tokens */
    int32_t t[4];
    CHECK(v && sq_vocab_tokenize(v, "ab", 2, t, 4, 0, 0) == 2 && t[0] == 0 && t[1] == 1, "tiny vocabulary");
    CHECK(v && sq_vocab_tokenize(v, "az", 2, t, 4, 0, 0) == 1, "a byte the vocabulary lacks is dropped");
    sq_vocab_free(v);
    CHECK(sq_vocab_load("/nonexistent/file.gguf") == NULL && sq_last_status() == SQ_ERR_IO, "missing file");
    sq_vocab_free(NULL);
}

int main(void) {
    test_unicode();
    test_pretokenizers();
    test_bpe();
    test_spm();
    test_errors();
    return test_finish("test_tokenizer");
}
