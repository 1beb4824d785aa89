// The C ABI of the single ops: each function checks its pointers and element counts, converts its C
// struct into the kernels' params (npuq/ops.h, eltwise_ops.h, resample_ops.h) and calls the same CPU fast
// path as the Python API; the kernels' validate() checks every value. docs/c_api.md documents them.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "capi/capi_internal.h"
#include "cpu/cpu.h"
#include "npuq/eltwise_ops.h"
#include "npuq/resample_ops.h"
#include "reference/reference.h"

namespace npuq {
namespace capi {
namespace {

// A layer's requantization with per-layer values broadcast to every channel (the kernels read one entry
// per channel). RequantParams points into the vectors: keep this alive while it is used.
struct Requant {
  std::vector<int32_t> multiplier, exponent;
  std::vector<uint8_t> shift;
  RequantParams params;

  Requant(const npuq_requant* r, int64_t channels, const char* op) {
    require_pointer(r, "requant");
    require_pointer(r->multiplier, "requant.multiplier");
    require_pointer(r->exponent, "requant.exponent");
    if (channels < 1) invalid(std::string(op) + ": the layer has " + std::to_string(channels) + " channels");
    if (r->param_count != 1 && r->param_count != channels)
      invalid("requant.param_count is " + std::to_string(r->param_count) + ": it must be 1 (per layer) or " +
              std::to_string(channels) + " (per channel)");
    const int64_t n = r->param_count;
    multiplier.resize(channels);
    exponent.resize(channels);
    for (int64_t c = 0; c < channels; ++c) {
      multiplier[c] = r->multiplier[n == 1 ? 0 : c];
      exponent[c] = r->exponent[n == 1 ? 0 : c];
    }
    if (r->shift) shift.assign(r->shift, r->shift + channels);
    params.channels = channels;
    params.multiplier = multiplier.data();
    params.exponent = exponent.data();
    params.shift = r->shift ? shift.data() : nullptr;
    params.zero_point = r->zero_point;
    params.act_min = r->act_min;
    params.act_max = r->act_max;
    params.rounding = rounding_of(r->rounding);
    validate(params, op);
  }
};

int threads_of(int threads) { return cpu::resolve_threads(threads); }

Conv2dParams conv_layer(const npuq_conv2d_params* p, const RequantParams& requant, const char* op) {
  require_pointer(p, "params");
  Conv2dParams c;
  c.shape.in_c = p->in_channels;
  c.shape.out_c = p->out_channels;
  c.shape.kernel_h = p->kernel_h;
  c.shape.kernel_w = p->kernel_w;
  c.shape.stride_h = p->stride_h;
  c.shape.stride_w = p->stride_w;
  c.shape.dilation_h = p->dilation_h;
  c.shape.dilation_w = p->dilation_w;
  c.shape.pad_top = p->pad_top;
  c.shape.pad_bottom = p->pad_bottom;
  c.shape.pad_left = p->pad_left;
  c.shape.pad_right = p->pad_right;
  c.shape.groups = p->groups;
  c.input_zero_point = p->input_zero_point;
  c.overflow = overflow_of(p->overflow);
  c.requant = requant;
  c.op = op;
  return c;
}

// The layer's weight count before anything reads the weights (groups must divide in_channels first).
int64_t weight_count_of(const npuq_conv2d_params* p) {
  if (p->groups < 1 || p->in_channels < 1 || p->in_channels % p->groups)
    invalid("groups (" + std::to_string(p->groups) + ") must be >= 1 and divide in_channels (" +
            std::to_string(p->in_channels) + ")");
  return checked_product({p->out_channels, p->kernel_h, p->kernel_w, p->in_channels / p->groups}, "weight");
}

void check_weights(const npuq_conv2d_params* p, const int8_t* weight, int64_t weight_count, const int32_t* bias,
                   int64_t bias_count) {
  require_pointer(weight, "weight");
  require_count(weight_count, weight_count_of(p), "weight_count");
  if (bias) require_count(bias_count, p->out_channels, "bias_count");
  else if (bias_count != 0) invalid("bias is NULL but bias_count is " + std::to_string(bias_count));
  validate_weights(weight, weight_count);
}

// The window of a pooling op, the same fields in Pool2dParams and MaxPool2dParams.
template <typename Params>
Params pool_window(const npuq_pool2d_params* p) {
  Params q;
  q.batch = p->batch;
  q.in_h = p->in_h;
  q.in_w = p->in_w;
  q.channels = p->channels;
  q.kernel_h = p->kernel_h;
  q.kernel_w = p->kernel_w;
  q.stride_h = p->stride_h;
  q.stride_w = p->stride_w;
  q.pad_top = p->pad_top;
  q.pad_bottom = p->pad_bottom;
  q.pad_left = p->pad_left;
  q.pad_right = p->pad_right;
  return q;
}

// Checks the element counts of a validated pooling and runs it.
template <typename Params, typename Kernel>
void run_pool(const Params& q, const int8_t* x, int64_t x_count, int8_t* out, int64_t out_count, int threads,
              Kernel kernel) {
  require_count(x_count, checked_product({q.batch, q.in_h, q.in_w, q.channels}, "x"), "x_count");
  require_count(out_count, checked_product({q.batch, q.out_h, q.out_w, q.channels}, "out"), "out_count");
  kernel(x, out, q, threads_of(threads));
}

}  // namespace
}  // namespace capi
}  // namespace npuq

