// The resampling kernels on the GPU (docs/arithmetic.md 12, 13, 15): the mean over H and W, nearest and
// bilinear upsampling, and the data movements pad, channel_shuffle and channel_slice (device arrays of
// any kind, torch or not, stay on the device). The arithmetic kernels use the same fp:: primitives and the same
// per-axis taps (npuq/resample_ops.h) as the scalar reference, so every output is the reference's bit for bit.
#include "cuda/resample_ops_bindings.h"

namespace npuq {
namespace cuda {
namespace {

unsigned blocks_for(int64_t work, int threads) {
  const int64_t b = (work + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535LL * 16 ? 65535LL * 16 : b));
}

// A mean block sums 32 channels (adjacent threads read adjacent bytes) over 8 interleaved pixel lanes.
constexpr int kMeanChannels = 32;
constexpr int kMeanLanes = 8;

__global__ void mean_kernel(const int8_t* __restrict__ x, int8_t* __restrict__ out, MeanParams p) {
  __shared__ int32_t partial[kMeanLanes][kMeanChannels];
  const int64_t channel_blocks = (p.channels + kMeanChannels - 1) / kMeanChannels;
  const int64_t pixels = p.count();
  for (int64_t b = blockIdx.x; b < p.batch * channel_blocks; b += gridDim.x) {
    const int64_t n = b / channel_blocks;
    const int64_t c = (b % channel_blocks) * kMeanChannels + threadIdx.x;
    // every lane's sum, and every prefix of the lanes' sums, is a sum over a subset of the image's
    // pixels: bounded by 128 * 2^23, exact in int32
    int32_t sum = 0;
    if (c < p.channels)
      for (int64_t px = threadIdx.y; px < pixels; px += kMeanLanes) sum += x[(n * pixels + px) * p.channels + c];
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && c < p.channels) {
      int32_t total = 0;
      for (int lane = 0; lane < kMeanLanes; ++lane) total += partial[lane][threadIdx.x];
      const int64_t acc = int64_t{total} - pixels * p.input_zero_point;  // |acc| <= 255 * 2^23
      out[n * p.channels + c] = mean_output(static_cast<int32_t>(acc), p);
    }
    __syncthreads();  // partial is reused by the next block-row
  }
}

__global__ void upsample_kernel(const int8_t* __restrict__ x, int8_t* __restrict__ out, UpsampleParams p) {
  const int64_t total = p.batch * p.out_h * p.out_w * p.channels;
  const int32_t z = p.zero_point;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t c = i % p.channels, pix = i / p.channels;
    const int64_t ow = pix % p.out_w, oh = (pix / p.out_w) % p.out_h, n = pix / (p.out_w * p.out_h);
    const int8_t* image = x + n * p.in_h * p.in_w * p.channels;
    if (p.mode == UpsampleMode::kNearest) {
      out[i] = image[((oh / p.factor_h) * p.in_w + ow / p.factor_w) * p.channels + c];
      continue;
    }
    const BilinearTap th = bilinear_tap(oh, p.factor_h, p.in_h);
    const BilinearTap tw = bilinear_tap(ow, p.factor_w, p.in_w);
    const int8_t* r0 = image + int64_t{th.i0} * p.in_w * p.channels + c;
    const int8_t* r1 = image + int64_t{th.i1} * p.in_w * p.channels + c;
    const int64_t j0 = int64_t{tw.i0} * p.channels, j1 = int64_t{tw.i1} * p.channels;
    const int32_t top = tw.w0 * (r0[j0] - z) + tw.w1 * (r0[j1] - z);
    const int32_t bottom = tw.w0 * (r1[j0] - z) + tw.w1 * (r1[j1] - z);
    const int32_t acc = th.w0 * top + th.w1 * bottom;  // |acc| <= 255 * D < 2^23
    out[i] = static_cast<int8_t>(z + fp::rounded_average(acc, p.bilinear_divisor()));
  }
}

