// AVX-512 VNNI kernels (x86-64 with avx512f/bw/vl/dq and avx512_vnni).
//
// * GEMM (pointwise and im2col convolutions, fully-connected): vpdpbusd multiplies 4 unsigned
//   activation bytes by 4 signed weight bytes and adds them to an int32 lane, 64 MACs per instruction.
//   Register blocks of MR rows x NV vectors of 16 channels.
// * Depthwise: the activations minus their zero point are stored once per input row as int16 pairs
//   (x[iw], x[iw + dilation]) per channel, so that vpdpwssd does two taps of 16 channels at once
//   straight from memory; the pair rows live in a small ring reused by consecutive output rows.
// * Requantization of 16 channels at a time, lane for lane the formulas of fixedpoint.h.
// * Add: with AVX512-VBMI, two 256-entry tables read with vpermi2b and one requantization per element;
//   without it, three requantizations per element.
#include <cstring>

#include "kernels.h"
#include "target.h"

#if NPUQ_HAVE_X86_TARGETS
#include <immintrin.h>
#endif

namespace npuq {
namespace cpu {

#if NPUQ_HAVE_X86_TARGETS
NPUQ_TARGET_BEGIN("avx2,fma,bmi,bmi2,popcnt,avx512f,avx512bw,avx512vl,avx512dq,avx512cd,avx512vnni")
namespace avx512 {
#include "kernels_generic.inc"

// Requantizes 16 int32 lanes (docs/arithmetic.md section 3); requires every ec in [-31, 0].
// Per-channel constants of 16 lanes, loaded once per block of channels. The multiplier stage is the
// single rounding of fused_rounding() (kernels.h) on the even and odd 64-bit products.
struct Requant16 {
  __m512i m0, m0_odd;
  __m512i shift_even, shift_odd, pos_even, pos_odd, neg_even, neg_odd;  // 64-bit lanes
  __m512i lo, hi, zp;
};

static_assert(sizeof(Requant16) <= 1024, "depthwise_scratch_bytes reserves 1 KiB per 16 channels");

static inline Requant16 make_requant(const int32_t* m0, const int64_t* round_pos, const int64_t* round_neg,
                                     const int64_t* shift, int32_t zero_point, int32_t act_min, int32_t act_max) {
  const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  const __m512i odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
  auto split = [&](const int64_t* v, __m512i* e, __m512i* o) {
    const __m512i a = _mm512_loadu_si512(v), b = _mm512_loadu_si512(v + 8);
    *e = _mm512_permutex2var_epi64(a, even, b);
    *o = _mm512_permutex2var_epi64(a, odd, b);
  };
  Requant16 q;
  q.m0 = _mm512_loadu_si512(m0);
  q.m0_odd = _mm512_srli_epi64(q.m0, 32);
  split(shift, &q.shift_even, &q.shift_odd);
  split(round_pos, &q.pos_even, &q.pos_odd);
  split(round_neg, &q.neg_even, &q.neg_odd);
  // clamp(r + z, act_min, act_max) == clamp(r, act_min - z, act_max - z) + z, and the latter cannot overflow.
  q.lo = _mm512_set1_epi32(act_min - zero_point);
  q.hi = _mm512_set1_epi32(act_max - zero_point);
  q.zp = _mm512_set1_epi32(zero_point);
  return q;
}

static inline Requant16 load_requant(const ChannelConstants& cc, int64_t c) {
  return make_requant(cc.m0.data() + c, cc.round_pos.data() + c, cc.round_neg.data() + c, cc.shift.data() + c,
                      cc.zero_point, cc.act_min, cc.act_max);
}

// The multiplier stage only (before the zero point and the clamp): an int32 per lane.
static inline __m512i multiply16(__m512i acc, const Requant16& q) {
  const __m512i p_even = _mm512_mul_epi32(acc, q.m0);  // exact signed 32 x 32 -> 64
  const __m512i p_odd = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), q.m0_odd);
  const __m512i r_even = _mm512_srav_epi64(
      _mm512_add_epi64(p_even, _mm512_mask_blend_epi64(_mm512_movepi64_mask(p_even), q.pos_even, q.neg_even)),
      q.shift_even);
  const __m512i r_odd = _mm512_srav_epi64(
      _mm512_add_epi64(p_odd, _mm512_mask_blend_epi64(_mm512_movepi64_mask(p_odd), q.pos_odd, q.neg_odd)), q.shift_odd);
  // The quotients fit int32: interleave the low dwords of the even and odd 64-bit results.
  const __m512i low_dwords = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
  return _mm512_permutex2var_epi32(r_even, low_dwords, r_odd);
}

static inline __m512i requant16(__m512i acc, const Requant16& q) {
  const __m512i r = _mm512_min_epi32(_mm512_max_epi32(multiply16(acc, q), q.lo), q.hi);
  return _mm512_add_epi32(r, q.zp);
}

// Output stage of 64 consecutive channels with saturating packs: clamp(r + z, act_min, act_max) equals
// clamp(sat8(sat16(sat16(r) + z)), act_min, act_max) because every saturation keeps the side of the
// activation range a value lies on.
static inline void store64(int8_t* dst, __m512i r0, __m512i r1, __m512i r2, __m512i r3, __m512i zp16, __m512i act_min8,
                           __m512i act_max8) {
  const __m512i p01 = _mm512_adds_epi16(_mm512_packs_epi32(r0, r1), zp16);
  const __m512i p23 = _mm512_adds_epi16(_mm512_packs_epi32(r2, r3), zp16);
  // packs interleave 128-bit lanes: dword 4k + m holds channels 4k..4k+3 of vector m.
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  __m512i b = _mm512_permutexvar_epi32(order, _mm512_packs_epi16(p01, p23));
  b = _mm512_min_epi8(_mm512_max_epi8(b, act_min8), act_max8);
  _mm512_storeu_si512(dst, b);
}

static inline void store16(int8_t* dst, __m512i v, __mmask16 mask) {
  _mm_mask_storeu_epi8(dst, mask, _mm512_cvtepi32_epi8(v));
}

static inline __mmask16 tail_mask(int64_t valid) {
  return valid >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << valid) - 1u);
}

