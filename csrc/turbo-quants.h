// pyturbo: reference quantize / dequantize for the turbo KV-cache types
// (compiled into ggml-base; the CPU backend and the type_traits table use them).
#pragma once

#define GGML_COMMON_DECL_C
#include "ggml-common.h"
#include "turbo-common.h"

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

// Picks the codes of one block of QK_TURBO values: codes[j] = the number of
// thresholds thr[0..nthr) below x[j] * inv_scale. The reference is scalar; the
// CPU backend passes a SIMD one (the same comparisons, so the same codes).
typedef void (*turbo_pick_codes_t)(const float * GGML_RESTRICT x, float inv_scale, const float * GGML_RESTRICT thr, int nthr, uint8_t * GGML_RESTRICT codes);

// The reference code picker (scalar).
GGML_API void turbo_pick_codes_ref(const float * GGML_RESTRICT x, float inv_scale, const float * GGML_RESTRICT thr, int nthr, uint8_t * GGML_RESTRICT codes);

// Quantizers with the code picker as a parameter; the block scale is always
// computed here, in one place, so every caller gets identical scales.
GGML_API void quantize_row_turbo2_impl(const float * GGML_RESTRICT x, block_turbo2 * GGML_RESTRICT y, int64_t k, turbo_pick_codes_t pick);
GGML_API void quantize_row_turbo3_impl(const float * GGML_RESTRICT x, block_turbo3 * GGML_RESTRICT y, int64_t k, turbo_pick_codes_t pick);
GGML_API void quantize_row_turbo4_impl(const float * GGML_RESTRICT x, block_turbo4 * GGML_RESTRICT y, int64_t k, turbo_pick_codes_t pick);

GGML_API void quantize_row_turbo2_ref(const float * GGML_RESTRICT x, block_turbo2 * GGML_RESTRICT y, int64_t k);
GGML_API void quantize_row_turbo3_ref(const float * GGML_RESTRICT x, block_turbo3 * GGML_RESTRICT y, int64_t k);
GGML_API void quantize_row_turbo4_ref(const float * GGML_RESTRICT x, block_turbo4 * GGML_RESTRICT y, int64_t k);

GGML_API void dequantize_row_turbo2(const block_turbo2 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void dequantize_row_turbo3(const block_turbo3 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void dequantize_row_turbo4(const block_turbo4 * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);

// ggml_quantize_chunk entries; imatrix is ignored (runtime KV data has none).
GGML_API size_t quantize_turbo2(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
GGML_API size_t quantize_turbo3(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
GGML_API size_t quantize_turbo4(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix);

#ifdef __cplusplus
}
#endif
