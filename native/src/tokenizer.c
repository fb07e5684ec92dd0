/* tokenizer.c — byte-level BPE and SentencePiece tokenizers from GGUF metadata (see tokenizer.h).
 *
 * Layout: vocabulary construction (hash tables for text -> id and (left, right) -> merge), the
 * BPE / SentencePiece merge loop (one binary heap serves both: BPE ranks become negative scores),
 * the special-token splitter, then the public sq_vocab_* API. The pre-tokenizer regexes are in
 * pretokenize.c.
 * Only sq_vocab_tokenize allocates at run time: one growing workspace per call.
 */
#include "tokenizer.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "unicode.h"

/* ------------------------------------------------------------------------------------------ */
/* data structures */

typedef struct {
    uint64_t key;   /* (left id << 32) | right id; UINT64_MAX = empty slot */
    int32_t rank;
    int32_t result;
} merge_slot;

struct sq_vocab {
    sq_vocab_kind kind;
    sq_pre_kind pre;
    int32_t n;
    /* text: what text matches (BPE: the GPT-2 spelling decoded to bytes; SPM: the piece with ▁)
     * piece: what the token prints (BPE: same bytes; SPM: ▁ -> ' ', <0xNN> -> that byte) */
    char *text_arena, *piece_arena;
    uint32_t *text_off, *text_len, *piece_off, *piece_len;
    float *scores;
    uint8_t *types;
    uint8_t *eog;
    uint8_t *strip;        /* per token: 1 lstrip, 2 rstrip (HF added tokens); NULL when none */
    int32_t *lookup;       /* open addressing: token ids, -1 empty; size lookup_mask + 1 */
    uint32_t lookup_mask;
    merge_slot *merges;    /* BPE only */
    uint32_t merge_mask;
    int32_t byte_tok[256]; /* token of each single byte (BPE: its GPT-2 char; SPM: <0xNN>), -1 none */
    /* tokens matched whole in raw text: control (when parse_special) and user-defined (always);
     * ids sorted by first byte, then longest first: leftmost-longest like Hugging Face */
    int32_t *special;
    int32_t n_special;
    int32_t special_first[257]; /* special[special_first[b] .. special_first[b+1]) start with byte b */
    int32_t bos, eos, unk, eot, eom;
    int add_bos, add_eos, add_space_prefix, ignore_merges;
    /* SPM dummy prefix (when add_space_prefix): prefix_every: before every text segment, not only
     * the first; prefix_skip_space: none before a segment that starts with a space (HF Metaspace) */
    int prefix_every, prefix_skip_space;
    int nfc;               /* normalize each segment to NFC first */
};

