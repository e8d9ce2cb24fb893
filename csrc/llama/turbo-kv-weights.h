// pyturbo: the K/V transforms that come from a model's weights alone.
//
// - K centering: keys stored as k - c_k, c_k the k_proj bias as RoPE leaves it on average
//   over the context's positions (softmax ignores a shift common to one query's scores).
// - K/Q equalization: key channel j divided by s_j and the query's multiplied by it,
//   s_j = (r_k(j) / r_q(j))^(alpha/2) from the squared row norms of W_k and W_q with the
//   attention-norm gain folded in (or the gains of a Q/K norm), shared by both channels of
//   a RoPE pair so that it commutes with RoPE.
// - V equalization: value channel j divided by s_j and each head's output multiplied by it
//   before W_o, s_j = (r_v(j) / |W_o column j|^2)^(1/4), so the channels W_o reads most
//   carry the least of the cache's rounding.
// Every scale has a geometric mean of 1 per head (any common factor is exact).
#pragma once

#include "ggml.h"

#include <cstdint>
#include <vector>

struct llama_model;
struct llama_cparams;

// Whether a tensor's values can be read back (ggml_backend_tensor_get): not those of CPU
// weights repacked for SIMD (their buffers have no way back).
bool pyturbo_tensor_readable(const ggml_tensor * t);

// Whether t is a readable vector of n values (a bias or a norm's gain).
bool pyturbo_tensor_is_vector(const ggml_tensor * t, int64_t n);

// A tensor's values as floats (any type ggml can convert, on any backend).
std::vector<float> pyturbo_tensor_values(const ggml_tensor * t);

// c_k of layer il, [n_embd_k_gqa], for a context of cparams.n_ctx positions; `residual`
// receives, per channel, the bias energy the centering leaves in the keys.
std::vector<float> pyturbo_kv_key_center(const llama_model & model, const llama_cparams & cparams, int il,
                                         std::vector<double> & residual);

// The K/Q equalization's s of layer il, [n_head_kv][head]; k_residual (from
// pyturbo_kv_key_center, or empty) counts as key energy.
std::vector<float> pyturbo_kv_key_scales(const llama_model & model, int il, const std::vector<double> & k_residual);

// The V equalization's s_v of layer il, [n_head_kv][head_v].
std::vector<float> pyturbo_kv_value_scales(const llama_model & model, int il);
