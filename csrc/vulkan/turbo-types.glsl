// pyturbo: turbo2/turbo3/turbo4 and the trellis-coded turbo3t/turbo2t for ggml's Vulkan
// shaders: block structs, codebooks and the codes of one value, the same layout and
// constants as csrc/turbo-common.h.
// types.glsl includes this file (patches/0011), so every shader that names a type can
// name these; DATA_A_TURBO2/3/4 select one as the A type the way DATA_A_Q8_0 does.

#if !defined(PYTURBO_TURBO_TYPES_GLSL)
#define PYTURBO_TURBO_TYPES_GLSL

// ggml type ids (ggml.h as patches/0001 extends it)
#define GGML_TYPE_TURBO2 43u
#define GGML_TYPE_TURBO3 44u
#define GGML_TYPE_TURBO4 45u
#define GGML_TYPE_TURBO3T 46u
#define GGML_TYPE_TURBO2T 47u

#define QUANT_K_TURBO 64
#define QUANT_K_TURBO2 QUANT_K_TURBO
#define QUANT_K_TURBO3 QUANT_K_TURBO
#define QUANT_K_TURBO4 QUANT_K_TURBO
#define QUANT_R_TURBO2 1
#define QUANT_R_TURBO3 1
#define QUANT_R_TURBO4 1
#define QUANT_K_TURBO3T QUANT_K_TURBO
#define QUANT_K_TURBO2T QUANT_K_TURBO
#define QUANT_R_TURBO3T 1
#define QUANT_R_TURBO2T 1

// The trellis types (csrc/turbo-tcq.h): a block is one little-endian bit string, a 10-bit
// scale head, then 6 free start bits and k bits per value; value i is
// d * kvalues_turboNt[state_i], state_i the 6 + k bits at bit 10 + k*i.
#define TURBO_TCQ_START_BITS 6
#define TURBO_TCQ_GROUPS 64
#define TURBO3T_BYTES (2 + QUANT_K_TURBO * 3 / 8)
#define TURBO2T_BYTES (2 + QUANT_K_TURBO * 2 / 8)

// Re-picks of a block's codes at the least-squares scale of the previous ones
// (TURBO_LSQ_REPICKS in turbo-common.h).
#define TURBO_LSQ_REPICKS 3

// qs[j]: elements j, j+16, j+32, j+48 in bits 0-1, 2-3, 4-5, 6-7.
struct block_turbo2 {
    float16_t d;
    uint8_t qs[QUANT_K_TURBO / 4];
};

struct block_turbo2_packed16 {
    float16_t d;
    uint16_t qs[QUANT_K_TURBO / 8];
};

// turbo2's layout for the low 2 bits; the high bit of element j is bit j % 8 of qh[j / 8].
struct block_turbo3 {
    float16_t d;
    uint8_t qs[QUANT_K_TURBO / 4];
    uint8_t qh[QUANT_K_TURBO / 8];
};

struct block_turbo3_packed16 {
    float16_t d;
    uint16_t qs[QUANT_K_TURBO / 8];
    uint16_t qh[QUANT_K_TURBO / 16];
};

// qs[j]: element j in the low nibble, element j+32 in the high nibble.
struct block_turbo4 {
    float16_t d;
    uint8_t qs[QUANT_K_TURBO / 2];
};

struct block_turbo4_packed16 {
    float16_t d;
    uint16_t qs[QUANT_K_TURBO / 4];
};

struct block_turbo3t {
    uint8_t b[TURBO3T_BYTES];
};

struct block_turbo3t_packed16 {
    uint16_t words[TURBO3T_BYTES / 2];
};

struct block_turbo2t {
    uint8_t b[TURBO2T_BYTES];
};

struct block_turbo2t_packed16 {
    uint16_t words[TURBO2T_BYTES / 2];
};

#if defined(DATA_A_TURBO2)
#define QUANT_K QUANT_K_TURBO2
#define QUANT_R QUANT_R_TURBO2
#define QUANT_AUXF 1
#define A_TYPE block_turbo2
#define A_TYPE_PACKED16 block_turbo2_packed16
#endif

#if defined(DATA_A_TURBO3)
#define QUANT_K QUANT_K_TURBO3
#define QUANT_R QUANT_R_TURBO3
#define QUANT_AUXF 1
#define A_TYPE block_turbo3
#define A_TYPE_PACKED16 block_turbo3_packed16
#endif

