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

/* NFC (Unicode canonical composition, UAX #15), for tokenizers whose normalizer is NFC.
 * sq_nfc_maybe: 0 when s[0..n) is surely its own NFC (no code point whose NFC quick check is not
 * Yes), so the caller can skip sq_nfc; 1 when it may change.
 * sq_nfc: the NFC of s[0..n) into out (room for 3n bytes: NFC grows UTF-8 at most 3 times), using
 * work (room for 2n code points); returns the length written. An invalid UTF-8 byte is copied
 * unchanged and neither composes nor reorders (it acts as a starter). */
int sq_nfc_maybe(const uint8_t *s, size_t n);
size_t sq_nfc(const uint8_t *s, size_t n, uint32_t *work, uint8_t *out);
int sq_ucombining(uint32_t cp); /* canonical combining class */

/* generated */
extern const uint32_t sq_unicode_ranges[];
extern const int sq_unicode_n_ranges;
extern const char sq_unicode_version[];
extern const uint32_t sq_nfc_ccc[], sq_nfc_decomp_pool[], sq_nfc_comp_result[], sq_nfc_unsafe[];
extern const uint64_t sq_nfc_decomp[], sq_nfc_comp[];
extern const int sq_nfc_n_ccc, sq_nfc_n_decomp, sq_nfc_n_comp, sq_nfc_n_unsafe;

#endif