struct npuq_conv2d_plan {
  std::unique_ptr<npuq::cpu::Conv2dPlan> plan;
};

namespace npuq {
namespace capi {
namespace {

std::unique_ptr<npuq_conv2d_plan> make_plan(const npuq_conv2d_params* p, const int8_t* weight, int64_t weight_count,
                                            const int32_t* bias, int64_t bias_count) {
  require_pointer(p, "params");
  check_weights(p, weight, weight_count, bias, bias_count);
  const Requant rq(&p->requant, p->out_channels, "conv2d");
  const Conv2dParams layer = conv_layer(p, rq.params, "conv2d");
  auto made = std::make_unique<npuq_conv2d_plan>();
  made->plan = std::make_unique<cpu::Conv2dPlan>(layer, weight, bias);
  return made;
}

void run_plan(const npuq_conv2d_plan* plan, const int8_t* x, int64_t batch, int64_t in_h, int64_t in_w, int64_t x_count,
              int8_t* out, int64_t out_count, int threads) {
  require_pointer(plan, "plan");
  require_pointer(x, "x");
  require_pointer(out, "out");
  const Conv2dShape s = plan->plan->shape_for(batch, in_h, in_w);
  require_count(x_count, checked_product({batch, in_h, in_w, s.in_c}, "x"), "x_count");
  require_count(out_count, checked_product({batch, s.out_h, s.out_w, s.out_c}, "out"), "out_count");
  plan->plan->run(x, batch, in_h, in_w, out, threads_of(threads));
}

}  // namespace
}  // namespace capi
}  // namespace npuq

using namespace npuq;
using capi::guarded;
using capi::invalid;
using capi::require_count;
using capi::require_pointer;

