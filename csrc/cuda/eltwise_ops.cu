// The table activation, elementwise multiply and channel concatenation on the GPU (docs/arithmetic.md 9,
// 10, 11). Each output is computed by one thread with the fp:: primitives of npuq/fixedpoint.h, as the
// scalar reference (csrc/reference/eltwise_ops.cc) does; concat's inputs go through the 256-entry table
// of their requantization (concat_table, built on the host with the same primitives), and inputs that
// are the identity are copied.
#include "npuq/eltwise_ops.h"

#include <cuda_runtime.h>

#include "runtime.h"

namespace npuq {
namespace cuda {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t work) {
  const int64_t b = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535LL * 16 ? 65535LL * 16 : b));
}

#define NPUQ_GRID_STRIDE(i, total) \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (total); i += int64_t{gridDim.x} * blockDim.x)

// A 256-byte table passed by value: it becomes a kernel parameter, copied to shared memory per block.
struct Table {
  int8_t v[kLutEntries];
};

Table make_table(const int8_t* host) {
  Table t;
  for (int i = 0; i < kLutEntries; ++i) t.v[i] = host[i];
  return t;
}

// y[row * out_stride + j] = table[x[row * in_stride + j] + 128] for j < width. A flat lut is one row.
// Four bytes per thread when every row is 4-byte aligned (the common case of whole tensors and
// channel counts that are multiples of 4), one byte otherwise.
__global__ void table_kernel(const int8_t* __restrict__ x, int8_t* __restrict__ out, int64_t rows, int64_t width,
                             int64_t in_stride, int64_t out_stride, Table t, bool words) {
  __shared__ uint8_t s[kLutEntries];
  for (int i = threadIdx.x; i < kLutEntries; i += blockDim.x) s[i] = static_cast<uint8_t>(t.v[i]);
  __syncthreads();
  if (words) {
    const int64_t per_row = width / 4;
    NPUQ_GRID_STRIDE(i, rows * per_row) {
      const int64_t r = i / per_row, w = i % per_row;
      const uint32_t v = reinterpret_cast<const uint32_t*>(x + r * in_stride)[w];
      uint32_t y = 0;
#pragma unroll
      for (int k = 0; k < 4; ++k) y |= uint32_t{s[((v >> (8 * k)) & 0xffu) ^ 0x80u]} << (8 * k);  // x + 128
      reinterpret_cast<uint32_t*>(out + r * out_stride)[w] = y;
    }
    return;
  }
  NPUQ_GRID_STRIDE(i, rows * width) {
    const int64_t r = i / width, j = i % width;
    out[r * out_stride + j] = static_cast<int8_t>(s[x[r * in_stride + j] + 128]);
  }
}

__global__ void mul_kernel(const int8_t* __restrict__ a, const int8_t* __restrict__ b, int8_t* __restrict__ out,
                           int64_t count, MulParams p) {
  const int64_t image = p.positions * p.channels;
  NPUQ_GRID_STRIDE(i, count) {
    const int64_t j = p.broadcast_b ? (i / image) * p.channels + i % p.channels : i;
    const int32_t acc = (a[i] - p.a_zero_point) * (b[j] - p.b_zero_point);  // |acc| <= 255 * 255
    out[i] = fp::requantize(acc, p.multiplier, p.exponent, p.rounding, p.out_zero_point, p.act_min, p.act_max);
  }
}

bool aligned4(const void* p, int64_t stride) { return reinterpret_cast<uintptr_t>(p) % 4 == 0 && stride % 4 == 0; }

void launch_table(const int8_t* x, int8_t* out, int64_t rows, int64_t width, int64_t in_stride, int64_t out_stride,
                  const Table& t, cudaStream_t stream) {
  const bool words = width % 4 == 0 && aligned4(x, in_stride) && aligned4(out, out_stride);
  const int64_t work = words ? rows * (width / 4) : rows * width;
  table_kernel<<<blocks_for(work), kThreads, 0, stream>>>(x, out, rows, width, in_stride, out_stride, t, words);
  check_launch("table_kernel");
}

}  // namespace

void lut(const int8_t* x, int8_t* out, int64_t count, const int8_t* table, int device, CUstream_st* stream) {
  if (count < 1) throw InvalidArgument("lut: x is empty");
  DeviceGuard guard(device);
  launch_table(x, out, 1, count, count, count, make_table(table), stream);
}

void mul(const int8_t* a, const int8_t* b, int8_t* out, const MulParams& p, int device, CUstream_st* stream) {
  validate(p);
  DeviceGuard guard(device);
  mul_kernel<<<blocks_for(p.count()), kThreads, 0, stream>>>(a, b, out, p.count(), p);
  check_launch("mul_kernel");
}

void concat(int8_t* out, const ConcatParams& p, int device, CUstream_st* stream) {
  validate(p);
  const int64_t out_c = p.out_channels();
  DeviceGuard guard(device);
  int64_t offset = 0;
  for (int i = 0; i < p.num_inputs; ++i) {
    const ConcatInput& in = p.inputs[i];
    if (p.is_identity(i)) {
      check(cudaMemcpy2DAsync(out + offset, out_c, in.data, in.channels, in.channels, p.rows, cudaMemcpyDeviceToDevice,
                              stream),
            "cudaMemcpy2DAsync (concat)");
    } else {
      int8_t table[kLutEntries];
      concat_table(p, i, table);
      launch_table(in.data, out + offset, p.rows, in.channels, in.channels, out_c, make_table(table), stream);
    }
    offset += in.channels;
  }
}

}  // namespace cuda
}  // namespace npuq