// Scalar requantization of a vector, for layers with an effective exponent outside [-31, 0].
static inline void requant16_scalar(__m512i acc, const ChannelConstants& cc, int64_t c, int8_t* dst, int64_t valid) {
  alignas(64) int32_t lanes[16];
  _mm512_store_si512(lanes, acc);
  for (int64_t j = 0; j < valid; ++j)
    dst[j] = fp::requantize(lanes[j], cc.m0[c + j], cc.ec[c + j], cc.rounding, cc.zero_point, cc.act_min, cc.act_max);
}

static inline int32_t load4(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// MR rows x NV * 16 channels.
template <int MR, int NV>
static void gemm_block(const GemmTile& t, int64_t row0, int64_t rows, int64_t n0) {
  const GemmWeights& w = *t.weights;
  const ChannelConstants& cc = *t.constants;
  const int64_t groups4 = w.k4 / 4;
  const int64_t block_stride = w.k4 * kChannelBlock;
  const int8_t* b = w.block(n0 / kChannelBlock);
  const uint8_t* a = t.panel + row0 * w.k4;

  __m512i acc[MR][NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const __m512i bias = _mm512_loadu_si512(cc.bias.data() + n0 + 16 * v);
#pragma GCC unroll 24
    for (int r = 0; r < MR; ++r) acc[r][v] = bias;
  }
  for (int64_t g = 0; g < groups4; ++g) {
    __m512i bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(b + v * block_stride + g * 64);
#pragma GCC unroll 24
    for (int r = 0; r < MR; ++r) {
      const __m512i av = _mm512_set1_epi32(load4(a + r * w.k4 + 4 * g));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], av, bv[v]);
    }
  }
  // The epilogue indexes rows at run time; handing it a copy made once keeps the accumulators of the
  // loop above in registers (otherwise GCC stores them to memory on every step).
  __m512i result[MR][NV];
