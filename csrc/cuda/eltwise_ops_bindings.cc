// Python bindings of the CUDA eltwise kernels (registered by csrc/bindings/module.cc in CUDA builds).
//
// As in csrc/cuda/bindings.cc, device memory arrives as raw pointers (Python ints) with the element count
// of the buffer behind each one: every pointer is checked to be device memory of the call's device and
// every count against what the kernel touches before anything is launched.
#include "cuda/eltwise_ops_bindings.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <vector>

#include "bindings/eltwise_ops.h"
#include "common/arrays.h"
#include "common/params.h"
#include "cuda/runtime.h"
#include "npuq/eltwise_ops.h"

namespace py = pybind11;

namespace npuq {
namespace cuda {
namespace {

void* as_ptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

void require_count(int64_t have, int64_t need, const std::string& name) {
  if (have < need)
    throw InvalidArgument(name + " holds " + std::to_string(have) + " elements but the operation needs " +
                          std::to_string(need));
}

int64_t product(const std::vector<int64_t>& shape, const std::string& name) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 1) throw InvalidArgument(name + " is empty or has a negative dimension");
    n *= d;
  }
  return n;
}

void lut_py(uintptr_t x, int64_t x_count, const py::array& table, uintptr_t out, int64_t out_count, int device,
            uintptr_t stream) {
  const int8_t* tp = bindings::view<int8_t>(table, "table", 1);
  bindings::require_length(table, "table", kLutEntries);
  if (x_count < 1) throw InvalidArgument("lut: x is empty");
  require_count(out_count, x_count, "out");
  require_device(device);
  require_device_pointer(as_ptr(x), device, "x");
  require_device_pointer(as_ptr(out), device, "out");
  lut(static_cast<const int8_t*>(as_ptr(x)), static_cast<int8_t*>(as_ptr(out)), x_count, tp, device, as_stream(stream));
}

void mul_py(uintptr_t a, const std::vector<int64_t>& a_shape, int64_t a_count, uintptr_t b,
            const std::vector<int64_t>& b_shape, int64_t b_count, uintptr_t out, int64_t out_count,
            int32_t a_zero_point, int32_t b_zero_point, int32_t output_zero_point, int32_t multiplier, int32_t exponent,
            int32_t act_min, int32_t act_max, const std::string& rounding, int device, uintptr_t stream) {
  MulParams p = bindings::mul_shape(a_shape, b_shape);
  p.a_zero_point = a_zero_point;
  p.b_zero_point = b_zero_point;
  p.out_zero_point = output_zero_point;
  p.multiplier = multiplier;
  p.exponent = exponent;
  p.act_min = act_min;
  p.act_max = act_max;
  p.rounding = bindings::parse_rounding(rounding);
  validate(p);
  require_count(a_count, p.count(), "a");
  require_count(b_count, p.b_count(), "b");
  require_count(out_count, p.count(), "out");
  require_device(device);
  require_device_pointer(as_ptr(a), device, "a");
  require_device_pointer(as_ptr(b), device, "b");
  require_device_pointer(as_ptr(out), device, "out");
  mul(static_cast<const int8_t*>(as_ptr(a)), static_cast<const int8_t*>(as_ptr(b)), static_cast<int8_t*>(as_ptr(out)),
      p, device, as_stream(stream));
}

void concat_py(const std::vector<uintptr_t>& inputs, const std::vector<std::vector<int64_t>>& shapes,
               const std::vector<int64_t>& counts, const std::vector<int32_t>& zero_points,
               const std::vector<int32_t>& multipliers, const std::vector<int32_t>& exponents,
               int32_t output_zero_point, const std::string& rounding, uintptr_t out, int64_t out_count, int device,
               uintptr_t stream) {
  const size_t n = inputs.size();
  if (n < 2 || n > static_cast<size_t>(kMaxConcatInputs))
    throw InvalidArgument("concat: inputs must hold 2 to " + std::to_string(kMaxConcatInputs) + " tensors, got " +
                          std::to_string(n));
  if (shapes.size() != n || counts.size() != n || zero_points.size() != n || multipliers.size() != n ||
      exponents.size() != n)
    throw InvalidArgument("concat: shapes, counts, zero_points, multipliers and exponents need one entry per input");
  const std::vector<int64_t>& first = shapes[0];
  if (first.size() != 2 && first.size() != 4) throw InvalidArgument("inputs[0] must be (N, H, W, C) or (N, K)");
  require_device(device);
  std::vector<ConcatInput> in(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string name = "inputs[" + std::to_string(i) + "]";
    const std::vector<int64_t>& s = shapes[i];
    if (s.size() != first.size() || !std::equal(s.begin(), s.end() - 1, first.begin()))
      throw InvalidArgument("concat: " + name + " must agree with inputs[0] in every dimension but the last");
    require_count(counts[i], product(s, name), name);
    require_device_pointer(as_ptr(inputs[i]), device, name.c_str());
    in[i].data = static_cast<const int8_t*>(as_ptr(inputs[i]));
    in[i].channels = s.back();
    in[i].zero_point = zero_points[i];
    in[i].multiplier = multipliers[i];
    in[i].exponent = exponents[i];
  }
  ConcatParams p;
  p.rows = product(first, "inputs[0]") / first.back();
  p.num_inputs = static_cast<int>(n);
  p.inputs = in.data();
  p.out_zero_point = output_zero_point;
  p.rounding = bindings::parse_rounding(rounding);
  validate(p);
  require_count(out_count, p.rows * p.out_channels(), "out");
  require_device_pointer(as_ptr(out), device, "out");
  concat(static_cast<int8_t*>(as_ptr(out)), p, device, as_stream(stream));
}

}  // namespace

void register_eltwise_ops(py::module_& m) {
  m.def("cuda_lut", &lut_py, py::arg("x"), py::arg("x_count"), py::arg("table"), py::arg("out"), py::arg("out_count"),
        py::arg("device"), py::arg("stream"));
  m.def("cuda_mul", &mul_py, py::arg("a"), py::arg("a_shape"), py::arg("a_count"), py::arg("b"), py::arg("b_shape"),
        py::arg("b_count"), py::arg("out"), py::arg("out_count"), py::arg("a_zero_point"), py::arg("b_zero_point"),
        py::arg("output_zero_point"), py::arg("multiplier"), py::arg("exponent"), py::arg("act_min"),
        py::arg("act_max"), py::arg("rounding"), py::arg("device"), py::arg("stream"));
  m.def("cuda_concat", &concat_py, py::arg("inputs"), py::arg("shapes"), py::arg("counts"), py::arg("zero_points"),
        py::arg("multipliers"), py::arg("exponents"), py::arg("output_zero_point"), py::arg("rounding"), py::arg("out"),
        py::arg("out_count"), py::arg("device"), py::arg("stream"));
}

}  // namespace cuda
}  // namespace npuq
