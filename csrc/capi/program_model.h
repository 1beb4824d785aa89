// A loaded NPU program (docs/program.md) as the C ABI holds it: every op with its attributes, its shapes
// and, for the layers, its weights packed once for the CPU kernels. load_program() reads and validates a
// file with the checks of python/npuq/npu/program.py (the reference: a file the Python loader refuses is
// refused here, one it accepts is accepted, with messages in the same words); run_op() runs one op of it
// as npuq.Emulator does (program_exec.cc).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "cpu/cpu.h"
#include "npuq/fixedpoint.h"

namespace npuq {
namespace capi {

// Per-image shape of a value: (H, W, C) or (K,).
struct ValueShape {
  int ndim = 0;
  int64_t dims[3] = {0, 0, 0};

  int64_t count() const;  // elements per image (loaded programs: at most 2^31 - 1)
  int64_t last() const { return dims[ndim - 1]; }
  bool operator==(const ValueShape& o) const;
  bool operator!=(const ValueShape& o) const { return !(*this == o); }
};
std::string shape_str(const ValueShape& s);  // Python's tuple repr: "(6, 6, 3)", "(5,)"

enum class OpKind : int {
  kConv2d,
  kFullyConnected,
  kAdd,
  kAvgPool2d,
  kGlobalAvgPool,
  kMaxPool2d,
  kFlatten,
  kLut,
  kMul,
  kConcat,
  kChannelShuffle,
  kSlice,
  kPad,
  kUpsample,
  kMean,
};

// An attribute's value after its checks: an integer (also a bool), a list of integers or a string.
struct AttrValue {
  int64_t i = 0;
  std::vector<int64_t> list;
  std::string text;
};

// What running an op takes per image (OpFootprint of python/npuq/npu/opschema.py), in bytes and operations.
// Saturates at INT64_MAX instead of wrapping: every limit it is compared with is far below.
struct Footprint {
  int64_t input_bytes = 0, output_bytes = 0, intermediate_bytes = 0, scratch_bytes = 0, param_bytes = 0, work = 0;
  std::string temporary;
  int64_t working_set() const;
};

struct ProgramOp {
  std::string name;
  std::string kind_name;
  OpKind kind = OpKind::kFlatten;
  std::vector<int64_t> inputs;  // value indices: -1 the program input, else an earlier op
  std::vector<ValueShape> input_shapes;
  ValueShape shape;  // the output's, per image
  double scale = 1.0;
  int32_t zero_point = 0;
  std::map<std::string, AttrValue> attrs;  // every attribute of the kind (format-1 defaults filled in)
  Footprint footprint;
  std::unique_ptr<cpu::Conv2dPlan> plan;  // conv2d, fully_connected: packed at load
  std::vector<int8_t> table;              // lut

  int64_t attr(const char* key) const { return attrs.at(key).i; }
  const std::vector<int64_t>& attr_list(const char* key) const { return attrs.at(key).list; }
  bool is_view() const { return kind == OpKind::kFlatten; }
};

struct Program {
  std::string source;  // the path, as messages name it
  int format_version = 2;
  std::string model;
  fp::Rounding rounding = fp::Rounding::kDouble;
  fp::Overflow overflow = fp::Overflow::kRaise;
  std::string input_name;
  ValueShape input_shape;
  double input_scale = 1.0;
  int32_t input_zero_point = 0;
  std::vector<ProgramOp> ops;
  int64_t output = 0;                                // the output op's index
  std::unordered_map<std::string, int64_t> by_name;  // op name -> index

  const ValueShape& value_shape(int64_t index) const { return index < 0 ? input_shape : ops[index].shape; }
};

// Reads and validates the program file at `path` (docs/program.md 4), packs its layers. Throws
// capi::Error: NPUQ_IO_ERROR when the file cannot be read, NPUQ_PROGRAM_ERROR when it is not a valid
// program (the message names the file, the op and the field). skip_digest: NPUQ_LOAD_SKIP_DIGEST.
std::unique_ptr<Program> load_program(const std::string& path, bool skip_digest);

// Runs op `index` of `p` on `batch` images: inputs[k] holds batch x the k-th input's shape, out batch x the
// op's shape. Splits the batch into calls of bounded size and caps the threads of kernels with per-thread
// scratch, as the emulator does; the result depends on neither. threads: 0 or 1..256 (checked by the
// caller). Throws AccumulatorOverflow naming the op under overflow "raise".
void run_op(const Program& p, int64_t index, const int8_t* const* inputs, int64_t batch, int8_t* out, int threads);

}  // namespace capi
}  // namespace npuq
