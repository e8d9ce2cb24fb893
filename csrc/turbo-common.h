// pyturbo: TurboQuant KV-cache block types turbo2, turbo3, turbo4, and the trellis-coded turbo3t, turbo2t.
//
// One header for every backend (C, C++, CUDA, Metal). Include it after
// ggml-common.h, the way ggml's own sources do:
//
//     #define GGML_COMMON_DECL_C        // or _CPP, _CUDA, _METAL, ...
//     #include "ggml-common.h"
//     #include "turbo-common.h"         // block structs
//
// and, in the one translation unit per backend that needs the codebooks,
// define GGML_COMMON_IMPL_<backend> before ggml-common.h as well: the tables
// below are emitted with GGML_TABLE_BEGIN, like kvalues_iq4nl.
//
// Format: TurboQuant's scalar quantizer (Zandieh et al., arXiv 2504.19874,
// without the QJL residual) on blocks of QK_TURBO values. Values are stored in
// the rotated domain: llama.cpp applies a Walsh-Hadamard rotation to Q/K and V
// before they reach the cache, so every coordinate of a block is close to
// N(0, sigma^2) and one fixed Lloyd-Max codebook for N(0,1) serves every
// block. A value dequantizes to d * kvalues_turboN[code].

#ifndef PYTURBO_TURBO_COMMON_DECL
#define PYTURBO_TURBO_COMMON_DECL

#if !defined(GGML_COMMON_DECL)
#error "turbo-common.h: include ggml-common.h with a GGML_COMMON_DECL_* macro first"
#endif

#define QK_TURBO  64
#define QK_TURBO2 QK_TURBO
#define QK_TURBO3 QK_TURBO
#define QK_TURBO4 QK_TURBO

// Re-picks of a block's codes at the least-squares scale of the previous codes
// (csrc/turbo-quants.c); every backend's quantizer does the same number.
#define TURBO_LSQ_REPICKS 3

// 2 bits/value: codes 0..3 index kvalues_turbo2 (ascending).
// qs[j] holds elements j, j+16, j+32, j+48 in bits 0-1, 2-3, 4-5, 6-7.
typedef struct {
    ggml_half d;                  // block scale
    uint8_t   qs[QK_TURBO2 / 4];  // 2-bit codes
} block_turbo2;
static_assert(sizeof(block_turbo2) == sizeof(ggml_half) + QK_TURBO2 / 4, "wrong turbo2 block size/padding");

// 3 bits/value: code = (high bit << 2) | low 2 bits, indexing kvalues_turbo3.
// qs has the turbo2 layout for the low 2 bits; the high bit of element j is
// bit (j % 8) of qh[j / 8]. Two bit planes keep every load byte-aligned.
typedef struct {
    ggml_half d;                  // block scale
    uint8_t   qs[QK_TURBO3 / 4];  // low 2 bits of the codes
    uint8_t   qh[QK_TURBO3 / 8];  // high bit of the codes
} block_turbo3;
static_assert(sizeof(block_turbo3) == sizeof(ggml_half) + QK_TURBO3 / 4 + QK_TURBO3 / 8, "wrong turbo3 block size/padding");

// 4 bits/value: codes 0..15 index kvalues_turbo4.
// qs[j] holds element j in the low nibble and element j+32 in the high nibble.
typedef struct {
    ggml_half d;                  // block scale
    uint8_t   qs[QK_TURBO4 / 2];  // 4-bit codes
} block_turbo4;
static_assert(sizeof(block_turbo4) == sizeof(ggml_half) + QK_TURBO4 / 2, "wrong turbo4 block size/padding");

// Trellis-coded types (csrc/turbo-tcq.h): the block is one little-endian bit string B.
// head bits 0-9: the scale, fp16 bits 5..14 of a positive fp16 (5 exponent, 5 mantissa
// bits; 0 = an all-zero block); head bits 10-15 and qs: the trellis walk, k bits per
// value after 6 start bits. Value i = scale * kvalues_turboNt[B[10+k*i .. 16+k*(i+1))].
#define QK_TURBO3T QK_TURBO
#define QK_TURBO2T QK_TURBO
#define TURBO_TCQ_START_BITS 6
#define TURBO3T_STATES 512  // 2^(6+3)
#define TURBO2T_STATES 256  // 2^(6+2)

typedef struct {
    uint16_t head;                    // scale and start bits
    uint8_t  qs[QK_TURBO3T * 3 / 8];  // 3 bits per value
} block_turbo3t;
static_assert(sizeof(block_turbo3t) == 2 + QK_TURBO3T * 3 / 8, "wrong turbo3t block size/padding");

typedef struct {
    uint16_t head;                    // scale and start bits
    uint8_t  qs[QK_TURBO2T * 2 / 8];  // 2 bits per value
} block_turbo2t;
static_assert(sizeof(block_turbo2t) == 2 + QK_TURBO2T * 2 / 8, "wrong turbo2t block size/padding");

#endif // PYTURBO_TURBO_COMMON_DECL

#if defined(GGML_COMMON_IMPL) && !defined(PYTURBO_TURBO_COMMON_IMPL)
#define PYTURBO_TURBO_COMMON_IMPL

// Lloyd-Max centroids of N(0,1), ascending (the full symmetric table; index =
// code). Re-derived by Lloyd iteration to 1e-15; MSE per unit-variance value:
// 2 bits 0.11748, 3 bits 0.034548, 4 bits 0.0095010.
GGML_TABLE_BEGIN(float, kvalues_turbo2, 4)
    -1.5104176f, -0.4527800f, 0.4527800f, 1.5104176f,
GGML_TABLE_END()

GGML_TABLE_BEGIN(float, kvalues_turbo3, 8)
    -2.1519457f, -1.3439093f, -0.7560053f, -0.2450942f,
     0.2450942f,  0.7560053f,  1.3439093f,  2.1519457f,
GGML_TABLE_END()

GGML_TABLE_BEGIN(float, kvalues_turbo4, 16)
    -2.7325896f, -2.0690172f, -1.6180464f, -1.2562312f,
    -0.9423405f, -0.6567591f, -0.3880483f, -0.1283950f,
     0.1283950f,  0.3880483f,  0.6567591f,  0.9423405f,
     1.2562312f,  1.6180464f,  2.0690172f,  2.7325896f,
GGML_TABLE_END()

// Decision thresholds: midpoints of neighbouring centroids. A scaled value y
// gets code = number of thresholds t with y > t (ties go to the lower code).
// Every backend's quantizer uses these same float constants so that all of
// them produce the same codes.
GGML_TABLE_BEGIN(float, kthresh_turbo2, 3)
    -0.98159880f, 0.0f, 0.98159880f,
GGML_TABLE_END()

GGML_TABLE_BEGIN(float, kthresh_turbo3, 7)
    -1.74792750f, -1.04995730f, -0.50054975f, 0.0f,
     0.50054975f,  1.04995730f,  1.74792750f,
GGML_TABLE_END()

GGML_TABLE_BEGIN(float, kthresh_turbo4, 15)
    -2.40080340f, -1.84353180f, -1.43713880f, -1.09928585f,
    -0.79954980f, -0.52240370f, -0.25822165f,  0.0f,
     0.25822165f,  0.52240370f,  0.79954980f,  1.09928585f,
     1.43713880f,  1.84353180f,  2.40080340f,
GGML_TABLE_END()

// The trellis types' reconstruction tables (generated by csrc/turbo-tcq-codebook.py)
#include "turbo-tcq-tables.h"

#endif // GGML_COMMON_IMPL && !PYTURBO_TURBO_COMMON_IMPL
