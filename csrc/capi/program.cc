// The C ABI's whole-program entry points (npuq.h, "whole programs"): load a program file, describe its
// ops, run it keeping every op's output, run one op alone. The loader and the op runner are
// program_model.cc and program_exec.cc; this file checks the caller's arguments and owns the objects.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "capi/capi_internal.h"
#include "capi/program_model.h"
#include "cpu/cpu.h"
#include "npuq.h"

struct npuq_program {
  std::unique_ptr<npuq::capi::Program> program;
};

// Every value of one run, [batch][shape] each; a view (flatten) shares its input's buffer.
struct npuq_run {
  int64_t batch = 0;
  int64_t output = 0;
  std::vector<std::unique_ptr<int8_t[]>> buffers;
  std::vector<const int8_t*> values;  // [0]: the program input, [1 + i]: op i
  std::vector<int64_t> counts;        // elements of each value, batch included
};

namespace {

using npuq::capi::checked_product;
using npuq::capi::guarded;
using npuq::capi::invalid;
using npuq::capi::Program;
using npuq::capi::require_count;
using npuq::capi::require_pointer;
using npuq::capi::ValueShape;

constexpr uint32_t kKnownLoadFlags = NPUQ_LOAD_SKIP_DIGEST;

void require_threads(int threads) {
  if (threads < 0 || threads > npuq::cpu::kMaxThreads)
    invalid("threads is " + std::to_string(threads) + "; it must be 0 (npuq's default) or 1 to " +
            std::to_string(npuq::cpu::kMaxThreads));
}

void require_batch(int64_t batch) {
  if (batch < 1) invalid("batch is " + std::to_string(batch) + "; it must be at least 1");
}

const Program& program_of(const npuq_program* program) {
  require_pointer(program, "program");
  return *program->program;
}

void require_op_index(const Program& p, int64_t op_index, bool input_allowed) {
  const int64_t n = static_cast<int64_t>(p.ops.size());
  if (op_index < (input_allowed ? -1 : 0) || op_index >= n)
    invalid("op_index is " + std::to_string(op_index) + "; the program has " + std::to_string(n) + " ops (0 to " +
            std::to_string(n - 1) + (input_allowed ? ", or -1 for the program input)" : ")"));
}

void fill_value_info(const ValueShape& s, int32_t zero_point, double scale, npuq_value_info* info) {
  *info = npuq_value_info{};
  info->ndim = s.ndim;
  for (int k = 0; k < s.ndim; ++k) info->shape[k] = s.dims[k];
  info->count = s.count();
  info->zero_point = zero_point;
  info->scale = scale;
}

}  // namespace

