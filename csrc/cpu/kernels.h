// Interface between the CPU orchestration (threads, packing, overflow fix-up: conv_plan.cc) and the
// per-instruction-set inner kernels (kernels_portable.cc, kernels_avx2.cc, kernels_avx_vnni.cc,
// kernels_avx512.cc).
//
// Every kernel computes a disjoint slice of the output, so results never depend on how the work is
// split between threads.
#pragma once

#include <cstdint>
#include <vector>

#include "npuq/fixedpoint.h"
#include "npuq/ops.h"

namespace npuq {
namespace cpu {

// A panel of im2col rows, converted to unsigned bytes u = x + 128 (x ^ 0x80) and padded to K4 bytes
// per row, is what the GEMM kernels read. The zero point enters through the folded bias:
//   acc = bias - (z_x + 128) * sum(w) + sum(u * w)          (computed modulo 2^32)
// which equals the exact accumulator whenever that fits int32 (checked per channel at packing time).
constexpr int64_t kPanelRows = 24;   // rows packed at once; a multiple of every kernel's row block
constexpr int64_t kChannelBlock = 16;  // output channels per packed weight block

// Packed weights of one group for the GEMM kernels: [N16 / 16][K4 / 4][16 channels][4 bytes].
struct GemmWeights {
  int64_t k = 0, k4 = 0, n = 0, n16 = 0;
  std::vector<int8_t> packed;
  // AVX2 (vpmaddwd): [N16 / 16][K4 / 2][16 channels][2] int16, consecutive k paired per channel.
  std::vector<int16_t> pairs;
  const int8_t* block(int64_t nb) const { return packed.data() + nb * k4 * kChannelBlock; }
  const int16_t* pair_block(int64_t nb) const { return pairs.data() + nb * k4 * kChannelBlock; }
};

// Per-channel requantization constants, padded with harmless values to a multiple of 16 channels.
struct ChannelConstants {
  std::vector<int32_t> bias;   // the bias the kernel starts from (folded for GEMM)
  std::vector<int32_t> m0;
  std::vector<int32_t> ec;     // effective exponent e - s_c
  // The multiplier stage as one rounding of the 64-bit product p = acc * M0 (see fused_rounding):
  // r = (p + (p < 0 ? round_neg : round_pos)) >> shift. Filled where ec lies in [-31, 0].
  std::vector<int64_t> round_pos, round_neg, shift;
  int32_t zero_point = 0, act_min = -128, act_max = 127;
  fp::Rounding rounding = fp::Rounding::kDouble;
  bool vector_ok = true;       // every ec lies in [-31, 0]: the vector requantization applies
};

// Both rounding modes of the multiplier stage as a single rounding of p = acc * M0, for ec in [-31, 0]
// and M0 >= 0 (docs/arithmetic.md section 3.5). With n = -ec:
//   single: floor((p + 2^(30+n)) / 2^(31+n))
//   double: RDBPOT(SRDHM) = floor((floor((p + 2^30) / 2^31) + 2^(n-1) - [p < 0]) / 2^n)
//         = floor((p + 2^30 + 2^(30+n) - [p < 0] * 2^31) / 2^(31+n))      for n >= 1
//         = floor((p + 2^30) / 2^31)                                        for n = 0
// by floor(floor(u / a) / b) = floor(u / (a b)); the sign of p is the sign of the SRDHM result, except
// where that result is 0, and then both offsets give 0. Every sum fits int64.
inline void fused_rounding(int ec, fp::Rounding rounding, int64_t* round_pos, int64_t* round_neg, int64_t* shift) {
  const int n = -ec;
  *shift = 31 + n;
  if (rounding == fp::Rounding::kSingle) {
    *round_pos = *round_neg = int64_t{1} << (30 + n);
  } else if (n == 0) {
    *round_pos = *round_neg = int64_t{1} << 30;
  } else {
    *round_pos = (int64_t{1} << 30) + (int64_t{1} << (30 + n));
    *round_neg = *round_pos - (int64_t{1} << 31);
  }
}

struct GemmTile {
  const uint8_t* panel;        // kPanelRows x k4 bytes
  int64_t rows;                // valid rows in the panel (<= kPanelRows)
  const GemmWeights* weights;
  const ChannelConstants* constants;  // indexed by channel within the group
  int64_t n_begin, n_end;      // channel range within the group; n_begin % 16 == 0
  int8_t* out;                 // output of panel row 0, channel 0 of the group
  int64_t out_stride;          // bytes between output rows
  int16_t* wide;               // kPanelRows x k4 int16 of the thread's scratch, for kernels that widen the panel
};

// Bytes of one thread's GEMM scratch: the panel (plus 16 bytes that a short-row copy may write past
// its last row) and, 64-byte aligned after it, room for the panel widened to int16.
inline int64_t gemm_panel_bytes(int64_t k4) { return (kPanelRows * k4 + 16 + 63) / 64 * 64; }
inline int64_t gemm_scratch_bytes(int64_t k4) { return gemm_panel_bytes(k4) + kPanelRows * k4 * 2; }

// Depthwise 2D conv with depth multiplier 1: channels are independent.
struct DepthwiseWeights {
  int64_t channels = 0, c16 = 0, kernel_h = 0, kernel_w = 0, pairs = 0;
  std::vector<int32_t> taps;   // [KH * KW][c16]: weights widened to int32 (generic kernels)
  // VNNI: [c32 / 32][KH][pairs][32 lanes][2] int16, taps (2j, 2j + 1) of one channel per 32-bit lane,
  // lanes in the order of depthwise_lane_channel().
  int64_t c32 = 0;
  std::vector<int16_t> paired;
  // AVX2: the same per 16 channels, [c16 / 16][KH][pairs][16 lanes][2], lanes in the order of
  // depthwise_lane_channel16().
  std::vector<int16_t> paired16;
};

// Channel (within its block of 32) held by 32-bit lane `lane` of the VNNI depthwise kernel. Unpacking
// int16 activations of 32 channels into tap pairs leaves channels 8k..8k+3 in lanes 4k..4k+3 of the low
// half and 8k+4..8k+7 in the high half; packing the results back to int16 restores the natural order.
inline int64_t depthwise_lane_channel(int64_t lane) {
  const int64_t half = lane / 16, within = lane % 16;
  return 8 * (within / 4) + 4 * half + within % 4;
}

// The same for the AVX2 kernel's blocks of 16 channels (two vectors of 8 lanes).
inline int64_t depthwise_lane_channel16(int64_t lane) {
  const int64_t half = lane / 8, within = lane % 8;
  return 8 * (within / 4) + 4 * half + within % 4;
}

struct DepthwiseJob {
  const int8_t* x;
  int8_t* out;
  const Conv2dShape* shape;
  int32_t input_zero_point;
  const DepthwiseWeights* weights;
  const ChannelConstants* constants;       // bias not folded; natural channel order, padded to c16
  const ChannelConstants* lane_constants;  // the same in lane order (depthwise_lane_channel), padded to c32
  const ChannelConstants* lane16_constants;  // lane order of depthwise_lane_channel16, padded to c16
  int64_t image, oh_begin, oh_end;
  void* scratch;               // depthwise_scratch_bytes(shape) bytes, 64-byte aligned, per thread
};

// Scratch of one depthwise job: a ring of (KH - 1) * dilation_h + 1 rows of paired taps
// [padded width][c32][2] int16, plus an int32 accumulator row or a byte per padded column and the
// requantization constants of each 16 channels (at most 1 KiB). Big enough for every kernel family.
inline int64_t depthwise_ring_rows(const Conv2dShape& s) { return (s.kernel_h - 1) * s.dilation_h + 1; }
inline int64_t depthwise_padded_width(const Conv2dShape& s) { return s.in_w + s.pad_left + s.pad_right; }
// The ring of int16 pair rows of one depthwise job, shared by the pair kernels of every instruction
// set: lays out the scratch (rows, then a byte per padded column, then 64-byte aligned room for the
// kernel's requantization constants), marks the columns that start a pair of taps of some output (with
// a stride > 1 the others are never read), and finds the rows that feed an output row, building the
// missing ones on demand. Needs kernel_h <= 16 and at most 64 ring rows (checked by the caller).
class PairRowRing {
 public:
  PairRowRing(const Conv2dShape& s, int64_t lanes, int64_t pairs, void* scratch)
      : s_(s),
        ring_((s.kernel_h - 1) * s.dilation_h + 1),
        row_elems_((s.in_w + s.pad_left + s.pad_right) * lanes * 2),
        rows_(static_cast<int16_t*>(scratch)),
        needed_(reinterpret_cast<uint8_t*>(rows_ + ring_ * row_elems_)) {
    const int64_t pw = s.in_w + s.pad_left + s.pad_right;
    for (int64_t iwp = 0; iwp < pw; ++iwp) needed_[iwp] = s.stride_w == 1;
    for (int64_t ow = 0; ow < s.out_w; ++ow)
      for (int64_t j = 0; j < pairs; ++j) needed_[ow * s.stride_w + 2 * j * s.dilation_w] = 1;
    const auto end = reinterpret_cast<uintptr_t>(needed_ + pw);
    constants_ = reinterpret_cast<void*>((end + 63) / 64 * 64);
    for (int64_t i = 0; i < ring_; ++i) tags_[i] = -1;
  }

