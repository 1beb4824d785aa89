// The CPU orchestration of every op: packing and running convolutions (the work split between threads,
// the im2col panels, the exact 64-bit path for channels whose accumulator could overflow int32), and the
// thread split of requantize, add and average pooling.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>

#include "cpu.h"
#include "reference/reference.h"

namespace npuq {
namespace cpu {
namespace {

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// 64-byte aligned scratch owned by one thread.
struct Scratch {
  explicit Scratch(int64_t bytes) : raw(new uint8_t[bytes + 64]()) {
    const auto p = reinterpret_cast<uintptr_t>(raw.get());
    data = raw.get() + ((64 - p % 64) % 64);
  }
  std::unique_ptr<uint8_t[]> raw;
  uint8_t* data;
};

// First exception thrown by any thread of a parallel region, rethrown after it.
class ErrorSlot {
 public:
  template <typename F>
  void run(F&& f) {
    try {
      f();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_) error_ = std::current_exception();
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::mutex mu_;
  std::exception_ptr error_;
};

void fill_requant_constants(ChannelConstants& cc, const RequantParams& r, int64_t first, int64_t count,
                            int64_t padded) {
  cc.m0.assign(padded, 0);
  cc.ec.assign(padded, 0);
  cc.bias.assign(padded, 0);
  cc.round_pos.assign(padded, int64_t{1} << 30);
  cc.round_neg.assign(padded, int64_t{1} << 30);
  cc.shift.assign(padded, 31);
  cc.zero_point = r.zero_point;
  cc.act_min = r.act_min;
  cc.act_max = r.act_max;
  cc.rounding = r.rounding;
  cc.vector_ok = true;
  for (int64_t c = 0; c < count; ++c) {
    cc.m0[c] = r.multiplier[first + c];
    cc.ec[c] = r.effective_exponent(first + c);
    const bool fits = cc.ec[c] <= 0 && cc.ec[c] >= -31;
    cc.vector_ok = cc.vector_ok && fits;
    if (fits) fused_rounding(cc.ec[c], cc.rounding, &cc.round_pos[c], &cc.round_neg[c], &cc.shift[c]);
  }
}

// The same constants with lane i of each block holding channel order(i) of that block (and padding
// where that channel does not exist).
ChannelConstants permute_constants(const ChannelConstants& cc, int64_t channels, int64_t padded, int64_t block,
                                   int64_t (*order)(int64_t)) {
  ChannelConstants out = cc;
  for (auto* v : {&out.bias, &out.m0, &out.ec}) v->assign(padded, 0);
  out.round_pos.assign(padded, int64_t{1} << 30);
  out.round_neg.assign(padded, int64_t{1} << 30);
  out.shift.assign(padded, 31);
  for (int64_t lane = 0; lane < padded; ++lane) {
    const int64_t c = lane / block * block + order(lane % block);
    if (c >= channels) continue;
    out.bias[lane] = cc.bias[c];
    out.m0[lane] = cc.m0[c];
    out.ec[lane] = cc.ec[c];
    out.round_pos[lane] = cc.round_pos[c];
    out.round_neg[lane] = cc.round_neg[c];
    out.shift[lane] = cc.shift[c];
  }
  return out;
}

// One im2col row of a convolution whose kernel rows are short runs (kernel_w * C_in <= 16, no groups or
// horizontal dilation: the stem's 3 x 3 x 3) and whose window lies wholly inside the image: each kernel
// row is one 16-byte copy with its sign bits flipped, whose surplus the next copy overwrites.
// `end` bounds the input, so that no copy reads past it. Returns false where the fast form does not apply.
bool pack_short_rows(const int8_t* x, const int8_t* end, const Conv2dShape& s, int64_t n, int64_t oh, int64_t ow,
                     int64_t k4, uint8_t* dst) {
  const int64_t run = s.kernel_w * s.in_c;
  const int64_t iw0 = ow * s.stride_w - s.pad_left, ih0 = oh * s.stride_h - s.pad_top;
  if (iw0 < 0 || iw0 + s.kernel_w > s.in_w || ih0 < 0 || ih0 + (s.kernel_h - 1) * s.dilation_h >= s.in_h) return false;
  const int8_t* last = x + ((n * s.in_h + ih0 + (s.kernel_h - 1) * s.dilation_h) * s.in_w + iw0) * s.in_c;
  if (end - last < 16) return false;
  constexpr uint64_t kSignBits = 0x8080808080808080u;
  for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
    uint64_t v[2];  // flipped in registers: reading back the overlapping stores would stall
    std::memcpy(v, x + ((n * s.in_h + ih0 + kh * s.dilation_h) * s.in_w + iw0) * s.in_c, 16);
    v[0] ^= kSignBits;
    v[1] ^= kSignBits;
    std::memcpy(dst + kh * run, v, 16);
  }
  const int64_t k = s.kernel_h * run;
  std::memset(dst + k, 0, k4 - k);
  return true;
}

// Rows [row0, row0 + rows) of the im2col matrix of one group, as bytes u = x + 128, K4 per row.
// The panel has room for 16 bytes past its last row (gemm_panel_bytes).
void pack_panel(const int8_t* x, const int8_t* x_end, const Conv2dShape& s, int32_t zp, int64_t group, int64_t row0,
                int64_t rows, int64_t k4, uint8_t* panel) {
  const int64_t cin_g = s.in_c_per_group;
  const int64_t k = s.reduction_size();
  const uint8_t pad = static_cast<uint8_t>(zp + 128);
  const bool direct = s.kernel_h == 1 && s.kernel_w == 1 && s.pad_top == 0 && s.pad_left == 0;
  const bool short_rows = !direct && s.groups == 1 && s.dilation_w == 1 && s.kernel_w * s.in_c <= 16;
  if (direct && s.groups == 1 && k4 == s.in_c && s.stride_h == 1 && s.stride_w == 1 && s.out_w == s.in_w &&
      s.out_h == s.in_h) {
    // A pointwise layer at stride 1 whose rows need no padding: the panel is one contiguous run of the input.
    const auto* src = reinterpret_cast<const uint8_t*>(x + row0 * s.in_c);
    for (int64_t i = 0; i < rows * k4; ++i) panel[i] = src[i] ^ 0x80u;
    return;
  }
  // The output position of row0, then stepped row by row (two divisions per row cost as much as the
  // stem's whole copy).
  int64_t n = row0 / (s.out_h * s.out_w), oh = row0 % (s.out_h * s.out_w) / s.out_w, ow = row0 % s.out_w;
  for (int64_t r = 0; r < rows; ++r, ++ow) {
    if (ow == s.out_w) {
      ow = 0;
      if (++oh == s.out_h) oh = 0, ++n;
    }
    uint8_t* dst = panel + r * k4;
    if (short_rows && pack_short_rows(x, x_end, s, n, oh, ow, k4, dst)) continue;
    if (direct) {
      const auto* src = reinterpret_cast<const uint8_t*>(
          x + ((n * s.in_h + oh * s.stride_h) * s.in_w + ow * s.stride_w) * s.in_c + group * cin_g);
      for (int64_t i = 0; i < cin_g; ++i) dst[i] = src[i] ^ 0x80u;
    } else {
      const int64_t iw_first = ow * s.stride_w - s.pad_left;
      // Without groups or horizontal dilation, a kernel row inside the image is one contiguous run.
      const bool row_contiguous =
          s.groups == 1 && s.dilation_w == 1 && iw_first >= 0 && iw_first + s.kernel_w <= s.in_w;
      for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
        const int64_t ih = oh * s.stride_h + kh * s.dilation_h - s.pad_top;
        if (row_contiguous && ih >= 0 && ih < s.in_h) {
          const auto* src = reinterpret_cast<const uint8_t*>(x + ((n * s.in_h + ih) * s.in_w + iw_first) * s.in_c);
          uint8_t* d = dst + kh * s.kernel_w * cin_g;
          for (int64_t i = 0; i < s.kernel_w * cin_g; ++i) d[i] = src[i] ^ 0x80u;
          continue;
        }
        for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
          const int64_t iw = ow * s.stride_w + kw * s.dilation_w - s.pad_left;
          uint8_t* d = dst + (kh * s.kernel_w + kw) * cin_g;
          if (ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w) {
            const auto* src =
                reinterpret_cast<const uint8_t*>(x + ((n * s.in_h + ih) * s.in_w + iw) * s.in_c + group * cin_g);
            for (int64_t i = 0; i < cin_g; ++i) d[i] = src[i] ^ 0x80u;
          } else {
            std::memset(d, pad, cin_g);
          }
        }
      }
    }
    std::memset(dst + k, 0, k4 - k);
  }
}

}  // namespace

