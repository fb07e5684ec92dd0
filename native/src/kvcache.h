/* kvcache.h — the attention KV cache (internal).
 *
 * Layout: [layer][kv_head][position][head_dim] for K and for V, so that attention reads one head's
 * positions contiguously. Element types (sq_kv_type, chosen at load):
 *   f16: IEEE half per value (the default).  f32: float per value (what reference.py computes).
 *   q8:  blocks of `group` values (32, or head_dim when it is not a multiple of 32):
 *        fp16 d + group int8, value = d·q, d = max|x|/127 (symmetric).
 *   q4:  blocks of `group` values: fp16 d, fp16 m, group/2 bytes (value i low nibble, i+group/2
 *        high nibble), value = m + d·q with q in [0, 15], d = (max-min)/15, m = min (asymmetric).
 */
#ifndef SQ_KVCACHE_H
#define SQ_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "specquant.h"

typedef struct {
    int type;          /* sq_kv_type */
    int n_layer, n_kv_head, head_dim, n_ctx;
    int group;         /* q8/q4 block size along head_dim */
    size_t row_bytes;  /* bytes of one (head, position) row */
    uint8_t *k, *v;
} sq_kvcache;

sq_status sq_kv_init(sq_kvcache *c, int type, int n_layer, int n_kv_head, int head_dim, int n_ctx);
void sq_kv_free(sq_kvcache *c);
size_t sq_kv_bytes(const sq_kvcache *c);

/* Stores the K and V rows (head_dim floats each) of one head at one position. */
void sq_kv_store(sq_kvcache *c, int layer, int head, int pos, const float *k, const float *v);
/* Reads positions [p0, p1) of one head as floats: out[(p - p0)*head_dim + i]. */
void sq_kv_load_k(const sq_kvcache *c, int layer, int head, int p0, int p1, float *out);
void sq_kv_load_v(const sq_kvcache *c, int layer, int head, int p0, int p1, float *out);

#endif