extern "C" {

NPUQ_API npuq_status npuq_quantize_multiplier(double real, int32_t* multiplier, int32_t* exponent) {
  return guarded("npuq_quantize_multiplier", [&] {
    require_pointer(multiplier, "multiplier");
    require_pointer(exponent, "exponent");
    const fp::QuantizedMultiplier q = fp::quantize_multiplier(real);
    using S = fp::QuantizedMultiplier::Status;
    if (q.status == S::kInvalid) invalid("real must be positive and finite, got " + std::to_string(real));
    if (q.status == S::kTooLarge)
      invalid("real = " + std::to_string(real) + " needs an exponent above " + std::to_string(fp::kMaxExponent));
    *multiplier = q.m0;
    *exponent = q.exponent;
  });
}

NPUQ_API npuq_status npuq_requantize_one(int32_t acc, int32_t multiplier, int32_t exponent, uint32_t shift,
                                         int32_t zero_point, int32_t act_min, int32_t act_max, int32_t rounding,
                                         int8_t* out) {
  return guarded("npuq_requantize_one", [&] {
    require_pointer(out, "out");
    if (shift > 15) invalid("shift must be in [0, 15], got " + std::to_string(shift));
    const uint8_t s = static_cast<uint8_t>(shift);
    RequantParams r;
    r.channels = 1;
    r.multiplier = &multiplier;
    r.exponent = &exponent;
    r.shift = &s;
    r.zero_point = zero_point;
    r.act_min = act_min;
    r.act_max = act_max;
    r.rounding = capi::rounding_of(rounding);
    validate(r, "requantize");
    *out = fp::requantize(acc, multiplier, r.effective_exponent(0), r.rounding, zero_point, act_min, act_max);
  });
}

NPUQ_API npuq_status npuq_requantize(const int32_t* acc, int64_t rows, int64_t channels, const npuq_requant* r,
                                     int8_t* out, int64_t out_count, int threads) {
  return guarded("npuq_requantize", [&] {
    require_pointer(acc, "acc");
    require_pointer(out, "out");
    if (rows < 1) invalid("rows must be >= 1, got " + std::to_string(rows));
    const capi::Requant rq(r, channels, "requantize");
    require_count(out_count, capi::checked_product({rows, channels}, "acc"), "out_count");
    cpu::requantize(acc, rows, out, rq.params, capi::threads_of(threads));
  });
}

NPUQ_API npuq_status npuq_conv2d_output_size(const npuq_conv2d_params* p, int64_t in_h, int64_t in_w, int64_t* out_h,
                                             int64_t* out_w) {
  return guarded("npuq_conv2d_output_size", [&] {
    require_pointer(p, "params");
    require_pointer(out_h, "out_h");
    require_pointer(out_w, "out_w");
    Conv2dParams c = capi::conv_layer(p, RequantParams{}, "conv2d");
    c.shape.batch = 1;
    c.shape.in_h = in_h;
    c.shape.in_w = in_w;
    validate(c.shape);
    *out_h = c.shape.out_h;
    *out_w = c.shape.out_w;
  });
}

NPUQ_API npuq_status npuq_conv2d_plan_create(const npuq_conv2d_params* p, const int8_t* weight, int64_t weight_count,
                                             const int32_t* bias, int64_t bias_count, npuq_conv2d_plan** plan) {
  return guarded("npuq_conv2d_plan_create", [&] {
    require_pointer(plan, "plan");
    *plan = nullptr;
    *plan = capi::make_plan(p, weight, weight_count, bias, bias_count).release();
  });
}

NPUQ_API void npuq_conv2d_plan_free(npuq_conv2d_plan* plan) { delete plan; }

NPUQ_API npuq_status npuq_conv2d_plan_run(const npuq_conv2d_plan* plan, const int8_t* x, int64_t batch, int64_t in_h,
                                          int64_t in_w, int64_t x_count, int8_t* out, int64_t out_count, int threads) {
  return guarded("npuq_conv2d_plan_run",
                 [&] { capi::run_plan(plan, x, batch, in_h, in_w, x_count, out, out_count, threads); });
}

NPUQ_API npuq_status npuq_conv2d(const npuq_conv2d_params* p, const int8_t* x, int64_t batch, int64_t in_h,
                                 int64_t in_w, int64_t x_count, const int8_t* weight, int64_t weight_count,
                                 const int32_t* bias, int64_t bias_count, int8_t* out, int64_t out_count, int threads) {
  return guarded("npuq_conv2d", [&] {
    const std::unique_ptr<npuq_conv2d_plan> plan = capi::make_plan(p, weight, weight_count, bias, bias_count);
    capi::run_plan(plan.get(), x, batch, in_h, in_w, x_count, out, out_count, threads);
  });
}

NPUQ_API npuq_status npuq_conv2d_accumulators(const npuq_conv2d_params* p, const int8_t* x, int64_t batch, int64_t in_h,
                                              int64_t in_w, int64_t x_count, const int8_t* weight, int64_t weight_count,
                                              const int32_t* bias, int64_t bias_count, int32_t* acc,
                                              int64_t acc_count) {
  return guarded("npuq_conv2d_accumulators", [&] {
    require_pointer(p, "params");
    require_pointer(x, "x");
    require_pointer(acc, "acc");
    capi::check_weights(p, weight, weight_count, bias, bias_count);
    Conv2dParams c = capi::conv_layer(p, RequantParams{}, "conv2d");
    c.shape.batch = batch;
    c.shape.in_h = in_h;
    c.shape.in_w = in_w;
    validate(c.shape);
    require_count(x_count, capi::checked_product({batch, in_h, in_w, c.shape.in_c}, "x"), "x_count");
    require_count(acc_count, capi::checked_product({batch, c.shape.out_h, c.shape.out_w, c.shape.out_c}, "acc"),
                  "acc_count");
    ref::conv2d_accumulators(x, weight, bias, acc, c);
  });
}

NPUQ_API npuq_status npuq_fully_connected(const npuq_fc_params* p, const int8_t* x, int64_t batch, int64_t x_count,
                                          const int8_t* weight, int64_t weight_count, const int32_t* bias,
                                          int64_t bias_count, int8_t* out, int64_t out_count, int threads) {
  return guarded("npuq_fully_connected", [&] {
    require_pointer(p, "params");
    require_pointer(x, "x");
    require_pointer(out, "out");
    npuq_conv2d_params conv{};
    conv.in_channels = p->in_features;
    conv.out_channels = p->out_features;
    conv.kernel_h = conv.kernel_w = conv.stride_h = conv.stride_w = conv.dilation_h = conv.dilation_w = 1;
    conv.groups = 1;
    conv.input_zero_point = p->input_zero_point;
    conv.overflow = p->overflow;
    capi::check_weights(&conv, weight, weight_count, bias, bias_count);
    require_count(x_count, capi::checked_product({batch, p->in_features}, "x"), "x_count");
    require_count(out_count, capi::checked_product({batch, p->out_features}, "out"), "out_count");
    const capi::Requant rq(&p->requant, p->out_features, "fully_connected");
    const Conv2dParams layer = capi::conv_layer(&conv, rq.params, "fully_connected");
    const cpu::Conv2dPlan plan(layer, weight, bias);
    plan.run(x, batch, 1, 1, out, capi::threads_of(threads));
  });
}

NPUQ_API npuq_status npuq_add(const npuq_add_params* p, const int8_t* a, const int8_t* b, int64_t count, int8_t* out,
                              int threads) {
  return guarded("npuq_add", [&] {
    require_pointer(p, "params");
    require_pointer(a, "a");
    require_pointer(b, "b");
    require_pointer(out, "out");
    if (count < 1) invalid("count must be >= 1, got " + std::to_string(count));
    AddParams q;
    q.a_zero_point = p->a_zero_point;
    q.a_multiplier = p->a_multiplier;
    q.a_exponent = p->a_exponent;
    q.b_zero_point = p->b_zero_point;
    q.b_multiplier = p->b_multiplier;
    q.b_exponent = p->b_exponent;
    q.out_zero_point = p->out_zero_point;
    q.out_multiplier = p->out_multiplier;
    q.out_exponent = p->out_exponent;
    q.left_shift = p->left_shift;
    q.act_min = p->act_min;
    q.act_max = p->act_max;
    q.rounding = capi::rounding_of(p->rounding);
    validate(q);
    cpu::add(a, b, out, count, q, capi::threads_of(threads));
  });
}

NPUQ_API npuq_status npuq_lut(const int8_t* x, int64_t count, const int8_t* table, int8_t* out, int threads) {
  return guarded("npuq_lut", [&] {
    require_pointer(x, "x");
    require_pointer(table, "table");
    require_pointer(out, "out");
    if (count < 1) invalid("count must be >= 1, got " + std::to_string(count));
    cpu::lut(x, out, count, table, capi::threads_of(threads));
  });
}

NPUQ_API npuq_status npuq_mul(const npuq_mul_params* p, const int8_t* a, int64_t a_count, const int8_t* b,
                              int64_t b_count, int8_t* out, int64_t out_count, int threads) {
  return guarded("npuq_mul", [&] {
    require_pointer(p, "params");
    require_pointer(a, "a");
    require_pointer(b, "b");
    require_pointer(out, "out");
    MulParams q;
    q.batch = p->batch;
    q.positions = p->positions;
    q.channels = p->channels;
    q.broadcast_b = p->broadcast_b != 0;
    q.a_zero_point = p->a_zero_point;
    q.b_zero_point = p->b_zero_point;
    q.out_zero_point = p->out_zero_point;
    q.multiplier = p->multiplier;
    q.exponent = p->exponent;
    q.act_min = p->act_min;
    q.act_max = p->act_max;
    q.rounding = capi::rounding_of(p->rounding);
    const int64_t n = capi::checked_product({q.batch, q.positions, q.channels}, "a");
    validate(q);
    require_count(a_count, n, "a_count");
    require_count(b_count, q.b_count(), "b_count");
    require_count(out_count, n, "out_count");
    cpu::mul(a, b, out, q, capi::threads_of(threads));
  });
}

NPUQ_API npuq_status npuq_concat(const npuq_concat_input* inputs, int32_t input_count, int64_t rows,
                                 int32_t out_zero_point, int32_t rounding, int8_t* out, int64_t out_count,
                                 int threads) {
  return guarded("npuq_concat", [&] {
    require_pointer(inputs, "inputs");
    require_pointer(out, "out");
    if (input_count < 2 || input_count > kMaxConcatInputs)
      invalid("input_count must be 2 to " + std::to_string(kMaxConcatInputs) + ", got " + std::to_string(input_count));
    std::vector<ConcatInput> in(input_count);
    int64_t channels = 0;
    for (int32_t i = 0; i < input_count; ++i) {
      const npuq_concat_input& c = inputs[i];
      const std::string name = "inputs[" + std::to_string(i) + "]";
      if (c.data == nullptr) invalid(name + ".data is NULL");
      require_count(c.count, capi::checked_product({rows, c.channels}, name.c_str()), (name + ".count").c_str());
      in[i] = ConcatInput{c.data, c.channels, c.zero_point, c.multiplier, c.exponent};
      channels += c.channels;  // each <= count <= 2^63 / rows; 64 of them checked below
    }
    ConcatParams q;
    q.rows = rows;
    q.num_inputs = input_count;
    q.inputs = in.data();
    q.out_zero_point = out_zero_point;
    q.rounding = capi::rounding_of(rounding);
    validate(q);
    require_count(out_count, capi::checked_product({rows, channels}, "out"), "out_count");
    cpu::concat(out, q, capi::threads_of(threads));
  });
}

NPUQ_API npuq_status npuq_pool2d_output_size(const npuq_pool2d_params* p, int max_pool, int64_t* out_h,
                                             int64_t* out_w) {
  return guarded("npuq_pool2d_output_size", [&] {
    require_pointer(p, "params");
    require_pointer(out_h, "out_h");
    require_pointer(out_w, "out_w");
    const bool ceil = max_pool && p->ceil_mode;
    const char* op = max_pool ? "max_pool2d" : "avg_pool2d";
    *out_h = pool_output_size(p->in_h, p->kernel_h, p->stride_h, p->pad_top, p->pad_bottom, ceil, op);
    *out_w = pool_output_size(p->in_w, p->kernel_w, p->stride_w, p->pad_left, p->pad_right, ceil, op);
  });
}

NPUQ_API npuq_status npuq_avg_pool2d(const npuq_pool2d_params* p, const int8_t* x, int64_t x_count, int8_t* out,
                                     int64_t out_count, int threads) {
  return guarded("npuq_avg_pool2d", [&] {
    require_pointer(p, "params");
    require_pointer(x, "x");
    require_pointer(out, "out");
    if (p->ceil_mode) invalid("ceil_mode is a max pooling option; average pooling takes 0");
    auto q = capi::pool_window<Pool2dParams>(p);
    q.count_include_pad = p->count_include_pad != 0;
    q.input_zero_point = p->input_zero_point;
    q.act_min = p->act_min;
    q.act_max = p->act_max;
    validate(q);
    capi::run_pool(q, x, x_count, out, out_count, threads,
                   [](const int8_t* a, int8_t* b, const Pool2dParams& c, int t) { cpu::avg_pool2d(a, b, c, t); });
  });
}

NPUQ_API npuq_status npuq_max_pool2d(const npuq_pool2d_params* p, const int8_t* x, int64_t x_count, int8_t* out,
                                     int64_t out_count, int threads) {
  return guarded("npuq_max_pool2d", [&] {
    require_pointer(p, "params");
    require_pointer(x, "x");
    require_pointer(out, "out");
    auto q = capi::pool_window<MaxPool2dParams>(p);
    q.ceil_mode = p->ceil_mode != 0;
    validate(q);
    capi::run_pool(q, x, x_count, out, out_count, threads,
                   [](const int8_t* a, int8_t* b, const MaxPool2dParams& c, int t) { cpu::max_pool2d(a, b, c, t); });
  });
}

NPUQ_API npuq_status npuq_mean(const npuq_mean_params* p, const int8_t* x, int64_t x_count, int8_t* out,
                               int64_t out_count, int threads) {
  return guarded("npuq_mean", [&] {
    require_pointer(p, "params");
    require_pointer(x, "x");
    require_pointer(out, "out");
    MeanParams q;
    q.batch = p->batch;
    q.in_h = p->in_h;
    q.in_w = p->in_w;
    q.channels = p->channels;
    q.input_zero_point = p->input_zero_point;
    q.output_zero_point = p->output_zero_point;
    q.multiplier = p->multiplier;
    q.exponent = p->exponent;
    q.act_min = p->act_min;
    q.act_max = p->act_max;
    q.tflite_rounding = p->tflite_rounding != 0;
    q.rounding = capi::rounding_of(p->rounding);
    validate(q);
    require_count(x_count, capi::checked_product({q.batch, q.in_h, q.in_w, q.channels}, "x"), "x_count");
    require_count(out_count, capi::checked_product({q.batch, q.channels}, "out"), "out_count");
    cpu::mean(x, out, q, capi::threads_of(threads));
  });
}

NPUQ_API npuq_status npuq_upsample(const int8_t* x, int64_t batch, int64_t in_h, int64_t in_w, int64_t channels,
                                   int64_t x_count, int64_t factor_h, int64_t factor_w, int32_t bilinear,
                                   int32_t zero_point, int8_t* out, int64_t out_count, int threads) {
  return guarded("npuq_upsample", [&] {
    require_pointer(x, "x");
    require_pointer(out, "out");
    if (bilinear != 0 && bilinear != 1) invalid("bilinear must be 0 or 1, got " + std::to_string(bilinear));
    UpsampleParams q;
    q.batch = batch;
    q.in_h = in_h;
    q.in_w = in_w;
    q.channels = channels;
    q.factor_h = factor_h;
    q.factor_w = factor_w;
    q.mode = bilinear ? UpsampleMode::kBilinear : UpsampleMode::kNearest;
    q.zero_point = zero_point;
    validate(q);
    require_count(x_count, capi::checked_product({batch, in_h, in_w, channels}, "x"), "x_count");
    require_count(out_count, capi::checked_product({batch, q.out_h, q.out_w, channels}, "out"), "out_count");
    cpu::upsample(x, out, q, capi::threads_of(threads));
  });
}

NPUQ_API npuq_status npuq_channel_shuffle(const int8_t* x, int64_t rows, int64_t channels, int64_t groups, int8_t* out,
                                          int64_t count, int threads) {
  return guarded("npuq_channel_shuffle", [&] {
    require_pointer(x, "x");
    require_pointer(out, "out");
    if (groups < 1) invalid("groups must be >= 1, got " + std::to_string(groups));
    require_count(count, capi::checked_product({rows, channels}, "x"), "count");
    cpu::channel_shuffle(x, out, rows, channels, groups, capi::threads_of(threads));
  });
}

NPUQ_API npuq_status npuq_channel_slice(const int8_t* x, int64_t rows, int64_t channels, int64_t begin, int64_t end,
                                        int8_t* out, int64_t out_count) {
  return guarded("npuq_channel_slice", [&] {
    require_pointer(x, "x");
    require_pointer(out, "out");
    if (rows < 1 || channels < 1)
      invalid("x is empty: rows " + std::to_string(rows) + ", channels " + std::to_string(channels));
    if (begin < 0 || begin >= end || end > channels)
      invalid("the slice [" + std::to_string(begin) + ", " + std::to_string(end) +
              ") must satisfy 0 <= begin < end <= " + std::to_string(channels));
    capi::checked_product({rows, channels}, "x");
    require_count(out_count, rows * (end - begin), "out_count");
    const int64_t width = end - begin;
    for (int64_t r = 0; r < rows; ++r) std::memcpy(out + r * width, x + r * channels + begin, width);
  });
}

NPUQ_API npuq_status npuq_pad(const int8_t* x, int64_t batch, int64_t in_h, int64_t in_w, int64_t channels,
                              int64_t x_count, int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right,
                              int32_t value, int8_t* out, int64_t out_count) {
  return guarded("npuq_pad", [&] {
    require_pointer(x, "x");
    require_pointer(out, "out");
    if (batch < 1 || in_h < 1 || in_w < 1 || channels < 1) invalid("x must be a non-empty (N, H, W, C) tensor");
    const int64_t limit = int64_t{1} << 31;  // a pad beyond int32 sizes is no NPU padding
    for (int64_t v : {pad_top, pad_bottom, pad_left, pad_right})
      if (v < 0 || v >= limit) invalid("padding must be in [0, 2^31), got " + std::to_string(v));
    if (value < -128 || value > 127) invalid("value must be an int8, got " + std::to_string(value));
    const int64_t oh = in_h + pad_top + pad_bottom, ow = in_w + pad_left + pad_right;
    require_count(x_count, capi::checked_product({batch, in_h, in_w, channels}, "x"), "x_count");
    require_count(out_count, capi::checked_product({batch, oh, ow, channels}, "out"), "out_count");
    std::memset(out, value, static_cast<size_t>(out_count));
    const int64_t row = in_w * channels;
    for (int64_t n = 0; n < batch; ++n)
      for (int64_t h = 0; h < in_h; ++h)
        std::memcpy(out + ((n * oh + h + pad_top) * ow + pad_left) * channels, x + (n * in_h + h) * row, row);
  });
}

}  // extern "C"
