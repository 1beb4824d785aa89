// The eltwise ops' CPU fast paths (docs/arithmetic.md 9 lut, 10 mul, 11 concat), bit-identical to the
// scalar reference (csrc/reference/eltwise_ops.cc).
//
// * lut: a byte-table loop; with AVX-512 VBMI the 256-entry table lives in four registers and vpermi2b
//   looks up 64 bytes per instruction pair.
// * mul: the multiplier stage as one rounding of the 64-bit product (kernels.h, fused_rounding), 16
//   lanes at a time with AVX-512; a plain loop of the same formula otherwise. The (N, 1, 1, C) scale is
//   repeated over enough pixels that every call handles a few hundred contiguous bytes.
// * concat: an input that is the identity (docs/arithmetic.md 11) is copied row by row; any other input
//   depends on its byte only, so it goes through the 256-entry table of its requantization.
//
// Work is split into blocks of whole rows (or bytes); every block writes a disjoint slice of the
// output, so results never depend on the thread count.
#include "npuq/eltwise_ops.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/cpu.h"
#include "cpu/kernels.h"
#include "cpu/target.h"

#if NPUQ_HAVE_X86_TARGETS
#include <immintrin.h>
#endif

namespace npuq {
namespace cpu {
namespace {

// Below this many bytes of output a call stays on one thread: waking a team costs more than it saves.
constexpr int64_t kParallelBytes = 1 << 16;
// Bytes of output per block of work.
constexpr int64_t kBlockBytes = 1 << 14;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int threads_for(int threads, int64_t bytes) {
  const int t = resolve_threads(threads);  // checks the request whatever the size
  return bytes < kParallelBytes ? 1 : t;
}

// The multiplier stage of mul as r = (p + (p < 0 ? neg : pos)) >> shift with p = acc * M0. For e in
// [-31, 0] this is fused_rounding (docs/arithmetic.md 3.5). For e in [1, 15] both modes are the single
// rounding floor((p + 2^(30 - e)) / 2^(31 - e)): |acc| <= 255 * 255 < 2^16, so acc * 2^e cannot
// saturate and RDBPOT(h, 0) = h. Larger e (a product scale 2^15 times the output scale) takes fp::.
struct MulConstants {
  int32_t a_zero_point = 0, b_zero_point = 0, m0 = 0, exponent = 0;
  int64_t pos = 0, neg = 0, shift = 0;
  int32_t zero_point = 0, act_min = -128, act_max = 127;
  fp::Rounding rounding = fp::Rounding::kDouble;
  bool fused = false;  // pos / neg / shift hold the multiplier stage
};

MulConstants mul_constants(const MulParams& p) {
  MulConstants k;
  k.a_zero_point = p.a_zero_point;
  k.b_zero_point = p.b_zero_point;
  k.m0 = p.multiplier;
  k.zero_point = p.out_zero_point;
  k.act_min = p.act_min;
  k.act_max = p.act_max;
  k.rounding = p.rounding;
  k.exponent = p.exponent;
  if (p.exponent <= 0) {
    fused_rounding(p.exponent, p.rounding, &k.pos, &k.neg, &k.shift);
    k.fused = true;
  } else if (p.exponent <= 15) {
    k.shift = 31 - p.exponent;
    k.pos = k.neg = int64_t{1} << (30 - p.exponent);
    k.fused = true;
  }
  return k;
}

void mul_span_generic(const int8_t* a, const int8_t* b, int8_t* out, int64_t count, const MulConstants& k) {
  if (!k.fused) {
    for (int64_t i = 0; i < count; ++i)
      out[i] = fp::requantize((a[i] - k.a_zero_point) * (b[i] - k.b_zero_point), k.m0, k.exponent, k.rounding,
                              k.zero_point, k.act_min, k.act_max);
    return;
  }
  const int32_t lo = k.act_min - k.zero_point, hi = k.act_max - k.zero_point;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t p = int64_t{(a[i] - k.a_zero_point) * (b[i] - k.b_zero_point)} * k.m0;  // |p| < 2^47
    int64_t r = (p + (p < 0 ? k.neg : k.pos)) >> k.shift;                                 // fits int32
    r = r < lo ? lo : (r > hi ? hi : r);
    out[i] = static_cast<int8_t>(r + k.zero_point);
  }
}

// rows x width bytes: src rows are contiguous (stride width), dst rows `dst_stride` apart.
using RowsFn = void (*)(const int8_t* src, int8_t* dst, int64_t rows, int64_t width, int64_t dst_stride,
                        const int8_t* table);

void lut_rows_generic(const int8_t* src, int8_t* dst, int64_t rows, int64_t width, int64_t dst_stride,
                      const int8_t* table) {
  for (int64_t r = 0; r < rows; ++r, src += width, dst += dst_stride)
    for (int64_t j = 0; j < width; ++j) dst[j] = table[src[j] + 128];
}

// Rows [r0, r1) of a concat, one input at a time (its rows of the block are one tight loop, and the
// block's output stays in L1 between inputs). Input i is copied where identity[i], else mapped through
// its table (tables + i * 256).
struct ConcatJob {
  const ConcatParams* p;
  const char* identity;
  const int8_t* tables;
  int8_t* out;
  int64_t out_c;
};

void concat_rows_generic(const ConcatJob& job, int64_t r0, int64_t r1) {
  int64_t offset = 0;
  for (int i = 0; i < job.p->num_inputs; ++i) {
    const int64_t C = job.p->inputs[i].channels;
    const int8_t* src = job.p->inputs[i].data + r0 * C;
    int8_t* dst = job.out + r0 * job.out_c + offset;
    if (job.identity[i]) {
      for (int64_t r = r0; r < r1; ++r, src += C, dst += job.out_c) std::memcpy(dst, src, C);
    } else {
      lut_rows_generic(src, dst, r1 - r0, C, job.out_c, job.tables + i * kLutEntries);
    }
    offset += C;
  }
}

#if NPUQ_HAVE_X86_TARGETS
NPUQ_TARGET_BEGIN("avx2,fma,bmi,bmi2,popcnt,avx512f,avx512bw,avx512vl,avx512dq,avx512cd,avx512vbmi")

// The sign bit of x selects the half of the table: x >= 0 reads table[128 + x], x < 0 reads
// table[x + 128] = table[x & 127]; vpermi2b uses the low 7 bits of each index byte.
struct LutRegs {
  __m512i pos_lo, pos_hi, neg_lo, neg_hi;
};

inline LutRegs load_lut(const int8_t* table) {
  return {_mm512_loadu_si512(table + 128), _mm512_loadu_si512(table + 192), _mm512_loadu_si512(table),
          _mm512_loadu_si512(table + 64)};
}

inline __m512i lut64(__m512i x, const LutRegs& t) {
  const __m512i from_pos = _mm512_permutex2var_epi8(t.pos_lo, x, t.pos_hi);
  const __m512i from_neg = _mm512_permutex2var_epi8(t.neg_lo, x, t.neg_hi);
  return _mm512_mask_blend_epi8(_mm512_movepi8_mask(x), from_pos, from_neg);
}

// rows x width bytes: src rows are contiguous (stride width), dst rows `dst_stride` apart. A flat lut
// is one row.
void lut_rows_vbmi(const int8_t* src, int8_t* dst, int64_t rows, int64_t width, int64_t dst_stride,
                   const int8_t* table) {
  const LutRegs t = load_lut(table);
  const int64_t full = width / 64 * 64;
  const __mmask64 tail = _bzhi_u64(~uint64_t{0}, static_cast<unsigned>(width - full));
  for (int64_t r = 0; r < rows; ++r, src += width, dst += dst_stride) {
    for (int64_t j = 0; j < full; j += 64) _mm512_storeu_si512(dst + j, lut64(_mm512_loadu_si512(src + j), t));
    if (tail) _mm512_mask_storeu_epi8(dst + full, tail, lut64(_mm512_maskz_loadu_epi8(tail, src + full), t));
  }
}

// Short channel runs (a few dozen bytes per row) would spend most of their time in calls to memcpy:
// copy them with 64-byte vectors and one masked tail instead. Everything the loops need is in locals:
// the int8 stores may alias any memory, which would otherwise reload the job's fields after each one.
void concat_rows_vbmi(const ConcatJob& job, int64_t r0, int64_t r1) {
  const int64_t out_c = job.out_c;
  int64_t offset = 0;
  for (int i = 0; i < job.p->num_inputs; ++i) {
    const int64_t C = job.p->inputs[i].channels, full = C / 64 * 64;
    const __mmask64 tail = _bzhi_u64(~uint64_t{0}, static_cast<unsigned>(C - full));
    const int8_t* src = job.p->inputs[i].data + r0 * C;
    int8_t* dst = job.out + r0 * out_c + offset;
    offset += C;
    if (!job.identity[i]) {
      lut_rows_vbmi(src, dst, r1 - r0, C, out_c, job.tables + i * kLutEntries);
      continue;
    }
    if (C <= 32) {  // half-width masked moves: measurably faster on rows of 16 to 32 bytes
      const __mmask32 m = _bzhi_u32(~0u, static_cast<unsigned>(C));
      for (int64_t r = r0; r < r1; ++r, src += C, dst += out_c)
        _mm256_mask_storeu_epi8(dst, m, _mm256_maskz_loadu_epi8(m, src));
      continue;
    }
    for (int64_t r = r0; r < r1; ++r, src += C, dst += out_c) {
      for (int64_t j = 0; j < full; j += 64) _mm512_storeu_si512(dst + j, _mm512_loadu_si512(src + j));
      if (tail) _mm512_mask_storeu_epi8(dst + full, tail, _mm512_maskz_loadu_epi8(tail, src + full));
    }
  }
}

NPUQ_TARGET_END

NPUQ_TARGET_BEGIN("avx2,fma,bmi,bmi2,popcnt,avx512f,avx512bw,avx512vl,avx512dq,avx512cd")

// 16 elements: acc = (a - z_a) * (b - z_b), then the fused rounding on the even and odd 64-bit products
// (one arithmetic shift by a uniform count), the clamp, the zero point.
struct Mul16 {
  __m512i za, zb, m0, pos, neg, lo, hi, zp;
  __m128i shift;
};

inline __m512i mul16(__m128i a8, __m128i b8, const Mul16& q) {
  const __m512i va = _mm512_sub_epi32(_mm512_cvtepi8_epi32(a8), q.za);
  const __m512i vb = _mm512_sub_epi32(_mm512_cvtepi8_epi32(b8), q.zb);
  const __m512i acc = _mm512_mullo_epi32(va, vb);
  const __m512i p_even = _mm512_mul_epi32(acc, q.m0);
  const __m512i p_odd = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), q.m0);
  const __m512i r_even = _mm512_sra_epi64(
      _mm512_add_epi64(p_even, _mm512_mask_blend_epi64(_mm512_movepi64_mask(p_even), q.pos, q.neg)), q.shift);
  const __m512i r_odd = _mm512_sra_epi64(
      _mm512_add_epi64(p_odd, _mm512_mask_blend_epi64(_mm512_movepi64_mask(p_odd), q.pos, q.neg)), q.shift);
  const __m512i low_dwords = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
  const __m512i r = _mm512_permutex2var_epi32(r_even, low_dwords, r_odd);
  return _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(r, q.lo), q.hi), q.zp);
}

