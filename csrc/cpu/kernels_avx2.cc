// AVX2 kernels (x86-64 with AVX2, FMA, BMI2): the generic loops compiled for AVX2, with the GEMM,
// depthwise, add and requantization replaced by intrinsics.
//
// AVX2 has no VNNI and its byte multiply-add (vpmaddubsw) saturates, so the exact products go through
// vpmaddwd on int16 pairs (two multiply-accumulates per int32 lane). The requantization is the single
// rounding of fused_rounding() (kernels.h); AVX2 has no 64-bit arithmetic shift, so the offset sum is
// biased by 2^63 to shift it logically: floor(x / 2^s) = ((x + 2^63) >> s) - 2^(63 - s).
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

// Requantization constants of 8 channels; 64-bit quantities split into even and odd channels, the
// lanes of the two 32 x 32 -> 64-bit products.
struct Requant8 {
  __m256i m0, m0_odd, pos_even, pos_odd, neg_even, neg_odd, shift_even, shift_odd, unbias_even, unbias_odd;
  __m256i lo, hi, zp;
};

static inline void split_even_odd(const int64_t* v, __m256i* even, __m256i* odd) {
  const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v));
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 4));
  *even = _mm256_permute4x64_epi64(_mm256_unpacklo_epi64(a, b), 0xD8);  // v0 v2 v4 v6
  *odd = _mm256_permute4x64_epi64(_mm256_unpackhi_epi64(a, b), 0xD8);   // v1 v3 v5 v7
}

// 8 consecutive channels' constants.
static inline Requant8 make_requant8(const int32_t* m0, const int64_t* round_pos, const int64_t* round_neg,
                                     const int64_t* shift, int32_t zero_point, int32_t act_min, int32_t act_max) {
  Requant8 q;
  q.m0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m0));
  q.m0_odd = _mm256_srli_epi64(q.m0, 32);
  split_even_odd(round_pos, &q.pos_even, &q.pos_odd);
  split_even_odd(round_neg, &q.neg_even, &q.neg_odd);
  split_even_odd(shift, &q.shift_even, &q.shift_odd);
  const __m256i one = _mm256_set1_epi64x(1), s63 = _mm256_set1_epi64x(63);
  q.unbias_even = _mm256_sllv_epi64(one, _mm256_sub_epi64(s63, q.shift_even));
  q.unbias_odd = _mm256_sllv_epi64(one, _mm256_sub_epi64(s63, q.shift_odd));
  q.lo = _mm256_set1_epi32(act_min - zero_point);
  q.hi = _mm256_set1_epi32(act_max - zero_point);
  q.zp = _mm256_set1_epi32(zero_point);
  return q;
}

static_assert(sizeof(Requant8) <= 512, "depthwise_scratch_bytes reserves 1 KiB per 16 channels");

// Channels c .. c + 7 of arrays padded to a multiple of 16.
static inline Requant8 load_requant8(const ChannelConstants& cc, int64_t c) {
  return make_requant8(cc.m0.data() + c, cc.round_pos.data() + c, cc.round_neg.data() + c, cc.shift.data() + c,
                       cc.zero_point, cc.act_min, cc.act_max);
}

static inline __m256i floor_shift(__m256i p, __m256i pos, __m256i neg, __m256i shift, __m256i unbias) {
  // The sign of p selects the offset (blendv reads the top bit of each 64-bit lane).
  const __m256i k =
      _mm256_castpd_si256(_mm256_blendv_pd(_mm256_castsi256_pd(pos), _mm256_castsi256_pd(neg), _mm256_castsi256_pd(p)));
  const __m256i biased = _mm256_xor_si256(_mm256_add_epi64(p, k), _mm256_set1_epi64x(INT64_MIN));
  return _mm256_sub_epi64(_mm256_srlv_epi64(biased, shift), unbias);
}

