// Python bindings of the GPU truncated SVD (svd.h) and of the cuBLAS / cuSOLVER loader (cuda_libs.h).
// Device memory crosses as integers (uintptr_t), streams as cudaStream_t handles: the Python layer
// (python/npuq/lrf/svd_cuda.py) takes them from torch tensors or __cuda_array_interface__ objects and
// allocates the outputs; everything is re-checked here before any CUDA call.
#include "svd_bindings.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cuda/runtime.h"
#include "cuda_libs.h"
#include "npuq/ops.h"
#include "svd.h"

namespace py = pybind11;

namespace npuq {
namespace cuda {
namespace {

// A str or a sequence of str, as a list of candidates.
std::vector<std::string> candidates(const py::object& o, const char* name) {
  if (py::isinstance<py::str>(o)) return {o.cast<std::string>()};
  if (py::isinstance<py::sequence>(o)) {
    std::vector<std::string> out;
    for (const py::handle item : o) {
      if (!py::isinstance<py::str>(item))
        throw py::type_error(std::string(name) + " must be a path or a list of paths (str)");
      out.push_back(item.cast<std::string>());
    }
    return out;
  }
  throw py::type_error(std::string(name) + " must be a path or a list of paths (str)");
}

void* as_pointer(uintptr_t p, const char* name) {
  if (p == 0) throw InvalidArgument(std::string("cuda_truncated_svd: ") + name + " is a null pointer");
  return reinterpret_cast<void*>(p);
}

py::object truncated_svd_py(uintptr_t a, int64_t m, int64_t n, const std::string& dtype, int64_t rank,
                            int64_t oversampling, int64_t power_iterations, uint64_t seed, const std::string& method,
                            int device, uintptr_t stream, uintptr_t u, uintptr_t s, uintptr_t vt, bool return_info) {
  if (dtype != "float32" && dtype != "float64")
    throw py::type_error("cuda_truncated_svd: unsupported dtype '" + dtype + "'; supported: float32, float64");
  if (m <= 0 || n <= 0)
    throw InvalidArgument("cuda_truncated_svd: the matrix is empty: shape (" + std::to_string(m) + ", " +
                          std::to_string(n) + ")");
  const int64_t k = std::min(m, n);
  if (rank < 1 || rank > k)
    throw InvalidArgument("cuda_truncated_svd: rank must be in [1, min(m, n)] = [1, " + std::to_string(k) +
                          "] for shape (" + std::to_string(m) + ", " + std::to_string(n) + "), got " +
                          std::to_string(rank));
  if (oversampling < 0)
    throw InvalidArgument("cuda_truncated_svd: oversampling must be >= 0, got " + std::to_string(oversampling));
  if (power_iterations < 0)
    throw InvalidArgument("cuda_truncated_svd: power_iterations must be >= 0, got " + std::to_string(power_iterations));
  if (device < 0) throw InvalidArgument("cuda_truncated_svd: device must be >= 0, got " + std::to_string(device));
  GpuSvdOptions opt;
  opt.rank = rank;
  opt.method = parse_gpu_method(method);
  opt.oversampling = oversampling;
  opt.power_iterations = power_iterations;
  opt.seed = seed;
  void* ap = as_pointer(a, "a");
  void* up = as_pointer(u, "u");
  void* sp = as_pointer(s, "s");
  void* vp = as_pointer(vt, "vt");
  void* st = reinterpret_cast<void*>(stream);
  GpuSvdResult r;
  {
    py::gil_scoped_release release;
    if (dtype == "float32")
      r = truncated_svd_gpu<float>(static_cast<const float*>(ap), m, n, opt, static_cast<float*>(up),
                                   static_cast<float*>(sp), static_cast<float*>(vp), device, st);
    else
      r = truncated_svd_gpu<double>(static_cast<const double*>(ap), m, n, opt, static_cast<double*>(up),
                                    static_cast<double*>(sp), static_cast<double*>(vp), device, st);
  }
  if (!return_info) return py::float_(r.error);
  py::dict info;
  info["method"] = gpu_method_name(r.method);
  info["sketch"] = r.sketch;
  info["basis"] = r.method == GpuSvdMethod::kExact ? "none" : (r.householder ? "householder" : "cholesky");
  info["direct_error"] = r.direct_error;
  info["small_svd"] = r.method == GpuSvdMethod::kExact
                          ? "gesvd"
                          : (r.gram_small_svd ? "syevd" : (r.gesvd_fallback ? "gesvd" : "gesvdj"));
  return py::make_tuple(r.error, info);
}

}  // namespace

void register_svd_bindings(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const DeviceOutOfMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });
  m.def(
      "cuda_load_libs",
      [](const py::object& cublas, const py::object& cusolver) {
        const std::vector<std::string> b = candidates(cublas, "cublas"), s = candidates(cusolver, "cusolver");
        py::gil_scoped_release release;
        load_cuda_libs(b, s);
      },
      py::arg("cublas"), py::arg("cusolver"),
      "Open cuBLAS and cuSOLVER for the GPU truncated SVD: each argument a path (or soname) or a list of them, "
      "tried in order; RuntimeError listing every attempt when none loads. Done by npuq.lrf.svd on first GPU use");
  m.def("cuda_libs_loaded", &cuda_libs_loaded);
  m.def("cuda_libs_paths", []() -> py::tuple {
    if (!cuda_libs_loaded()) return py::make_tuple(py::none(), py::none());
    const CudaLibs& l = cuda_libs();
    return py::make_tuple(l.cublas_path, l.cusolver_path);
  });
  m.def("cuda_truncated_svd", &truncated_svd_py, py::arg("a"), py::arg("m"), py::arg("n"), py::arg("dtype"),
        py::arg("rank"), py::arg("oversampling") = 10, py::arg("power_iterations") = 2, py::arg("seed") = 0,
        py::arg("method") = "randomized", py::arg("device") = 0, py::arg("stream") = 0, py::arg("u") = 0,
        py::arg("s") = 0, py::arg("vt") = 0, py::arg("return_info") = false,
        "Truncated SVD of the row-major m x n matrix at device address a (dtype 'float32' or 'float64') on CUDA "
        "device `device`, queued on the cudaStream_t `stream`: writes U (m x rank), S (rank) and Vt (rank x n, "
        "row-major) to the device addresses u, s, vt and returns ||A - U diag(S) Vt||_F (with return_info, "
        "(error, info): the method that ran, the sketch width, the basis used, whether the error was evaluated "
        "from the residual, the small SVD's routine). method 'auto' (randomized), 'randomized' or 'exact'. "
        "See npuq.lrf.svd.truncated_svd");
}

}  // namespace cuda
}  // namespace npuq
