// pyturbo: the key transform that a calibration pass's moments give (the math only; the pass
// that measures them is turbo-kv-calibration.cpp, their cache on disk turbo-kv-store.cpp).
//
// The weights alone tell how large each key channel is on average, not how the
// channels move together or where the keys' own mean sits. A pass of the model over
// a fixed text measures both, per layer and KV head: the mean and second moment of
// the keys and the second moment of the queries, taken before RoPE so that they can
// be averaged over any context length. From them comes the key transform of a context:
//
//   stored key = A (k - c),   query = A^-1 q      (so q.k changes by q.c only)
//
// c is the keys' mean as RoPE leaves it over the context's positions, and A the
// symmetric matrix that makes the quantization error of A (k - c), spread evenly
// over the channels by the Hadamard rotation, cost the least in q.k:
// A^2 = Sk^-1 # Sq, the geometric mean of the keys' inverse covariance and the
// queries' second moment (both averaged over positions). Any c and A are exact;
// the moments only decide how well the cache rounds.
#pragma once

#include <cstdint>
#include <vector>

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

// The two channels of RoPE pair f (0 <= f < head/2): d0 and d1.
void pyturbo_kv_rope_pair(const pyturbo_kv_moments & m, int64_t f, int64_t & d0, int64_t & d1);

// c [n_head_kv][head], A and A^-1 [n_head_kv][head][head] (row-major, symmetric) for a
// context of n_ctx positions.
void pyturbo_kv_key_basis(const pyturbo_kv_moments & m, uint32_t n_ctx, std::vector<float> & c,
                          std::vector<float> & a, std::vector<float> & a_inv);

// Per KV head, whether the matrix A fitted to the moments of one half of a text rounds the
// other half's keys (seen over n_pos positions) better than the identity, both ways round.
std::vector<uint8_t> pyturbo_kv_matrix_pays(const pyturbo_kv_moments & first, const pyturbo_kv_moments & second,
                                            double n_pos);
