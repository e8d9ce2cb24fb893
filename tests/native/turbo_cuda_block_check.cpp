// Holds the block math of the CUDA kernels (csrc/cuda/turbo-block.h, compiled
// here as host C++) to the CPU reference (csrc/turbo-quants.c, as built into a
// libggml-base) bit for bit, for turbo2, turbo3 and turbo4:
//
//   blocks      the quantizer's blocks (codes and fp16 scale) on random rows and
//               edge cases: zeros, negative zeros, constant blocks, a lone
//               spike, huge values, tiny values with subnormal squares,
//               subnormal values, infinities
//   dequantize  every value of every block, as the qr=2 pairs of convert.cu
//   k16         the 16-bit codebooks of the flash-attention K*Q dot against
//               round(kvalues * 2^13), and their two int8 planes
//   dot4        the codes of four consecutive values as the K*Q dot unpacks
//               them, and its integer dot with random q8 values, against the
//               per-value codes and a plain sum
//
// Built and run by tests/test_cuda_host.py (-ffp-contract=off, like ggml).
// Prints one line per type and check; exits 1 on any mismatch.

#define GGML_COMMON_DECL_CPP
#define GGML_COMMON_IMPL_CPP
#include "ggml-common.h"
#include "turbo-common.h"
#include "turbo-quants.h"
#include "turbo-block.h"
#include "random-blocks.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int N_RANDOM_BLOCKS = 24000;

block_rng rng = {0x853c49e6748fea9bull};

// Random blocks at scales from 1e-6 to 1e4 with the odd outlier, then the edge cases.
std::vector<float> make_blocks() {
    std::vector<float> x = rng.blocks(N_RANDOM_BLOCKS, 7);
    const float inf = std::numeric_limits<float>::infinity();
    const float subnormal = std::numeric_limits<float>::denorm_min();
    for (int edge = 0; edge < 12; ++edge) {
        for (int j = 0; j < QK_TURBO; ++j) {
            float v = 0.0f;
            switch (edge) {
                case 0:  v = 0.0f; break;                                           // zeros
                case 1:  v = -0.0f; break;                                          // negative zeros
                case 2:  v = j % 2 ? 0.0f : -0.0f; break;                           // both
                case 3:  v = 0.37f; break;                                          // constant
                case 4:  v = -2.5f; break;                                          // constant, negative
                case 5:  v = j == 17 ? -5.0f : 0.0f; break;                         // a lone spike
                case 6:  v = (j % 2 ? 1.0f : -1.0f)*1e-20f*(float) (j + 1); break;  // subnormal squares
                case 7:  v = (float) (j - 32)*subnormal; break;                     // subnormal values
                case 8:  v = (j % 3 ? 1.0f : -1.0f)*3e18f*(float) (j + 1); break;   // squares overflow to inf
                case 9:  v = j == 5 ? 1e30f : (float) j*1e-30f; break;              // huge spike over tiny values
                case 10: v = j == 40 ? inf : rng.gaussish(); break;                 // an infinity
                case 11: v = j == 0 ? -inf : (j == 1 ? inf : 0.5f); break;          // both infinities
            }
            x.push_back(v);
        }
    }
    return x;
}

struct type_check {
    const char * name;
    size_t block_bytes;
    int nvals;
    const float * values;
    const float * thr;
    const int16_t * k16;
    const turbo_k16_planes * planes;
    void (*quantize_ref)(const float * x, void * y, int64_t k);
    void (*dequantize_ref)(const void * x, float * y, int64_t k);
};

void quantize_ref_turbo2(const float * x, void * y, int64_t k) { quantize_row_turbo2_ref(x, (block_turbo2 *) y, k); }
void quantize_ref_turbo3(const float * x, void * y, int64_t k) { quantize_row_turbo3_ref(x, (block_turbo3 *) y, k); }
void quantize_ref_turbo4(const float * x, void * y, int64_t k) { quantize_row_turbo4_ref(x, (block_turbo4 *) y, k); }
void dequantize_ref_turbo2(const void * x, float * y, int64_t k) { dequantize_row_turbo2((const block_turbo2 *) x, y, k); }
void dequantize_ref_turbo3(const void * x, float * y, int64_t k) { dequantize_row_turbo3((const block_turbo3 *) x, y, k); }
void dequantize_ref_turbo4(const void * x, float * y, int64_t k) { dequantize_row_turbo4((const block_turbo4 *) x, y, k); }