// clamp(r + z) of 8 channels as int32 (docs/arithmetic.md 3.3 and 3.5).
// The multiplier stage alone (no zero point, no clamp).
static inline __m256i multiply8(__m256i acc, const Requant8& q) {
  const __m256i p_even = _mm256_mul_epi32(acc, q.m0);
  const __m256i p_odd = _mm256_mul_epi32(_mm256_srli_epi64(acc, 32), q.m0_odd);
  const __m256i r_even = floor_shift(p_even, q.pos_even, q.neg_even, q.shift_even, q.unbias_even);
  const __m256i r_odd = floor_shift(p_odd, q.pos_odd, q.neg_odd, q.shift_odd, q.unbias_odd);
  return _mm256_blend_epi32(r_even, _mm256_slli_epi64(r_odd, 32), 0xAA);
}

static inline __m256i requant8(__m256i acc, const Requant8& q) {
  const __m256i r = multiply8(acc, q);
  return _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(r, q.lo), q.hi), q.zp);
}

// Stores `valid` (<= 8) int32 lanes already in [-128, 127] as bytes.
static inline void store8(int8_t* dst, __m256i v, int64_t valid) {
  const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i b = _mm_packs_epi16(w, w);
  if (valid >= 8) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), b);
  } else {
    alignas(16) int8_t tmp[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp), b);
    std::memcpy(dst, tmp, static_cast<size_t>(valid));
  }
}

static inline void store8_scalar(int8_t* dst, __m256i acc, const ChannelConstants& cc, int64_t c, int64_t valid) {
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
  for (int64_t j = 0; j < valid; ++j)
    dst[j] = fp::requantize(lanes[j], cc.m0[c + j], cc.ec[c + j], cc.rounding, cc.zero_point, cc.act_min, cc.act_max);
}

// GEMM: MR rows x 16 channels; per pair of k, vpmaddwd of the broadcast activation pair with the
// weight pairs of 16 channels.
template <int MR>
static void gemm_block(const GemmTile& t, int64_t row0, int64_t rows, int64_t n0, const Requant8& q0,
                       const Requant8& q1) {
  const GemmWeights& w = *t.weights;
  const ChannelConstants& cc = *t.constants;
  const int64_t kpairs = w.k4 / 2;
  const int16_t* b = w.pair_block(n0 / kChannelBlock);
  const uint8_t* a = t.panel + row0 * w.k4;
  // Bytes (a0, a1) to the zero-extended int16 pair in every 32-bit lane.
  const __m256i widen = _mm256_setr_epi8(0, -1, 1, -1, 0, -1, 1, -1, 0, -1, 1, -1, 0, -1, 1, -1, 0, -1, 1, -1, 0, -1, 1,
                                         -1, 0, -1, 1, -1, 0, -1, 1, -1);
  __m256i acc[MR][2];
  const __m256i bias0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cc.bias.data() + n0));
  const __m256i bias1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cc.bias.data() + n0 + 8));
  for (int r = 0; r < MR; ++r) acc[r][0] = bias0, acc[r][1] = bias1;
  for (int64_t p = 0; p < kpairs; ++p) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + p * 32));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + p * 32 + 16));
    for (int r = 0; r < MR; ++r) {
      int16_t two;
      std::memcpy(&two, a + r * w.k4 + 2 * p, 2);
      const __m256i av = _mm256_shuffle_epi8(_mm256_set1_epi16(two), widen);
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(av, b0));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(av, b1));
    }
  }
  // A copy for the run-time-indexed epilogue keeps the accumulators above in registers.
  __m256i result[MR][2];
  for (int r = 0; r < MR; ++r) result[r][0] = acc[r][0], result[r][1] = acc[r][1];
  const int64_t valid0 = t.n_end - n0, valid1 = valid0 - 8;
  for (int r = 0; r < MR && r < rows; ++r) {
    int8_t* dst = t.out + (row0 + r) * t.out_stride + n0;
    if (cc.vector_ok) {
      store8(dst, requant8(result[r][0], q0), valid0);
      if (valid1 > 0) store8(dst + 8, requant8(result[r][1], q1), valid1);
    } else {
      store8_scalar(dst, result[r][0], cc, n0, valid0 < 8 ? valid0 : 8);
      if (valid1 > 0) store8_scalar(dst + 8, result[r][1], cc, n0 + 8, valid1 < 8 ? valid1 : 8);
    }
  }
}

