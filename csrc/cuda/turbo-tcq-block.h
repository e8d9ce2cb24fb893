// pyturbo: the per-block math of the trellis-coded types turbo3t and turbo2t, written once
// for CUDA device code and for the host test that holds it to the CPU reference bit for bit
// (tests/native/turbo_cuda_tcq_check.cpp). Include after turbo-block.h (its rounding
// helpers: every product and sum rounded once, never fused).
//
// The format is csrc/turbo-common.h's: value i = scale * kvalues_turboNt[state_i], state_i
// the 6+k bits of the block's bit string at 10 + k*i. Decoding a value is one 16-bit read,
// a shift, a mask and a table load. Encoding is the reference's exact Viterbi search
// (csrc/turbo-tcq-encode.h) with the same float operations in the same order and the same
// tie-breaking (the lower branch, the lower final state), so the blocks are identical; here
// one thread searches one block (the host, and a device kernel with a thread per block).
//
// Not yet called by ggml-cuda's kernels: ggml-cuda's supports_op does not list these types,
// so their ops run on the CPU backend (README, "Trellis-coded types").

#pragma once

#if !defined(PYTURBO_TURBO_COMMON_DECL)
#error "turbo-tcq-block.h: include ggml-common.h, turbo-common.h and turbo-block.h first"
#endif

#include <stdint.h>
#include <string.h>

#define TURBO_TCQ_GROUPS (1 << TURBO_TCQ_START_BITS)

// ---- fp16 bits, rounded to nearest even as ggml's own conversion ---------------------

TURBO_FN uint16_t turbo_fp16_bits(float f) {
#ifdef TURBO_DEVICE_PASS
    return __half_as_ushort(__float2half_rn(f));
#else
    uint32_t x;
    memcpy(&x, &f, sizeof(x));
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax   = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) {
        return (uint16_t) (sign | (ax > 0x7F800000u ? 0x7E00u : 0x7C00u));   // NaN, infinity
    }
    if (ax >= 0x477FF000u) {
        return (uint16_t) (sign | 0x7C00u);   // 65520 and up round to infinity
    }
    if (ax < 0x38800000u) {                   // below 2^-14: a subnormal half, in units of 2^-24
        return (uint16_t) (sign | (uint32_t) rintf(fabsf(f) * 16777216.0f));
    }
    uint32_t h = (((ax >> 23) - 112u) << 10) | ((ax & 0x7FFFFFu) >> 13);
    const uint32_t rest = ax & 0x1FFFu;
    h += rest > 0x1000u || (rest == 0x1000u && (h & 1u));
    return (uint16_t) (sign | h);
#endif
}

TURBO_FN float turbo_fp16_value(uint16_t h) {
#ifdef TURBO_DEVICE_PASS
    return __half2float(__ushort_as_half(h));
#else
    const int e = (h >> 10) & 0x1F;
    const int m = h & 0x3FF;
    if (e == 31) {   // infinity, or NaN with the half's payload, as ggml converts them
        const uint32_t bits = ((uint32_t) (h & 0x8000) << 16) | 0x7F800000u | ((uint32_t) m << 13);
        float v;
        memcpy(&v, &bits, sizeof(v));
        return v;
    }
    const float v = e == 0 ? ldexpf((float) m, -24) : ldexpf((float) (m | 0x400), e - 25);
    return (h & 0x8000) ? -v : v;
#endif
}

// ---- decoding ------------------------------------------------------------------------

TURBO_FN uint16_t turbo_tcq_head(const uint8_t * block) {
    return (uint16_t) (block[0] | (block[1] << 8));
}

// The block scale: head bits 0-9 are fp16 bits 5..14 of a positive fp16.
TURBO_FN float turbo_tcq_scale_of(uint16_t head) {
    return turbo_fp16_value((uint16_t) ((head & 0x3FF) << 5));
}

TURBO_FN int turbo_tcq_state_at(const uint8_t * block, int block_bytes, int k, int i) {
    const int bit  = 16 - TURBO_TCQ_START_BITS + k*i;
    const int byte = bit >> 3;
    const unsigned word = block[byte] | (byte + 1 < block_bytes ? (unsigned) block[byte + 1] << 8 : 0u);
    return (int) ((word >> (bit & 7)) & ((TURBO_TCQ_GROUPS << k) - 1));
}

// ggml-cuda's qr=2 convention: values j and j + QK_TURBO/2.
TURBO_FN void turbo_tcq_dequantize_pair(const uint8_t * block, int block_bytes, int k, int j, float d,
                                        const float * values, float * v0, float * v1) {
    *v0 = turbo_mul(d, values[turbo_tcq_state_at(block, block_bytes, k, j)]);
    *v1 = turbo_mul(d, values[turbo_tcq_state_at(block, block_bytes, k, j + QK_TURBO/2)]);
}

