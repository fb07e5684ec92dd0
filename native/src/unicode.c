/* unicode.c — UTF-8 decoding and character classes for the pre-tokenizers (see unicode.h). */
#include "unicode.h"

int sq_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; v = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07; min = 0x10000; }
    else { *cp = SQ_UTF8_INVALID; return 1; } /* continuation byte, C0/C1, F5..FF */
    if ((size_t)len > n) { *cp = SQ_UTF8_INVALID; return 1; }
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) { *cp = SQ_UTF8_INVALID; return 1; }
        v = (v << 6) | (s[i] & 0x3F);
    }
    /* overlong forms, UTF-16 surrogates and code points past U+10FFFF are not UTF-8 */
    if (v < min || (v >= 0xD800 && v <= 0xDFFF) || v > 0x10FFFF) { *cp = SQ_UTF8_INVALID; return 1; }
    *cp = v;
    return len;
}

int sq_utf8_encode(uint32_t cp, uint8_t out[4]) {
    if (cp < 0x80) { out[0] = (uint8_t)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* 1 if s[0..n) (n < needed length) is the beginning of a well-formed sequence: more bytes could
 * still complete it. Checks the same lead-byte ranges and second-byte limits as sq_utf8_decode. */
static int utf8_incomplete(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    size_t len = (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
    if (len == 0 || n >= len) return 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if (n >= 2) { /* the second byte decides overlong / surrogate / range */
        uint8_t d = s[1];
        if (c == 0xE0 && d < 0xA0) return 0;
        if (c == 0xED && d > 0x9F) return 0;
        if (c == 0xF0 && d < 0x90) return 0;
        if (c == 0xF4 && d > 0x8F) return 0;
    }
    return 1;
}

size_t sq_utf8_printable_prefix(const uint8_t *s, size_t n) {
    /* only the last 3 bytes can hold an unfinished sequence */
    size_t start = n > 3 ? n - 3 : 0;
    for (size_t i = start; i < n; i++) {
        if (s[i] >= 0xC2 && s[i] <= 0xF4 && utf8_incomplete(s + i, n - i)) return i;
    }
    return n;
}

int sq_utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        int len = sq_utf8_decode(s + i, n - i, &cp);
        if (cp == SQ_UTF8_INVALID) return 0;
        i += (size_t)len;
    }
    return 1;
}

int sq_uclass(uint32_t cp) {
    if (cp < 0x80) { /* ASCII fast path: most text is ASCII */
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return SQ_UCLASS_L;
        if (cp >= '0' && cp <= '9') return SQ_UCLASS_N;
    }
    if (cp > 0x10FFFF) return SQ_UCLASS_OTHER;
    /* last range whose first code point is <= cp */
    int lo = 0, hi = sq_unicode_n_ranges - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if ((sq_unicode_ranges[mid] >> 3) <= cp) lo = mid;
        else hi = mid - 1;
    }
    return (int)(sq_unicode_ranges[lo] & 7);
}

int sq_uis_space(uint32_t cp) {
    if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
    if (cp < 0x85) return 0;
    switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
        return 1;
    default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* NFC (canonical decomposition, canonical ordering, canonical composition; UAX #15) */

#define HANGUL_S 0xAC00u
#define HANGUL_L 0x1100u
#define HANGUL_V 0x1161u
#define HANGUL_T 0x11A7u
#define HANGUL_NL 19u
#define HANGUL_NV 21u
#define HANGUL_NT 28u
#define HANGUL_NS (HANGUL_NL * HANGUL_NV * HANGUL_NT)
/* an invalid UTF-8 byte b travels as NFC_RAW | b: class 0, never decomposes or composes */
#define NFC_RAW 0x80000000u

static int nfc_unsafe(uint32_t cp) {
    if (cp < 0x300) return 0; /* the first unsafe code point is U+0300 */
    int lo = 0, hi = sq_nfc_n_unsafe - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if ((sq_nfc_unsafe[mid] >> 1) <= cp) lo = mid;
        else hi = mid - 1;
    }
    return (int)(sq_nfc_unsafe[lo] & 1);
}

int sq_ucombining(uint32_t cp) {
    if (cp < 0x300 || cp > 0x10FFFF) return 0;
    int lo = 0, hi = sq_nfc_n_ccc - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        uint32_t c = sq_nfc_ccc[mid] >> 8;
        if (c == cp) return (int)(sq_nfc_ccc[mid] & 0xFF);
        if (c < cp) lo = mid + 1;
        else hi = mid - 1;
    }
    return 0;
}

