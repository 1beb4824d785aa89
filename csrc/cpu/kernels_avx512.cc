// AVX-512 VNNI kernels (x86-64 with avx512f/bw/vl/dq and avx512_vnni).
//
// * GEMM (pointwise and im2col convolutions, fully-connected): vpdpbusd multiplies 4 unsigned
//   activation bytes by 4 signed weight bytes and adds them to an int32 lane, 64 MACs per instruction.
//   Register blocks of MR rows x NV vectors of 16 channels.
// * Depthwise: the activations minus their zero point are stored once per input row as int16 pairs
//   (x[iw], x[iw + dilation]) per channel, so that vpdpwssd does two taps of 16 channels at once
//   straight from memory; the pair rows live in a small ring reused by consecutive output rows.
// * Requantization of 16 channels at a time, lane for lane the formulas of fixedpoint.h.
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
// Per-channel constants are derived once per block of 16 channels, not once per vector.
struct Requant16 {
  __m512i m0, m0_odd, right, mask, half_mask, t_even, t_odd, half_even, half_odd, lo, hi, zp;
  bool single;
};

static inline void derive_requant(Requant16& q, __m512i ec, int32_t zero_point, int32_t act_min, int32_t act_max,
                                  fp::Rounding rounding) {
  const __m512i one = _mm512_set1_epi32(1);
  q.m0_odd = _mm512_srli_epi64(q.m0, 32);
  q.right = _mm512_sub_epi32(_mm512_setzero_si512(), ec);
  q.mask = _mm512_sub_epi32(_mm512_sllv_epi32(one, q.right), one);
  q.half_mask = _mm512_srli_epi32(q.mask, 1);
  const __m512i t = _mm512_sub_epi32(_mm512_set1_epi32(31), ec);
  const __m512i one64 = _mm512_set1_epi64(1);
  q.t_even = _mm512_and_si512(t, _mm512_set1_epi64(0xFFFFFFFFLL));
  q.t_odd = _mm512_srli_epi64(t, 32);
  q.half_even = _mm512_sllv_epi64(one64, _mm512_sub_epi64(q.t_even, one64));
  q.half_odd = _mm512_sllv_epi64(one64, _mm512_sub_epi64(q.t_odd, one64));
  // clamp(r + z, act_min, act_max) == clamp(r, act_min - z, act_max - z) + z, and the latter cannot overflow.
  q.lo = _mm512_set1_epi32(act_min - zero_point);
  q.hi = _mm512_set1_epi32(act_max - zero_point);
  q.zp = _mm512_set1_epi32(zero_point);
  q.single = rounding == fp::Rounding::kSingle;
}

static inline Requant16 load_requant(const ChannelConstants& cc, int64_t c) {
  Requant16 q;
  q.m0 = _mm512_loadu_si512(cc.m0.data() + c);
  derive_requant(q, _mm512_loadu_si512(cc.ec.data() + c), cc.zero_point, cc.act_min, cc.act_max, cc.rounding);
  return q;
}

// Joins the low dwords of the 64-bit lanes of even (lanes 0, 2, ..) and odd (1, 3, ..) products.
static inline __m512i join_even_odd(__m512i even, __m512i odd) {
  return _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

// The multiplier stage only (before the zero point and the clamp).
static inline __m512i multiply16(__m512i acc, const Requant16& q) {
  const __m512i p_even = _mm512_mul_epi32(acc, q.m0);  // exact signed 32 x 32 -> 64
  const __m512i p_odd = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), q.m0_odd);
  __m512i r;
  if (!q.single) {
    // SRDHM = floor((p + 2^30) / 2^31); M0 >= 0 excludes the INT32_MIN * INT32_MIN case.
    const __m512i nudge = _mm512_set1_epi64(int64_t{1} << 30);
    const __m512i h = join_even_odd(_mm512_srai_epi64(_mm512_add_epi64(p_even, nudge), 31),
                                    _mm512_srai_epi64(_mm512_add_epi64(p_odd, nudge), 31));
    // RDBPOT(h, right), right in [0, 31]: floor plus one when the remainder exceeds the threshold.
    const __m512i rem = _mm512_and_si512(h, q.mask);
    const __m512i threshold = _mm512_sub_epi32(q.half_mask, _mm512_srai_epi32(h, 31));
    r = _mm512_srav_epi32(h, q.right);
    r = _mm512_mask_add_epi32(r, _mm512_cmpgt_epi32_mask(rem, threshold), r, _mm512_set1_epi32(1));
  } else {
    // floor((p + 2^(t-1)) / 2^t), t in [31, 62]: the quotient fits int32.
    r = join_even_odd(_mm512_srav_epi64(_mm512_add_epi64(p_even, q.half_even), q.t_even),
                      _mm512_srav_epi64(_mm512_add_epi64(p_odd, q.half_odd), q.t_odd));
  }
  return r;
}

