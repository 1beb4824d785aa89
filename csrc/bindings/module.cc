// npuq._C: numpy arrays in, numpy arrays out. The Python layer (python/npuq/ops.py) converts torch
// tensors and broadcasts per-layer parameters; this layer re-checks every array it is given (dtype,
// rank, contiguity, lengths) so that no call can read or write out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sstream>
#include <string>

#include "../cpu/cpu.h"
#include "../lrf/bindings.h"
#include "../reference/reference.h"
#include "params.h"
#include "npuq/fixedpoint.h"
#include "npuq/ops.h"

namespace py = pybind11;
using namespace npuq;

#ifdef NPUQ_WITH_CUDA
namespace npuq {
namespace cuda {
void register_bindings(py::module_& m);  // csrc/cuda/bindings.cc
}  // namespace cuda
}  // namespace npuq
#endif

namespace {

constexpr int kArithmeticVersion = 1;

std::string shape_of(const py::array& a) {
  std::ostringstream os;
  os << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) os << (i ? ", " : "") << a.shape(i);
  os << (a.ndim() == 1 ? ",)" : ")");
  return os.str();
}

template <typename T>
const char* dtype_name() {
  if (std::is_same<T, int8_t>::value) return "int8";
  if (std::is_same<T, uint8_t>::value) return "uint8";
  if (std::is_same<T, int32_t>::value) return "int32";
  return "?";
}

// The array as a read-only view of T, after checking dtype, rank and C-contiguity.
template <typename T>
const T* view(const py::array& a, const char* name, int ndim) {
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + " must have dtype " + dtype_name<T>() + ", got " +
                         std::string(py::str(a.dtype())));
  if (ndim >= 0 && a.ndim() != ndim)
    throw InvalidArgument(std::string(name) + " must have " + std::to_string(ndim) + " dimensions, got shape " +
                          shape_of(a));
  if (!(a.flags() & py::array::c_style))
    throw InvalidArgument(std::string(name) + " must be C-contiguous");
  if (reinterpret_cast<uintptr_t>(a.data()) % alignof(T) != 0)
    throw InvalidArgument(std::string(name) + " is not aligned to " + std::to_string(alignof(T)) + " bytes");
  for (py::ssize_t i = 0; i < a.ndim(); ++i)
    if (a.shape(i) == 0) throw InvalidArgument(std::string(name) + " is empty: shape " + shape_of(a));
  return static_cast<const T*>(a.data());
}

void require_length(const py::array& a, const char* name, int64_t n) {
  if (a.ndim() != 1 || a.shape(0) != n)
    throw InvalidArgument(std::string(name) + " must have shape (" + std::to_string(n) + ",), got " + shape_of(a));
}

using bindings::parse_overflow;
using bindings::parse_rounding;

// Per-channel requantization arrays (already broadcast by the Python layer) for `channels` channels.
struct RequantArrays {
  RequantParams params;
  py::array keep[3];
};

RequantArrays requant_from(const py::array& m0, const py::array& exponent, const py::object& shift,
                           int64_t channels, int32_t zero_point, int32_t act_min, int32_t act_max,
                           const std::string& rounding) {
  RequantArrays r;
  r.params.channels = channels;
  r.params.multiplier = view<int32_t>(m0, "multiplier", 1);
  require_length(m0, "multiplier", channels);
  r.params.exponent = view<int32_t>(exponent, "exponent", 1);
  require_length(exponent, "exponent", channels);
  if (!shift.is_none()) {
    py::array s = shift.cast<py::array>();
    r.params.shift = view<uint8_t>(s, "channel_shift", 1);
    require_length(s, "channel_shift", channels);
    r.keep[2] = s;
  }
  r.keep[0] = m0;
  r.keep[1] = exponent;
  r.params.zero_point = zero_point;
  r.params.act_min = act_min;
  r.params.act_max = act_max;
  r.params.rounding = parse_rounding(rounding);
  return r;
}

struct ConvLayer {
  Conv2dShape shape;
  py::array weight;
  py::object bias;  // py::array or None
};

