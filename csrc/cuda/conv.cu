// Convolution and fully-connected kernels on the GPU (see kernels.h for the paths and docs/cuda.md).
//
// Every rounding is fp:: from npuq/fixedpoint.h (compiled __host__ __device__), so the requantization
// here is the same code the CPU reference runs. The integer dot products are exact: the GEMM path's
// partial sums of x * w stay below 131071 * 2^14 < 2^31, and the other paths accumulate exactly.
#include <algorithm>
#include <climits>
#include <cstring>

#include "kernels.h"
#include "npuq/fixedpoint.h"

namespace npuq {
namespace cuda {
namespace {

constexpr int64_t kGemmMaxReduction = 131071;  // K * 128 * 128 < 2^31: no int32 partial sum overflows
constexpr int64_t kDepthwiseMaxTaps = 65536;   // taps * 255 * 127 < 2^31: the int32 sum is exact

// Tile of the GEMM path: 64 output rows x 64 output channels per block of 128 threads, 32 bytes of the
// reduction per step. Shared-memory rows are 48 bytes so that the 8 rows a warp's fragment loads touch
// fall in distinct banks.
constexpr int kTileM = 64, kTileN = 64, kTileK = 32, kSmemRow = 48, kThreads = 128;

struct ConvGeometry {
  int64_t batch, in_h, in_w, in_c, out_h, out_w, out_c;
  int64_t kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left;
  int64_t groups, in_c_per_group, out_c_per_group, k;
  int32_t input_zero_point;
};

struct Requant {
  const int32_t* m0;
  const int32_t* ec;
  int32_t zero_point, act_min, act_max;
  fp::Rounding rounding;
  fp::Overflow overflow;
};

ConvGeometry geometry(const Conv2dShape& s, int32_t zx) {
  ConvGeometry g;
  g.batch = s.batch, g.in_h = s.in_h, g.in_w = s.in_w, g.in_c = s.in_c;
  g.out_h = s.out_h, g.out_w = s.out_w, g.out_c = s.out_c;
  g.kernel_h = s.kernel_h, g.kernel_w = s.kernel_w, g.stride_h = s.stride_h, g.stride_w = s.stride_w;
  g.dilation_h = s.dilation_h, g.dilation_w = s.dilation_w, g.pad_top = s.pad_top, g.pad_left = s.pad_left;
  g.groups = s.groups, g.in_c_per_group = s.in_c_per_group, g.out_c_per_group = s.out_c_per_group;
  g.k = s.reduction_size();
  g.input_zero_point = zx;
  return g;
}

// The accumulator after the overflow policy, requantized. Under "raise" an out-of-range value records the
// smallest failing (row * C_out + channel) in *error and writes 0 (the host raises).
__device__ __forceinline__ int8_t finish(int64_t exact, int64_t oc, const Requant& r, unsigned long long* error,
                                         int64_t linear) {
  int32_t acc = 0;
  if (!fp::apply_overflow_policy(exact, r.overflow, &acc)) {
    if (error) atomicMin(error, static_cast<unsigned long long>(linear));
    acc = 0;
  }
  return fp::requantize(acc, r.m0[oc], r.ec[oc], r.rounding, r.zero_point, r.act_min, r.act_max);
}

// Exact accumulator of one output: bias + sum (x - z_x) * w over the taps inside the image (padding holds
// z_x and contributes nothing). dp4a over 4 channels when vec4 (C_in / groups % 4 == 0, aligned).
__device__ int64_t exact_accumulator(const ConvGeometry& g, const int8_t* __restrict__ x, const int8_t* __restrict__ w,
                                     const int32_t* __restrict__ bias, int64_t m, int64_t oc, bool vec4) {
  const int64_t pix = m % (g.out_h * g.out_w), n = m / (g.out_h * g.out_w);
  const int64_t oh = pix / g.out_w, ow = pix % g.out_w;
  const int64_t group = oc / g.out_c_per_group, cin_g = g.in_c_per_group;
  const int8_t* wrow = w + oc * g.k;
  int64_t acc = bias[oc];
  for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
    const int64_t ih = oh * g.stride_h + kh * g.dilation_h - g.pad_top;
    if (ih < 0 || ih >= g.in_h) continue;
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      const int64_t iw = ow * g.stride_w + kw * g.dilation_w - g.pad_left;
      if (iw < 0 || iw >= g.in_w) continue;
      const int8_t* xp = x + ((n * g.in_h + ih) * g.in_w + iw) * g.in_c + group * cin_g;
      const int8_t* wp = wrow + (kh * g.kernel_w + kw) * cin_g;
      if (vec4) {
        const int* x4 = reinterpret_cast<const int*>(xp);
        const int* w4 = reinterpret_cast<const int*>(wp);
        for (int64_t i = 0; i < cin_g / 4; ++i) {
          const int wv = w4[i];
          // sum x*w - z_x * sum w over 4 channels: both terms are small, their difference exact
          acc += static_cast<int64_t>(__dp4a(x4[i], wv, 0)) -
                 static_cast<int64_t>(g.input_zero_point) * __dp4a(0x01010101, wv, 0);
        }
      } else {
        for (int64_t i = 0; i < cin_g; ++i)
          acc += (static_cast<int64_t>(xp[i]) - g.input_zero_point) * static_cast<int64_t>(wp[i]);
      }
    }
  }
  return acc;
}

// "direct" path, and the exact fix-up of unsafe channels (channels != nullptr: only those, in order).
__global__ void direct_kernel(ConvGeometry g, const int8_t* __restrict__ x, const int8_t* __restrict__ w,
                              const int32_t* __restrict__ bias, Requant r, const int32_t* __restrict__ channels,
                              int64_t channel_count, bool vec4, int8_t* __restrict__ out, unsigned long long* error) {
  const int64_t rows = g.batch * g.out_h * g.out_w;
  const int64_t total = rows * channel_count;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t m = i / channel_count, j = i % channel_count;
    const int64_t oc = channels ? channels[j] : j;
    const int64_t exact = exact_accumulator(g, x, w, bias, m, oc, vec4);
    out[m * g.out_c + oc] = finish(exact, oc, r, error, m * g.out_c + oc);
  }
}