Conv2dPlan::Conv2dPlan(const Conv2dParams& layer, const int8_t* weights, const int32_t* bias)
    : layer_(layer.shape), input_zero_point_(layer.input_zero_point), overflow_(layer.overflow), op_name_(layer.op) {
  // Validate the layer on an input the size of the dilated kernel; per-call shapes are validated in run().
  Conv2dParams probe = layer;
  probe.shape.batch = 1;
  probe.shape.in_h = (layer_.kernel_h - 1) * layer_.dilation_h + 1;
  probe.shape.in_w = (layer_.kernel_w - 1) * layer_.dilation_w + 1;
  validate(probe);
  layer_.in_c_per_group = probe.shape.in_c_per_group;
  layer_.out_c_per_group = probe.shape.out_c_per_group;
  const RequantParams& requant = layer.requant;

  const int64_t per_channel = layer_.reduction_size();
  weights_.assign(weights, weights + layer_.out_c * per_channel);
  validate_weights(weights_.data(), static_cast<int64_t>(weights_.size()));
  bias_.assign(layer_.out_c, 0);
  if (bias) std::copy(bias, bias + layer_.out_c, bias_.begin());
  m0_.assign(requant.multiplier, requant.multiplier + layer_.out_c);
  exponent_.assign(requant.exponent, requant.exponent + layer_.out_c);
  shift_.assign(layer_.out_c, 0);
  if (requant.shift) std::copy(requant.shift, requant.shift + layer_.out_c, shift_.begin());
  requant_ = requant;
  requant_.multiplier = m0_.data();
  requant_.exponent = exponent_.data();
  requant_.shift = shift_.data();

  // A channel is safe when no input can push its exact accumulator outside int32 (arithmetic.md 5).
  const int64_t deviation = max_input_deviation(input_zero_point_);
  for (int64_t oc = 0; oc < layer_.out_c; ++oc) {
    int64_t abs_sum = 0;
    for (int64_t k = 0; k < per_channel; ++k) abs_sum += std::abs(int64_t{weights_[oc * per_channel + k]});
    if (std::abs(int64_t{bias_[oc]}) + deviation * abs_sum > fp::kInt32Max) unsafe_.push_back(oc);
  }

  depthwise_ = layer_.is_depthwise() && layer_.out_c == layer_.in_c;
  if (depthwise_) pack_depthwise();
  else pack_gemm();
}

