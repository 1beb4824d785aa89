// Python bindings of the CUDA resampling kernels. Device memory arrives as raw pointers with the element
// count of the buffer behind each (python/npuq/_cuda.py); every pointer is checked to be device memory of
// the call's device and every count against what the kernel touches before anything is launched.
#include "cuda/resample_ops_bindings.h"

#include <pybind11/stl.h>

#include <array>
#include <initializer_list>
#include <string>

#include "common/params.h"

namespace py = pybind11;

namespace npuq {
namespace cuda {
namespace {

void* as_ptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

void require_count(int64_t have, int64_t need, const char* name) {
  if (have < need)
    throw InvalidArgument(std::string(name) + " holds " + std::to_string(have) + " elements but the operation needs " +
                          std::to_string(need));
}

void require_buffers(uintptr_t x, int64_t x_count, int64_t x_need, uintptr_t out, int64_t out_count, int64_t out_need,
                     int device) {
  require_count(x_count, x_need, "x");
  require_count(out_count, out_need, "out");
  require_device(device);
  require_device_pointer(as_ptr(x), device, "x");
  require_device_pointer(as_ptr(out), device, "out");
}

void mean_py(uintptr_t x, int64_t x_count, std::array<int64_t, 4> x_shape, uintptr_t out, int64_t out_count,
             int32_t input_zero_point, int32_t output_zero_point, int32_t multiplier, int32_t exponent, int32_t act_min,
             int32_t act_max, bool tflite_rounding, const std::string& rounding, int device, uintptr_t stream) {
  MeanParams p;
  p.batch = x_shape[0];
  p.in_h = x_shape[1];
  p.in_w = x_shape[2];
  p.channels = x_shape[3];
  p.input_zero_point = input_zero_point;
  p.output_zero_point = output_zero_point;
  p.multiplier = multiplier;
  p.exponent = exponent;
  p.act_min = act_min;
  p.act_max = act_max;
  p.tflite_rounding = tflite_rounding;
  p.rounding = bindings::parse_rounding(rounding);
  validate(p);
  require_buffers(x, x_count, p.batch * p.count() * p.channels, out, out_count, p.batch * p.channels, device);
  mean(static_cast<const int8_t*>(as_ptr(x)), static_cast<int8_t*>(as_ptr(out)), p, device, as_stream(stream));
}

void upsample_py(uintptr_t x, int64_t x_count, std::array<int64_t, 4> x_shape, uintptr_t out, int64_t out_count,
                 std::array<int64_t, 2> scale, const std::string& mode, int32_t zero_point, int device,
                 uintptr_t stream) {
  UpsampleParams p;
  p.batch = x_shape[0];
  p.in_h = x_shape[1];
  p.in_w = x_shape[2];
  p.channels = x_shape[3];
  p.factor_h = scale[0];
  p.factor_w = scale[1];
  if (mode == "nearest") p.mode = UpsampleMode::kNearest;
  else if (mode == "bilinear") p.mode = UpsampleMode::kBilinear;
  else throw InvalidArgument("mode must be 'nearest' or 'bilinear', got '" + mode + "'");
  p.zero_point = zero_point;
  validate(p);
  require_buffers(x, x_count, p.batch * p.in_h * p.in_w * p.channels, out, out_count,
                  p.batch * p.out_h * p.out_w * p.channels, device);
  upsample(static_cast<const int8_t*>(as_ptr(x)), static_cast<int8_t*>(as_ptr(out)), p, device, as_stream(stream));
}

// Extents of the data movements: each in [1, 2^30] and at most 2^40 elements, so no index overflows.
void check_extents(const char* op, std::initializer_list<int64_t> extents) {
  int64_t total = 1;
  for (int64_t e : extents) {
    if (e < 1 || e > (int64_t{1} << 30))
      throw InvalidArgument(std::string(op) + ": every extent must be in [1, 2^30], got " + std::to_string(e));
    total = total > (int64_t{1} << 40) / e ? (int64_t{1} << 41) : total * e;
  }
  if (total > (int64_t{1} << 40)) throw InvalidArgument(std::string(op) + ": more than 2^40 elements");
}

void pad_py(uintptr_t x, int64_t x_count, std::array<int64_t, 4> x_shape, uintptr_t out, int64_t out_count,
            std::array<int64_t, 4> padding, int32_t value, int device, uintptr_t stream) {
  PadShape s;
  s.batch = x_shape[0];
  s.in_h = x_shape[1];
  s.in_w = x_shape[2];
  s.channels = x_shape[3];
  for (int64_t v : padding)
    if (v < 0 || v > (int64_t{1} << 30))
      throw InvalidArgument("pad: padding must be in [0, 2^30], got " + std::to_string(v));
  if (value < -128 || value > 127)
    throw InvalidArgument("pad: value must be in [-128, 127], got " + std::to_string(value));
  s.pad_top = padding[0];
  s.pad_bottom = padding[1];
  s.pad_left = padding[2];
  s.pad_right = padding[3];
  s.value = static_cast<int8_t>(value);
  const int64_t out_h = s.in_h + s.pad_top + s.pad_bottom, out_w = s.in_w + s.pad_left + s.pad_right;
  check_extents("pad", {s.batch, s.in_h, s.in_w, s.channels});
  check_extents("pad", {s.batch, out_h, out_w, s.channels});
  require_buffers(x, x_count, s.batch * s.in_h * s.in_w * s.channels, out, out_count,
                  s.batch * out_h * out_w * s.channels, device);
  pad(static_cast<const int8_t*>(as_ptr(x)), static_cast<int8_t*>(as_ptr(out)), s, device, as_stream(stream));
}

void shuffle_py(uintptr_t x, int64_t x_count, int64_t rows, int64_t channels, uintptr_t out, int64_t out_count,
                int64_t groups, int device, uintptr_t stream) {
  check_extents("channel_shuffle", {rows, channels});
  if (groups < 1 || channels % groups != 0)
    throw InvalidArgument("channel_shuffle: groups (" + std::to_string(groups) + ") must divide the " +
                          std::to_string(channels) + " channels");
  require_buffers(x, x_count, rows * channels, out, out_count, rows * channels, device);
  channel_shuffle(static_cast<const int8_t*>(as_ptr(x)), static_cast<int8_t*>(as_ptr(out)), rows, channels, groups,
                  device, as_stream(stream));
}

void slice_py(uintptr_t x, int64_t x_count, int64_t rows, int64_t channels, uintptr_t out, int64_t out_count,
              int64_t begin, int64_t end, int device, uintptr_t stream) {
  check_extents("channel_slice", {rows, channels});
  if (begin < 0 || begin >= end || end > channels)
    throw InvalidArgument("channel_slice: need 0 <= begin < end <= " + std::to_string(channels) + ", got begin " +
                          std::to_string(begin) + ", end " + std::to_string(end));
  require_buffers(x, x_count, rows * channels, out, out_count, rows * (end - begin), device);
  channel_slice(static_cast<const int8_t*>(as_ptr(x)), static_cast<int8_t*>(as_ptr(out)), rows, channels, begin, end,
                device, as_stream(stream));
}

}  // namespace

void register_resample_ops(py::module_& m) {
  m.def("cuda_pad", &pad_py, py::arg("x"), py::arg("x_count"), py::arg("x_shape"), py::arg("out"), py::arg("out_count"),
        py::arg("padding"), py::arg("value"), py::arg("device"), py::arg("stream"));
  m.def("cuda_channel_shuffle", &shuffle_py, py::arg("x"), py::arg("x_count"), py::arg("rows"), py::arg("channels"),
        py::arg("out"), py::arg("out_count"), py::arg("groups"), py::arg("device"), py::arg("stream"));
  m.def("cuda_channel_slice", &slice_py, py::arg("x"), py::arg("x_count"), py::arg("rows"), py::arg("channels"),
        py::arg("out"), py::arg("out_count"), py::arg("begin"), py::arg("end"), py::arg("device"), py::arg("stream"));
  m.def("cuda_mean", &mean_py, py::arg("x"), py::arg("x_count"), py::arg("x_shape"), py::arg("out"),
        py::arg("out_count"), py::arg("input_zero_point"), py::arg("output_zero_point"), py::arg("multiplier"),
        py::arg("exponent"), py::arg("act_min"), py::arg("act_max"), py::arg("tflite_rounding"), py::arg("rounding"),
        py::arg("device"), py::arg("stream"));
  m.def("cuda_upsample", &upsample_py, py::arg("x"), py::arg("x_count"), py::arg("x_shape"), py::arg("out"),
        py::arg("out_count"), py::arg("scale"), py::arg("mode"), py::arg("zero_point"), py::arg("device"),
        py::arg("stream"));
}

}  // namespace cuda
}  // namespace npuq
