// The resampling ops (docs/arithmetic.md 12-15): their argument checks, shared by every implementation,
// and the scalar reference kernels. Written for reading, not for speed.
#include "npuq/resample_ops.h"

#include <sstream>
#include <string>
#include <utility>

namespace npuq {
namespace {

template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  throw InvalidArgument(os.str());
}

// Every product of extents below stays far inside int64 (and every index inside int32 per axis).
constexpr int64_t kMaxExtent = int64_t{1} << 30;
constexpr int64_t kMaxElements = int64_t{1} << 40;

void check_extent(const char* op, const char* name, int64_t v) {
  if (v < 1 || v > kMaxExtent) fail(op, ": ", name, " must be in [1, 2^30], got ", v);
}

void check_elements(const char* op, const char* what, int64_t batch, int64_t h, int64_t w, int64_t c) {
  // each factor <= 2^30 after check_extent, so the pairwise products fit int64
  if (batch * h > kMaxElements || w * c > kMaxElements || (batch * h) > kMaxElements / (w * c))
    fail(op, ": the ", what, " (", batch, ", ", h, ", ", w, ", ", c, ") has more than 2^40 elements");
}

void check_image(const char* op, int64_t batch, int64_t h, int64_t w, int64_t c) {
  check_extent(op, "batch", batch);
  check_extent(op, "input height", h);
  check_extent(op, "input width", w);
  check_extent(op, "channels", c);
  check_elements(op, "input", batch, h, w, c);
}

void check_int8(const char* op, const char* name, int32_t v) {
  if (v < -128 || v > 127) fail(op, ": ", name, " must be in [-128, 127], got ", v);
}

}  // namespace

