// Truncated SVD A ~ U diag(S) Vt of a dense row-major matrix, for low-rank factorization of layers.
//
// Three algorithms (docs/lrf.md, "Truncated SVD"):
// * exact: LAPACK gesdd on the whole matrix, then the leading `rank` triplets;
// * randomized: the range finder of Halko, Martinsson and Tropp (2011) with `oversampling` extra
//   columns and `power_iterations` passes over A and A^T, then gesdd on the small projected matrix;
// * krylov: randomized block Krylov iteration (Musco and Musco, 2015): the same products as the
//   randomized path, but every block is kept, so the basis is [Y0, (AA^T) Y0, ..., (AA^T)^q Y0].
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace npuq {
namespace lrf {

enum class SvdMethod : int { kAuto = 0, kRandomized = 1, kExact = 2, kKrylov = 3 };

// How the orthonormal bases of the randomized paths are computed. kAuto: Cholesky QR twice, falling
// back to an LU-normalized Cholesky QR and then Householder QR when the Gram matrix is too
// ill-conditioned; kHouseholder: always Householder QR (geqrf + orgqr), for comparisons and tests.
enum class BasisMethod : int { kAuto = 0, kHouseholder = 1 };

// Which orthonormalization produced a basis, in increasing order of cost (the worst one of a call is
// reported).
enum class BasisUsed : int { kNone = 0, kCholesky = 1, kLuCholesky = 2, kHouseholder = 3 };

struct SvdOptions {
  int64_t rank = 1;
  SvdMethod method = SvdMethod::kAuto;
  int64_t oversampling = 10;
  int64_t power_iterations = 2;
  uint64_t seed = 0;
  int threads = 0;  // 0: npuq's default thread count (npuq.set_num_threads)
  BasisMethod basis = BasisMethod::kAuto;
  // Columns per Krylov block (method kKrylov only); 0: rank + oversampling. Blocks narrower than the
  // rank make the basis deeper for the same number of columns: fewer flops per pass over A.
  int64_t block_size = 0;
};

struct SvdResult {
  double error = 0;      // ||A - U diag(S) Vt||_F
  SvdMethod method = SvdMethod::kExact;  // which algorithm ran (never kAuto)
  bool exact = false;    // method == kExact
  int64_t sketch = 0;    // columns of the randomized sketch, or of the whole Krylov basis (0: exact path)
  BasisUsed basis = BasisUsed::kNone;
  bool direct_error = false;  // the error was evaluated from the residual matrix (see residual_squares())
};

// A LAPACK routine reported info != 0 (RuntimeError in Python).
struct LapackError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The algorithm method=auto picks for an m x n matrix (true: exact).
bool auto_picks_exact(int64_t m, int64_t n, int64_t rank, int64_t oversampling);
// The algorithm method=auto runs (kExact, kRandomized or kKrylov).
SvdMethod auto_method(int64_t m, int64_t n, int64_t rank, int64_t oversampling, int64_t power_iterations);

// a: m x n row-major. u: m x rank, s: rank, vt: rank x n (row-major), all written. Throws
// InvalidArgument for bad shapes, options or non-finite values, LapackError, std::runtime_error when
// OpenBLAS is not loaded (load_lapack in lapack.h).
template <typename T>
SvdResult truncated_svd(const T* a, int64_t m, int64_t n, const SvdOptions& opt, T* u, T* s, T* vt);

}  // namespace lrf
}  // namespace npuq
