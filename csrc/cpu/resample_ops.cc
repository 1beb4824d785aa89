// The resampling ops' CPU fast paths (docs/arithmetic.md 12-15). Bit-identical to the scalar reference
// (csrc/reference/resample_ops.cc): the same fp:: primitives on the same exact integers, only in an order
// that walks NHWC memory contiguously (the innermost loops run over channels) and with the per-axis work
// done once instead of per output.
//
// The row kernels are plain loops that the compiler vectorizes; they are compiled three times, for the
// baseline, AVX2 and AVX-512 (signed byte max, 64-bit shifts), and the active instruction set picks one.
// Work is split into whole output rows (or, for one image's mean, pixel ranges whose partial sums are
// added in a fixed order), so results never depend on the thread count.
#include "npuq/resample_ops.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/cpu.h"
#include "cpu/target.h"

#if defined(__GNUC__) || defined(__clang__)
#define NPUQ_ROW_INLINE inline __attribute__((always_inline))
#else
#define NPUQ_ROW_INLINE inline
#endif

namespace npuq {
namespace cpu {
namespace {

// Below this many bytes touched a call stays on one thread: waking a team costs more than it saves.
constexpr int64_t kParallelBytes = int64_t{1} << 17;
// Bilinear outputs cost a few nanoseconds each: a team pays off from this many.
constexpr int64_t kParallelBilinear = int64_t{1} << 14;

int threads_for(int threads, int64_t work, int64_t threshold) {
  const int t = resolve_threads(threads);  // validates the request even when the call stays on one thread
  return work < threshold ? 1 : t;
}

// --- the row kernels (always inlined into the per-ISA wrappers below) ---

// sums[c] = sum of x[px, c] over pixels [begin, end). Every partial sum is a sum over a subset of one
// image's pixels, so it is bounded like the whole (<= 128 * 2^23 in magnitude): int32 is exact.
NPUQ_ROW_INLINE void sum_pixels_impl(const int8_t* x, int64_t begin, int64_t end, int64_t channels, int32_t* sums) {
  std::fill(sums, sums + channels, 0);
  for (int64_t px = begin; px < end; ++px) {
    const int8_t* row = x + px * channels;
    for (int64_t c = 0; c < channels; ++c) sums[c] += row[c];
  }
}

// The bilinear output row `oh` of image `n`. `vert` (in_w * C) receives the vertical interpolation
// wh0 (x[i0] - z) + wh1 (x[i1] - z), |.| <= 255 * 2 f_h; each output then adds two of its columns with
// the horizontal weights. kDivisor != 0 fixes D at compile time (the common factors), which turns
// rounded_average's division into shifts or a multiplication the compiler vectorizes.
template <int32_t kDivisor>
NPUQ_ROW_INLINE void bilinear_row_impl(const int8_t* x, int8_t* out, const UpsampleParams& p, const BilinearTap* taps_h,
                                       const BilinearTap* taps_w, int64_t n, int64_t oh, int32_t* vert) {
  const int64_t c = p.channels;
  const int32_t z = p.zero_point;
  const int32_t divisor = kDivisor != 0 ? kDivisor : p.bilinear_divisor();
  const BilinearTap th = taps_h[oh];
  const int8_t* r0 = x + (n * p.in_h + th.i0) * p.in_w * c;
  const int8_t* r1 = x + (n * p.in_h + th.i1) * p.in_w * c;
  for (int64_t i = 0; i < p.in_w * c; ++i) vert[i] = th.w0 * (r0[i] - z) + th.w1 * (r1[i] - z);
  int8_t* dst = out + (n * p.out_h + oh) * p.out_w * c;
  for (int64_t ow = 0; ow < p.out_w; ++ow) {
    const BilinearTap tw = taps_w[ow];
    const int32_t* v0 = vert + tw.i0 * c;
    const int32_t* v1 = vert + tw.i1 * c;
    int8_t* y = dst + ow * c;
    for (int64_t k = 0; k < c; ++k) {
      const int32_t acc = tw.w0 * v0[k] + tw.w1 * v1[k];  // |acc| <= 255 * D < 2^23
      y[k] = static_cast<int8_t>(z + fp::rounded_average(acc, divisor));
    }
  }
}

// One output row of max pooling: each window clipped to the image (padding never wins), the maximum
// taken over whole channel vectors.
NPUQ_ROW_INLINE void max_pool_row_impl(const int8_t* x, int8_t* out, const MaxPool2dParams& p, int64_t n, int64_t oh) {
  const int64_t c = p.channels;
  const int64_t h0 = std::max<int64_t>(oh * p.stride_h - p.pad_top, 0);
  const int64_t h1 = std::min<int64_t>(oh * p.stride_h - p.pad_top + p.kernel_h, p.in_h);
  for (int64_t ow = 0; ow < p.out_w; ++ow) {
    const int64_t w0 = std::max<int64_t>(ow * p.stride_w - p.pad_left, 0);
    const int64_t w1 = std::min<int64_t>(ow * p.stride_w - p.pad_left + p.kernel_w, p.in_w);
    int8_t* y = out + ((n * p.out_h + oh) * p.out_w + ow) * c;
    for (int64_t k = 0; k < c; ++k) y[k] = -128;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) {
        const int8_t* v = x + ((n * p.in_h + ih) * p.in_w + iw) * c;
        for (int64_t k = 0; k < c; ++k) y[k] = y[k] > v[k] ? y[k] : v[k];
      }
  }
}

// The divisors D = 4 f_h f_w that get a bilinear row kernel of their own (index i + 1 of
// RowKernels::bilinear_row; index 0 takes D at run time): 2x1 / 1x2, 2x2, 2x4 / 4x2, 4x4, 8x8 (powers of
// two: the division becomes shifts, which vectorize).
constexpr int32_t kFixedDivisors[] = {8, 16, 32, 64, 256};
constexpr int kBilinearKernels = 1 + sizeof(kFixedDivisors) / sizeof(kFixedDivisors[0]);

using BilinearRow = void (*)(const int8_t* x, int8_t* out, const UpsampleParams& p, const BilinearTap* taps_h,
                             const BilinearTap* taps_w, int64_t n, int64_t oh, int32_t* vert);

// The row kernels of one instruction set.
struct RowKernels {
  void (*sum_pixels)(const int8_t* x, int64_t begin, int64_t end, int64_t channels, int32_t* sums);
  BilinearRow bilinear_row[kBilinearKernels];
  void (*max_pool_row)(const int8_t* x, int8_t* out, const MaxPool2dParams& p, int64_t n, int64_t oh);
};

// The same wrappers in each instruction-set region: the always-inline bodies are compiled for it.
#define NPUQ_RESAMPLE_ROW_KERNELS                                                                          \
  void sum_pixels(const int8_t* x, int64_t begin, int64_t end, int64_t channels, int32_t* sums) {          \
    sum_pixels_impl(x, begin, end, channels, sums);                                                        \
  }                                                                                                        \
  template <int32_t kDivisor>                                                                              \
  void bilinear_row(const int8_t* x, int8_t* out, const UpsampleParams& p, const BilinearTap* taps_h,      \
                    const BilinearTap* taps_w, int64_t n, int64_t oh, int32_t* vert) {                     \
    bilinear_row_impl<kDivisor>(x, out, p, taps_h, taps_w, n, oh, vert);                                   \
  }                                                                                                        \
  void max_pool_row(const int8_t* x, int8_t* out, const MaxPool2dParams& p, int64_t n, int64_t oh) {       \
    max_pool_row_impl(x, out, p, n, oh);                                                                   \
  }                                                                                                        \
  constexpr RowKernels kRowKernels{                                                                        \
      sum_pixels,                                                                                          \
      {bilinear_row<0>, bilinear_row<kFixedDivisors[0]>, bilinear_row<kFixedDivisors[1]>,                  \
       bilinear_row<kFixedDivisors[2]>, bilinear_row<kFixedDivisors[3]>, bilinear_row<kFixedDivisors[4]>}, \
      max_pool_row};

namespace portable {
NPUQ_RESAMPLE_ROW_KERNELS
}  // namespace portable

#if NPUQ_HAVE_X86_TARGETS
NPUQ_TARGET_BEGIN("avx2,fma,bmi,bmi2,popcnt")
namespace avx2 {
NPUQ_RESAMPLE_ROW_KERNELS
}  // namespace avx2
NPUQ_TARGET_END

NPUQ_TARGET_BEGIN("avx2,fma,bmi,bmi2,popcnt,avx512f,avx512bw,avx512vl,avx512dq,avx512cd")
namespace avx512 {
NPUQ_RESAMPLE_ROW_KERNELS
}  // namespace avx512
NPUQ_TARGET_END
#endif

#undef NPUQ_RESAMPLE_ROW_KERNELS

const RowKernels& row_kernels() {
#if NPUQ_HAVE_X86_TARGETS
  switch (active_isa()) {
    case Isa::kAvx512Vnni: return avx512::kRowKernels;
    case Isa::kAvx2: return avx2::kRowKernels;
    default: break;
  }
#endif
  return portable::kRowKernels;
}

// --- the ops ---

void mean_outputs(const int32_t* sums, int8_t* out, const MeanParams& p) {
  const int64_t zero_sum = p.count() * p.input_zero_point;  // |.| <= 2^30
  for (int64_t c = 0; c < p.channels; ++c)
    out[c] = mean_output(static_cast<int32_t>(int64_t{sums[c]} - zero_sum), p);  // |acc| < 2^31 (validate)
}

// One image per iteration: the batch is at least as large as the thread count.
void mean_by_image(const int8_t* x, int8_t* out, const MeanParams& p, int threads, const RowKernels& k) {
  const int64_t pixels = p.count(), channels = p.channels;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<int32_t> sums(channels);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < p.batch; ++n) {
      k.sum_pixels(x + n * pixels * channels, 0, pixels, channels, sums.data());
      mean_outputs(sums.data(), out + n * channels, p);
    }
  }
}

