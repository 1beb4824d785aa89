// AVX2 kernels (x86-64 with AVX2, FMA, BMI2): the generic loops compiled for AVX2, with the GEMM,
// depthwise, add and requantization replaced by intrinsics (the last three in kernels_256.inc, shared
// with the AVX-VNNI family).
//
// AVX2 has no VNNI and its byte multiply-add (vpmaddubsw) saturates, so the exact products go through
// vpmaddwd on int16 pairs (two multiply-accumulates per int32 lane). The requantization is the single
// rounding of fused_rounding() (kernels.h), taken from the high dwords of the 64-bit sums because AVX2
// has no 64-bit arithmetic shift (docs/arithmetic.md 3.6).
#include <cstring>

#include "kernels.h"
#include "target.h"

#if NPUQ_HAVE_X86_TARGETS
#include <immintrin.h>
#endif

namespace npuq {
namespace cpu {

#if NPUQ_HAVE_X86_TARGETS
NPUQ_TARGET_BEGIN("avx2,fma,bmi,bmi2,popcnt")
namespace avx2 {
#include "kernels_generic.inc"

// Two exact int16 products summed into each int32 lane: vpmaddwd, then the add.
static inline __m256i pair_mac(__m256i acc, __m256i pairs, __m256i weights) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, weights));
}

#include "kernels_256.inc"

// GEMM: the tile's panel is first widened to int16 (u = x + 128 zero-extended), so that a row's pair
// of activations reaches every 32-bit lane with one broadcast load and no shuffle; then MR rows x 16
// channels per register block, one vpmaddwd per row and vector per pair of k (two exact products
// summed into each int32 lane).
constexpr int kGemmRows = 6;  // 12 accumulators + 2 weight vectors + 1 broadcast of the 16 registers
static_assert(kPanelRows % kGemmRows == 0, "the panel splits into whole register blocks");

static void widen_panel(const uint8_t* panel, int64_t rows, int64_t k4, int16_t* wide) {
  const int64_t n = rows * k4;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(wide + i),
                        _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(panel + i))));
  for (; i < n; ++i) wide[i] = panel[i];
}

static inline int32_t load_pair(const int16_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

template <int MR>
static void gemm_block(const GemmTile& t, const int16_t* wide, int64_t row0, int64_t rows, int64_t n0,
                       const Requant8& q0, const Requant8& q1) {
  const GemmWeights& w = *t.weights;
  const ChannelConstants& cc = *t.constants;
  const int64_t kpairs = w.k4 / 2;
  const int16_t* b = w.pair_block(n0 / kChannelBlock);
  const int16_t* a = wide + row0 * w.k4;
  __m256i acc[MR][2];
  const __m256i bias0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cc.bias.data() + n0));
  const __m256i bias1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cc.bias.data() + n0 + 8));
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) acc[r][0] = bias0, acc[r][1] = bias1;
  for (int64_t p = 0; p < kpairs; ++p) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + p * 32));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + p * 32 + 16));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256i av = _mm256_set1_epi32(load_pair(a + r * w.k4 + 2 * p));
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(av, b0));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(av, b1));
    }
  }
  // A copy for the run-time-indexed epilogue keeps the accumulators above in registers.
  __m256i result[MR][2];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) result[r][0] = acc[r][0], result[r][1] = acc[r][1];
  const int64_t valid0 = t.n_end - n0, valid1 = valid0 - 8;
  const __m256i zp16 = _mm256_set1_epi16(static_cast<int16_t>(cc.zero_point));
  const __m128i lo8 = _mm_set1_epi8(static_cast<char>(cc.act_min)), hi8 = _mm_set1_epi8(static_cast<char>(cc.act_max));
  for (int r = 0; r < MR && r < rows; ++r) {
    int8_t* dst = t.out + (row0 + r) * t.out_stride + n0;
    if (cc.vector_ok) {
      store16_natural(dst, multiply8(result[r][0], q0), multiply8(result[r][1], q1), zp16, lo8, hi8, valid0);
    } else {
      store8_scalar(dst, result[r][0], cc, n0, valid0 < 8 ? valid0 : 8);
      if (valid1 > 0) store8_scalar(dst + 8, result[r][1], cc, n0 + 8, valid1 < 8 ? valid1 : 8);
    }
  }
}

static void pairs_gemm_tile(const GemmTile& t) {
  const int64_t k4 = t.weights->k4;
  widen_panel(t.panel, t.rows, k4, t.wide);
  for (int64_t n0 = t.n_begin; n0 < t.n_end; n0 += kChannelBlock) {
    const Requant8 q0 = load_requant8(*t.constants, n0), q1 = load_requant8(*t.constants, n0 + 8);
    for (int64_t r0 = 0; r0 < t.rows; r0 += kGemmRows) gemm_block<kGemmRows>(t, t.wide, r0, t.rows - r0, n0, q0, q1);
  }
}

}  // namespace avx2
NPUQ_TARGET_END

const KernelTable* avx2_kernels() {
  static const KernelTable table = {
      "avx2",       avx2::pairs_gemm_tile,      avx2::depthwise256_rows, avx2::requantize256_rows,
      avx2::add256, avx2::generic_avg_pool_rows};
  return &table;
}
#else
const KernelTable* avx2_kernels() { return nullptr; }
#endif

}  // namespace cpu
}  // namespace npuq
