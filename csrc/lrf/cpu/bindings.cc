#include "bindings.h"

#include <pybind11/numpy.h>

#include <string>

#include "lapack.h"
#include "npuq/ops.h"
#include "truncated_svd.h"

namespace py = pybind11;

namespace npuq {
namespace lrf {
namespace {

SvdMethod parse_method(const std::string& s) {
  if (s == "auto") return SvdMethod::kAuto;
  if (s == "randomized") return SvdMethod::kRandomized;
  if (s == "exact") return SvdMethod::kExact;
  if (s == "krylov") return SvdMethod::kKrylov;
  throw InvalidArgument("method must be 'auto', 'randomized', 'exact' or 'krylov', got '" + s + "'");
}

BasisMethod parse_basis(const std::string& s) {
  if (s == "auto") return BasisMethod::kAuto;
  if (s == "householder") return BasisMethod::kHouseholder;
  throw InvalidArgument("basis must be 'auto' or 'householder', got '" + s + "'");
}

const char* method_name(SvdMethod m) {
  switch (m) {
    case SvdMethod::kExact: return "exact";
    case SvdMethod::kRandomized: return "randomized";
    case SvdMethod::kKrylov: return "krylov";
    default: return "auto";
  }
}

const char* basis_name(BasisUsed b) {
  switch (b) {
    case BasisUsed::kCholesky: return "cholesky";
    case BasisUsed::kLuCholesky: return "lu+cholesky";
    case BasisUsed::kHouseholder: return "householder";
    default: return "none";
  }
}

std::string shape_text(const py::array& a) {
  std::string out = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) out += (i ? ", " : "") + std::to_string(a.shape(i));
  return out + (a.ndim() == 1 ? ",)" : ")");
}

template <typename T>
py::tuple run(const py::array& a_in, int64_t rank, const SvdOptions& base) {
  // A C-contiguous, aligned array of T: strided or misaligned input is copied (forcecast only converts
  // layout here; the dtype was checked by the caller).
  auto a = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(a_in);
  if (!a) throw InvalidArgument("truncated_svd: cannot read the matrix as a C-contiguous array");
  if (reinterpret_cast<uintptr_t>(a.data()) % alignof(T) != 0)
    throw InvalidArgument("truncated_svd: the matrix is not aligned to " + std::to_string(alignof(T)) + " bytes");
  const int64_t m = a.shape(0), n = a.shape(1);
  SvdOptions opt = base;
  opt.rank = rank;
  if (m == 0 || n == 0) throw InvalidArgument("truncated_svd: the matrix is empty: shape " + shape_text(a));
  if (rank < 1 || rank > std::min(m, n))
    throw InvalidArgument("truncated_svd: rank must be in [1, min(m, n)] = [1, " + std::to_string(std::min(m, n)) +
                          "] for shape " + shape_text(a) + ", got " + std::to_string(rank));
  py::array_t<T> u({m, rank}), s({rank}), vt({rank, n});
  const T* ap = a.data();
  T* up = u.mutable_data();
  T* sp = s.mutable_data();
  T* vp = vt.mutable_data();
  SvdResult r;
  {
    py::gil_scoped_release release;
    r = truncated_svd<T>(ap, m, n, opt, up, sp, vp);
  }
  py::dict info;
  info["method"] = method_name(r.method);
  info["basis"] = basis_name(r.basis);
  info["sketch"] = r.sketch;
  info["direct_error"] = r.direct_error;
  return py::make_tuple(u, s, vt, r.error, info);
}

py::tuple truncated_svd_py(const py::array& a, int64_t rank, const std::string& method, int64_t oversampling,
                           int64_t power_iterations, uint64_t seed, int threads, const std::string& basis,
                           int64_t block_size) {
  if (a.ndim() != 2)
    throw InvalidArgument("truncated_svd: the matrix must have 2 dimensions, got shape " + shape_text(a));
  SvdOptions opt;
  opt.method = parse_method(method);
  opt.oversampling = oversampling;
  opt.power_iterations = power_iterations;
  opt.seed = seed;
  opt.threads = threads;
  opt.basis = parse_basis(basis);
  opt.block_size = block_size;
  // equal(), not is(): a dtype object equal to float32 need not be numpy's canonical instance
  if (a.dtype().equal(py::dtype::of<float>())) return run<float>(a, rank, opt);
  if (a.dtype().equal(py::dtype::of<double>())) return run<double>(a, rank, opt);
  throw py::type_error("truncated_svd: unsupported dtype " + std::string(py::str(a.dtype())) +
                       "; supported: float32, float64");
}

}  // namespace

void register_bindings(py::module_& m) {
  m.def("lrf_load_lapack", &load_lapack, py::arg("path"),
        "Open OpenBLAS (scipy-openblas32) at path for the low-rank code; done by npuq.lrf.svd on import");
  m.def("lrf_lapack_loaded", &lapack_loaded);
  m.def("lrf_auto_picks_exact", &auto_picks_exact, py::arg("m"), py::arg("n"), py::arg("rank"),
        py::arg("oversampling"));
  m.def(
      "lrf_auto_method",
      [](int64_t m, int64_t n, int64_t rank, int64_t oversampling, int64_t power_iterations) {
        return std::string(method_name(auto_method(m, n, rank, oversampling, power_iterations)));
      },
      py::arg("m"), py::arg("n"), py::arg("rank"), py::arg("oversampling"), py::arg("power_iterations"));
  m.def("lrf_truncated_svd", &truncated_svd_py, py::arg("a"), py::arg("rank"), py::arg("method") = "auto",
        py::arg("oversampling") = 10, py::arg("power_iterations") = 2, py::arg("seed") = 0, py::arg("threads") = 0,
        py::arg("basis") = "auto", py::arg("block_size") = 0,
        "(U, S, Vt, error, info) of a 2-D float32/float64 array; see npuq.lrf.svd.truncated_svd. info: the "
        "method that ran, the sketch (or Krylov basis) width, whether the error was evaluated directly, and "
        "the orthonormalization used ('cholesky', 'lu+cholesky', 'householder'; 'none' for exact). "
        "basis='householder' forces Householder QR for every basis (for comparisons); block_size: columns "
        "per Krylov block (0: rank + oversampling)");
}

}  // namespace lrf
}  // namespace npuq
