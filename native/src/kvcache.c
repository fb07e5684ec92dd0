/* kvcache.c — KV cache storage in f16, q8 or q4 (per head-dim group), see kvcache.h. */
#include "kvcache.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fp16.h"
#include "kernels/kernels.h"

static size_t row_bytes(int type, int head_dim, int group) {
    int nb = head_dim / group;
    switch (type) {
    case SQ_KV_Q8: return (size_t)nb * (2 + group);
    case SQ_KV_Q4: return (size_t)nb * (4 + group / 2);
    case SQ_KV_F32: return (size_t)head_dim * 4;
    default: return (size_t)head_dim * 2;
    }
}

sq_status sq_kv_init(sq_kvcache *c, int type, int n_layer, int n_kv_head, int head_dim, int n_ctx) {
    memset(c, 0, sizeof *c);
    if (type < SQ_KV_F16 || type > SQ_KV_F32)
        return sq_set_error(SQ_ERR_ARG, "unknown kv_type %d (0=f16, 1=q8, 2=q4, 3=f32)", type);
    if (head_dim < 2 || head_dim % 2) return sq_set_error(SQ_ERR_FORMAT, "head dimension %d must be even", head_dim);
    c->type = type;
    c->n_layer = n_layer;
    c->n_kv_head = n_kv_head;
    c->head_dim = head_dim;
    c->n_ctx = n_ctx;
    c->group = head_dim % 32 == 0 ? 32 : head_dim;
    c->row_bytes = row_bytes(type, head_dim, c->group);
    double total = (double)c->row_bytes * n_ctx * n_kv_head * n_layer;
    if (total > (double)SIZE_MAX / 4)
        return sq_set_error(SQ_ERR_NOMEM, "KV cache of %.0f bytes is too large", total);
    /* calloc: pages are only touched as positions fill, so a large n_ctx costs address space. */
    c->k = calloc(1, (size_t)total);
    c->v = calloc(1, (size_t)total);
    if (!c->k || !c->v) {
        sq_kv_free(c);
        return sq_set_error(SQ_ERR_NOMEM, "out of memory for a %.0f MB KV cache (lower n_ctx or use kv_type q8/q4)",
                            2 * total / 1e6);
    }
    return SQ_OK;
}

void sq_kv_free(sq_kvcache *c) {
    free(c->k);
    free(c->v);
    c->k = c->v = NULL;
}

size_t sq_kv_bytes(const sq_kvcache *c) {
    return 2 * c->row_bytes * (size_t)c->n_ctx * c->n_kv_head * c->n_layer;
}

static uint8_t *row(const sq_kvcache *c, uint8_t *base, int layer, int head, int pos) {
    size_t idx = ((size_t)layer * c->n_kv_head + head) * c->n_ctx + pos;
    return base + idx * c->row_bytes;
}

static void put_u16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static uint16_t get_u16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static void store_q8(const float *x, uint8_t *dst, int hd, int g) {
    for (int b = 0; b < hd / g; b++, x += g) {
        float amax = 0;
        for (int i = 0; i < g; i++) amax = fmaxf(amax, fabsf(x[i]));
        uint16_t dh = sq_fp32_to_fp16(amax / 127.0f);
        float d = sq_fp16_to_fp32_lut(dh), id = d > 0 ? 1.0f / d : 0.0f; /* use the stored scale */
        put_u16(dst, dh);
        int8_t *q = (int8_t *)(dst + 2);
        for (int i = 0; i < g; i++) {
            float v = rintf(x[i] * id);
            q[i] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        }
        dst += 2 + g;
    }
}

static void store_q4(const float *x, uint8_t *dst, int hd, int g) {
    for (int b = 0; b < hd / g; b++, x += g) {
        float mn = x[0], mx = x[0];
        for (int i = 1; i < g; i++) {
            mn = fminf(mn, x[i]);
            mx = fmaxf(mx, x[i]);
        }
        uint16_t dh = sq_fp32_to_fp16((mx - mn) / 15.0f), mh = sq_fp32_to_fp16(mn);
        float d = sq_fp16_to_fp32_lut(dh), m = sq_fp16_to_fp32_lut(mh), id = d > 0 ? 1.0f / d : 0.0f;
        put_u16(dst, dh);
        put_u16(dst + 2, mh);
        uint8_t *q = dst + 4;
        for (int i = 0; i < g / 2; i++) {
            int lo = (int)rintf((x[i] - m) * id), hi = (int)rintf((x[i + g / 2] - m) * id);
            lo = lo < 0 ? 0 : lo > 15 ? 15 : lo;
            hi = hi < 0 ? 0 : hi > 15 ? 15 : hi;
            q[i] = (uint8_t)(lo | hi << 4);
        }
        dst += 4 + g / 2;
    }
}

static void store_row(const sq_kvcache *c, const float *x, uint8_t *dst) {
    switch (c->type) {
    case SQ_KV_Q8: store_q8(x, dst, c->head_dim, c->group); break;
    case SQ_KV_Q4: store_q4(x, dst, c->head_dim, c->group); break;
    case SQ_KV_F32: memcpy(dst, x, (size_t)c->head_dim * sizeof *x); break;
    default: {
        uint16_t tmp[1024];
        for (int i = 0; i < c->head_dim; i += 1024) {
            int n = c->head_dim - i < 1024 ? c->head_dim - i : 1024;
            sq_fp32_to_fp16_row(x + i, tmp, n);
            memcpy(dst + 2 * (size_t)i, tmp, 2 * (size_t)n);
        }
    }
    }
}

static void load_row(const sq_kvcache *c, const uint8_t *src, float *out) {
    int hd = c->head_dim, g = c->group;
    if (c->type == SQ_KV_F16) {
        sq_fp16_to_fp32_row((const uint16_t *)src, out, hd); /* rows are 2-byte aligned */
        return;
    }
    if (c->type == SQ_KV_F32) {
        memcpy(out, src, (size_t)hd * sizeof *out);
        return;
    }
    for (int b = 0; b < hd / g; b++, out += g) {
        float d = sq_fp16_to_fp32_lut(get_u16(src));
        if (c->type == SQ_KV_Q8) {
            const int8_t *q = (const int8_t *)(src + 2);
            for (int i = 0; i < g; i++) out[i] = d * q[i];
            src += 2 + g;
        } else {
            float m = sq_fp16_to_fp32_lut(get_u16(src + 2));
            const uint8_t *q = src + 4;
            for (int i = 0; i < g / 2; i++) {
                out[i] = m + d * (q[i] & 15);
                out[i + g / 2] = m + d * (q[i] >> 4);
            }
            src += 4 + g / 2;
        }
    }
}

void sq_kv_store(sq_kvcache *c, int layer, int head, int pos, const float *k, const float *v) {
    store_row(c, k, row(c, c->k, layer, head, pos));
    store_row(c, v, row(c, c->v, layer, head, pos));
}

void sq_kv_load_k(const sq_kvcache *c, int layer, int head, int p0, int p1, float *out) {
    for (int p = p0; p < p1; p++) load_row(c, row(c, c->k, layer, head, p), out + (size_t)(p - p0) * c->head_dim);
}

void sq_kv_load_v(const sq_kvcache *c, int layer, int head, int p0, int p1, float *out) {
    for (int p = p0; p < p1; p++) load_row(c, row(c, c->v, layer, head, p), out + (size_t)(p - p0) * c->head_dim);
}
