// See cuda_libs.h.
#include "cuda_libs.h"

#include <dirent.h>
#include <dlfcn.h>

#include <algorithm>
#include <mutex>
#include <stdexcept>

namespace npuq {
namespace cuda {
namespace {

std::mutex& load_mutex() {
  static std::mutex m;
  return m;
}

CudaLibs& table() {
  static CudaLibs t;
  return t;
}

bool loaded_unlocked() { return table().gesvdj_info_create != nullptr; }

// Thrown by bind() for a library that opened but lacks a routine: the next candidate is tried.
struct MissingSymbol : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename F>
void bind(void* handle, const char* name, F& fn) {
  dlerror();
  void* p = dlsym(handle, name);
  if (!p) throw MissingSymbol(std::string("has no symbol ") + name);
  fn = reinterpret_cast<F>(p);
}

std::string directory_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash);
}

// Opens, with RTLD_GLOBAL, one library of `dir` whose name starts with `prefix` (e.g. "libcublasLt.so"),
// preferring versioned names ("libcublasLt.so.13") and among them the last in name order. Nothing when
// there is none or it fails to open: the candidate that needs it then reports the missing dependency.
void preload_sibling(const std::string& dir, const std::string& prefix) {
  DIR* d = opendir(dir.c_str());
  if (!d) return;
  std::vector<std::string> names;
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name.compare(0, prefix.size(), prefix) == 0 && (name.size() == prefix.size() || name[prefix.size()] == '.'))
      names.push_back(name);
  }
  closedir(d);
  if (names.empty()) return;
  std::sort(names.begin(), names.end(), [](const std::string& a, const std::string& b) {
    if (a.size() != b.size()) return a.size() < b.size();
    return a < b;
  });
  const std::string path = dir + "/" + names.back();
  dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);  // the handle stays open for the life of the process
}

void* open_library(const std::string& candidate, const std::vector<const char*>& siblings, std::string* why) {
  const std::string dir = directory_of(candidate);
  if (!dir.empty())
    for (const char* s : siblings) preload_sibling(dir, s);
  dlerror();
  void* h = dlopen(candidate.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!h) {
    const char* err = dlerror();
    *why = err ? err : "dlopen failed";
  }
  return h;
}

template <typename T>
void bind_blas(void* h, BlasFns<T>& f, char c) {
  const std::string p = std::string("cublas") + static_cast<char>(c - 'a' + 'A');
  bind(h, (p + "gemm_v2").c_str(), f.gemm);
  bind(h, (p + "syrk_v2").c_str(), f.syrk);
  bind(h, (p + "trsm_v2").c_str(), f.trsm);
}

template <typename T>
void bind_solver(void* h, SolverFns<T>& f, char c) {
  const std::string p = std::string("cusolverDn") + static_cast<char>(c - 'a' + 'A');
  bind(h, (p + "geqrf_bufferSize").c_str(), f.geqrf_buffer);
  bind(h, (p + "geqrf").c_str(), f.geqrf);
  bind(h, (p + "orgqr_bufferSize").c_str(), f.orgqr_buffer);
  bind(h, (p + "orgqr").c_str(), f.orgqr);
  bind(h, (p + "potrf_bufferSize").c_str(), f.potrf_buffer);
  bind(h, (p + "potrf").c_str(), f.potrf);
  bind(h, (p + "gesvd_bufferSize").c_str(), f.gesvd_buffer);
  bind(h, (p + "gesvd").c_str(), f.gesvd);
  bind(h, (p + "syevd_bufferSize").c_str(), f.syevd_buffer);
  bind(h, (p + "syevd").c_str(), f.syevd);
  bind(h, (p + "gesvdj_bufferSize").c_str(), f.gesvdj_buffer);
  bind(h, (p + "gesvdj").c_str(), f.gesvdj);
}

std::string join_attempts(const std::vector<std::string>& attempts) {
  std::string out;
  for (const std::string& a : attempts) out += "\n  " + a;
  return out;
}

}  // namespace

