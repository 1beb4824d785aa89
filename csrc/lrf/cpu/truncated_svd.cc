#include "truncated_svd.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/cpu.h"
#include "lapack.h"
#include "npuq/ops.h"

namespace npuq {
namespace lrf {
namespace {

// Column-major view: the row-major m x n input is the column-major n x m matrix X = A^T. All LAPACK
// calls work on X (or on X^T through the transpose flags of gemm, never by copying).

template <typename T>
const char* prefix() {
  return std::is_same<T, float>::value ? "s" : "d";
}

template <typename T>
void check_info(int info, const char* routine) {
  if (info != 0)
    throw LapackError(std::string("LAPACK ") + prefix<T>() + routine + " failed with info = " + std::to_string(info) +
                      (info < 0 ? " (an illegal argument)" : " (no convergence)"));
}

// Sets OpenBLAS's (process-wide) thread count for one call and restores it afterwards, so that runs
// with the same `threads` use the same BLAS partitioning whatever happened before.
class BlasThreads {
 public:
  BlasThreads(const Lapack& l, int n) : l_(l), saved_(l.get_num_threads()) { l_.set_num_threads(n); }
  ~BlasThreads() { l_.set_num_threads(saved_); }

 private:
  const Lapack& l_;
  int saved_;
};

// The O(m n) loops below run on the calling thread: OpenMP workers would keep spinning after their
// region while OpenBLAS's own threads need the cores, and these loops cost little next to the GEMMs.
// Sums are taken in fixed blocks, so they do not depend on any thread count either.
constexpr int64_t kBlock = 1 << 12;

struct Scan {
  double max_abs = 0;
  double sum_squares = 0;  // in double; meaningful only when no rescaling is needed (scale_exponent)
  int64_t first_bad = -1;  // index of the first NaN / inf
};

// Finiteness, max |x| and sum of squares in one pass.
template <typename T>
Scan scan(const T* x, int64_t count) {
  Scan s;
  T mx = 0;
  for (int64_t lo = 0; lo < count; lo += kBlock) {
    const int64_t hi = std::min(count, lo + kBlock);
    double acc[4] = {0, 0, 0, 0};
    bool finite = true;
    int64_t i = lo;
    for (; i + 4 <= hi; i += 4)
      for (int k = 0; k < 4; ++k) {
        const T v = std::abs(x[i + k]);
        finite &= (v <= std::numeric_limits<T>::max());  // false for NaN and inf
        mx = v > mx ? v : mx;
        acc[k] += static_cast<double>(v) * static_cast<double>(v);
      }
    for (; i < hi; ++i) {
      const T v = std::abs(x[i]);
      finite &= (v <= std::numeric_limits<T>::max());
      mx = v > mx ? v : mx;
      acc[0] += static_cast<double>(v) * static_cast<double>(v);
    }
    if (!finite) {
      for (int64_t j = lo; j < hi; ++j)
        if (!std::isfinite(x[j])) {
          s.first_bad = j;
          return s;
        }
    }
    s.sum_squares += (acc[0] + acc[1]) + (acc[2] + acc[3]);
  }
  s.max_abs = mx;
  return s;
}

template <typename T>
double sum_squares(const T* x, int64_t count) {
  double total = 0;
  for (int64_t lo = 0; lo < count; lo += kBlock) {
    const int64_t hi = std::min(count, lo + kBlock);
    double acc[4] = {0, 0, 0, 0};
    int64_t i = lo;
    for (; i + 4 <= hi; i += 4)
      for (int k = 0; k < 4; ++k) acc[k] += static_cast<double>(x[i + k]) * static_cast<double>(x[i + k]);
    for (; i < hi; ++i) acc[0] += static_cast<double>(x[i]) * static_cast<double>(x[i]);
    total += (acc[0] + acc[1]) + (acc[2] + acc[3]);
  }
  return total;
}

// Power-of-two exponent e such that max_abs * 2^e is near 1, or 0 when max_abs is already in a range
// where the products of the randomized path (entries of A times sums of O(1) values) and their squares
// cannot overflow or lose everything to underflow. Power-of-two scaling is exact.
template <typename T>
int scale_exponent(double max_abs) {
  const int limit = std::is_same<T, float>::value ? 40 : 400;
  if (max_abs == 0) return 0;
  const int e = std::ilogb(max_abs);
  return (e > limit || e < -limit) ? -e : 0;
}

// splitmix64: a counter-based generator, so every entry of the test matrix depends only on (seed, index)
// and the matrix is the same for any thread count.
inline uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Independent entries uniform in [-1, 1). The range finder needs zero-mean, independent, symmetric
// entries, not Gaussians specifically; uniform ones cost a few integer operations each, where
// Box-Muller would cost a logarithm and a sine per entry (a visible share of the small cases).
template <typename T>
void fill_test_matrix(T* x, int64_t count, uint64_t seed) {
  const uint64_t key = mix(seed + 0x6a09e667f3bcc909ULL);
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t bits = mix(key + 0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(i + 1));
    x[i] = static_cast<T>(static_cast<double>(bits >> 11) * 0x1.0p-52 - 1.0);
  }
}

template <typename T>
void copy_scaled(const T* a, int64_t count, int exponent, T* out) {
  const T f = static_cast<T>(std::ldexp(1.0, exponent));
  for (int64_t i = 0; i < count; ++i) out[i] = exponent ? a[i] * f : a[i];
}

template <typename T>
struct Solver {
  const LapackFns<T>& f;
  const T* x;   // column-major R x C (= A^T)
  int R, C;
  int threads;

