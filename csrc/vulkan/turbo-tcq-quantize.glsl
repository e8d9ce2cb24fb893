// pyturbo: the turbo3t/turbo2t encoder for ggml's copy_to_quant shader (SET_ROWS, the KV
// write, and CPY f32/f16 -> turbo3t/turbo2t): one invocation codes one block by the exact
// Viterbi search of csrc/turbo-tcq-encode.h, with the same float operations in the same
// order and the same tie-breaking, all `precise`, so on a device whose division and square
// root round correctly (llvmpipe's do) its blocks equal the CPU's bit for bit.
// Included by turbo-quantize.glsl.
//
// The reference keeps each step's cheapest cost per group and recomputes the walk's
// branches on the way back; here each step records the branch of every group's cheapest
// state instead (a nibble, 2 KB per block rather than 16 KB of costs). Both take the
// lowest branch among equal costs, so both walk back the same way.

#if defined(DATA_A_TURBO3T) || defined(DATA_A_TURBO2T)

#define TCQ_WORDS32 ((TURBO_TCQ_BYTES + 3) / 4)

// fp16 bits of a positive float, rounded to nearest even (ggml's fp32 -> fp16), by hand
// so that no device's conversion rounding matters.
uint turbo_fp16_bits(float f) {
    const uint u = floatBitsToUint(f);
    const uint e = (u >> 23) & 0xFFu;
    const uint m = u & 0x7FFFFFu;
    if (e == 0xFFu) {
        return m != 0u ? 0x7E00u : 0x7C00u;
    }
    if (e >= 143u) {
        return 0x7C00u;                         // 2^16 and above: infinite
    }
    uint half_bits, rest, halfway;
    if (e >= 113u) {                            // a normal fp16
        half_bits = ((e - 112u) << 10) | (m >> 13);
        rest      = m & 0x1FFFu;
        halfway   = 0x1000u;
    } else {                                    // subnormal or zero: units of 2^-24
        const uint shift = 126u - e;
        if (shift > 24u) {
            return 0u;
        }
        const uint mant = m | 0x800000u;
        half_bits = mant >> shift;
        rest      = mant & ((1u << shift) - 1u);
        halfway   = 1u << (shift - 1u);
    }
    // a carry out of the mantissa moves into the exponent, as it should
    return half_bits + ((rest > halfway || (rest == halfway && (half_bits & 1u) != 0u)) ? 1u : 0u);
}

// The head bits of a positive scale: its fp16 with the mantissa rounded to 5 bits (half
// up), finite and non-zero (tcq_scale_bits).
uint turbo_tcq_scale_bits(float d) {
    const uint bits = (turbo_fp16_bits(d) + 16u) >> 5;
    return bits == 0u ? 1u : min(bits, 0x3DFu);
}

void turbo_tcq_put_bits(inout uint words[TCQ_WORDS32], uint pos, uint n, uint value) {
    value &= (1u << n) - 1u;
    words[pos / 32u] |= value << (pos % 32u);
    if (pos % 32u + n > 32u) {
        words[pos / 32u + 1u] |= value >> (32u - pos % 32u);
    }
}

