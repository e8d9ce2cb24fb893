// pyturbo: CPU-backend functions of the turbo KV-cache types (ggml-cpu's
// type_traits_cpu rows and flash attention point here).
#pragma once

#include "ggml.h"

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ggml_compute_params;

// from_float: same codes as quantize_row_turboN_ref (tests compare them)
void quantize_row_turbo2(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
void quantize_row_turbo3(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
void quantize_row_turbo4(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
void quantize_row_turbo3t(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
void quantize_row_turbo2t(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);

// to_float of the CPU backend: the values of dequantize_row_turboN, with SIMD
void pyturbo_dequantize_row_turbo2(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
void pyturbo_dequantize_row_turbo3(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
void pyturbo_dequantize_row_turbo4(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
void pyturbo_dequantize_row_turbo3t(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
void pyturbo_dequantize_row_turbo2t(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);

// vec_dot with vec_dot_type F32: s[0] = dot(dequantized x, y) over n values
void ggml_vec_dot_turbo2_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_turbo3_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_turbo4_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_turbo3t_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_turbo2t_f32(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);

// Flash attention over quantized K and/or V (turbo-fattn.cpp): computes dst
// and returns true, or returns false (before touching anything) when llama.cpp's
// own paths should run: F16/F32 caches of one type, the reference mode, or a
// shape it does not take. Every thread of the op gets the same answer.
bool   pyturbo_flash_attn_ext(const struct ggml_compute_params * params, struct ggml_tensor * dst);
// Scratch bytes the op needs for n_tasks threads (0 when it does not take the op).
size_t pyturbo_flash_attn_ext_work_size(const struct ggml_tensor * dst, int n_tasks);

#ifdef __cplusplus
}
#endif