void Conv2dPlan::pack_gemm() {
  const int64_t k = layer_.reduction_size(), n = layer_.out_c_per_group;
  const uint32_t offset = static_cast<uint32_t>(input_zero_point_ + 128);
  gemm_.resize(layer_.groups);
  gemm_cc_.resize(layer_.groups);
  for (int64_t g = 0; g < layer_.groups; ++g) {
    GemmWeights& w = gemm_[g];
    w.k = k;
    w.k4 = round_up(k, 4);
    w.n = n;
    w.n16 = round_up(n, kChannelBlock);
    w.packed.assign(w.n16 * w.k4, 0);
    w.pairs.assign(w.n16 * w.k4, 0);
    ChannelConstants& cc = gemm_cc_[g];
    fill_requant_constants(cc, requant_, g * n, n, w.n16);
    for (int64_t c = 0; c < n; ++c) {
      const int8_t* src = weights_.data() + (g * n + c) * k;
      uint32_t sum = 0;
      for (int64_t i = 0; i < k; ++i) {
        w.packed[(c / 16) * w.k4 * 16 + (i / 4) * 64 + (c % 16) * 4 + i % 4] = src[i];
        w.pairs[(c / 16) * w.k4 * 16 + (i / 2) * 32 + (c % 16) * 2 + i % 2] = src[i];
        sum += static_cast<uint32_t>(static_cast<int32_t>(src[i]));
      }
      // bias - (z + 128) * sum(w), modulo 2^32 (see kernels.h).
      cc.bias[c] = static_cast<int32_t>(static_cast<uint32_t>(bias_[g * n + c]) - offset * sum);
    }
  }
}

