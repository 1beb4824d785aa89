// Python bindings of the eltwise ops (registered by csrc/bindings/module.cc): npuq._C.lut, mul and
// concat on numpy arrays. Every array is checked (dtype, contiguity, shapes) before a kernel runs; the
// kernels' validate() checks the parameters. `reference=True` runs the scalar reference.
#include "bindings/eltwise_ops.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "common/arrays.h"
#include "common/params.h"
#include "npuq/eltwise_ops.h"

namespace py = pybind11;

namespace npuq {
namespace bindings {
namespace {

std::vector<py::ssize_t> shape_vector(const py::array& a) { return {a.shape(), a.shape() + a.ndim()}; }

py::array_t<int8_t> lut_py(const py::array& x, const py::array& table, int threads, bool reference) {
  const int8_t* xp = view<int8_t>(x, "x", -1);
  const int8_t* tp = view<int8_t>(table, "table", 1);
  require_length(table, "table", kLutEntries);
  py::array_t<int8_t> out(shape_vector(x));
  int8_t* op = out.mutable_data();
  const int64_t count = x.size();
  {
    py::gil_scoped_release release;
    if (reference) ref::lut(xp, op, count, tp);
    else cpu::lut(xp, op, count, tp, threads);
  }
  return out;
}

}  // namespace

MulParams mul_shape(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  auto text = [](const std::vector<int64_t>& s) {
    std::string t = "(";
    for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
    return t + (s.size() == 1 ? ",)" : ")");
  };
  if (a.size() != 2 && a.size() != 4) throw InvalidArgument("a must be (N, H, W, C) or (N, K), got shape " + text(a));
  for (int64_t d : a)
    if (d < 1) throw InvalidArgument("a is empty: shape " + text(a));
  MulParams p;
  p.batch = a[0];
  p.channels = a.back();
  p.positions = a.size() == 4 ? a[1] * a[2] : 1;
  if (b == a) return p;
  if (a.size() == 4 && b.size() == 4 && b[0] == a[0] && b[1] == 1 && b[2] == 1 && b[3] == a[3]) {
    p.broadcast_b = true;
    return p;
  }
  throw InvalidArgument("b must have a's shape " + text(a) + (a.size() == 4 ? " or (N, 1, 1, C)" : "") +
                        ", got shape " + text(b));
}

void register_eltwise_ops(py::module_& m) {
  m.def("lut", &lut_py, py::arg("x"), py::arg("table"), py::arg("threads") = 0, py::arg("reference") = false,
        "y = table[x + 128] elementwise (docs/arithmetic.md 9)");

  m.def(
      "mul",
      [](const py::array& a, const py::array& b, int32_t a_zero_point, int32_t b_zero_point, int32_t output_zero_point,
         int32_t multiplier, int32_t exponent, int32_t act_min, int32_t act_max, const std::string& rounding,
         int threads, bool reference) {
        const int8_t* ap = view<int8_t>(a, "a", -1);
        const int8_t* bp = view<int8_t>(b, "b", -1);
        MulParams p = mul_shape({a.shape(), a.shape() + a.ndim()}, {b.shape(), b.shape() + b.ndim()});
        p.a_zero_point = a_zero_point;
        p.b_zero_point = b_zero_point;
        p.out_zero_point = output_zero_point;
        p.multiplier = multiplier;
        p.exponent = exponent;
        p.act_min = act_min;
        p.act_max = act_max;
        p.rounding = parse_rounding(rounding);
        validate(p);
        py::array_t<int8_t> out(shape_vector(a));
        int8_t* op = out.mutable_data();
        {
          py::gil_scoped_release release;
          if (reference) ref::mul(ap, bp, op, p);
          else cpu::mul(ap, bp, op, p, threads);
        }
        return out;
      },
      py::arg("a"), py::arg("b"), py::arg("a_zero_point"), py::arg("b_zero_point"), py::arg("output_zero_point"),
      py::arg("multiplier"), py::arg("exponent"), py::arg("act_min") = -128, py::arg("act_max") = 127,
      py::arg("rounding") = "double", py::arg("threads") = 0, py::arg("reference") = false,
      "Elementwise multiply with requantization (docs/arithmetic.md 10)");

  m.def(
      "concat",
      [](const std::vector<py::array>& inputs, const std::vector<int32_t>& zero_points,
         const std::vector<int32_t>& multipliers, const std::vector<int32_t>& exponents, int32_t output_zero_point,
         const std::string& rounding, int threads, bool reference) {
        const size_t n = inputs.size();
        if (n < 2 || n > static_cast<size_t>(kMaxConcatInputs))
          throw InvalidArgument("concat: inputs must hold 2 to " + std::to_string(kMaxConcatInputs) + " tensors, got " +
                                std::to_string(n));
        for (auto* list : {&zero_points, &multipliers, &exponents})
          if (list->size() != n)
            throw InvalidArgument("concat: zero_points, multipliers and exponents need one entry per input (" +
                                  std::to_string(n) + "), got " + std::to_string(zero_points.size()) + ", " +
                                  std::to_string(multipliers.size()) + " and " + std::to_string(exponents.size()));
        std::vector<ConcatInput> in(n);
        const py::array& first = inputs[0];
        if (first.ndim() != 2 && first.ndim() != 4)
          throw InvalidArgument("inputs[0] must be (N, H, W, C) or (N, K), got shape " + shape_of(first));
        std::vector<py::ssize_t> out_shape = shape_vector(first);
        out_shape.back() = 0;
        for (size_t i = 0; i < n; ++i) {
          const std::string name = "inputs[" + std::to_string(i) + "]";
          const py::array& x = inputs[i];
          in[i].data = view<int8_t>(x, name.c_str(), first.ndim());
          for (py::ssize_t d = 0; d + 1 < x.ndim(); ++d)
            if (x.shape(d) != first.shape(d))
              throw InvalidArgument("concat: " + name + " has shape " + shape_of(x) + " but inputs[0] has " +
                                    shape_of(first) + ": all but the last dimension must agree");
          in[i].channels = x.shape(x.ndim() - 1);
          in[i].zero_point = zero_points[i];
          in[i].multiplier = multipliers[i];
          in[i].exponent = exponents[i];
          out_shape.back() += x.shape(x.ndim() - 1);
        }
        ConcatParams p;
        p.rows = first.size() / first.shape(first.ndim() - 1);
        p.num_inputs = static_cast<int>(n);
        p.inputs = in.data();
        p.out_zero_point = output_zero_point;
        p.rounding = parse_rounding(rounding);
        validate(p);
        py::array_t<int8_t> out(out_shape);
        int8_t* op = out.mutable_data();
        {
          py::gil_scoped_release release;
          if (reference) ref::concat(op, p);
          else cpu::concat(op, p, threads);
        }
        return out;
      },
      py::arg("inputs"), py::arg("zero_points"), py::arg("multipliers"), py::arg("exponents"),
      py::arg("output_zero_point"), py::arg("rounding") = "double", py::arg("threads") = 0,
      py::arg("reference") = false, "Concatenation along the last axis with requantization (docs/arithmetic.md 11)");
}

}  // namespace bindings
}  // namespace npuq