// The exact accumulator of one output, for the error message of the "raise" policy.
__global__ void one_accumulator_kernel(ConvGeometry g, const int8_t* x, const int8_t* w, const int32_t* bias, int64_t m,
                                       int64_t oc, int64_t* value) {
  *value = exact_accumulator(g, x, w, bias, m, oc, false);
}

// "depthwise" path: groups == C_in, C_out = C_in * multiplier, weights as [taps][C_out]. Each thread
// computes kVec consecutive output channels of one pixel (kVec == 4 needs multiplier 1, C % 4 == 0 and
// 4-byte aligned activations).
template <int kVec>
__global__ void depthwise_kernel(ConvGeometry g, const int8_t* __restrict__ x, const int8_t* __restrict__ w_taps,
                                 const int32_t* __restrict__ bias, Requant r, int8_t* __restrict__ out,
                                 unsigned long long* error) {
  const int64_t rows = g.batch * g.out_h * g.out_w;
  const int64_t vecs = g.out_c / kVec;
  const int64_t total = rows * vecs;
  const int64_t mult = g.out_c_per_group;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t m = i / vecs, oc0 = (i % vecs) * kVec;
    const int64_t pix = m % (g.out_h * g.out_w), n = m / (g.out_h * g.out_w);
    const int64_t oh = pix / g.out_w, ow = pix % g.out_w;
    int32_t sum[kVec] = {};
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      const int64_t ih = oh * g.stride_h + kh * g.dilation_h - g.pad_top;
      if (ih < 0 || ih >= g.in_h) continue;
      for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
        const int64_t iw = ow * g.stride_w + kw * g.dilation_w - g.pad_left;
        if (iw < 0 || iw >= g.in_w) continue;
        const int8_t* xp = x + ((n * g.in_h + ih) * g.in_w + iw) * g.in_c;
        const int8_t* wp = w_taps + (kh * g.kernel_w + kw) * g.out_c + oc0;
        if (kVec == 4) {
          const char4 xv = *reinterpret_cast<const char4*>(xp + oc0);
          const char4 wv = *reinterpret_cast<const char4*>(wp);
          sum[0] += (xv.x - g.input_zero_point) * wv.x;
          sum[kVec > 1 ? 1 : 0] += (xv.y - g.input_zero_point) * wv.y;
          sum[kVec > 2 ? 2 : 0] += (xv.z - g.input_zero_point) * wv.z;
          sum[kVec > 3 ? 3 : 0] += (xv.w - g.input_zero_point) * wv.w;
        } else {
          for (int v = 0; v < kVec; ++v)
            sum[v] += (xp[(oc0 + v) / mult] - g.input_zero_point) * static_cast<int32_t>(wp[v]);
        }
      }
    }
    int8_t res[kVec];
    for (int v = 0; v < kVec; ++v) {
      const int64_t oc = oc0 + v;
      res[v] = finish(static_cast<int64_t>(bias[oc]) + sum[v], oc, r, error, m * g.out_c + oc);
    }
    if (kVec == 4) {
      *reinterpret_cast<char4*>(out + m * g.out_c + oc0) =
          make_char4(res[0], res[kVec > 1 ? 1 : 0], res[kVec > 2 ? 2 : 0], res[kVec > 3 ? 3 : 0]);
    } else {
      for (int v = 0; v < kVec; ++v) out[m * g.out_c + oc0 + v] = res[v];
    }
  }
}