void Conv2dPlan::pack_depthwise() {
  const int64_t C = layer_.in_c, KH = layer_.kernel_h, KW = layer_.kernel_w;
  dw_.channels = C;
  dw_.c16 = round_up(C, 16);
  dw_.kernel_h = KH;
  dw_.kernel_w = KW;
  dw_.pairs = ceil_div(KW, 2);
  dw_.c32 = round_up(C, 32);
  dw_.taps.assign(KH * KW * dw_.c16, 0);
  dw_.paired.assign(dw_.c32 * KH * dw_.pairs * 2, 0);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t kh = 0; kh < KH; ++kh)
      for (int64_t kw = 0; kw < KW; ++kw) dw_.taps[(kh * KW + kw) * dw_.c16 + c] = weights_[(c * KH + kh) * KW + kw];
  for (int64_t lane = 0; lane < dw_.c32; ++lane) {
    const int64_t c = lane / 32 * 32 + depthwise_lane_channel(lane % 32);
    if (c >= C) continue;
    for (int64_t kh = 0; kh < KH; ++kh)
      for (int64_t kw = 0; kw < KW; ++kw)
        dw_.paired[(((lane / 32) * KH + kh) * dw_.pairs + kw / 2) * 64 + (lane % 32) * 2 + kw % 2] =
            weights_[(c * KH + kh) * KW + kw];
  }
  fill_requant_constants(dw_cc_, requant_, 0, C, dw_.c16);
  std::copy(bias_.begin(), bias_.end(), dw_cc_.bias.begin());
  dw_lane_cc_ = permute_constants(dw_cc_, C, dw_.c32, 32, depthwise_lane_channel);
  dw_.paired16.assign(dw_.c16 * KH * dw_.pairs * 2, 0);
  for (int64_t lane = 0; lane < dw_.c16; ++lane) {
    const int64_t c = lane / 16 * 16 + depthwise_lane_channel16(lane % 16);
    if (c >= C) continue;
    for (int64_t kh = 0; kh < KH; ++kh)
      for (int64_t kw = 0; kw < KW; ++kw)
        dw_.paired16[(((lane / 16) * KH + kh) * dw_.pairs + kw / 2) * 32 + (lane % 16) * 2 + kw % 2] =
            weights_[(c * KH + kh) * KW + kw];
  }
  dw_lane16_cc_ = permute_constants(dw_cc_, C, dw_.c16, 16, depthwise_lane_channel16);
}

Conv2dShape Conv2dPlan::shape_for(int64_t batch, int64_t in_h, int64_t in_w) const {
  return shape_with_input(layer_, batch, in_h, in_w);
}

void Conv2dPlan::run(const int8_t* x, int64_t batch, int64_t in_h, int64_t in_w, int8_t* out, int threads) const {
  const Conv2dShape s = shape_for(batch, in_h, in_w);
  const int t = resolve_threads(threads);
  const KernelTable& k = kernels(active_isa());
  if (depthwise_) run_depthwise(x, s, out, t, k);
  else run_gemm(x, s, out, t, k);
  if (!unsafe_.empty()) fix_unsafe_channels(x, s, out, t);
}

void Conv2dPlan::run_gemm(const int8_t* x, const Conv2dShape& s, int8_t* out, int threads, const KernelTable& k) const {
  const int64_t m = s.out_rows();
  const int64_t tiles = ceil_div(m, kPanelRows);
  const int64_t n16 = gemm_.front().n16;
  // Enough work items for every thread: split the channels too when there are few row tiles.
  const int64_t chunk = tiles * s.groups >= 4 * threads ? n16 : std::min<int64_t>(n16, 64);
  const int64_t chunks = ceil_div(n16, chunk);
  const int64_t items = s.groups * tiles * chunks;
  const int64_t k4 = gemm_.front().k4;
  const int8_t* x_end = x + s.batch * s.in_h * s.in_w * s.in_c;
  ErrorSlot errors;
#pragma omp parallel num_threads(threads) if (threads > 1 && items > 1)
  {
    // Nothing may leave an OpenMP worksharing loop by an exception (the other threads would wait at
    // its barrier forever): every failure is caught per item and rethrown after the region.
    std::unique_ptr<Scratch> panel;
    errors.run([&] { panel = std::make_unique<Scratch>(gemm_scratch_bytes(k4)); });
    int64_t packed_key = -1;
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      if (!panel) continue;
      errors.run([&] {
        const int64_t g = item / (tiles * chunks), rest = item % (tiles * chunks);
        const int64_t tile = rest / chunks, c = rest % chunks;
        const int64_t row0 = tile * kPanelRows, rows = std::min(kPanelRows, m - row0);
        if (packed_key != g * tiles + tile) {  // consecutive chunks of a tile share its panel
          pack_panel(x, x_end, s, input_zero_point_, g, row0, rows, k4, panel->data);
          packed_key = g * tiles + tile;
        }
        GemmTile job;
        job.panel = panel->data;
        job.rows = rows;
        job.weights = &gemm_[g];
        job.constants = &gemm_cc_[g];
        job.n_begin = c * chunk;
        job.n_end = std::min(gemm_[g].n, (c + 1) * chunk);
        job.out = out + row0 * s.out_c + g * s.out_c_per_group;
        job.out_stride = s.out_c;
        job.wide = reinterpret_cast<int16_t*>(panel->data + gemm_panel_bytes(k4));
        if (job.n_begin < job.n_end) k.gemm_tile(job);
      });
    }
  }
  errors.rethrow();
}

