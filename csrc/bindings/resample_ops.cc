// Python bindings of the resampling ops (registered by csrc/bindings/module.cc): numpy NHWC int8 in, a new
// numpy array out. The Python layer (python/npuq/_ops_resample.py) converts torch tensors and checks the
// arguments with npuq's words; everything is checked again here and by the kernels' validate().
#include "bindings/resample_ops.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <array>
#include <string>
#include <vector>

#include "common/arrays.h"
#include "common/params.h"
#include "npuq/resample_ops.h"

namespace py = pybind11;

namespace npuq {
namespace bindings {
namespace {

UpsampleMode parse_mode(const std::string& s) {
  if (s == "nearest") return UpsampleMode::kNearest;
  if (s == "bilinear") return UpsampleMode::kBilinear;
  throw InvalidArgument("mode must be 'nearest' or 'bilinear', got '" + s + "'");
}

py::array_t<int8_t> mean(const py::array& x, int32_t input_zero_point, int32_t output_zero_point, int32_t multiplier,
                         int32_t exponent, int32_t act_min, int32_t act_max, bool tflite_rounding,
                         const std::string& rounding, int threads, bool reference) {
  const int8_t* xp = view<int8_t>(x, "x", 4);
  MeanParams p;
  p.batch = x.shape(0);
  p.in_h = x.shape(1);
  p.in_w = x.shape(2);
  p.channels = x.shape(3);
  p.input_zero_point = input_zero_point;
  p.output_zero_point = output_zero_point;
  p.multiplier = multiplier;
  p.exponent = exponent;
  p.act_min = act_min;
  p.act_max = act_max;
  p.tflite_rounding = tflite_rounding;
  p.rounding = parse_rounding(rounding);
  validate(p);
  py::array_t<int8_t> out({p.batch, int64_t{1}, int64_t{1}, p.channels});
  int8_t* op = out.mutable_data();
  {
    py::gil_scoped_release release;
    if (reference) ref::mean(xp, op, p);
    else cpu::mean(xp, op, p, threads);
  }
  return out;
}

py::array_t<int8_t> upsample(const py::array& x, std::array<int64_t, 2> scale, const std::string& mode,
                             int32_t zero_point, int threads, bool reference) {
  const int8_t* xp = view<int8_t>(x, "x", 4);
  UpsampleParams p;
  p.batch = x.shape(0);
  p.in_h = x.shape(1);
  p.in_w = x.shape(2);
  p.channels = x.shape(3);
  p.factor_h = scale[0];
  p.factor_w = scale[1];
  p.mode = parse_mode(mode);
  p.zero_point = zero_point;
  validate(p);
  py::array_t<int8_t> out({p.batch, p.out_h, p.out_w, p.channels});
  int8_t* op = out.mutable_data();
  {
    py::gil_scoped_release release;
    if (reference) ref::upsample(xp, op, p);
    else cpu::upsample(xp, op, p, threads);
  }
  return out;
}

py::array_t<int8_t> max_pool2d(const py::array& x, std::array<int64_t, 2> kernel, std::array<int64_t, 2> stride,
                               std::array<int64_t, 4> padding, bool ceil_mode, int threads, bool reference) {
  const int8_t* xp = view<int8_t>(x, "x", 4);
  MaxPool2dParams p;
  p.batch = x.shape(0);
  p.in_h = x.shape(1);
  p.in_w = x.shape(2);
  p.channels = x.shape(3);
  p.kernel_h = kernel[0];
  p.kernel_w = kernel[1];
  p.stride_h = stride[0];
  p.stride_w = stride[1];
  p.pad_top = padding[0];
  p.pad_bottom = padding[1];
  p.pad_left = padding[2];
  p.pad_right = padding[3];
  p.ceil_mode = ceil_mode;
  validate(p);
  py::array_t<int8_t> out({p.batch, p.out_h, p.out_w, p.channels});
  int8_t* op = out.mutable_data();
  {
    py::gil_scoped_release release;
    if (reference) ref::max_pool2d(xp, op, p);
    else cpu::max_pool2d(xp, op, p, threads);
  }
  return out;
}

py::array_t<int8_t> channel_shuffle(const py::array& x, int64_t groups, int threads) {
  const int8_t* xp = view<int8_t>(x, "x", 4);
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  const int64_t channels = x.shape(3), rows = x.size() / channels;
  py::array_t<int8_t> out(shape);
  int8_t* op = out.mutable_data();
  {
    py::gil_scoped_release release;
    cpu::channel_shuffle(xp, op, rows, channels, groups, threads);
  }
  return out;
}

}  // namespace

void register_resample_ops(py::module_& m) {
  m.def("mean", &mean, py::arg("x"), py::arg("input_zero_point"), py::arg("output_zero_point"), py::arg("multiplier"),
        py::arg("exponent"), py::arg("act_min") = -128, py::arg("act_max") = 127, py::arg("tflite_rounding") = false,
        py::arg("rounding") = "double", py::arg("threads") = 0, py::arg("reference") = false,
        "Mean over H and W (docs/arithmetic.md 15): (N, H, W, C) int8 -> (N, 1, 1, C)");
  m.def("upsample", &upsample, py::arg("x"), py::arg("scale"), py::arg("mode") = "nearest", py::arg("zero_point") = 0,
        py::arg("threads") = 0, py::arg("reference") = false,
        "Nearest / bilinear upsampling by integer factors (docs/arithmetic.md 12, 13)");
  m.def("max_pool2d", &max_pool2d, py::arg("x"), py::arg("kernel"), py::arg("stride"), py::arg("padding"),
        py::arg("ceil_mode") = false, py::arg("threads") = 0, py::arg("reference") = false,
        "Max pooling with clipped windows (docs/arithmetic.md 14)");
  m.def("channel_shuffle", &channel_shuffle, py::arg("x"), py::arg("groups"), py::arg("threads") = 0,
        "ShuffleNet's channel shuffle of an (N, H, W, C) array (docs/arithmetic.md 12)");
  m.def(
      "pool_output_size",
      [](int64_t size, int64_t kernel, int64_t stride, int64_t pad_lo, int64_t pad_hi, bool ceil_mode) {
        return pool_output_size(size, kernel, stride, pad_lo, pad_hi, ceil_mode);
      },
      py::arg("size"), py::arg("kernel"), py::arg("stride"), py::arg("pad_lo"), py::arg("pad_hi"),
      py::arg("ceil_mode") = false, "Output size of a pooling window along one axis (docs/arithmetic.md 14)");
}

}  // namespace bindings
}  // namespace npuq
