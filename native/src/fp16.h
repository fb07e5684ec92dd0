/* fp16.h — IEEE binary16 <-> binary32 (internal): every fp16 conversion of the runtime.
 *
 * Two speeds, the same bits for every non-NaN value (the conversion is exact):
 *  - sq_fp16_to_fp32 / sq_fp32_to_fp16: portable bit manipulation (round to nearest even), no
 *    set-up, independent of -ffast-math / flush-to-zero; NaN payloads survive a round trip;
 *  - sq_fp16_to_fp32_lut, and rows: a 64 K-entry table, rows with F16C where the CPU has it (KV
 *    cache, spectral coefficients, F16 weights). sq_fp16_init() must have run (sq_model_load
 *    calls it).
 */
#ifndef SQ_FP16_H
#define SQ_FP16_H

#include <stddef.h>
#include <stdint.h>

float sq_fp16_to_fp32(uint16_t h);
uint16_t sq_fp32_to_fp16(float f);

/* Builds the table and detects F16C once (thread-safe); harmless to call again. */
void sq_fp16_init(void);
/* One value by table lookup. */
float sq_fp16_to_fp32_lut(uint16_t h);
/* n values: F16C when the CPU has it, else the table. */
void sq_fp16_to_fp32_row(const uint16_t *src, float *dst, size_t n);
/* n values, round to nearest even: F16C when the CPU has it, else sq_fp32_to_fp16 (the KV cache). */
void sq_fp32_to_fp16_row(const float *src, uint16_t *dst, size_t n);

#endif
