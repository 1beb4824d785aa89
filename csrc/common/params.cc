// The bindings' parameter structs (params.h): conversions to the kernels' structs and their Python types.
#include "params.h"

#include <pybind11/stl.h>

#include <initializer_list>
#include <string>
#include <utility>

#include "arrays.h"

namespace py = pybind11;

namespace npuq {
namespace bindings {

RequantParams requant_params(const RequantArgs& r, int64_t channels) {
  RequantParams p;
  p.channels = channels;
  p.multiplier = view<int32_t>(r.multiplier, "multiplier", 1);
  require_length(r.multiplier, "multiplier", channels);
  p.exponent = view<int32_t>(r.exponent, "exponent", 1);
  require_length(r.exponent, "exponent", channels);
  if (!r.channel_shift.is_none()) {
    py::array s = r.channel_shift.cast<py::array>();
    p.shift = view<uint8_t>(s, "channel_shift", 1);
    require_length(s, "channel_shift", channels);
  }
  p.zero_point = r.output_zero_point;
  p.act_min = r.act_min;
  p.act_max = r.act_max;
  p.rounding = parse_rounding(r.rounding);
  return p;
}

ConvLayer conv_layer(const ConvArgs& a, const py::array& weight, const py::object& bias) {
  ConvLayer l;
  l.weight = view<int8_t>(weight, "weight", 4);
  Conv2dShape& s = l.params.shape;
  s.in_c = a.in_channels;
  s.out_c = weight.shape(0);
  s.kernel_h = weight.shape(1);
  s.kernel_w = weight.shape(2);
  s.stride_h = a.stride[0];
  s.stride_w = a.stride[1];
  s.pad_top = a.padding[0];
  s.pad_bottom = a.padding[1];
  s.pad_left = a.padding[2];
  s.pad_right = a.padding[3];
  s.dilation_h = a.dilation[0];
  s.dilation_w = a.dilation[1];
  s.groups = a.groups;
  if (s.groups < 1) throw InvalidArgument("groups must be >= 1, got " + std::to_string(s.groups));
  if (s.in_c % s.groups != 0)
    throw InvalidArgument("groups (" + std::to_string(s.groups) + ") must divide the input channels (" +
                          std::to_string(s.in_c) + ")");
  if (weight.shape(3) * s.groups != s.in_c)
    throw InvalidArgument("weight has " + std::to_string(weight.shape(3)) +
                          " input channels per group but the input has " + std::to_string(s.in_c) + " channels in " +
                          std::to_string(s.groups) + " groups (expected " + std::to_string(s.in_c / s.groups) + ")");
  if (!bias.is_none()) {
    py::array b = bias.cast<py::array>();
    l.bias = view<int32_t>(b, "bias", 1);
    require_length(b, "bias", s.out_c);
  }
  l.params.input_zero_point = a.input_zero_point;
  l.params.requant = requant_params(a.requant, s.out_c);
  l.params.overflow = parse_overflow(a.overflow);
  l.params.op = a.fully_connected ? "fully_connected" : "conv2d";
  return l;
}

AddParams add_params(const AddArgs& a) {
  AddParams p;
  p.a_zero_point = a.a_zero_point, p.a_multiplier = a.a_multiplier, p.a_exponent = a.a_exponent;
  p.b_zero_point = a.b_zero_point, p.b_multiplier = a.b_multiplier, p.b_exponent = a.b_exponent;
  p.out_zero_point = a.output_zero_point, p.out_multiplier = a.output_multiplier;
  p.out_exponent = a.output_exponent;
  p.left_shift = a.left_shift;
  p.act_min = a.act_min;
  p.act_max = a.act_max;
  p.rounding = parse_rounding(a.rounding);
  validate(p);
  return p;
}

Pool2dParams pool_params(std::array<int64_t, 4> x_shape, const PoolArgs& a) {
  Pool2dParams p;
  p.batch = x_shape[0], p.in_h = x_shape[1], p.in_w = x_shape[2], p.channels = x_shape[3];
  p.kernel_h = a.kernel[0], p.kernel_w = a.kernel[1];
  p.stride_h = a.stride[0], p.stride_w = a.stride[1];
  p.pad_top = a.padding[0], p.pad_bottom = a.padding[1], p.pad_left = a.padding[2], p.pad_right = a.padding[3];
  p.count_include_pad = a.count_include_pad;
  p.input_zero_point = a.input_zero_point;
  p.act_min = a.act_min;
  p.act_max = a.act_max;
  validate(p);
  return p;
}

namespace {

// "Name(field=value, ...)" from the fields' Python values.
std::string describe(const py::object& self, const char* name, std::initializer_list<const char*> fields) {
  std::string out = std::string(name) + "(";
  bool first = true;
  for (const char* f : fields) {
    out += (first ? "" : ", ") + std::string(f) + "=" + std::string(py::repr(self.attr(f)));
    first = false;
  }
  return out + ")";
}

}  // namespace

void register_params(py::module_& m) {
  // The fields are plain values: a value of the wrong type fails on assignment (TypeError), everything else
  // when an op converts the struct, so that a layer is checked once, by the code that checks it for the
  // kernels, whichever way its fields were set.
  py::class_<RequantArgs>(m, "RequantParams",
                          "Requantization of C channels (docs/arithmetic.md 3): multiplier and exponent int32 (C,), "
                          "channel_shift uint8 (C,) or None, output_zero_point, act_min, act_max, rounding.")
      .def(py::init([](py::array multiplier, py::array exponent, py::object channel_shift, int32_t output_zero_point,
                       int32_t act_min, int32_t act_max, std::string rounding) {
             RequantArgs r;
             r.multiplier = std::move(multiplier);
             r.exponent = std::move(exponent);
             r.channel_shift = std::move(channel_shift);
             r.output_zero_point = output_zero_point;
             r.act_min = act_min;
             r.act_max = act_max;
             r.rounding = std::move(rounding);
             return r;
           }),
           py::kw_only(), py::arg("multiplier"), py::arg("exponent"), py::arg("channel_shift") = py::none(),
           py::arg("output_zero_point") = 0, py::arg("act_min") = -128, py::arg("act_max") = 127,
           py::arg("rounding") = "double")
      .def_readwrite("multiplier", &RequantArgs::multiplier)
      .def_readwrite("exponent", &RequantArgs::exponent)
      .def_readwrite("channel_shift", &RequantArgs::channel_shift)
      .def_readwrite("output_zero_point", &RequantArgs::output_zero_point)
      .def_readwrite("act_min", &RequantArgs::act_min)
      .def_readwrite("act_max", &RequantArgs::act_max)
      .def_readwrite("rounding", &RequantArgs::rounding)
      .def("__repr__", [](const py::object& self) {
        return describe(
            self, "RequantParams",
            {"multiplier", "exponent", "channel_shift", "output_zero_point", "act_min", "act_max", "rounding"});
      });

  py::class_<ConvArgs>(m, "Conv2dParams",
                       "A convolution or fully-connected layer without its weights (docs/arithmetic.md 4): "
                       "in_channels, stride (h, w), padding (top, bottom, left, right), dilation (h, w), groups, "
                       "input_zero_point, requant (RequantParams), overflow, fully_connected.")
      .def(py::init([](int64_t in_channels, RequantArgs requant, std::array<int64_t, 2> stride,
                       std::array<int64_t, 4> padding, std::array<int64_t, 2> dilation, int64_t groups,
                       int32_t input_zero_point, std::string overflow, bool fully_connected) {
             ConvArgs a;
             a.in_channels = in_channels;
             a.requant = std::move(requant);
             a.stride = stride;
             a.padding = padding;
             a.dilation = dilation;
             a.groups = groups;
             a.input_zero_point = input_zero_point;
             a.overflow = std::move(overflow);
             a.fully_connected = fully_connected;
             return a;
           }),
           py::kw_only(), py::arg("in_channels"), py::arg("requant"), py::arg("stride") = py::make_tuple(1, 1),
           py::arg("padding") = py::make_tuple(0, 0, 0, 0), py::arg("dilation") = py::make_tuple(1, 1),
           py::arg("groups") = 1, py::arg("input_zero_point") = 0, py::arg("overflow") = "raise",
           py::arg("fully_connected") = false)
      .def_readwrite("in_channels", &ConvArgs::in_channels)
      .def_readwrite("stride", &ConvArgs::stride)
      .def_readwrite("padding", &ConvArgs::padding)
      .def_readwrite("dilation", &ConvArgs::dilation)
      .def_readwrite("groups", &ConvArgs::groups)
      .def_readwrite("input_zero_point", &ConvArgs::input_zero_point)
      .def_readwrite("requant", &ConvArgs::requant)
      .def_readwrite("overflow", &ConvArgs::overflow)
      .def_readwrite("fully_connected", &ConvArgs::fully_connected)
      .def("__repr__", [](const py::object& self) {
        return describe(self, "Conv2dParams",
                        {"in_channels", "stride", "padding", "dilation", "groups", "input_zero_point", "requant",
                         "overflow", "fully_connected"});
      });

  py::class_<AddArgs>(m, "AddParams",
                      "Elementwise add (docs/arithmetic.md 6): zero point, multiplier and exponent of a, b and the "
                      "output, left_shift, act_min, act_max, rounding.")
      .def(py::init([](int32_t a_zero_point, int32_t a_multiplier, int32_t a_exponent, int32_t b_zero_point,
                       int32_t b_multiplier, int32_t b_exponent, int32_t output_zero_point, int32_t output_multiplier,
                       int32_t output_exponent, int32_t left_shift, int32_t act_min, int32_t act_max,
                       std::string rounding) {
             AddArgs a;
             a.a_zero_point = a_zero_point, a.a_multiplier = a_multiplier, a.a_exponent = a_exponent;
             a.b_zero_point = b_zero_point, a.b_multiplier = b_multiplier, a.b_exponent = b_exponent;
             a.output_zero_point = output_zero_point, a.output_multiplier = output_multiplier;
             a.output_exponent = output_exponent;
             a.left_shift = left_shift;
             a.act_min = act_min;
             a.act_max = act_max;
             a.rounding = std::move(rounding);
             return a;
           }),
           py::kw_only(), py::arg("a_zero_point"), py::arg("a_multiplier"), py::arg("a_exponent"),
           py::arg("b_zero_point"), py::arg("b_multiplier"), py::arg("b_exponent"), py::arg("output_zero_point"),
           py::arg("output_multiplier"), py::arg("output_exponent"), py::arg("left_shift") = 20,
           py::arg("act_min") = -128, py::arg("act_max") = 127, py::arg("rounding") = "double")
      .def_readwrite("a_zero_point", &AddArgs::a_zero_point)
      .def_readwrite("a_multiplier", &AddArgs::a_multiplier)
      .def_readwrite("a_exponent", &AddArgs::a_exponent)
      .def_readwrite("b_zero_point", &AddArgs::b_zero_point)
      .def_readwrite("b_multiplier", &AddArgs::b_multiplier)
      .def_readwrite("b_exponent", &AddArgs::b_exponent)
      .def_readwrite("output_zero_point", &AddArgs::output_zero_point)
      .def_readwrite("output_multiplier", &AddArgs::output_multiplier)
      .def_readwrite("output_exponent", &AddArgs::output_exponent)
      .def_readwrite("left_shift", &AddArgs::left_shift)
      .def_readwrite("act_min", &AddArgs::act_min)
      .def_readwrite("act_max", &AddArgs::act_max)
      .def_readwrite("rounding", &AddArgs::rounding)
      .def("__repr__", [](const py::object& self) {
        return describe(self, "AddParams",
                        {"a_zero_point", "a_multiplier", "a_exponent", "b_zero_point", "b_multiplier", "b_exponent",
                         "output_zero_point", "output_multiplier", "output_exponent", "left_shift", "act_min",
                         "act_max", "rounding"});
      });

  py::class_<PoolArgs>(m, "Pool2dParams",
                       "A pooling window (docs/arithmetic.md 7): kernel (h, w), stride (h, w), padding (top, bottom, "
                       "left, right), count_include_pad, input_zero_point, act_min, act_max.")
      .def(py::init([](std::array<int64_t, 2> kernel, std::array<int64_t, 2> stride, std::array<int64_t, 4> padding,
                       bool count_include_pad, int32_t input_zero_point, int32_t act_min, int32_t act_max) {
             PoolArgs a;
             a.kernel = kernel;
             a.stride = stride;
             a.padding = padding;
             a.count_include_pad = count_include_pad;
             a.input_zero_point = input_zero_point;
             a.act_min = act_min;
             a.act_max = act_max;
             return a;
           }),
           py::kw_only(), py::arg("kernel"), py::arg("stride"), py::arg("padding") = py::make_tuple(0, 0, 0, 0),
           py::arg("count_include_pad") = false, py::arg("input_zero_point") = 0, py::arg("act_min") = -128,
           py::arg("act_max") = 127)
      .def_readwrite("kernel", &PoolArgs::kernel)
      .def_readwrite("stride", &PoolArgs::stride)
      .def_readwrite("padding", &PoolArgs::padding)
      .def_readwrite("count_include_pad", &PoolArgs::count_include_pad)
      .def_readwrite("input_zero_point", &PoolArgs::input_zero_point)
      .def_readwrite("act_min", &PoolArgs::act_min)
      .def_readwrite("act_max", &PoolArgs::act_max)
      .def("__repr__", [](const py::object& self) {
        return describe(self, "Pool2dParams",
                        {"kernel", "stride", "padding", "count_include_pad", "input_zero_point", "act_min", "act_max"});
      });
}

}  // namespace bindings
}  // namespace npuq