// weight: [C_out, KH, KW, C_in / groups]; in_c from the caller (the plan does not know the input yet).
ConvLayer conv_layer(const py::array& weight, const py::object& bias, int64_t in_c,
                     std::array<int64_t, 2> stride, std::array<int64_t, 4> padding, std::array<int64_t, 2> dilation,
                     int64_t groups) {
  ConvLayer l;
  view<int8_t>(weight, "weight", 4);
  l.weight = weight;
  l.shape.in_c = in_c;
  l.shape.out_c = weight.shape(0);
  l.shape.kernel_h = weight.shape(1);
  l.shape.kernel_w = weight.shape(2);
  l.shape.stride_h = stride[0];
  l.shape.stride_w = stride[1];
  l.shape.pad_top = padding[0];
  l.shape.pad_bottom = padding[1];
  l.shape.pad_left = padding[2];
  l.shape.pad_right = padding[3];
  l.shape.dilation_h = dilation[0];
  l.shape.dilation_w = dilation[1];
  l.shape.groups = groups;
  if (groups < 1) throw InvalidArgument("groups must be >= 1, got " + std::to_string(groups));
  if (in_c % groups != 0)
    throw InvalidArgument("groups (" + std::to_string(groups) + ") must divide the input channels (" +
                          std::to_string(in_c) + ")");
  if (weight.shape(3) * groups != in_c)
    throw InvalidArgument("weight has " + std::to_string(weight.shape(3)) + " input channels per group but the input has " +
                          std::to_string(in_c) + " channels in " + std::to_string(groups) + " groups (expected " +
                          std::to_string(in_c / groups) + ")");
  if (!bias.is_none()) {
    py::array b = bias.cast<py::array>();
    view<int32_t>(b, "bias", 1);
    require_length(b, "bias", l.shape.out_c);
  }
  l.bias = bias;
  return l;
}

const int32_t* bias_ptr(const py::object& bias) {
  return bias.is_none() ? nullptr : static_cast<const int32_t*>(bias.cast<py::array>().data());
}

// A packed convolution, reusable across calls (npuq.ops.Conv2d).
class PyConv2dPlan {
 public:
  PyConv2dPlan(const py::array& weight, const py::object& bias, int64_t in_c, std::array<int64_t, 2> stride,
               std::array<int64_t, 4> padding, std::array<int64_t, 2> dilation, int64_t groups,
               int32_t input_zero_point, const py::array& m0, const py::array& exponent, const py::object& shift,
               int32_t output_zero_point, int32_t act_min, int32_t act_max, const std::string& rounding,
               const std::string& overflow, bool fully_connected) {
    ConvLayer l = conv_layer(weight, bias, in_c, stride, padding, dilation, groups);
    RequantArrays r = requant_from(m0, exponent, shift, l.shape.out_c, output_zero_point, act_min, act_max, rounding);
    plan_ = std::make_unique<cpu::Conv2dPlan>(l.shape, static_cast<const int8_t*>(weight.data()), bias_ptr(bias),
                                              input_zero_point, r.params, parse_overflow(overflow),
                                              fully_connected ? "fully_connected" : "conv2d");
  }

  py::array_t<int8_t> run(const py::array& x, int threads) const {
    const int8_t* xp = view<int8_t>(x, "x", 4);
    const Conv2dShape& layer = plan_->layer();
    if (x.shape(3) != layer.in_c)
      throw InvalidArgument("x has " + std::to_string(x.shape(3)) + " channels (NHWC shape " + shape_of(x) +
                            ") but the layer expects " + std::to_string(layer.in_c));
    const Conv2dShape s = plan_->shape_for(x.shape(0), x.shape(1), x.shape(2));
    py::array_t<int8_t> out({s.batch, s.out_h, s.out_w, s.out_c});
    int8_t* op = out.mutable_data();
    {
      py::gil_scoped_release release;
      plan_->run(xp, s.batch, s.in_h, s.in_w, op, threads);
    }
    return out;
  }

  bool depthwise_path() const { return plan_->depthwise_path(); }

 private:
  std::unique_ptr<cpu::Conv2dPlan> plan_;
};

py::array_t<int8_t> ref_conv2d(const py::array& x, const py::array& weight, const py::object& bias,
                               std::array<int64_t, 2> stride, std::array<int64_t, 4> padding,
                               std::array<int64_t, 2> dilation, int64_t groups, int32_t input_zero_point,
                               const py::array& m0, const py::array& exponent, const py::object& shift,
                               int32_t output_zero_point, int32_t act_min, int32_t act_max,
                               const std::string& rounding, const std::string& overflow, bool fully_connected) {
  const int8_t* xp = view<int8_t>(x, "x", 4);
  ConvLayer l = conv_layer(weight, bias, x.shape(3), stride, padding, dilation, groups);
  RequantArrays r = requant_from(m0, exponent, shift, l.shape.out_c, output_zero_point, act_min, act_max, rounding);
  Conv2dParams p;
  p.shape = l.shape;
  p.shape.batch = x.shape(0);
  p.shape.in_h = x.shape(1);
  p.shape.in_w = x.shape(2);
  p.input_zero_point = input_zero_point;
  p.requant = r.params;
  p.overflow = parse_overflow(overflow);
  p.op = fully_connected ? "fully_connected" : "conv2d";
  validate(p);
  validate_weights(static_cast<const int8_t*>(weight.data()), weight.size());
  py::array_t<int8_t> out({p.shape.batch, p.shape.out_h, p.shape.out_w, p.shape.out_c});
  int8_t* op = out.mutable_data();
  const int8_t* wp = static_cast<const int8_t*>(weight.data());
  const int32_t* bp = bias_ptr(bias);
  {
    py::gil_scoped_release release;
    ref::conv2d(xp, wp, bp, op, p);
  }
  return out;
}

