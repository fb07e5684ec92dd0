/* gguf.c — strict GGUF reader: mmap + validation of every count, length, offset, type and size.
 *
 * The parser walks the buffer with a bounds-checked cursor; nothing read from the file is used as a
 * size, count or offset before it has been checked against what is left of the buffer, so a
 * truncated or corrupted file gives SQ_ERR_FORMAT with one line of text, never a crash.
 */
#define _GNU_SOURCE /* O_CLOEXEC, mmap under -std=c11 */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define MAX_KEY_LEN 65535u
#define MAX_NAME_LEN 255u

/* ---- bounds-checked cursor ------------------------------------------------------------------ */

typedef struct {
    const uint8_t *p;
    size_t size, pos;
    const char *what; /* what is being read, for the error message */
} cursor;

static sq_status truncated(const cursor *c) {
    return sq_set_error(SQ_ERR_FORMAT, "GGUF: file truncated or corrupt while reading %s (at byte %zu of %zu)",
                        c->what, c->pos, c->size);
}

static size_t left(const cursor *c) { return c->size - c->pos; }

static sq_status rd(cursor *c, void *out, size_t n) {
    if (left(c) < n) return truncated(c);
    memcpy(out, c->p + c->pos, n); /* memcpy: the buffer has no alignment guarantees */
    c->pos += n;
    return SQ_OK;
}

static sq_status rd_u32(cursor *c, uint32_t *v) { return rd(c, v, 4); }
static sq_status rd_u64(cursor *c, uint64_t *v) { return rd(c, v, 8); }

static sq_status rd_str(cursor *c, sq_str *s, uint64_t max_len) {
    uint64_t len = 0;
    if (rd_u64(c, &len)) return SQ_ERR_FORMAT;
    if (len > left(c)) return truncated(c);
    if (len > max_len)
        return sq_set_error(SQ_ERR_FORMAT, "GGUF: %s has length %" PRIu64 " (max %" PRIu64 ")", c->what, len, max_len);
    s->ptr = (const char *)(c->p + c->pos);
    s->len = len;
    c->pos += len;
    return SQ_OK;
}

/* ---- metadata value types -------------------------------------------------------------------- */

