// pyturbo: flash-attention vector kernel, K turbo3, V turbo3, head sizes 64/128/256
// (declared in csrc/cuda/turbo-fattn-vec-cases.cuh).

#include "fattn-vec.cuh"

DECL_FATTN_VEC_CASE( 64, GGML_TYPE_TURBO3, GGML_TYPE_TURBO3);
DECL_FATTN_VEC_CASE(128, GGML_TYPE_TURBO3, GGML_TYPE_TURBO3);
DECL_FATTN_VEC_CASE(256, GGML_TYPE_TURBO3, GGML_TYPE_TURBO3);