/* the full canonical decomposition of cp (not Hangul) at *out, or 0 when it has none */
static int nfc_decomp(uint32_t cp, const uint32_t **out) {
    if (cp < 0xC0 || cp > 0x10FFFF) return 0;
    int lo = 0, hi = sq_nfc_n_decomp - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        uint32_t c = (uint32_t)(sq_nfc_decomp[mid] >> 24);
        if (c == cp) {
            *out = sq_nfc_decomp_pool + ((sq_nfc_decomp[mid] >> 8) & 0xFFFF);
            return (int)(sq_nfc_decomp[mid] & 0xFF);
        }
        if (c < cp) lo = mid + 1;
        else hi = mid - 1;
    }
    return 0;
}

/* the primary composite of (a, b), or 0 */
static uint32_t nfc_compose(uint32_t a, uint32_t b) {
    if ((a | b) & NFC_RAW) return 0;
    if (a >= HANGUL_L && a < HANGUL_L + HANGUL_NL && b >= HANGUL_V && b < HANGUL_V + HANGUL_NV)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_NV + (b - HANGUL_V)) * HANGUL_NT;
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_NS && (a - HANGUL_S) % HANGUL_NT == 0 && b > HANGUL_T &&
        b < HANGUL_T + HANGUL_NT)
        return a + (b - HANGUL_T);
    uint64_t key = ((uint64_t)a << 21) | b;
    int lo = 0, hi = sq_nfc_n_comp - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (sq_nfc_comp[mid] == key) return sq_nfc_comp_result[mid];
        if (sq_nfc_comp[mid] < key) lo = mid + 1;
        else hi = mid - 1;
    }
    return 0;
}

int sq_nfc_maybe(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0xCC) { i++; continue; } /* ASCII, U+0080..U+02FF, continuation bytes: all safe */
        uint32_t cp;
        int len = sq_utf8_decode(s + i, n - i, &cp);
        if (cp != SQ_UTF8_INVALID && nfc_unsafe(cp)) return 1;
        i += (size_t)len;
    }
    return 0;
}

static int nfc_class(uint32_t c) { return (c & NFC_RAW) ? 0 : sq_ucombining(c); }

size_t sq_nfc(const uint8_t *s, size_t n, uint32_t *work, uint8_t *out) {
    /* 1. decode and decompose (at most 1.5 code points per byte: work holds 2n) */
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int len = sq_utf8_decode(s + i, n - i, &cp);
        if (cp == SQ_UTF8_INVALID) {
            work[m++] = NFC_RAW | s[i];
        } else if (cp >= HANGUL_S && cp < HANGUL_S + HANGUL_NS) {
            uint32_t k = cp - HANGUL_S;
            work[m++] = HANGUL_L + k / (HANGUL_NV * HANGUL_NT);
            work[m++] = HANGUL_V + (k % (HANGUL_NV * HANGUL_NT)) / HANGUL_NT;
            if (k % HANGUL_NT) work[m++] = HANGUL_T + k % HANGUL_NT;
        } else {
            const uint32_t *d;
            int nd = nfc_decomp(cp, &d);
            if (nd) for (int k = 0; k < nd; k++) work[m++] = d[k];
            else work[m++] = cp;
        }
        i += (size_t)len;
    }
    /* 2. canonical ordering: a stable sort by class of each run of non-starters */
    for (size_t i = 1; i < m; i++) {
        int ci = nfc_class(work[i]);
        if (ci == 0) continue;
        uint32_t c = work[i];
        size_t j = i;
        while (j > 0) {
            int cj = nfc_class(work[j - 1]);
            if (cj <= ci) break; /* also stops at a starter (class 0) */
            work[j] = work[j - 1];
            j--;
        }
        work[j] = c;
    }
    /* 3. canonical composition */
    size_t k = 0;
    if (m) {
        size_t starter = 0;
        int have_starter = nfc_class(work[0]) == 0; /* leading non-starters have no starter to join */
        int last = 0; /* class of the last code point kept after the starter (0: none since it) */
        k = 1;
        for (size_t i = 1; i < m; i++) {
            uint32_t c = work[i];
            int cc = nfc_class(c);
            uint32_t comp = have_starter ? nfc_compose(work[starter], c) : 0;
            if (comp && (last < cc || last == 0)) {
                work[starter] = comp;
                continue;
            }
            if (cc == 0) {
                starter = k;
                have_starter = 1;
                last = 0;
            } else {
                last = cc;
            }
            work[k++] = c;
        }
    }
    /* 4. encode */
    size_t o = 0;
    for (size_t i = 0; i < k; i++) {
        if (work[i] & NFC_RAW) out[o++] = (uint8_t)(work[i] & 0xFF);
        else o += (size_t)sq_utf8_encode(work[i], out + o);
    }
    return o;
}
