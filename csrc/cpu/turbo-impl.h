// pyturbo: how the CPU kernels of the turbo types are chosen (internal).
//
// As in ggml's arch-fallback.h: csrc/cpu/turbo.c always compiles the scalar
// reference kernels under *_generic names; csrc/cpu/arch/<arch>/turbo.c
// defines the SIMD kernels under the plain names for the instruction sets the
// backend is compiled for (GGML_NATIVE / GGML_CPU_ALL_VARIANTS pick those). On
// any other target the generic kernels are renamed to the plain names below.
#pragma once

#include "turbo.h"
#include "turbo-quants.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#define PYTURBO_TURBO_ARCH_X86 1
#elif defined(__ARM_NEON) && defined(__aarch64__)
#define PYTURBO_TURBO_ARCH_ARM 1
#else
#define pyturbo_pick_codes_generic            pyturbo_pick_codes
#define pyturbo_dequantize_row_turbo2_generic pyturbo_dequantize_row_turbo2
#define pyturbo_dequantize_row_turbo3_generic pyturbo_dequantize_row_turbo3
#define pyturbo_dequantize_row_turbo4_generic pyturbo_dequantize_row_turbo4
#define ggml_vec_dot_turbo2_f32_generic       ggml_vec_dot_turbo2_f32
#define ggml_vec_dot_turbo3_f32_generic       ggml_vec_dot_turbo3_f32
#define ggml_vec_dot_turbo4_f32_generic       ggml_vec_dot_turbo4_f32
#define pyturbo_dequantize_row_turbo3t_generic pyturbo_dequantize_row_turbo3t
#define pyturbo_dequantize_row_turbo2t_generic pyturbo_dequantize_row_turbo2t
#endif

#ifdef __cplusplus
extern "C" {
#endif

// codes[j] = number of thr[0..nthr) below x[j]*inv_scale, for one block (turbo_pick_codes_t)
void pyturbo_pick_codes        (const float * GGML_RESTRICT x, float inv_scale, const float * GGML_RESTRICT thr, int nthr, uint8_t * GGML_RESTRICT codes);
void pyturbo_pick_codes_generic(const float * GGML_RESTRICT x, float inv_scale, const float * GGML_RESTRICT thr, int nthr, uint8_t * GGML_RESTRICT codes);

void pyturbo_dequantize_row_turbo2_generic(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
void pyturbo_dequantize_row_turbo3_generic(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
void pyturbo_dequantize_row_turbo4_generic(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
void pyturbo_dequantize_row_turbo3t_generic(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
void pyturbo_dequantize_row_turbo2t_generic(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);

void ggml_vec_dot_turbo2_f32_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_turbo3_f32_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
void ggml_vec_dot_turbo4_f32_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);

#ifdef __cplusplus
}
#endif
