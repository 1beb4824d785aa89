#include "lapack.h"

#include <dlfcn.h>

#include <mutex>
#include <stdexcept>

namespace npuq {
namespace lrf {
namespace {

std::mutex& load_mutex() {
  static std::mutex m;
  return m;
}

Lapack& table() {
  static Lapack t;
  return t;
}

template <typename F>
void bind(void* handle, const std::string& path, const char* name, F& fn) {
  void* p = dlsym(handle, name);
  if (!p) throw std::runtime_error("OpenBLAS library " + path + " has no symbol " + name);
  fn = reinterpret_cast<F>(p);
}

template <typename T>
void bind_all(void* h, const std::string& path, LapackFns<T>& f, char c) {
  const std::string p = std::string("scipy_") + c;
  bind(h, path, (p + "gemm_").c_str(), f.gemm);
  bind(h, path, (p + "geqrf_").c_str(), f.geqrf);
  bind(h, path, (p + "orgqr_").c_str(), f.orgqr);
  bind(h, path, (p + "getrf_").c_str(), f.getrf);
  bind(h, path, (p + "laswp_").c_str(), f.laswp);
  bind(h, path, (p + "syrk_").c_str(), f.syrk);
  bind(h, path, (p + "potrf_").c_str(), f.potrf);
  bind(h, path, (p + "trsm_").c_str(), f.trsm);
  bind(h, path, (p + "gesdd_").c_str(), f.gesdd);
}

}  // namespace

void load_lapack(const std::string& path) {
  std::lock_guard<std::mutex> lock(load_mutex());
  Lapack& t = table();
  if (t.set_num_threads && t.path == path) return;
  // RTLD_LOCAL: the prefixed symbols are only ever reached through this handle, so they can clash
  // with nothing else in the process (torch and numpy bring BLAS libraries of their own).
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* err = dlerror();
    throw std::runtime_error("cannot load OpenBLAS from " + path + ": " + (err ? err : "unknown error"));
  }
  Lapack fresh;
  bind_all(h, path, fresh.s, 's');
  bind_all(h, path, fresh.d, 'd');
  bind(h, path, "scipy_openblas_set_num_threads", fresh.set_num_threads);
  bind(h, path, "scipy_openblas_get_num_threads", fresh.get_num_threads);
  fresh.path = path;
  t = fresh;  // the handle stays open for the life of the process
}

const Lapack& lapack() {
  std::lock_guard<std::mutex> lock(load_mutex());
  if (!table().set_num_threads)
    throw std::runtime_error("OpenBLAS is not loaded: call npuq._C.lrf_load_lapack(path) first (npuq.lrf.svd does)");
  return table();
}

bool lapack_loaded() {
  std::lock_guard<std::mutex> lock(load_mutex());
  return table().set_num_threads != nullptr;
}

}  // namespace lrf
}  // namespace npuq
