// pyturbo: the trellis-coded turbo types turbo3t and turbo2t, reference encoder and decoder
// (compiled into ggml-base; the CPU backend and the type_traits table use them).
//
// A block of QK_TURBO rotated values is coded by a walk through a bitshift trellis: the
// block is a bit string B (little-endian, starting with the 16-bit head), and value i
// reconstructs as d * kvalues_turboNt[state_i], where state_i is the window of 6 + k bits
// B[10 + k*i .. 16 + k*(i+1)) (k = 3 for turbo3t, 2 for turbo2t). Consecutive windows
// overlap in 6 bits, so choosing the k new bits of each value is a shortest-path problem
// over 2^(6+k) states, solved exactly per block by the Viterbi search below. The first
// window's 6 older bits (B[10..16)) are free: they sit in the head next to a 10-bit scale.
// See docs/tcq-design-notes.md for the design and its measurements.
#pragma once

#define GGML_COMMON_DECL_C
#include "ggml-common.h"
#include "turbo-common.h"

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

// Viterbi search for one block of QK_TURBO unit-scale values y on the trellis of k bits per
// value (k = 2 or 3) with reconstruction table values (2^(6+k) entries): writes the trellis
// state of every value to states[QK_TURBO] and returns the squared error of the best walk.
// Ties go to the lowest state, and every sum is a plain multiply-then-add, so any build of
// this function, vectorized or not, picks the same walk.
GGML_API float turbo_tcq_viterbi(const float * GGML_RESTRICT y, const float * GGML_RESTRICT values, int k, uint16_t * GGML_RESTRICT states);

// The state of value i of a block's bit string (block_bytes long), k bits per value.
GGML_API int turbo_tcq_state(const uint8_t * GGML_RESTRICT block, int block_bytes, int k, int i);

// The scale of a block head (10 bits: fp16 bits 5..14 of a positive scale).
GGML_API float turbo_tcq_scale(uint16_t head);

GGML_API void quantize_row_turbo3t_ref(const float * GGML_RESTRICT x, block_turbo3t * GGML_RESTRICT y, int64_t k);
GGML_API void quantize_row_turbo2t_ref(const float * GGML_RESTRICT x, block_turbo2t * GGML_RESTRICT y, int64_t k);

GGML_API void dequantize_row_turbo3t(const block_turbo3t * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void dequantize_row_turbo2t(const block_turbo2t * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);

// ggml_quantize_chunk entries; imatrix is ignored (runtime KV data has none).
GGML_API size_t quantize_turbo3t(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
GGML_API size_t quantize_turbo2t(const float * GGML_RESTRICT src, void * GGML_RESTRICT dst, int64_t nrows, int64_t n_per_row, const float * imatrix);

// ggml_validate_row_data: every head's scale is finite.
GGML_API bool turbo_tcq_validate_row(enum ggml_type type, const void * data, size_t nbytes);

#ifdef __cplusplus
}
#endif