#if defined(DATA_A_TURBO4)
#define QUANT_K QUANT_K_TURBO4
#define QUANT_R QUANT_R_TURBO4
#define QUANT_AUXF 1
#define A_TYPE block_turbo4
#define A_TYPE_PACKED16 block_turbo4_packed16
#endif

#if defined(DATA_A_TURBO3T)
#define QUANT_K QUANT_K_TURBO3T
#define QUANT_R QUANT_R_TURBO3T
#define QUANT_AUXF 1
#define A_TYPE block_turbo3t
#define A_TYPE_PACKED16 block_turbo3t_packed16
#define TURBO_TCQ_K 3u
#define TURBO_TCQ_BYTES TURBO3T_BYTES
#define TURBO_TCQ_VALUES kvalues_turbo3t
#endif

#if defined(DATA_A_TURBO2T)
#define QUANT_K QUANT_K_TURBO2T
#define QUANT_R QUANT_R_TURBO2T
#define QUANT_AUXF 1
#define A_TYPE block_turbo2t
#define A_TYPE_PACKED16 block_turbo2t_packed16
#define TURBO_TCQ_K 2u
#define TURBO_TCQ_BYTES TURBO2T_BYTES
#define TURBO_TCQ_VALUES kvalues_turbo2t
#endif

// Lloyd-Max centroids of N(0,1) and the thresholds between them: turbo-common.h's floats.
const float kvalues_turbo2[4] = float[4](-1.5104176, -0.4527800, 0.4527800, 1.5104176);
const float kvalues_turbo3[8] = float[8](-2.1519457, -1.3439093, -0.7560053, -0.2450942,
                                          0.2450942,  0.7560053,  1.3439093,  2.1519457);
const float kvalues_turbo4[16] = float[16](-2.7325896, -2.0690172, -1.6180464, -1.2562312,
                                           -0.9423405, -0.6567591, -0.3880483, -0.1283950,
                                            0.1283950,  0.3880483,  0.6567591,  0.9423405,
                                            1.2562312,  1.6180464,  2.0690172,  2.7325896);
const float kthresh_turbo2[3] = float[3](-0.98159880, 0.0, 0.98159880);
const float kthresh_turbo3[7] = float[7](-1.74792750, -1.04995730, -0.50054975, 0.0,
                                          0.50054975,  1.04995730,  1.74792750);
const float kthresh_turbo4[15] = float[15](-2.40080340, -1.84353180, -1.43713880, -1.09928585,
                                           -0.79954980, -0.52240370, -0.25822165,  0.0,
                                            0.25822165,  0.52240370,  0.79954980,  1.09928585,
                                            1.43713880,  1.84353180,  2.40080340);

// The code of element j from a block's bytes.
uint turbo2_code(uint qs_byte, uint j) {
    return (qs_byte >> (2u * (j / 16u))) & 3u;
}

uint turbo3_code(uint qs_byte, uint qh_byte, uint j) {
    return ((qs_byte >> (2u * (j / 16u))) & 3u) | (((qh_byte >> (j % 8u)) & 1u) << 2);
}

uint turbo4_code(uint qs_byte, uint j) {
    return (qs_byte >> (4u * (j / 32u))) & 15u;
}

// fa_block_elems's cases (fa_types.glsl, patches/0011)
#define PYTURBO_FA_BLOCK_ELEMS_CASES                                                   \
    case GGML_TYPE_TURBO2: case GGML_TYPE_TURBO3: case GGML_TYPE_TURBO4:               \
    case GGML_TYPE_TURBO3T: case GGML_TYPE_TURBO2T: return uint(QUANT_K_TURBO);

// fa_type_needs_shmem's cases: the trellis tables (turbo-fa.glsl)
#define PYTURBO_FA_NEEDS_SHMEM_CASES \
    case GGML_TYPE_TURBO3T: case GGML_TYPE_TURBO2T: return true;

// The trellis state (6 + k bits) at bit `bit` of a block, from the two bytes it spans
// (lo, and hi, 0 past the block's end).
uint turbo_tcq_window(uint lo, uint hi, uint bit, uint k) {
    return ((lo | (hi << 8)) >> (bit % 8u)) & ((TURBO_TCQ_GROUPS << k) - 1u);
}

// The scale of a head: its 10 bits are fp16 bits 5..14 of a positive scale.
float turbo_tcq_scale(uint head) {
    return unpackHalf2x16((head & 0x3FFu) << 5).x;
}

#include "turbo-tcq-tables.glsl"

#endif // PYTURBO_TURBO_TYPES_GLSL