void load_cuda_libs(const std::vector<std::string>& cublas_candidates,
                    const std::vector<std::string>& cusolver_candidates) {
  std::lock_guard<std::mutex> lock(load_mutex());
  if (loaded_unlocked()) return;
  CudaLibs fresh;
  std::vector<std::string> attempts;

  bool have_blas = false;
  for (const std::string& c : cublas_candidates) {
    std::string why;
    void* h = open_library(c, {"libcublasLt.so"}, &why);
    if (!h) {
      attempts.push_back("cuBLAS " + c + ": " + why);
      continue;
    }
    try {
      bind(h, "cublasCreate_v2", fresh.blas_create);
      bind(h, "cublasDestroy_v2", fresh.blas_destroy);
      bind(h, "cublasSetStream_v2", fresh.blas_set_stream);
      bind_blas(h, fresh.sblas, 's');
      bind_blas(h, fresh.dblas, 'd');
    } catch (const MissingSymbol& e) {
      attempts.push_back("cuBLAS " + c + ": " + e.what());
      continue;
    }
    fresh.cublas_path = c;
    have_blas = true;
    break;
  }
  if (!have_blas)
    throw std::runtime_error("cannot load cuBLAS; tried:" + (cublas_candidates.empty()
                                                                 ? std::string("\n  (no candidates)")
                                                                 : join_attempts(attempts)));

  bool have_solver = false;
  for (const std::string& c : cusolver_candidates) {
    std::string why;
    void* h = open_library(c, {"libnvJitLink.so", "libcublasLt.so", "libcublas.so", "libcusparse.so"}, &why);
    if (!h) {
      attempts.push_back("cuSOLVER " + c + ": " + why);
      continue;
    }
    try {
      bind(h, "cusolverDnCreate", fresh.solver_create);
      bind(h, "cusolverDnDestroy", fresh.solver_destroy);
      bind(h, "cusolverDnSetStream", fresh.solver_set_stream);
      bind_solver(h, fresh.ssolver, 's');
      bind_solver(h, fresh.dsolver, 'd');
      bind(h, "cusolverDnCreateGesvdjInfo", fresh.gesvdj_info_create);
      bind(h, "cusolverDnDestroyGesvdjInfo", fresh.gesvdj_info_destroy);
    } catch (const MissingSymbol& e) {
      fresh.gesvdj_info_create = nullptr;
      attempts.push_back("cuSOLVER " + c + ": " + e.what());
      continue;
    }
    fresh.cusolver_path = c;
    have_solver = true;
    break;
  }
  if (!have_solver)
    throw std::runtime_error(
        "cannot load cuSOLVER (cuBLAS loaded from " + fresh.cublas_path +
        "); tried:" + (cusolver_candidates.empty() ? std::string("\n  (no candidates)") : join_attempts(attempts)));
  table() = fresh;  // the handles stay open for the life of the process
}

const CudaLibs& cuda_libs() {
  std::lock_guard<std::mutex> lock(load_mutex());
  if (!loaded_unlocked())
    throw std::runtime_error(
        "cuBLAS / cuSOLVER are not loaded: call npuq._C.cuda_load_libs(cublas, cusolver) first "
        "(npuq.lrf.svd does)");
  return table();
}

bool cuda_libs_loaded() {
  std::lock_guard<std::mutex> lock(load_mutex());
  return loaded_unlocked();
}

std::string blas_status_text(lib_status s) {
  switch (s) {
    case 0: return "CUBLAS_STATUS_SUCCESS";
    case 1: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case 3: return "CUBLAS_STATUS_ALLOC_FAILED";
    case 7: return "CUBLAS_STATUS_INVALID_VALUE";
    case 8: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case 11: return "CUBLAS_STATUS_MAPPING_ERROR";
    case 13: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case 14: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case 15: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case 16: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "cuBLAS status " + std::to_string(s);
  }
}

std::string solver_status_text(lib_status s) {
  switch (s) {
    case 0: return "CUSOLVER_STATUS_SUCCESS";
    case 1: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case 2: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case 3: return "CUSOLVER_STATUS_INVALID_VALUE";
    case 4: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case 5: return "CUSOLVER_STATUS_MAPPING_ERROR";
    case 6: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case 7: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case 8: return "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED";
    case 9: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "cuSOLVER status " + std::to_string(s);
  }
}

}  // namespace cuda
}  // namespace npuq