#pragma GCC unroll 24
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_store_si512(&result[r][v], acc[r][v]);
  if (NV == 4 && cc.vector_ok && t.n_end - n0 >= 64) {
    Requant16 q[4];
    for (int v = 0; v < 4; ++v) q[v] = load_requant(cc, n0 + 16 * v);
    const __m512i zp16 = _mm512_set1_epi16(static_cast<int16_t>(cc.zero_point));
    const __m512i lo8 = _mm512_set1_epi8(static_cast<char>(cc.act_min));
    const __m512i hi8 = _mm512_set1_epi8(static_cast<char>(cc.act_max));
    for (int r = 0; r < MR && r < rows; ++r)
      store64(t.out + (row0 + r) * t.out_stride + n0, multiply16(result[r][0], q[0]),
              multiply16(result[r][NV > 1 ? 1 : 0], q[1]), multiply16(result[r][NV > 2 ? 2 : 0], q[2]),
              multiply16(result[r][NV > 3 ? 3 : 0], q[3]), zp16, lo8, hi8);
    return;
  }
  for (int v = 0; v < NV; ++v) {
    const int64_t c = n0 + 16 * v;
    const int64_t valid = t.n_end - c;
    if (valid <= 0) break;
    const __mmask16 mask = tail_mask(valid);
    if (cc.vector_ok) {
      const Requant16 q = load_requant(cc, c);
      for (int r = 0; r < MR && r < rows; ++r)
        store16(t.out + (row0 + r) * t.out_stride + c, requant16(result[r][v], q), mask);
    } else {
      for (int r = 0; r < MR && r < rows; ++r)
        requant16_scalar(result[r][v], cc, c, t.out + (row0 + r) * t.out_stride + c, valid < 16 ? valid : 16);
    }
  }
}

template <int MR, int NV>
static void gemm_rows(const GemmTile& t, int64_t n0) {
  for (int64_t r0 = 0; r0 < t.rows; r0 += MR) gemm_block<MR, NV>(t, r0, t.rows - r0, n0);
}

static void vnni_gemm_tile(const GemmTile& t) {
  // Fewer channel vectors leave registers for more rows: enough independent accumulators to hide the
  // latency of vpdpbusd in every case.
  int64_t n0 = t.n_begin;
  while (n0 < t.n_end) {
    const int64_t vectors = (t.n_end - n0 + 15) / 16;
    if (vectors >= 4) {
      gemm_rows<6, 4>(t, n0);
      n0 += 64;
    } else if (vectors == 3) {
      gemm_rows<8, 3>(t, n0);
      n0 += 48;
    } else if (vectors == 2) {
      gemm_rows<12, 2>(t, n0);
      n0 += 32;
    } else {
      gemm_rows<24, 1>(t, n0);
      n0 += 16;
    }
  }
}

// --- depthwise ---------------------------------------------------------------------------------

// Fills one ring row: for every padded column that starts a tap pair, the pairs
// (x[iw] - z, x[iw + dw] - z) as int16 in lane order; zero where a member lies in the padding.
static void build_pair_row(const DepthwiseJob& job, int64_t ih, int16_t* row, const uint8_t* needed) {
  const Conv2dShape& s = *job.shape;
  const int64_t C = s.in_c, c32 = job.weights->c32;
  const int64_t pw = depthwise_padded_width(s);
  const __m512i zp = _mm512_set1_epi16(static_cast<int16_t>(job.input_zero_point));
  const int8_t* xrow = job.x + (job.image * s.in_h + ih) * s.in_w * C;
  for (int64_t c = 0; c < c32; c += 32) {
    const __mmask32 mask = C - c >= 32 ? ~__mmask32(0) : (__mmask32(1) << (C - c)) - 1;
    // x - z of 32 channels of one column as int16; zero in the padding.
    auto column = [&](int64_t iw) {
      if (iw < 0 || iw >= s.in_w) return _mm512_setzero_si512();
      return _mm512_sub_epi16(_mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, xrow + iw * C + c)), zp);
    };
    auto store_pair = [&](int64_t iwp, __m512i q0, __m512i q1) {
      int16_t* dst = row + iwp * c32 * 2 + c * 2;
      _mm512_storeu_si512(dst, _mm512_unpacklo_epi16(q0, q1));
      _mm512_storeu_si512(dst + 32, _mm512_unpackhi_epi16(q0, q1));
    };
    if (s.stride_w == 1 && s.dilation_w == 1) {
      // Every column is needed and its second member is the next column's first: load each once.
      __m512i q0 = column(-s.pad_left);
      for (int64_t iwp = 0; iwp < pw; ++iwp) {
        const __m512i q1 = column(iwp - s.pad_left + 1);
        store_pair(iwp, q0, q1);
        q0 = q1;
      }
    } else {
      for (int64_t iwp = 0; iwp < pw; ++iwp)
        if (needed[iwp]) store_pair(iwp, column(iwp - s.pad_left), column(iwp - s.pad_left + s.dilation_w));
    }
  }
}

