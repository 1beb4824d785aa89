// The BLAS / LAPACK routines the low-rank code uses, taken from OpenBLAS as shipped by the PyPI wheel
// scipy-openblas32 (32-bit integers, every symbol prefixed with "scipy_", Fortran calling convention:
// all arguments by pointer, hidden character-length arguments after the others).
//
// The library is opened with dlopen at first use, not linked: see load_lapack() and CMakeLists.txt.
#pragma once

#include <cstddef>
#include <string>

namespace npuq {
namespace lrf {

using blas_int = int;  // the "32" of scipy-openblas32: LP64 integers
using fortran_len = std::size_t;

template <typename T>
struct LapackFns {
  void (*gemm)(const char* ta, const char* tb, const blas_int* m, const blas_int* n, const blas_int* k, const T* alpha,
               const T* a, const blas_int* lda, const T* b, const blas_int* ldb, const T* beta, T* c,
               const blas_int* ldc, fortran_len, fortran_len) = nullptr;
  void (*geqrf)(const blas_int* m, const blas_int* n, T* a, const blas_int* lda, T* tau, T* work, const blas_int* lwork,
                blas_int* info) = nullptr;
  void (*orgqr)(const blas_int* m, const blas_int* n, const blas_int* k, T* a, const blas_int* lda, const T* tau,
                T* work, const blas_int* lwork, blas_int* info) = nullptr;
  void (*getrf)(const blas_int* m, const blas_int* n, T* a, const blas_int* lda, blas_int* ipiv,
                blas_int* info) = nullptr;
  void (*laswp)(const blas_int* n, T* a, const blas_int* lda, const blas_int* k1, const blas_int* k2,
                const blas_int* ipiv, const blas_int* incx) = nullptr;
  // C = alpha op(A)^T op(A) + beta C, one triangle: the Gram matrix of a tall basis at half a GEMM's flops
  void (*syrk)(const char* uplo, const char* trans, const blas_int* n, const blas_int* k, const T* alpha, const T* a,
               const blas_int* lda, const T* beta, T* c, const blas_int* ldc, fortran_len, fortran_len) = nullptr;
  void (*potrf)(const char* uplo, const blas_int* n, T* a, const blas_int* lda, blas_int* info, fortran_len) = nullptr;
  void (*trsm)(const char* side, const char* uplo, const char* transa, const char* diag, const blas_int* m,
               const blas_int* n, const T* alpha, const T* a, const blas_int* lda, T* b, const blas_int* ldb,
               fortran_len, fortran_len, fortran_len, fortran_len) = nullptr;
  void (*gesdd)(const char* jobz, const blas_int* m, const blas_int* n, T* a, const blas_int* lda, T* s, T* u,
                const blas_int* ldu, T* vt, const blas_int* ldvt, T* work, const blas_int* lwork, blas_int* iwork,
                blas_int* info, fortran_len) = nullptr;
};

struct Lapack {
  LapackFns<float> s;
  LapackFns<double> d;
  void (*set_num_threads)(int) = nullptr;
  int (*get_num_threads)() = nullptr;
  std::string path;

  template <typename T>
  const LapackFns<T>& fns() const;
};

template <>
inline const LapackFns<float>& Lapack::fns<float>() const {
  return s;
}
template <>
inline const LapackFns<double>& Lapack::fns<double>() const {
  return d;
}

// Opens the OpenBLAS shared library at `path` and resolves every routine above; idempotent for the
// same path. Throws std::runtime_error naming the file or the missing symbol.
void load_lapack(const std::string& path);
// The loaded routines; throws std::runtime_error when load_lapack() has not succeeded yet.
const Lapack& lapack();
bool lapack_loaded();

}  // namespace lrf
}  // namespace npuq
