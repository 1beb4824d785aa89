// The cuBLAS and cuSOLVER routines the GPU truncated SVD uses, opened with dlopen at run time rather
// than linked, the way csrc/lrf/cpu/lapack.h opens OpenBLAS: npuq builds against the CUDA runtime alone and
// uses whichever cuBLAS / cuSOLVER the process can reach (usually the ones torch already loaded, from the
// nvidia-* wheels). No cuBLAS or cuSOLVER header is needed: the C prototypes are declared here, handles
// and parameter objects as opaque pointers, enums as int (their C ABI), streams as void*
// (cudaStream_t is a pointer).
//
// Prototypes: cuBLAS v2 API ("cublas_api.h") and cuSOLVER dense API ("cusolverDn.h"), CUDA 11-13.
#pragma once

#include <string>
#include <vector>

namespace npuq {
namespace cuda {

// cublasStatus_t and cusolverStatus_t: 0 is success.
using lib_status = int;
using blas_handle = void*;    // cublasHandle_t
using solver_handle = void*;  // cusolverDnHandle_t
using gesvdj_info = void*;    // gesvdjInfo_t

// Enum values from cublas_api.h / cusolver_common.h.
constexpr int kOpN = 0;           // CUBLAS_OP_N
constexpr int kOpT = 1;           // CUBLAS_OP_T
constexpr int kFillLower = 0;     // CUBLAS_FILL_MODE_LOWER
constexpr int kFillUpper = 1;     // CUBLAS_FILL_MODE_UPPER
constexpr int kSideLeft = 0;      // CUBLAS_SIDE_LEFT
constexpr int kSideRight = 1;     // CUBLAS_SIDE_RIGHT
constexpr int kDiagNonUnit = 0;   // CUBLAS_DIAG_NON_UNIT
constexpr int kEigVectors = 1;    // CUSOLVER_EIG_MODE_VECTOR

template <typename T>
struct BlasFns {
  // C = alpha op(A) op(B) + beta C
  lib_status (*gemm)(blas_handle, int transa, int transb, int m, int n, int k, const T* alpha, const T* a, int lda,
                     const T* b, int ldb, const T* beta, T* c, int ldc) = nullptr;
  // C = alpha op(A)^T op(A) + beta C (trans = T: A^T A), one triangle
  lib_status (*syrk)(blas_handle, int uplo, int trans, int n, int k, const T* alpha, const T* a, int lda, const T* beta,
                     T* c, int ldc) = nullptr;
  // B = alpha op(A)^-1 B (side left) or alpha B op(A)^-1 (side right), A triangular
  lib_status (*trsm)(blas_handle, int side, int uplo, int trans, int diag, int m, int n, const T* alpha, const T* a,
                     int lda, T* b, int ldb) = nullptr;
};

template <typename T>
struct SolverFns {
  lib_status (*geqrf_buffer)(solver_handle, int m, int n, T* a, int lda, int* lwork) = nullptr;
  lib_status (*geqrf)(solver_handle, int m, int n, T* a, int lda, T* tau, T* work, int lwork, int* info) = nullptr;
  lib_status (*orgqr_buffer)(solver_handle, int m, int n, int k, const T* a, int lda, const T* tau,
                             int* lwork) = nullptr;
  lib_status (*orgqr)(solver_handle, int m, int n, int k, T* a, int lda, const T* tau, T* work, int lwork,
                      int* info) = nullptr;
  lib_status (*potrf_buffer)(solver_handle, int uplo, int n, T* a, int lda, int* lwork) = nullptr;
  lib_status (*potrf)(solver_handle, int uplo, int n, T* a, int lda, T* work, int lwork, int* info) = nullptr;
  lib_status (*gesvd_buffer)(solver_handle, int m, int n, int* lwork) = nullptr;
  lib_status (*gesvd)(solver_handle, signed char jobu, signed char jobvt, int m, int n, T* a, int lda, T* s, T* u,
                      int ldu, T* vt, int ldvt, T* work, int lwork, T* rwork, int* info) = nullptr;
  // eigenvalues (ascending) and eigenvectors of a symmetric matrix, divide and conquer
  lib_status (*syevd_buffer)(solver_handle, int jobz, int uplo, int n, const T* a, int lda, const T* w,
                             int* lwork) = nullptr;
  lib_status (*syevd)(solver_handle, int jobz, int uplo, int n, T* a, int lda, T* w, T* work, int lwork,
                      int* info) = nullptr;
  lib_status (*gesvdj_buffer)(solver_handle, int jobz, int econ, int m, int n, const T* a, int lda, const T* s,
                              const T* u, int ldu, const T* v, int ldv, int* lwork, gesvdj_info params) = nullptr;
  lib_status (*gesvdj)(solver_handle, int jobz, int econ, int m, int n, T* a, int lda, T* s, T* u, int ldu, T* v,
                       int ldv, T* work, int lwork, int* info, gesvdj_info params) = nullptr;
};

struct CudaLibs {
  lib_status (*blas_create)(blas_handle*) = nullptr;           // cublasCreate_v2
  lib_status (*blas_destroy)(blas_handle) = nullptr;           // cublasDestroy_v2
  lib_status (*blas_set_stream)(blas_handle, void*) = nullptr;  // cublasSetStream_v2
  lib_status (*solver_create)(solver_handle*) = nullptr;         // cusolverDnCreate
  lib_status (*solver_destroy)(solver_handle) = nullptr;         // cusolverDnDestroy
  lib_status (*solver_set_stream)(solver_handle, void*) = nullptr;  // cusolverDnSetStream
  lib_status (*gesvdj_info_create)(gesvdj_info*) = nullptr;      // cusolverDnCreateGesvdjInfo
  lib_status (*gesvdj_info_destroy)(gesvdj_info) = nullptr;      // cusolverDnDestroyGesvdjInfo
  BlasFns<float> sblas;
  BlasFns<double> dblas;
  SolverFns<float> ssolver;
  SolverFns<double> dsolver;
  std::string cublas_path, cusolver_path;  // what was opened

  template <typename T>
  const BlasFns<T>& blas() const;
  template <typename T>
  const SolverFns<T>& solver() const;
};

template <>
inline const BlasFns<float>& CudaLibs::blas<float>() const {
  return sblas;
}
template <>
inline const BlasFns<double>& CudaLibs::blas<double>() const {
  return dblas;
}
template <>
inline const SolverFns<float>& CudaLibs::solver<float>() const {
  return ssolver;
}
template <>
inline const SolverFns<double>& CudaLibs::solver<double>() const {
  return dsolver;
}

// Opens cuBLAS from the first of `cublas_candidates` that loads and has every routine above, then
// cuSOLVER likewise (each candidate a path or a soname for the loader's search). Before a candidate
// with a directory part, the libraries it depends on that sit in the same directory (cuBLASLt, cuSPARSE,
// nvJitLink) are opened with RTLD_GLOBAL, so that it resolves against them. Idempotent once it has
// succeeded (later calls return at once). Throws std::runtime_error listing every candidate tried and
// why each one failed.
void load_cuda_libs(const std::vector<std::string>& cublas_candidates,
                    const std::vector<std::string>& cusolver_candidates);
// The loaded routines; throws std::runtime_error when load_cuda_libs() has not succeeded yet.
const CudaLibs& cuda_libs();
bool cuda_libs_loaded();

// Text for a cuBLAS / cuSOLVER status code.
std::string blas_status_text(lib_status s);
std::string solver_status_text(lib_status s);

}  // namespace cuda
}  // namespace npuq