// Output stage of 32 channels whose multiplier results are in lane order (low and high halves):
// packing to int16 restores the natural channel order (see depthwise_lane_channel). The saturating
// packs keep every value on its side of the activation range, so the clamp afterwards is exact.
static inline void store32(int8_t* dst, __m512i r_lo, __m512i r_hi, __m512i zp16, __m256i act_min8, __m256i act_max8,
                           __mmask32 mask) {
  const __m512i w = _mm512_adds_epi16(_mm512_packs_epi32(r_lo, r_hi), zp16);
  const __m512i b = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), _mm512_packs_epi16(w, w));
  const __m256i y = _mm256_min_epi8(_mm256_max_epi8(_mm512_castsi512_si256(b), act_min8), act_max8);
  _mm256_mask_storeu_epi8(dst, mask, y);
}

// Scalar output stage for a block whose effective exponents leave [-31, 0].
static inline void store32_scalar(int8_t* dst, __m512i acc_lo, __m512i acc_hi, const ChannelConstants& lane_cc,
                                  int64_t lane0, int64_t valid) {
  alignas(64) int32_t lanes[32];
  _mm512_store_si512(lanes, acc_lo);
  _mm512_store_si512(lanes + 16, acc_hi);
  for (int64_t lane = 0; lane < 32; ++lane) {
    const int64_t c = depthwise_lane_channel(lane);
    if (c >= valid) continue;
    const int64_t k = lane0 + lane;
    dst[c] = fp::requantize(lanes[lane], lane_cc.m0[k], lane_cc.ec[k], lane_cc.rounding, lane_cc.zero_point,
                            lane_cc.act_min, lane_cc.act_max);
  }
}

template <int KH, int PAIRS>
static void depthwise_rows_impl(const DepthwiseJob& job) {
  const Conv2dShape& s = *job.shape;
  const DepthwiseWeights& w = *job.weights;
  const ChannelConstants& cc = *job.lane_constants;
  const int kh_n = KH ? KH : static_cast<int>(s.kernel_h);
  const int pairs = PAIRS ? PAIRS : static_cast<int>(w.pairs);
  const int64_t C = s.in_c, c32 = w.c32;
  PairRowRing ring(s, c32, pairs, job.scratch);
  // Requantization constants of every block of 16 lanes, derived once per job.
  Requant16* requant = static_cast<Requant16*>(ring.constants());
  for (int64_t c = 0; c < c32; c += 16) requant[c / 16] = load_requant(cc, c);
  const auto build = [&](int64_t ih, int16_t* row) { build_pair_row(job, ih, row, ring.needed()); };
  const int64_t col_step = s.stride_w * c32 * 2;  // int16 elements between consecutive outputs
  const int64_t pair_step = 2 * s.dilation_w * c32 * 2;
  const __m512i zp16 = _mm512_set1_epi16(static_cast<int16_t>(cc.zero_point));
  const __m256i lo8 = _mm256_set1_epi8(static_cast<char>(cc.act_min));
  const __m256i hi8 = _mm256_set1_epi8(static_cast<char>(cc.act_max));

  for (int64_t oh = job.oh_begin; oh < job.oh_end; ++oh) {
    const int16_t* src[16];
    int kh_valid[16];
    const int nvalid = ring.rows_for(oh, build, src, kh_valid);
    int8_t* out_row = job.out + (job.image * s.out_h + oh) * s.out_w * C;
    for (int64_t c = 0; c < c32; c += 32) {
      const int64_t valid = C - c < 32 ? C - c : 32;
      const __mmask32 mask = valid == 32 ? ~__mmask32(0) : (__mmask32(1) << valid) - 1;
      const __m512i bias_lo = _mm512_loadu_si512(cc.bias.data() + c);
      const __m512i bias_hi = _mm512_loadu_si512(cc.bias.data() + c + 16);
      // Copies: through references the compiler reloads them after every output store (may alias).
      const Requant16 q_lo = requant[c / 16];
      const Requant16 q_hi = requant[c / 16 + 1];
      // Weights of this block: [kh][pair][low 16 lanes, high 16 lanes] of (w0, w1) int16 pairs.
      const int16_t* wblock = w.paired.data() + (c / 32) * kh_n * pairs * 64;
      auto finish = [&](int64_t ow, __m512i acc_lo, __m512i acc_hi) {
        int8_t* dst = out_row + ow * C + c;
        if (cc.vector_ok) store32(dst, multiply16(acc_lo, q_lo), multiply16(acc_hi, q_hi), zp16, lo8, hi8, mask);
        else store32_scalar(dst, acc_lo, acc_hi, cc, c, valid);
      };
      int64_t ow = 0;
      constexpr int kU = 4;
      for (; ow + kU <= s.out_w; ow += kU) {
        __m512i lo[kU], hi[kU];
        for (int u = 0; u < kU; ++u) lo[u] = bias_lo, hi[u] = bias_hi;
        for (int i = 0; i < nvalid; ++i) {
          const int16_t* base = src[i] + ow * col_step + c * 2;
          const int16_t* wk = wblock + kh_valid[i] * pairs * 64;
          for (int j = 0; j < pairs; ++j) {
            const __m512i w_lo = _mm512_loadu_si512(wk + j * 64), w_hi = _mm512_loadu_si512(wk + j * 64 + 32);
            for (int u = 0; u < kU; ++u) {
              const int16_t* p = base + u * col_step + j * pair_step;
              lo[u] = _mm512_dpwssd_epi32(lo[u], _mm512_loadu_si512(p), w_lo);
              hi[u] = _mm512_dpwssd_epi32(hi[u], _mm512_loadu_si512(p + 32), w_hi);
            }
          }
        }
        for (int u = 0; u < kU; ++u) finish(ow + u, lo[u], hi[u]);
      }
      for (; ow < s.out_w; ++ow) {
        __m512i lo = bias_lo, hi = bias_hi;
        for (int i = 0; i < nvalid; ++i) {
          const int16_t* base = src[i] + ow * col_step + c * 2;
          const int16_t* wk = wblock + kh_valid[i] * pairs * 64;
          for (int j = 0; j < pairs; ++j) {
            lo = _mm512_dpwssd_epi32(lo, _mm512_loadu_si512(base + j * pair_step), _mm512_loadu_si512(wk + j * 64));
            hi = _mm512_dpwssd_epi32(hi, _mm512_loadu_si512(base + j * pair_step + 32),
                                     _mm512_loadu_si512(wk + j * 64 + 32));
          }
        }
        finish(ow, lo, hi);
      }
    }
  }
}