// Each image's pixels split into one part per thread, summed in parallel, then added up in a fixed order.
void mean_by_part(const int8_t* x, int8_t* out, const MeanParams& p, int threads, const RowKernels& k) {
  const int64_t pixels = p.count(), channels = p.channels;
  const int64_t parts = std::min<int64_t>(threads, pixels);
  std::vector<int32_t> partial(parts * channels), sums(channels);
  for (int64_t n = 0; n < p.batch; ++n) {
    const int8_t* image = x + n * pixels * channels;
#pragma omp parallel for num_threads(threads) schedule(static) if (parts > 1)
    for (int64_t i = 0; i < parts; ++i)
      k.sum_pixels(image, pixels * i / parts, pixels * (i + 1) / parts, channels, partial.data() + i * channels);
    std::copy(partial.begin(), partial.begin() + channels, sums.begin());
    for (int64_t i = 1; i < parts; ++i)
      for (int64_t c = 0; c < channels; ++c) sums[c] += partial[i * channels + c];  // prefixes are subset sums
    mean_outputs(sums.data(), out + n * channels, p);
  }
}

void upsample_nearest(const int8_t* x, int8_t* out, const UpsampleParams& p, int threads) {
  const int64_t c = p.channels, in_row = p.in_w * c, out_row = p.out_w * c;
  const int64_t rows = p.batch * p.in_h;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    // input row r fills output rows r * f_h .. r * f_h + f_h - 1 (n * out_h = n * in_h * f_h)
    const int8_t* src = x + r * in_row;
    int8_t* first = out + r * p.factor_h * out_row;
    for (int64_t iw = 0; iw < p.in_w; ++iw)
      for (int64_t f = 0; f < p.factor_w; ++f) std::memcpy(first + (iw * p.factor_w + f) * c, src + iw * c, c);
    for (int64_t f = 1; f < p.factor_h; ++f) std::memcpy(first + f * out_row, first, out_row);
  }
}

