// Op parameters as the bindings receive them, shared by the CPU bindings (csrc/bindings/module.cc) and
// the CUDA bindings (csrc/cuda/bindings.cc).
//
// The Python layer describes an op with a parameter struct (npuq._C.Conv2dParams, RequantParams,
// AddParams, Pool2dParams: named read/write fields, keyword construction), the way TFLite's kernels take
// a ConvParams, instead of a long positional argument list. Each struct becomes the kernels' struct of
// the same name (npuq/ops.h) through one conversion below, which checks it with the same words for every
// backend; the kernels' validate() then checks the values.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <array>
#include <cstdint>
#include <string>

#include "npuq/ops.h"

namespace npuq {
namespace bindings {

inline fp::Rounding parse_rounding(const std::string& s) {
  if (s == "double") return fp::Rounding::kDouble;
  if (s == "single") return fp::Rounding::kSingle;
  throw InvalidArgument("rounding must be 'double' or 'single', got '" + s + "'");
}

inline fp::Overflow parse_overflow(const std::string& s) {
  if (s == "raise") return fp::Overflow::kRaise;
  if (s == "saturate") return fp::Overflow::kSaturate;
  if (s == "wrap") return fp::Overflow::kWrap;
  throw InvalidArgument("overflow must be 'raise', 'saturate' or 'wrap', got '" + s + "'");
}

// npuq._C.RequantParams: per-channel arrays already broadcast to one entry per channel by the Python layer.
struct RequantArgs {
  pybind11::array multiplier;                           // int32 [C]
  pybind11::array exponent;                             // int32 [C]
  pybind11::object channel_shift = pybind11::none();  // uint8 [C] or None
  int32_t output_zero_point = 0;
  int32_t act_min = -128;
  int32_t act_max = 127;
  std::string rounding = "double";
};

// npuq._C.Conv2dParams: a convolution (or fully-connected) layer without its weights.
struct ConvArgs {
  int64_t in_channels = 0;
  std::array<int64_t, 2> stride{1, 1};
  std::array<int64_t, 4> padding{0, 0, 0, 0};  // top, bottom, left, right
  std::array<int64_t, 2> dilation{1, 1};
  int64_t groups = 1;
  int32_t input_zero_point = 0;
  RequantArgs requant;
  std::string overflow = "raise";
  bool fully_connected = false;  // errors then name the op fully_connected (it runs as a 1x1 conv2d)
};

// npuq._C.AddParams: (zero point, multiplier, exponent) of a, b and the output.
struct AddArgs {
  int32_t a_zero_point = 0, a_multiplier = 0, a_exponent = 0;
  int32_t b_zero_point = 0, b_multiplier = 0, b_exponent = 0;
  int32_t output_zero_point = 0, output_multiplier = 0, output_exponent = 0;
  int32_t left_shift = 20;
  int32_t act_min = -128, act_max = 127;
  std::string rounding = "double";
};

// npuq._C.Pool2dParams: a pooling window; the input's shape comes with each call.
struct PoolArgs {
  std::array<int64_t, 2> kernel{1, 1};
  std::array<int64_t, 2> stride{1, 1};
  std::array<int64_t, 4> padding{0, 0, 0, 0};  // top, bottom, left, right
  bool count_include_pad = false;
  int32_t input_zero_point = 0;
  int32_t act_min = -128, act_max = 127;
};

// The kernels' requantization of `channels` channels. Points into r's arrays: r must outlive it.
RequantParams requant_params(const RequantArgs& r, int64_t channels);

// A layer with checked weights: weight int8 [C_out, KH, KW, C_in / groups], bias int32 [C_out] or None.
// params.shape has no input yet (batch, in_h, in_w are 0): the plans and validate() fill it per input.
// The pointers are into a, weight and bias, which must outlive the result.
struct ConvLayer {
  Conv2dParams params;
  const int8_t* weight = nullptr;
  const int32_t* bias = nullptr;  // nullptr without bias
};
ConvLayer conv_layer(const ConvArgs& a, const pybind11::array& weight, const pybind11::object& bias);

AddParams add_params(const AddArgs& a);  // validated

// Pooling of an (N, H, W, C) input, validated.
Pool2dParams pool_params(std::array<int64_t, 4> x_shape, const PoolArgs& a);

// Registers the four structs on the module; before any binding that takes them.
void register_params(pybind11::module_& m);

}  // namespace bindings
}  // namespace npuq