// ---------------------------------------------------------------------------------------- GEMM path
// C[m][oc] = sum_k A[m][k] * B[oc][k] with A the im2col matrix of x (padding = z_x) and B the weights
// ([oc_pad][k_pad], zero padded). Then acc = C + offset[oc] (mod 2^32) and the requantization.

struct GemmArgs {
  ConvGeometry g;
  const int8_t* x;
  const int8_t* w;  // [oc_pad][k_pad]
  const int32_t* offset;
  Requant r;
  int8_t* out;
  int64_t rows, k_pad;
  int64_t row0;  // first row of this launch (launches are split when the rows exceed one grid)
};

// Loads this thread's 16 bytes of the A tile (row t / 2, bytes (t % 2) * 16 of the 32) for reduction
// offset k0. kVec: bytes per load that stay inside one tap (16, 4 or 1).
template <int kVec>
__device__ __forceinline__ uint4 load_a(const GemmArgs& a, int64_t m, int64_t n, int64_t oh, int64_t ow, int64_t k0) {
  const ConvGeometry& g = a.g;
  const uint32_t pad = static_cast<uint8_t>(g.input_zero_point) * 0x01010101u;
  uint32_t words[4] = {pad, pad, pad, pad};
  if (m < a.rows) {
    if constexpr (kVec == 16) {
      if (k0 < g.k) {
        const int64_t tap = k0 / g.in_c, c = k0 % g.in_c;
        const int64_t ih = oh * g.stride_h + (tap / g.kernel_w) * g.dilation_h - g.pad_top;
        const int64_t iw = ow * g.stride_w + (tap % g.kernel_w) * g.dilation_w - g.pad_left;
        if (ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w)
          return *reinterpret_cast<const uint4*>(a.x + ((n * g.in_h + ih) * g.in_w + iw) * g.in_c + c);
      }
    } else if (kVec == 4) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t k = k0 + 4 * j;
        if (k >= g.k) break;
        const int64_t tap = k / g.in_c, c = k % g.in_c;
        const int64_t ih = oh * g.stride_h + (tap / g.kernel_w) * g.dilation_h - g.pad_top;
        const int64_t iw = ow * g.stride_w + (tap % g.kernel_w) * g.dilation_w - g.pad_left;
        if (ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w)
          words[j] = *reinterpret_cast<const uint32_t*>(a.x + ((n * g.in_h + ih) * g.in_w + iw) * g.in_c + c);
      }
    } else {
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int64_t k = k0 + j;
        if (k >= g.k) break;
        const int64_t tap = k / g.in_c, c = k % g.in_c;
        const int64_t ih = oh * g.stride_h + (tap / g.kernel_w) * g.dilation_h - g.pad_top;
        const int64_t iw = ow * g.stride_w + (tap % g.kernel_w) * g.dilation_w - g.pad_left;
        if (ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w) {
          const uint32_t byte = static_cast<uint8_t>(a.x[((n * g.in_h + ih) * g.in_w + iw) * g.in_c + c]);
          const int shift = 8 * (j % 4);
          words[j / 4] = (words[j / 4] & ~(0xffu << shift)) | (byte << shift);
        }
      }
    }
  }
  return make_uint4(words[0], words[1], words[2], words[3]);
}