static const uint8_t k_scalar_size[SQ_GGUF_NTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
static const char *const k_type_names[SQ_GGUF_NTYPES] = {"u8",  "i8",     "u16",   "i16", "u32", "i32", "f32",
                                                         "bool", "string", "array", "u64", "i64", "f64"};

const char *sq_gguf_type_name(uint32_t t) { return t < SQ_GGUF_NTYPES ? k_type_names[t] : "?"; }

int sq_str_eq(sq_str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && memcmp(s.ptr, c, n) == 0;
}

/* Reads one string array: validates every element and records where each one starts. */
static sq_status parse_str_array(cursor *c, sq_gguf_kv *kv) {
    /* Each element needs at least its 8-byte length: bounds n before allocating the index. */
    if (kv->n > left(c) / 8) return truncated(c);
    uint64_t *off = malloc((size_t)(kv->n ? kv->n : 1) * sizeof *off);
    if (!off) return sq_set_error(SQ_ERR_NOMEM, "GGUF: out of memory for a %" PRIu64 "-string array", kv->n);
    size_t start = c->pos;
    for (uint64_t i = 0; i < kv->n; i++) {
        sq_str s;
        off[i] = c->pos - start;
        if (rd_str(c, &s, UINT64_MAX)) {
            free(off);
            return SQ_ERR_FORMAT;
        }
    }
    kv->str_off = off;
    return SQ_OK;
}

static sq_status parse_value(cursor *c, sq_gguf_kv *kv) {
    if (kv->type >= SQ_GGUF_NTYPES)
        return sq_set_error(SQ_ERR_FORMAT, "GGUF: key '%.*s' has unknown value type %u", (int)kv->key.len, kv->key.ptr,
                            kv->type);
    kv->n = 1;
    kv->data = c->p + c->pos;
    if (kv->type == SQ_GGUF_STRING) {
        sq_str s;
        if (rd_str(c, &s, UINT64_MAX)) return SQ_ERR_FORMAT;
        kv->data = (const uint8_t *)s.ptr;
        kv->str_len = s.len;
        return SQ_OK;
    }
    if (kv->type != SQ_GGUF_ARRAY) {
        if (left(c) < k_scalar_size[kv->type]) return truncated(c);
        c->pos += k_scalar_size[kv->type];
        return SQ_OK;
    }
    if (rd_u32(c, &kv->arr_type) || rd_u64(c, &kv->n)) return SQ_ERR_FORMAT;
    kv->data = c->p + c->pos;
    if (kv->arr_type >= SQ_GGUF_NTYPES || kv->arr_type == SQ_GGUF_ARRAY)
        return sq_set_error(SQ_ERR_FORMAT, "GGUF: array '%.*s' has unsupported element type %u", (int)kv->key.len,
                            kv->key.ptr, kv->arr_type);
    if (kv->arr_type == SQ_GGUF_STRING) return parse_str_array(c, kv);
    uint64_t es = k_scalar_size[kv->arr_type];
    if (kv->n > left(c) / es) return truncated(c);
    c->pos += kv->n * es;
    return SQ_OK;
}

/* ---- tensor types ----------------------------------------------------------------------------- */

typedef struct {
    uint32_t id;
    uint16_t blk, bytes;
    const char *name;
} type_info;

static const type_info k_types[] = {
    {SQ_T_F32, 1, 4, "F32"},        {SQ_T_F16, 1, 2, "F16"},      {SQ_T_Q4_0, 32, 18, "Q4_0"},
    {SQ_T_Q4_1, 32, 20, "Q4_1"},    {SQ_T_Q5_0, 32, 22, "Q5_0"},  {SQ_T_Q5_1, 32, 24, "Q5_1"},
    {SQ_T_Q8_0, 32, 34, "Q8_0"},    {SQ_T_Q8_1, 32, 36, "Q8_1"},  {SQ_T_Q2_K, 256, 84, "Q2_K"},
    {SQ_T_Q3_K, 256, 110, "Q3_K"},  {SQ_T_Q4_K, 256, 144, "Q4_K"}, {SQ_T_Q5_K, 256, 176, "Q5_K"},
    {SQ_T_Q6_K, 256, 210, "Q6_K"},  {SQ_T_Q8_K, 256, 292, "Q8_K"}, {SQ_T_I8, 1, 1, "I8"},
    {SQ_T_I16, 1, 2, "I16"},        {SQ_T_I32, 1, 4, "I32"},      {SQ_T_I64, 1, 8, "I64"},
    {SQ_T_F64, 1, 8, "F64"},        {SQ_T_BF16, 1, 2, "BF16"},
};

static const type_info *find_type(uint32_t id) {
    for (size_t i = 0; i < sizeof k_types / sizeof k_types[0]; i++)
        if (k_types[i].id == id) return &k_types[i];
    return NULL;
}

const char *sq_ggml_type_name(uint32_t t) {
    if (t == SQ_T_SQ4) return "SQ4";
    const type_info *ti = find_type(t);
    return ti ? ti->name : "?";
}

int sq_ggml_type_block(uint32_t type, uint32_t sq4_group, uint64_t row_len, uint64_t *blk, uint64_t *bytes) {
    if (type == SQ_T_SQ4) {
        uint64_t g = sq4_group ? sq4_group : row_len; /* group_size 0 = one group per row */
        if (g < 2 || g % 2 || g > (1u << 20)) return 0;
        *blk = g;
        *bytes = 2 + g / 2;
        return 1;
    }
    const type_info *ti = find_type(type);
    if (!ti) return 0;
    *blk = ti->blk;
    *bytes = ti->bytes;
    return 1;
}

/* ---- tensor table ----------------------------------------------------------------------------- */

static int cmp_name(sq_str a, sq_str b) {
    size_t n = a.len < b.len ? a.len : b.len;
    int r = memcmp(a.ptr, b.ptr, n);
    if (r) return r;
    return (a.len > b.len) - (a.len < b.len);
}

/* Sorting arrays of pointers needs no context argument (qsort has none in C11). */
static int cmp_tensor_ptr(const void *x, const void *y) {
    return cmp_name((*(const sq_gguf_tensor *const *)x)->name, (*(const sq_gguf_tensor *const *)y)->name);
}

static int cmp_kv_ptr(const void *x, const void *y) {
    return cmp_name((*(const sq_gguf_kv *const *)x)->key, (*(const sq_gguf_kv *const *)y)->key);
}

static sq_status parse_tensor_info(cursor *c, sq_gguf_tensor *t, uint64_t idx) {
    c->what = "a tensor name";
    if (rd_str(c, &t->name, MAX_NAME_LEN)) return SQ_ERR_FORMAT;
    if (t->name.len == 0 || memchr(t->name.ptr, 0, t->name.len))
        return sq_set_error(SQ_ERR_FORMAT, "GGUF: tensor %" PRIu64 " has an empty or invalid name", idx);
    c->what = "a tensor's shape";
    if (rd_u32(c, &t->n_dims)) return SQ_ERR_FORMAT;
    if (t->n_dims < 1 || t->n_dims > SQ_GGUF_MAX_DIMS)
        return sq_set_error(SQ_ERR_FORMAT, "GGUF: tensor '%.*s' has %u dimensions (1..%d allowed)", (int)t->name.len,
                            t->name.ptr, t->n_dims, SQ_GGUF_MAX_DIMS);
    for (int d = 0; d < SQ_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (rd_u64(c, &t->ne[d])) return SQ_ERR_FORMAT;
        /* 2^40 per dim keeps every product below in range; the byte size check does the rest. */
        if (t->ne[d] == 0 || t->ne[d] > (1ull << 40))
            return sq_set_error(SQ_ERR_FORMAT, "GGUF: tensor '%.*s' has dimension %u = %" PRIu64, (int)t->name.len,
                                t->name.ptr, d, t->ne[d]);
    }
    c->what = "a tensor's type and offset";
    if (rd_u32(c, &t->type) || rd_u64(c, &t->offset)) return SQ_ERR_FORMAT;
    return SQ_OK;
}

/* Checks type, byte size, alignment and bounds of one tensor once the data section is known. */
static sq_status check_tensor(sq_gguf *g, sq_gguf_tensor *t) {
    const int nl = (int)t->name.len;
    uint64_t blk, bytes;
    if (t->type == SQ_T_SQ4 && !g->sq4_group && !sq_gguf_find(g, "specquant.group_size"))
        return sq_set_error(SQ_ERR_FORMAT, "GGUF: tensor '%.*s' is SQ4 but specquant.group_size is missing", nl,
                            t->name.ptr);
    if (!sq_ggml_type_block(t->type, g->sq4_group, t->ne[0], &blk, &bytes))
        return sq_set_error(t->type == SQ_T_SQ4 ? SQ_ERR_FORMAT : SQ_ERR_UNSUPPORTED,
                            "GGUF: tensor '%.*s' has unknown or invalid type id %u", nl, t->name.ptr, t->type);
    if (t->ne[0] % blk)
        return sq_set_error(SQ_ERR_FORMAT, "GGUF: tensor '%.*s' (%s): row length %" PRIu64 " is not a multiple of %" PRIu64,
                            nl, t->name.ptr, sq_ggml_type_name(t->type), t->ne[0], blk);
    /* Bytes = row bytes × rows (the real size, for the message: overflow is said as such). */
    uint64_t n = t->ne[0] / blk * bytes; /* < 2^60: ne[0] <= 2^40 */
    int overflow = 0;
    for (int d = 1; d < SQ_GGUF_MAX_DIMS; d++) overflow |= __builtin_mul_overflow(n, t->ne[d], &n);
    if (overflow)
        return sq_set_error(SQ_ERR_FORMAT, "GGUF: tensor '%.*s' (%s, %" PRIu64 " x %" PRIu64 " x %" PRIu64 " x %" PRIu64
                            ") would take more than 2^64 bytes", nl, t->name.ptr, sq_ggml_type_name(t->type), t->ne[0],
                            t->ne[1], t->ne[2], t->ne[3]);
    if (t->offset % g->alignment)
        return sq_set_error(SQ_ERR_FORMAT, "GGUF: tensor '%.*s' offset %" PRIu64 " is not a multiple of %" PRIu64, nl,
                            t->name.ptr, t->offset, g->alignment);
    uint64_t avail = g->size - g->data_offset;
    if (n > avail || t->offset > avail - n)
        return sq_set_error(SQ_ERR_FORMAT, "GGUF: tensor '%.*s' (%" PRIu64 " bytes at offset %" PRIu64 ") lies past the end of the file (truncated?)",
                            nl, t->name.ptr, n, t->offset);
    t->nbytes = n;
    t->data = g->base + g->data_offset + t->offset;
    return SQ_OK;
}

/* Tensor data lies in table order, without overlap (what every GGUF writer does; FORMAT.md §1):
 * an offset before the previous tensor's, or inside it, is a corrupt table. */
static sq_status check_order(const sq_gguf_tensor *a, const sq_gguf_tensor *b) {
    if (b->offset >= a->offset && b->offset - a->offset >= a->nbytes) return SQ_OK;
    return sq_set_error(SQ_ERR_FORMAT, "GGUF: tensor '%.*s' at offset %" PRIu64 " %s tensor '%.*s' (%" PRIu64
                        " bytes at offset %" PRIu64 "): tensor data must follow the table's order without overlap",
                        (int)b->name.len, b->name.ptr, b->offset, b->offset < a->offset ? "comes before the previous"
                        : "overlaps the previous", (int)a->name.len, a->name.ptr, a->nbytes, a->offset);
}

static sq_status parse_alignment(sq_gguf *g) {
    g->alignment = 32;
    const sq_gguf_kv *kv = sq_gguf_find(g, "general.alignment");
    if (!kv) return SQ_OK;
    uint32_t a;
    /* >= 8 so that F32/F16/I16 tensor data can be read in place without unaligned accesses. */
    if (sq_gguf_get_u32(g, "general.alignment", &a) != 1 || a < 8 || (a & (a - 1)) || a > 65536)
        return sq_set_error(SQ_ERR_FORMAT, "GGUF: general.alignment must be a power of two in 8..65536");
    g->alignment = a;
    return SQ_OK;
}

static sq_status parse_sq4_group(sq_gguf *g) {
    uint32_t gs = 0;
    int r = sq_gguf_get_u32(g, "specquant.group_size", &gs);
    if (r < 0) return SQ_ERR_FORMAT;
    if (r == 1 && gs != 0 && (gs < 2 || gs % 2 || gs > 65536))
        return sq_set_error(SQ_ERR_FORMAT, "GGUF: specquant.group_size = %u is not a valid group size", gs);
    g->sq4_group = gs;
    return SQ_OK;
}

static sq_status parse_header(sq_gguf *g, cursor *c) {
    uint32_t magic = 0;
    c->what = "the header";
    if (rd_u32(c, &magic)) return sq_set_error(SQ_ERR_FORMAT, "not a GGUF file (shorter than its header)");
    if (magic != GGUF_MAGIC) return sq_set_error(SQ_ERR_FORMAT, "not a GGUF file (bad magic)");
    if (rd_u32(c, &g->version) || rd_u64(c, &g->n_tensors) || rd_u64(c, &g->n_kv)) return SQ_ERR_FORMAT;
    if (g->version != 2 && g->version != 3) /* 1 or a plausible future version vs garbage */
        return sq_set_error(g->version < 256 ? SQ_ERR_UNSUPPORTED : SQ_ERR_FORMAT,
                            "GGUF version %u is not supported (2 or 3)", g->version);
    /* A kv entry takes >= 13 bytes and a tensor entry >= 33: bound counts before allocating. */
    if (g->n_kv > left(c) / 13 || g->n_tensors > left(c) / 33 || g->n_tensors > UINT32_MAX)
        return sq_set_error(SQ_ERR_FORMAT, "GGUF: %" PRIu64 " tensors / %" PRIu64 " keys cannot fit in a %zu-byte file",
                            g->n_tensors, g->n_kv, c->size);
    return SQ_OK;
}

static sq_status parse_kvs(sq_gguf *g, cursor *c) {
    g->kv = calloc(g->n_kv ? g->n_kv : 1, sizeof *g->kv);
    g->kv_sorted = malloc((g->n_kv ? g->n_kv : 1) * sizeof *g->kv_sorted);
    if (!g->kv || !g->kv_sorted) return sq_set_error(SQ_ERR_NOMEM, "GGUF: out of memory");
    for (uint64_t i = 0; i < g->n_kv; i++) {
        sq_gguf_kv *kv = &g->kv[i];
        c->what = "a metadata key";
        if (rd_str(c, &kv->key, MAX_KEY_LEN) || rd_u32(c, &kv->type)) return SQ_ERR_FORMAT;
        if (kv->key.len == 0 || memchr(kv->key.ptr, 0, kv->key.len))
            return sq_set_error(SQ_ERR_FORMAT, "GGUF: metadata key %" PRIu64 " is empty or invalid", i);
        c->what = "a metadata value";
        sq_status st = parse_value(c, kv);
        if (st) return st;
        g->kv_sorted[i] = kv;
    }
    qsort(g->kv_sorted, g->n_kv, sizeof *g->kv_sorted, cmp_kv_ptr);
    for (uint64_t i = 1; i < g->n_kv; i++)
        if (cmp_name(g->kv_sorted[i - 1]->key, g->kv_sorted[i]->key) == 0)
            return sq_set_error(SQ_ERR_FORMAT, "GGUF: duplicate metadata key '%.*s'", (int)g->kv_sorted[i]->key.len,
                                g->kv_sorted[i]->key.ptr);
    return SQ_OK;
}

static sq_status parse_tensors(sq_gguf *g, cursor *c) {
    g->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->tensors);
    g->by_name = malloc((g->n_tensors ? g->n_tensors : 1) * sizeof *g->by_name);
    if (!g->tensors || !g->by_name) return sq_set_error(SQ_ERR_NOMEM, "GGUF: out of memory");
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        sq_status st = parse_tensor_info(c, &g->tensors[i], i);
        if (st) return st;
        g->by_name[i] = &g->tensors[i];
    }
    /* Data section: aligned after the table (and inside the file if there is any tensor). */
    uint64_t a = g->alignment;
    g->data_offset = (c->pos + a - 1) / a * a;
    if (g->data_offset > g->size) {
        if (g->n_tensors) return sq_set_error(SQ_ERR_FORMAT, "GGUF: file truncated before its tensor data");
        g->data_offset = g->size;
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        sq_status st = check_tensor(g, &g->tensors[i]);
        if (!st && i) st = check_order(&g->tensors[i - 1], &g->tensors[i]);
        if (st) return st;
    }
    qsort(g->by_name, g->n_tensors, sizeof *g->by_name, cmp_tensor_ptr);
    for (uint64_t i = 1; i < g->n_tensors; i++) {
        sq_str a1 = g->by_name[i - 1]->name, b1 = g->by_name[i]->name;
        if (cmp_name(a1, b1) == 0)
            return sq_set_error(SQ_ERR_FORMAT, "GGUF: duplicate tensor name '%.*s'", (int)b1.len, b1.ptr);
    }
    return SQ_OK;
}