static uint64_t hash_bytes(const void *p, size_t n) {
    /* FNV-1a, then a final mix so that the low bits (the table index) depend on every byte */
    const uint8_t *s = (const uint8_t *)p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static uint32_t table_size_for(int64_t n) {
    uint32_t size = 16;
    while ((int64_t)size < 2 * n) size <<= 1;
    return size;
}

/* id of a token whose text is s[0..n), or -1 */
static int32_t lookup_text(const sq_vocab *v, const char *s, size_t n) {
    uint32_t i = (uint32_t)hash_bytes(s, n) & v->lookup_mask;
    for (;;) {
        int32_t id = v->lookup[i];
        if (id < 0) return -1;
        if (v->text_len[id] == n && memcmp(v->text_arena + v->text_off[id], s, n) == 0) return id;
        i = (i + 1) & v->lookup_mask;
    }
}

static const merge_slot *lookup_merge(const sq_vocab *v, int32_t left, int32_t right) {
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    uint32_t i = (uint32_t)hash_u64(key) & v->merge_mask;
    for (;;) {
        const merge_slot *s = &v->merges[i];
        if (s->key == key) return s;
        if (s->key == UINT64_MAX) return NULL;
        i = (i + 1) & v->merge_mask;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* construction */

/* GPT-2's byte <-> printable code point map: printable Latin-1 bytes stand for themselves, the
 * other 68 bytes are spelled U+0100.. in byte order. */
static void gpt2_byte_map(uint32_t byte_to_cp[256]) {
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        byte_to_cp[b] = keep ? (uint32_t)b : (uint32_t)(256 + extra++);
    }
}

/* Decodes a GPT-2-spelled token into bytes (out has room for len bytes: every code point of the
 * alphabet takes >= 1 byte of UTF-8 and stands for exactly one byte). Returns the byte count, or
 * -1 when the text is not pure GPT-2 spelling (then the token means its raw UTF-8, like HF). */
static int64_t gpt2_decode(const int16_t cp_to_byte[324], const char *s, size_t len, char *out) {
    size_t i = 0;
    int64_t n = 0;
    while (i < len) {
        uint32_t cp;
        int l = sq_utf8_decode((const uint8_t *)s + i, len - i, &cp);
        if (cp == SQ_UTF8_INVALID || cp >= 324 || cp_to_byte[cp] < 0) return -1;
        out[n++] = (char)cp_to_byte[cp];
        i += (size_t)l;
    }
    return n;
}

/* "<0xNN>" -> NN, or -1 */
static int parse_byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static int str_is(const char *s, const char *lit) { return s && strcmp(s, lit) == 0; }

/* tokenizer.ggml.pre -> pre-tokenizer; *ignore_merges: the model's tokenizer.json says so
 * (Llama-3: a pre-token that is itself a token is taken whole, merges or not). */
static int parse_pre(const char *pre, sq_pre_kind *out, int *ignore_merges) {
    static const struct { const char *name; sq_pre_kind kind; int ignore_merges; } names[] = {
        {"default", SQ_PRE_GPT2, 0}, {"gpt2", SQ_PRE_GPT2, 0}, {"gpt-2", SQ_PRE_GPT2, 0}, {"mpt", SQ_PRE_GPT2, 0},
        {"olmo", SQ_PRE_GPT2, 0}, {"smollm", SQ_PRE_SMOLLM, 0}, {"starcoder", SQ_PRE_SMOLLM, 0},
        {"refact", SQ_PRE_SMOLLM, 0}, {"codeshell", SQ_PRE_SMOLLM, 0}, {"llama3", SQ_PRE_LLAMA3, 1},
        {"llama-v3", SQ_PRE_LLAMA3, 1}, {"llama-bpe", SQ_PRE_LLAMA3, 1}, {"dbrx", SQ_PRE_LLAMA3, 0},
        {"smaug-bpe", SQ_PRE_LLAMA3, 0}, {"falcon3", SQ_PRE_LLAMA3, 0}, {"qwen2", SQ_PRE_QWEN2, 0},
        {"deepseek-r1-qwen", SQ_PRE_QWEN2, 0}, {"stablelm2", SQ_PRE_QWEN2, 0},
    };
    *out = SQ_PRE_GPT2;
    *ignore_merges = 0;
    if (!pre) return 1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(pre, names[i].name) == 0) {
            *out = names[i].kind;
            *ignore_merges = names[i].ignore_merges;
            return 1;
        }
    return 0;
}

/* Token texts that end a turn in the chat formats we know (llama.cpp marks the same ones). */
static int is_eog_text(const char *s, size_t n) {
    static const char *const names[] = {"<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>",
                                        "<|end|>", "<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i]) == n && memcmp(names[i], s, n) == 0) return 1;
    return 0;
}

SQ_API void sq_vocab_free(sq_vocab *v) {
    if (!v) return;
    free(v->text_arena);
    free(v->piece_arena);
    free(v->text_off);
    free(v->text_len);
    free(v->piece_off);
    free(v->piece_len);
    free(v->scores);
    free(v->types);
    free(v->eog);
    free(v->strip);
    free(v->lookup);
    free(v->merges);
    free(v->special);
    free(v);
}

/* frees a half-built vocabulary; the error was set by the caller */
static sq_vocab *vocab_fail(sq_vocab *v) {
    sq_vocab_free(v);
    return NULL;
}

/* Token text and printed piece of every token, into two arenas. */
static int build_texts(sq_vocab *v, const sq_vocab_desc *d) {
    size_t total = 0;
    for (int32_t i = 0; i < d->n_tokens; i++) total += (size_t)d->tokens[i].len;
    v->text_arena = malloc(total + 1);
    v->piece_arena = malloc(total + 1);
    if (!v->text_arena || !v->piece_arena) return 0;
    uint32_t b2c[256];
    int16_t c2b[324];
    gpt2_byte_map(b2c);
    for (int i = 0; i < 324; i++) c2b[i] = -1;
    for (int b = 0; b < 256; b++) c2b[b2c[b]] = (int16_t)b;
    size_t to = 0, po = 0;
    for (int32_t i = 0; i < d->n_tokens; i++) {
        const char *s = d->tokens[i].ptr;
        size_t len = (size_t)d->tokens[i].len;
        int type = v->types[i];
        v->text_off[i] = (uint32_t)to;
        v->piece_off[i] = (uint32_t)po;
        int64_t n = -1;
        if (v->kind == SQ_VOCAB_BPE && (type == SQ_TOKTYPE_NORMAL || type == SQ_TOKTYPE_UNUSED || type == SQ_TOKTYPE_UNDEFINED))
            n = gpt2_decode(c2b, s, len, v->text_arena + to);
        if (n < 0) { /* raw UTF-8 text: added tokens, SPM pieces, misspelled BPE tokens */
            memcpy(v->text_arena + to, s, len);
            n = (int64_t)len;
        }
        v->text_len[i] = (uint32_t)n;
        /* the printed piece */
        const char *t = v->text_arena + to;
        size_t plen = 0;
        int byte = v->kind == SQ_VOCAB_SPM && type == SQ_TOKTYPE_BYTE ? parse_byte_token(s, len) : -1;
        if (byte >= 0) {
            v->piece_arena[po] = (char)byte;
            plen = 1;
        } else if (v->kind == SQ_VOCAB_SPM) {
            for (size_t k = 0; k < (size_t)n;) { /* ▁ (E2 96 81) -> ' ' */
                if (k + 3 <= (size_t)n && memcmp(t + k, "\xE2\x96\x81", 3) == 0) {
                    v->piece_arena[po + plen++] = ' ';
                    k += 3;
                } else {
                    v->piece_arena[po + plen++] = t[k++];
                }
            }
        } else {
            memcpy(v->piece_arena + po, t, (size_t)n);
            plen = (size_t)n;
        }
        v->piece_len[i] = (uint32_t)plen;
        to += (size_t)n;
        po += plen;
    }
    return 1;
}

static int build_lookup(sq_vocab *v) {
    uint32_t size = table_size_for(v->n);
    v->lookup = malloc(sizeof(int32_t) * size);
    if (!v->lookup) return 0;
    memset(v->lookup, 0xFF, sizeof(int32_t) * size);
    v->lookup_mask = size - 1;
    for (int32_t id = 0; id < v->n; id++) {
        const char *s = v->text_arena + v->text_off[id];
        size_t n = v->text_len[id];
        uint32_t i = (uint32_t)hash_bytes(s, n) & v->lookup_mask;
        for (;;) { /* a later duplicate replaces an earlier one (as a Python dict built in order) */
            int32_t other = v->lookup[i];
            if (other < 0) { v->lookup[i] = id; break; }
            if (v->text_len[other] == n && memcmp(v->text_arena + v->text_off[other], s, n) == 0) {
                v->lookup[i] = id;
                break;
            }
            i = (i + 1) & v->lookup_mask;
        }
    }
    return 1;
}

/* Merges "A B" in GPT-2 spelling -> (id(A), id(B)) -> (rank, id(AB)). Merges whose parts or result
 * are not tokens can never apply and are skipped (HF refuses such files; llama.cpp skips them). */
static int build_merges(sq_vocab *v, const sq_vocab_desc *d) {
    uint32_t size = table_size_for(d->n_merges);
    v->merges = malloc(sizeof(merge_slot) * size);
    if (!v->merges) return 0;
    for (uint32_t i = 0; i < size; i++) v->merges[i].key = UINT64_MAX;
    v->merge_mask = size - 1;
    uint32_t b2c[256];
    int16_t c2b[324];
    gpt2_byte_map(b2c);
    for (int i = 0; i < 324; i++) c2b[i] = -1;
    for (int b = 0; b < 256; b++) c2b[b2c[b]] = (int16_t)b;
    size_t cap = 256;
    char *buf = malloc(cap);
    if (!buf) return 0;
    for (int32_t r = 0; r < d->n_merges; r++) {
        const char *s = d->merges[r].ptr;
        size_t len = (size_t)d->merges[r].len;
        const char *sp = memchr(s, ' ', len);
        if (!sp || sp == s || sp == s + len - 1) continue;
        if (len > cap) {
            char *nb = realloc(buf, len);
            if (!nb) { free(buf); return 0; }
            buf = nb;
            cap = len;
        }
        size_t la = (size_t)(sp - s), lb = len - la - 1;
        int64_t na = gpt2_decode(c2b, s, la, buf);
        if (na < 0) { memcpy(buf, s, la); na = (int64_t)la; }
        int64_t nb = gpt2_decode(c2b, sp + 1, lb, buf + na);
        if (nb < 0) { memcpy(buf + na, sp + 1, lb); nb = (int64_t)lb; }
        int32_t a = lookup_text(v, buf, (size_t)na), b = lookup_text(v, buf + na, (size_t)nb);
        int32_t ab = lookup_text(v, buf, (size_t)(na + nb));
        if (a < 0 || b < 0 || ab < 0) continue;
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        uint32_t i = (uint32_t)hash_u64(key) & v->merge_mask;
        while (v->merges[i].key != UINT64_MAX && v->merges[i].key != key) i = (i + 1) & v->merge_mask;
        if (v->merges[i].key == key) continue; /* a repeated pair keeps its first (best) rank */
        v->merges[i].key = key;
        v->merges[i].rank = r;
        v->merges[i].result = ab;
    }
    free(buf);
    return 1;
}

typedef struct {
    uint32_t first, len; /* first byte of the text, its length */
    int32_t id;
} special_key;

static int cmp_special(const void *pa, const void *pb) {
    const special_key *a = pa, *b = pb;
    if (a->first != b->first) return a->first < b->first ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1; /* longest first */
    return (a->id > b->id) - (a->id < b->id);
}

static int build_specials(sq_vocab *v) {
    special_key *keys = malloc(sizeof(special_key) * (size_t)v->n);
    v->special = malloc(sizeof(int32_t) * (size_t)v->n);
    if (!keys || !v->special) {
        free(keys);
        return 0;
    }
    int32_t n = 0;
    for (int32_t i = 0; i < v->n; i++) {
        int t = v->types[i];
        if ((t == SQ_TOKTYPE_CONTROL || t == SQ_TOKTYPE_USER_DEFINED || t == SQ_TOKTYPE_UNKNOWN) && v->text_len[i] > 0)
            keys[n++] = (special_key){(uint8_t)v->text_arena[v->text_off[i]], v->text_len[i], i};
    }
    qsort(keys, (size_t)n, sizeof *keys, cmp_special);
    for (int32_t k = 0; k < n; k++) v->special[k] = keys[k].id;
    v->n_special = n;
    int32_t k = 0;
    for (uint32_t b = 0; b <= 256; b++) {
        while (k < n && keys[k].first < b) k++;
        v->special_first[b] = k;
    }
    free(keys);
    return 1;
}

static void build_bytes_and_eog(sq_vocab *v) {
    for (int b = 0; b < 256; b++) v->byte_tok[b] = -1;
    for (int32_t i = 0; i < v->n; i++) {
        const char *t = v->text_arena + v->text_off[i];
        size_t n = v->text_len[i];
        if (v->kind == SQ_VOCAB_SPM) {
            int b = v->types[i] == SQ_TOKTYPE_BYTE ? parse_byte_token(t, n) : -1;
            if (b >= 0 && v->byte_tok[b] < 0) v->byte_tok[b] = i;
        }
        if (v->types[i] == SQ_TOKTYPE_CONTROL && is_eog_text(t, n)) v->eog[i] = 1;
    }
    if (v->kind == SQ_VOCAB_BPE)
        for (int b = 0; b < 256; b++) {
            char c = (char)b;
            v->byte_tok[b] = lookup_text(v, &c, 1);
        }
    int32_t ends[] = {v->eos, v->eot, v->eom};
    for (int i = 0; i < 3; i++)
        if (ends[i] >= 0) v->eog[ends[i]] = 1;
}

static int valid_id(const sq_vocab_desc *d, int32_t id) { return id >= -1 && id < d->n_tokens; }

#define FAIL(...)                       \
    do {                                \
        sq_set_error(__VA_ARGS__);      \
        return vocab_fail(v);           \
    } while (0)

sq_vocab *sq_vocab_new(const sq_vocab_desc *d) {
    sq_vocab *v = NULL;
    if (!d || !d->model || d->n_tokens <= 0 || !d->tokens)
        FAIL(SQ_ERR_FORMAT, "tokenizer: no vocabulary (tokenizer.ggml.tokens)");
    v = calloc(1, sizeof *v);
    if (!v) FAIL(SQ_ERR_NOMEM, "tokenizer: out of memory");
    if (str_is(d->model, "gpt2")) {
        v->kind = SQ_VOCAB_BPE;
        if (!parse_pre(d->pre, &v->pre, &v->ignore_merges))
            FAIL(SQ_ERR_UNSUPPORTED, "tokenizer: unsupported pre-tokenizer '%s' (tokenizer.ggml.pre); "
                 "supported: gpt2, smollm, starcoder, llama-bpe, qwen2", d->pre);
    } else if (str_is(d->model, "llama")) {
        v->kind = SQ_VOCAB_SPM;
    } else {
        FAIL(SQ_ERR_UNSUPPORTED, "tokenizer: unsupported tokenizer model '%s' (tokenizer.ggml.model); "
             "supported: gpt2 (byte-level BPE), llama (SentencePiece)", d->model);
    }
    if (v->kind == SQ_VOCAB_BPE && (d->n_merges < 0 || (d->n_merges > 0 && !d->merges)))
        FAIL(SQ_ERR_FORMAT, "tokenizer: bad merges array (%lld entries)", (long long)d->n_merges);
    int32_t ids[] = {d->bos, d->eos, d->unk, d->eot, d->eom};
    for (int i = 0; i < 5; i++)
        if (!valid_id(d, ids[i]))
            FAIL(SQ_ERR_FORMAT, "tokenizer: special token id %lld out of range", (long long)ids[i]);
    v->n = d->n_tokens;
    v->bos = d->bos; v->eos = d->eos; v->unk = d->unk; v->eot = d->eot; v->eom = d->eom;
    int spm = v->kind == SQ_VOCAB_SPM;
    v->add_bos = d->add_bos >= 0 ? d->add_bos : spm;
    v->add_eos = d->add_eos >= 0 ? d->add_eos : 0;
    v->add_space_prefix = d->add_space_prefix >= 0 ? d->add_space_prefix : spm;
    v->prefix_every = 1; /* sentencepiece / llama.cpp */
    if (d->space_prefix && !str_is(d->space_prefix, "sentencepiece")) {
        if (str_is(d->space_prefix, "metaspace-first")) v->prefix_every = 0;
        else if (!str_is(d->space_prefix, "metaspace-always"))
            FAIL(SQ_ERR_UNSUPPORTED, "tokenizer: unsupported space prefix '%s' (specquant.tokenizer.space_prefix); "
                 "supported: sentencepiece, metaspace-first, metaspace-always", d->space_prefix);
        v->prefix_skip_space = 1;
    }
    if (d->normalizer && !str_is(d->normalizer, "none")) {
        if (!str_is(d->normalizer, "nfc"))
            FAIL(SQ_ERR_UNSUPPORTED, "tokenizer: unsupported normalizer '%s' (specquant.tokenizer.normalizer); "
                 "supported: none, nfc", d->normalizer);
        v->nfc = 1;
    }
    size_t n = (size_t)v->n;
    v->text_off = malloc(n * sizeof(uint32_t));
    v->text_len = malloc(n * sizeof(uint32_t));
    v->piece_off = malloc(n * sizeof(uint32_t));
    v->piece_len = malloc(n * sizeof(uint32_t));
    v->scores = malloc(n * sizeof(float));
    v->types = malloc(n);
    v->eog = calloc(n, 1);
    if (!v->text_off || !v->text_len || !v->piece_off || !v->piece_len || !v->scores || !v->types || !v->eog)
        FAIL(SQ_ERR_NOMEM, "tokenizer: out of memory (%lld tokens)", (long long)n);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        v->scores[i] = d->scores ? d->scores[i] : 0.0f;
        int32_t t = d->types ? d->types[i] : SQ_TOKTYPE_NORMAL;
        if (t < 0 || t > SQ_TOKTYPE_BYTE)
            FAIL(SQ_ERR_FORMAT, "tokenizer: token type %lld out of range", (long long)t);
        v->types[i] = (uint8_t)t;
        if (!d->tokens[i].ptr && d->tokens[i].len)
            FAIL(SQ_ERR_FORMAT, "tokenizer: token %lld has no text", (long long)i);
        total += (size_t)d->tokens[i].len;
    }
    if (total >= UINT32_MAX)
        FAIL(SQ_ERR_FORMAT, "tokenizer: vocabulary text too large (%lld bytes)", (long long)total);
    if (!build_texts(v, d) || !build_lookup(v) || !build_specials(v))
        FAIL(SQ_ERR_NOMEM, "tokenizer: out of memory (%lld tokens)", (long long)n);
    if (v->kind == SQ_VOCAB_BPE && !build_merges(v, d))
        FAIL(SQ_ERR_NOMEM, "tokenizer: out of memory (%lld merges)", (long long)d->n_merges);
    build_bytes_and_eog(v);
    if ((d->n_lstrip > 0 && !d->lstrip) || (d->n_rstrip > 0 && !d->rstrip) || d->n_lstrip < 0 || d->n_rstrip < 0)
        FAIL(SQ_ERR_FORMAT, "tokenizer: bad lstrip / rstrip id arrays");
    if (d->n_lstrip > 0 || d->n_rstrip > 0) {
        v->strip = calloc(n, 1);
        if (!v->strip) FAIL(SQ_ERR_NOMEM, "tokenizer: out of memory");
        for (int k = 0; k < 2; k++) {
            const int32_t *ids = k ? d->rstrip : d->lstrip;
            for (int32_t j = 0, m = k ? d->n_rstrip : d->n_lstrip; j < m; j++) {
                if (ids[j] < 0 || ids[j] >= v->n)
                    FAIL(SQ_ERR_FORMAT, "tokenizer: specquant.tokenizer.%s: token id %lld out of range",
                         k ? "rstrip" : "lstrip", (long long)ids[j]);
                v->strip[ids[j]] |= (uint8_t)(1 << k);
            }
        }
    }
    return v;
}

/* ------------------------------------------------------------------------------------------ */
/* from a GGUF file */

static int32_t gguf_id(const sq_gguf *g, const char *key, int *bad) {
    uint32_t id;
    int r = sq_gguf_get_u32(g, key, &id);
    if (r < 0) *bad = 1;
    return r == 1 && id <= INT32_MAX ? (int32_t)id : -1;
}

static int gguf_flag(const sq_gguf *g, const char *key, int *bad) {
    int b;
    int r = sq_gguf_get_bool(g, key, &b);
    if (r < 0) *bad = 1;
    return r == 1 ? (b != 0) : -1;
}

sq_vocab *sq_vocab_from_gguf(const sq_gguf *g) {
    sq_str model_s, pre_s;
    if (sq_gguf_get_str(g, "tokenizer.ggml.model", &model_s) != 1) {
        sq_set_error(SQ_ERR_FORMAT, "tokenizer: the file has no tokenizer (tokenizer.ggml.model missing)");
        return NULL;
    }
    const sq_gguf_kv *tok = sq_gguf_find(g, "tokenizer.ggml.tokens");
    if (!tok || tok->type != SQ_GGUF_ARRAY || tok->arr_type != SQ_GGUF_STRING || tok->n == 0 || tok->n > INT32_MAX) {
        sq_set_error(SQ_ERR_FORMAT, "tokenizer: tokenizer.ggml.tokens missing or not a string array");
        return NULL;
    }
    int32_t n = (int32_t)tok->n;
    const sq_gguf_kv *sc = sq_gguf_find(g, "tokenizer.ggml.scores");
    const sq_gguf_kv *ty = sq_gguf_find(g, "tokenizer.ggml.token_type");
    const sq_gguf_kv *mg = sq_gguf_find(g, "tokenizer.ggml.merges");
    if ((sc && (sc->type != SQ_GGUF_ARRAY || sc->n != tok->n || sc->arr_type == SQ_GGUF_STRING || sc->arr_type == SQ_GGUF_ARRAY)) ||
        (ty && (ty->type != SQ_GGUF_ARRAY || ty->n != tok->n || ty->arr_type == SQ_GGUF_STRING || ty->arr_type == SQ_GGUF_ARRAY ||
                ty->arr_type == SQ_GGUF_F32 || ty->arr_type == SQ_GGUF_F64)) ||
        (mg && (mg->type != SQ_GGUF_ARRAY || mg->arr_type != SQ_GGUF_STRING || mg->n > INT32_MAX))) {
        sq_set_error(SQ_ERR_FORMAT, "tokenizer: tokenizer.ggml.scores / token_type / merges have the wrong type or length");
        return NULL;
    }
    char model[32], pre[64], norm[32], prefix[32];
    snprintf(model, sizeof model, "%.*s", (int)(model_s.len < 31 ? model_s.len : 31), model_s.ptr);
    int have_pre = sq_gguf_get_str(g, "tokenizer.ggml.pre", &pre_s) == 1;
    if (have_pre) snprintf(pre, sizeof pre, "%.*s", (int)(pre_s.len < 63 ? pre_s.len : 63), pre_s.ptr);
    sq_str norm_s;
    int r_norm = sq_gguf_get_str(g, "specquant.tokenizer.normalizer", &norm_s);
    if (r_norm < 0) {
        sq_set_error(SQ_ERR_FORMAT, "tokenizer: specquant.tokenizer.normalizer is not a string");
        return NULL;
    }
    if (r_norm == 1) snprintf(norm, sizeof norm, "%.*s", (int)(norm_s.len < 31 ? norm_s.len : 31), norm_s.ptr);
    sq_str prefix_s;
    int r_prefix = sq_gguf_get_str(g, "specquant.tokenizer.space_prefix", &prefix_s);
    if (r_prefix < 0) {
        sq_set_error(SQ_ERR_FORMAT, "tokenizer: specquant.tokenizer.space_prefix is not a string");
        return NULL;
    }
    if (r_prefix == 1)
        snprintf(prefix, sizeof prefix, "%.*s", (int)(prefix_s.len < 31 ? prefix_s.len : 31), prefix_s.ptr);
    const sq_gguf_kv *ls = sq_gguf_find(g, "specquant.tokenizer.lstrip");
    const sq_gguf_kv *rs = sq_gguf_find(g, "specquant.tokenizer.rstrip");
    for (int k = 0; k < 2; k++) {
        const sq_gguf_kv *a = k ? rs : ls;
        if (a && (a->type != SQ_GGUF_ARRAY || a->arr_type == SQ_GGUF_STRING || a->arr_type == SQ_GGUF_ARRAY ||
                  a->arr_type == SQ_GGUF_F32 || a->arr_type == SQ_GGUF_F64 || a->n > tok->n)) {
            sq_set_error(SQ_ERR_FORMAT, "tokenizer: specquant.tokenizer.%s is not an array of token ids",
                         k ? "rstrip" : "lstrip");
            return NULL;
        }
    }
    int32_t n_merges = mg ? (int32_t)mg->n : 0;
    int32_t n_ls = ls ? (int32_t)ls->n : 0, n_rs = rs ? (int32_t)rs->n : 0;
    int32_t *strip_ids = malloc(sizeof(int32_t) * (size_t)(n_ls + n_rs + 1));
    sq_str *tokens = malloc(sizeof(sq_str) * (size_t)n);
    sq_str *merges = malloc(sizeof(sq_str) * (size_t)(n_merges > 0 ? n_merges : 1));
    float *scores = sc ? malloc(sizeof(float) * (size_t)n) : NULL;
    int32_t *types = ty ? malloc(sizeof(int32_t) * (size_t)n) : NULL;
    sq_vocab *v = NULL;
    if (!tokens || !merges || (sc && !scores) || (ty && !types) || !strip_ids) {
        sq_set_error(SQ_ERR_NOMEM, "tokenizer: out of memory");
        goto done;
    }
    for (int32_t i = 0; i < n; i++) {
        tokens[i] = sq_gguf_arr_str(tok, (uint64_t)i);
        if (scores) scores[i] = (float)sq_gguf_arr_f64(sc, (uint64_t)i);
        if (types) {
            int64_t t = sq_gguf_arr_i64(ty, (uint64_t)i);
            types[i] = t < 0 || t > 255 ? -1 : (int32_t)t;
        }
    }
    for (int32_t i = 0; i < n_merges; i++) merges[i] = sq_gguf_arr_str(mg, (uint64_t)i);
    for (int32_t i = 0; i < n_ls + n_rs; i++) {
        int64_t id = i < n_ls ? sq_gguf_arr_i64(ls, (uint64_t)i) : sq_gguf_arr_i64(rs, (uint64_t)(i - n_ls));
        strip_ids[i] = id < 0 || id > INT32_MAX ? -1 : (int32_t)id; /* -1: refused by sq_vocab_new */
    }
    int bad = 0;
    sq_vocab_desc d = {
        .model = model, .pre = have_pre ? pre : NULL, .n_tokens = n, .tokens = tokens, .scores = scores,
        .types = types, .n_merges = n_merges, .merges = merges,
        .bos = gguf_id(g, "tokenizer.ggml.bos_token_id", &bad),
        .eos = gguf_id(g, "tokenizer.ggml.eos_token_id", &bad),
        .unk = gguf_id(g, "tokenizer.ggml.unknown_token_id", &bad),
        .eot = gguf_id(g, "tokenizer.ggml.eot_token_id", &bad),
        .eom = gguf_id(g, "tokenizer.ggml.eom_token_id", &bad),
        .add_bos = gguf_flag(g, "tokenizer.ggml.add_bos_token", &bad),
        .add_eos = gguf_flag(g, "tokenizer.ggml.add_eos_token", &bad),
        .add_space_prefix = gguf_flag(g, "tokenizer.ggml.add_space_prefix", &bad),
        .normalizer = r_norm == 1 ? norm : NULL,
        .space_prefix = r_prefix == 1 ? prefix : NULL,
        .lstrip = strip_ids, .n_lstrip = n_ls, .rstrip = strip_ids + n_ls, .n_rstrip = n_rs,
    };
    if (bad) {
        sq_set_error(SQ_ERR_FORMAT, "tokenizer: a tokenizer.ggml.* id or flag has the wrong type: %s", sq_last_error());
        goto done;
    }
    v = sq_vocab_new(&d);
done:
    free(strip_ids);
    free(tokens);
    free(merges);
    free(scores);
    free(types);
    return v;
}

SQ_API sq_vocab *sq_vocab_load(const char *path) {
    if (!path) {
        sq_set_error(SQ_ERR_ARG, "sq_vocab_load: path is NULL");
        return NULL;
    }
    sq_gguf g;
    if (sq_gguf_open(&g, path) != SQ_OK) return NULL;
    sq_vocab *v = sq_vocab_from_gguf(&g);
    sq_gguf_close(&g);
    return v;
}

sq_vocab_kind sq_vocab_kind_of(const sq_vocab *v) { return v->kind; }
sq_pre_kind sq_vocab_pre_of(const sq_vocab *v) { return v->pre; }

/* ------------------------------------------------------------------------------------------ */
/* the merge loop (BPE by rank, SentencePiece by score), over a doubly linked list of symbols */

typedef struct {
    int32_t id;           /* BPE: token id; SPM: unused */
    uint32_t start, len;  /* bytes of the word */
    int32_t prev, next;
} symbol;

typedef struct {
    float score;          /* higher first (BPE: -rank) */
    int32_t left, right;  /* symbol indices */
    uint32_t llen, rlen;  /* their lengths when queued: a changed length means a stale entry */
    int32_t result;       /* BPE: merged token */
} candidate;

typedef struct {
    symbol *sym;
    candidate *heap;
    size_t cap_sym, cap_heap, n_heap;
    char *norm;           /* SPM: the text with ▁ for spaces */
    size_t cap_norm;
    uint8_t *nfc;         /* the segment in NFC (vocabularies with the NFC normalizer) */
    uint32_t *nfc_cp;     /* sq_nfc's code points */
    size_t cap_nfc;
    int32_t *out;         /* caller's buffer */
    int32_t max_out;
    int64_t n_out;
} workspace;

static int ws_reserve(workspace *w, size_t n_sym) {
    if (n_sym > w->cap_sym) {
        size_t cap = w->cap_sym ? w->cap_sym : 64;
        while (cap < n_sym) cap *= 2;
        symbol *s = realloc(w->sym, cap * sizeof *s);
        if (!s) return 0;
        w->sym = s;
        w->cap_sym = cap;
    }
    size_t need_heap = 3 * n_sym + 1; /* n-1 initial pairs + at most 2 new ones per merge */
    if (need_heap > w->cap_heap) {
        size_t cap = w->cap_heap ? w->cap_heap : 64;
        while (cap < need_heap) cap *= 2;
        candidate *h = realloc(w->heap, cap * sizeof *h);
        if (!h) return 0;
        w->heap = h;
        w->cap_heap = cap;
    }
    return 1;
}

static void emit_token(workspace *w, int32_t id) {
    if (w->n_out < w->max_out) w->out[w->n_out] = id;
    w->n_out++;
}

static inline int cand_before(const candidate *a, const candidate *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(workspace *w, candidate c) {
    size_t i = w->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(&c, &w->heap[p])) break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = c;
}

static candidate heap_pop(workspace *w) {
    candidate top = w->heap[0], last = w->heap[--w->n_heap];
    size_t i = 0, n = w->n_heap;
    for (;;) {
        size_t l = 2 * i + 1, best = i;
        const candidate *bc = &last;
        if (l < n && cand_before(&w->heap[l], bc)) { best = l; bc = &w->heap[l]; }
        if (l + 1 < n && cand_before(&w->heap[l + 1], bc)) best = l + 1;
        if (best == i) break;
        w->heap[i] = w->heap[best];
        i = best;
    }
    if (n) w->heap[i] = last;
    return top;
}

/* Queues the pair (l, r) if it can merge. text: the word's bytes (SPM). */
static void try_pair(const sq_vocab *v, workspace *w, const char *text, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const symbol *a = &w->sym[l], *b = &w->sym[r];
    candidate c = {0, l, r, a->len, b->len, -1};
    if (v->kind == SQ_VOCAB_BPE) {
        const merge_slot *m = lookup_merge(v, a->id, b->id);
        if (!m) return;
        c.score = -(float)m->rank;
        c.result = m->result;
    } else {
        int32_t id = lookup_text(v, text + a->start, a->len + b->len);
        if (id < 0) return;
        int t = v->types[id];
        if (t != SQ_TOKTYPE_NORMAL && t != SQ_TOKTYPE_USER_DEFINED && t != SQ_TOKTYPE_UNDEFINED) return;
        c.score = v->scores[id];
        c.result = id;
    }
    heap_push(w, c);
}

static void merge_loop(const sq_vocab *v, workspace *w, const char *text, int32_t n_sym) {
    w->n_heap = 0;
    for (int32_t i = 0; i + 1 < n_sym; i++) try_pair(v, w, text, i, i + 1);
    while (w->n_heap) {
        candidate c = heap_pop(w);
        symbol *a = &w->sym[c.left], *b = &w->sym[c.right];
        if (a->len != c.llen || b->len != c.rlen || a->next != c.right) continue; /* stale */
        a->len += b->len;
        a->id = c.result;
        a->next = b->next;
        if (b->next >= 0) w->sym[b->next].prev = c.left;
        b->len = 0; /* dead */
        try_pair(v, w, text, a->prev, c.left);
        try_pair(v, w, text, c.left, a->next);
    }
}


/* one pre-token of a byte-level BPE vocabulary */
static int bpe_word(const sq_vocab *v, workspace *w, const char *s, size_t n) {
    if (v->ignore_merges) {
        int32_t id = lookup_text(v, s, n);
        if (id >= 0) { emit_token(w, id); return 1; }
    }
    if (!ws_reserve(w, n)) return 0;
    int32_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = v->byte_tok[(uint8_t)s[i]];
        if (id < 0) continue; /* a byte the vocabulary lacks is dropped, as HF's BPE does */
        w->sym[k] = (symbol){id, (uint32_t)i, 1, k - 1, -1};
        if (k > 0) w->sym[k - 1].next = k;
        k++;
    }
    if (k == 0) return 1;
    merge_loop(v, w, s, k);
    for (int32_t i = 0; i >= 0; i = w->sym[i].next) emit_token(w, w->sym[i].id); /* symbol 0 stays the head */
    return 1;
}

