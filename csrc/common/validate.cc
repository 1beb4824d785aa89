// Argument checks (npuq/ops.h) shared by every backend: the scalar reference, the CPU fast paths and the
// CUDA kernels all validate() their params here first.
#include <sstream>

#include "npuq/ops.h"

namespace npuq {
namespace {

template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw InvalidArgument(os.str());
}

void check_positive(const char* name, int64_t v) {
  if (v < 1) fail(name, " must be >= 1, got ", v);
}

void check_clamp(const char* op, int32_t lo, int32_t hi) {
  if (lo < -128 || lo > 127) fail(op, ": act_min must be in [-128, 127], got ", lo);
  if (hi < -128 || hi > 127) fail(op, ": act_max must be in [-128, 127], got ", hi);
  if (lo > hi) fail(op, ": act_min (", lo, ") must be <= act_max (", hi, ")");
}

void check_zero_point(const char* op, const char* name, int32_t zp) {
  if (zp < -128 || zp > 127) fail(op, ": ", name, " must be in [-128, 127], got ", zp);
}

void check_multiplier(const char* op, const char* name, int64_t index, int32_t m0, int32_t e) {
  if (m0 != 0 && m0 < (int32_t{1} << 30))
    fail(op, ": ", name, " multiplier[", index, "] = ", m0,
         " is not a Q31 mantissa: it must be 0 or in [2^30, 2^31 - 1] (use npuq.quantize_multiplier)");
  if (m0 < 0) fail(op, ": ", name, " multiplier[", index, "] = ", m0, " must not be negative");
  if (e < fp::kMinExponent || e > fp::kMaxExponent)
    fail(op, ": ", name, " exponent[", index, "] = ", e, " is outside [", fp::kMinExponent, ", ", fp::kMaxExponent,
         "]");
}

}  // namespace

void validate(const RequantParams& r, const char* op) {
  if (r.channels < 1) fail(op, ": the number of channels must be >= 1, got ", r.channels);
  if (!r.multiplier || !r.exponent) fail(op, ": multiplier and exponent arrays are required");
  for (int64_t c = 0; c < r.channels; ++c) {
    check_multiplier(op, "output", c, r.multiplier[c], r.exponent[c]);
    if (r.shift && r.shift[c] > fp::kMaxChannelShift)
      fail(op, ": channel_shift[", c, "] = ", int(r.shift[c]), " is outside [0, 15]");
  }
  check_zero_point(op, "output_zero_point", r.zero_point);
  check_clamp(op, r.act_min, r.act_max);
  if (r.rounding != fp::Rounding::kDouble && r.rounding != fp::Rounding::kSingle)
    fail(op, ": unknown rounding mode ", int(r.rounding));
}

void validate(Conv2dShape& s) {
  check_positive("conv2d: batch", s.batch);
  check_positive("conv2d: input height", s.in_h);
  check_positive("conv2d: input width", s.in_w);
  check_positive("conv2d: input channels", s.in_c);
  check_positive("conv2d: output channels", s.out_c);
  check_positive("conv2d: kernel height", s.kernel_h);
  check_positive("conv2d: kernel width", s.kernel_w);
  check_positive("conv2d: stride", s.stride_h);
  check_positive("conv2d: stride", s.stride_w);
  check_positive("conv2d: dilation", s.dilation_h);
  check_positive("conv2d: dilation", s.dilation_w);
  check_positive("conv2d: groups", s.groups);
  if (s.pad_top < 0 || s.pad_bottom < 0 || s.pad_left < 0 || s.pad_right < 0)
    fail("conv2d: padding must be >= 0, got (top, bottom, left, right) = (", s.pad_top, ", ", s.pad_bottom, ", ",
         s.pad_left, ", ", s.pad_right, ")");
  if (s.in_c % s.groups != 0) fail("conv2d: groups (", s.groups, ") must divide the input channels (", s.in_c, ")");
  if (s.out_c % s.groups != 0) fail("conv2d: groups (", s.groups, ") must divide the output channels (", s.out_c, ")");
  const int64_t extent_h = s.dilation_h * (s.kernel_h - 1) + 1;
  const int64_t extent_w = s.dilation_w * (s.kernel_w - 1) + 1;
  if (s.pad_top >= extent_h || s.pad_bottom >= extent_h)
    fail("conv2d: vertical padding (", s.pad_top, ", ", s.pad_bottom,
         ") must be smaller than the dilated kernel height ", extent_h);
  if (s.pad_left >= extent_w || s.pad_right >= extent_w)
    fail("conv2d: horizontal padding (", s.pad_left, ", ", s.pad_right,
         ") must be smaller than the dilated kernel width ", extent_w);
  const int64_t span_h = s.in_h + s.pad_top + s.pad_bottom - extent_h;
  const int64_t span_w = s.in_w + s.pad_left + s.pad_right - extent_w;
  if (span_h < 0 || span_w < 0)
    fail("conv2d: the dilated kernel (", extent_h, " x ", extent_w, ") is larger than the padded input (",
         s.in_h + s.pad_top + s.pad_bottom, " x ", s.in_w + s.pad_left + s.pad_right, ")");
  s.out_h = span_h / s.stride_h + 1;
  s.out_w = span_w / s.stride_w + 1;
  s.in_c_per_group = s.in_c / s.groups;
  s.out_c_per_group = s.out_c / s.groups;
  // Keep every index product far inside int64 and every buffer allocatable.
  const int64_t limit = int64_t{1} << 40;
  if (s.batch * s.in_h * s.in_w > limit / s.in_c || s.out_rows() > limit / s.out_c ||
      s.reduction_size() > (int64_t{1} << 31) || s.out_c * s.reduction_size() > limit)
    fail("conv2d: tensor sizes are too large");
}

