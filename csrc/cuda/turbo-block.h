// pyturbo: the per-block math of turbo2/turbo3/turbo4, written once for the
// CUDA kernels (device code) and for the host test that holds it to the CPU
// reference bit for bit (tests/native/turbo_cuda_block_check.cpp).
//
// Include after ggml-common.h and turbo-common.h. C++ (templates); as host code
// it is plain C++, under nvcc every function is __host__ __device__.
//
// What must match csrc/turbo-quants.c exactly: the code picker, the order of
// every float sum, and IEEE rounding of each product, sum, quotient and square
// root. On the device the arithmetic goes through the _rn intrinsics, which
// are never fused into FMAs and stay exact under -use_fast_math; the one thing
// the intrinsics cannot undo is flush-to-zero, so the translation unit that
// quantizes is compiled with -ftz=false (csrc/cuda/pyturbo-cuda.cmake). On the
// host the products and sums must not be contracted either (ggml builds with
// -ffp-contract=off, and so does the test).

#pragma once

#if !defined(PYTURBO_TURBO_COMMON_DECL)
#error "turbo-block.h: include ggml-common.h and turbo-common.h first"
#endif

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define TURBO_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TURBO_HOST_DEVICE inline
#endif
#define TURBO_FN static TURBO_HOST_DEVICE

// Set in nvcc's device pass only: device intrinsics there, portable C++ in the host pass.
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
#define TURBO_DEVICE_PASS 1
#define TURBO_UNROLL _Pragma("unroll")
#else
#define TURBO_UNROLL
#endif