static void vnni_depthwise_rows(const DepthwiseJob& job) {
  const Conv2dShape& s = *job.shape;
  if (s.kernel_h == 3 && s.kernel_w == 3) return depthwise_rows_impl<3, 2>(job);
  if (s.kernel_h == 5 && s.kernel_w == 5) return depthwise_rows_impl<5, 3>(job);
  return depthwise_rows_impl<0, 0>(job);
}

static void vnni_requantize_rows(const int32_t* acc, int64_t rows, int8_t* out, const RequantParams& r) {
  const int64_t C = r.channels;
  bool vector_ok = C >= 16;
  for (int64_t c = 0; c < C; ++c) {
    const int ec = r.effective_exponent(c);
    vector_ok = vector_ok && ec <= 0 && ec >= -31;
  }
  if (!vector_ok) return generic_requantize_rows(acc, rows, out, r);
  alignas(64) int32_t m0[16];
  alignas(64) int64_t pos[16], neg[16], shift[16];
  for (int64_t c = 0; c < C; c += 16) {
    const int64_t valid = C - c < 16 ? C - c : 16;
    for (int j = 0; j < 16; ++j) {
      m0[j] = j < valid ? r.multiplier[c + j] : 0;
      fused_rounding(j < valid ? r.effective_exponent(c + j) : 0, r.rounding, &pos[j], &neg[j], &shift[j]);
    }
    const Requant16 q = make_requant(m0, pos, neg, shift, r.zero_point, r.act_min, r.act_max);
    const __mmask16 mask = tail_mask(valid);
    for (int64_t i = 0; i < rows; ++i)
      store16(out + i * C + c, requant16(_mm512_maskz_loadu_epi32(mask, acc + i * C + c), q), mask);
  }
}

// Per-layer constants of one multiplier broadcast to 16 lanes; requires e in [-31, 0].
static inline Requant16 broadcast_requant(int32_t m0, int exponent, fp::Rounding rounding, int32_t zero_point,
                                          int32_t act_min, int32_t act_max) {
  alignas(64) int32_t m[16];
  alignas(64) int64_t pos[16], neg[16], shift[16];
  for (int j = 0; j < 16; ++j) {
    m[j] = m0;
    fused_rounding(exponent, rounding, &pos[j], &neg[j], &shift[j]);
  }
  return make_requant(m, pos, neg, shift, zero_point, act_min, act_max);
}

