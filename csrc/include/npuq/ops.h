// Descriptions of npuq's integer ops, shared by the scalar reference and the fast paths.
//
// Layouts (docs/ops.md): activations NHWC, conv weights OHWI ([C_out][KH][KW][C_in / groups]),
// bias [C_out], per-channel requantization arrays [C_out]. Every pointer is to C-contiguous memory.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "npuq/fixedpoint.h"

namespace npuq {

// Errors the bindings translate into Python exceptions: ValueError and OverflowError.
struct InvalidArgument : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct AccumulatorOverflow : std::overflow_error {
  using std::overflow_error::overflow_error;
};

// Requantization of C channels (section 3 of docs/arithmetic.md). Arrays have one entry per channel.
struct RequantParams {
  int64_t channels = 0;
  const int32_t* multiplier = nullptr;  // M0: 0 or [2^30, 2^31 - 1]
  const int32_t* exponent = nullptr;    // e: [-31, 30]
  const uint8_t* shift = nullptr;       // s_c: [0, 15]; nullptr means all zero
  int32_t zero_point = 0;
  int32_t act_min = -128;
  int32_t act_max = 127;
  fp::Rounding rounding = fp::Rounding::kDouble;

  int effective_exponent(int64_t c) const { return exponent[c] - (shift ? shift[c] : 0); }
};

struct Conv2dShape {
  int64_t batch = 0, in_h = 0, in_w = 0, in_c = 0;
  int64_t out_c = 0, kernel_h = 1, kernel_w = 1;
  int64_t stride_h = 1, stride_w = 1, dilation_h = 1, dilation_w = 1;
  int64_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  int64_t groups = 1;
  // Derived by validate().
  int64_t out_h = 0, out_w = 0, in_c_per_group = 0, out_c_per_group = 0;

  int64_t reduction_size() const { return kernel_h * kernel_w * in_c_per_group; }
  int64_t out_rows() const { return batch * out_h * out_w; }
  bool is_depthwise() const { return groups == in_c && groups > 1; }
};

struct Conv2dParams {
  Conv2dShape shape;
  int32_t input_zero_point = 0;
  RequantParams requant;  // channels == shape.out_c
  fp::Overflow overflow = fp::Overflow::kRaise;
  const char* op = "conv2d";  // the name errors report (fully_connected runs as a 1x1 conv2d)
};

struct AddParams {
  int32_t a_zero_point = 0, a_multiplier = 0, a_exponent = 0;
  int32_t b_zero_point = 0, b_multiplier = 0, b_exponent = 0;
  int32_t out_zero_point = 0, out_multiplier = 0, out_exponent = 0;
  int32_t left_shift = 20;
  int32_t act_min = -128, act_max = 127;
  fp::Rounding rounding = fp::Rounding::kDouble;
};

struct Pool2dParams {
  int64_t batch = 0, in_h = 0, in_w = 0, channels = 0;
  int64_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  bool count_include_pad = false;
  int32_t input_zero_point = 0;
  int32_t act_min = -128, act_max = 127;
  int64_t out_h = 0, out_w = 0;  // derived by validate()
};

// Argument checks shared by every implementation (throw InvalidArgument with a message naming the
// argument). They also fill the derived fields.
void validate(Conv2dShape& s);
void validate(const RequantParams& r, const char* op);
void validate(Conv2dParams& p);
void validate(const AddParams& p);
void validate(Pool2dParams& p);
// The layer's shape on a (batch, in_h, in_w, in_c) input, validated (the plans' per-call shape).
Conv2dShape shape_with_input(const Conv2dShape& layer, int64_t batch, int64_t in_h, int64_t in_w);
// Weights must lie in [-127, 127] (docs/arithmetic.md section 1).
void validate_weights(const int8_t* w, int64_t count);

// Largest |x - z| over int8 x: the bound used to decide that an accumulator cannot overflow.
inline int64_t max_input_deviation(int32_t zero_point) {
  return zero_point + 128 > 127 - zero_point ? zero_point + 128 : 127 - zero_point;
}

std::string describe_overflow(const char* op, int64_t row, int64_t channel, int64_t value);

}  // namespace npuq