void mul_span_avx512(const int8_t* a, const int8_t* b, int8_t* out, int64_t count, const MulConstants& k) {
  if (!k.fused) return mul_span_generic(a, b, out, count, k);
  Mul16 q;
  q.za = _mm512_set1_epi32(k.a_zero_point);
  q.zb = _mm512_set1_epi32(k.b_zero_point);
  q.m0 = _mm512_set1_epi64(k.m0);
  q.pos = _mm512_set1_epi64(k.pos);
  q.neg = _mm512_set1_epi64(k.neg);
  q.lo = _mm512_set1_epi32(k.act_min - k.zero_point);
  q.hi = _mm512_set1_epi32(k.act_max - k.zero_point);
  q.zp = _mm512_set1_epi32(k.zero_point);
  q.shift = _mm_cvtsi64_si128(k.shift);
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m512i y = mul16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)),
                            _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)), q);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtepi32_epi8(y));
  }
  if (i < count) {
    const __mmask16 m = static_cast<__mmask16>((1u << (count - i)) - 1);
    const __m512i y = mul16(_mm_maskz_loadu_epi8(m, a + i), _mm_maskz_loadu_epi8(m, b + i), q);
    _mm512_mask_cvtepi32_storeu_epi8(out + i, m, y);
  }
}

NPUQ_TARGET_END