__device__ __forceinline__ void mma_s8(int (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();  // the host never selects the mma engine below compute capability 8.0
#endif
}

__device__ __forceinline__ void store_result(const GemmArgs& a, int64_t m, int64_t oc, int32_t c) {
  if (m >= a.rows || oc >= a.g.out_c) return;
  // offset = bias - z_x * sum(w): adding modulo 2^32 gives the exact accumulator whenever it fits int32,
  // which the bound guarantees for every channel not on the unsafe list
  const int32_t acc = static_cast<int32_t>(static_cast<uint32_t>(c) + static_cast<uint32_t>(a.offset[oc]));
  const Requant& r = a.r;
  a.out[m * a.g.out_c + oc] = fp::requantize(acc, r.m0[oc], r.ec[oc], r.rounding, r.zero_point, r.act_min, r.act_max);
}

template <int kVec, bool kMma>
__global__ void __launch_bounds__(kThreads) gemm_kernel(GemmArgs a) {
  __shared__ __align__(16) uint8_t As[kTileM * kSmemRow];
  __shared__ __align__(16) uint8_t Bs[kTileN * kSmemRow];
  const int t = threadIdx.x;
  // blockIdx.x walks the output channels, so that the blocks running together share their rows of the
  // activations (read from memory once, then from L2)
  const int64_t block_m = a.row0 + int64_t{blockIdx.y} * kTileM, block_n = int64_t{blockIdx.x} * kTileN;
  const ConvGeometry& g = a.g;

  // the tile row this thread loads, and its output pixel
  const int load_row = t / 2, load_half = (t % 2) * 16;
  const int64_t lm = block_m + load_row;
  const int64_t lpix = lm % (g.out_h * g.out_w), ln = lm / (g.out_h * g.out_w);
  const int64_t loh = lpix / g.out_w, low = lpix % g.out_w;
  const int8_t* wsrc = a.w + (block_n + load_row) * a.k_pad + load_half;

  int acc_mma[2][4][4] = {};
  int acc_dp[4][8] = {};

  const int64_t steps = a.k_pad / kTileK;
  uint4 ra = load_a<kVec>(a, lm, ln, loh, low, load_half);
  uint4 rb = *reinterpret_cast<const uint4*>(wsrc);
  for (int64_t s = 0; s < steps; ++s) {
    *reinterpret_cast<uint4*>(As + load_row * kSmemRow + load_half) = ra;
    *reinterpret_cast<uint4*>(Bs + load_row * kSmemRow + load_half) = rb;
    __syncthreads();
    if (s + 1 < steps) {  // next tile's global loads, in flight during this tile's math
      const int64_t k0 = (s + 1) * kTileK + load_half;
      ra = load_a<kVec>(a, lm, ln, loh, low, k0);
      rb = *reinterpret_cast<const uint4*>(wsrc + (s + 1) * kTileK);
    }
    if constexpr (kMma) {
      // warp (wm, wn) owns rows wm*32.. and channels wn*32..: 2 x 4 fragments of 16 x 8
      const int warp = t / 32, lane = t % 32, grp = lane / 4, tig = lane % 4;
      const int wm = warp % 2, wn = warp / 2;
      uint32_t fa[2][4], fb[4][2];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const uint8_t* base = As + (wm * 32 + mi * 16 + grp) * kSmemRow + 4 * tig;
        fa[mi][0] = *reinterpret_cast<const uint32_t*>(base);
        fa[mi][1] = *reinterpret_cast<const uint32_t*>(base + 8 * kSmemRow);
        fa[mi][2] = *reinterpret_cast<const uint32_t*>(base + 16);
        fa[mi][3] = *reinterpret_cast<const uint32_t*>(base + 8 * kSmemRow + 16);
      }
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const uint8_t* base = Bs + (wn * 32 + ni * 8 + grp) * kSmemRow + 4 * tig;
        fb[ni][0] = *reinterpret_cast<const uint32_t*>(base);
        fb[ni][1] = *reinterpret_cast<const uint32_t*>(base + 16);
      }
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_s8(acc_mma[mi][ni], fa[mi], fb[ni]);
    } else {
      // thread owns rows (t % 16) * 4 + i and channels (t / 16) * 8 + j
      const int tm = t % 16, tn = t / 16;
#pragma unroll
      for (int kk = 0; kk < kTileK / 4; ++kk) {
        int av[4], bv[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) av[i] = *reinterpret_cast<const int*>(As + (tm * 4 + i) * kSmemRow + 4 * kk);
#pragma unroll
        for (int j = 0; j < 8; ++j) bv[j] = *reinterpret_cast<const int*>(Bs + (tn * 8 + j) * kSmemRow + 4 * kk);
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc_dp[i][j] = __dp4a(av[i], bv[j], acc_dp[i][j]);
      }
    }
    __syncthreads();
  }

  if constexpr (kMma) {
    const int warp = t / 32, lane = t % 32, grp = lane / 4, tig = lane % 4;
    const int wm = warp % 2, wn = warp / 2;
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const int64_t m = block_m + wm * 32 + mi * 16 + grp;
        const int64_t oc = block_n + wn * 32 + ni * 8 + 2 * tig;
        store_result(a, m, oc, acc_mma[mi][ni][0]);
        store_result(a, m, oc + 1, acc_mma[mi][ni][1]);
        store_result(a, m + 8, oc, acc_mma[mi][ni][2]);
        store_result(a, m + 8, oc + 1, acc_mma[mi][ni][3]);
      }
  } else {
    const int tm = t % 16, tn = t / 16;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) store_result(a, block_m + tm * 4 + i, block_n + tn * 8 + j, acc_dp[i][j]);
  }
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

