// Truncated SVD A ~ U diag(S) Vt of a dense row-major matrix in device memory, on cuBLAS + cuSOLVER
// (opened at run time, cuda_libs.h). The GPU counterpart of csrc/lrf/cpu/truncated_svd.h (docs/lrf.md, "On
// the GPU"):
// * randomized: the range finder of Halko, Martinsson and Tropp (2011), as on the CPU: a sketch
//   Y = A Omega of rank + oversampling columns (Omega from the same counter-based generator as the
//   CPU, made on the device), power_iterations passes over A and A^T with the basis re-normalized in
//   between (one Cholesky QR pass, Gram matrix in double), the final basis Q orthonormal (Cholesky QR
//   twice; Householder QR when the Gram matrix is too ill-conditioned), then the SVD of the small
//   B = Q^T A: for float32 from the eigen-decomposition (syevd) of B B^T in double when the kept
//   singular values are within 1e5 of the largest, otherwise a Householder QR of B^T and the Jacobi
//   SVD (gesvdj; gesvd when Jacobi does not converge) of its triangle;
// * exact: cuSOLVER gesvd of the whole matrix, then the leading `rank` triplets.
// All work is queued on the caller's stream; workspaces are stream-ordered (cudaMallocAsync).
#pragma once

#include <cstdint>
#include <string>

namespace npuq {
namespace cuda {

enum class GpuSvdMethod : int { kAuto = 0, kRandomized = 1, kExact = 2 };

struct GpuSvdOptions {
  int64_t rank = 1;
  GpuSvdMethod method = GpuSvdMethod::kAuto;  // kAuto: randomized
  int64_t oversampling = 10;
  int64_t power_iterations = 2;
  uint64_t seed = 0;
};

struct GpuSvdResult {
  double error = 0;                 // ||A - U diag(S) Vt||_F
  GpuSvdMethod method = GpuSvdMethod::kRandomized;  // which algorithm ran (never kAuto)
  int64_t sketch = 0;               // columns of the randomized sketch (0: exact)
  bool householder = false;         // some basis needed the Householder QR fallback
  bool direct_error = false;        // the error came from the residual matrix (no cancellation)
  bool gesvd_fallback = false;      // Jacobi did not converge and gesvd finished the small SVD
  bool gram_small_svd = false;      // the small SVD came from the double Gram matrix (syevd)
};

GpuSvdMethod parse_gpu_method(const std::string& name);  // "auto", "randomized", "exact"
const char* gpu_method_name(GpuSvdMethod m);

// a: m x n row-major on `device`; u: m x rank, s: rank, vt: rank x n (row-major), all device memory of
// `device`, written in the order of `stream` (a cudaStream_t; 0 is the legacy default stream). The call
// waits on that stream for the few scalars it reads back (the scan of A, each basis check, the
// singular values), so work queued on it before the call has finished when it returns; the last
// products may still be running (stream order makes them visible to later work on the stream).
// Throws InvalidArgument (bad shapes or options, non-finite entries), DeviceOutOfMemory,
// CudaError, std::runtime_error naming the cuBLAS / cuSOLVER call that failed.
template <typename T>
GpuSvdResult truncated_svd_gpu(const T* a, int64_t m, int64_t n, const GpuSvdOptions& opt, T* u, T* s, T* vt,
                               int device, void* stream);

}  // namespace cuda
}  // namespace npuq
