// Truncated SVD on the GPU: see svd.h and docs/lrf.md ("On the GPU").
//
// Column-major view, as in csrc/lrf/cpu/truncated_svd.cc: the row-major m x n input is the column-major
// n x m matrix X = A^T (R = n rows, C = m columns, leading dimension R). cuBLAS and cuSOLVER work on X,
// or on X^T through the transpose flags of gemm, never on a transposed copy (except the exact path
// when X is wider than tall: cuSOLVER's gesvd wants rows >= columns).
#include "svd.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/runtime.h"
#include "cuda_libs.h"
#include "npuq/ops.h"

namespace npuq {
namespace cuda {

GpuSvdMethod parse_gpu_method(const std::string& name) {
  if (name == "auto") return GpuSvdMethod::kAuto;
  if (name == "randomized") return GpuSvdMethod::kRandomized;
  if (name == "exact") return GpuSvdMethod::kExact;
  throw InvalidArgument("method must be 'auto', 'randomized' or 'exact' on the GPU, got '" + name + "'");
}

const char* gpu_method_name(GpuSvdMethod m) {
  switch (m) {
    case GpuSvdMethod::kRandomized: return "randomized";
    case GpuSvdMethod::kExact: return "exact";
    default: return "auto";
  }
}

namespace {

constexpr int kThreads = 256;    // every reduction kernel: a power of two
constexpr int kMaxBlocks = 1024;  // grid of the grid-stride kernels; fixed per size, so sums are reproducible

int blocks_for(int64_t count) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kMaxBlocks, (count + kThreads - 1) / kThreads)));
}

// ---------------------------------------------------------------------------------------------------
// Kernels

// splitmix64, as in csrc/lrf/cpu/truncated_svd.cc: the test matrix is the CPU's, entry for entry.
__host__ __device__ inline uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Independent entries uniform in [-1, 1), a function of (seed, index) only.
template <typename T>
__global__ void fill_test_matrix_kernel(T* x, int64_t count, uint64_t key) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t bits = mix(key + 0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(i + 1));
    x[i] = static_cast<T>(static_cast<double>(bits >> 11) * 0x1.0p-52 - 1.0);
  }
}

// Sum of the block's values in a fixed order (blockDim.x == kThreads).
__device__ inline double block_sum(double v, double* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  return sh[0];
}

// Max of the block's values (blockDim.x == kThreads).
__device__ inline double block_reduce_max(double v, double* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] = fmax(sh[threadIdx.x], sh[threadIdx.x + s]);
    __syncthreads();
  }
  return sh[0];
}

// *flag = 1 when *info != 0 (a factorization that is checked only at the end).
__global__ void flag_failure_kernel(const int* info, int* flag) {
  if (*info != 0) *flag = 1;
}