static void pairs_gemm_tile(const GemmTile& t) {
  for (int64_t n0 = t.n_begin; n0 < t.n_end; n0 += kChannelBlock) {
    const Requant8 q0 = load_requant8(*t.constants, n0), q1 = load_requant8(*t.constants, n0 + 8);
    for (int64_t r0 = 0; r0 < t.rows; r0 += 4) gemm_block<4>(t, r0, t.rows - r0, n0, q0, q1);
  }
}

// --- depthwise: the activations minus their zero point are stored once per input row as int16 pairs
// (x[iw], x[iw + dilation]) per channel, so that vpmaddwd does two taps of 8 channels at once; the pair
// rows live in a ring reused by consecutive output rows (the AVX-512 kernel's scheme on 16 channels).

static void build_pair_row16(const DepthwiseJob& job, int64_t ih, int16_t* row, const uint8_t* needed) {
  const Conv2dShape& s = *job.shape;
  const int64_t C = s.in_c, c16 = job.weights->c16;
  const int64_t pw = depthwise_padded_width(s);
  const __m256i zp = _mm256_set1_epi16(static_cast<int16_t>(job.input_zero_point));
  const int8_t* xrow = job.x + (job.image * s.in_h + ih) * s.in_w * C;
  for (int64_t c = 0; c < c16; c += 16) {
    const int64_t valid = C - c < 16 ? C - c : 16;
    // x - z of 16 channels of one column as int16; zero in the padding.
    auto column = [&](int64_t iw) {
      if (iw < 0 || iw >= s.in_w) return _mm256_setzero_si256();
      __m128i x16;
      if (valid == 16) {
        x16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(xrow + iw * C + c));
      } else {
        alignas(16) int8_t tmp[16] = {};
        std::memcpy(tmp, xrow + iw * C + c, static_cast<size_t>(valid));
        x16 = _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
      }
      return _mm256_sub_epi16(_mm256_cvtepi8_epi16(x16), zp);
    };
    auto store_pair = [&](int64_t iwp, __m256i q0, __m256i q1) {
      int16_t* dst = row + iwp * c16 * 2 + c * 2;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_unpacklo_epi16(q0, q1));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 16), _mm256_unpackhi_epi16(q0, q1));
    };
    if (s.stride_w == 1 && s.dilation_w == 1) {
      __m256i q0 = column(-s.pad_left);
      for (int64_t iwp = 0; iwp < pw; ++iwp) {
        const __m256i q1 = column(iwp - s.pad_left + 1);
        store_pair(iwp, q0, q1);
        q0 = q1;
      }
    } else {
      for (int64_t iwp = 0; iwp < pw; ++iwp)
        if (needed[iwp]) store_pair(iwp, column(iwp - s.pad_left), column(iwp - s.pad_left + s.dilation_w));
    }
  }
}

// Output stage of 16 channels in lane order (low and high halves): packing to int16 restores the
// natural order within each 128-bit lane; the saturating packs keep values on their side of the range.
static inline void store16_lanes(int8_t* dst, __m256i r_lo, __m256i r_hi, __m256i zp16, __m128i act_min8,
                                 __m128i act_max8, int64_t valid) {
  const __m256i w = _mm256_adds_epi16(_mm256_packs_epi32(r_lo, r_hi), zp16);
  const __m256i b = _mm256_permute4x64_epi64(_mm256_packs_epi16(w, w), 0x08);  // qwords 0 and 2
  const __m128i y = _mm_min_epi8(_mm_max_epi8(_mm256_castsi256_si128(b), act_min8), act_max8);
  if (valid >= 16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), y);
  } else {
    alignas(16) int8_t tmp[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp), y);
    std::memcpy(dst, tmp, static_cast<size_t>(valid));
  }
}

static inline void store16_lanes_scalar(int8_t* dst, __m256i acc_lo, __m256i acc_hi, const ChannelConstants& cc,
                                        int64_t lane0, int64_t valid) {
  alignas(32) int32_t lanes[16];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc_lo);
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes + 8), acc_hi);
  for (int64_t lane = 0; lane < 16; ++lane) {
    const int64_t c = depthwise_lane_channel16(lane);
    if (c >= valid) continue;
    const int64_t k = lane0 + lane;
    dst[c] = fp::requantize(lanes[lane], cc.m0[k], cc.ec[k], cc.rounding, cc.zero_point, cc.act_min, cc.act_max);
  }
}

