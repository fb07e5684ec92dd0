/* unicode.h — the little Unicode the tokenizer needs: UTF-8 decoding (strict, never fails), coarse
 * general-category classes for the pre-tokenizer regexes, White_Space, and a helper that tells a
 * streaming printer how many bytes form complete UTF-8 sequences.
 *
 * Classes come from a generated range table (unicode_data.c, native/tools/gen_unicode.py).
 */
#ifndef SQ_UNICODE_H
#define SQ_UNICODE_H

#include <stddef.h>
#include <stdint.h>

enum {
    SQ_UCLASS_OTHER = 0, /* C*, Z* (separators are caught by sq_uis_space where it matters) */
    SQ_UCLASS_L = 1,     /* letters:  \p{L} */
    SQ_UCLASS_N = 2,     /* numbers:  \p{N} = Nd | Nl | No */
    SQ_UCLASS_M = 3,     /* marks:    \p{M} */
    SQ_UCLASS_P = 4,     /* punctuation */
    SQ_UCLASS_S = 5      /* symbols */
};

/* Returned by sq_utf8_decode for a byte that does not start a valid sequence. */
#define SQ_UTF8_INVALID 0xFFFFFFFFu

/* Decodes one code point at s (n > 0 bytes available). Returns its length in bytes (1..4). A byte
 * that does not begin a well-formed sequence (stray continuation, overlong form, surrogate, past
 * U+10FFFF, truncated) has length 1 and *cp = SQ_UTF8_INVALID, so every input makes progress. */
int sq_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);

/* Writes cp (<= 0x10FFFF) as UTF-8 into out (4 bytes of room); returns the length. */
int sq_utf8_encode(uint32_t cp, uint8_t out[4]);

/* Number of leading bytes of s that can be printed now: everything except a trailing prefix of a
 * well-formed sequence that more bytes could still complete. Invalid bytes count as printable
 * (they will never become valid), so a stream never stalls on them. */
size_t sq_utf8_printable_prefix(const uint8_t *s, size_t n);

/* 1 if all n bytes are well-formed UTF-8. */
int sq_utf8_valid(const uint8_t *s, size_t n);

int sq_uclass(uint32_t cp);   /* SQ_UCLASS_*; OTHER for SQ_UTF8_INVALID */
int sq_uis_space(uint32_t cp); /* Unicode White_Space (what \s matches in Oniguruma/Rust regex) */

/* generated */
extern const uint32_t sq_unicode_ranges[];
extern const int sq_unicode_n_ranges;
extern const char sq_unicode_version[];

#endif