unsigned blocks_for(int64_t work, int threads) {
  const int64_t b = (work + threads - 1) / threads;
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(b, 1), 65535LL * 16));
}

bool aligned(const void* p, size_t n) { return reinterpret_cast<uintptr_t>(p) % n == 0; }

}  // namespace

GemmEngine parse_engine(const std::string& name) {
  if (name == "auto") return GemmEngine::kAuto;
  if (name == "mma") return GemmEngine::kMma;
  if (name == "dp4a") return GemmEngine::kDp4a;
  throw InvalidArgument("engine must be 'auto', 'mma' or 'dp4a', got '" + name + "'");
}

const char* engine_name(GemmEngine e) {
  return e == GemmEngine::kMma ? "mma" : e == GemmEngine::kDp4a ? "dp4a" : "auto";
}

Conv2dPlan::Conv2dPlan(const Conv2dParams& layer, const int8_t* weights, const int32_t* bias, int device,
                       cudaStream_t stream)
    : layer_(layer.shape),
      input_zero_point_(layer.input_zero_point),
      zero_point_(layer.requant.zero_point),
      act_min_(layer.requant.act_min),
      act_max_(layer.requant.act_max),
      rounding_(layer.requant.rounding),
      overflow_(layer.overflow),
      op_name_(layer.op),
      device_(device) {
  const RequantParams& requant = layer.requant;
  const int32_t input_zero_point = layer.input_zero_point;
  require_device(device);
  DeviceGuard guard(device);
  int major = 0;
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
  has_mma_ = major >= 8;

  // Validate the whole layer (shape, input zero point, requantization, overflow policy) on an input the
  // size of the dilated kernel, with the checks of the CPU plan; per-call shapes are validated in shape_for().
  Conv2dParams probe = layer;
  probe.shape.batch = 1;
  probe.shape.in_h = std::max<int64_t>(probe.shape.dilation_h * (probe.shape.kernel_h - 1) + 1, 1);
  probe.shape.in_w = std::max<int64_t>(probe.shape.dilation_w * (probe.shape.kernel_w - 1) + 1, 1);
  validate(probe);
  layer_.in_c_per_group = probe.shape.in_c_per_group;
  layer_.out_c_per_group = probe.shape.out_c_per_group;
  const int64_t oc_n = layer_.out_c, k = layer_.reduction_size();
  validate_weights(weights, oc_n * k);
  k_ = k;

  std::vector<int32_t> b(oc_n, 0), m0(oc_n), ec(oc_n), offset(oc_n);
  const int64_t deviation = max_input_deviation(input_zero_point);
  for (int64_t oc = 0; oc < oc_n; ++oc) {
    if (bias) b[oc] = bias[oc];
    m0[oc] = requant.multiplier[oc];
    ec[oc] = requant.effective_exponent(oc);
    int64_t sum = 0, abs_sum = 0;
    for (int64_t i = 0; i < k; ++i) {
      sum += weights[oc * k + i];
      abs_sum += std::abs(static_cast<int64_t>(weights[oc * k + i]));
    }
    offset[oc] = static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(b[oc] - input_zero_point * sum)));
    if (std::abs(static_cast<int64_t>(b[oc])) + deviation * abs_sum > fp::kInt32Max)
      unsafe_host_.push_back(static_cast<int32_t>(oc));
  }
  w_ohwi_ = upload(weights, oc_n * k, device, stream);
  bias_ = upload(b.data(), oc_n * sizeof(int32_t), device, stream);
  offset_ = upload(offset.data(), oc_n * sizeof(int32_t), device, stream);
  m0_ = upload(m0.data(), oc_n * sizeof(int32_t), device, stream);
  ec_ = upload(ec.data(), oc_n * sizeof(int32_t), device, stream);
  if (!unsafe_host_.empty())
    unsafe_ = upload(unsafe_host_.data(), unsafe_host_.size() * sizeof(int32_t), device, stream);

  const int64_t taps = layer_.kernel_h * layer_.kernel_w;
  if (layer_.groups == 1 && k <= kGemmMaxReduction) {
    path_ = "gemm";
    k_pad_ = round_up(k, kTileK);
    oc_pad_ = round_up(oc_n, kTileN);
    std::vector<int8_t> packed(oc_pad_ * k_pad_, 0);
    for (int64_t oc = 0; oc < oc_n; ++oc) std::memcpy(&packed[oc * k_pad_], weights + oc * k, k);
    w_gemm_ = upload(packed.data(), packed.size(), device, stream);
  } else if (layer_.in_c_per_group == 1 && layer_.groups == layer_.in_c && taps <= kDepthwiseMaxTaps) {
    path_ = "depthwise";
    std::vector<int8_t> t(taps * oc_n);
    for (int64_t oc = 0; oc < oc_n; ++oc)
      for (int64_t tap = 0; tap < taps; ++tap) t[tap * oc_n + oc] = weights[oc * taps + tap];
    w_taps_ = upload(t.data(), t.size(), device, stream);
  } else {
    path_ = "direct";
  }
}