// The header's quantizer for one block, packed the way the CUDA kernels pack it.
template <int nthr>
void quantize_block_header(const type_check & t, const float * x, uint8_t * out) {
    uint8_t codes[QK_TURBO];
    const float d = turbo_quantize_block(x, t.values, t.thr, codes, turbo_serial_picker<nthr>());
    const ggml_fp16_t d16 = ggml_fp32_to_fp16(d);
    if (nthr == 3) {
        block_turbo2 * y = (block_turbo2 *) out;
        y->d = d16;
        for (int j = 0; j < QK_TURBO/4; ++j) {
            y->qs[j] = turbo2_qs_byte(codes, j);
        }
    } else if (nthr == 7) {
        block_turbo3 * y = (block_turbo3 *) out;
        y->d = d16;
        for (int j = 0; j < QK_TURBO/4; ++j) {
            y->qs[j] = turbo3_qs_byte(codes, j);
        }
        for (int j = 0; j < QK_TURBO/8; ++j) {
            y->qh[j] = turbo3_qh_byte(codes, j);
        }
    } else {
        block_turbo4 * y = (block_turbo4 *) out;
        y->d = d16;
        for (int j = 0; j < QK_TURBO/2; ++j) {
            y->qs[j] = turbo4_qs_byte(codes, j);
        }
    }
}

// Code of value j and the codes of values j..j+3 as the header reads them from a block.
int header_code(const type_check & t, const uint8_t * block, int j) {
    if (t.nvals == 4) {
        return turbo2_code(((const block_turbo2 *) block)->qs, j);
    }
    if (t.nvals == 8) {
        const block_turbo3 * x = (const block_turbo3 *) block;
        return turbo3_code(x->qs, x->qh, j);
    }
    return turbo4_code(((const block_turbo4 *) block)->qs, j);
}

uint32_t header_codes4(const type_check & t, const uint8_t * block, int j) {
    uint32_t qs4;
    if (t.nvals == 4) {
        memcpy(&qs4, ((const block_turbo2 *) block)->qs + j % 16, 4);
        return turbo2_codes4(qs4, j);
    }
    if (t.nvals == 8) {
        const block_turbo3 * x = (const block_turbo3 *) block;
        memcpy(&qs4, x->qs + j % 16, 4);
        return turbo3_codes4(qs4, x->qh[j / 8], j);
    }
    memcpy(&qs4, ((const block_turbo4 *) block)->qs + j % 32, 4);
    return turbo4_codes4(qs4, j);
}

void header_dequantize_pair(const type_check & t, const uint8_t * block, int j, float * v0, float * v1) {
    if (t.nvals == 4) {
        const block_turbo2 * x = (const block_turbo2 *) block;
        turbo2_dequantize_pair(x, j, ggml_fp16_to_fp32(x->d), t.values, v0, v1);
    } else if (t.nvals == 8) {
        const block_turbo3 * x = (const block_turbo3 *) block;
        turbo3_dequantize_pair(x, j, ggml_fp16_to_fp32(x->d), t.values, v0, v1);
    } else {
        const block_turbo4 * x = (const block_turbo4 *) block;
        turbo4_dequantize_pair(x, j, ggml_fp16_to_fp32(x->d), t.values, v0, v1);
    }
}

int dot4(const type_check & t, uint32_t codes4, int q) {
    switch (t.nvals) {
        case 4:  return turbo_dot4_k16<4>(codes4, q, *t.planes);
        case 8:  return turbo_dot4_k16<8>(codes4, q, *t.planes);
        default: return turbo_dot4_k16<16>(codes4, q, *t.planes);
    }
}

// Bitwise equality, except that any NaN equals any NaN (the device's default
// NaN has other bits than the host's; nothing else may differ).
bool same_float(float a, float b) {
    if (std::isnan(a) || std::isnan(b)) {
        return std::isnan(a) && std::isnan(b);
    }
    return memcmp(&a, &b, sizeof(a)) == 0;
}