int64_t pool_output_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad_lo, int64_t pad_hi, bool ceil_mode,
                         const char* op) {
  check_extent(op, "input size", size);
  check_extent(op, "kernel size", kernel);
  check_extent(op, "stride", stride);
  if (pad_lo < 0 || pad_hi < 0) fail(op, ": padding must be >= 0, got (", pad_lo, ", ", pad_hi, ")");
  if (pad_lo >= kernel || pad_hi >= kernel)
    fail(op, ": padding (", pad_lo, ", ", pad_hi, ") must be smaller than the kernel (", kernel, ")");
  const int64_t span = size + pad_lo + pad_hi - kernel;
  // Floor mode needs the whole window inside the padded input. Ceil mode (torch's) also takes a window
  // that runs past the end, clipped to the image, even one larger than the padded input: the output is
  // ceil(span / stride) + 1 (a floor division, span may be negative), less one where the last window would
  // start in the trailing padding and so see nothing but padding.
  int64_t out = 0;
  if (!ceil_mode) {
    out = span < 0 ? 0 : span / stride + 1;
  } else {
    const int64_t num = span + stride - 1;
    out = (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1;
    if ((out - 1) * stride >= size + pad_lo) --out;
  }
  if (out < 1)
    fail(op, ": the kernel (", kernel, ") is larger than the padded input (", size, " + ", pad_lo, " + ", pad_hi, ")");
  return out;
}

void validate(const MeanParams& p) {
  check_image("mean", p.batch, p.in_h, p.in_w, p.channels);
  if (p.in_h * p.in_w > kMaxMeanCount)
    fail("mean: H * W = ", p.in_h * p.in_w, " exceeds 2^23 (the int32 channel sum could overflow)");
  check_int8("mean", "input_zero_point", p.input_zero_point);
  check_int8("mean", "output_zero_point", p.output_zero_point);
  if (p.multiplier < 0 || (p.multiplier != 0 && p.multiplier < (int32_t{1} << 30)))
    fail("mean: multiplier = ", p.multiplier, " is not a Q31 mantissa (0 or in [2^30, 2^31 - 1])");
  if (p.exponent < fp::kMinExponent || p.exponent > fp::kMaxExponent)
    fail("mean: exponent must be in [-31, 30], got ", p.exponent);
  check_int8("mean", "act_min", p.act_min);
  check_int8("mean", "act_max", p.act_max);
  if (p.act_min > p.act_max) fail("mean: act_min (", p.act_min, ") must be <= act_max (", p.act_max, ")");
}

void validate(UpsampleParams& p) {
  check_image("upsample", p.batch, p.in_h, p.in_w, p.channels);
  if (p.factor_h < 1 || p.factor_h > kMaxUpsampleFactor || p.factor_w < 1 || p.factor_w > kMaxUpsampleFactor)
    fail("upsample: scale must be in [1, 64], got (", p.factor_h, ", ", p.factor_w, ")");
  if (p.mode != UpsampleMode::kNearest && p.mode != UpsampleMode::kBilinear)
    fail("upsample: mode must be nearest or bilinear");
  check_int8("upsample", "zero_point", p.zero_point);
  p.out_h = p.in_h * p.factor_h;
  p.out_w = p.in_w * p.factor_w;
  if (p.out_h > kMaxExtent || p.out_w > kMaxExtent)
    fail("upsample: the output (", p.out_h, " x ", p.out_w, ") is larger than 2^30 along an axis");
  check_elements("upsample", "output", p.batch, p.out_h, p.out_w, p.channels);
}

void validate(MaxPool2dParams& p) {
  check_image("max_pool2d", p.batch, p.in_h, p.in_w, p.channels);
  p.out_h = pool_output_size(p.in_h, p.kernel_h, p.stride_h, p.pad_top, p.pad_bottom, p.ceil_mode);
  p.out_w = pool_output_size(p.in_w, p.kernel_w, p.stride_w, p.pad_left, p.pad_right, p.ceil_mode);
  check_elements("max_pool2d", "output", p.batch, p.out_h, p.out_w, p.channels);
}

namespace ref {

void mean(const int8_t* x, int8_t* out, const MeanParams& p) {
  for (int64_t n = 0; n < p.batch; ++n)
    for (int64_t c = 0; c < p.channels; ++c) {
      int64_t acc = 0;
      for (int64_t h = 0; h < p.in_h; ++h)
        for (int64_t w = 0; w < p.in_w; ++w)
          acc += x[((n * p.in_h + h) * p.in_w + w) * p.channels + c] - p.input_zero_point;
      // |acc| <= 255 * 2^23 < 2^31 (validate): the cast is exact
      out[n * p.channels + c] = mean_output(static_cast<int32_t>(acc), p);
    }
}

namespace {

int8_t nearest(const int8_t* x, const UpsampleParams& p, int64_t n, int64_t oh, int64_t ow, int64_t c) {
  const int64_t ih = oh / p.factor_h, iw = ow / p.factor_w;
  return x[((n * p.in_h + ih) * p.in_w + iw) * p.channels + c];
}

int8_t bilinear(const int8_t* x, const UpsampleParams& p, int64_t n, int64_t oh, int64_t ow, int64_t c) {
  const BilinearTap th = bilinear_tap(oh, p.factor_h, p.in_h);
  const BilinearTap tw = bilinear_tap(ow, p.factor_w, p.in_w);
  const int64_t rows[2] = {th.i0, th.i1}, cols[2] = {tw.i0, tw.i1};
  const int64_t wh[2] = {th.w0, th.w1}, ww[2] = {tw.w0, tw.w1};
  int64_t acc = 0;
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b)
      acc += wh[a] * ww[b] * (x[((n * p.in_h + rows[a]) * p.in_w + cols[b]) * p.channels + c] - p.zero_point);
  // The rounded average of values in [min x - z, max x - z] stays in that range: y is an int8.
  return static_cast<int8_t>(p.zero_point + fp::rounded_average(acc, p.bilinear_divisor()));
}

}  // namespace

void upsample(const int8_t* x, int8_t* out, const UpsampleParams& p) {
  for (int64_t n = 0; n < p.batch; ++n)
    for (int64_t oh = 0; oh < p.out_h; ++oh)
      for (int64_t ow = 0; ow < p.out_w; ++ow)
        for (int64_t c = 0; c < p.channels; ++c)
          out[((n * p.out_h + oh) * p.out_w + ow) * p.channels + c] =
              p.mode == UpsampleMode::kNearest ? nearest(x, p, n, oh, ow, c) : bilinear(x, p, n, oh, ow, c);
}

void max_pool2d(const int8_t* x, int8_t* out, const MaxPool2dParams& p) {
  for (int64_t n = 0; n < p.batch; ++n)
    for (int64_t oh = 0; oh < p.out_h; ++oh)
      for (int64_t ow = 0; ow < p.out_w; ++ow)
        for (int64_t c = 0; c < p.channels; ++c) {
          int best = -128;  // every window holds at least one image pixel (pool_output_size)
          for (int64_t kh = 0; kh < p.kernel_h; ++kh)
            for (int64_t kw = 0; kw < p.kernel_w; ++kw) {
              const int64_t ih = oh * p.stride_h + kh - p.pad_top;
              const int64_t iw = ow * p.stride_w + kw - p.pad_left;
              if (ih < 0 || ih >= p.in_h || iw < 0 || iw >= p.in_w) continue;  // padding never wins
              const int v = x[((n * p.in_h + ih) * p.in_w + iw) * p.channels + c];
              best = v > best ? v : best;
            }
          out[((n * p.out_h + oh) * p.out_w + ow) * p.channels + c] = static_cast<int8_t>(best);
        }
}

}  // namespace ref
}  // namespace npuq