  void gemm(char ta, char tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb, T beta, T* c,
            int ldc) const {
    f.gemm(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc, 1, 1);
  }

  // out (rows x l) = op(X) * M, op(X) = X^T when transpose_x.
  void apply_x(bool transpose_x, int l, const T* mat, T* out) const {
    const int rows = transpose_x ? C : R, inner = transpose_x ? R : C;
    gemm(transpose_x ? 'T' : 'N', 'N', rows, l, inner, T(1), x, R, mat, inner, T(0), out, rows);
  }

  std::vector<T> work;
  T* workspace(int64_t need) {
    if (static_cast<int64_t>(work.size()) < need) work.resize(need);
    return work.data();
  }
  static int64_t lwork_of(T query) {
    // LAPACK returns the size as a floating-point number; round up so that float32 cannot shortchange it.
    return static_cast<int64_t>(static_cast<double>(query) * (1 + 1e-6)) + 1;
  }
  static int to_int(int64_t v, const char* what) {
    if (v > std::numeric_limits<int>::max())
      throw InvalidArgument(std::string("matrix too large for 32-bit LAPACK: ") + what + " needs " + std::to_string(v) +
                            " entries");
    return static_cast<int>(v);
  }

  // Orthonormal basis of the columns of y (rows x l): Householder QR (geqrf + orgqr).
  void householder(T* y, int rows, int l) {
    std::vector<T> tau(l);
    int info = 0, lw = -1;
    T q1 = 0, q2 = 0;
    f.geqrf(&rows, &l, y, &rows, tau.data(), &q1, &lw, &info);
    check_info<T>(info, "geqrf");
    f.orgqr(&rows, &l, &l, y, &rows, tau.data(), &q2, &lw, &info);
    check_info<T>(info, "orgqr");
    lw = to_int(std::max(lwork_of(q1), lwork_of(q2)), "QR workspace");
    T* w = workspace(lw);
    f.geqrf(&rows, &l, y, &rows, tau.data(), w, &lw, &info);
    check_info<T>(info, "geqrf");
    f.orgqr(&rows, &l, &l, y, &rows, tau.data(), w, &lw, &info);
    check_info<T>(info, "orgqr");
  }

