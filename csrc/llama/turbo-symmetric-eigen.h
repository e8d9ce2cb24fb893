// pyturbo: eigen-decompositions of small symmetric matrices (the calibrated key transform's
// matrix square roots and inverses, turbo-kv-moments.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

// A dense n x n matrix, row-major.
using pyturbo_matrix = std::vector<double>;

pyturbo_matrix pyturbo_matrix_multiply(const pyturbo_matrix & a, const pyturbo_matrix & b, int64_t n);

// The eigen-decomposition of a symmetric positive semi-definite matrix, with eigenvalues
// below 1e-9 of the largest raised to that (a direction the keys never take gets a finite,
// large weight).
struct pyturbo_spectrum {
    std::vector<double> w;
    pyturbo_matrix v;  // the eigenvectors, as columns
    int64_t n;

    pyturbo_spectrum(const pyturbo_matrix & a, int64_t n);

    // v diag(f(w)) v^T
    pyturbo_matrix apply(const std::function<double(double)> & f) const;
};
