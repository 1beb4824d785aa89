// Op parameters from the arguments the Python layer passes, shared by the CPU bindings (module.cc) and
// the CUDA bindings (csrc/cuda/bindings.cc): one parser per argument, validated as the kernels require.
#pragma once

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

// (zero point, multiplier, exponent) of a, b and the output.
inline AddParams add_params(std::array<int32_t, 3> a_q, std::array<int32_t, 3> b_q, std::array<int32_t, 3> out_q,
                            int32_t left_shift, int32_t act_min, int32_t act_max, const std::string& rounding) {
  AddParams p;
  p.a_zero_point = a_q[0], p.a_multiplier = a_q[1], p.a_exponent = a_q[2];
  p.b_zero_point = b_q[0], p.b_multiplier = b_q[1], p.b_exponent = b_q[2];
  p.out_zero_point = out_q[0], p.out_multiplier = out_q[1], p.out_exponent = out_q[2];
  p.left_shift = left_shift;
  p.act_min = act_min;
  p.act_max = act_max;
  p.rounding = parse_rounding(rounding);
  validate(p);
  return p;
}

// Pooling of an (N, H, W, C) input; padding is (top, bottom, left, right).
inline Pool2dParams pool_params(std::array<int64_t, 4> x_shape, std::array<int64_t, 2> kernel,
                                std::array<int64_t, 2> stride, std::array<int64_t, 4> padding,
                                bool count_include_pad = false, int32_t input_zero_point = 0,
                                int32_t act_min = -128, int32_t act_max = 127) {
  Pool2dParams p;
  p.batch = x_shape[0], p.in_h = x_shape[1], p.in_w = x_shape[2], p.channels = x_shape[3];
  p.kernel_h = kernel[0], p.kernel_w = kernel[1];
  p.stride_h = stride[0], p.stride_w = stride[1];
  p.pad_top = padding[0], p.pad_bottom = padding[1], p.pad_left = padding[2], p.pad_right = padding[3];
  p.count_include_pad = count_include_pad;
  p.input_zero_point = input_zero_point;
  p.act_min = act_min;
  p.act_max = act_max;
  validate(p);
  return p;
}

}  // namespace bindings
}  // namespace npuq
