// Truncated SVD A ~ U diag(S) Vt of a dense row-major matrix, for low-rank factorization of layers.
//
// Two algorithms (docs/lrf.md, "Truncated SVD"):
// * exact: LAPACK gesdd on the whole matrix, then the leading `rank` triplets;
// * randomized: the range finder of Halko, Martinsson and Tropp (2011) with `oversampling` extra
//   columns and `power_iterations` passes over A and A^T, then gesdd on the small projected matrix.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace npuq {
namespace lrf {

enum class SvdMethod : int { kAuto = 0, kRandomized = 1, kExact = 2 };

struct SvdOptions {
  int64_t rank = 1;
  SvdMethod method = SvdMethod::kAuto;
  int64_t oversampling = 10;
  int64_t power_iterations = 2;
  uint64_t seed = 0;
  int threads = 0;  // 0: npuq's default thread count (npuq.set_num_threads)
};

struct SvdResult {
  double error = 0;      // ||A - U diag(S) Vt||_F
  bool exact = false;    // which algorithm ran
  int64_t sketch = 0;    // columns of the randomized sketch (0 for the exact path)
  bool direct_error = false;  // the error was evaluated from the residual matrix (see error_of())
};

// A LAPACK routine reported info != 0 (RuntimeError in Python).
struct LapackError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The algorithm method=auto picks for an m x n matrix (true: exact).
bool auto_picks_exact(int64_t m, int64_t n, int64_t rank, int64_t oversampling);

// a: m x n row-major. u: m x rank, s: rank, vt: rank x n (row-major), all written. Throws
// InvalidArgument for bad shapes, options or non-finite values, LapackError, std::runtime_error when
// OpenBLAS is not loaded (load_lapack in lapack.h).
template <typename T>
SvdResult truncated_svd(const T* a, int64_t m, int64_t n, const SvdOptions& opt, T* u, T* s, T* vt);

}  // namespace lrf
}  // namespace npuq