Conv2dShape Conv2dPlan::shape_for(int64_t batch, int64_t in_h, int64_t in_w) const {
  return shape_with_input(layer_, batch, in_h, in_w);
}

void Conv2dPlan::run(const int8_t* x, int64_t batch, int64_t in_h, int64_t in_w, int8_t* out, cudaStream_t stream,
                     GemmEngine engine) const {
  const Conv2dShape s = shape_for(batch, in_h, in_w);
  DeviceGuard guard(device_);
  const ConvGeometry g = geometry(s, input_zero_point_);
  const Requant r{m0_.as<int32_t>(), ec_.as<int32_t>(), zero_point_, act_min_, act_max_, rounding_, overflow_};
  const int64_t rows = s.out_rows();

  // Under "raise", a failure is reported through a device word: the smallest failing linear index.
  const bool report = overflow_ == fp::Overflow::kRaise && !unsafe_host_.empty();
  DeviceBuffer error;
  unsigned long long* error_ptr = nullptr;
  if (report) {
    error = DeviceBuffer(sizeof(unsigned long long), device_, stream);
    check(cudaMemsetAsync(error.data(), 0xff, sizeof(unsigned long long), stream), "cudaMemsetAsync");
    error_ptr = error.as<unsigned long long>();
  }
  const bool channels_vec4 = s.in_c_per_group % 4 == 0 && aligned(x, 4);

  if (std::strcmp(path_, "gemm") == 0) {
    if (engine == GemmEngine::kAuto) engine = has_mma_ ? GemmEngine::kMma : GemmEngine::kDp4a;
    if (engine == GemmEngine::kMma && !has_mma_)
      throw InvalidArgument("engine 'mma' needs int8 tensor cores (compute capability >= 8.0)");
    GemmArgs a{g, x, w_gemm_.as<int8_t>(), offset_.as<int32_t>(), r, out, rows, k_pad_, 0};
    const int vec = s.in_c % 16 == 0 && aligned(x, 16) ? 16 : s.in_c % 4 == 0 && aligned(x, 4) ? 4 : 1;
    const bool mma = engine == GemmEngine::kMma;
    const int64_t max_rows_per_launch = int64_t{65535} * kTileM;
    for (int64_t row0 = 0; row0 < rows; row0 += max_rows_per_launch) {
      a.row0 = row0;
      const int64_t launch_rows = std::min(rows - row0, max_rows_per_launch);
      const dim3 grid(static_cast<unsigned>(oc_pad_ / kTileN),
                      static_cast<unsigned>((launch_rows + kTileM - 1) / kTileM));
#define NPUQ_GEMM(V, M) gemm_kernel<V, M><<<grid, kThreads, 0, stream>>>(a)
      if (vec == 16) mma ? NPUQ_GEMM(16, true) : NPUQ_GEMM(16, false);
      else if (vec == 4) mma ? NPUQ_GEMM(4, true) : NPUQ_GEMM(4, false);
      else mma ? NPUQ_GEMM(1, true) : NPUQ_GEMM(1, false);
#undef NPUQ_GEMM
    }
    check_launch("gemm_kernel");
    if (!unsafe_host_.empty() && overflow_ != fp::Overflow::kWrap) {
      // the modular result of the GEMM is the "wrap" policy; the others need the exact accumulator
      const int64_t work = rows * static_cast<int64_t>(unsafe_host_.size());
      direct_kernel<<<blocks_for(work, 256), 256, 0, stream>>>(g, x, w_ohwi_.as<int8_t>(), bias_.as<int32_t>(), r,
                                                               unsafe_.as<int32_t>(), unsafe_host_.size(),
                                                               channels_vec4, out, error_ptr);
      check_launch("direct_kernel (unsafe channels)");
    }
  } else if (std::strcmp(path_, "depthwise") == 0) {
    const bool vec4 = s.out_c_per_group == 1 && s.out_c % 4 == 0 && aligned(x, 4) && aligned(out, 4);
    if (vec4) {
      depthwise_kernel<4><<<blocks_for(rows * s.out_c / 4, 256), 256, 0, stream>>>(
          g, x, w_taps_.as<int8_t>(), bias_.as<int32_t>(), r, out, error_ptr);
    } else {
      depthwise_kernel<1><<<blocks_for(rows * s.out_c, 256), 256, 0, stream>>>(g, x, w_taps_.as<int8_t>(),
                                                                               bias_.as<int32_t>(), r, out, error_ptr);
    }
    check_launch("depthwise_kernel");
  } else {
    direct_kernel<<<blocks_for(rows * s.out_c, 256), 256, 0, stream>>>(
        g, x, w_ohwi_.as<int8_t>(), bias_.as<int32_t>(), r, nullptr, s.out_c, channels_vec4, out, error_ptr);
    check_launch("direct_kernel");
  }

  if (report) {
    unsigned long long first = 0;
    check(cudaMemcpyAsync(&first, error_ptr, sizeof(first), cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    if (first != ULLONG_MAX) {
      const int64_t row = static_cast<int64_t>(first / s.out_c), oc = static_cast<int64_t>(first % s.out_c);
      DeviceBuffer value(sizeof(int64_t), device_, stream);
      one_accumulator_kernel<<<1, 1, 0, stream>>>(g, x, w_ohwi_.as<int8_t>(), bias_.as<int32_t>(), row, oc,
                                                  value.as<int64_t>());
      check_launch("one_accumulator_kernel");
      int64_t v = 0;
      check(cudaMemcpyAsync(&v, value.data(), sizeof(v), cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
      check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
      throw AccumulatorOverflow(describe_overflow(op_name_, row, oc, v));
    }
  }
}

}  // namespace cuda
}  // namespace npuq
