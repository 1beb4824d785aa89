// The eltwise ops: the argument checks every implementation shares, and the scalar reference kernels
// (docs/arithmetic.md 9 lut, 10 mul, 11 concat), the oracle of the fast paths.
#include "npuq/eltwise_ops.h"

#include <string>

namespace npuq {
namespace {

void check_zero_point(int32_t z, const std::string& name) {
  if (z < -128 || z > 127) throw InvalidArgument(name + " must be in [-128, 127], got " + std::to_string(z));
}

void check_multiplier(int32_t m0, int32_t e, const std::string& m_name, const std::string& e_name) {
  if (m0 != 0 && m0 < (int32_t{1} << 30))
    throw InvalidArgument(m_name + " = " + std::to_string(m0) +
                          " is not a Q31 mantissa: it must be 0 or in [2**30, 2**31 - 1]");
  if (e < fp::kMinExponent || e > fp::kMaxExponent)
    throw InvalidArgument(e_name + " must be in [-31, 30], got " + std::to_string(e));
}

void check_extent(int64_t v, const std::string& name) {
  if (v < 1) throw InvalidArgument(name + " must be >= 1, got " + std::to_string(v));
}

}  // namespace

void validate(const MulParams& p) {
  check_extent(p.batch, "mul: batch");
  check_extent(p.positions, "mul: positions (H * W)");
  check_extent(p.channels, "mul: channels");
  check_zero_point(p.a_zero_point, "a_zero_point");
  check_zero_point(p.b_zero_point, "b_zero_point");
  check_zero_point(p.out_zero_point, "output_zero_point");
  check_multiplier(p.multiplier, p.exponent, "multiplier", "exponent");
  if (p.act_min < -128 || p.act_min > 127)
    throw InvalidArgument("act_min must be in [-128, 127], got " + std::to_string(p.act_min));
  if (p.act_max < -128 || p.act_max > 127)
    throw InvalidArgument("act_max must be in [-128, 127], got " + std::to_string(p.act_max));
  if (p.act_min > p.act_max)
    throw InvalidArgument("act_min (" + std::to_string(p.act_min) + ") must be <= act_max (" +
                          std::to_string(p.act_max) + ")");
}

void validate(const ConcatParams& p) {
  if (p.num_inputs < 2 || p.num_inputs > kMaxConcatInputs)
    throw InvalidArgument("concat: inputs must hold 2 to " + std::to_string(kMaxConcatInputs) + " tensors, got " +
                          std::to_string(p.num_inputs));
  if (p.inputs == nullptr) throw InvalidArgument("concat: inputs is null");
  check_extent(p.rows, "concat: rows");
  check_zero_point(p.out_zero_point, "output_zero_point");
  for (int i = 0; i < p.num_inputs; ++i) {
    const ConcatInput& in = p.inputs[i];
    const std::string idx = "[" + std::to_string(i) + "]";
    if (in.data == nullptr) throw InvalidArgument("concat: inputs" + idx + " is null");
    check_extent(in.channels, "concat: channels of inputs" + idx);
    check_zero_point(in.zero_point, "zero_points" + idx);
    check_multiplier(in.multiplier, in.exponent, "multipliers" + idx, "exponents" + idx);
  }
}

namespace ref {

void lut(const int8_t* x, int8_t* out, int64_t count, const int8_t* table) {
  for (int64_t i = 0; i < count; ++i) out[i] = table[x[i] + 128];
}

void mul(const int8_t* a, const int8_t* b, int8_t* out, const MulParams& p) {
  for (int64_t n = 0; n < p.batch; ++n)
    for (int64_t s = 0; s < p.positions; ++s)
      for (int64_t c = 0; c < p.channels; ++c) {
        const int64_t i = (n * p.positions + s) * p.channels + c;
        const int64_t j = p.broadcast_b ? n * p.channels + c : i;
        const int32_t acc = (a[i] - p.a_zero_point) * (b[j] - p.b_zero_point);  // |acc| <= 255 * 255
        out[i] = fp::requantize(acc, p.multiplier, p.exponent, p.rounding, p.out_zero_point, p.act_min, p.act_max);
      }
}

void concat(int8_t* out, const ConcatParams& p) {
  const int64_t out_c = p.out_channels();
  int64_t offset = 0;
  for (int i = 0; i < p.num_inputs; ++i) {
    const ConcatInput& in = p.inputs[i];
    for (int64_t r = 0; r < p.rows; ++r)
      for (int64_t c = 0; c < in.channels; ++c) {
        const int32_t v = in.data[r * in.channels + c] - in.zero_point;
        out[r * out_c + offset + c] =
            fp::requantize(v, in.multiplier, in.exponent, p.rounding, p.out_zero_point, -128, 127);
      }
    offset += in.channels;
  }
}

}  // namespace ref
}  // namespace npuq