// ---- encoding ------------------------------------------------------------------------

// The best walk for unit-scale values y: states[i] for every value. Natural state order
// (the reference keeps another memory layout for vectorizing; the arithmetic is the same).
TURBO_FN void turbo_tcq_viterbi_serial(const float * y, const float * values, int k, uint16_t * states) {
    const int n_branch = 1 << k;
    const int n_states = TURBO_TCQ_GROUPS << k;
    float   cost[TURBO3T_STATES];
    float   next[TURBO3T_STATES];
    float   best[TURBO_TCQ_GROUPS];
    uint8_t back[QK_TURBO][TURBO_TCQ_GROUPS];

    for (int s = 0; s < n_states; ++s) {
        const float e = turbo_add(y[0], -values[s]);
        cost[s] = turbo_mul(e, e);
    }
    for (int t = 1; t < QK_TURBO; ++t) {
        for (int g = 0; g < TURBO_TCQ_GROUPS; ++g) {   // predecessors of group g: (g << k) | j
            best[g] = cost[g << k];
            back[t][g] = 0;
            for (int j = 1; j < n_branch; ++j) {
                const float c = cost[(g << k) | j];
                if (c < best[g]) {
                    best[g] = c;
                    back[t][g] = (uint8_t) j;
                }
            }
        }
        for (int s = 0; s < n_states; ++s) {
            const float e = turbo_add(y[t], -values[s]);
            next[s] = turbo_add(best[s & (TURBO_TCQ_GROUPS - 1)], turbo_mul(e, e));
        }
        for (int s = 0; s < n_states; ++s) {
            cost[s] = next[s];
        }
    }
    int last = 0;
    for (int s = 1; s < n_states; ++s) {
        if (cost[s] < cost[last]) {
            last = s;
        }
    }
    states[QK_TURBO - 1] = (uint16_t) last;
    for (int t = QK_TURBO - 1; t > 0; --t) {
        const int g = states[t] & (TURBO_TCQ_GROUPS - 1);
        states[t - 1] = (uint16_t) ((g << k) | back[t][g]);
    }
}

TURBO_FN void turbo_tcq_put_bits(uint8_t * out, int pos, int n, unsigned value) {
    for (int b = 0; b < n; ++b) {
        out[(pos + b) >> 3] |= (uint8_t) (((value >> b) & 1u) << ((pos + b) & 7));
    }
}

// One block of QK_TURBO values into block_bytes bytes, as tcq_quantize_block does it.
TURBO_FN void turbo_tcq_quantize_block(const float * x, const float * values, int k, uint8_t * out, int block_bytes) {
    for (int b = 0; b < block_bytes; ++b) {
        out[b] = 0;
    }
    const float sumsq = turbo_block_sumsq(x);
    if (sumsq == 0.0f) {
        return;
    }
    if (!(sumsq - sumsq == 0.0f)) {                  // infinite or NaN
        turbo_tcq_put_bits(out, 0, 10, 0x3FF);
        return;
    }
    const float inv = turbo_sqrt(turbo_div((float) QK_TURBO, sumsq));
    float    y[QK_TURBO];
    uint16_t states[QK_TURBO];
    for (int j = 0; j < QK_TURBO; ++j) {
        y[j] = turbo_mul(x[j], inv);
    }
    turbo_tcq_viterbi_serial(y, values, k, states);

    float cc = 0.0f;
    for (int j = 0; j < QK_TURBO; ++j) {
        cc = turbo_add(cc, turbo_mul(values[states[j]], values[states[j]]));
    }
    const float d = cc > 0.0f ? turbo_sqrt(turbo_div(sumsq, cc)) : turbo_sqrt(turbo_div(sumsq, (float) QK_TURBO));
    unsigned bits = (turbo_fp16_bits(d) + 16u) >> 5;   // 5-bit mantissa, half up
    bits = bits > 0x3DFu ? 0x3DFu : bits == 0 ? 1u : bits;

    turbo_tcq_put_bits(out, 0, 16 - TURBO_TCQ_START_BITS, bits);
    turbo_tcq_put_bits(out, 16 - TURBO_TCQ_START_BITS, TURBO_TCQ_START_BITS, states[0] & (TURBO_TCQ_GROUPS - 1));
    for (int i = 0; i < QK_TURBO; ++i) {
        turbo_tcq_put_bits(out, 16 + k*i, k, states[i] >> TURBO_TCQ_START_BITS);
    }
}
