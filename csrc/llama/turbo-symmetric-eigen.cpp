// pyturbo: symmetric eigen-decompositions (see turbo-symmetric-eigen.h).

#include "turbo-symmetric-eigen.h"

#include <algorithm>
#include <cmath>

pyturbo_matrix pyturbo_matrix_multiply(const pyturbo_matrix & a, const pyturbo_matrix & b, int64_t n) {
    pyturbo_matrix c(n * n, 0.0);
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t k = 0; k < n; ++k) {
            const double aik = a[i * n + k];
            for (int64_t j = 0; j < n; ++j) {
                c[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    return c;
}

// a = v diag(w) v^T by cyclic Jacobi rotations; v's columns are the eigenvectors.
static void jacobi_eigen(pyturbo_matrix a, int64_t n, std::vector<double> & w, pyturbo_matrix & v) {
    v.assign(n * n, 0.0);
    for (int64_t i = 0; i < n; ++i) {
        v[i * n + i] = 1.0;
    }
    for (int sweep = 0; sweep < 64; ++sweep) {
        double off = 0.0, diag = 0.0;
        for (int64_t i = 0; i < n; ++i) {
            for (int64_t j = 0; j < n; ++j) {
                (i == j ? diag : off) += a[i * n + j] * a[i * n + j];
            }
        }
        if (off <= 1e-26 * (off + diag)) {
            break;
        }
        for (int64_t p = 0; p < n - 1; ++p) {
            for (int64_t q = p + 1; q < n; ++q) {
                const double apq = a[p * n + q];
                if (apq == 0.0) {
                    continue;
                }
                // the rotation of columns/rows p and q that zeroes a[p][q]
                const double tau = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                const double t = (tau >= 0.0 ? 1.0 : -1.0) / (std::abs(tau) + std::sqrt(1.0 + tau * tau));
                const double cs = 1.0 / std::sqrt(1.0 + t * t);
                const double sn = t * cs;
                for (int64_t k = 0; k < n; ++k) {
                    const double akp = a[k * n + p], akq = a[k * n + q];
                    a[k * n + p] = cs * akp - sn * akq;
                    a[k * n + q] = sn * akp + cs * akq;
                }
                for (int64_t k = 0; k < n; ++k) {
                    const double apk = a[p * n + k], aqk = a[q * n + k];
                    a[p * n + k] = cs * apk - sn * aqk;
                    a[q * n + k] = sn * apk + cs * aqk;
                }
                for (int64_t k = 0; k < n; ++k) {
                    const double vkp = v[k * n + p], vkq = v[k * n + q];
                    v[k * n + p] = cs * vkp - sn * vkq;
                    v[k * n + q] = sn * vkp + cs * vkq;
                }
            }
        }
    }
    w.resize(n);
    for (int64_t i = 0; i < n; ++i) {
        w[i] = a[i * n + i];
    }
}

pyturbo_spectrum::pyturbo_spectrum(const pyturbo_matrix & a, int64_t n) : n(n) {
    jacobi_eigen(a, n, w, v);
    const double top = *std::max_element(w.begin(), w.end());
    for (double & x : w) {
        x = std::max(x, top > 0.0 ? 1e-9 * top : 1.0);
    }
}

pyturbo_matrix pyturbo_spectrum::apply(const std::function<double(double)> & f) const {
    pyturbo_matrix out(n * n, 0.0);
    for (int64_t e = 0; e < n; ++e) {
        const double fe = f(w[e]);
        for (int64_t i = 0; i < n; ++i) {
            for (int64_t j = 0; j < n; ++j) {
                out[i * n + j] += v[i * n + e] * fe * v[j * n + e];
            }
        }
    }
    return out;
}