/* one segment of text (between special tokens) for SentencePiece */
static int spm_segment(const sq_vocab *v, workspace *w, const char *s, size_t n, int prefix) {
    /* normalise: dummy prefix, ' ' -> ▁ */
    size_t need = 3 * n + 3;
    if (need > w->cap_norm) {
        char *p = realloc(w->norm, need);
        if (!p) return 0;
        w->norm = p;
        w->cap_norm = need;
    }
    size_t m = 0;
    if (prefix && !(v->prefix_skip_space && n > 0 && s[0] == ' ')) { /* Metaspace: no second ▁ there */
        memcpy(w->norm, "\xE2\x96\x81", 3);
        m = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') { memcpy(w->norm + m, "\xE2\x96\x81", 3); m += 3; }
        else w->norm[m++] = s[i];
    }
    const char *t = w->norm;
    if (!ws_reserve(w, m)) return 0;
    int32_t k = 0;
    for (size_t i = 0; i < m;) {
        uint32_t cp;
        int len = sq_utf8_decode((const uint8_t *)t + i, m - i, &cp);
        w->sym[k] = (symbol){-1, (uint32_t)i, (uint32_t)len, k - 1, -1};
        if (k > 0) w->sym[k - 1].next = k;
        k++;
        i += (size_t)len;
    }
    if (k == 0) return 1;
    merge_loop(v, w, t, k);
    int prev_unk = 0;
    for (int32_t i = 0; i >= 0; i = w->sym[i].next) {
        const symbol *y = &w->sym[i];
        int32_t id = lookup_text(v, t + y->start, y->len);
        if (id >= 0) {
            int ty = v->types[id];
            if (ty == SQ_TOKTYPE_NORMAL || ty == SQ_TOKTYPE_USER_DEFINED || ty == SQ_TOKTYPE_UNDEFINED) {
                emit_token(w, id);
                prev_unk = 0;
                continue;
            }
        }
        for (uint32_t b = 0; b < y->len; b++) { /* byte fallback; consecutive unknowns fuse (HF fuse_unk) */
            int32_t bt = v->byte_tok[(uint8_t)t[y->start + b]];
            if (bt >= 0) { emit_token(w, bt); prev_unk = 0; }
            else if (v->unk >= 0 && !prev_unk) { emit_token(w, v->unk); prev_unk = 1; }
        }
    }
    return 1;
}