// Per-block sums of squares (in double) into partial[blockIdx.x]; with kCheck also max |x| (as the bits
// of a non-negative double, which order like unsigned integers) and the index of the first non-finite
// entry. Every thread visits a fixed set of indices: the sums do not depend on scheduling.
template <typename T, bool kCheck>
__global__ void squares_kernel(const T* x, int64_t count, double finite_max, double* partial,
                               unsigned long long* max_bits, unsigned long long* first_bad) {
  __shared__ double sh[kThreads];
  double acc = 0, mx = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  constexpr int kUnroll = 4;  // loads issued before use: more memory requests in flight per thread
  for (int64_t i0 = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i0 < count; i0 += kUnroll * stride) {
    T loaded[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + u * stride;
      loaded[u] = i < count ? x[i] : T(0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const double v = fabs(static_cast<double>(loaded[u]));
      if (kCheck) {
        if (!(v <= finite_max)) {  // NaN and inf
          atomicMin(first_bad, static_cast<unsigned long long>(i0 + u * stride));
          continue;
        }
        mx = fmax(mx, v);
      }
      acc += v * v;
    }
  }
  if (kCheck) {
    // one atomic per block: a quarter million on one address would serialize in L2
    const double block_max = block_reduce_max(mx, sh);
    if (threadIdx.x == 0 && block_max > 0)
      atomicMax(max_bits, static_cast<unsigned long long>(__double_as_longlong(block_max)));
    __syncthreads();  // sh is reused below
  }
  const double total = block_sum(acc, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void finish_sum_kernel(const double* partial, int count, double* out) {
  __shared__ double sh[kThreads];
  double acc = 0;
  for (int i = threadIdx.x; i < count; i += kThreads) acc += partial[i];
  const double total = block_sum(acc, sh);
  if (threadIdx.x == 0) *out = total;
}

// Per-block parts of ||G - I||_F^2 for the n x n symmetric G of which the upper triangle is stored.
template <typename T>
__global__ void departure_kernel(const T* g, int n, double* partial) {
  __shared__ double sh[kThreads];
  double acc = 0;
  const int64_t count = static_cast<int64_t>(n) * n;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < count;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = idx / n, i = idx % n;
    if (i > j) continue;
    const double d = static_cast<double>(g[idx]) - (i == j ? 1.0 : 0.0);
    acc += (i == j ? 1.0 : 2.0) * d * d;
  }
  const double total = block_sum(acc, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

template <typename T>
__global__ void scale_kernel(const T* in, int64_t count, T factor, T* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = in[i] * factor;
}

// out (column-major cols x rows, ld_out) = in^T, in column-major rows x cols (ld_in). Blocks (32, 8).
template <typename T>
__global__ void transpose_kernel(const T* in, int rows, int cols, int ld_in, T* out, int ld_out) {
  __shared__ T tile[32][33];
  const int bi = blockIdx.x * 32, bj = blockIdx.y * 32;
  for (int k = threadIdx.y; k < 32; k += blockDim.y) {
    const int i = bi + threadIdx.x, j = bj + k;
    if (i < rows && j < cols) tile[k][threadIdx.x] = in[i + static_cast<int64_t>(j) * ld_in];
  }
  __syncthreads();
  for (int k = threadIdx.y; k < 32; k += blockDim.y) {
    const int j = bj + threadIdx.x, i = bi + k;
    if (i < rows && j < cols) out[j + static_cast<int64_t>(i) * ld_out] = tile[threadIdx.x][k];
  }
}

// r (n x n, ld n) = the upper triangle of z (ld ldz), zeros below the diagonal.
template <typename T>
__global__ void copy_upper_kernel(const T* z, int ldz, int n, T* r) {
  const int64_t count = static_cast<int64_t>(n) * n;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < count;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = idx / n, i = idx % n;
    r[idx] = i <= j ? z[i + j * ldz] : T(0);
  }
}

// out[:, j] = in[:, j] * s[j] for the column-major rows x cols matrices (ld rows).
template <typename T>
__global__ void scale_columns_kernel(const T* in, const T* s, int rows, int cols, T* out) {
  const int64_t count = static_cast<int64_t>(rows) * cols;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < count;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[idx] = in[idx] * s[idx / rows];
}

// x[j * ld + j] = 1 for j < r.
template <typename T>
__global__ void unit_diagonal_kernel(T* x, int r, int64_t ld) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < r;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[j * ld + j] = T(1);
}

template <typename S, typename D>
__global__ void convert_kernel(const S* in, int64_t count, D* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = static_cast<D>(in[i]);
}

// From the eigen-decomposition G = V diag(lam) V^T of G = Z^T Z (n x n, lam ascending): the singular
// values of Z in decreasing order (sig), its right singular vectors in that order (vr, n x n) and the
// first r of them divided by their singular values (vsc, n x r; Z vsc are the left singular vectors).
template <typename T>
__global__ void eigen_to_svd_kernel(const double* lam, const double* v, int n, int r, T* sig, T* vr, double* vsc) {
  const int64_t count = static_cast<int64_t>(n) * n;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < count;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = idx / n, i = idx % n;  // column j of the output = eigenvector n - 1 - j
    const double x = v[i + (n - 1 - j) * static_cast<int64_t>(n)];
    vr[idx] = static_cast<T>(x);
    const double sj = sqrt(fmax(lam[n - 1 - j], 0.0));
    if (j < r) vsc[idx] = x / sj;
    if (i == 0) sig[j] = static_cast<T>(sj);
  }
}

// ---------------------------------------------------------------------------------------------------
// Host helpers

void blas_check(lib_status s, const char* what) {
  if (s == 0) return;
  const std::string msg = std::string("cuBLAS ") + what + " failed: " + blas_status_text(s);
  if (s == 3) throw DeviceOutOfMemory(msg + " (device memory)");
  throw std::runtime_error(msg);
}

void solver_check(lib_status s, const char* what) {
  if (s == 0) return;
  const std::string msg = std::string("cuSOLVER ") + what + " failed: " + solver_status_text(s);
  if (s == 2) throw DeviceOutOfMemory(msg + " (device memory)");
  throw std::runtime_error(msg);
}

template <typename T>
const char* prefix() {
  return std::is_same<T, float>::value ? "S" : "D";
}

template <typename T>
std::string routine(const char* name) {
  return std::string("cusolverDn") + prefix<T>() + name;
}

// cuBLAS / cuSOLVER handles of one device, made once and kept for the life of the process (destroying
// them at exit could run after the driver has shut down). One call at a time uses them.
struct DeviceHandles {
  blas_handle blas = nullptr;
  solver_handle solver = nullptr;
  gesvdj_info params = nullptr;
  std::mutex busy;
};

DeviceHandles& handles_for(int device, const CudaLibs& lib) {
  static std::mutex m;
  static std::map<int, std::unique_ptr<DeviceHandles>> all;
  std::lock_guard<std::mutex> lock(m);
  std::unique_ptr<DeviceHandles>& slot = all[device];
  if (!slot) {
    DeviceGuard guard(device);
    std::unique_ptr<DeviceHandles> h(new DeviceHandles);
    blas_check(lib.blas_create(&h->blas), "cublasCreate_v2");
    lib_status st = lib.solver_create(&h->solver);
    if (st != 0) {
      lib.blas_destroy(h->blas);
      solver_check(st, "cusolverDnCreate");
    }
    st = lib.gesvdj_info_create(&h->params);
    if (st != 0) {
      lib.solver_destroy(h->solver);
      lib.blas_destroy(h->blas);
      solver_check(st, "cusolverDnCreateGesvdjInfo");
    }
    slot = std::move(h);
  }
  return *slot;
}

// Offsets of the pieces of one workspace allocation, each aligned to 256 bytes.
struct Layout {
  size_t bytes = 0;
  template <typename U>
  size_t add(int64_t count) {
    const size_t at = bytes;
    bytes += (static_cast<size_t>(count) * sizeof(U) + 255) / 256 * 256;
    return at;
  }
};

// Scalars read back from the device in one copy.
struct Status {
  double sums[4];                 // sums of squares / departures
  unsigned long long max_bits;    // max |a| as double bits
  unsigned long long first_bad;   // first non-finite index (ULLONG_MAX: none)
  int info[4];                    // cuSOLVER info values
  int unchecked_failure;          // some unchecked Cholesky factorization failed (flag_failure_kernel)
};

// ||X - Ux diag(s) Vx^T||_F evaluated from the residual matrix when the cheap formula would cancel.
constexpr double kCancellationGuard = 1e5;
// ||G - I||_F below which a second Cholesky QR pass is trusted (as on the CPU).
constexpr double kMaxDeparture = 0.25;
// Smallest sig_r / sig_1 for which the float32 small SVD is taken from the double Gram matrix.
constexpr double kGramFloor = 1e-5;

template <typename T>
int scale_exponent(double max_abs) {
  const int limit = std::is_same<T, float>::value ? 40 : 400;
  if (max_abs == 0) return 0;
  const int e = std::ilogb(max_abs);
  return (e > limit || e < -limit) ? -e : 0;
}

template <typename T>
struct Gpu {
  const BlasFns<T>& b;
  const SolverFns<T>& f;
  const BlasFns<double>& bd;
  const SolverFns<double>& fd;
  blas_handle bh;
  solver_handle sh;
  gesvdj_info params;
  cudaStream_t stream;
  int device;
  const T* x = nullptr;  // column-major R x C
  int R = 0, C = 0;
  double* partial = nullptr;  // kMaxBlocks doubles
  Status* status = nullptr;   // device
  T* work = nullptr;          // cuSOLVER workspace (T routines)
  int lwork = 0;
  double* work_d = nullptr;   // cuSOLVER workspace (double routines: potrf, syevd)
  int lwork_d = 0;
  double* yd = nullptr;       // double copy of a basis (float input only), rows x cols
  double* gd = nullptr;       // Gram matrix, cols x cols, double
  Status last{};              // the status the last checked basis read

  void gemm(int ta, int tb, int m, int n, int k, T alpha, const T* a, int lda, const T* bb, int ldb, T beta, T* c,
            int ldc) const {
    blas_check(b.gemm(bh, ta, tb, m, n, k, &alpha, a, lda, bb, ldb, &beta, c, ldc),
               std::is_same<T, float>::value ? "cublasSgemm_v2" : "cublasDgemm_v2");
  }

  // out (rows x l) = op(X) mat, op(X) = X^T when transpose_x.
  void apply_x(bool transpose_x, int l, const T* mat, T* out) const {
    const int rows = transpose_x ? C : R, inner = transpose_x ? R : C;
    gemm(transpose_x ? kOpT : kOpN, kOpN, rows, l, inner, T(1), x, R, mat, inner, T(0), out, rows);
  }

  void launched(const char* kernel) const { check_launch(kernel); }

  // status->sums[slot] = sum of squares of x[0 .. count).
  void sum_squares(const T* v, int64_t count, int slot) const {
    const int blocks = blocks_for(count);
    squares_kernel<T, false><<<blocks, kThreads, 0, stream>>>(v, count, 0.0, partial, nullptr, nullptr);
    launched("squares_kernel");
    finish_sum_kernel<<<1, kThreads, 0, stream>>>(partial, blocks, &status->sums[slot]);
    launched("finish_sum_kernel");
  }

  Status read_status() const {
    Status h;
    check(cudaMemcpyAsync(&h, status, sizeof(Status), cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync (status)");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    return h;
  }

  void copy(T* dst, const T* src, int64_t count) const {
    check(cudaMemcpyAsync(dst, src, sizeof(T) * static_cast<size_t>(count), cudaMemcpyDeviceToDevice, stream),
          "cudaMemcpyAsync (device to device)");
  }

  void transpose(const T* in, int rows, int cols, int ld_in, T* out, int ld_out) const {
    const dim3 grid((rows + 31) / 32, (cols + 31) / 32);
    if (grid.y > 65535u) throw InvalidArgument("truncated_svd: matrix too large for the transpose kernel");
    transpose_kernel<T><<<grid, dim3(32, 8), 0, stream>>>(in, rows, cols, ld_in, out, ld_out);
    launched("transpose_kernel");
  }

  void need_work(int lw) {
    if (lw > lwork) throw std::logic_error("truncated_svd: cuSOLVER workspace sized too small");
  }

  // Householder QR in place: y (rows x cols, rows >= cols) := its orthonormal factor Q.
  void householder(T* y, int rows, int cols, T* tau) {
    int lw = 0;
    solver_check(f.geqrf_buffer(sh, rows, cols, y, rows, &lw), routine<T>("geqrf_bufferSize").c_str());
    need_work(lw);
    solver_check(f.geqrf(sh, rows, cols, y, rows, tau, work, lwork, &status->info[2]), routine<T>("geqrf").c_str());
    solver_check(f.orgqr_buffer(sh, rows, cols, cols, y, rows, tau, &lw), routine<T>("orgqr_bufferSize").c_str());
    need_work(lw);
    solver_check(f.orgqr(sh, rows, cols, cols, y, rows, tau, work, lwork, &status->info[3]),
                 routine<T>("orgqr").c_str());
    const Status st = read_status();
    if (st.info[2] < 0 || st.info[3] < 0)
      throw std::runtime_error(routine<T>("geqrf / orgqr") + " reported an illegal argument (info " +
                               std::to_string(std::min(st.info[2], st.info[3])) + ")");
  }

  void dgemm(int ta, int tb, int m, int n, int k, double alpha, const double* a, int lda, const double* bb, int ldb,
             double beta, double* c, int ldc) const {
    blas_check(bd.gemm(bh, ta, tb, m, n, k, &alpha, a, lda, bb, ldb, &beta, c, ldc), "cublasDgemm_v2");
  }

  template <typename S, typename D>
  void convert(const S* in, int64_t count, D* out) const {
    convert_kernel<S, D><<<blocks_for(count), kThreads, 0, stream>>>(in, count, out);
    launched("convert_kernel");
  }

  // One Cholesky QR pass queued, in double whatever T is: G = Y^T Y, G = R^T R (info into info[slot]),
  // Y := Y R^-1. With departure, status->sums[1] = ||G - I||_F^2 of the Gram matrix first. The Gram
  // matrix squares the condition number of Y; forming and factoring it in double keeps float32 bases
  // of condition up to ~1e6 within reach, where a float32 Gram matrix fails beyond ~1e3.
  void cholesky_pass(double* y, int rows, int cols, int slot, bool departure) {
    dgemm(kOpT, kOpN, cols, cols, rows, 1.0, y, rows, y, rows, 0.0, gd, cols);
    if (departure) {
      const int blocks = blocks_for(static_cast<int64_t>(cols) * cols);
      departure_kernel<double><<<blocks, kThreads, 0, stream>>>(gd, cols, partial);
      launched("departure_kernel");
      finish_sum_kernel<<<1, kThreads, 0, stream>>>(partial, blocks, &status->sums[1]);
      launched("finish_sum_kernel");
    }
    solver_check(fd.potrf(sh, kFillUpper, cols, gd, cols, work_d, lwork_d, &status->info[slot]), "cusolverDnDpotrf");
    const double one = 1;
    blas_check(bd.trsm(bh, kSideRight, kFillUpper, kOpN, kDiagNonUnit, rows, cols, &one, gd, cols, y, rows),
               "cublasDtrsm_v2");
  }

  // A basis of the columns of y (rows x cols, rows >= cols) spanning the same space, in place.
  // final: orthonormal, by Cholesky QR twice, accepted when the Gram matrix of the second pass is within
  // kMaxDeparture of I (then the first pass was accurate enough for the second to restore orthogonality
  // to rounding level); Householder QR of the saved input when Cholesky fails (a rank-deficient sketch,
  // for instance). Returns true when Householder QR ran. Its check waits for the stream.
  // Otherwise (between power iterations) one pass: a well-conditioned basis is all the next product
  // needs. With `checked` it is verified at once like the final one; without, nothing waits: a failed
  // factorization only raises status->unchecked_failure, which the final basis reads (and then returns
  // at once, leaving the caller to redo the range finder checked).
  bool basis(T* y, int rows, int cols, T* saved, T* tau, bool final, bool checked) {
    const int64_t count = static_cast<int64_t>(rows) * cols;
    if (checked) copy(saved, y, count);
    double* w = nullptr;
    if constexpr (std::is_same<T, double>::value) {
      w = y;
    } else {
      convert(y, count, yd);
      w = yd;
    }
    if (checked) check(cudaMemsetAsync(status->info, 0, sizeof(status->info), stream), "cudaMemsetAsync (info)");
    cholesky_pass(w, rows, cols, 0, false);
    if (final) cholesky_pass(w, rows, cols, 1, true);
    if constexpr (!std::is_same<T, double>::value) convert(yd, count, y);
    if (!checked) {
      flag_failure_kernel<<<1, 1, 0, stream>>>(&status->info[0], &status->unchecked_failure);
      launched("flag_failure_kernel");
      return false;
    }
    const Status st = read_status();
    last = st;
    if (st.unchecked_failure) return false;  // the caller starts over
    // NaN departures fail the comparison
    const bool ok = st.info[0] == 0 && (!final || (st.info[1] == 0 && st.sums[1] <= kMaxDeparture * kMaxDeparture));
    if (ok) return false;
    if (st.info[0] < 0 || st.info[1] < 0)
      throw std::runtime_error("cusolverDnDpotrf reported an illegal argument (info " +
                               std::to_string(std::min(st.info[0], st.info[1])) + ")");
    copy(y, saved, count);
    householder(y, rows, cols, tau);
    return true;
  }
};

void require_int(int64_t v, const char* what) {
  if (v > std::numeric_limits<int>::max())
    throw InvalidArgument(std::string("truncated_svd: matrix too large for the 32-bit cuSOLVER API: ") + what +
                          " needs " + std::to_string(v) + " entries");
}

}  // namespace

template <typename T>
GpuSvdResult truncated_svd_gpu(const T* a, int64_t m, int64_t n, const GpuSvdOptions& opt, T* u, T* s, T* vt,
                               int device, void* stream_handle) {
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
  require_device(device);
  require_device_pointer(a, device, "a");
  require_device_pointer(u, device, "u");
  require_device_pointer(s, device, "s");
  require_device_pointer(vt, device, "vt");
  for (const void* p : {static_cast<const void*>(a), static_cast<const void*>(u), static_cast<const void*>(s),
                        static_cast<const void*>(vt)})
    if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0)
      throw InvalidArgument("truncated_svd: a device pointer is not aligned to " + std::to_string(alignof(T)) +
                            " bytes");

  const CudaLibs& lib = cuda_libs();
  DeviceGuard guard(device);
  DeviceHandles& hs = handles_for(device, lib);
  std::lock_guard<std::mutex> busy(hs.busy);
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  blas_check(lib.blas_set_stream(hs.blas, stream_handle), "cublasSetStream_v2");
  solver_check(lib.solver_set_stream(hs.solver, stream_handle), "cusolverDnSetStream");

  const GpuSvdMethod method = opt.method == GpuSvdMethod::kAuto ? GpuSvdMethod::kRandomized : opt.method;
  const bool exact = method == GpuSvdMethod::kExact;
  const int r = static_cast<int>(opt.rank);
  const int64_t count = m * n;
  const int R = static_cast<int>(n), C = static_cast<int>(m);
  const bool wt = R < C;
  const int h = wt ? C : R, w = wt ? R : C;
  const int l = static_cast<int>(std::min<int64_t>(k, opt.rank + opt.oversampling));
  if (exact) require_int(count, "the exact SVD");

  Gpu<T> g{lib.blas<T>(), lib.solver<T>(), lib.blas<double>(), lib.solver<double>(), hs.blas, hs.solver, hs.params,
           stream,        device};
  g.R = R;
  g.C = C;

  // Workspace: everything but cuSOLVER's own buffer, in one allocation.
  Layout lay;
  const size_t at_partial = lay.add<double>(kMaxBlocks);
  const size_t at_status = lay.add<Status>(1);
  size_t at_y = 0, at_z = 0, at_saved = 0, at_g = 0, at_tau = 0, at_rb = 0, at_ur = 0, at_vr = 0, at_sig = 0,
         at_rwork = 0;
  size_t at_xw = 0, at_uu = 0, at_vv = 0, at_yd = 0, at_gd = 0, at_lam = 0, at_vsc = 0, at_pd = 0;
  constexpr bool kFloat = std::is_same<T, float>::value;
  if (exact) {
    at_xw = lay.add<T>(count);
    at_uu = lay.add<T>(static_cast<int64_t>(h) * k);
    at_vv = lay.add<T>(k * k);
    at_sig = lay.add<T>(k);
    at_rwork = lay.add<T>(k);
  } else {
    at_y = lay.add<T>(static_cast<int64_t>(h) * l);
    at_z = lay.add<T>(static_cast<int64_t>(w) * l);
    at_saved = lay.add<T>(static_cast<int64_t>(h) * l);
    at_g = lay.add<T>(static_cast<int64_t>(l) * l);
    at_tau = lay.add<T>(l);
    at_rb = lay.add<T>(static_cast<int64_t>(l) * l);
    at_ur = lay.add<T>(static_cast<int64_t>(l) * l);
    at_vr = lay.add<T>(static_cast<int64_t>(l) * l);
    at_sig = lay.add<T>(l);
    at_rwork = lay.add<T>(l);
    at_gd = lay.add<double>(static_cast<int64_t>(l) * l);
    at_lam = lay.add<double>(l);
    at_vsc = lay.add<double>(static_cast<int64_t>(l) * r);
    if (kFloat) {
      at_yd = lay.add<double>(static_cast<int64_t>(h) * l);
      at_pd = lay.add<double>(static_cast<int64_t>(w) * r);
    }
  }
  DeviceBuffer arena(lay.bytes, device, stream);
  char* base = arena.as<char>();
  auto at = [base](size_t off) { return base + off; };
  g.partial = reinterpret_cast<double*>(at(at_partial));
  g.status = reinterpret_cast<Status*>(at(at_status));

  // Scan: finiteness, max |a|, ||A||_F^2.
  check(cudaMemsetAsync(g.status, 0, sizeof(Status), stream), "cudaMemsetAsync (status)");
  check(cudaMemsetAsync(&g.status->first_bad, 0xff, sizeof(unsigned long long), stream), "cudaMemsetAsync (status)");
  {
    const int blocks = blocks_for(count);
    const double finite_max = static_cast<double>(std::numeric_limits<T>::max());
    squares_kernel<T, true>
        <<<blocks, kThreads, 0, stream>>>(a, count, finite_max, g.partial, &g.status->max_bits, &g.status->first_bad);
    check_launch("squares_kernel");
    finish_sum_kernel<<<1, kThreads, 0, stream>>>(g.partial, blocks, &g.status->sums[0]);
    check_launch("finish_sum_kernel");
  }
  const Status scan = g.read_status();
  if (scan.first_bad != ~0ULL) {
    T v = 0;
    check(cudaMemcpy(&v, a + scan.first_bad, sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy (non-finite entry)");
    const int64_t bad = static_cast<int64_t>(scan.first_bad);
    throw InvalidArgument(std::string("truncated_svd: the matrix has a non-finite value (") +
                          (std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf")) + ") at row " + std::to_string(bad / n) +
                          ", column " + std::to_string(bad % n));
  }
  double max_abs;
  {
    const long long bits = static_cast<long long>(scan.max_bits);
    std::memcpy(&max_abs, &bits, sizeof(max_abs));
  }

  GpuSvdResult res;
  res.method = method;
  if (max_abs == 0) {  // every singular value is 0; any orthonormal vectors will do
    check(cudaMemsetAsync(u, 0, sizeof(T) * static_cast<size_t>(m) * r, stream), "cudaMemsetAsync (u)");
    check(cudaMemsetAsync(vt, 0, sizeof(T) * static_cast<size_t>(n) * r, stream), "cudaMemsetAsync (vt)");
    check(cudaMemsetAsync(s, 0, sizeof(T) * static_cast<size_t>(r), stream), "cudaMemsetAsync (s)");
    unit_diagonal_kernel<T><<<blocks_for(r), kThreads, 0, stream>>>(u, r, r);
    check_launch("unit_diagonal_kernel");
    unit_diagonal_kernel<T><<<blocks_for(r), kThreads, 0, stream>>>(vt, r, n);
    check_launch("unit_diagonal_kernel");
    if (!exact) res.sketch = l;
    return res;
  }

  // A power-of-two scaled copy when the magnitudes are extreme (exact; undone at the end).
  const int exponent = scale_exponent<T>(max_abs);
  DeviceBuffer scaled;
  g.x = a;
  double norm_a2 = scan.sums[0];
  if (exponent) {
    scaled = DeviceBuffer(sizeof(T) * static_cast<size_t>(count), device, stream);
    scale_kernel<T><<<blocks_for(count), kThreads, 0, stream>>>(a, count, static_cast<T>(std::ldexp(1.0, exponent)),
                                                                scaled.as<T>());
    check_launch("scale_kernel");
    g.x = scaled.as<T>();
    g.sum_squares(g.x, count, 0);
    norm_a2 = g.read_status().sums[0];
  }
  const double eps = std::numeric_limits<T>::epsilon();
  double err2 = 0;
  DeviceBuffer solver_work, solver_work_d;

  if (exact) {
    // gesvd wants rows >= columns: X itself when R >= C, else X^T (the row-major A read column-major).
    const int rows = wt ? C : R, cols = wt ? R : C;  // rows = h, cols = w = k
    T* xw = reinterpret_cast<T*>(at(at_xw));
    T* uu = reinterpret_cast<T*>(at(at_uu));
    T* vv = reinterpret_cast<T*>(at(at_vv));
    T* sig = reinterpret_cast<T*>(at(at_sig));
    T* rwork = reinterpret_cast<T*>(at(at_rwork));
    if (wt) g.transpose(g.x, R, C, R, xw, C);
    else g.copy(xw, g.x, count);
    int lw = 0;
    solver_check(g.f.gesvd_buffer(hs.solver, rows, cols, &lw), routine<T>("gesvd_bufferSize").c_str());
    solver_work = DeviceBuffer(sizeof(T) * static_cast<size_t>(std::max(lw, 1)), device, stream);
    g.work = solver_work.as<T>();
    g.lwork = std::max(lw, 1);
    solver_check(g.f.gesvd(hs.solver, 'S', 'S', rows, cols, xw, rows, sig, uu, rows, vv, cols, g.work, g.lwork, rwork,
                           &g.status->info[0]),
                 routine<T>("gesvd").c_str());
    std::vector<T> sig_h(static_cast<size_t>(k));
    check(cudaMemcpyAsync(sig_h.data(), sig, sizeof(T) * sig_h.size(), cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync (singular values)");
    const Status st = g.read_status();
    if (st.info[0] != 0)
      throw std::runtime_error(routine<T>("gesvd") + " failed with info = " + std::to_string(st.info[0]) +
                               (st.info[0] < 0 ? " (an illegal argument)" : " (no convergence)"));
    if (!wt) {
      // X = Uu S Vv^T (R x C) and A = X^T: Vt (column-major R x r) = Uu[:, :r]; U (column-major r x C) =
      // the first r rows of Vv^T.
      g.copy(vt, uu, static_cast<int64_t>(R) * r);
      check(
          cudaMemcpy2DAsync(u, sizeof(T) * r, vv, sizeof(T) * cols, sizeof(T) * r, C, cudaMemcpyDeviceToDevice, stream),
          "cudaMemcpy2DAsync (u)");
    } else {
      // A (column-major C x R) = Uu S Vv^T: U (column-major r x C) = Uu[:, :r]^T, Vt (column-major R x r) =
      // (the first r rows of Vv^T)^T.
      g.transpose(uu, C, r, C, u, r);
      g.transpose(vv, r, R, cols, vt, R);
    }
    g.copy(s, sig, r);
    for (int64_t i = k - 1; i >= r; --i) err2 += static_cast<double>(sig_h[i]) * sig_h[i];  // smallest first
  } else {
    res.sketch = l;
    T* y = reinterpret_cast<T*>(at(at_y));
    T* z = reinterpret_cast<T*>(at(at_z));
    T* saved = reinterpret_cast<T*>(at(at_saved));
    T* gram = reinterpret_cast<T*>(at(at_g));
    T* tau = reinterpret_cast<T*>(at(at_tau));
    T* rb = reinterpret_cast<T*>(at(at_rb));
    T* ur = reinterpret_cast<T*>(at(at_ur));
    T* vr = reinterpret_cast<T*>(at(at_vr));
    T* sig = reinterpret_cast<T*>(at(at_sig));
    T* rwork = reinterpret_cast<T*>(at(at_rwork));
    double* lam = reinterpret_cast<double*>(at(at_lam));
    double* vsc = reinterpret_cast<double*>(at(at_vsc));
    double* pd = kFloat ? reinterpret_cast<double*>(at(at_pd)) : nullptr;
    g.gd = reinterpret_cast<double*>(at(at_gd));
    g.yd = kFloat ? reinterpret_cast<double*>(at(at_yd)) : nullptr;

    // cuSOLVER workspaces: the largest any step needs.
    int lw = 1, q = 0;
    solver_check(g.f.geqrf_buffer(hs.solver, h, l, y, h, &q), routine<T>("geqrf_bufferSize").c_str());
    lw = std::max(lw, q);
    solver_check(g.f.orgqr_buffer(hs.solver, h, l, l, y, h, tau, &q), routine<T>("orgqr_bufferSize").c_str());
    lw = std::max(lw, q);
    solver_check(g.f.geqrf_buffer(hs.solver, w, l, z, w, &q), routine<T>("geqrf_bufferSize").c_str());
    lw = std::max(lw, q);
    solver_check(g.f.orgqr_buffer(hs.solver, w, l, l, z, w, tau, &q), routine<T>("orgqr_bufferSize").c_str());
    lw = std::max(lw, q);
    solver_check(g.f.gesvdj_buffer(hs.solver, kEigVectors, 1, l, l, rb, l, sig, ur, l, vr, l, &q, hs.params),
                 routine<T>("gesvdj_bufferSize").c_str());
    lw = std::max(lw, q);
    solver_check(g.f.gesvd_buffer(hs.solver, l, l, &q), routine<T>("gesvd_bufferSize").c_str());
    lw = std::max(lw, q);
    solver_work = DeviceBuffer(sizeof(T) * static_cast<size_t>(lw), device, stream);
    g.work = solver_work.as<T>();
    g.lwork = lw;
    int lwd = 1;
    solver_check(g.fd.potrf_buffer(hs.solver, kFillUpper, l, g.gd, l, &q), "cusolverDnDpotrf_bufferSize");
    lwd = std::max(lwd, q);
    solver_check(g.fd.syevd_buffer(hs.solver, kEigVectors, kFillUpper, l, g.gd, l, lam, &q),
                 "cusolverDnDsyevd_bufferSize");
    lwd = std::max(lwd, q);
    solver_work_d = DeviceBuffer(sizeof(double) * static_cast<size_t>(lwd), device, stream);
    g.work_d = solver_work_d.as<double>();
    g.lwork_d = lwd;

    // W = X when X is at least as tall as wide, else X^T: the sketch Y = W Omega (h x l) holds the long
    // side, and Z = W^T Y (w x l) the short one.
    // The range finder. The normalizations between power iterations are first run unchecked (no wait
    // on the stream); if one of them failed, which the final basis's check reveals, it runs again with
    // every normalization checked (and Householder QR where Cholesky fails).
    auto range_finder = [&](bool checked) {
      fill_test_matrix_kernel<T><<<blocks_for(static_cast<int64_t>(w) * l), kThreads, 0, stream>>>(
          z, static_cast<int64_t>(w) * l, mix(opt.seed + 0x6a09e667f3bcc909ULL));
      check_launch("fill_test_matrix_kernel");
      check(cudaMemsetAsync(&g.status->unchecked_failure, 0, sizeof(int), stream), "cudaMemsetAsync (status)");
      g.apply_x(wt, l, z, y);  // Y = W Omega
      for (int64_t it = 0; it < opt.power_iterations; ++it) {
        res.householder |= g.basis(y, h, l, saved, tau, false, checked);
        g.apply_x(!wt, l, y, z);  // Z = W^T Y
        res.householder |= g.basis(z, w, l, saved, tau, false, checked);
        g.apply_x(wt, l, z, y);  // Y = W Z
      }
      res.householder |= g.basis(y, h, l, saved, tau, true, true);  // Q
      return g.last.unchecked_failure == 0;
    };
    if (!range_finder(false)) {
      res.householder = false;
      if (!range_finder(true)) throw std::logic_error("truncated_svd: checked range finder reported a failure");
    }
    g.apply_x(!wt, l, y, z);  // Z = B^T = W^T Q (w x l)
    g.sum_squares(z, static_cast<int64_t>(w) * l, 2);  // ||B||_F^2

    // The small SVD of Z (w x l). float32: from the Gram matrix Z^T Z = Vr diag(sig^2) Vr^T, formed and
    // eigen-decomposed in double (syevd), left vectors Z Vr diag(sig)^-1 in double: accurate for every
    // kept triplet as long as sig_r >= kGramFloor sig_1, which is checked (double has the digits to spare
    // for float32 output). Otherwise, and for float64: Z = Qz Rz (Householder), Rz = Ur diag(sig) Vr^T
    // (Jacobi; gesvd when it does not converge). Either way Z = P diag(sig) Vr^T and
    // W ~ Q Z^T = (Q Vr) diag(sig) P^T.
    bool gram_done = false;
    double tail2 = 0, norm_b2 = 0;
    if constexpr (kFloat) {
      g.convert(z, static_cast<int64_t>(w) * l, g.yd);
      g.dgemm(kOpT, kOpN, l, l, w, 1.0, g.yd, w, g.yd, w, 0.0, g.gd, l);
      solver_check(
          g.fd.syevd(hs.solver, kEigVectors, kFillUpper, l, g.gd, l, lam, g.work_d, g.lwork_d, &g.status->info[0]),
          "cusolverDnDsyevd");
      eigen_to_svd_kernel<T>
          <<<blocks_for(static_cast<int64_t>(l) * l), kThreads, 0, stream>>>(lam, g.gd, l, r, sig, vr, vsc);
      check_launch("eigen_to_svd_kernel");
      std::vector<double> lam_h(static_cast<size_t>(l));
      check(cudaMemcpyAsync(lam_h.data(), lam, sizeof(double) * lam_h.size(), cudaMemcpyDeviceToHost, stream),
            "cudaMemcpyAsync (eigenvalues)");
      const Status st = g.read_status();
      if (st.info[0] < 0)
        throw std::runtime_error("cusolverDnDsyevd reported an illegal argument (info " + std::to_string(st.info[0]) +
                                 ")");
      const double top = lam_h[l - 1], kept = lam_h[l - r];
      if (st.info[0] == 0 && std::isfinite(top) && top > 0 && kept >= kGramFloor * kGramFloor * top) {
        gram_done = true;
        res.gram_small_svd = true;
        g.dgemm(kOpN, kOpN, w, r, l, 1.0, g.yd, w, vsc, l, 0.0, pd, w);  // P[:, :r] = Z Vr[:, :r] / sig[:r]
        g.convert(pd, static_cast<int64_t>(w) * r, saved);
        for (int i = 0; i < l - r; ++i) tail2 += std::max(lam_h[i], 0.0);  // smallest first
        norm_b2 = st.sums[2];
      }
    }
    if (!gram_done) {
      // Z = Qz Rz (Householder), Rz = Ur diag(sig) Vr^T (Jacobi; gesvd when it does not converge), so
      // Z = (Qz Ur) diag(sig) Vr^T and W ~ Q Z^T = (Q Vr) diag(sig) (Qz Ur)^T.
      solver_check(g.f.geqrf(hs.solver, w, l, z, w, tau, g.work, g.lwork, &g.status->info[2]),
                   routine<T>("geqrf").c_str());
      copy_upper_kernel<T><<<blocks_for(static_cast<int64_t>(l) * l), kThreads, 0, stream>>>(z, w, l, rb);
      check_launch("copy_upper_kernel");
      g.copy(gram, rb, static_cast<int64_t>(l) * l);  // kept for the gesvd fallback
      solver_check(g.f.orgqr(hs.solver, w, l, l, z, w, tau, g.work, g.lwork, &g.status->info[3]),
                   routine<T>("orgqr").c_str());
      solver_check(g.f.gesvdj(hs.solver, kEigVectors, 1, l, l, rb, l, sig, ur, l, vr, l, g.work, g.lwork,
                              &g.status->info[0], hs.params),
                   routine<T>("gesvdj").c_str());
      std::vector<T> sig_h(static_cast<size_t>(l));
      check(cudaMemcpyAsync(sig_h.data(), sig, sizeof(T) * sig_h.size(), cudaMemcpyDeviceToHost, stream),
            "cudaMemcpyAsync (singular values)");
      Status st = g.read_status();
      if (st.info[2] < 0 || st.info[3] < 0)
        throw std::runtime_error(routine<T>("geqrf / orgqr") + " reported an illegal argument (info " +
                                 std::to_string(std::min(st.info[2], st.info[3])) + ")");
      if (st.info[0] < 0)
        throw std::runtime_error(routine<T>("gesvdj") + " reported an illegal argument (info " +
                                 std::to_string(st.info[0]) + ")");
      if (st.info[0] > 0) {
        // Jacobi did not converge: QR iteration on the saved Rz. gesvd gives Vr^T; Vr is its transpose.
        res.gesvd_fallback = true;
        solver_check(g.f.gesvd(hs.solver, 'A', 'A', l, l, gram, l, sig, ur, l, rb, l, g.work, g.lwork, rwork,
                               &g.status->info[0]),
                     routine<T>("gesvd").c_str());
        g.transpose(rb, l, l, l, vr, l);
        check(cudaMemcpyAsync(sig_h.data(), sig, sizeof(T) * sig_h.size(), cudaMemcpyDeviceToHost, stream),
              "cudaMemcpyAsync (singular values)");
        st = g.read_status();
        if (st.info[0] != 0)
          throw std::runtime_error(routine<T>("gesvd") + " failed with info = " + std::to_string(st.info[0]) +
                                   (st.info[0] < 0 ? " (an illegal argument)" : " (no convergence)"));
      }
      norm_b2 = st.sums[2];
      for (int i = l - 1; i >= r; --i) tail2 += static_cast<double>(sig_h[i]) * sig_h[i];
    }
    if (!wt) {
      // W = X = A^T: Vt (column-major R x r) = Q Vr[:, :r]; U (column-major r x C) = P[:, :r]^T.
      g.gemm(kOpN, kOpN, h, r, l, T(1), y, h, vr, l, T(0), vt, h);
      if (gram_done) g.transpose(saved, w, r, w, u, r);
      else g.gemm(kOpT, kOpT, r, w, l, T(1), ur, l, z, w, T(0), u, r);  // (Qz Ur[:, :r])^T
    } else {
      // W = X^T = A (column-major C x R): U (column-major r x C) = (Q Vr[:, :r])^T; Vt (column-major R x r)
      // = P[:, :r].
      g.gemm(kOpT, kOpT, r, h, l, T(1), vr, l, y, h, T(0), u, r);
      if (gram_done) g.copy(vt, saved, static_cast<int64_t>(w) * r);
      else g.gemm(kOpN, kOpN, w, r, l, T(1), z, w, ur, l, T(0), vt, w);  // Qz Ur[:, :r]
    }
    g.copy(s, sig, r);
    err2 = std::max(norm_a2 - norm_b2, 0.0) + tail2;
  }

  if (err2 < kCancellationGuard * eps * norm_a2) {
    // Without cancellation: E = X - Ux diag(s) Vx^T with Ux = Vt (column-major R x r), Vx^T = U
    // (column-major r x C), then ||E||_F.
    DeviceBuffer e(sizeof(T) * static_cast<size_t>(count), device, stream);
    DeviceBuffer us(sizeof(T) * static_cast<size_t>(R) * r, device, stream);
    g.copy(e.as<T>(), g.x, count);
    scale_columns_kernel<T><<<blocks_for(static_cast<int64_t>(R) * r), kThreads, 0, stream>>>(vt, s, R, r, us.as<T>());
    check_launch("scale_columns_kernel");
    g.gemm(kOpN, kOpN, R, C, r, T(-1), us.as<T>(), R, u, r, T(1), e.as<T>(), R);
    g.sum_squares(e.as<T>(), count, 3);
    err2 = g.read_status().sums[3];
    res.direct_error = true;
  }
  res.error = std::sqrt(err2);
  if (exponent) {
    const double back = std::ldexp(1.0, -exponent);
    scale_kernel<T><<<blocks_for(r), kThreads, 0, stream>>>(s, r, static_cast<T>(back), s);
    check_launch("scale_kernel");
    res.error *= back;
  }
  return res;
}

template GpuSvdResult truncated_svd_gpu<float>(const float*, int64_t, int64_t, const GpuSvdOptions&, float*, float*,
                                               float*, int, void*);
template GpuSvdResult truncated_svd_gpu<double>(const double*, int64_t, int64_t, const GpuSvdOptions&, double*, double*,
                                                double*, int, void*);

}  // namespace cuda
}  // namespace npuq