bool has_vbmi() {
  static const bool yes = __builtin_cpu_supports("avx512vbmi");
  return yes;
}
#endif

using MulSpan = void (*)(const int8_t*, const int8_t*, int8_t*, int64_t, const MulConstants&);

// The kernels of the active instruction set (npuq.set_isa), so that tests can run every one.
RowsFn lut_rows() {
#if NPUQ_HAVE_X86_TARGETS
  if (active_isa() == Isa::kAvx512Vnni && has_vbmi()) return lut_rows_vbmi;
#endif
  return lut_rows_generic;
}

using ConcatRowsFn = void (*)(const ConcatJob&, int64_t, int64_t);

ConcatRowsFn concat_rows() {
#if NPUQ_HAVE_X86_TARGETS
  if (active_isa() == Isa::kAvx512Vnni && has_vbmi()) return concat_rows_vbmi;
#endif
  return concat_rows_generic;
}

MulSpan mul_span() {
#if NPUQ_HAVE_X86_TARGETS
  if (active_isa() == Isa::kAvx512Vnni) return mul_span_avx512;
#endif
  return mul_span_generic;
}

}  // namespace

void lut(const int8_t* x, int8_t* out, int64_t count, const int8_t* table, int threads) {
  const RowsFn rows = lut_rows();
  const int t = threads_for(threads, count);
  const int64_t blocks = ceil_div(count, kBlockBytes);
#pragma omp parallel for num_threads(t) schedule(static) if (t > 1 && blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t i = b * kBlockBytes, n = std::min(kBlockBytes, count - i);
    rows(x + i, out + i, 1, n, n, table);
  }
}

