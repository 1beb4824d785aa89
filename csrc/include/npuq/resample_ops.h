// Descriptions of the resampling ops of program format 2 (docs/arithmetic.md 12-15): the mean over H and
// W, nearest and bilinear upsampling, and max pooling with ceil mode. Shared by the scalar reference
// (csrc/reference/resample_ops.cc), the CPU fast paths (csrc/cpu/resample_ops.cc) and the CUDA kernels
// (csrc/cuda/resample_ops.cu). Activations are NHWC and C-contiguous, as in npuq/ops.h.
#pragma once

#include <cstdint>

#include "npuq/fixedpoint.h"
#include "npuq/ops.h"

namespace npuq {

// --- mean over H and W (section 15) ---

// H * W of a mean: the int32 channel sum of n values x - z_x, |x - z_x| <= 255, is exact for n <= 2^23.
constexpr int64_t kMaxMeanCount = int64_t{1} << 23;

struct MeanParams {
  int64_t batch = 0, in_h = 0, in_w = 0, channels = 0;
  int32_t input_zero_point = 0, output_zero_point = 0;
  int32_t multiplier = 0;  // M0: 0 or [2^30, 2^31 - 1]
  int32_t exponent = 0;    // e: [-31, 30]
  int32_t act_min = -128, act_max = 127;
  bool tflite_rounding = false;  // 1 / (H * W) as TFLite's fixed-point factor (tflite_mean_multiplier)
  fp::Rounding rounding = fp::Rounding::kDouble;

  NPUQ_HD int64_t count() const { return in_h * in_w; }
};

// TFLite's mean multiplier (LiteRT's reference QuantizedMeanOrSum): 1 / n enters the multiplier of
// s_x / s_y as the fixed-point factor 2^k / n, k = floor(log2 n) capped so that the exponent stays >= -31:
// M' = floor(M0 2^k / n) (truncated, so M' may be below 2^30: not a normalized Q31) and e' = e - k.
struct MeanMultiplier {
  int32_t multiplier = 0, exponent = 0;
};

NPUQ_HD MeanMultiplier tflite_mean_multiplier(int32_t m0, int32_t exponent, int64_t count) {
  int32_t k = 0;
  while (k < 32 && (int64_t{1} << (k + 1)) <= count) ++k;  // floor(log2 count), count >= 1
  if (k > 31 + exponent) k = 31 + exponent;                   // exponent >= -31, so k >= 0
  MeanMultiplier m;
  m.multiplier = static_cast<int32_t>((static_cast<int64_t>(m0) << k) / count);  // m0 < 2^31, k <= 32: no overflow
  m.exponent = exponent - k;
  return m;
}

// The output of one channel from its exact sum acc = sum (x - z_x) over the count() pixels.
NPUQ_HD int8_t mean_output(int32_t acc, const MeanParams& p) {
  if (!p.tflite_rounding)
    return fp::requantize(acc, p.multiplier, p.exponent, p.rounding, p.output_zero_point, p.act_min, p.act_max);
  const MeanMultiplier m = tflite_mean_multiplier(p.multiplier, p.exponent, p.count());
  return fp::requantize(acc, m.multiplier, m.exponent, p.rounding, p.output_zero_point, p.act_min, p.act_max);
}

// --- upsampling (sections 12 and 13) ---

constexpr int64_t kMaxUpsampleFactor = 64;

enum class UpsampleMode : int { kNearest = 0, kBilinear = 1 };

struct UpsampleParams {
  int64_t batch = 0, in_h = 0, in_w = 0, channels = 0;
  int64_t factor_h = 1, factor_w = 1;  // [1, 64]
  UpsampleMode mode = UpsampleMode::kNearest;
  int32_t zero_point = 0;  // the input's (and the output's): bilinear weights act on x - z
  int64_t out_h = 0, out_w = 0;  // derived by validate()

  // D = 4 f_h f_w: the sum of the four bilinear weights of an output.
  NPUQ_HD int32_t bilinear_divisor() const { return static_cast<int32_t>(4 * factor_h * factor_w); }
};

// The two source indices and integer weights of output index o along an axis of input size n and
// factor f (section 13): the source coordinate (2o + 1 - f) / (2f), clamped below at 0.
struct BilinearTap {
  int32_t i0 = 0, i1 = 0;  // source indices, i0 <= i1 < n
  int32_t w0 = 0, w1 = 0;  // weights of i0 and i1, w0 + w1 = 2f
};

NPUQ_HD BilinearTap bilinear_tap(int64_t o, int64_t f, int64_t n) {
  const int64_t num = 2 * o + 1 - f > 0 ? 2 * o + 1 - f : 0;
  const int64_t i0 = num / (2 * f);  // num >= 0: the quotient is the floor
  const int64_t lam = num - 2 * f * i0;
  BilinearTap t;
  t.i0 = static_cast<int32_t>(i0);
  t.i1 = static_cast<int32_t>(i0 + 1 < n ? i0 + 1 : n - 1);
  t.w0 = static_cast<int32_t>(2 * f - lam);
  t.w1 = static_cast<int32_t>(lam);
  return t;
}

// --- max pooling (section 14) ---

struct MaxPool2dParams {
  int64_t batch = 0, in_h = 0, in_w = 0, channels = 0;
  int64_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  bool ceil_mode = false;
  int64_t out_h = 0, out_w = 0;  // derived by validate()
};

// Output size of a pooling window along one axis (section 14; section 4 without dilation when
// !ceil_mode). Throws InvalidArgument naming `op` unless size, kernel, stride >= 1, 0 <= pad < kernel and
// the kernel fits the padded input.
int64_t pool_output_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad_lo, int64_t pad_hi, bool ceil_mode,
                         const char* op = "max_pool2d");

// Argument checks (InvalidArgument naming the argument); they fill the derived fields.
void validate(const MeanParams& p);
void validate(UpsampleParams& p);
void validate(MaxPool2dParams& p);

// The scalar reference: one output at a time, the formulas in the order the document states them.
// Callers validate() the params first.
namespace ref {
void mean(const int8_t* x, int8_t* out, const MeanParams& p);             // [N, H, W, C] -> [N, 1, 1, C]
void upsample(const int8_t* x, int8_t* out, const UpsampleParams& p);     // [N, H, W, C] -> [N, OH, OW, C]
void max_pool2d(const int8_t* x, int8_t* out, const MaxPool2dParams& p);  // [N, H, W, C] -> [N, OH, OW, C]
}  // namespace ref

// The fast CPU paths (OpenMP; threads as cpu::resolve_threads takes them). They validate the params.
namespace cpu {
void mean(const int8_t* x, int8_t* out, const MeanParams& p, int threads);
void upsample(const int8_t* x, int8_t* out, const UpsampleParams& p, int threads);
void max_pool2d(const int8_t* x, int8_t* out, const MaxPool2dParams& p, int threads);
// channel_shuffle (section 12) of [rows, channels]: output channel j * groups + i is input channel
// i * (channels / groups) + j. Throws InvalidArgument unless groups divides channels.
void channel_shuffle(const int8_t* x, int8_t* out, int64_t rows, int64_t channels, int64_t groups, int threads);
}  // namespace cpu

}  // namespace npuq
