// The CUDA resampling kernels (resample_ops.cu) and their Python bindings (npuq._C.cuda_mean,
// cuda_upsample, cuda_pad, cuda_channel_shuffle, cuda_channel_slice), registered by
// csrc/bindings/module.cc in builds with CUDA.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

#include "cuda/runtime.h"
#include "npuq/resample_ops.h"

namespace npuq {
namespace cuda {

// x, out: device memory of `device`; the params validated (npuq/resample_ops.h) by the caller.
// x: [N, H, W, C] -> out: [N, 1, 1, C].
void mean(const int8_t* x, int8_t* out, const MeanParams& p, int device, cudaStream_t stream);
// x: [N, H, W, C] -> out: [N, H f_h, W f_w, C].
void upsample(const int8_t* x, int8_t* out, const UpsampleParams& p, int device, cudaStream_t stream);

// The data movements of section 12 on [rows, C] / [N, H, W, C] arrays (the bindings check the arguments).
struct PadShape {
  int64_t batch = 0, in_h = 0, in_w = 0, channels = 0;
  int64_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  int8_t value = 0;
};
void pad(const int8_t* x, int8_t* out, const PadShape& s, int device, cudaStream_t stream);
void channel_shuffle(const int8_t* x, int8_t* out, int64_t rows, int64_t channels, int64_t groups, int device,
                     cudaStream_t stream);
void channel_slice(const int8_t* x, int8_t* out, int64_t rows, int64_t channels, int64_t begin, int64_t end, int device,
                   cudaStream_t stream);

void register_resample_ops(pybind11::module_& m);

}  // namespace cuda
}  // namespace npuq