// The trellis state of every value of the best walk for unit-scale y.
void turbo_tcq_viterbi(const float y[QUANT_K_TURBO], inout uint states[QUANT_K_TURBO]) {
    const uint n_branch = 1u << TURBO_TCQ_K;
    float best[TURBO_TCQ_GROUPS];               // cheapest walk to any state of group g, so far
    float next[TURBO_TCQ_GROUPS];
    uint  branch[QUANT_K_TURBO * TURBO_TCQ_GROUPS / 8]; // [t * 8 + g / 8], nibble g % 8
    for (uint g = 0; g < TURBO_TCQ_GROUPS; ++g) {
        best[g] = 0.0;                          // the first window's older bits are free
    }
    for (uint t = 0; t < QUANT_K_TURBO; ++t) {
        for (uint g8 = 0; g8 < TURBO_TCQ_GROUPS / 8; ++g8) {
            uint nibbles = 0;
            for (uint gi = 0; gi < 8; ++gi) {
                const uint g = g8 * 8u + gi;
                float lowest = 0.0;
                uint  pick   = 0;
                for (uint j = 0; j < n_branch; ++j) {
                    // state s = (g << k) | j follows the states of group s % 64
                    const uint s = (g << TURBO_TCQ_K) | j;
                    precise const float e    = y[t] - TURBO_TCQ_VALUES[s];
                    precise const float cost = best[s % TURBO_TCQ_GROUPS] + e * e;
                    if (j == 0u || cost < lowest) { // ties keep the lower branch
                        lowest = cost;
                        pick   = j;
                    }
                }
                next[g] = lowest;
                nibbles |= pick << (4u * gi);
            }
            branch[t * 8u + g8] = nibbles;
        }
        for (uint g = 0; g < TURBO_TCQ_GROUPS; ++g) {
            best[g] = next[g];
        }
    }
    uint last = 0;                              // the cheapest end; ties keep the lower state
    for (uint g = 1; g < TURBO_TCQ_GROUPS; ++g) {
        if (best[g] < best[last]) {
            last = g;
        }
    }
    uint g = last;
    for (uint t = QUANT_K_TURBO; t-- > 0u;) {
        const uint pick = (branch[t * 8u + g / 8u] >> (4u * (g % 8u))) & 0xFu;
        states[t] = (g << TURBO_TCQ_K) | pick;
        g = states[t] % TURBO_TCQ_GROUPS;       // the group of value t-1's state
    }
}

// tcq_quantize_block: scale to unit variance, search, store the norm-keeping scale.
void quantize(uint dst_idx, uint src_idx) {
    float y[QUANT_K_TURBO];
    precise float sumsq = 0.0;
    [[unroll]] for (uint j = 0; j < QUANT_K_TURBO; ++j) {
        y[j] = float(data_s[src_idx + j]);
        sumsq += y[j] * y[j];
    }
    uint words[TCQ_WORDS32];
    [[unroll]] for (uint i = 0; i < TCQ_WORDS32; ++i) {
        words[i] = 0u;
    }
    if (isinf(sumsq) || isnan(sumsq)) {
        words[0] = 0x3FFu;                      // a NaN scale, so the damage stays visible
    } else if (sumsq != 0.0) {                  // (an all-zero block keeps scale 0)
        precise const float inv = sqrt(float(QUANT_K_TURBO) / sumsq);
        [[unroll]] for (uint j = 0; j < QUANT_K_TURBO; ++j) {
            precise const float scaled = y[j] * inv;
            y[j] = scaled;
        }
        uint states[QUANT_K_TURBO];
        turbo_tcq_viterbi(y, states);
        precise float cc = 0.0;
        [[unroll]] for (uint j = 0; j < QUANT_K_TURBO; ++j) {
            precise const float c = TURBO_TCQ_VALUES[states[j]];
            cc += c * c;
        }
        precise const float d = cc > 0.0 ? sqrt(sumsq / cc) : sqrt(sumsq / float(QUANT_K_TURBO));
        turbo_tcq_put_bits(words, 0u, 16u - TURBO_TCQ_START_BITS, turbo_tcq_scale_bits(d));
        turbo_tcq_put_bits(words, 16u - TURBO_TCQ_START_BITS, TURBO_TCQ_START_BITS, states[0] % TURBO_TCQ_GROUPS);
        for (uint i = 0; i < QUANT_K_TURBO; ++i) {
            turbo_tcq_put_bits(words, 16u + TURBO_TCQ_K * i, TURBO_TCQ_K, states[i] >> TURBO_TCQ_START_BITS);
        }
    }
    [[unroll]] for (uint i = 0; i < TURBO_TCQ_BYTES; ++i) {
        data_q[dst_idx].b[i] = uint8_t((words[i / 4u] >> (8u * (i % 4u))) & 0xFFu);
    }
}

#endif