typedef struct {
    const sq_vocab *v;
    workspace *w;
    const char *text;
    int ok;
} pre_ctx;

static void on_pretoken(void *ud, size_t off, size_t n) {
    pre_ctx *c = (pre_ctx *)ud;
    if (c->ok && !bpe_word(c->v, c->w, c->text + off, n)) c->ok = 0;
}

static int encode_segment(const sq_vocab *v, workspace *w, const char *s, size_t n, int first) {
    if (v->nfc && sq_nfc_maybe((const uint8_t *)s, n)) {
        if (n > (SIZE_MAX - 4) / 8) return 0;
        if (n > w->cap_nfc) {
            uint8_t *o = realloc(w->nfc, 3 * n + 4);
            if (!o) return 0;
            w->nfc = o;
            uint32_t *c = realloc(w->nfc_cp, (2 * n + 4) * sizeof(uint32_t));
            if (!c) return 0;
            w->nfc_cp = c;
            w->cap_nfc = n;
        }
        n = sq_nfc((const uint8_t *)s, n, w->nfc_cp, w->nfc);
        s = (const char *)w->nfc;
    }
    if (v->kind == SQ_VOCAB_SPM) return spm_segment(v, w, s, n, v->add_space_prefix && (first || v->prefix_every));
    if (n == 0) return 1;
    pre_ctx c = {v, w, s, 1};
    sq_pretokenize(v->pre, s, n, on_pretoken, &c);
    return c.ok;
}

