/* half.h — fast fp16 -> fp32 for rows of fp16 data (KV cache, spectral coefficients, F16 weights).
 * Conversion is exact, so every path (F16C or the 64 K-entry table) gives identical floats. */
#ifndef SQ_HALF_H
#define SQ_HALF_H

#include <stdint.h>

/* Builds the table once (thread-safe); called by sq_model_load, harmless to call again. */
void sq_half_init(void);
void sq_half_to_float_row(const uint16_t *src, float *dst, int n);
/* Single value (table lookup; sq_half_init must have run). */
float sq_half_to_float(uint16_t h);
/* fp32 -> fp16, round to nearest even (for the KV cache). */
void sq_float_to_half_row(const float *src, uint16_t *dst, int n);

#endif
