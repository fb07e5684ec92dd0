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