static inline __m512i requant16(__m512i acc, const Requant16& q) {
  const __m512i r = _mm512_min_epi32(_mm512_max_epi32(multiply16(acc, q), q.lo), q.hi);
  return _mm512_add_epi32(r, q.zp);
}

// Output stage of 64 consecutive channels with saturating packs: clamp(r + z, act_min, act_max) equals
// clamp(sat8(sat16(sat16(r) + z)), act_min, act_max) because every saturation keeps the side of the
// activation range a value lies on.
static inline void store64(int8_t* dst, __m512i r0, __m512i r1, __m512i r2, __m512i r3, __m512i zp16,
                           __m512i act_min8, __m512i act_max8) {
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
static inline void requant16_scalar(__m512i acc, const ChannelConstants& cc, int64_t c, int8_t* dst,
                                    int64_t valid) {
  alignas(64) int32_t lanes[16];
  _mm512_store_si512(lanes, acc);
  for (int64_t j = 0; j < valid; ++j)
    dst[j] = fp::requantize(lanes[j], cc.m0[c + j], cc.ec[c + j], cc.rounding, cc.zero_point, cc.act_min,
                            cc.act_max);
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

// Fills one ring row: pairs (x[iw] - z, x[iw + dw] - z) as int16 for every padded column; zero where
// a member of the pair lies in the padding.
static void build_pair_row(const DepthwiseJob& job, int64_t ih, int16_t* row) {
  const Conv2dShape& s = *job.shape;
  const int64_t C = s.in_c, c16 = job.weights->c16;
  const int64_t pw = depthwise_padded_width(s);
  const __m512i zp = _mm512_set1_epi32(job.input_zero_point);
  const int8_t* xrow = job.x + (job.image * s.in_h + ih) * s.in_w * C;
  const int64_t pairs = job.weights->pairs;
  for (int64_t iwp = 0; iwp < pw; ++iwp) {
    // With a stride > 1 some columns start no pair of any output: skip them.
    bool needed = s.stride_w == 1;
    for (int64_t j = 0; j < pairs && !needed; ++j) {
      const int64_t r = iwp - 2 * j * s.dilation_w;
      needed = r >= 0 && r % s.stride_w == 0 && r / s.stride_w < s.out_w;
    }
    if (!needed) continue;
    const int64_t iw0 = iwp - s.pad_left, iw1 = iw0 + s.dilation_w;
    const bool in0 = iw0 >= 0 && iw0 < s.in_w, in1 = iw1 >= 0 && iw1 < s.in_w;
    int16_t* dst = row + iwp * c16 * 2;
    for (int64_t c = 0; c < c16; c += 16) {
      const __mmask16 mask = tail_mask(C - c);
      __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
      if (in0) lo = _mm512_sub_epi32(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, xrow + iw0 * C + c)), zp);
      if (in1) hi = _mm512_sub_epi32(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, xrow + iw1 * C + c)), zp);
      _mm512_storeu_si512(dst + c * 2, _mm512_mask_blend_epi16(0xAAAAAAAA, lo, _mm512_slli_epi32(hi, 16)));
    }
  }
}