void Conv2dPlan::run_depthwise(const int8_t* x, const Conv2dShape& s, int8_t* out, int threads,
                               const KernelTable& k) const {
  // The paired-tap kernel keeps its row pointers in small fixed arrays.
  const bool fits = s.kernel_h <= 16 && depthwise_ring_rows(s) <= 64;
  const KernelTable& use = fits ? k : portable_kernels();
  const int64_t chunks_per_image = std::min<int64_t>(s.out_h, std::max<int64_t>(1, ceil_div(4 * threads, s.batch)));
  const int64_t rows_per_chunk = ceil_div(s.out_h, chunks_per_image);
  const int64_t chunks = ceil_div(s.out_h, rows_per_chunk);
  const int64_t items = s.batch * chunks;
  ErrorSlot errors;
#pragma omp parallel num_threads(threads) if (threads > 1 && items > 1)
  {
    std::unique_ptr<Scratch> scratch;
    errors.run([&] { scratch = std::make_unique<Scratch>(depthwise_scratch_bytes(s)); });
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      if (!scratch) continue;
      errors.run([&] {
        DepthwiseJob job;
        job.x = x;
        job.out = out;
        job.shape = &s;
        job.input_zero_point = input_zero_point_;
        job.weights = &dw_;
        job.constants = &dw_cc_;
        job.lane_constants = &dw_lane_cc_;
        job.lane16_constants = &dw_lane16_cc_;
        job.image = item / chunks;
        job.oh_begin = (item % chunks) * rows_per_chunk;
        job.oh_end = std::min(s.out_h, job.oh_begin + rows_per_chunk);
        job.scratch = scratch->data;
        use.depthwise_rows(job);
      });
    }
  }
  errors.rethrow();
}

void Conv2dPlan::fix_unsafe_channels(const int8_t* x, const Conv2dShape& s, int8_t* out, int threads) const {
  Conv2dParams p;
  p.shape = s;
  p.input_zero_point = input_zero_point_;
  p.requant = requant_;
  p.overflow = overflow_;
  const int64_t rows = s.out_rows();
  ErrorSlot errors;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t row = 0; row < rows; ++row) {
    errors.run([&] {
      const int64_t n = row / (s.out_h * s.out_w), pix = row % (s.out_h * s.out_w);
      for (int64_t oc : unsafe_) {
        const int64_t exact =
            ref::conv2d_accumulator(x, weights_.data(), bias_.data(), p, n, pix / s.out_w, pix % s.out_w, oc);
        int32_t acc = 0;
        if (!fp::apply_overflow_policy(exact, overflow_, &acc))
          throw AccumulatorOverflow(describe_overflow(op_name_, row, oc, exact));
        out[row * s.out_c + oc] =
            fp::requantize(acc, requant_.multiplier[oc], requant_.effective_exponent(oc), requant_.rounding,
                           requant_.zero_point, requant_.act_min, requant_.act_max);
      }
    });
  }
  errors.rethrow();
}

void requantize(const int32_t* acc, int64_t rows, int8_t* out, const RequantParams& r, int threads) {
  validate(r, "requantize");
  const KernelTable& k = kernels(active_isa());
  const int t = resolve_threads(threads);
  const int64_t block = std::max<int64_t>(1, 16384 / r.channels);
  const int64_t blocks = ceil_div(rows, block);
#pragma omp parallel for num_threads(t) schedule(static) if (t > 1 && blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r0 = b * block;
    k.requantize_rows(acc + r0 * r.channels, std::min(block, rows - r0), out + r0 * r.channels, r);
  }
}

void add(const int8_t* a, const int8_t* b, int8_t* out, int64_t count, const AddParams& p, int threads) {
  validate(p);
  const KernelTable& k = kernels(active_isa());
  const int t = resolve_threads(threads);
  constexpr int64_t kBlock = 1 << 14;  // small enough to balance two threads on 100k elements
  const int64_t blocks = ceil_div(count, kBlock);
#pragma omp parallel for num_threads(t) schedule(static) if (t > 1 && blocks > 1)
  for (int64_t i = 0; i < blocks; ++i)
    k.add(a + i * kBlock, b + i * kBlock, out + i * kBlock, std::min(kBlock, count - i * kBlock), p);
}

void avg_pool2d(const int8_t* x, int8_t* out, const Pool2dParams& params, int threads) {
  Pool2dParams p = params;
  validate(p);
  const KernelTable& k = kernels(active_isa());
  const int t = resolve_threads(threads);
  const int64_t rows = p.batch * p.out_h;
#pragma omp parallel for num_threads(t) schedule(static) if (t > 1 && rows > 1)
  for (int64_t r = 0; r < rows; ++r) k.avg_pool_rows(x, out, p, r, r + 1);
}

}  // namespace cpu
}  // namespace npuq