void validate(Conv2dParams& p) {
  validate(p.shape);
  check_zero_point("conv2d", "input_zero_point", p.input_zero_point);
  if (p.requant.channels != p.shape.out_c)
    fail("conv2d: requantization has ", p.requant.channels, " channels but the layer has ", p.shape.out_c,
         " output channels");
  validate(p.requant, "conv2d");
  if (p.overflow != fp::Overflow::kRaise && p.overflow != fp::Overflow::kSaturate && p.overflow != fp::Overflow::kWrap)
    fail("conv2d: unknown overflow policy ", int(p.overflow));
}

void validate(const AddParams& p) {
  check_zero_point("add", "a_zero_point", p.a_zero_point);
  check_zero_point("add", "b_zero_point", p.b_zero_point);
  check_zero_point("add", "output_zero_point", p.out_zero_point);
  check_multiplier("add", "a", 0, p.a_multiplier, p.a_exponent);
  check_multiplier("add", "b", 0, p.b_multiplier, p.b_exponent);
  check_multiplier("add", "output", 0, p.out_multiplier, p.out_exponent);
  // (a - z_a) * 2^left_shift must fit int32 and the two rescaled inputs must sum without overflow:
  // |a - z_a| <= 255 < 2^8, so left_shift <= 22 keeps each term below 2^30 (docs/arithmetic.md 6).
  if (p.left_shift < 0 || p.left_shift > 22) fail("add: left_shift must be in [0, 22], got ", p.left_shift);
  if (p.a_exponent > 0 || p.b_exponent > 0)
    fail("add: input multipliers must be <= 1 (exponent <= 0), got exponents ", p.a_exponent, " and ", p.b_exponent,
         " (use npuq.ops.add_params)");
  check_clamp("add", p.act_min, p.act_max);
  if (p.rounding != fp::Rounding::kDouble && p.rounding != fp::Rounding::kSingle)
    fail("add: unknown rounding mode ", int(p.rounding));
}

void validate(Pool2dParams& p) {
  check_positive("avg_pool2d: batch", p.batch);
  check_positive("avg_pool2d: input height", p.in_h);
  check_positive("avg_pool2d: input width", p.in_w);
  check_positive("avg_pool2d: channels", p.channels);
  check_positive("avg_pool2d: kernel height", p.kernel_h);
  check_positive("avg_pool2d: kernel width", p.kernel_w);
  check_positive("avg_pool2d: stride", p.stride_h);
  check_positive("avg_pool2d: stride", p.stride_w);
  if (p.pad_top < 0 || p.pad_bottom < 0 || p.pad_left < 0 || p.pad_right < 0) fail("avg_pool2d: padding must be >= 0");
  if (p.pad_top >= p.kernel_h || p.pad_bottom >= p.kernel_h || p.pad_left >= p.kernel_w || p.pad_right >= p.kernel_w)
    fail("avg_pool2d: padding (", p.pad_top, ", ", p.pad_bottom, ", ", p.pad_left, ", ", p.pad_right,
         ") must be smaller than the kernel (", p.kernel_h, " x ", p.kernel_w, ")");
  const int64_t span_h = p.in_h + p.pad_top + p.pad_bottom - p.kernel_h;
  const int64_t span_w = p.in_w + p.pad_left + p.pad_right - p.kernel_w;
  if (span_h < 0 || span_w < 0)
    fail("avg_pool2d: the kernel (", p.kernel_h, " x ", p.kernel_w, ") is larger than the padded input");
  p.out_h = span_h / p.stride_h + 1;
  p.out_w = span_w / p.stride_w + 1;
  check_zero_point("avg_pool2d", "input_zero_point", p.input_zero_point);
  check_clamp("avg_pool2d", p.act_min, p.act_max);
  const int64_t limit = int64_t{1} << 40;
  if (p.batch * p.in_h * p.in_w > limit / p.channels || p.kernel_h * p.kernel_w > (int64_t{1} << 30))
    fail("avg_pool2d: tensor sizes are too large");
}

void validate_weights(const int8_t* w, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    if (w[i] == -128) fail("weight[", i, "] (flat index) is -128: int8 weights must lie in [-127, 127] (symmetric)");
}

Conv2dShape shape_with_input(const Conv2dShape& layer, int64_t batch, int64_t in_h, int64_t in_w) {
  Conv2dShape s = layer;
  s.batch = batch;
  s.in_h = in_h;
  s.in_w = in_w;
  validate(s);
  return s;
}

std::string describe_overflow(const char* op, int64_t row, int64_t channel, int64_t value) {
  std::ostringstream os;
  os << op << ": the accumulator of output row " << row << ", channel " << channel << " is " << value
     << ", outside int32 [-2147483648, 2147483647]; pass overflow='saturate' or 'wrap' to emulate a "
        "saturating or wrapping accumulator, or reduce the weights / bias";
  return os.str();
}

}  // namespace npuq
