// Element-wise and pooling kernels on the GPU: add, average and max pooling, input quantization.
// Each output is computed by one thread with the fp:: primitives of npuq/fixedpoint.h, in the order
// the scalar reference (csrc/reference/reference.cc) uses them.
#include <cmath>

#include "kernels.h"
#include "npuq/fixedpoint.h"

namespace npuq {
namespace cuda {
namespace {

unsigned blocks_for(int64_t work, int threads) {
  const int64_t b = (work + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535LL * 16 ? 65535LL * 16 : b));
}

#define NPUQ_GRID_STRIDE(i, total) \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (total); i += int64_t{gridDim.x} * blockDim.x)

__global__ void add_kernel(const int8_t* __restrict__ a, const int8_t* __restrict__ b, int8_t* __restrict__ out,
                           int64_t count, AddParams p) {
  const int64_t scale = int64_t{1} << p.left_shift;
  NPUQ_GRID_STRIDE(i, count) {
    const int32_t sa = static_cast<int32_t>((int64_t{a[i]} - p.a_zero_point) * scale);
    const int32_t sb = static_cast<int32_t>((int64_t{b[i]} - p.b_zero_point) * scale);
    const int32_t ra = fp::multiply(sa, p.a_multiplier, p.a_exponent, p.rounding);
    const int32_t rb = fp::multiply(sb, p.b_multiplier, p.b_exponent, p.rounding);
    const int32_t sum = fp::saturate_int32(int64_t{ra} + rb);
    out[i] = fp::requantize(sum, p.out_multiplier, p.out_exponent, p.rounding, p.out_zero_point, p.act_min, p.act_max);
  }
}

__global__ void avg_pool_kernel(const int8_t* __restrict__ x, int8_t* __restrict__ out, Pool2dParams p) {
  const int64_t total = p.batch * p.out_h * p.out_w * p.channels;
  NPUQ_GRID_STRIDE(i, total) {
    const int64_t c = i % p.channels, pix = i / p.channels;
    const int64_t ow = pix % p.out_w, oh = (pix / p.out_w) % p.out_h, n = pix / (p.out_w * p.out_h);
    int64_t sum = 0, count = 0;
    for (int64_t kh = 0; kh < p.kernel_h; ++kh) {
      const int64_t ih = oh * p.stride_h + kh - p.pad_top;
      for (int64_t kw = 0; kw < p.kernel_w; ++kw) {
        const int64_t iw = ow * p.stride_w + kw - p.pad_left;
        if (ih >= 0 && ih < p.in_h && iw >= 0 && iw < p.in_w) {
          sum += x[((n * p.in_h + ih) * p.in_w + iw) * p.channels + c];
          ++count;
        } else if (p.count_include_pad) {
          sum += p.input_zero_point;
          ++count;
        }
      }
    }
    int32_t avg = fp::rounded_average(sum, count);
    avg = avg < p.act_min ? p.act_min : (avg > p.act_max ? p.act_max : avg);
    out[i] = static_cast<int8_t>(avg);
  }
}

__global__ void max_pool_kernel(const int8_t* __restrict__ x, int8_t* __restrict__ out, Pool2dParams p) {
  const int64_t total = p.batch * p.out_h * p.out_w * p.channels;
  NPUQ_GRID_STRIDE(i, total) {
    const int64_t c = i % p.channels, pix = i / p.channels;
    const int64_t ow = pix % p.out_w, oh = (pix / p.out_w) % p.out_h, n = pix / (p.out_w * p.out_h);
    int best = -128;
    for (int64_t kh = 0; kh < p.kernel_h; ++kh) {
      const int64_t ih = oh * p.stride_h + kh - p.pad_top;
      if (ih < 0 || ih >= p.in_h) continue;
      for (int64_t kw = 0; kw < p.kernel_w; ++kw) {
        const int64_t iw = ow * p.stride_w + kw - p.pad_left;
        if (iw < 0 || iw >= p.in_w) continue;
        const int v = x[((n * p.in_h + ih) * p.in_w + iw) * p.channels + c];
        best = v > best ? v : best;
      }
    }
    out[i] = static_cast<int8_t>(best);
  }
}

__global__ void quantize_kernel(const float* __restrict__ x, int8_t* __restrict__ out, int64_t count, float scale,
                                int32_t zero_point, unsigned long long* nan_index) {
  NPUQ_GRID_STRIDE(i, count) {
    const float xv = x[i];
    if (isnan(xv)) {
      atomicMin(nan_index, static_cast<unsigned long long>(i));
      out[i] = 0;
      continue;
    }
    const float v = __fdiv_rn(xv, scale);  // the one IEEE division numpy does
    const float t = truncf(v);
    const float frac = v - t;              // NaN for +-inf: neither comparison holds, inf saturates below
    float r = t + (frac >= 0.5f ? 1.0f : 0.0f) - (frac <= -0.5f ? 1.0f : 0.0f);
    r = r < -256.0f ? -256.0f : (r > 256.0f ? 256.0f : r);
    int64_t q = static_cast<int64_t>(r) + zero_point;
    q = q < -128 ? -128 : (q > 127 ? 127 : q);
    out[i] = static_cast<int8_t>(q);
  }
}

}  // namespace

void add(const int8_t* a, const int8_t* b, int8_t* out, int64_t count, const AddParams& p, int device,
         cudaStream_t stream) {
  DeviceGuard guard(device);
  add_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(a, b, out, count, p);
  check_launch("add_kernel");
}

void avg_pool2d(const int8_t* x, int8_t* out, const Pool2dParams& p, int device, cudaStream_t stream) {
  DeviceGuard guard(device);
  avg_pool_kernel<<<blocks_for(p.batch * p.out_h * p.out_w * p.channels, 256), 256, 0, stream>>>(x, out, p);
  check_launch("avg_pool_kernel");
}

void max_pool2d(const int8_t* x, int8_t* out, const Pool2dParams& p, int device, cudaStream_t stream) {
  DeviceGuard guard(device);
  max_pool_kernel<<<blocks_for(p.batch * p.out_h * p.out_w * p.channels, 256), 256, 0, stream>>>(x, out, p);
  check_launch("max_pool_kernel");
}

void quantize_input(const float* x, int8_t* out, int64_t count, float scale, int32_t zero_point, int device,
                    cudaStream_t stream) {
  if (!(scale > 0.0f) || std::isinf(scale)) throw InvalidArgument("quantize_input: scale must be positive and finite");
  DeviceGuard guard(device);
  DeviceBuffer flag(sizeof(unsigned long long), device, stream);
  check(cudaMemsetAsync(flag.data(), 0xff, sizeof(unsigned long long), stream), "cudaMemsetAsync");
  quantize_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(x, out, count, scale, zero_point,
                                                              flag.as<unsigned long long>());
  check_launch("quantize_kernel");
  unsigned long long first = 0;
  check(cudaMemcpyAsync(&first, flag.data(), sizeof(first), cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  if (first != ~0ULL) throw InvalidArgument("x contains NaN (first at flat index " + std::to_string(first) + ")");
}

}  // namespace cuda
}  // namespace npuq