  // A well-conditioned basis of the columns of y between power iterations: the unit lower-trapezoidal
  // factor of an LU factorization with partial pivoting, rows put back in order (entries <= 1 in
  // magnitude, full column rank). About a quarter of the flops of Householder QR; the last basis, which
  // the projection needs orthonormal, comes from orthonormal_block().
  void normalize(T* y, int rows, int l) {
    std::vector<int> ipiv(l);
    int info = 0;
    f.getrf(&rows, &l, y, &rows, ipiv.data(), &info);
    if (info < 0) check_info<T>(info, "getrf");  // info > 0 (an exact zero pivot) is harmless here
    for (int j = 0; j < l; ++j) {
      T* col = y + static_cast<int64_t>(j) * rows;
      std::fill(col, col + j, T(0));
      col[j] = T(1);
    }
    const int one = 1, neg = -1;
    f.laswp(&l, y, &rows, &one, &l, ipiv.data(), &neg);
  }

  // y (rows x cols) -= P (P^T y) for the orthonormal columns P (rows x np); nothing when np == 0.
  void project_out(T* y, int rows, int cols, const T* p, int np) {
    if (np == 0) return;
    std::vector<T>& c = coef;
    c.resize(static_cast<size_t>(np) * cols);
    gemm('T', 'N', np, cols, rows, T(1), p, rows, y, rows, T(0), c.data(), np);
    gemm('N', 'N', rows, cols, np, T(-1), p, rows, c.data(), np, T(1), y, rows);
  }

  // One Cholesky QR step in place: Y^T Y = R^T R (syrk, potrf), Y := Y R^-1 (trsm). False, with y
  // unchanged, when ||Y^T Y - I||_F exceeds max_departure (NaN included) or potrf finds the Gram matrix
  // not positive definite.
  bool cholesky_step(T* y, int rows, int cols, double max_departure) {
    std::vector<T>& g = gram;
    g.assign(static_cast<size_t>(cols) * cols, T(0));
    const char uplo = 'U', trans = 'T', right = 'R', notrans = 'N', nonunit = 'N';
    const T one = 1, zero = 0;
    f.syrk(&uplo, &trans, &cols, &rows, &one, y, &rows, &zero, g.data(), &cols, 1, 1);
    if (max_departure < std::numeric_limits<double>::infinity()) {
      double sum = 0;
      for (int j = 0; j < cols; ++j)
        for (int i = 0; i <= j; ++i) {
          const double d = static_cast<double>(g[static_cast<size_t>(j) * cols + i]) - (i == j ? 1.0 : 0.0);
          sum += (i == j ? 1.0 : 2.0) * d * d;
        }
      if (!(std::sqrt(sum) <= max_departure)) return false;
    }
    int info = 0;
    f.potrf(&uplo, &cols, g.data(), &cols, &info, 1);
    if (info < 0) check_info<T>(info, "potrf");
    if (info > 0) return false;
    f.trsm(&right, &uplo, &notrans, &nonunit, &rows, &cols, &one, g.data(), &cols, y, &rows, 1, 1, 1, 1);
    return true;
  }

  // Replaces the block y (rows x cols) by an orthonormal basis of its columns with the span of the
  // orthonormal columns P (rows x np, np >= 0) projected out, so that [P, y] is orthonormal and spans
  // what [P, y] spanned (numerically).
  //
  // Cholesky QR is two BLAS-3 calls per pass where Householder QR of a tall, thin matrix runs largely
  // at BLAS-2 speed (1024 x 133 float32, one thread: 1.7 ms for two passes vs 2.4 ms for geqrf +
  // orgqr; far more for a Krylov block, whose Householder QR must include all earlier blocks). One pass
  // loses orthogonality like cond(Y)^2 eps, so a second pass follows (CholQR2; with the projection, block
  // Gram-Schmidt run twice), and it is accepted only when the Gram matrix of the second pass is within
  // kMaxDeparture of the identity: then the first pass was accurate enough for the second to restore
  // orthogonality to rounding level. A Gram matrix too ill-conditioned for that (a sketch of a fast-decaying
  // or rank-deficient spectrum, which has no power iteration to normalize it) is retried from an LU
  // factor of the block (entries <= 1, unit diagonal: well conditioned whatever the block was), and
  // Householder QR is the last resort.
  BasisUsed orthonormal_block(T* y, int rows, int cols, const T* p, int np, BasisMethod how) {
    const size_t count = static_cast<size_t>(rows) * cols;
    if (how == BasisMethod::kAuto) {
      saved.assign(y, y + count);
      for (int stage = 0; stage < 2; ++stage) {
        if (stage == 1) std::copy(saved.begin(), saved.end(), y);
        project_out(y, rows, cols, p, np);
        if (stage == 1) normalize(y, rows, cols);
        if (!cholesky_step(y, rows, cols, std::numeric_limits<double>::infinity())) continue;
        project_out(y, rows, cols, p, np);
        if (cholesky_step(y, rows, cols, kMaxDeparture))
          return stage == 0 ? BasisUsed::kCholesky : BasisUsed::kLuCholesky;
      }
      std::copy(saved.begin(), saved.end(), y);
    }
    if (np == 0) {
      householder(y, rows, cols);
    } else {
      // Householder QR of [P, y]: its leading np columns are +-P, the rest the orthonormal complement.
      std::vector<T> both(static_cast<size_t>(rows) * (np + cols));
      std::copy(p, p + static_cast<size_t>(rows) * np, both.begin());
      std::copy(y, y + count, both.begin() + static_cast<std::ptrdiff_t>(rows) * np);
      householder(both.data(), rows, np + cols);
      std::copy(both.begin() + static_cast<std::ptrdiff_t>(rows) * np, both.end(), y);
    }
    return BasisUsed::kHouseholder;
  }