int check_type(const type_check & t, const std::vector<float> & x) {
    const int64_t nblocks = (int64_t) x.size() / QK_TURBO;
    int failures = 0;

    // k16: round(value * 2^13), representable as 256*hi + lo with int8 planes
    bool k16_ok = true;
    for (int k = 0; k < t.nvals; ++k) {
        const long expected = std::lround((double) t.values[k] * (1 << TURBO_K16_SHIFT));
        const int w = k / 4;
        const int b = k % 4;
        const int lo = (int8_t) (t.planes->lo[w] >> (8*b));
        const int hi = (int8_t) (t.planes->hi[w] >> (8*b));
        k16_ok &= t.k16[k] == expected && std::abs(expected) <= 32512 && 256*hi + lo == t.k16[k];
    }
    printf("%s k16 codebook: %s\n", t.name, k16_ok ? "ok" : "WRONG");
    failures += !k16_ok;

    // blocks
    std::vector<uint8_t> q_ref(nblocks*t.block_bytes);
    std::vector<uint8_t> q_hdr(nblocks*t.block_bytes);
    t.quantize_ref(x.data(), q_ref.data(), nblocks*QK_TURBO);
    int64_t block_mismatches = 0;
    for (int64_t b = 0; b < nblocks; ++b) {
        uint8_t * out = q_hdr.data() + b*t.block_bytes;
        switch (t.nvals) {
            case 4:  quantize_block_header<3>(t, x.data() + b*QK_TURBO, out); break;
            case 8:  quantize_block_header<7>(t, x.data() + b*QK_TURBO, out); break;
            default: quantize_block_header<15>(t, x.data() + b*QK_TURBO, out); break;
        }
        if (memcmp(out, q_ref.data() + b*t.block_bytes, t.block_bytes) != 0) {
            if (block_mismatches++ < 5) {
                printf("  %s block %lld differs (values %g %g ...)\n", t.name, (long long) b, x[b*QK_TURBO], x[b*QK_TURBO + 1]);
            }
        }
    }
    printf("%s blocks: %s (%lld blocks, %lld differ)\n", t.name, block_mismatches ? "DIFFER" : "identical",
           (long long) nblocks, (long long) block_mismatches);
    failures += block_mismatches != 0;

    // dequantize, pairs (j, j + 32)
    std::vector<float> y_ref(nblocks*QK_TURBO);
    t.dequantize_ref(q_ref.data(), y_ref.data(), nblocks*QK_TURBO);
    int64_t value_mismatches = 0;
    for (int64_t b = 0; b < nblocks; ++b) {
        const uint8_t * block = q_ref.data() + b*t.block_bytes;
        for (int j = 0; j < QK_TURBO/2; ++j) {
            float v0, v1;
            header_dequantize_pair(t, block, j, &v0, &v1);
            value_mismatches += !same_float(v0, y_ref[b*QK_TURBO + j]);
            value_mismatches += !same_float(v1, y_ref[b*QK_TURBO + j + QK_TURBO/2]);
        }
    }
    printf("%s dequantize: %s (%lld values differ)\n", t.name, value_mismatches ? "DIFFER" : "identical", (long long) value_mismatches);
    failures += value_mismatches != 0;

    // dot4: codes of four values and their dot with q8 values
    int64_t code_mismatches = 0;
    int64_t dot_mismatches = 0;
    for (int64_t b = 0; b < nblocks; ++b) {
        const uint8_t * block = q_ref.data() + b*t.block_bytes;
        for (int j = 0; j < QK_TURBO; j += 4) {
            const uint32_t codes4 = header_codes4(t, block, j);
            const int q = (int) (uint32_t) rng.next_u64();
            int expected = 0;
            for (int l = 0; l < 4; ++l) {
                const int code = header_code(t, block, j + l);
                code_mismatches += (int) ((codes4 >> (8*l)) & 0xFF) != code;
                expected += t.k16[code]*(int) (int8_t) (q >> (8*l));
            }
            dot_mismatches += dot4(t, codes4, q) != expected;
        }
    }
    printf("%s dot4: %s (%lld codes, %lld dots differ)\n", t.name, code_mismatches || dot_mismatches ? "DIFFER" : "identical",
           (long long) code_mismatches, (long long) dot_mismatches);
    failures += code_mismatches != 0 || dot_mismatches != 0;

    return failures;
}

} // namespace

int main() {
    const std::vector<float> x = make_blocks();

    static const turbo_k16_planes planes2 = turbo2_k16_planes;
    static const turbo_k16_planes planes3 = turbo3_k16_planes;
    static const turbo_k16_planes planes4 = turbo4_k16_planes;
    const type_check types[] = {
        { "turbo2", sizeof(block_turbo2), 4,  kvalues_turbo2, kthresh_turbo2, turbo2_k16, &planes2, quantize_ref_turbo2, dequantize_ref_turbo2 },
        { "turbo3", sizeof(block_turbo3), 8,  kvalues_turbo3, kthresh_turbo3, turbo3_k16, &planes3, quantize_ref_turbo3, dequantize_ref_turbo3 },
        { "turbo4", sizeof(block_turbo4), 16, kvalues_turbo4, kthresh_turbo4, turbo4_k16, &planes4, quantize_ref_turbo4, dequantize_ref_turbo4 },
    };

    int failures = 0;
    for (const type_check & t : types) {
        failures += check_type(t, x);
    }
    printf("%d checks failed\n", failures);
    return failures ? 1 : 0;
}