#define NPUQ_GRID_STRIDE(i, total) \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (total); i += int64_t{gridDim.x} * blockDim.x)

__global__ void pad_kernel(const int8_t* __restrict__ x, int8_t* __restrict__ out, PadShape s) {
  const int64_t out_h = s.in_h + s.pad_top + s.pad_bottom, out_w = s.in_w + s.pad_left + s.pad_right;
  NPUQ_GRID_STRIDE(i, s.batch * out_h * out_w * s.channels) {
    const int64_t c = i % s.channels, pix = i / s.channels;
    const int64_t ow = pix % out_w, oh = (pix / out_w) % out_h, n = pix / (out_w * out_h);
    const int64_t ih = oh - s.pad_top, iw = ow - s.pad_left;
    const bool inside = ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w;
    out[i] = inside ? x[((n * s.in_h + ih) * s.in_w + iw) * s.channels + c] : s.value;
  }
}

// Output channel j * g + i reads input channel i * k + j (k = C / g).
__global__ void shuffle_kernel(const int8_t* __restrict__ x, int8_t* __restrict__ out, int64_t rows, int64_t channels,
                               int64_t groups) {
  const int64_t per_group = channels / groups;
  NPUQ_GRID_STRIDE(i, rows * channels) {
    const int64_t co = i % channels, row = i / channels;
    out[i] = x[row * channels + (co % groups) * per_group + co / groups];
  }
}

__global__ void slice_kernel(const int8_t* __restrict__ x, int8_t* __restrict__ out, int64_t rows, int64_t channels,
                             int64_t begin, int64_t end) {
  const int64_t width = end - begin;
  NPUQ_GRID_STRIDE(i, rows * width) { out[i] = x[(i / width) * channels + begin + i % width]; }
}

}  // namespace

void pad(const int8_t* x, int8_t* out, const PadShape& s, int device, cudaStream_t stream) {
  DeviceGuard guard(device);
  const int64_t total =
      s.batch * (s.in_h + s.pad_top + s.pad_bottom) * (s.in_w + s.pad_left + s.pad_right) * s.channels;
  pad_kernel<<<blocks_for(total, 256), 256, 0, stream>>>(x, out, s);
  check_launch("pad_kernel");
}

void channel_shuffle(const int8_t* x, int8_t* out, int64_t rows, int64_t channels, int64_t groups, int device,
                     cudaStream_t stream) {
  DeviceGuard guard(device);
  shuffle_kernel<<<blocks_for(rows * channels, 256), 256, 0, stream>>>(x, out, rows, channels, groups);
  check_launch("shuffle_kernel");
}

void channel_slice(const int8_t* x, int8_t* out, int64_t rows, int64_t channels, int64_t begin, int64_t end, int device,
                   cudaStream_t stream) {
  DeviceGuard guard(device);
  slice_kernel<<<blocks_for(rows * (end - begin), 256), 256, 0, stream>>>(x, out, rows, channels, begin, end);
  check_launch("slice_kernel");
}

void mean(const int8_t* x, int8_t* out, const MeanParams& p, int device, cudaStream_t stream) {
  DeviceGuard guard(device);
  const int64_t blocks = p.batch * ((p.channels + kMeanChannels - 1) / kMeanChannels);
  const unsigned grid = static_cast<unsigned>(blocks < 65535LL * 16 ? blocks : 65535LL * 16);
  mean_kernel<<<grid, dim3(kMeanChannels, kMeanLanes), 0, stream>>>(x, out, p);
  check_launch("mean_kernel");
}

void upsample(const int8_t* x, int8_t* out, const UpsampleParams& p, int device, cudaStream_t stream) {
  DeviceGuard guard(device);
  upsample_kernel<<<blocks_for(p.batch * p.out_h * p.out_w * p.channels, 256), 256, 0, stream>>>(x, out, p);
  check_launch("upsample_kernel");
}

}  // namespace cuda
}  // namespace npuq