extern "C" {

NPUQ_API npuq_status npuq_program_load(const char* path, uint32_t flags, npuq_program** program) {
  return guarded("npuq_program_load", [&] {
    require_pointer(path, "path");
    require_pointer(program, "program");
    if (flags & ~kKnownLoadFlags)
      invalid("flags is " + std::to_string(flags) + "; the only flag is NPUQ_LOAD_SKIP_DIGEST (" +
              std::to_string(NPUQ_LOAD_SKIP_DIGEST) + ")");
    auto loaded = std::make_unique<npuq_program>();
    loaded->program = npuq::capi::load_program(path, (flags & NPUQ_LOAD_SKIP_DIGEST) != 0);
    *program = loaded.release();
  });
}

NPUQ_API void npuq_program_free(npuq_program* program) { delete program; }

NPUQ_API npuq_status npuq_program_input_info(const npuq_program* program, npuq_value_info* info) {
  return guarded("npuq_program_input_info", [&] {
    const Program& p = program_of(program);
    require_pointer(info, "info");
    fill_value_info(p.input_shape, p.input_zero_point, p.input_scale, info);
  });
}

NPUQ_API npuq_status npuq_program_op_count(const npuq_program* program, int64_t* count) {
  return guarded("npuq_program_op_count", [&] {
    const Program& p = program_of(program);
    require_pointer(count, "count");
    *count = static_cast<int64_t>(p.ops.size());
  });
}

NPUQ_API npuq_status npuq_program_op_info(const npuq_program* program, int64_t op_index, npuq_op_info* info) {
  return guarded("npuq_program_op_info", [&] {
    const Program& p = program_of(program);
    require_pointer(info, "info");
    require_op_index(p, op_index, false);
    const npuq::capi::ProgramOp& op = p.ops[static_cast<size_t>(op_index)];
    npuq_op_info out{};
    out.name = op.name.c_str();
    out.kind = op.kind_name.c_str();
    out.input_count = static_cast<int32_t>(op.inputs.size());  // at most 64 (the loader's check)
    for (size_t k = 0; k < op.inputs.size(); ++k) out.inputs[k] = op.inputs[k];
    fill_value_info(op.shape, op.zero_point, op.scale, &out.output);
    *info = out;
  });
}

NPUQ_API npuq_status npuq_program_output_op(const npuq_program* program, int64_t* op_index) {
  return guarded("npuq_program_output_op", [&] {
    const Program& p = program_of(program);
    require_pointer(op_index, "op_index");
    *op_index = p.output;
  });
}

NPUQ_API npuq_status npuq_program_find_op(const npuq_program* program, const char* name, int64_t* op_index) {
  return guarded("npuq_program_find_op", [&] {
    const Program& p = program_of(program);
    require_pointer(name, "name");
    require_pointer(op_index, "op_index");
    auto it = p.by_name.find(name);
    *op_index = it == p.by_name.end() ? -1 : it->second;
  });
}

NPUQ_API npuq_status npuq_program_run(const npuq_program* program, const int8_t* x, int64_t batch, int64_t x_count,
                                      int threads, npuq_run** run) {
  return guarded("npuq_program_run", [&] {
    const Program& p = program_of(program);
    require_pointer(x, "x");
    require_pointer(run, "run");
    require_batch(batch);
    require_threads(threads);
    const int64_t n_ops = static_cast<int64_t>(p.ops.size());
    require_count(x_count, checked_product({batch, p.input_shape.count()}, "batch x the input shape"), "x_count");
    auto r = std::make_unique<npuq_run>();
    r->batch = batch;
    r->output = p.output;
    r->values.resize(static_cast<size_t>(n_ops + 1));
    r->counts.resize(static_cast<size_t>(n_ops + 1));
    // every buffer first: a batch too large for memory fails before any op runs
    r->counts[0] = x_count;
    r->buffers.emplace_back(new int8_t[static_cast<size_t>(x_count)]);
    std::memcpy(r->buffers.back().get(), x, static_cast<size_t>(x_count));
    r->values[0] = r->buffers.back().get();
    std::vector<int8_t*> outputs(static_cast<size_t>(n_ops), nullptr);
    for (int64_t i = 0; i < n_ops; ++i) {
      const npuq::capi::ProgramOp& op = p.ops[static_cast<size_t>(i)];
      r->counts[i + 1] = checked_product({batch, op.shape.count()}, "batch x an op's output shape");
      if (op.is_view()) continue;
      r->buffers.emplace_back(new int8_t[static_cast<size_t>(r->counts[i + 1])]);
      outputs[i] = r->buffers.back().get();
    }
    std::vector<const int8_t*> inputs;
    for (int64_t i = 0; i < n_ops; ++i) {
      const npuq::capi::ProgramOp& op = p.ops[static_cast<size_t>(i)];
      if (op.is_view()) {  // the same bytes in the same order
        r->values[i + 1] = r->values[op.inputs[0] + 1];
        continue;
      }
      inputs.clear();
      for (int64_t src : op.inputs) inputs.push_back(r->values[src + 1]);
      npuq::capi::run_op(p, i, inputs.data(), batch, outputs[i], threads);
      r->values[i + 1] = outputs[i];
    }
    *run = r.release();
  });
}

NPUQ_API void npuq_run_free(npuq_run* run) { delete run; }

NPUQ_API npuq_status npuq_run_value(const npuq_run* run, int64_t op_index, const int8_t** data, int64_t* count) {
  return guarded("npuq_run_value", [&] {
    require_pointer(run, "run");
    require_pointer(data, "data");
    require_pointer(count, "count");
    const int64_t n = static_cast<int64_t>(run->values.size()) - 1;
    if (op_index < -1 || op_index >= n)
      invalid("op_index is " + std::to_string(op_index) + "; the run has " + std::to_string(n) + " ops (0 to " +
              std::to_string(n - 1) + ", or -1 for the program input)");
    *data = run->values[static_cast<size_t>(op_index + 1)];
    *count = run->counts[static_cast<size_t>(op_index + 1)];
  });
}

NPUQ_API npuq_status npuq_run_output(const npuq_run* run, const int8_t** data, int64_t* count) {
  return guarded("npuq_run_output", [&] {
    require_pointer(run, "run");
    require_pointer(data, "data");
    require_pointer(count, "count");
    *data = run->values[static_cast<size_t>(run->output + 1)];
    *count = run->counts[static_cast<size_t>(run->output + 1)];
  });
}

NPUQ_API npuq_status npuq_program_run_op(const npuq_program* program, int64_t op_index, const int8_t* const* inputs,
                                         const int64_t* input_counts, int32_t input_count, int64_t batch, int8_t* out,
                                         int64_t out_count, int threads) {
  return guarded("npuq_program_run_op", [&] {
    const Program& p = program_of(program);
    require_op_index(p, op_index, false);
    const npuq::capi::ProgramOp& op = p.ops[static_cast<size_t>(op_index)];
    require_pointer(inputs, "inputs");
    require_pointer(input_counts, "input_counts");
    require_pointer(out, "out");
    if (input_count != static_cast<int32_t>(op.inputs.size()))
      invalid("input_count is " + std::to_string(input_count) + " but op " + std::to_string(op_index) + " '" + op.name +
              "' (" + op.kind_name + ") reads " + std::to_string(op.inputs.size()) + " input(s)");
    require_batch(batch);
    require_threads(threads);
    for (int32_t k = 0; k < input_count; ++k) {
      const std::string name = "inputs[" + std::to_string(k) + "]";
      require_pointer(inputs[k], name.c_str());
      const std::string count_name = "input_counts[" + std::to_string(k) + "]";
      require_count(input_counts[k], checked_product({batch, op.input_shapes[k].count()}, "batch x an input's shape"),
                    count_name.c_str());
    }
    require_count(out_count, checked_product({batch, op.shape.count()}, "batch x the op's output shape"), "out_count");
    npuq::capi::run_op(p, op_index, inputs, batch, out, threads);
  });
}

}  // extern "C"
