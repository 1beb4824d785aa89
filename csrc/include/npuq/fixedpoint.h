// npuq fixed-point primitives: the one place where the NPU's integer arithmetic is written down in code.
//
// The specification is docs/arithmetic.md; the section numbers below refer to it. Every kernel (the
// scalar reference in csrc/reference, the CPU fast paths in csrc/cpu and the CUDA kernels in csrc/cuda)
// uses these functions for anything that rounds, so that there is one definition of each rounding.
// Vectorized kernels re-derive the same formulas lane-wise and are tested bit-for-bit against these.
//
// All arithmetic is on int64 where an int32 operation could overflow: no function here has undefined
// behaviour for any argument in its documented domain.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define NPUQ_HD __host__ __device__ __forceinline__
#else
#define NPUQ_HD inline
#endif

namespace npuq {
namespace fp {

constexpr int32_t kInt32Min = INT32_MIN;
constexpr int32_t kInt32Max = INT32_MAX;

// Exponent bounds of a quantized multiplier M = M0 * 2^(e - 31) (section 2) and of the 4-bit
// channel shift of the weight equalizing shift scaler (section 3).
constexpr int kMinExponent = -31;
constexpr int kMaxExponent = 30;
constexpr int kMaxChannelShift = 15;
constexpr int kMinEffectiveExponent = kMinExponent - kMaxChannelShift;  // -46

enum class Rounding : int { kDouble = 0, kSingle = 1 };

NPUQ_HD int32_t saturate_int32(int64_t v) {
  return v < kInt32Min ? kInt32Min : (v > kInt32Max ? kInt32Max : static_cast<int32_t>(v));
}

// Saturating rounding doubling high multiply (section 3.1): round(a * b / 2^31), ties toward +inf.
// trunc((p + nudge) / 2^31) with the sign-dependent nudge equals floor((p + 2^30) / 2^31) for every p,
// which is what is computed (an arithmetic shift is a floor).
NPUQ_HD int32_t srdhm(int32_t a, int32_t b) {
  if (a == kInt32Min && b == kInt32Min) return kInt32Max;  // the only result that does not fit
  const int64_t p = static_cast<int64_t>(a) * static_cast<int64_t>(b);
  return static_cast<int32_t>((p + (int64_t{1} << 30)) >> 31);
}

// Rounding divide by power of two (section 3.1): round(h / 2^n), ties away from zero, for n >= 0.
NPUQ_HD int32_t rdbpot(int32_t h, int n) {
  if (n == 0) return h;
  if (n >= 32) return (h == kInt32Min && n == 32) ? -1 : 0;  // |h / 2^n| <= 1/2
  const int64_t mask = (int64_t{1} << n) - 1;
  const int64_t rem = static_cast<int64_t>(h) & mask;
  const int64_t threshold = (mask >> 1) + (h < 0 ? 1 : 0);
  return static_cast<int32_t>((static_cast<int64_t>(h) >> n) + (rem > threshold ? 1 : 0));
}

// Multiply by the quantized multiplier with TFLite's double rounding (section 3.1).
// ec is the effective exponent e - s_c in [-46, 30].
NPUQ_HD int32_t multiply_double(int32_t acc, int32_t m0, int ec) {
  const int left = ec > 0 ? ec : 0;
  const int right = ec > 0 ? 0 : -ec;
  const int32_t a = saturate_int32(static_cast<int64_t>(acc) * (int64_t{1} << left));
  return rdbpot(srdhm(a, m0), right);
}

// Multiply by the quantized multiplier with one rounding of the 64-bit product (section 3.2):
// floor((acc * M0 + 2^(t-1)) / 2^t) with t = 31 - ec in [1, 77], saturated to int32.
NPUQ_HD int32_t multiply_single(int32_t acc, int32_t m0, int ec) {
  const int t = 31 - ec;
  if (t >= 63) return 0;  // |acc * M0| < 2^62 <= 2^(t-1): the rounded quotient is 0
  const int64_t p = static_cast<int64_t>(acc) * static_cast<int64_t>(m0);  // |p| < 2^62
  return saturate_int32((p + (int64_t{1} << (t - 1))) >> t);
}

NPUQ_HD int32_t multiply(int32_t acc, int32_t m0, int ec, Rounding r) {
  return r == Rounding::kDouble ? multiply_double(acc, m0, ec) : multiply_single(acc, m0, ec);
}

// Output stage (section 3.3): add the output zero point exactly, clamp to the activation range.
NPUQ_HD int8_t output_stage(int32_t r, int32_t zero_point, int32_t act_min, int32_t act_max) {
  int64_t y = static_cast<int64_t>(r) + zero_point;
  y = y < act_min ? act_min : (y > act_max ? act_max : y);
  return static_cast<int8_t>(y);
}

// The whole requantization of one accumulator (section 3).
NPUQ_HD int8_t requantize(int32_t acc, int32_t m0, int ec, Rounding r, int32_t zero_point, int32_t act_min,
                          int32_t act_max) {
  return output_stage(multiply(acc, m0, ec, r), zero_point, act_min, act_max);
}

// Rounded average of pooling (section 7): sum / count, ties away from zero. count >= 1.
NPUQ_HD int32_t rounded_average(int64_t sum, int64_t count) {
  const int64_t half = count / 2;
  return static_cast<int32_t>(sum > 0 ? (sum + half) / count : (sum - half) / count);
}

// Overflow policy (section 5) applied to an exact accumulator. Returns false when the policy is
// kRaise and the value does not fit, leaving *out untouched.
enum class Overflow : int { kRaise = 0, kSaturate = 1, kWrap = 2 };

NPUQ_HD bool apply_overflow_policy(int64_t exact, Overflow policy, int32_t* out) {
  if (exact >= kInt32Min && exact <= kInt32Max) {
    *out = static_cast<int32_t>(exact);
    return true;
  }
  switch (policy) {
    case Overflow::kSaturate: *out = saturate_int32(exact); return true;
    case Overflow::kWrap: *out = static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(exact))); return true;
    default: return false;
  }
}

// quantize_multiplier (section 2). Host only.
struct QuantizedMultiplier {
  enum class Status : int { kOk = 0, kFlushedToZero = 1, kInvalid = 2, kTooLarge = 3 };
  int32_t m0 = 0;
  int32_t exponent = 0;
  Status status = Status::kInvalid;
};

inline QuantizedMultiplier quantize_multiplier(double real) {
  QuantizedMultiplier q;
  if (!(real > 0.0) || std::isinf(real)) return q;  // NaN, inf, zero, negative
  int e = 0;
  const double frac = std::frexp(real, &e);  // real = frac * 2^e, frac in [0.5, 1)
  int64_t m0 = std::llround(std::ldexp(frac, 31));  // exact scaling; ties away from zero
  if (m0 == (int64_t{1} << 31)) {
    m0 >>= 1;
    ++e;
  }
  if (e < kMinExponent) {
    q.status = QuantizedMultiplier::Status::kFlushedToZero;
    return q;  // (0, 0)
  }
  if (e > kMaxExponent) {
    q.status = QuantizedMultiplier::Status::kTooLarge;
    return q;
  }
  q.m0 = static_cast<int32_t>(m0);
  q.exponent = e;
  q.status = QuantizedMultiplier::Status::kOk;
  return q;
}

}  // namespace fp
}  // namespace npuq
