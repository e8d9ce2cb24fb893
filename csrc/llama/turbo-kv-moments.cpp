// pyturbo: the key transform from calibrated moments (see turbo-kv-moments.h).

#include "turbo-kv-moments.h"
#include "turbo-symmetric-eigen.h"

#include <algorithm>
#include <cmath>
#include <complex>
#include <vector>

// RoPE's channel pairs, and moments averaged over a context's positions.

void pyturbo_kv_rope_pair(const pyturbo_kv_moments & m, int64_t f, int64_t & d0, int64_t & d1) {
    d0 = m.neox ? f : 2 * f;
    d1 = m.neox ? f + m.head / 2 : 2 * f + 1;
}

// mean of e^{i p omega} over positions p < n_pos
static std::complex<double> mean_turn(double omega, double n_pos) {
    const std::complex<double> turn = std::polar(1.0, omega);
    if (std::abs(1.0 - turn) * n_pos < 1e-9) {
        return std::pow(turn, (n_pos - 1) / 2);  // every turn is about the same
    }
    return (1.0 - std::pow(turn, n_pos)) / (n_pos * (1.0 - turn));
}

// E_p[R_p S R_p^T] for a pre-RoPE second moment S. Per pair of RoPE pairs (f, g), with
// z_f = x_d0 + i x_d1: E[z_f conj(z_g)] turns by the mean of e^{i p (theta_f - theta_g)}
// and E[z_f z_g] by that of e^{i p (theta_f + theta_g)}; the 2x2 block follows from both.
static pyturbo_matrix average_over_positions(const pyturbo_kv_moments & m, const double * s, double n_pos) {
    const int64_t n = m.head;
    pyturbo_matrix out(n * n);
    for (int64_t f = 0; f < n / 2; ++f) {
        for (int64_t g = 0; g < n / 2; ++g) {
            int64_t a, b, c, d;
            pyturbo_kv_rope_pair(m, f, a, b);
            pyturbo_kv_rope_pair(m, g, c, d);
            const std::complex<double> cross(s[a * n + c] + s[b * n + d], s[b * n + c] - s[a * n + d]);
            const std::complex<double> pseudo(s[a * n + c] - s[b * n + d], s[b * n + c] + s[a * n + d]);
            const std::complex<double> c2 = mean_turn(m.theta[f] - m.theta[g], n_pos) * cross;
            const std::complex<double> p2 = mean_turn(m.theta[f] + m.theta[g], n_pos) * pseudo;
            out[a * n + c] = (c2.real() + p2.real()) / 2;
            out[b * n + d] = (c2.real() - p2.real()) / 2;
            out[b * n + c] = (c2.imag() + p2.imag()) / 2;
            out[a * n + d] = (p2.imag() - c2.imag()) / 2;
        }
    }
    return out;
}

// One KV head's keys and queries as a context of n_pos positions sees them: the keys' mean
// (each RoPE pair's mean turned on average), their covariance and the queries' second moment.
struct head_view {
    std::vector<double> mean;
    pyturbo_matrix sigma_k;
    pyturbo_matrix second_q;
};

static head_view view_at_positions(const pyturbo_kv_moments & m, int64_t h, double n_pos) {
    const int64_t n = m.head;
    head_view view;
    view.mean.resize(n);
    for (int64_t f = 0; f < n / 2; ++f) {
        int64_t d0, d1;
        pyturbo_kv_rope_pair(m, f, d0, d1);
        const std::complex<double> z = mean_turn(m.theta[f], n_pos) *
            std::complex<double>(m.k_mean[h * n + d0], m.k_mean[h * n + d1]);
        view.mean[d0] = z.real();
        view.mean[d1] = z.imag();
    }
    view.sigma_k = average_over_positions(m, &m.k_second[h * n * n], n_pos);
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) {
            view.sigma_k[i * n + j] -= view.mean[i] * view.mean[j];
        }
    }
    view.second_q = average_over_positions(m, &m.q_second[h * n * n], n_pos);
    return view;
}

// A^2 = Sk^-1 # Sq = Sk^-1/2 (Sk^1/2 Sq Sk^1/2)^1/2 Sk^-1/2, as its spectrum.
static pyturbo_spectrum squared_key_matrix(const head_view & view, int64_t n) {
    const pyturbo_spectrum keys(view.sigma_k, n);
    const pyturbo_matrix k_half = keys.apply([](double x) { return std::sqrt(x); });
    const pyturbo_matrix k_inv_half = keys.apply([](double x) { return 1.0 / std::sqrt(x); });
    const pyturbo_matrix inner = pyturbo_spectrum(pyturbo_matrix_multiply(pyturbo_matrix_multiply(k_half, view.second_q, n), k_half, n), n)
                             .apply([](double x) { return std::sqrt(x); });
    return pyturbo_spectrum(pyturbo_matrix_multiply(pyturbo_matrix_multiply(k_inv_half, inner, n), k_inv_half, n), n);
}