// Elementwise add (docs/arithmetic.md 6), 16 elements at a time.
static void arith_add(const int8_t* a, const int8_t* b, int8_t* out, int64_t count, const AddParams& p) {
  if (p.out_exponent > 0 || p.out_exponent < -31) return generic_add(a, b, out, count, p);
  const Requant16 qa = broadcast_requant(p.a_multiplier, p.a_exponent, p.rounding, 0, -128, 127);
  const Requant16 qb = broadcast_requant(p.b_multiplier, p.b_exponent, p.rounding, 0, -128, 127);
  const Requant16 qo =
      broadcast_requant(p.out_multiplier, p.out_exponent, p.rounding, p.out_zero_point, p.act_min, p.act_max);
  const __m512i za = _mm512_set1_epi32(p.a_zero_point), zb = _mm512_set1_epi32(p.b_zero_point);
  const __m128i shift = _mm_cvtsi32_si128(p.left_shift);
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 mask = tail_mask(count - i);
    const __m512i va =
        _mm512_sll_epi32(_mm512_sub_epi32(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, a + i)), za), shift);
    const __m512i vb =
        _mm512_sll_epi32(_mm512_sub_epi32(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, b + i)), zb), shift);
    const __m512i sum = _mm512_add_epi32(multiply16(va, qa), multiply16(vb, qb));  // |each| < 2^30
    store16(out + i, requant16(sum, qo), mask);
  }
}

}  // namespace avx512
NPUQ_TARGET_END

