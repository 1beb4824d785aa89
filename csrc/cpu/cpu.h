// The fast CPU paths: instruction-set selection, threading, packed convolution plans.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels.h"
#include "npuq/ops.h"

namespace npuq {
namespace cpu {

// --- instruction sets (isa.cc) ---
enum class Isa : int { kPortable = 0, kAvx2 = 1, kAvx512Vnni = 2, kAvxVnni = 3 };
const char* isa_name(Isa isa);
Isa parse_isa(const std::string& name);  // "portable", "avx2", "avx_vnni", "avx512_vnni"; throws InvalidArgument
std::vector<Isa> supported_isas();       // in increasing order; the CPU and the build support them
Isa active_isa();
void set_isa(Isa isa);                   // throws InvalidArgument when unsupported
void reset_isa();                        // the best supported one
const KernelTable& kernels(Isa isa);

// --- threads (isa.cc) ---
// The most threads a call may ask for. OpenMP aborts the whole process (no exception) when it cannot
// create a thread, which a request for thousands provokes; no kernel here gains past a few dozen.
constexpr int kMaxThreads = 256;
int default_threads();
void set_default_threads(int n);         // 1 <= n <= kMaxThreads
int resolve_threads(int requested);      // 0 -> default; 1 <= requested <= kMaxThreads

// A convolution with its weights packed for the kernels, reusable across calls and inputs of any
// spatial size and batch. Holds copies of everything it needs.
class Conv2dPlan {
 public:
  // layer.shape.batch / in_h / in_w are ignored (set per call); layer.op must be a string literal.
  // weights: OHWI [C_out][KH][KW][C_in / groups]; bias: [C_out] or nullptr. Throws InvalidArgument.
  Conv2dPlan(const Conv2dParams& layer, const int8_t* weights, const int32_t* bias);

  // The shape of a call on an (batch, in_h, in_w, in_c) input; validates it.
  Conv2dShape shape_for(int64_t batch, int64_t in_h, int64_t in_w) const;
  // x: [batch, in_h, in_w, in_c] -> out: [batch, out_h, out_w, out_c]. Throws AccumulatorOverflow.
  void run(const int8_t* x, int64_t batch, int64_t in_h, int64_t in_w, int8_t* out, int threads) const;

  const Conv2dShape& layer() const { return layer_; }
  bool depthwise_path() const { return depthwise_; }

 private:
  void pack_gemm();
  void pack_depthwise();
  void run_gemm(const int8_t* x, const Conv2dShape& s, int8_t* out, int threads, const KernelTable& k) const;
  void run_depthwise(const int8_t* x, const Conv2dShape& s, int8_t* out, int threads, const KernelTable& k) const;
  void fix_unsafe_channels(const int8_t* x, const Conv2dShape& s, int8_t* out, int threads) const;

  Conv2dShape layer_;
  int32_t input_zero_point_;
  fp::Overflow overflow_;
  const char* op_name_;             // a string literal: "conv2d" or "fully_connected"
  std::vector<int8_t> weights_;     // OHWI copy, for the 64-bit path of unsafe channels
  std::vector<int32_t> bias_;       // [out_c]
  std::vector<int32_t> m0_, exponent_;
  std::vector<uint8_t> shift_;
  RequantParams requant_;           // points into the vectors above
  std::vector<int64_t> unsafe_;     // channels whose accumulator might leave int32
  bool depthwise_ = false;
  std::vector<GemmWeights> gemm_;          // one per group
  std::vector<ChannelConstants> gemm_cc_;  // one per group
  DepthwiseWeights dw_;
  ChannelConstants dw_cc_;
  ChannelConstants dw_lane_cc_;     // dw_cc_ in the lane order of the VNNI depthwise kernel
  ChannelConstants dw_lane16_cc_;   // dw_cc_ in the lane order of the AVX2 depthwise kernel
};

void requantize(const int32_t* acc, int64_t rows, int8_t* out, const RequantParams& r, int threads);
void add(const int8_t* a, const int8_t* b, int8_t* out, int64_t count, const AddParams& p, int threads);
void avg_pool2d(const int8_t* x, int8_t* out, const Pool2dParams& p, int threads);

}  // namespace cpu
}  // namespace npuq
