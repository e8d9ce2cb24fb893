// pyturbo: flash-attention vector kernel, K q8_0, V turbo4, head sizes 64/128/256
// (declared in csrc/cuda/turbo-fattn-vec-cases.cuh).

#include "fattn-vec.cuh"

DECL_FATTN_VEC_CASE( 64, GGML_TYPE_Q8_0, GGML_TYPE_TURBO4);
DECL_FATTN_VEC_CASE(128, GGML_TYPE_Q8_0, GGML_TYPE_TURBO4);
DECL_FATTN_VEC_CASE(256, GGML_TYPE_Q8_0, GGML_TYPE_TURBO4);
