// pyturbo: what ggml's Metal backend supports for the turbo KV-cache types
// (host side; compiled into ggml-metal, called from ggml-metal-device.m and
// ggml-metal-ops.cpp through patches/0008-turbo-metal.patch).
#pragma once

#include "ggml.h"

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// For an op that involves a turbo type (as its type or a source's): sets
// *supported to whether the Metal backend runs it and returns true. Returns
// false for every other op and for views (no kernel runs), which upstream's
// checks then decide.
//   SET_ROWS:                   F32 -> turboN
//   CPY/DUP/CONT:               F32 -> turboN, turboN -> F32/F16
//   GET_ROWS:                   turboN -> F32
//   FLASH_ATTN_EXT:             K/V pairs turboN/turboN and q8_0/turboN, head
//                               sizes 64, 128, 256 with DK == DV (the kernels
//                               in fa_turbo.metal and fa_vec_turbo.metal)
//   anything else (MUL_MAT included): not supported; the scheduler runs it on the CPU.
bool pyturbo_metal_supports_op(const struct ggml_tensor * op, bool has_simdgroup_mm, bool * supported);

// Whether flash attention over this K type and V type has Metal kernels
// (any head size); a pair of different types is always a turbo pair.
bool pyturbo_metal_fa_kv_types_supported(enum ggml_type k, enum ggml_type v);

// The K/V part of a flash-attention kernel's name, into buf: "f16" when K and V go
// through the F16 pre-pass, the K type when V has the same type, else "<K>_<V>" (a
// q8_0 K with a turbo V: pyturbo's kernels, named after both types).
void pyturbo_metal_fa_kv_type_name(const struct ggml_tensor * op, bool use_kv_f16, char * buf, size_t size);

#ifdef __cplusplus
}
#endif