/* The length of the Unicode White_Space character (Rust's char::is_whitespace, what HF's lstrip /
 * rstrip strip) that starts at s / ends at s + n, or 0. */
static size_t ws_len(const uint8_t *p, size_t n) {
    if (n == 1) return (p[0] >= 9 && p[0] <= 13) || p[0] == ' ';
    if (n == 2) return p[0] == 0xC2 && (p[1] == 0x85 || p[1] == 0xA0) ? 2 : 0;
    if (p[0] == 0xE1) return p[1] == 0x9A && p[2] == 0x80 ? 3 : 0;                   /* U+1680 */
    if (p[0] == 0xE3) return p[1] == 0x80 && p[2] == 0x80 ? 3 : 0;                   /* U+3000 */
    if (p[0] != 0xE2) return 0;
    if (p[1] == 0x80) return p[2] <= 0x8A || p[2] == 0xA8 || p[2] == 0xA9 || p[2] == 0xAF ? 3 : 0;
    return p[1] == 0x81 && p[2] == 0x9F ? 3 : 0;                                     /* U+205F */
}

static size_t ws_at(const char *s, size_t n) {
    const uint8_t *p = (const uint8_t *)s;
    size_t l = p[0] < 0x80 ? 1 : p[0] >= 0xC0 && p[0] < 0xE0 ? 2 : p[0] >= 0xE0 && p[0] < 0xF0 ? 3 : 0;
    return l && l <= n ? ws_len(p, l) : 0;
}