py::array_t<int8_t> requantize(const py::array& acc, const py::array& m0, const py::array& exponent,
                               const py::object& shift, int32_t zero_point, int32_t act_min, int32_t act_max,
                               const std::string& rounding, int threads, bool reference) {
  const int32_t* ap = view<int32_t>(acc, "acc", -1);
  if (acc.ndim() < 1) throw InvalidArgument("acc must have at least 1 dimension");
  const int64_t channels = acc.shape(acc.ndim() - 1);
  RequantArrays r = requant_from(m0, exponent, shift, channels, zero_point, act_min, act_max, rounding);
  validate(r.params, "requantize");
  std::vector<py::ssize_t> shape(acc.shape(), acc.shape() + acc.ndim());
  py::array_t<int8_t> out(shape);
  int8_t* op = out.mutable_data();
  const int64_t rows = acc.size() / channels;
  {
    py::gil_scoped_release release;
    if (reference) ref::requantize(ap, rows, op, r.params);
    else cpu::requantize(ap, rows, op, r.params, threads);
  }
  return out;
}

py::array_t<int8_t> add(const py::array& a, const py::array& b, std::array<int32_t, 3> a_q, std::array<int32_t, 3> b_q,
                        std::array<int32_t, 3> out_q, int32_t left_shift, int32_t act_min, int32_t act_max,
                        const std::string& rounding, int threads, bool reference) {
  const int8_t* ap = view<int8_t>(a, "a", -1);
  const int8_t* bp = view<int8_t>(b, "b", -1);
  if (a.ndim() != b.ndim() || !std::equal(a.shape(), a.shape() + a.ndim(), b.shape()))
    throw InvalidArgument("add: a and b must have the same shape, got " + shape_of(a) + " and " + shape_of(b));
  const AddParams p = bindings::add_params(a_q, b_q, out_q, left_shift, act_min, act_max, rounding);
  std::vector<py::ssize_t> shape(a.shape(), a.shape() + a.ndim());
  py::array_t<int8_t> out(shape);
  int8_t* op = out.mutable_data();
  const int64_t count = a.size();
  {
    py::gil_scoped_release release;
    if (reference) ref::add(ap, bp, op, count, p);
    else cpu::add(ap, bp, op, count, p, threads);
  }
  return out;
}

py::array_t<int8_t> avg_pool2d(const py::array& x, std::array<int64_t, 2> kernel, std::array<int64_t, 2> stride,
                               std::array<int64_t, 4> padding, bool count_include_pad, int32_t input_zero_point,
                               int32_t act_min, int32_t act_max, int threads, bool reference) {
  const int8_t* xp = view<int8_t>(x, "x", 4);
  const Pool2dParams p = bindings::pool_params({x.shape(0), x.shape(1), x.shape(2), x.shape(3)}, kernel, stride,
                                              padding, count_include_pad, input_zero_point, act_min, act_max);
  py::array_t<int8_t> out({p.batch, p.out_h, p.out_w, p.channels});
  int8_t* op = out.mutable_data();
  {
    py::gil_scoped_release release;
    if (reference) ref::avg_pool2d(xp, op, p);
    else cpu::avg_pool2d(xp, op, p, threads);
  }
  return out;
}

// (N, OH, OW, C) of pooling an (N, H, W, C) input; validates like the pooling kernels.
std::array<int64_t, 4> pool_output_shape(std::array<int64_t, 4> x, std::array<int64_t, 2> kernel,
                                         std::array<int64_t, 2> stride, std::array<int64_t, 4> padding) {
  const Pool2dParams p = bindings::pool_params(x, kernel, stride, padding);
  return {p.batch, p.out_h, p.out_w, p.channels};
}

py::tuple quantize_multiplier(double real) {
  const fp::QuantizedMultiplier q = fp::quantize_multiplier(real);
  return py::make_tuple(q.m0, q.exponent, static_cast<int>(q.status));
}