static void avx2_depthwise_rows(const DepthwiseJob& job) {
  const Conv2dShape& s = *job.shape;
  const DepthwiseWeights& w = *job.weights;
  const ChannelConstants& cc = *job.lane16_constants;
  const int kh_n = static_cast<int>(s.kernel_h);
  const int pairs = static_cast<int>(w.pairs);
  const int64_t C = s.in_c, c16 = w.c16;
  PairRowRing ring(s, c16, pairs, job.scratch);
  Requant8* requant = static_cast<Requant8*>(ring.constants());
  for (int64_t c = 0; c < c16; c += 8) requant[c / 8] = load_requant8(cc, c);
  const auto build = [&](int64_t ih, int16_t* row) { build_pair_row16(job, ih, row, ring.needed()); };
  const int64_t col_step = s.stride_w * c16 * 2;
  const int64_t pair_step = 2 * s.dilation_w * c16 * 2;
  const __m128i lo8 = _mm_set1_epi8(static_cast<char>(cc.act_min));
  const __m128i hi8 = _mm_set1_epi8(static_cast<char>(cc.act_max));
  const __m256i zp16 = _mm256_set1_epi16(static_cast<int16_t>(cc.zero_point));

  for (int64_t oh = job.oh_begin; oh < job.oh_end; ++oh) {
    const int16_t* src[16];
    int kh_valid[16];
    const int nvalid = ring.rows_for(oh, build, src, kh_valid);
    int8_t* out_row = job.out + (job.image * s.out_h + oh) * s.out_w * C;
    for (int64_t c = 0; c < c16; c += 16) {
      const int64_t valid = C - c < 16 ? C - c : 16;
      const __m256i bias_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cc.bias.data() + c));
      const __m256i bias_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cc.bias.data() + c + 8));
      const Requant8 q_lo = requant[c / 8], q_hi = requant[c / 8 + 1];  // copies: see the AVX-512 kernel
      const int16_t* wblock = w.paired16.data() + (c / 16) * kh_n * pairs * 32;
      auto finish = [&](int64_t ow, __m256i acc_lo, __m256i acc_hi) {
        int8_t* dst = out_row + ow * C + c;
        if (cc.vector_ok) store16_lanes(dst, multiply8(acc_lo, q_lo), multiply8(acc_hi, q_hi), zp16, lo8, hi8, valid);
        else store16_lanes_scalar(dst, acc_lo, acc_hi, cc, c, valid);
      };
      int64_t ow = 0;
      constexpr int kU = 2;
      for (; ow + kU <= s.out_w; ow += kU) {
        __m256i lo[kU], hi[kU];
        for (int u = 0; u < kU; ++u) lo[u] = bias_lo, hi[u] = bias_hi;
        for (int i = 0; i < nvalid; ++i) {
          const int16_t* base = src[i] + ow * col_step + c * 2;
          const int16_t* wk = wblock + kh_valid[i] * pairs * 32;
          for (int j = 0; j < pairs; ++j) {
            const __m256i w_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wk + j * 32));
            const __m256i w_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wk + j * 32 + 16));
            for (int u = 0; u < kU; ++u) {
              const int16_t* p = base + u * col_step + j * pair_step;
              lo[u] = _mm256_add_epi32(
                  lo[u], _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), w_lo));
              hi[u] = _mm256_add_epi32(
                  hi[u], _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16)), w_hi));
            }
          }
        }
        for (int u = 0; u < kU; ++u) finish(ow + u, lo[u], hi[u]);
      }
      for (; ow < s.out_w; ++ow) {
        __m256i lo = bias_lo, hi = bias_hi;
        for (int i = 0; i < nvalid; ++i) {
          const int16_t* base = src[i] + ow * col_step + c * 2;
          const int16_t* wk = wblock + kh_valid[i] * pairs * 32;
          for (int j = 0; j < pairs; ++j) {
            const int16_t* p = base + j * pair_step;
            lo = _mm256_add_epi32(lo,
                                  _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
                                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wk + j * 32))));
            hi = _mm256_add_epi32(
                hi, _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16)),
                                      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wk + j * 32 + 16))));
          }
        }
        finish(ow, lo, hi);
      }
    }
  }
}