static size_t ws_before(const char *s, size_t n) {
    const uint8_t *p = (const uint8_t *)s;
    if (n >= 1 && p[n - 1] < 0x80) return ws_len(p + n - 1, 1);
    if (n >= 2 && ws_len(p + n - 2, 2)) return 2;
    if (n >= 3 && (p[n - 3] & 0xF0) == 0xE0 && ws_len(p + n - 3, 3)) return 3;
    return 0;
}

/* the special token that starts at s (longest), or -1 */
static int32_t match_special(const sq_vocab *v, const char *s, size_t n, int parse_special, size_t *len) {
    uint8_t b = (uint8_t)s[0];
    for (int32_t k = v->special_first[b]; k < v->special_first[b + 1]; k++) {
        int32_t id = v->special[k];
        if (!parse_special && v->types[id] != SQ_TOKTYPE_USER_DEFINED) continue;
        size_t l = v->text_len[id];
        if (l <= n && memcmp(v->text_arena + v->text_off[id], s, l) == 0) {
            *len = l;
            return id;
        }
    }
    return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* public API */

SQ_API int32_t sq_vocab_tokenize(const sq_vocab *v, const char *text, int32_t text_len, int32_t *tokens,
                                 int32_t max_tokens, int32_t add_bos, int32_t parse_special) {
    if (!v || (!text && text_len > 0) || text_len < 0 || max_tokens < 0 || (!tokens && max_tokens > 0)) {
        sq_set_error(SQ_ERR_ARG, "sq_tokenize: bad arguments (text_len %d, max_tokens %d)", text_len, max_tokens);
        return INT32_MIN;
    }
    workspace w = {0};
    w.out = tokens;
    w.max_out = max_tokens;
    /* add_bos: 0 none, 1 as the model says (tokenizer.ggml.add_bos_token / add_eos_token), 2 always */
    if (add_bos && v->bos >= 0 && (add_bos == 2 || v->add_bos)) emit_token(&w, v->bos);
    size_t n = (size_t)text_len, seg = 0, i = 0;
    int ok = 1, first = 1;
    while (ok && i < n) {
        size_t len = 0;
        int32_t id = v->n_special ? match_special(v, text + i, n - i, parse_special, &len) : -1;
        if (id < 0) { i++; continue; }
        size_t end = i; /* lstrip: the whitespace before the token goes with it (not before seg) */
        if (v->strip && (v->strip[id] & 1))
            for (size_t k; end > seg && (k = ws_before(text + seg, end - seg)) > 0;) end -= k;
        if (end > seg) ok = encode_segment(v, &w, text + seg, end - seg, first);
        first = 0;
        emit_token(&w, id);
        i += len;
        if (v->strip && (v->strip[id] & 2)) /* rstrip: and the whitespace after it */
            for (size_t k; i < n && (k = ws_at(text + i, n - i)) > 0;) i += k;
        seg = i;
    }
    if (ok && n > seg) ok = encode_segment(v, &w, text + seg, n - seg, first);
    if (ok && add_bos == 1 && v->add_eos && v->eos >= 0) emit_token(&w, v->eos);
    free(w.sym);
    free(w.heap);
    free(w.norm);
    free(w.nfc);
    free(w.nfc_cp);
    if (!ok) {
        sq_set_error(SQ_ERR_NOMEM, "sq_tokenize: out of memory");
        return INT32_MIN;
    }
    if (w.n_out > INT32_MAX) {
        sq_set_error(SQ_ERR_ARG, "sq_tokenize: text too long (more than 2^31 tokens)");
        return INT32_MIN;
    }
    return w.n_out > max_tokens ? -(int32_t)w.n_out : (int32_t)w.n_out;
}

static int renders(const sq_vocab *v, int32_t token, int render_special) {
    int t = v->types[token];
    if (t == SQ_TOKTYPE_CONTROL || t == SQ_TOKTYPE_UNKNOWN) return render_special;
    return 1;
}

SQ_API int32_t sq_vocab_token_to_piece(const sq_vocab *v, int32_t token, char *buf, int32_t buf_len, int32_t render_special) {
    if (!v || token < 0 || token >= v->n || buf_len < 0 || (!buf && buf_len > 0)) {
        sq_set_error(SQ_ERR_ARG, "sq_token_to_piece: bad token %d (vocabulary has %d) or buffer", token, v ? v->n : 0);
        return INT32_MIN;
    }
    if (!renders(v, token, render_special)) return 0;
    int32_t n = (int32_t)v->piece_len[token];
    if (n > buf_len) return -n;
    memcpy(buf, v->piece_arena + v->piece_off[token], (size_t)n);
    return n;
}

SQ_API int32_t sq_vocab_detokenize(const sq_vocab *v, const int32_t *tokens, int32_t n_tokens, char *buf,
                                   int32_t buf_len, int32_t render_special) {
    if (!v || n_tokens < 0 || (!tokens && n_tokens > 0) || buf_len < 0 || (!buf && buf_len > 0)) {
        sq_set_error(SQ_ERR_ARG, "sq_detokenize: bad arguments");
        return INT32_MIN;
    }
    int64_t total = 0;
    int strip = v->kind == SQ_VOCAB_SPM && v->add_space_prefix; /* the dummy prefix is not text */
    for (int32_t i = 0; i < n_tokens; i++) {
        int32_t t = tokens[i];
        if (t < 0 || t >= v->n) {
            sq_set_error(SQ_ERR_ARG, "sq_detokenize: token %d out of range (vocabulary has %d)", t, v->n);
            return INT32_MIN;
        }
        if (!renders(v, t, render_special)) continue;
        const char *p = v->piece_arena + v->piece_off[t];
        uint32_t len = v->piece_len[t];
        if (strip && len > 0) { /* HF: Strip(left=1) on the whole text, once */
            if (p[0] == ' ') { p++; len--; }
            strip = 0;
        }
        if (total + len <= buf_len) memcpy(buf + total, p, len);
        total += len;
        if (total > INT32_MAX) {
            sq_set_error(SQ_ERR_ARG, "sq_detokenize: text too long");
            return INT32_MIN;
        }
    }
    return total > buf_len ? -(int32_t)total : (int32_t)total;
}

SQ_API int32_t sq_vocab_n_tokens(const sq_vocab *v) { return v ? v->n : 0; }
SQ_API int32_t sq_vocab_bos(const sq_vocab *v) { return v ? v->bos : -1; }
SQ_API int32_t sq_vocab_eos(const sq_vocab *v) { return v ? v->eos : -1; }
SQ_API int32_t sq_vocab_is_eog(const sq_vocab *v, int32_t token) {
    return v && token >= 0 && token < v->n && v->eog[token];
}
SQ_API int32_t sq_vocab_add_bos(const sq_vocab *v) { return v ? v->add_bos : 0; }
