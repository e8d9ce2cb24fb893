// pyturbo: a calibration pass for the key transform (turbo-kv-transform.cpp).
//
// The weights alone tell how large each key channel is on average, not how the
// channels move together or where the keys' own mean sits. One pass of the model
// over a fixed built-in text (turbo-kv-calibration-text.h) measures both, per layer
// and KV head: the mean and second moment of the keys and the second moment of the
// queries, taken before RoPE so that they can be averaged over any context length.
// From them comes the key transform of a context:
//
//   stored key = A (k - c),   query = A^-1 q      (so q.k changes by q.c only)
//
// c is the keys' mean as RoPE leaves it over the context's positions, and A the
// symmetric matrix that makes the quantization error of A (k - c), spread evenly
// over the channels by the Hadamard rotation, cost the least in q.k:
// A^2 = Sk^-1 # Sq, the geometric mean of the keys' inverse covariance and the
// queries' second moment (both averaged over positions). Any c and A are exact;
// the calibration only decides how well the cache rounds.
#pragma once

#include <cstdint>
#include <vector>

struct ggml_tensor;
struct llama_model;

// Whether a tensor's values can be read back (ggml_backend_tensor_get): not those of CPU
// weights repacked for SIMD (their buffers have no way back).
bool pyturbo_tensor_readable(const ggml_tensor * t);

// Pre-RoPE moments of one layer's keys and queries, for each KV head.
struct pyturbo_kv_moments {
    int64_t head = 0;           // channels per head
    int64_t n_head_kv = 0;
    bool neox = false;          // RoPE pairs channels d and d + head/2 (else 2f and 2f + 1)
    std::vector<double> theta;  // [head/2] angle per position of each RoPE pair
    std::vector<double> k_mean;    // [n_head_kv][head]
    std::vector<double> k_second;  // [n_head_kv][head][head]  E[k k^T]
    std::vector<double> q_second;  // [n_head_kv][head][head]  E[q q^T] over the heads of the group
    std::vector<uint8_t> use_matrix;  // [n_head_kv] the fitted A held up on held-out text (else A = I)
};

// Runs the model over the calibration text with no transforms; one entry per layer, or
// none where the model's attention is not what the transform handles (the reason is logged).
std::vector<pyturbo_kv_moments> pyturbo_kv_calibrate(const llama_model & model, int n_threads);

// c [n_head_kv][head], A and A^-1 [n_head_kv][head][head] (row-major, symmetric) for a
// context of n_ctx positions.
void pyturbo_kv_key_basis(const pyturbo_kv_moments & m, uint32_t n_ctx, std::vector<float> & c,
                          std::vector<float> & a, std::vector<float> & a_inv);