// The float operations of the quantizer, each rounded once.
TURBO_FN float turbo_mul(float a, float b) {
#ifdef TURBO_DEVICE_PASS
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

TURBO_FN float turbo_add(float a, float b) {
#ifdef TURBO_DEVICE_PASS
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

TURBO_FN float turbo_div(float a, float b) {
#ifdef TURBO_DEVICE_PASS
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}

TURBO_FN float turbo_sqrt(float a) {
#ifdef TURBO_DEVICE_PASS
    return __fsqrt_rn(a);
#else
    return sqrtf(a);
#endif
}

// ---- codes in the block layouts of turbo-common.h -------------------------

TURBO_FN int turbo2_code(const uint8_t * qs, int j) {
    return (qs[j % 16] >> (2*(j / 16))) & 3;
}

TURBO_FN int turbo3_code(const uint8_t * qs, const uint8_t * qh, int j) {
    const int lo = (qs[j % 16] >> (2*(j / 16))) & 3;
    const int hi = (qh[j / 8] >> (j % 8)) & 1;
    return (hi << 2) | lo;
}

TURBO_FN int turbo4_code(const uint8_t * qs, int j) {
    return (qs[j % 32] >> (4*(j / 32))) & 0xF;
}

// One packed byte of a block, from the codes of all QK_TURBO values.
TURBO_FN uint8_t turbo2_qs_byte(const uint8_t * codes, int j) {
    return (uint8_t) (codes[j] | (codes[j + 16] << 2) | (codes[j + 32] << 4) | (codes[j + 48] << 6));
}

TURBO_FN uint8_t turbo3_qs_byte(const uint8_t * codes, int j) {
    return (uint8_t) ((codes[j] & 3) | ((codes[j + 16] & 3) << 2) | ((codes[j + 32] & 3) << 4) | ((codes[j + 48] & 3) << 6));
}

TURBO_FN uint8_t turbo3_qh_byte(const uint8_t * codes, int j) {
    int h = 0;
    for (int b = 0; b < 8; ++b) {
        h |= (codes[8*j + b] >> 2) << b;
    }
    return (uint8_t) h;
}

TURBO_FN uint8_t turbo4_qs_byte(const uint8_t * codes, int j) {
    return (uint8_t) (codes[j] | (codes[j + 32] << 4));
}

// ---- dequantization ---------------------------------------------------------

// ggml-cuda's qr=2 convention: one call gives values j and j + QK_TURBO/2
// (j < QK_TURBO/2), so convert.cu, cpy.cu and getrows.cu take the types as
// they are. d is the block scale as a float.
TURBO_FN void turbo2_dequantize_pair(const block_turbo2 * x, int j, float d, const float * values, float * v0, float * v1) {
    *v0 = turbo_mul(d, values[turbo2_code(x->qs, j)]);
    *v1 = turbo_mul(d, values[turbo2_code(x->qs, j + QK_TURBO2/2)]);
}

TURBO_FN void turbo3_dequantize_pair(const block_turbo3 * x, int j, float d, const float * values, float * v0, float * v1) {
    *v0 = turbo_mul(d, values[turbo3_code(x->qs, x->qh, j)]);
    *v1 = turbo_mul(d, values[turbo3_code(x->qs, x->qh, j + QK_TURBO3/2)]);
}

TURBO_FN void turbo4_dequantize_pair(const block_turbo4 * x, int j, float d, const float * values, float * v0, float * v1) {
    *v0 = turbo_mul(d, values[turbo4_code(x->qs, j)]);
    *v1 = turbo_mul(d, values[turbo4_code(x->qs, j + QK_TURBO4/2)]);
}

// ---- quantization -----------------------------------------------------------

// The code of a scaled value: the number of thresholds below it (ascending
// thresholds; a tie goes to the lower code, NaN to code 0).
template <int nthr>
TURBO_FN int turbo_pick_code(float y, const float * thr) {
    int code = 0;
TURBO_UNROLL
    for (int t = 0; t < nthr; ++t) {
        code += y > thr[t];
    }
    return code;
}

// The sums run in element order, as in the reference; unrolled on the device so
// that the loads of every term issue ahead of the chain of additions.

// Sum of squares.
TURBO_FN float turbo_block_sumsq(const float * x) {
    float sumsq = 0.0f;
TURBO_UNROLL
    for (int j = 0; j < QK_TURBO; ++j) {
        sumsq = turbo_add(sumsq, turbo_mul(x[j], x[j]));
    }
    return sumsq;
}

// Least-squares scale of the block for its codes: <x, c> / <c, c>.
TURBO_FN float turbo_block_lsq_scale(const float * x, const float * values, const uint8_t * codes) {
    float xc = 0.0f;
    float cc = 0.0f;
TURBO_UNROLL
    for (int j = 0; j < QK_TURBO; ++j) {
        const float c = values[codes[j]];
        xc = turbo_add(xc, turbo_mul(x[j], c));
        cc = turbo_add(cc, turbo_mul(c, c));
    }
    return turbo_div(xc, cc);
}

// The stored scale: the one that gives the dequantized block the input's norm.
TURBO_FN float turbo_block_norm_scale(float sumsq, const float * values, const uint8_t * codes) {
    float cc = 0.0f;
TURBO_UNROLL
    for (int j = 0; j < QK_TURBO; ++j) {
        const float c = values[codes[j]];
        cc = turbo_add(cc, turbo_mul(c, c));
    }
    return turbo_sqrt(turbo_div(sumsq, cc));
}

// Picks the codes of one block for the scale 1/inv_scale, one thread doing all
// of them (the host, and device code with a thread per block).
template <int nthr>
struct turbo_serial_picker {
    TURBO_HOST_DEVICE void pick(const float * x, float inv_scale, const float * thr, uint8_t * codes) const {
        for (int j = 0; j < QK_TURBO; ++j) {
            codes[j] = (uint8_t) turbo_pick_code<nthr>(turbo_mul(x[j], inv_scale), thr);
        }
    }
    TURBO_HOST_DEVICE void zero(uint8_t * codes) const {
        for (int j = 0; j < QK_TURBO; ++j) {
            codes[j] = 0;
        }
    }
};

// Codes and scale of one block, as quantize_row_turboN_ref does it: pick at unit
// variance, re-pick at the least-squares scale, store the norm-keeping scale.
// The picker fills codes[0..QK_TURBO) (every element, whichever thread picks
// it; a cooperative picker syncs before it returns, since the sums below read
// all codes). Returns the scale d, before rounding to fp16.
template <typename picker_t>
TURBO_FN float turbo_quantize_block(const float * x, const float * values, const float * thr, uint8_t * codes, const picker_t & picker) {
    const float sumsq = turbo_block_sumsq(x);
    if (!(sumsq > 0.0f)) {
        // all zero (or NaN): code 0 with a zero scale dequantizes to 0
        picker.zero(codes);
        return sumsq == 0.0f ? 0.0f : sumsq;
    }

    picker.pick(x, turbo_sqrt(turbo_div((float) QK_TURBO, sumsq)), thr, codes);

    for (int r = 0; r < TURBO_LSQ_REPICKS; ++r) {   // turbo-common.h: the same count for every backend
        const float d = turbo_block_lsq_scale(x, values, codes);
        if (!(d > 0.0f)) {
            break;
        }
        picker.pick(x, turbo_div(1.0f, d), thr, codes);
    }

    return turbo_block_norm_scale(sumsq, values, codes);
}

// ---- four consecutive values at once (the flash-attention K*Q dot) ----------
//
// The K*Q dot of ggml-cuda's vector kernel takes Q as int8 (q8_1), four values
// to an int. For a turbo K the four codes of the same elements are unpacked
// into the bytes of one int, looked up in the codebook scaled to 16-bit
// integers (two int8 planes, high and low byte, each looked up with a byte
// permute), and multiplied with dp4a: sum_k V16[code_k] * q_k, exact in int32.
// 2^-13 * that sum is the dot with the codebook to within 2^-14 per value.

#define TURBO_K16_SHIFT 13

// round(kvalues_turboN * 2^13): checked against turbo-common.h by the host test.
static constexpr int16_t turbo2_k16[4]  = { -12373, -3709, 3709, 12373 };
static constexpr int16_t turbo3_k16[8]  = { -17629, -11009, -6193, -2008, 2008, 6193, 11009, 17629 };
static constexpr int16_t turbo4_k16[16] = { -22385, -16949, -13255, -10291, -7720, -5380, -3179, -1052,
                                              1052,   3179,   5380,   7720, 10291, 13255, 16949, 22385 };

// Byte b of a 16-bit codebook entry as a signed int8 plane, v == 256*hi + lo.
constexpr int turbo_k16_hi(int v) { return (v + 128) >> 8; }
constexpr int turbo_k16_lo(int v) { return v - 256*turbo_k16_hi(v); }

// Entries 4w..4w+3 of one plane as the bytes of a word (absent entries are 0).
template <int n>
constexpr uint32_t turbo_k16_plane_word(const int16_t (&k16)[n], int w, bool hi) {
    uint32_t word = 0;
    for (int b = 0; b < 4; ++b) {
        const int k = 4*w + b;
        const int v = k < n ? (hi ? turbo_k16_hi(k16[k]) : turbo_k16_lo(k16[k])) : 0;
        word |= (uint32_t) (v & 0xFF) << (8*b);
    }
    return word;
}

// A codebook's planes, up to 16 entries.
struct turbo_k16_planes {
    uint32_t lo[4];
    uint32_t hi[4];
};

template <int n>
constexpr turbo_k16_planes turbo_make_k16_planes(const int16_t (&k16)[n]) {
    return turbo_k16_planes{
        { turbo_k16_plane_word(k16, 0, false), turbo_k16_plane_word(k16, 1, false),
          turbo_k16_plane_word(k16, 2, false), turbo_k16_plane_word(k16, 3, false) },
        { turbo_k16_plane_word(k16, 0, true),  turbo_k16_plane_word(k16, 1, true),
          turbo_k16_plane_word(k16, 2, true),  turbo_k16_plane_word(k16, 3, true) },
    };
}

static constexpr turbo_k16_planes turbo2_k16_planes = turbo_make_k16_planes(turbo2_k16);
static constexpr turbo_k16_planes turbo3_k16_planes = turbo_make_k16_planes(turbo3_k16);
static constexpr turbo_k16_planes turbo4_k16_planes = turbo_make_k16_planes(turbo4_k16);

// __byte_perm: byte n of the result is byte (s >> 4n) & 7 of y:x.
TURBO_FN uint32_t turbo_byte_perm(uint32_t x, uint32_t y, uint32_t s) {
#ifdef TURBO_DEVICE_PASS
    return __byte_perm(x, y, s);
#else
    const uint64_t xy = ((uint64_t) y << 32) | x;
    uint32_t r = 0;
    for (int n = 0; n < 4; ++n) {
        r |= (uint32_t) ((xy >> (8*((s >> (4*n)) & 7))) & 0xFF) << (8*n);
    }
    return r;
#endif
}

// dp4a: c + the dot of the four signed bytes of a and b.
TURBO_FN int turbo_dp4a(int a, int b, int c) {
#if defined(TURBO_DEVICE_PASS) && !defined(__HIP_DEVICE_COMPILE__) && __CUDA_ARCH__ >= 610
    return __dp4a(a, b, c);
#else
    for (int k = 0; k < 4; ++k) {
        c += (int) (int8_t) (a >> (8*k)) * (int) (int8_t) (b >> (8*k));
    }
    return c;
#endif
}

// Codes of values j..j+3 (j % 4 == 0) in the bytes of an int. qs4: the four
// bytes qs[j%16..] (turbo2, turbo3) or qs[j%32..] (turbo4); qh8: the byte qh[j/8].
TURBO_FN uint32_t turbo2_codes4(uint32_t qs4, int j) {
    return (qs4 >> (2*(j / 16))) & 0x03030303u;
}

TURBO_FN uint32_t turbo3_codes4(uint32_t qs4, uint32_t qh8, int j) {
    const uint32_t lo = (qs4 >> (2*(j / 16))) & 0x03030303u;
    const uint32_t h  = (qh8 >> (j % 8)) & 0xFu;
    // bits 0..3 of h to bit 0 of bytes 0..3 (the shifted copies do not overlap), then to bit 2
    return lo | (((h * 0x00204081u) & 0x01010101u) << 2);
}

TURBO_FN uint32_t turbo4_codes4(uint32_t qs4, int j) {
    return (qs4 >> (4*(j / 32))) & 0x0F0F0F0Fu;
}

// sum_k k16[code_k] * q_k for the four codes in the bytes of codes4 and the
// four int8 in q, with nvals = 4, 8 or 16 codebook entries.
//
// A byte permute takes 3-bit selectors in the nibbles of its low 16 bits;
// codes4 | codes4 >> 12 puts the codes there in the order 0, 2, 1, 3, so q is
// permuted the same way. Entries 8..15 are looked up in the second pair of
// words and chosen by bit 3 of the code.
template <int nvals>
TURBO_FN int turbo_dot4_k16(uint32_t codes4, int q, const turbo_k16_planes & planes) {
    static_assert(nvals == 4 || nvals == 8 || nvals == 16, "a turbo codebook has 4, 8 or 16 entries");
    const uint32_t sel = codes4 | (codes4 >> 12);
    const int q_sel = (int) turbo_byte_perm((uint32_t) q, 0, 0x3120);
    uint32_t lo;
    uint32_t hi;
    if (nvals <= 8) {
        lo = turbo_byte_perm(planes.lo[0], planes.lo[1], sel);
        hi = turbo_byte_perm(planes.hi[0], planes.hi[1], sel);
    } else {
        const uint32_t upper = 0x3210u | ((sel & 0x8888u) >> 1);
        lo = turbo_byte_perm(turbo_byte_perm(planes.lo[0], planes.lo[1], sel), turbo_byte_perm(planes.lo[2], planes.lo[3], sel), upper);
        hi = turbo_byte_perm(turbo_byte_perm(planes.hi[0], planes.hi[1], sel), turbo_byte_perm(planes.hi[2], planes.hi[3], sel), upper);
    }
    return 256*turbo_dp4a((int) hi, q_sel, 0) + turbo_dp4a((int) lo, q_sel, 0);
}