// Elementwise add by table lookup (AVX512-VBMI, Ice Lake and later): each input's rescaled value
// (docs/arithmetic.md 6) depends only on its int8 value, so the two 256-entry int32 tables of the
// scalar kernel (generic_add) are computed once per call with the vector multiplier and then read with
// vpermi2b, one byte plane at a time (64 lookups per instruction). Only the requantization of the sum
// is computed per element. Bit-exact with the other kernels by construction: the same table entries.
NPUQ_TARGET_BEGIN("avx2,fma,bmi,bmi2,popcnt,avx512f,avx512bw,avx512vl,avx512dq,avx512cd,avx512vnni,avx512vbmi")
namespace avx512_vbmi {
using avx512::multiply16;
using avx512::Requant16;

// One int32 table of 256 entries as 4 byte planes of 4 x 64 bytes: planes[k][i] = byte k of entry i,
// entry i belonging to the int8 value i - 128.
struct BytePlanes {
  alignas(64) uint8_t planes[4][256];
};

static void build_planes(int32_t zero_point, int left_shift, const Requant16& q, BytePlanes* t) {
  const __m128i shift = _mm_cvtsi32_si128(left_shift);
  for (int j = 0; j < 16; ++j) {
    const __m512i v = _mm512_add_epi32(_mm512_set1_epi32(-128 + 16 * j),
                                       _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    const __m512i scaled = _mm512_sll_epi32(_mm512_sub_epi32(v, _mm512_set1_epi32(zero_point)), shift);
    const __m512i entry = multiply16(scaled, q);
    for (int k = 0; k < 4; ++k)
      _mm_store_si128(reinterpret_cast<__m128i*>(t->planes[k] + 16 * j),
                      _mm512_cvtepi32_epi8(_mm512_srli_epi32(entry, 8 * k)));
  }
}

// Byte k of the entries of 64 int8 values (as indices u = x + 128).
static inline __m512i lookup_plane(const uint8_t* plane, __m512i u, __mmask64 high) {
  const __m512i lo = _mm512_permutex2var_epi8(_mm512_load_si512(plane), u, _mm512_load_si512(plane + 64));
  const __m512i hi = _mm512_permutex2var_epi8(_mm512_load_si512(plane + 128), u, _mm512_load_si512(plane + 192));
  return _mm512_mask_blend_epi8(high, lo, hi);
}

// The entries of 64 values as 4 vectors of int32, in unpack order: vector j, 128-bit lane L holds the
// values 16 L + 4 j .. 16 L + 4 j + 3 (packing back with packs_epi32 / packs_epi16 restores the order).
static inline void lookup64(const BytePlanes& t, __m512i x, __m512i out[4]) {
  const __m512i u = _mm512_xor_si512(x, _mm512_set1_epi8(static_cast<char>(0x80)));
  const __mmask64 high = _mm512_movepi8_mask(u);
  const __m512i b0 = lookup_plane(t.planes[0], u, high), b1 = lookup_plane(t.planes[1], u, high);
  const __m512i b2 = lookup_plane(t.planes[2], u, high), b3 = lookup_plane(t.planes[3], u, high);
  const __m512i w01_lo = _mm512_unpacklo_epi8(b0, b1), w01_hi = _mm512_unpackhi_epi8(b0, b1);
  const __m512i w23_lo = _mm512_unpacklo_epi8(b2, b3), w23_hi = _mm512_unpackhi_epi8(b2, b3);
  out[0] = _mm512_unpacklo_epi16(w01_lo, w23_lo);
  out[1] = _mm512_unpackhi_epi16(w01_lo, w23_lo);
  out[2] = _mm512_unpacklo_epi16(w01_hi, w23_hi);
  out[3] = _mm512_unpackhi_epi16(w01_hi, w23_hi);
}

static void table_add(const int8_t* a, const int8_t* b, int8_t* out, int64_t count, const AddParams& p) {
  BytePlanes ta, tb;
  build_planes(p.a_zero_point, p.left_shift,
               avx512::broadcast_requant(p.a_multiplier, p.a_exponent, p.rounding, 0, -128, 127), &ta);
  build_planes(p.b_zero_point, p.left_shift,
               avx512::broadcast_requant(p.b_multiplier, p.b_exponent, p.rounding, 0, -128, 127), &tb);
  const Requant16 qo =
      avx512::broadcast_requant(p.out_multiplier, p.out_exponent, p.rounding, p.out_zero_point, p.act_min, p.act_max);
  const __m512i zp16 = _mm512_set1_epi16(static_cast<int16_t>(p.out_zero_point));
  const __m512i lo8 = _mm512_set1_epi8(static_cast<char>(p.act_min));
  const __m512i hi8 = _mm512_set1_epi8(static_cast<char>(p.act_max));
  for (int64_t i = 0; i < count; i += 64) {
    const __mmask64 mask = count - i >= 64 ? ~__mmask64(0) : (__mmask64(1) << (count - i)) - 1;
    __m512i ea[4], eb[4];
    lookup64(ta, _mm512_maskz_loadu_epi8(mask, a + i), ea);
    lookup64(tb, _mm512_maskz_loadu_epi8(mask, b + i), eb);
    __m512i r[4];
    for (int j = 0; j < 4; ++j) r[j] = multiply16(_mm512_add_epi32(ea[j], eb[j]), qo);  // |each entry| < 2^30
    // Saturating packs keep every value on its side of the activation range (see store64).
    const __m512i p01 = _mm512_adds_epi16(_mm512_packs_epi32(r[0], r[1]), zp16);
    const __m512i p23 = _mm512_adds_epi16(_mm512_packs_epi32(r[2], r[3]), zp16);
    const __m512i y = _mm512_min_epi8(_mm512_max_epi8(_mm512_packs_epi16(p01, p23), lo8), hi8);
    _mm512_mask_storeu_epi8(out + i, mask, y);
  }
}

}  // namespace avx512_vbmi
NPUQ_TARGET_END

namespace {
// The table form pays for its two tables (32 vector multiplies) after a few hundred elements.
constexpr int64_t kTableAddMinCount = 256;

void avx512_add(const int8_t* a, const int8_t* b, int8_t* out, int64_t count, const AddParams& p) {
  static const bool vbmi = __builtin_cpu_supports("avx512vbmi");
  if (vbmi && count >= kTableAddMinCount && p.out_exponent <= 0 && p.out_exponent >= -31)
    return avx512_vbmi::table_add(a, b, out, count, p);
  avx512::arith_add(a, b, out, count, p);
}
}  // namespace

const KernelTable* avx512_kernels() {
  static const KernelTable table = {
      "avx512_vnni", avx512::vnni_gemm_tile,       avx512::vnni_depthwise_rows, avx512::vnni_requantize_rows,
      avx512_add,    avx512::generic_avg_pool_rows};
  return &table;
}
#else
const KernelTable* avx512_kernels() { return nullptr; }
#endif

}  // namespace cpu
}  // namespace npuq
