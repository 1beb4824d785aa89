// The table activation, elementwise multiply and channel concatenation (docs/arithmetic.md sections 9,
// 10 and 11), shared by the scalar reference (csrc/reference/eltwise_ops.cc), the CPU fast paths
// (csrc/cpu/eltwise_ops.cc) and the CUDA kernels (csrc/cuda/eltwise_ops.cu).
//
// Layouts: activations NHWC, every pointer to C-contiguous memory. A flat (N, K) tensor is an NHWC map
// with H = W = 1.
#pragma once

#include <cstdint>

#include "npuq/fixedpoint.h"
#include "npuq/ops.h"

struct CUstream_st;  // the CUDA runtime's stream (cudaStream_t is CUstream_st*)

namespace npuq {

// The lut table has one int8 entry per int8 input: y = table[x + 128].
constexpr int kLutEntries = 256;

// mul (section 10): a is [batch][positions][channels]; b is the same, or [batch][channels] when
// broadcast_b (the (N, 1, 1, C) squeeze-excitation scale, read at every position).
struct MulParams {
  int64_t batch = 0, positions = 0, channels = 0;  // positions = H * W (1 for (N, K))
  bool broadcast_b = false;
  int32_t a_zero_point = 0, b_zero_point = 0, out_zero_point = 0;
  int32_t multiplier = 0;  // M0: 0 or [2^30, 2^31 - 1]
  int32_t exponent = 0;    // e: [-31, 30]
  int32_t act_min = -128, act_max = 127;
  fp::Rounding rounding = fp::Rounding::kDouble;

  int64_t count() const { return batch * positions * channels; }
  int64_t b_count() const { return broadcast_b ? batch * channels : count(); }
};

// concat (section 11): input i is [rows][channels] and lands at channel offset C_0 + ... + C_{i-1} of
// the [rows][sum C_i] output (rows = N * H * W, or N for flat inputs).
constexpr int kMaxConcatInputs = 64;

struct ConcatInput {
  const int8_t* data = nullptr;
  int64_t channels = 0;
  int32_t zero_point = 0;
  int32_t multiplier = 0;  // M0_i: 0 or [2^30, 2^31 - 1]
  int32_t exponent = 0;    // e_i: [-31, 30]
};

struct ConcatParams {
  int64_t rows = 0;
  int num_inputs = 0;  // [2, kMaxConcatInputs]
  const ConcatInput* inputs = nullptr;
  int32_t out_zero_point = 0;
  fp::Rounding rounding = fp::Rounding::kDouble;

  int64_t out_channels() const {
    int64_t c = 0;
    for (int i = 0; i < num_inputs; ++i) c += inputs[i].channels;
    return c;
  }
  // (M0, e) = (2^30, 1) with the output's zero point: y == x bit for bit in both rounding modes.
  bool is_identity(int i) const {
    return inputs[i].multiplier == (int32_t{1} << 30) && inputs[i].exponent == 1 &&
           inputs[i].zero_point == out_zero_point;
  }
};

// Argument checks shared by every implementation: throw InvalidArgument naming the argument.
void validate(const MulParams& p);
void validate(const ConcatParams& p);  // also checks that no input pointer is null

// Input i of a concat depends on its byte only: its 256 outputs, table[x + 128] (section 11).
inline void concat_table(const ConcatParams& p, int i, int8_t* table) {
  const ConcatInput& in = p.inputs[i];
  for (int x = -128; x < 128; ++x)
    table[x + 128] =
        fp::requantize(x - in.zero_point, in.multiplier, in.exponent, p.rounding, p.out_zero_point, -128, 127);
}

namespace ref {
// Scalar reference kernels: one element at a time, the formulas of docs/arithmetic.md as written.
void lut(const int8_t* x, int8_t* out, int64_t count, const int8_t* table);
void mul(const int8_t* a, const int8_t* b, int8_t* out, const MulParams& p);
void concat(int8_t* out, const ConcatParams& p);
}  // namespace ref

namespace cpu {
// Fast paths (OpenMP threads: 0 means the default count). Bit-identical to ref::.
void lut(const int8_t* x, int8_t* out, int64_t count, const int8_t* table, int threads);
void mul(const int8_t* a, const int8_t* b, int8_t* out, const MulParams& p, int threads);
void concat(int8_t* out, const ConcatParams& p, int threads);
}  // namespace cpu

namespace cuda {
// CUDA kernels (csrc/cuda/eltwise_ops.cu), enqueued on `stream` of `device`. Every data pointer (x, a, b,
// out, the inputs' data) is device memory of `device`; `table` is host memory. Callers validate first
// (the bindings check the pointers). Bit-identical to ref::.
void lut(const int8_t* x, int8_t* out, int64_t count, const int8_t* table, int device, CUstream_st* stream);
void mul(const int8_t* a, const int8_t* b, int8_t* out, const MulParams& p, int device, CUstream_st* stream);
void concat(int8_t* out, const ConcatParams& p, int device, CUstream_st* stream);
}  // namespace cuda

}  // namespace npuq
