/* gguf.h — strict GGUF v2/v3 reader (internal).
 *
 * sq_gguf_open() maps a file read-only; sq_gguf_parse() parses any byte buffer (the fuzz tests use
 * it directly). Parsing validates everything before anything is used: every length, count, type id,
 * shape, offset and tensor byte size is checked against the buffer, so the accessors below can
 * never read outside it. Strings point into the buffer and are NOT NUL-terminated (use ptr + len).
 *
 * ---- For tokenizer.c / chat.c (metadata accessor) -------------------------------------------
 *   const sq_gguf *g = sq_model_gguf(model);                      // model.h
 *   const sq_gguf_kv *kv = sq_gguf_find(g, "tokenizer.ggml.tokens");
 *   if (kv && kv->type == SQ_GGUF_ARRAY && kv->arr_type == SQ_GGUF_STRING)
 *       for (uint64_t i = 0; i < kv->n; i++) { sq_str s = sq_gguf_arr_str(kv, i); ... }
 *   float score = (float)sq_gguf_arr_f64(kv_scores, i);             // any numeric array
 *   int64_t type = sq_gguf_arr_i64(kv_types, i);                     // any integer/bool array
 *   uint32_t bos; if (sq_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &bos) == 1) ...
 *   sq_str tmpl;  sq_gguf_get_str(g, "tokenizer.chat_template", &tmpl);
 * Element access is O(1) (string arrays get an offset index at parse time). All returned pointers
 * live as long as the model.
 */
#ifndef SQ_GGUF_H
#define SQ_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "specquant.h"

/* GGUF metadata value types (gguf spec). */
enum {
    SQ_GGUF_U8 = 0, SQ_GGUF_I8 = 1, SQ_GGUF_U16 = 2, SQ_GGUF_I16 = 3, SQ_GGUF_U32 = 4,
    SQ_GGUF_I32 = 5, SQ_GGUF_F32 = 6, SQ_GGUF_BOOL = 7, SQ_GGUF_STRING = 8, SQ_GGUF_ARRAY = 9,
    SQ_GGUF_U64 = 10, SQ_GGUF_I64 = 11, SQ_GGUF_F64 = 12, SQ_GGUF_NTYPES = 13
};

/* ggml tensor type ids that this reader knows the size of. */
enum {
    SQ_T_F32 = 0, SQ_T_F16 = 1, SQ_T_Q4_0 = 2, SQ_T_Q4_1 = 3, SQ_T_Q5_0 = 6, SQ_T_Q5_1 = 7,
    SQ_T_Q8_0 = 8, SQ_T_Q8_1 = 9, SQ_T_Q2_K = 10, SQ_T_Q3_K = 11, SQ_T_Q4_K = 12, SQ_T_Q5_K = 13,
    SQ_T_Q6_K = 14, SQ_T_Q8_K = 15, SQ_T_I8 = 24, SQ_T_I16 = 25, SQ_T_I32 = 26, SQ_T_I64 = 27,
    SQ_T_F64 = 28, SQ_T_BF16 = 30,
    SQ_T_SQ4 = 0x5130 /* FORMAT.md §3.1; block = G values (specquant.group_size, 0 = per row) */
};

#define SQ_GGUF_MAX_DIMS 4

typedef struct {
    const char *ptr; /* into the buffer; not NUL-terminated */
    uint64_t len;
} sq_str;

typedef struct {
    sq_str key;
    uint32_t type;             /* SQ_GGUF_* */
    uint32_t arr_type;         /* element type when type == SQ_GGUF_ARRAY */
    uint64_t n;                /* number of elements (1 for a scalar) */
    const uint8_t *data;       /* scalar value, string bytes, or the first array element */
    uint64_t str_len;          /* type == SQ_GGUF_STRING: length of the string at data */
    const uint64_t *str_off;   /* string arrays: offset from data of element i's u64 length */
} sq_gguf_kv;

typedef struct {
    sq_str name;
    uint32_t n_dims;
    uint32_t type;             /* ggml type id */
    uint64_t ne[SQ_GGUF_MAX_DIMS]; /* unused dims are 1; ne[0] is the row length */
    uint64_t offset;           /* from the start of the data section */
    uint64_t nbytes;
    const uint8_t *data;       /* inside the buffer, nbytes long */
} sq_gguf_tensor;

typedef struct {
    const uint8_t *base;
    size_t size;
    uint32_t version;
    uint64_t n_kv, n_tensors;
    sq_gguf_kv *kv;
    sq_gguf_tensor *tensors;
    const sq_gguf_tensor **by_name; /* tensors sorted by name (binary search) */
    const sq_gguf_kv **kv_sorted;   /* metadata sorted by key (binary search) */
    uint64_t alignment;
    uint64_t data_offset;      /* start of the data section in the buffer */
    uint32_t sq4_group;        /* specquant.group_size (0 = per row, or no SQ4 tensors) */
    void *map;                 /* non-NULL when sq_gguf_open mapped the file */
    size_t map_size;
} sq_gguf;

/* Parses a buffer that must stay alive and unchanged while g is used. On error: g is empty,
 * the error is set (SQ_ERR_FORMAT / SQ_ERR_UNSUPPORTED / SQ_ERR_NOMEM). */
sq_status sq_gguf_parse(sq_gguf *g, const void *data, size_t size);
/* Maps path read-only and parses it (SQ_ERR_IO when the file cannot be opened or mapped). */
sq_status sq_gguf_open(sq_gguf *g, const char *path);
void sq_gguf_close(sq_gguf *g);

const sq_gguf_kv *sq_gguf_find(const sq_gguf *g, const char *key);
const sq_gguf_tensor *sq_gguf_tensor_find(const sq_gguf *g, const char *name);

/* Typed getters: 1 = found and converted, 0 = absent, -1 = present with an unusable type/value
 * (the error is set then). u32 accepts any integer type whose value fits; f32 any number. */
int sq_gguf_get_u32(const sq_gguf *g, const char *key, uint32_t *out);
int sq_gguf_get_f32(const sq_gguf *g, const char *key, float *out);
int sq_gguf_get_bool(const sq_gguf *g, const char *key, int *out);
int sq_gguf_get_str(const sq_gguf *g, const char *key, sq_str *out);

/* Array elements (i < kv->n; out of range or wrong kind gives an empty string / 0). */
sq_str sq_gguf_arr_str(const sq_gguf_kv *kv, uint64_t i);
double sq_gguf_arr_f64(const sq_gguf_kv *kv, uint64_t i);
int64_t sq_gguf_arr_i64(const sq_gguf_kv *kv, uint64_t i);

/* 1 if s equals the NUL-terminated c string. */
int sq_str_eq(sq_str s, const char *c);
/* Name of a metadata type / ggml tensor type ("?" when unknown). */
const char *sq_gguf_type_name(uint32_t t);
const char *sq_ggml_type_name(uint32_t t);
/* Block size (values) and bytes per block of a ggml type; 0 when unknown. SQ4 needs G. */
int sq_ggml_type_block(uint32_t type, uint32_t sq4_group, uint64_t row_len, uint64_t *blk, uint64_t *bytes);

/* Formats a metadata value as text (strings as is, numbers printed, arrays as [a, b, ...] with at
 * most max_items items). Returns a malloc'ed string (NULL on OOM). */
char *sq_gguf_kv_to_text(const sq_gguf_kv *kv, uint64_t max_items);

#endif