std::vector<BilinearTap> axis_taps(int64_t out_size, int64_t factor, int64_t in_size) {
  std::vector<BilinearTap> taps(out_size);
  for (int64_t o = 0; o < out_size; ++o) taps[o] = bilinear_tap(o, factor, in_size);
  return taps;
}

void upsample_bilinear(const int8_t* x, int8_t* out, const UpsampleParams& p, int threads, const RowKernels& k) {
  const std::vector<BilinearTap> taps_h = axis_taps(p.out_h, p.factor_h, p.in_h);
  const std::vector<BilinearTap> taps_w = axis_taps(p.out_w, p.factor_w, p.in_w);
  const int64_t rows = p.batch * p.out_h;
  BilinearRow row = k.bilinear_row[0];
  for (int i = 1; i < kBilinearKernels; ++i)
    if (kFixedDivisors[i - 1] == p.bilinear_divisor()) row = k.bilinear_row[i];
#pragma omp parallel num_threads(threads) if (threads > 1 && rows > 1)
  {
    std::vector<int32_t> vert(p.in_w * p.channels);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      row(x, out, p, taps_h.data(), taps_w.data(), r / p.out_h, r % p.out_h, vert.data());
  }
}

}  // namespace

void mean(const int8_t* x, int8_t* out, const MeanParams& p, int threads) {
  validate(p);
  const int t = threads_for(threads, p.batch * p.count() * p.channels, kParallelBytes);
  const RowKernels& k = row_kernels();
  if (p.batch >= t) mean_by_image(x, out, p, t, k);
  else mean_by_part(x, out, p, t, k);
}

