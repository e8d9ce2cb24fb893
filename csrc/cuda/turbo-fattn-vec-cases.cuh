// pyturbo: the flash-attention vector kernel instances of the turbo K/V pairs,
// declared here (included at the end of ggml-cuda's fattn-vec.cuh) and compiled
// in csrc/cuda/template-instances/, one file per pair, when the pair is selected
// (PYTURBO_CUDA_FA_TURBO or GGML_CUDA_FA_QUANTS, csrc/cuda/pyturbo-cuda.cmake).
// fattn.cu picks them by the GGML_CUDA_FA_<K>_<V> macros, as the upstream pairs.
#pragma once

#define TURBO_EXTERN_DECL_FATTN_VEC_CASES(type_K, type_V) \
    extern DECL_FATTN_VEC_CASE( 64, type_K, type_V);     \
    extern DECL_FATTN_VEC_CASE(128, type_K, type_V);     \
    extern DECL_FATTN_VEC_CASE(256, type_K, type_V);     \

TURBO_EXTERN_DECL_FATTN_VEC_CASES(GGML_TYPE_TURBO2, GGML_TYPE_TURBO2)
TURBO_EXTERN_DECL_FATTN_VEC_CASES(GGML_TYPE_TURBO3, GGML_TYPE_TURBO3)
TURBO_EXTERN_DECL_FATTN_VEC_CASES(GGML_TYPE_TURBO4, GGML_TYPE_TURBO4)
TURBO_EXTERN_DECL_FATTN_VEC_CASES(GGML_TYPE_Q8_0,   GGML_TYPE_TURBO2)
TURBO_EXTERN_DECL_FATTN_VEC_CASES(GGML_TYPE_Q8_0,   GGML_TYPE_TURBO3)
TURBO_EXTERN_DECL_FATTN_VEC_CASES(GGML_TYPE_Q8_0,   GGML_TYPE_TURBO4)