py::dict cpu_features() {
  py::dict d;
  py::list supported;
  for (cpu::Isa isa : cpu::supported_isas()) supported.append(cpu::isa_name(isa));
  d["supported"] = supported;
  d["active"] = cpu::isa_name(cpu::active_isa());
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "npuq native core: bit-exact integer NPU kernels (see docs/arithmetic.md)";
  m.attr("ARITHMETIC_VERSION") = kArithmeticVersion;
#ifdef NPUQ_WITH_CUDA
  m.attr("BUILT_WITH_CUDA") = true;
#else
  m.attr("BUILT_WITH_CUDA") = false;
#endif

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const AccumulatorOverflow& e) {
      PyErr_SetString(PyExc_OverflowError, e.what());
    } catch (const InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  m.def("quantize_multiplier", &quantize_multiplier, py::arg("real"),
        "(M0, exponent, status): status 0 ok, 1 flushed to zero, 2 invalid, 3 too large");
  m.def("srdhm", &fp::srdhm, py::arg("a"), py::arg("b"));
  m.def("rdbpot", [](int32_t h, int n) {
    if (n < 0 || n > 63) throw InvalidArgument("rdbpot: exponent must be in [0, 63], got " + std::to_string(n));
    return fp::rdbpot(h, n);
  }, py::arg("h"), py::arg("n"));
  m.def("cpu_features", &cpu_features);
  m.def("set_isa", [](const std::string& name) {
    if (name == "auto") cpu::reset_isa();
    else cpu::set_isa(cpu::parse_isa(name));
  });
  m.def("get_num_threads", &cpu::default_threads);
  m.def("set_num_threads", &cpu::set_default_threads);
  m.attr("MAX_THREADS") = cpu::kMaxThreads;

  py::class_<PyConv2dPlan>(m, "Conv2dPlan")
      .def(py::init<const py::array&, const py::object&, int64_t, std::array<int64_t, 2>, std::array<int64_t, 4>,
                    std::array<int64_t, 2>, int64_t, int32_t, const py::array&, const py::array&, const py::object&,
                    int32_t, int32_t, int32_t, const std::string&, const std::string&, bool>(),
           py::arg("weight"), py::arg("bias"), py::arg("in_channels"), py::arg("stride"), py::arg("padding"),
           py::arg("dilation"), py::arg("groups"), py::arg("input_zero_point"), py::arg("multiplier"),
           py::arg("exponent"), py::arg("channel_shift"), py::arg("output_zero_point"), py::arg("act_min"),
           py::arg("act_max"), py::arg("rounding"), py::arg("overflow"), py::arg("fully_connected") = false)
      .def("run", &PyConv2dPlan::run, py::arg("x"), py::arg("threads") = 0)
      .def_property_readonly("depthwise_path", &PyConv2dPlan::depthwise_path);

  m.def("ref_conv2d", &ref_conv2d, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("groups"), py::arg("input_zero_point"),
        py::arg("multiplier"), py::arg("exponent"), py::arg("channel_shift"), py::arg("output_zero_point"),
        py::arg("act_min"), py::arg("act_max"), py::arg("rounding"), py::arg("overflow"),
        py::arg("fully_connected") = false);
  m.def("requantize", &requantize, py::arg("acc"), py::arg("multiplier"), py::arg("exponent"),
        py::arg("channel_shift"), py::arg("zero_point"), py::arg("act_min"), py::arg("act_max"),
        py::arg("rounding"), py::arg("threads") = 0, py::arg("reference") = false);
  m.def("add", &add, py::arg("a"), py::arg("b"), py::arg("a_params"), py::arg("b_params"),
        py::arg("output_params"), py::arg("left_shift"), py::arg("act_min"), py::arg("act_max"),
        py::arg("rounding"), py::arg("threads") = 0, py::arg("reference") = false);
  m.def("avg_pool2d", &avg_pool2d, py::arg("x"), py::arg("kernel"), py::arg("stride"), py::arg("padding"),
        py::arg("count_include_pad"), py::arg("input_zero_point"), py::arg("act_min"), py::arg("act_max"),
        py::arg("threads") = 0, py::arg("reference") = false);

  m.def("pool_output_shape", &pool_output_shape, py::arg("x_shape"), py::arg("kernel"), py::arg("stride"),
        py::arg("padding"));

  npuq::lrf::register_bindings(m);
#ifdef NPUQ_WITH_CUDA
  npuq::cuda::register_bindings(m);
#else
  m.def("cuda_info", [] {
    py::dict d;
    d["built"] = false;
    d["devices"] = 0;
    d["reason"] = "this npuq build has no CUDA kernels (no CUDA toolkit was found when it was built)";
    return d;
  });
#endif
}
