// npuq._C: numpy arrays in, numpy arrays out; the module's entry point and the CPU ops' bindings. The
// Python layer (python/npuq/ops.py) converts torch tensors, broadcasts per-layer parameters and describes
// each op with a parameter struct (csrc/common/params.h); this layer re-checks every array it is given
// (dtype, rank, contiguity, lengths) so that no call can read or write out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "bindings/eltwise_ops.h"
#include "bindings/resample_ops.h"
#include "common/arrays.h"
#include "common/params.h"
#include "cpu/cpu.h"
#include "lrf/cpu/bindings.h"
#include "npuq/fixedpoint.h"
#include "npuq/ops.h"
#include "npuq/version.h"
#include "reference/reference.h"

#ifdef NPUQ_WITH_CUDA
#include "cuda/bindings.h"
#include "cuda/eltwise_ops_bindings.h"
#include "cuda/resample_ops_bindings.h"
#include "lrf/cuda/svd_bindings.h"
#endif

namespace py = pybind11;
using namespace npuq;

namespace {

using bindings::shape_of;
using bindings::view;

// A packed convolution, reusable across calls (npuq.ops.Conv2d).
class PyConv2dPlan {
 public:
  PyConv2dPlan(const bindings::ConvArgs& params, const py::array& weight, const py::object& bias) {
    const bindings::ConvLayer l = bindings::conv_layer(params, weight, bias);
    plan_ = std::make_unique<cpu::Conv2dPlan>(l.params, l.weight, l.bias);
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

// The layer of Conv2dPlan(params, weight, bias) on the NHWC input x, checked, for the scalar reference.
struct RefCall {
  bindings::ConvLayer layer;
  Conv2dParams params;  // with x's shape
  const int8_t* x = nullptr;
};

RefCall ref_call(const bindings::ConvArgs& args, const py::array& x, const py::array& weight, const py::object& bias) {
  RefCall c;
  c.x = view<int8_t>(x, "x", 4);
  c.layer = bindings::conv_layer(args, weight, bias);
  if (x.shape(3) != c.layer.params.shape.in_c)
    throw InvalidArgument("x has " + std::to_string(x.shape(3)) + " channels (NHWC shape " + shape_of(x) +
                          ") but the layer expects " + std::to_string(c.layer.params.shape.in_c));
  c.params = c.layer.params;
  c.params.shape.batch = x.shape(0);
  c.params.shape.in_h = x.shape(1);
  c.params.shape.in_w = x.shape(2);
  validate(c.params);
  validate_weights(c.layer.weight, weight.size());
  return c;
}

py::array_t<int8_t> ref_conv2d(const bindings::ConvArgs& params, const py::array& x, const py::array& weight,
                               const py::object& bias) {
  const RefCall c = ref_call(params, x, weight, bias);
  const Conv2dShape& s = c.params.shape;
  py::array_t<int8_t> out({s.batch, s.out_h, s.out_w, s.out_c});
  int8_t* op = out.mutable_data();
  {
    py::gil_scoped_release release;
    ref::conv2d(c.x, c.layer.weight, c.layer.bias, op, c.params);
  }
  return out;
}

// The int32 accumulators of the layer on x (before requantization) through the scalar reference.
py::array_t<int32_t> ref_conv2d_accumulators(const bindings::ConvArgs& params, const py::array& x,
                                             const py::array& weight, const py::object& bias) {
  const RefCall c = ref_call(params, x, weight, bias);
  const Conv2dShape& s = c.params.shape;
  py::array_t<int32_t> acc({s.batch, s.out_h, s.out_w, s.out_c});
  int32_t* ap = acc.mutable_data();
  {
    py::gil_scoped_release release;
    ref::conv2d_accumulators(c.x, c.layer.weight, c.layer.bias, ap, c.params);
  }
  return acc;
}

py::array_t<int8_t> requantize(const bindings::RequantArgs& params, const py::array& acc, int threads, bool reference) {
  const int32_t* ap = view<int32_t>(acc, "acc", -1);
  if (acc.ndim() < 1) throw InvalidArgument("acc must have at least 1 dimension");
  const int64_t channels = acc.shape(acc.ndim() - 1);
  const RequantParams r = bindings::requant_params(params, channels);
  validate(r, "requantize");
  std::vector<py::ssize_t> shape(acc.shape(), acc.shape() + acc.ndim());
  py::array_t<int8_t> out(shape);
  int8_t* op = out.mutable_data();
  const int64_t rows = acc.size() / channels;
  {
    py::gil_scoped_release release;
    if (reference) ref::requantize(ap, rows, op, r);
    else cpu::requantize(ap, rows, op, r, threads);
  }
  return out;
}

py::array_t<int8_t> add(const bindings::AddArgs& params, const py::array& a, const py::array& b, int threads,
                        bool reference) {
  const int8_t* ap = view<int8_t>(a, "a", -1);
  const int8_t* bp = view<int8_t>(b, "b", -1);
  if (a.ndim() != b.ndim() || !std::equal(a.shape(), a.shape() + a.ndim(), b.shape()))
    throw InvalidArgument("add: a and b must have the same shape, got " + shape_of(a) + " and " + shape_of(b));
  const AddParams p = bindings::add_params(params);
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

py::array_t<int8_t> avg_pool2d(const bindings::PoolArgs& params, const py::array& x, int threads, bool reference) {
  const int8_t* xp = view<int8_t>(x, "x", 4);
  const Pool2dParams p = bindings::pool_params({x.shape(0), x.shape(1), x.shape(2), x.shape(3)}, params);
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
  bindings::PoolArgs a;
  a.kernel = kernel;
  a.stride = stride;
  a.padding = padding;
  const Pool2dParams p = bindings::pool_params(x, a);
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
  m.def(
      "rdbpot",
      [](int32_t h, int n) {
        if (n < 0 || n > 63) throw InvalidArgument("rdbpot: exponent must be in [0, 63], got " + std::to_string(n));
        return fp::rdbpot(h, n);
      },
      py::arg("h"), py::arg("n"));
  m.def("cpu_features", &cpu_features);
  m.def("set_isa", [](const std::string& name) {
    if (name == "auto") cpu::reset_isa();
    else cpu::set_isa(cpu::parse_isa(name));
  });
  m.def("get_num_threads", &cpu::default_threads);
  m.def("set_num_threads", &cpu::set_default_threads);
  m.attr("MAX_THREADS") = cpu::kMaxThreads;

  bindings::register_params(m);

  py::class_<PyConv2dPlan>(m, "Conv2dPlan")
      .def(py::init<const bindings::ConvArgs&, const py::array&, const py::object&>(), py::arg("params"),
           py::arg("weight"), py::arg("bias") = py::none())
      .def("run", &PyConv2dPlan::run, py::arg("x"), py::arg("threads") = 0)
      .def_property_readonly("depthwise_path", &PyConv2dPlan::depthwise_path);

  m.def("ref_conv2d", &ref_conv2d, py::arg("params"), py::arg("x"), py::arg("weight"), py::arg("bias") = py::none());
  m.def("ref_conv2d_accumulators", &ref_conv2d_accumulators, py::arg("params"), py::arg("x"), py::arg("weight"),
        py::arg("bias") = py::none());
  m.def("requantize", &requantize, py::arg("params"), py::arg("acc"), py::arg("threads") = 0,
        py::arg("reference") = false);
  m.def("add", &add, py::arg("params"), py::arg("a"), py::arg("b"), py::arg("threads") = 0,
        py::arg("reference") = false);
  m.def("avg_pool2d", &avg_pool2d, py::arg("params"), py::arg("x"), py::arg("threads") = 0,
        py::arg("reference") = false);

  m.def("pool_output_shape", &pool_output_shape, py::arg("x_shape"), py::arg("kernel"), py::arg("stride"),
        py::arg("padding"));

  bindings::register_eltwise_ops(m);
  bindings::register_resample_ops(m);
  npuq::lrf::register_bindings(m);
#ifdef NPUQ_WITH_CUDA
  npuq::cuda::register_bindings(m);
  npuq::cuda::register_svd_bindings(m);
  npuq::cuda::register_eltwise_ops(m);
  npuq::cuda::register_resample_ops(m);
#else
  m.def("cuda_info", [] {
    py::dict d;
    d["built"] = false;
    d["devices"] = 0;
    d["reason"] = "this npuq build has no CUDA kernels (built with NPUQ_CUDA=OFF, or where no CUDA toolkit was found)";
    return d;
  });
#endif
}