  // ||G - I||_F at which a second Cholesky QR pass is trusted: then cond(Y)^2 <= (1 + d) / (1 - d) < 2
  // for the pass's input Y, and the result is orthonormal to a small multiple of eps.
  static constexpr double kMaxDeparture = 0.25;
  std::vector<T> gram, coef, saved;

  // gesdd (jobz = 'S') of the rows x cols matrix a, which it destroys. u: rows x k, vt: k x cols.
  void gesdd(T* a, int rows, int cols, T* s, T* u, T* vt) {
    const int k = std::min(rows, cols);
    std::vector<int> iwork(8 * static_cast<int64_t>(k));
    int info = 0, lw = -1;
    T q = 0;
    const char jobz = 'S';
    f.gesdd(&jobz, &rows, &cols, a, &rows, s, u, &rows, vt, &k, &q, &lw, iwork.data(), &info, 1);
    check_info<T>(info, "gesdd");
    lw = to_int(lwork_of(q), "gesdd workspace");
    T* w = workspace(lw);
    f.gesdd(&jobz, &rows, &cols, a, &rows, s, u, &rows, vt, &k, w, &lw, iwork.data(), &info, 1);
    check_info<T>(info, "gesdd");
  }
};

// ||X - Ux diag(s) Vx^T||_F^2 from the residual matrix itself. ux: R x r (ld R), vxt: r x C (ld r).
template <typename T>
double residual_squares(const Solver<T>& sv, const T* ux, const T* s, const T* vxt, int r) {
  const int64_t count = static_cast<int64_t>(sv.R) * sv.C;
  std::vector<T> e(sv.x, sv.x + count);
  std::vector<T> us(ux, ux + static_cast<int64_t>(sv.R) * r);
  for (int j = 0; j < r; ++j)
    for (int i = 0; i < sv.R; ++i) us[static_cast<int64_t>(j) * sv.R + i] *= s[j];
  sv.gemm('N', 'N', sv.R, sv.C, r, T(-1), us.data(), sv.R, vxt, r, T(1), e.data(), sv.R);
  return sum_squares(e.data(), count);
}

// The squared error from the spectrum (norm_a2 - norm_kept2 + tail2, all in double) is exact in exact
// arithmetic, but its first difference cancels when the error is a small fraction of ||A||: the kept
// part carries rounding errors of order eps * ||A||^2 (eps of T). Below this many eps * ||A||^2 the
// error is recomputed from the residual matrix (one extra GEMM of rank r), which has no cancellation.
constexpr double kCancellationGuard = 1e5;

// m * n * (sketch columns, or min(m, n) for gesdd) below which the BLAS runs on one thread.
constexpr double kSmallWork = 1 << 22;

}  // namespace

bool auto_picks_exact(int64_t m, int64_t n, int64_t rank, int64_t oversampling) {
  const int64_t k = std::min(m, n);
  // Measured on square float32/float64 matrices of 64..1024 (docs/lrf.md): with the default two power
  // iterations the randomized path costs as much as gesdd once the sketch holds ~2/3 of the short side,
  // and on tiny matrices the difference is noise while gesdd is exact.
  if (k <= 32) return true;
  return 3 * (rank + oversampling) >= 2 * k;
}

SvdMethod auto_method(int64_t m, int64_t n, int64_t rank, int64_t oversampling, int64_t power_iterations) {
  if (auto_picks_exact(m, n, rank, oversampling)) return SvdMethod::kExact;
  // Never krylov: at its cheapest settings reaching a given accuracy it was measured within ~15% of
  // the randomized path either way (docs/lrf.md), and at equal settings it is slower (wider basis).
  (void)power_iterations;
  return SvdMethod::kRandomized;
}

template <typename T>
SvdResult truncated_svd(const T* a, int64_t m, int64_t n, const SvdOptions& opt, T* u, T* s, T* vt) {
  if (m <= 0 || n <= 0)
    throw InvalidArgument("truncated_svd: the matrix is empty: shape (" + std::to_string(m) + ", " + std::to_string(n) +
                          ")");
  const int64_t k = std::min(m, n);
  if (opt.rank < 1 || opt.rank > k)
    throw InvalidArgument("truncated_svd: rank must be in [1, min(m, n)] = [1, " + std::to_string(k) + "] for shape (" +
                          std::to_string(m) + ", " + std::to_string(n) + "), got " + std::to_string(opt.rank));
  if (opt.oversampling < 0)
    throw InvalidArgument("truncated_svd: oversampling must be >= 0, got " + std::to_string(opt.oversampling));
  if (opt.power_iterations < 0)
    throw InvalidArgument("truncated_svd: power_iterations must be >= 0, got " + std::to_string(opt.power_iterations));
  if (m > std::numeric_limits<int>::max() || n > std::numeric_limits<int>::max() || m * n > (int64_t{1} << 40))
    throw InvalidArgument("truncated_svd: matrix too large: shape (" + std::to_string(m) + ", " + std::to_string(n) +
                          ")");
  if (opt.block_size < 0)
    throw InvalidArgument("truncated_svd: block_size must be >= 0, got " + std::to_string(opt.block_size));
  if (opt.block_size > 0 && opt.method != SvdMethod::kKrylov)
    throw InvalidArgument("truncated_svd: block_size applies to method 'krylov' only");
  // Columns of the sketch, or of one Krylov block.
  const int64_t sketch_cols = std::min<int64_t>(k, opt.block_size > 0 ? opt.block_size : opt.rank + opt.oversampling);
  // One BLAS thread for small problems: there a second thread saves microseconds, but handing work to
  // it costs more than that whenever the cores are shared (for instance with the thread pool of numpy's
  // own OpenBLAS, which keeps spinning after each numpy call). Depends only on the shape and options,
  // so the results stay a function of (input, seed, threads).
  const SvdMethod method =
      opt.method == SvdMethod::kAuto ? auto_method(m, n, opt.rank, opt.oversampling, opt.power_iterations) : opt.method;
  const bool exact = method == SvdMethod::kExact;
  // The Krylov basis holds depth + 1 blocks of sketch_cols columns, at most min(m, n) in all.
  const int64_t basis_cols = method == SvdMethod::kKrylov
                                 ? std::min<int64_t>(k, sketch_cols * (std::min<int64_t>(opt.power_iterations, k) + 1))
                                 : sketch_cols;
  if (basis_cols < opt.rank)
    throw InvalidArgument("truncated_svd: the Krylov basis, block_size * (power_iterations + 1) = " +
                          std::to_string(sketch_cols) + " * " + std::to_string(opt.power_iterations + 1) +
                          " columns, is narrower than rank " + std::to_string(opt.rank));
  const int requested = cpu::resolve_threads(opt.threads);
  const int threads = static_cast<double>(m) * n * (exact ? k : sketch_cols) < kSmallWork ? 1 : requested;
  const Lapack& lib = lapack();
  BlasThreads blas_threads(lib, threads);

  const int64_t count = m * n;
  const int r = static_cast<int>(opt.rank);
  const Scan sc = scan(a, count);
  if (sc.first_bad >= 0) {
    const T v = a[sc.first_bad];
    throw InvalidArgument(std::string("truncated_svd: the matrix has a non-finite value (") +
                          (std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf")) + ") at row " +
                          std::to_string(sc.first_bad / n) + ", column " + std::to_string(sc.first_bad % n));
  }

  SvdResult res;
  res.exact = exact;
  res.method = method;
  if (sc.max_abs == 0) {  // every singular value is 0; any orthonormal vectors will do
    std::fill(u, u + m * r, T(0));
    std::fill(vt, vt + static_cast<int64_t>(r) * n, T(0));
    std::fill(s, s + r, T(0));
    for (int j = 0; j < r; ++j) u[static_cast<int64_t>(j) * r + j] = vt[static_cast<int64_t>(j) * n + j] = T(1);
    if (!exact) res.sketch = basis_cols;
    return res;
  }

  // Work on a power-of-two scaled copy when the magnitudes are extreme (scaled back at the end).
  const int exponent = scale_exponent<T>(sc.max_abs);
  std::vector<T> scaled;
  if (exponent) {
    scaled.resize(count);
    copy_scaled(a, count, exponent, scaled.data());
  }
  const T* x = exponent ? scaled.data() : a;
  Solver<T> sv{lib.fns<T>(), x, static_cast<int>(n), static_cast<int>(m), threads, {}};
  const int R = sv.R, C = sv.C;
  const double norm_a2 = exponent ? sum_squares(x, count) : sc.sum_squares;
  const double eps = std::numeric_limits<T>::epsilon();
  double err2 = 0;

  if (exact) {
    std::vector<T> xa(x, x + count), sig(k), ux(static_cast<int64_t>(R) * k), vxt(static_cast<int64_t>(k) * C);
    sv.gesdd(xa.data(), R, C, sig.data(), ux.data(), vxt.data());
    // X = Ux S Vx^T and A = X^T: Vt (row-major r x n) is Ux's first r columns, U (row-major m x r) is
    // the column-major r x m matrix Vx^T's first r rows.
    std::memcpy(vt, ux.data(), sizeof(T) * R * r);
    for (int64_t j = 0; j < C; ++j) std::memcpy(u + j * r, vxt.data() + j * k, sizeof(T) * r);
    std::copy(sig.begin(), sig.begin() + r, s);
    for (int64_t i = k - 1; i >= r; --i) err2 += static_cast<double>(sig[i]) * sig[i];  // smallest first
  } else {
    // W = X when X is at least as tall as wide, else X^T: h >= w, so the sketch Y = W Omega (h x l)
    // holds the long side and the matrix gesdd sees (w x l) the short one.
    const bool wt = R < C;
    const int h = wt ? C : R, w = wt ? R : C;
    const int l = static_cast<int>(sketch_cols);  // sketch_cols <= k = w
    const int L = static_cast<int>(basis_cols);   // columns of the final basis Q
    res.sketch = L;
    // y: the basis Q (h x L); z: B^T = W^T Q (w x L), which gesdd overwrites.
    std::vector<T> y(static_cast<int64_t>(h) * L), z(static_cast<int64_t>(w) * L);
    fill_test_matrix(z.data(), static_cast<int64_t>(w) * l, opt.seed);
    sv.apply_x(wt, l, z.data(), y.data());  // Y = W Omega
    if (method == SvdMethod::kRandomized) {
      for (int64_t it = 0; it < opt.power_iterations; ++it) {
        sv.normalize(y.data(), h, l);
        sv.apply_x(!wt, l, y.data(), z.data());  // Z = W^T Y
        sv.normalize(z.data(), w, l);
        sv.apply_x(wt, l, z.data(), y.data());  // Y = W Z
      }
      res.basis = sv.orthonormal_block(y.data(), h, l, nullptr, 0, opt.basis);  // Q
      sv.apply_x(!wt, l, y.data(), z.data());  // Bt = W^T Q (w x l), B = Q^T W
    } else {
      // Block Krylov: Q_0 = orth(W Omega), Q_{i+1} = orth(W W^T Q_i) against Q_0..Q_i. Every
      // Z_i = W^T Q_i is both the input of the next block and a block of B^T = W^T [Q_0 ... Q_q], so
      // the products are those of `depth` power iterations plus the final projection, as for the
      // randomized path; the extra cost is the block orthogonalization and the wider small SVD.
      res.basis = sv.orthonormal_block(y.data(), h, l, nullptr, 0, opt.basis);
      int off = 0, width = l;
      while (off + width < L) {
        T* qi = y.data() + static_cast<int64_t>(off) * h;
        T* zi = z.data() + static_cast<int64_t>(off) * w;
        sv.apply_x(!wt, width, qi, zi);  // Z_i = W^T Q_i
        const int next = std::min(l, L - off - width);  // the last block may be cut at min(m, n) columns
        T* qn = y.data() + static_cast<int64_t>(off + width) * h;
        sv.apply_x(wt, next, zi, qn);  // W Z_i, then orthonormalized against Q_0..Q_i
        res.basis = std::max(res.basis, sv.orthonormal_block(qn, h, next, y.data(), off + width, opt.basis));
        off += width;
        width = next;
      }
      sv.apply_x(!wt, width, y.data() + static_cast<int64_t>(off) * h, z.data() + static_cast<int64_t>(off) * w);
    }
    const double norm_b2 = sum_squares(z.data(), static_cast<int64_t>(w) * L);
    // Bt = P diag(sig) Rt^T, so W ~ Q B = (Q Rt) diag(sig) P^T.
    std::vector<T> sig(L), p(static_cast<int64_t>(w) * L), rtt(static_cast<int64_t>(L) * L);
    sv.gesdd(z.data(), w, L, sig.data(), p.data(), rtt.data());
    std::copy(sig.begin(), sig.begin() + r, s);
    double tail2 = 0;
    for (int i = L - 1; i >= r; --i) tail2 += static_cast<double>(sig[i]) * sig[i];
    err2 = std::max(norm_a2 - norm_b2, 0.0) + tail2;
    if (!wt) {
      // W = X = A^T = Uw S Vw^T: Vt = Uw^T, whose row-major layout is Uw's column-major one; U = Vw.
      sv.gemm('N', 'T', h, r, L, T(1), y.data(), h, rtt.data(), L, T(0), vt, h);  // Uw = Q Rt[:, :r]
      for (int64_t i = 0; i < w; ++i)
        for (int j = 0; j < r; ++j) u[i * r + j] = p[static_cast<int64_t>(j) * w + i];
    } else {
      // W = X^T = A = Uw S Vw^T: U = Uw, written as its transpose Rt[:, :r]^T Q^T; Vt = Vw^T, whose
      // row-major layout is Vw's column-major one.
      sv.gemm('N', 'T', r, h, L, T(1), rtt.data(), L, y.data(), h, T(0), u, r);
      std::memcpy(vt, p.data(), sizeof(T) * w * r);
    }
  }

  if (err2 < kCancellationGuard * eps * norm_a2) {
    // Vt (row-major r x n) is Ux (column-major R x r); U (row-major m x r) is Vx^T (column-major r x C).
    err2 = residual_squares(sv, vt, s, u, r);
    res.direct_error = true;
  }
  res.error = std::sqrt(err2);
  if (exponent) {
    const double back = std::ldexp(1.0, -exponent);
    for (int j = 0; j < r; ++j) s[j] = static_cast<T>(s[j] * back);
    res.error *= back;
  }
  return res;
}

template SvdResult truncated_svd<float>(const float*, int64_t, int64_t, const SvdOptions&, float*, float*, float*);
template SvdResult truncated_svd<double>(const double*, int64_t, int64_t, const SvdOptions&, double*, double*, double*);

}  // namespace lrf
}  // namespace npuq