template <int KH, int PAIRS>
static void depthwise_rows_impl(const DepthwiseJob& job) {
  const Conv2dShape& s = *job.shape;
  const DepthwiseWeights& w = *job.weights;
  const ChannelConstants& cc = *job.constants;
  const int kh_n = KH ? KH : static_cast<int>(s.kernel_h);
  const int pairs = PAIRS ? PAIRS : static_cast<int>(w.pairs);
  const int64_t C = s.in_c, c16 = w.c16;
  const int64_t ring = depthwise_ring_rows(s);
  const int64_t pw = depthwise_padded_width(s);
  const int64_t row_elems = pw * c16 * 2;
  int16_t* rows = static_cast<int16_t*>(job.scratch);
  int64_t tags[64];  // input row held by each ring slot (ring <= 64 is checked by the caller)
  for (int64_t i = 0; i < ring; ++i) tags[i] = -1;
  const int64_t col_step = s.stride_w * c16 * 2;  // int16 elements between consecutive outputs
  const int64_t pair_step = 2 * s.dilation_w * c16 * 2;

  for (int64_t oh = job.oh_begin; oh < job.oh_end; ++oh) {
    const int16_t* src[16];
    int kh_valid[16];
    int nvalid = 0;
    for (int kh = 0; kh < kh_n; ++kh) {
      const int64_t ih = oh * s.stride_h + kh * s.dilation_h - s.pad_top;
      if (ih < 0 || ih >= s.in_h) continue;  // padding rows contribute nothing
      const int64_t slot = ih % ring;
      int16_t* row = rows + slot * row_elems;
      if (tags[slot] != ih) {
        build_pair_row(job, ih, row);
        tags[slot] = ih;
      }
      src[nvalid] = row;
      kh_valid[nvalid] = kh;
      ++nvalid;
    }
    int8_t* out_row = job.out + (job.image * s.out_h + oh) * s.out_w * C;
    for (int64_t c = 0; c < c16; c += 16) {
      const __mmask16 mask = tail_mask(C - c);
      const __m512i bias = _mm512_loadu_si512(cc.bias.data() + c);
      const Requant16 q = load_requant(cc, c);
      // Weights of this channel block: [kh][pair] vectors of 16 (w0, w1) int16 pairs.
      const int16_t* wblock = w.paired.data() + (c / 16) * kh_n * pairs * 32;
      int64_t ow = 0;
      constexpr int kU = 4;
      for (; ow + kU <= s.out_w; ow += kU) {
        __m512i acc[kU];
        for (int u = 0; u < kU; ++u) acc[u] = bias;
        for (int i = 0; i < nvalid; ++i) {
          const int16_t* base = src[i] + ow * col_step + c * 2;
          const int16_t* wk = wblock + kh_valid[i] * pairs * 32;
          for (int j = 0; j < pairs; ++j) {
            const __m512i wv = _mm512_loadu_si512(wk + j * 32);
            for (int u = 0; u < kU; ++u)
              acc[u] = _mm512_dpwssd_epi32(acc[u], _mm512_loadu_si512(base + u * col_step + j * pair_step), wv);
          }
        }
        for (int u = 0; u < kU; ++u) {
          int8_t* dst = out_row + (ow + u) * C + c;
          if (cc.vector_ok) store16(dst, requant16(acc[u], q), mask);
          else requant16_scalar(acc[u], cc, c, dst, C - c < 16 ? C - c : 16);
        }
      }
      for (; ow < s.out_w; ++ow) {
        __m512i acc = bias;
        for (int i = 0; i < nvalid; ++i) {
          const int16_t* base = src[i] + ow * col_step + c * 2;
          const int16_t* wk = wblock + kh_valid[i] * pairs * 32;
          for (int j = 0; j < pairs; ++j)
            acc = _mm512_dpwssd_epi32(acc, _mm512_loadu_si512(base + j * pair_step), _mm512_loadu_si512(wk + j * 32));
        }
        int8_t* dst = out_row + ow * C + c;
        if (cc.vector_ok) store16(dst, requant16(acc, q), mask);
        else requant16_scalar(acc, cc, c, dst, C - c < 16 ? C - c : 16);
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
  bool vector_ok = true;
  for (int64_t c = 0; c < C; ++c) {
    const int ec = r.effective_exponent(c);
    vector_ok = vector_ok && ec <= 0 && ec >= -31;
  }
  if (!vector_ok || C < 16) return generic_requantize_rows(acc, rows, out, r);
  alignas(64) int32_t m0[16], ec[16];
  for (int64_t c = 0; c < C; c += 16) {
    const int64_t valid = C - c < 16 ? C - c : 16;
    for (int j = 0; j < 16; ++j) {
      m0[j] = j < valid ? r.multiplier[c + j] : 0;
      ec[j] = j < valid ? r.effective_exponent(c + j) : 0;
    }
    Requant16 q;
    q.m0 = _mm512_load_si512(m0);
    derive_requant(q, _mm512_load_si512(ec), r.zero_point, r.act_min, r.act_max, r.rounding);
    const __mmask16 mask = tail_mask(valid);
    for (int64_t i = 0; i < rows; ++i)
      store16(out + i * C + c, requant16(_mm512_maskz_loadu_epi32(mask, acc + i * C + c), q), mask);
  }
}

}  // namespace avx512
NPUQ_TARGET_END

const KernelTable* avx512_kernels() {
  static const KernelTable table = {"avx512_vnni", avx512::vnni_gemm_tile, avx512::vnni_depthwise_rows,
                                    avx512::vnni_requantize_rows, avx512::generic_add,
                                    avx512::generic_avg_pool_rows};
  return &table;
}
#else
const KernelTable* avx512_kernels() { return nullptr; }
#endif

}  // namespace cpu
}  // namespace npuq