static void free_tables(sq_gguf *g) {
    if (g->kv)
        for (uint64_t i = 0; i < g->n_kv; i++) free((void *)g->kv[i].str_off);
    free(g->kv);
    free(g->kv_sorted);
    free(g->tensors);
    free(g->by_name);
    g->kv = NULL;
    g->kv_sorted = NULL;
    g->tensors = NULL;
    g->by_name = NULL;
}

sq_status sq_gguf_parse(sq_gguf *g, const void *data, size_t size) {
    memset(g, 0, sizeof *g);
    if (!data && size) return sq_set_error(SQ_ERR_ARG, "GGUF: NULL buffer");
    g->base = data;
    g->size = size;
    cursor c = {data, size, 0, "the header"};
    /* Parse steps run in order; each validates what the next one relies on. */
    sq_status st = parse_header(g, &c);
    if (!st) st = parse_kvs(g, &c);
    if (!st) st = parse_alignment(g);
    if (!st) st = parse_sq4_group(g);
    if (!st) st = parse_tensors(g, &c);
    if (st) {
        free_tables(g);
        memset(g, 0, sizeof *g);
    }
    return st;
}

sq_status sq_gguf_open(sq_gguf *g, const char *path) {
    memset(g, 0, sizeof *g);
    if (!path) return sq_set_error(SQ_ERR_ARG, "model path is NULL");
    /* stat first: open() on a FIFO would wait for a writer forever. O_NONBLOCK covers a path that
     * changes in between; fstat then checks what was opened. */
    struct stat stt;
    if (stat(path, &stt) != 0) return sq_set_error(SQ_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    if (S_ISDIR(stt.st_mode)) return sq_set_error(SQ_ERR_IO, "'%s' is a directory", path);
    if (!S_ISREG(stt.st_mode)) return sq_set_error(SQ_ERR_IO, "'%s' is not a regular file", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return sq_set_error(SQ_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    if (fstat(fd, &stt) != 0 || !S_ISREG(stt.st_mode)) {
        close(fd);
        return sq_set_error(SQ_ERR_IO, "'%s' is not a regular file", path);
    }
    size_t size = (size_t)stt.st_size;
    if (size == 0) {
        close(fd);
        return sq_set_error(SQ_ERR_FORMAT, "'%s' is empty (not a GGUF file)", path);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED) return sq_set_error(SQ_ERR_IO, "cannot map '%s': %s", path, strerror(errno));
    sq_status st = sq_gguf_parse(g, map, size);
    if (st) {
        munmap(map, size);
        return st;
    }
    g->map = map;
    g->map_size = size;
    return SQ_OK;
}

void sq_gguf_close(sq_gguf *g) {
    if (!g) return;
    free_tables(g);
    if (g->map) munmap(g->map, g->map_size);
    memset(g, 0, sizeof *g);
}

/* ---- lookups and getters --------------------------------------------------------------------- */

const sq_gguf_kv *sq_gguf_find(const sq_gguf *g, const char *key) {
    if (!g || !key || !g->kv_sorted) return NULL;
    sq_str want = {key, strlen(key)};
    size_t lo = 0, hi = g->n_kv;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = cmp_name(g->kv_sorted[mid]->key, want);
        if (r == 0) return g->kv_sorted[mid];
        if (r < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

const sq_gguf_tensor *sq_gguf_tensor_find(const sq_gguf *g, const char *name) {
    if (!g || !name || !g->by_name) return NULL;
    sq_str want = {name, strlen(name)};
    size_t lo = 0, hi = g->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const sq_gguf_tensor *t = g->by_name[mid];
        int r = cmp_name(t->name, want);
        if (r == 0) return t;
        if (r < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* Scalar at p of metadata type t as int64 (ok = 0 for non-integers or u64 values > INT64_MAX). */
static int64_t scalar_i64(const uint8_t *p, uint32_t t, int *ok) {
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; uint64_t u64; int64_t i64; } v;
    *ok = 1;
    switch (t) {
    case SQ_GGUF_U8: memcpy(&v.u8, p, 1); return v.u8;
    case SQ_GGUF_BOOL: memcpy(&v.u8, p, 1); return v.u8 != 0;
    case SQ_GGUF_I8: memcpy(&v.i8, p, 1); return v.i8;
    case SQ_GGUF_U16: memcpy(&v.u16, p, 2); return v.u16;
    case SQ_GGUF_I16: memcpy(&v.i16, p, 2); return v.i16;
    case SQ_GGUF_U32: memcpy(&v.u32, p, 4); return v.u32;
    case SQ_GGUF_I32: memcpy(&v.i32, p, 4); return v.i32;
    case SQ_GGUF_I64: memcpy(&v.i64, p, 8); return v.i64;
    case SQ_GGUF_U64:
        memcpy(&v.u64, p, 8);
        if (v.u64 > (uint64_t)INT64_MAX) *ok = 0;
        return (int64_t)(v.u64 & (uint64_t)INT64_MAX);
    default: *ok = 0; return 0;
    }
}

static double scalar_f64(const uint8_t *p, uint32_t t, int *ok) {
    if (t == SQ_GGUF_F32) {
        float f;
        memcpy(&f, p, 4);
        *ok = 1;
        return f;
    }
    if (t == SQ_GGUF_F64) {
        double d;
        memcpy(&d, p, 8);
        *ok = 1;
        return d;
    }
    return (double)scalar_i64(p, t, ok);
}

static int bad_type(const sq_gguf_kv *kv, const char *want) {
    sq_set_error(SQ_ERR_FORMAT, "metadata '%.*s' has type %s, expected %s", (int)kv->key.len, kv->key.ptr,
                 sq_gguf_type_name(kv->type), want);
    return -1;
}

int sq_gguf_get_u32(const sq_gguf *g, const char *key, uint32_t *out) {
    const sq_gguf_kv *kv = sq_gguf_find(g, key);
    if (!kv) return 0;
    int ok = 0;
    int64_t v = kv->type == SQ_GGUF_BOOL ? 0 : scalar_i64(kv->data, kv->type, &ok);
    if (!ok || kv->type == SQ_GGUF_BOOL) return bad_type(kv, "an unsigned integer");
    if (v < 0 || v > (int64_t)UINT32_MAX) {
        sq_set_error(SQ_ERR_FORMAT, "metadata '%s' = %lld is out of range", key, (long long)v);
        return -1;
    }
    *out = (uint32_t)v;
    return 1;
}

int sq_gguf_get_f32(const sq_gguf *g, const char *key, float *out) {
    const sq_gguf_kv *kv = sq_gguf_find(g, key);
    if (!kv) return 0;
    int ok = 0;
    double v = kv->type == SQ_GGUF_BOOL ? 0 : scalar_f64(kv->data, kv->type, &ok);
    if (!ok || kv->type == SQ_GGUF_BOOL) return bad_type(kv, "a number");
    *out = (float)v;
    return 1;
}

int sq_gguf_get_bool(const sq_gguf *g, const char *key, int *out) {
    const sq_gguf_kv *kv = sq_gguf_find(g, key);
    if (!kv) return 0;
    int ok = 0;
    int64_t v = scalar_i64(kv->data, kv->type, &ok);
    if (!ok) return bad_type(kv, "a bool");
    *out = v != 0;
    return 1;
}

int sq_gguf_get_str(const sq_gguf *g, const char *key, sq_str *out) {
    const sq_gguf_kv *kv = sq_gguf_find(g, key);
    if (!kv) return 0;
    if (kv->type != SQ_GGUF_STRING) return bad_type(kv, "a string");
    out->ptr = (const char *)kv->data;
    out->len = kv->str_len;
    return 1;
}

sq_str sq_gguf_arr_str(const sq_gguf_kv *kv, uint64_t i) {
    sq_str s = {"", 0};
    if (!kv || kv->type != SQ_GGUF_ARRAY || kv->arr_type != SQ_GGUF_STRING || i >= kv->n) return s;
    const uint8_t *p = kv->data + kv->str_off[i];
    memcpy(&s.len, p, 8); /* validated at parse time */
    s.ptr = (const char *)(p + 8);
    return s;
}

double sq_gguf_arr_f64(const sq_gguf_kv *kv, uint64_t i) {
    if (!kv || kv->type != SQ_GGUF_ARRAY || kv->arr_type == SQ_GGUF_STRING || i >= kv->n) return 0;
    int ok;
    double v = scalar_f64(kv->data + i * k_scalar_size[kv->arr_type], kv->arr_type, &ok);
    return ok ? v : 0;
}

int64_t sq_gguf_arr_i64(const sq_gguf_kv *kv, uint64_t i) {
    if (!kv || kv->type != SQ_GGUF_ARRAY || kv->arr_type == SQ_GGUF_STRING || i >= kv->n) return 0;
    int ok;
    const uint8_t *p = kv->data + i * k_scalar_size[kv->arr_type];
    if (kv->arr_type == SQ_GGUF_F32 || kv->arr_type == SQ_GGUF_F64) return (int64_t)scalar_f64(p, kv->arr_type, &ok);
    int64_t v = scalar_i64(p, kv->arr_type, &ok);
    return ok ? v : 0;
}

/* ---- text rendering (sq_model_meta) ----------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 64);
        while (cap < b->len + n + 1) cap *= 2;
        char *nb = realloc(b->buf, cap);
        if (!nb) {
            b->oom = 1;
            return;
        }
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = '\0';
}

static void sb_scalar(sbuf *b, const uint8_t *p, uint32_t t) {
    char tmp[64];
    int ok;
    if (t == SQ_GGUF_BOOL) snprintf(tmp, sizeof tmp, "%s", p[0] ? "true" : "false");
    else if (t == SQ_GGUF_F32 || t == SQ_GGUF_F64) snprintf(tmp, sizeof tmp, "%.9g", scalar_f64(p, t, &ok));
    else if (t == SQ_GGUF_U64) {
        uint64_t u;
        memcpy(&u, p, 8);
        snprintf(tmp, sizeof tmp, "%" PRIu64, u);
    } else snprintf(tmp, sizeof tmp, "%lld", (long long)scalar_i64(p, t, &ok));
    sb_put(b, tmp, strlen(tmp));
}

/* A string inside an array: JSON-style quoting so that the items stay separable. */
static void sb_quoted(sbuf *b, sq_str s) {
    sb_put(b, "\"", 1);
    for (uint64_t i = 0; i < s.len; i++) {
        unsigned char ch = (unsigned char)s.ptr[i];
        char tmp[8];
        if (ch == '"' || ch == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)ch;
            sb_put(b, tmp, 2);
        } else if (ch < 0x20) {
            snprintf(tmp, sizeof tmp, "\\u%04x", ch);
            sb_put(b, tmp, 6);
        } else sb_put(b, (const char *)&s.ptr[i], 1);
    }
    sb_put(b, "\"", 1);
}

char *sq_gguf_kv_to_text(const sq_gguf_kv *kv, uint64_t max_items) {
    sbuf b = {0};
    sb_put(&b, "", 0);
    if (kv->type == SQ_GGUF_STRING) sb_put(&b, (const char *)kv->data, kv->str_len);
    else if (kv->type != SQ_GGUF_ARRAY) sb_scalar(&b, kv->data, kv->type);
    else {
        sb_put(&b, "[", 1);
        for (uint64_t i = 0; i < kv->n && i < max_items; i++) {
            if (i) sb_put(&b, ", ", 2);
            if (kv->arr_type == SQ_GGUF_STRING) sb_quoted(&b, sq_gguf_arr_str(kv, i));
            else sb_scalar(&b, kv->data + i * k_scalar_size[kv->arr_type], kv->arr_type);
        }
        if (kv->n > max_items) sb_put(&b, ", ...", 5);
        sb_put(&b, "]", 1);
    }
    if (b.oom) {
        free(b.buf);
        return NULL;
    }
    return b.buf;
}
