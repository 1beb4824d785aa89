// npuq's CUDA kernels, as seen from the host (docs/cuda.md). Pointers named x, out, a, b are device
// memory of `device`; everything else is host memory. Callers validate the params first
// (npuq/ops.h), exactly as for the CPU kernels, and check the device pointers (runtime.h).
//
// The arithmetic is that of csrc/include/npuq/fixedpoint.h, compiled for the device: every output
// equals the scalar reference's bit for bit (tests/ops/test_cuda_ops.py).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "npuq/ops.h"
#include "runtime.h"

namespace npuq {
namespace cuda {

// How a groups == 1 convolution computes its integer dot products.
enum class GemmEngine : int {
  kAuto = 0,   // kMma on compute capability >= 8.0, else kDp4a
  kMma = 1,    // int8 tensor cores: mma.sync m16n8k32 (s8 x s8 -> s32)
  kDp4a = 2,   // 4-way byte dot products on the CUDA cores
};
GemmEngine parse_engine(const std::string& name);  // "auto", "mma", "dp4a"
const char* engine_name(GemmEngine e);

// A convolution (or fully-connected layer) with its weights and requantization constants on one
// device, reusable across calls, batches and input sizes.
//
// Paths, chosen per layer (path()):
//   "gemm":      groups == 1 and K = KH*KW*C_in <= 131071: implicit GEMM (im2col on the fly, tiles in
//                shared memory), int8 x int8 -> int32 with no partial sum able to overflow; the bias and
//                zero-point terms are added modulo 2^32, which is exact whenever the accumulator fits.
//   "depthwise": one input channel per group (groups == C_in): a direct kernel, 4 channels per thread
//                where the layout allows.
//   "direct":    everything else (grouped convolutions, huge K): one exact 64-bit accumulator per
//                output, with dp4a over 4 input channels at a time where aligned.
// Channels whose accumulator could leave int32 (the bound of docs/arithmetic.md 5) get the exact 64-bit
// path under the "raise" and "saturate" policies; "raise" then synchronizes the stream to report.
class Conv2dPlan {
 public:
  // layer.shape.batch / in_h / in_w are ignored (set per call); layer.op must be a string literal.
  // weights: OHWI [C_out][KH][KW][C_in / groups] and bias [C_out] (or nullptr) in host memory.
  Conv2dPlan(const Conv2dParams& layer, const int8_t* weights, const int32_t* bias, int device, cudaStream_t stream);

  Conv2dShape shape_for(int64_t batch, int64_t in_h, int64_t in_w) const;
  // Enqueues the convolution on `stream`. Throws AccumulatorOverflow (after synchronizing) under the
  // "raise" policy, CudaError / DeviceOutOfMemory on runtime failures.
  void run(const int8_t* x, int64_t batch, int64_t in_h, int64_t in_w, int8_t* out, cudaStream_t stream,
           GemmEngine engine = GemmEngine::kAuto) const;

  const Conv2dShape& layer() const { return layer_; }
  const char* path() const { return path_; }
  int device() const { return device_; }
  int64_t unsafe_channels() const { return static_cast<int64_t>(unsafe_host_.size()); }

 private:
  Conv2dShape layer_;
  int32_t input_zero_point_;
  int32_t zero_point_, act_min_, act_max_;
  fp::Rounding rounding_;
  fp::Overflow overflow_;
  const char* op_name_;
  const char* path_;
  int device_;
  bool has_mma_;                    // compute capability >= 8.0
  int64_t k_ = 0, k_pad_ = 0, oc_pad_ = 0;
  DeviceBuffer w_ohwi_;             // [C_out][KH][KW][C_in / groups], as given
  DeviceBuffer w_gemm_;             // gemm: [oc_pad][k_pad], zero padded
  DeviceBuffer w_taps_;             // depthwise: [KH*KW][C_out]
  DeviceBuffer bias_;               // int32 [C_out] (zeros without bias)
  DeviceBuffer offset_;             // int32 [C_out]: bias - z_x * sum(w), modulo 2^32 (gemm)
  DeviceBuffer m0_, ec_;            // int32 [C_out]: M0 and e - s_c
  DeviceBuffer unsafe_;             // int32 list of channels that need the exact path
  std::vector<int32_t> unsafe_host_;
};

void add(const int8_t* a, const int8_t* b, int8_t* out, int64_t count, const AddParams& p, int device,
         cudaStream_t stream);
void avg_pool2d(const int8_t* x, int8_t* out, const Pool2dParams& p, int device, cudaStream_t stream);
// Max pooling (no rounding): padded positions never win; p.count_include_pad and zero points are unused.
void max_pool2d(const int8_t* x, int8_t* out, const Pool2dParams& p, int device, cudaStream_t stream);
// float32 -> int8 as docs/quantization.md 5: round(x / scale) (ties away from zero, one IEEE division),
// clipped to [-256, 256], plus the zero point, clipped to int8. Throws InvalidArgument on NaN (synchronizes).
void quantize_input(const float* x, int8_t* out, int64_t count, float scale, int32_t zero_point, int device,
                    cudaStream_t stream);

}  // namespace cuda
}  // namespace npuq