void mul(const int8_t* a, const int8_t* b, int8_t* out, const MulParams& p, int threads) {
  validate(p);
  const MulConstants k = mul_constants(p);
  const MulSpan span = mul_span();
  const int64_t count = p.count();
  const int t = threads_for(threads, count);
  if (!p.broadcast_b) {
    const int64_t blocks = ceil_div(count, kBlockBytes);
#pragma omp parallel for num_threads(t) schedule(static) if (t > 1 && blocks > 1)
    for (int64_t i = 0; i < blocks; ++i) {
      const int64_t o = i * kBlockBytes;
      span(a + o, b + o, out + o, std::min(kBlockBytes, count - o), k);
    }
    return;
  }
  // b's row of image n repeated over `group` pixels: one span call covers group * C contiguous bytes.
  const int64_t C = p.channels;
  const int64_t group = std::min<int64_t>(p.positions, std::max<int64_t>(1, 512 / C));
  std::vector<int8_t> repeated(static_cast<size_t>(p.batch * group * C));
  for (int64_t n = 0; n < p.batch; ++n)
    for (int64_t g = 0; g < group; ++g) std::memcpy(&repeated[(n * group + g) * C], b + n * C, C);
  const int64_t per_image = ceil_div(p.positions, group);
  const int64_t jobs = p.batch * per_image;
#pragma omp parallel for num_threads(t) schedule(static) if (t > 1 && jobs > 1)
  for (int64_t j = 0; j < jobs; ++j) {
    const int64_t n = j / per_image, s0 = (j % per_image) * group;
    const int64_t pixels = std::min(group, p.positions - s0);
    const int64_t o = (n * p.positions + s0) * C;
    span(a + o, repeated.data() + n * group * C, out + o, pixels * C, k);
  }
}

void concat(int8_t* out, const ConcatParams& p, int threads) {
  validate(p);
  const int64_t out_c = p.out_channels();
  std::vector<int8_t> tables(static_cast<size_t>(p.num_inputs) * kLutEntries);
  std::vector<char> identity(p.num_inputs);
  for (int i = 0; i < p.num_inputs; ++i) {
    identity[i] = p.is_identity(i);
    if (!identity[i]) concat_table(p, i, &tables[i * kLutEntries]);
  }
  const ConcatRowsFn rows = concat_rows();
  const ConcatJob job{&p, identity.data(), tables.data(), out, out_c};
  const int t = threads_for(threads, p.rows * out_c);
  const int64_t rows_per_block = std::max<int64_t>(1, kBlockBytes / out_c);
  const int64_t blocks = ceil_div(p.rows, rows_per_block);
#pragma omp parallel for num_threads(t) schedule(static) if (t > 1 && blocks > 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t r0 = blk * rows_per_block;
    rows(job, r0, std::min(p.rows, r0 + rows_per_block));
  }
}

}  // namespace cpu
}  // namespace npuq
