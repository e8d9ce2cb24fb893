// Random rows for the host checks of the GPU block math (turbo_cuda_block_check.cpp,
// turbo_cuda_tcq_check.cpp): a xorshift generator with a fixed seed per check, roughly
// normal values (a sum of four uniforms), blocks of QK_TURBO at scales from 1e-6 to 1e4.
// Include after turbo-common.h.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

struct block_rng {
    uint64_t state;

    uint64_t next_u64() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        return state;
    }

    float uniform01() {
        return (float) ((next_u64() >> 40) + 0.5) / (float) (1ull << 24);
    }

    float gaussish() {
        float g = 0.0f;
        for (int u = 0; u < 4; ++u) {
            g += uniform01() - 0.5f;
        }
        return g*1.7320508f;
    }

    // n_blocks blocks, each at its own scale; with outlier_every > 0, every outlier_every-th
    // block gets one value 15 times larger.
    std::vector<float> blocks(int n_blocks, int outlier_every) {
        std::vector<float> x;
        for (int b = 0; b < n_blocks; ++b) {
            const float scale = std::pow(10.0f, -6.0f + 10.0f*uniform01());
            for (int j = 0; j < QK_TURBO; ++j) {
                x.push_back(scale*gaussish());
            }
            if (outlier_every > 0 && b % outlier_every == 0) {
                x[x.size() - QK_TURBO + (next_u64() % QK_TURBO)] *= 15.0f;
            }
        }
        return x;
    }
};