void upsample(const int8_t* x, int8_t* out, const UpsampleParams& params, int threads) {
  UpsampleParams p = params;
  validate(p);
  const int64_t outputs = p.batch * p.out_h * p.out_w * p.channels;
  if (p.mode == UpsampleMode::kNearest) {
    upsample_nearest(x, out, p, threads_for(threads, outputs, kParallelBytes));
  } else {
    upsample_bilinear(x, out, p, threads_for(threads, outputs, kParallelBilinear), row_kernels());
  }
}

void max_pool2d(const int8_t* x, int8_t* out, const MaxPool2dParams& params, int threads) {
  MaxPool2dParams p = params;
  validate(p);
  const int64_t outputs = p.batch * p.out_h * p.out_w * p.channels;  // <= 2^40 (validate)
  const int64_t window = std::min<int64_t>(p.kernel_h * p.kernel_w, kParallelBytes);  // each factor <= 2^30
  const int t = threads_for(threads, outputs * window, kParallelBytes);
  const RowKernels& k = row_kernels();
  const int64_t rows = p.batch * p.out_h;
#pragma omp parallel for num_threads(t) schedule(static) if (t > 1 && rows > 1)
  for (int64_t r = 0; r < rows; ++r) k.max_pool_row(x, out, p, r / p.out_h, r % p.out_h);
}

void channel_shuffle(const int8_t* x, int8_t* out, int64_t rows, int64_t channels, int64_t groups, int threads) {
  if (rows < 1 || channels < 1) throw InvalidArgument("channel_shuffle: x is empty");
  if (groups < 1 || channels % groups != 0)
    throw InvalidArgument("channel_shuffle: groups (" + std::to_string(groups) + ") must divide the " +
                          std::to_string(channels) + " channels");
  const int64_t per_group = channels / groups;
  const int t = threads_for(threads, rows * channels, kParallelBytes);
#pragma omp parallel for num_threads(t) schedule(static) if (t > 1 && rows > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* src = x + r * channels;
    int8_t* dst = out + r * channels;
    for (int64_t i = 0; i < groups; ++i)
      for (int64_t j = 0; j < per_group; ++j) dst[j * groups + i] = src[i * per_group + j];
  }
}

}  // namespace cpu
}  // namespace npuq
