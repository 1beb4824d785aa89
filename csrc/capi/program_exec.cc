// Running one op of a loaded program on the CPU fast kernels: what each kind's `run` in the op table
// (python/npuq/npu/optable.py, optable_format2.py) does through npuq.ops, called here directly, with the
// program's rounding and overflow policy. Bit for bit npuq.Emulator's results.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "capi/capi_internal.h"
#include "capi/program_model.h"
#include "npuq/eltwise_ops.h"
#include "npuq/resample_ops.h"

namespace npuq {
namespace capi {
namespace {

// The emulator's bounds on one native call (npuq.npu.emulator): BATCH_BYTES of values per call, and
// SCRATCH_BYTES of per-thread scratch for all threads together. Neither changes a result.
constexpr int64_t kBatchBytes = int64_t{2} << 30;
constexpr int64_t kScratchBytes = int64_t{256} << 20;

int32_t i32(int64_t v) { return static_cast<int32_t>(v); }

// One native call on images [0, n) of the op's inputs (`in`, already offset to the first image) into out.
void run_images(const Program& p, const ProgramOp& op, const int8_t* const* in, int64_t n, int8_t* out, int threads) {
  const ValueShape& x = op.input_shapes[0];
  const int64_t x_count = x.count();
  switch (op.kind) {
    case OpKind::kConv2d: op.plan->run(in[0], n, x.dims[0], x.dims[1], out, threads); return;
    case OpKind::kFullyConnected:  // a 1x1 convolution of (N, 1, 1, K)
      op.plan->run(in[0], n, 1, 1, out, threads);
      return;
    case OpKind::kAdd: {
      AddParams a;
      a.a_zero_point = i32(op.attr("a_zero_point"));
      a.a_multiplier = i32(op.attr("a_multiplier"));
      a.a_exponent = i32(op.attr("a_exponent"));
      a.b_zero_point = i32(op.attr("b_zero_point"));
      a.b_multiplier = i32(op.attr("b_multiplier"));
      a.b_exponent = i32(op.attr("b_exponent"));
      a.out_zero_point = i32(op.attr("output_zero_point"));
      a.out_multiplier = i32(op.attr("output_multiplier"));
      a.out_exponent = i32(op.attr("output_exponent"));
      a.left_shift = i32(op.attr("left_shift"));
      a.act_min = i32(op.attr("act_min"));
      a.act_max = i32(op.attr("act_max"));
      a.rounding = p.rounding;
      cpu::add(in[0], in[1], out, n * x_count, a, threads);
      return;
    }
    case OpKind::kAvgPool2d:
    case OpKind::kGlobalAvgPool: {
      Pool2dParams q;
      q.batch = n, q.in_h = x.dims[0], q.in_w = x.dims[1], q.channels = x.dims[2];
      if (op.kind == OpKind::kAvgPool2d) {
        const auto& kernel = op.attr_list("kernel");
        const auto& stride = op.attr_list("stride");
        const auto& pad = op.attr_list("padding");
        q.kernel_h = kernel[0], q.kernel_w = kernel[1], q.stride_h = stride[0], q.stride_w = stride[1];
        q.pad_top = pad[0], q.pad_bottom = pad[1], q.pad_left = pad[2], q.pad_right = pad[3];
        q.count_include_pad = op.attr("count_include_pad") != 0;
        q.input_zero_point = i32(op.attr("input_zero_point"));
      } else {  // npuq.ops.global_avg_pool: one window of the whole image, zero point 0, no padding
        q.kernel_h = q.stride_h = x.dims[0];
        q.kernel_w = q.stride_w = x.dims[1];
      }
      q.act_min = i32(op.attr("act_min"));
      q.act_max = i32(op.attr("act_max"));
      cpu::avg_pool2d(in[0], out, q, threads);
      return;
    }
    case OpKind::kMaxPool2d: {
      MaxPool2dParams q;
      const auto& kernel = op.attr_list("kernel");
      const auto& stride = op.attr_list("stride");
      const auto& pad = op.attr_list("padding");
      q.batch = n, q.in_h = x.dims[0], q.in_w = x.dims[1], q.channels = x.dims[2];
      q.kernel_h = kernel[0], q.kernel_w = kernel[1], q.stride_h = stride[0], q.stride_w = stride[1];
      q.pad_top = pad[0], q.pad_bottom = pad[1], q.pad_left = pad[2], q.pad_right = pad[3];
      q.ceil_mode = op.attr("ceil_mode") != 0;  // a format-1 program's default: false
      cpu::max_pool2d(in[0], out, q, threads);
      return;
    }
    case OpKind::kFlatten:  // (H, W, C) order: the bytes as they are
      if (out != in[0]) std::memcpy(out, in[0], static_cast<size_t>(n * x_count));
      return;
    case OpKind::kLut: cpu::lut(in[0], out, n * x_count, op.table.data(), threads); return;
    case OpKind::kMul: {
      MulParams q;
      q.batch = n;
      q.positions = x.ndim == 3 ? x.dims[0] * x.dims[1] : 1;
      q.channels = x.last();
      q.broadcast_b = op.input_shapes[1] != x;  // the (1, 1, C) squeeze-excitation scale
      q.a_zero_point = i32(op.attr("a_zero_point"));
      q.b_zero_point = i32(op.attr("b_zero_point"));
      q.out_zero_point = i32(op.attr("output_zero_point"));
      q.multiplier = i32(op.attr("multiplier"));
      q.exponent = i32(op.attr("exponent"));
      q.act_min = i32(op.attr("act_min"));
      q.act_max = i32(op.attr("act_max"));
      q.rounding = p.rounding;
      cpu::mul(in[0], in[1], out, q, threads);
      return;
    }
    case OpKind::kConcat: {
      const auto& zps = op.attr_list("zero_points");
      const auto& m0s = op.attr_list("multipliers");
      const auto& exps = op.attr_list("exponents");
      std::vector<ConcatInput> inputs(op.inputs.size());
      for (size_t k = 0; k < inputs.size(); ++k) {
        inputs[k].data = in[k];
        inputs[k].channels = op.input_shapes[k].last();
        inputs[k].zero_point = i32(zps[k]);
        inputs[k].multiplier = i32(m0s[k]);
        inputs[k].exponent = i32(exps[k]);
      }
      ConcatParams q;
      q.rows = n * (x_count / x.last());
      q.num_inputs = static_cast<int>(inputs.size());
      q.inputs = inputs.data();
      q.out_zero_point = i32(op.attr("output_zero_point"));
      q.rounding = p.rounding;
      cpu::concat(out, q, threads);
      return;
    }
    case OpKind::kChannelShuffle:
      cpu::channel_shuffle(in[0], out, n * x.dims[0] * x.dims[1], x.dims[2], op.attr("groups"), threads);
      return;
    case OpKind::kSlice: {
      const int64_t c = x.last(), begin = op.attr("begin"), width = op.attr("end") - begin;
      const int64_t rows = n * (x_count / c);
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(out + r * width, in[0] + r * c + begin, static_cast<size_t>(width));
      return;
    }
    case OpKind::kPad: {
      const auto& pad = op.attr_list("padding");
      const ValueShape& y = op.shape;
      const int64_t row = x.dims[1] * x.dims[2];
      std::memset(out, static_cast<int>(static_cast<int8_t>(op.attr("value"))), static_cast<size_t>(n * y.count()));
      for (int64_t i = 0; i < n; ++i)
        for (int64_t h = 0; h < x.dims[0]; ++h)
          std::memcpy(out + ((i * y.dims[0] + h + pad[0]) * y.dims[1] + pad[2]) * y.dims[2],
                      in[0] + (i * x.dims[0] + h) * row, static_cast<size_t>(row));
      return;
    }
    case OpKind::kUpsample: {
      UpsampleParams q;
      const auto& f = op.attr_list("scale");
      q.batch = n, q.in_h = x.dims[0], q.in_w = x.dims[1], q.channels = x.dims[2];
      q.factor_h = f[0], q.factor_w = f[1];
      q.mode = op.attrs.at("mode").text == "bilinear" ? UpsampleMode::kBilinear : UpsampleMode::kNearest;
      q.zero_point = i32(op.attr("zero_point"));
      cpu::upsample(in[0], out, q, threads);
      return;
    }
    case OpKind::kMean: {
      MeanParams q;
      q.batch = n, q.in_h = x.dims[0], q.in_w = x.dims[1], q.channels = x.dims[2];
      q.input_zero_point = i32(op.attr("input_zero_point"));
      q.output_zero_point = i32(op.attr("output_zero_point"));
      q.multiplier = i32(op.attr("multiplier"));
      q.exponent = i32(op.attr("exponent"));
      q.act_min = i32(op.attr("act_min"));
      q.act_max = i32(op.attr("act_max"));
      q.tflite_rounding = op.attr("tflite_rounding") != 0;
      q.rounding = p.rounding;
      cpu::mean(in[0], out, q, threads);
      return;
    }
  }
  throw InvalidArgument("no kernel for op kind " + op.kind_name);
}

}  // namespace

void run_op(const Program& p, int64_t index, const int8_t* const* inputs, int64_t batch, int8_t* out, int threads) {
  const ProgramOp& op = p.ops[static_cast<size_t>(index)];
  const Footprint& f = op.footprint;
  // Fewer threads where their scratch together would pass kScratchBytes (the emulator's _threads_for).
  if (f.scratch_bytes > 0) {
    const int64_t cap = std::max<int64_t>(1, kScratchBytes / f.scratch_bytes);
    const int wanted = threads ? threads : cpu::default_threads();
    if (wanted > cap) threads = static_cast<int>(cap);
  }
  // A flatten reads nothing of its own (footprint 0): its call holds its input and output.
  const int64_t per_image =
      std::max<int64_t>(1, op.is_view() ? 2 * op.shape.count() : f.input_bytes + f.output_bytes + f.intermediate_bytes);
  const int64_t step = std::max<int64_t>(1, std::min(batch, kBatchBytes / per_image));
  const size_t n_in = op.inputs.size();
  std::vector<const int8_t*> in(n_in);
  const int64_t out_count = op.shape.count();
  for (int64_t lo = 0; lo < batch; lo += step) {
    const int64_t n = std::min(step, batch - lo);
    for (size_t k = 0; k < n_in; ++k) in[k] = inputs[k] + lo * op.input_shapes[k].count();
    try {
      run_images(p, op, in.data(), n, out + lo * out_count, threads);
    } catch (const AccumulatorOverflow& e) {
      // the kernel names its row within this call: the image is lo + row / (H_out * W_out)
      throw AccumulatorOverflow("op " + std::to_string(index) + " '" + op.name + "' (" + op.kind_name + ", images " +
                                std::to_string(lo) + " to " + std::to_string(lo + n - 1) + "): " + e.what());
    } catch (const InvalidArgument& e) {
      // the loader mirrors the kernels' checks; one that still refuses is the program's fault, not the call's
      throw Error(NPUQ_PROGRAM_ERROR, "op " + std::to_string(index) + " '" + op.name + "' (" + op.kind_name +
                                          "): the native kernel refuses it: " + e.what());
    }
  }
}

}  // namespace capi
}  // namespace npuq