static void avx2_requantize_rows(const int32_t* acc, int64_t rows, int8_t* out, const RequantParams& r) {
  // Only whole-layer calls with every effective exponent in [-31, 0] are vectorized.
  const int64_t C = r.channels;
  for (int64_t c = 0; c < C; ++c) {
    const int ec = r.effective_exponent(c);
    if (ec > 0 || ec < -31) return generic_requantize_rows(acc, rows, out, r);
  }
  alignas(32) int32_t m0[8];
  alignas(32) int64_t pos[8], neg[8], shift[8];
  for (int64_t c = 0; c < C; c += 8) {
    const int64_t valid = C - c < 8 ? C - c : 8;
    for (int j = 0; j < 8; ++j) {
      m0[j] = j < valid ? r.multiplier[c + j] : 0;
      fused_rounding(j < valid ? r.effective_exponent(c + j) : 0, r.rounding, &pos[j], &neg[j], &shift[j]);
    }
    const Requant8 q = make_requant8(m0, pos, neg, shift, r.zero_point, r.act_min, r.act_max);
    for (int64_t i = 0; i < rows; ++i) {
      __m256i v;
      if (valid == 8) {
        v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + i * C + c));
      } else {
        alignas(32) int32_t tmp[8] = {};
        std::memcpy(tmp, acc + i * C + c, static_cast<size_t>(valid) * 4);
        v = _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp));
      }
      store8(out + i * C + c, requant8(v, q), valid);
    }
  }
}

// Per-layer constants of one multiplier broadcast to 8 lanes; requires e in [-31, 0].
static inline Requant8 broadcast_requant8(int32_t m0, int exponent, fp::Rounding rounding, int32_t zero_point,
                                          int32_t act_min, int32_t act_max) {
  alignas(32) int32_t m[8];
  alignas(32) int64_t pos[8], neg[8], shift[8];
  for (int j = 0; j < 8; ++j) {
    m[j] = m0;
    fused_rounding(exponent, rounding, &pos[j], &neg[j], &shift[j]);
  }
  return make_requant8(m, pos, neg, shift, zero_point, act_min, act_max);
}

// Elementwise add (docs/arithmetic.md 6), 8 elements at a time.
static void avx2_add(const int8_t* a, const int8_t* b, int8_t* out, int64_t count, const AddParams& p) {
  if (p.out_exponent > 0 || p.out_exponent < -31) return generic_add(a, b, out, count, p);
  const Requant8 qa = broadcast_requant8(p.a_multiplier, p.a_exponent, p.rounding, 0, -128, 127);
  const Requant8 qb = broadcast_requant8(p.b_multiplier, p.b_exponent, p.rounding, 0, -128, 127);
  const Requant8 qo =
      broadcast_requant8(p.out_multiplier, p.out_exponent, p.rounding, p.out_zero_point, p.act_min, p.act_max);
  const __m256i za = _mm256_set1_epi32(p.a_zero_point), zb = _mm256_set1_epi32(p.b_zero_point);
  const __m128i shift = _mm_cvtsi32_si128(p.left_shift);
  const int64_t whole = count / 8 * 8;
  for (int64_t i = 0; i < whole; i += 8) {
    const __m256i va = _mm256_sll_epi32(
        _mm256_sub_epi32(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a + i))), za), shift);
    const __m256i vb = _mm256_sll_epi32(
        _mm256_sub_epi32(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + i))), zb), shift);
    store8(out + i, requant8(_mm256_add_epi32(multiply8(va, qa), multiply8(vb, qb)), qo), 8);
  }
  if (whole < count) generic_add(a + whole, b + whole, out + whole, count - whole, p);
}

}  // namespace avx2
NPUQ_TARGET_END

const KernelTable* avx2_kernels() {
  static const KernelTable table = {
      "avx2",         avx2::pairs_gemm_tile,      avx2::avx2_depthwise_rows, avx2::avx2_requantize_rows,
      avx2::avx2_add, avx2::generic_avg_pool_rows};
  return &table;
}
#else
const KernelTable* avx2_kernels() { return nullptr; }
#endif

}  // namespace cpu
}  // namespace npuq