  const uint8_t* needed() const { return needed_; }
  void* constants() const { return constants_; }

  // The rows of input rows inside the image that feed output row oh (padding rows contribute
  // nothing), with their kernel rows; build(ih, row) fills a row. Returns how many.
  template <typename Build>
  int rows_for(int64_t oh, Build&& build, const int16_t** src, int* kernel_row) {
    int n = 0;
    for (int64_t kh = 0; kh < s_.kernel_h; ++kh) {
      const int64_t ih = oh * s_.stride_h + kh * s_.dilation_h - s_.pad_top;
      if (ih < 0 || ih >= s_.in_h) continue;
      const int64_t slot = ih % ring_;
      int16_t* row = rows_ + slot * row_elems_;
      if (tags_[slot] != ih) {
        build(ih, row);
        tags_[slot] = ih;
      }
      src[n] = row;
      kernel_row[n] = static_cast<int>(kh);
      ++n;
    }
    return n;
  }

 private:
  const Conv2dShape& s_;
  int64_t ring_, row_elems_;
  int16_t* rows_;
  uint8_t* needed_;
  void* constants_ = nullptr;
  int64_t tags_[64];
};

inline int64_t depthwise_scratch_bytes(const Conv2dShape& s) {
  const int64_t c32 = (s.in_c + 31) / 32 * 32;
  return depthwise_ring_rows(s) * depthwise_padded_width(s) * c32 * 4 + c32 * 4 + depthwise_padded_width(s) +
         c32 / 16 * 1024 + 128;
}

struct KernelTable {
  const char* name;
  void (*gemm_tile)(const GemmTile&);
  void (*depthwise_rows)(const DepthwiseJob&);
  void (*requantize_rows)(const int32_t* acc, int64_t rows, int8_t* out, const RequantParams& r);
  void (*add)(const int8_t* a, const int8_t* b, int8_t* out, int64_t count, const AddParams& p);
  void (*avg_pool_rows)(const int8_t* x, int8_t* out, const Pool2dParams& p, int64_t row_begin,
                        int64_t row_end);  // rows of the output: (n, oh) pairs flattened
};

const KernelTable& portable_kernels();
const KernelTable* avx2_kernels();    // nullptr when not compiled in
const KernelTable* avx512_kernels();  // nullptr when not compiled in
// The 256-bit VNNI family in the VEX (AVX-VNNI) or the EVEX (AVX512-VNNI + VL) encoding.
const KernelTable* avx_vnni_kernels(bool vex);

}  // namespace cpu
}  // namespace npuq
