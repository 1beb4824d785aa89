// Scalar reference kernels (see reference.h). Written for reading, not for speed: one output at a
// time, the formulas of docs/arithmetic.md in the order the document states them.
#include "reference.h"

namespace npuq {
namespace ref {

int64_t conv2d_accumulator(const int8_t* x, const int8_t* w, const int32_t* bias, const Conv2dParams& p, int64_t n,
                           int64_t oh, int64_t ow, int64_t oc) {
  const Conv2dShape& s = p.shape;
  const int64_t group = oc / s.out_c_per_group;
  const int64_t cin_g = s.in_c_per_group;
  int64_t acc = bias ? bias[oc] : 0;
  for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
    const int64_t ih = oh * s.stride_h + kh * s.dilation_h - s.pad_top;
    for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
      const int64_t iw = ow * s.stride_w + kw * s.dilation_w - s.pad_left;
      const bool inside = ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w;
      for (int64_t i = 0; i < cin_g; ++i) {
        // Padding holds the input zero point, i.e. real zero: it contributes nothing.
        const int64_t xv =
            inside ? x[((n * s.in_h + ih) * s.in_w + iw) * s.in_c + group * cin_g + i] : p.input_zero_point;
        const int64_t wv = w[((oc * s.kernel_h + kh) * s.kernel_w + kw) * cin_g + i];
        acc += (xv - p.input_zero_point) * wv;
      }
    }
  }
  return acc;
}

void conv2d_accumulators(const int8_t* x, const int8_t* w, const int32_t* bias, int32_t* acc, const Conv2dParams& p) {
  const Conv2dShape& s = p.shape;
  for (int64_t n = 0; n < s.batch; ++n)
    for (int64_t oh = 0; oh < s.out_h; ++oh)
      for (int64_t ow = 0; ow < s.out_w; ++ow)
        for (int64_t oc = 0; oc < s.out_c; ++oc) {
          const int64_t row = (n * s.out_h + oh) * s.out_w + ow;
          const int64_t exact = conv2d_accumulator(x, w, bias, p, n, oh, ow, oc);
          if (!fp::apply_overflow_policy(exact, p.overflow, &acc[row * s.out_c + oc]))
            throw AccumulatorOverflow(describe_overflow(p.op, row, oc, exact));
        }
}

void conv2d(const int8_t* x, const int8_t* w, const int32_t* bias, int8_t* out, const Conv2dParams& p) {
  const Conv2dShape& s = p.shape;
  const RequantParams& r = p.requant;
  for (int64_t n = 0; n < s.batch; ++n)
    for (int64_t oh = 0; oh < s.out_h; ++oh)
      for (int64_t ow = 0; ow < s.out_w; ++ow)
        for (int64_t oc = 0; oc < s.out_c; ++oc) {
          const int64_t row = (n * s.out_h + oh) * s.out_w + ow;
          const int64_t exact = conv2d_accumulator(x, w, bias, p, n, oh, ow, oc);
          int32_t acc = 0;
          if (!fp::apply_overflow_policy(exact, p.overflow, &acc))
            throw AccumulatorOverflow(describe_overflow(p.op, row, oc, exact));
          out[row * s.out_c + oc] = fp::requantize(acc, r.multiplier[oc], r.effective_exponent(oc), r.rounding,
                                                   r.zero_point, r.act_min, r.act_max);
        }
}

void requantize(const int32_t* acc, int64_t rows, int8_t* out, const RequantParams& r) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < r.channels; ++c) {
      const int64_t k = i * r.channels + c;
      out[k] = fp::requantize(acc[k], r.multiplier[c], r.effective_exponent(c), r.rounding, r.zero_point, r.act_min,
                              r.act_max);
    }
}

void add(const int8_t* a, const int8_t* b, int8_t* out, int64_t count, const AddParams& p) {
  const int64_t scale = int64_t{1} << p.left_shift;
  for (int64_t i = 0; i < count; ++i) {
    // |a - z_a| * 2^22 < 2^30: both products and the sum of the rescaled inputs fit int32.
    const int32_t sa = static_cast<int32_t>((int64_t{a[i]} - p.a_zero_point) * scale);
    const int32_t sb = static_cast<int32_t>((int64_t{b[i]} - p.b_zero_point) * scale);
    const int32_t ra = fp::multiply(sa, p.a_multiplier, p.a_exponent, p.rounding);
    const int32_t rb = fp::multiply(sb, p.b_multiplier, p.b_exponent, p.rounding);
    const int32_t sum = fp::saturate_int32(int64_t{ra} + rb);  // never saturates, see validate()
    out[i] = fp::requantize(sum, p.out_multiplier, p.out_exponent, p.rounding, p.out_zero_point, p.act_min, p.act_max);
  }
}

void avg_pool2d(const int8_t* x, int8_t* out, const Pool2dParams& p) {
  for (int64_t n = 0; n < p.batch; ++n)
    for (int64_t oh = 0; oh < p.out_h; ++oh)
      for (int64_t ow = 0; ow < p.out_w; ++ow)
        for (int64_t c = 0; c < p.channels; ++c) {
          int64_t sum = 0, count = 0;
          for (int64_t kh = 0; kh < p.kernel_h; ++kh)
            for (int64_t kw = 0; kw < p.kernel_w; ++kw) {
              const int64_t ih = oh * p.stride_h + kh - p.pad_top;
              const int64_t iw = ow * p.stride_w + kw - p.pad_left;
              if (ih >= 0 && ih < p.in_h && iw >= 0 && iw < p.in_w) {
                sum += x[((n * p.in_h + ih) * p.in_w + iw) * p.channels + c];
                ++count;
              } else if (p.count_include_pad) {
                sum += p.input_zero_point;
                ++count;
              }
            }
          int32_t avg = fp::rounded_average(sum, count);
          avg = avg < p.act_min ? p.act_min : (avg > p.act_max ? p.act_max : avg);
          out[((n * p.out_h + oh) * p.out_w + ow) * p.channels + c] = static_cast<int8_t>(avg);
        }
}

}  // namespace ref
}  // namespace npuq