static double trace_of_product(const pyturbo_matrix & a, const pyturbo_matrix & b, int64_t n) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) {
            sum += a[i * n + j] * b[j * n + i];
        }
    }
    return sum;
}

// What rounding A (k - c) costs in q.k, up to a constant: the rotation spreads an error
// proportional to |A (k - c)|^2 evenly over the channels, and q reads it through A^-1:
// tr(A^-2 Sq) tr(A^2 Sk). With A = I: tr(Sq) tr(Sk).
static double rounding_cost(const pyturbo_spectrum * squared, const head_view & view, int64_t n) {
    if (squared == nullptr) {
        double tq = 0.0, tk = 0.0;
        for (int64_t i = 0; i < n; ++i) {
            tq += view.second_q[i * n + i];
            tk += view.sigma_k[i * n + i];
        }
        return tq * tk;
    }
    return trace_of_product(squared->apply([](double x) { return 1.0 / x; }), view.second_q, n) *
           trace_of_product(squared->apply([](double x) { return x; }), view.sigma_k, n);
}

void pyturbo_kv_key_basis(const pyturbo_kv_moments & m, uint32_t n_ctx, std::vector<float> & c,
                          std::vector<float> & a, std::vector<float> & a_inv) {
    const int64_t n = m.head;
    const double n_pos = std::max<uint32_t>(n_ctx, 1);
    c.assign(n * m.n_head_kv, 0.0f);
    a.assign(n * n * m.n_head_kv, 0.0f);
    a_inv.assign(n * n * m.n_head_kv, 0.0f);
    for (int64_t h = 0; h < m.n_head_kv; ++h) {
        const head_view view = view_at_positions(m, h, n_pos);
        for (int64_t i = 0; i < n; ++i) {
            c[h * n + i] = (float) view.mean[i];
        }
        if (!m.use_matrix[h]) {  // the calibration could not show A beats the identity here
            for (int64_t i = 0; i < n; ++i) {
                a[(h * n + i) * n + i] = a_inv[(h * n + i) * n + i] = 1.0f;
            }
            continue;
        }
        // A itself, scaled to determinant 1 (any scale is exact; this one keeps keys their size)
        const pyturbo_spectrum squared = squared_key_matrix(view, n);
        double log_sum = 0.0;
        for (double x : squared.w) {
            log_sum += 0.5 * std::log(x);
        }
        const double scale = std::exp(log_sum / n);
        const pyturbo_matrix fwd = squared.apply([scale](double x) { return std::sqrt(x) / scale; });
        const pyturbo_matrix inv = squared.apply([scale](double x) { return scale / std::sqrt(x); });
        for (int64_t i = 0; i < n; ++i) {
            for (int64_t j = 0; j < n; ++j) {
                a[(h * n + i) * n + j] = (float) fwd[i * n + j];
                a_inv[(h * n + i) * n + j] = (float) inv[i * n + j];
            }
        }
    }
}

// With few samples for many channels (isotropic keys, a small model's text) the fit can be
// noise; where it does not hold up on held-out text, A = I.
std::vector<uint8_t> pyturbo_kv_matrix_pays(const pyturbo_kv_moments & first, const pyturbo_kv_moments & second,
                                            double n_pos) {
    // the fit must cut the held-out cost this much: below it, a gain is within the noise
    static const double REQUIRED_GAIN = 0.9;
    const int64_t n = first.head;
    std::vector<uint8_t> pays(first.n_head_kv);
    for (int64_t h = 0; h < first.n_head_kv; ++h) {
        const head_view a = view_at_positions(first, h, n_pos), b = view_at_positions(second, h, n_pos);
        const pyturbo_spectrum fit_a = squared_key_matrix(a, n), fit_b = squared_key_matrix(b, n);
        const double ratio = 0.5 * (rounding_cost(&fit_a, b, n) / rounding_cost(nullptr, b, n) +
                                    rounding_cost(&fit_b, a, n) / rounding_cost(nullptr, a, n));
        pays[h] = ratio < REQUIRED_GAIN;
    }
    return pays;
}
