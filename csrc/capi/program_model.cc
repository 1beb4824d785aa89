// Reading and validating a program file (docs/program.md 1-4) for the C ABI.
//
// The reference is the Python loader (python/npuq/npu/program.py with the op table of optable.py,
// optable_format2.py and opschema.py): every check below is one of its checks, in its order, with its
// words, so that both accept the same files (tests/capi/test_capi_program_hostile.py compares them on
// mutated files). Sizes are products of untrusted integers: they are computed saturating at INT64_MAX
// (sat_mul, sat_add), never wrapping, and every limit they meet is far below that.
#include "capi/program_model.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <optional>
#include <set>
#include <sstream>
#include <system_error>
#include <utility>

#include "capi/capi_internal.h"
#include "capi/json.h"
#include "capi/sha256.h"
#include "npuq/resample_ops.h"

namespace npuq {
namespace capi {

int64_t ValueShape::count() const {
  int64_t n = 1;
  for (int k = 0; k < ndim; ++k) n *= dims[k];
  return n;
}

bool ValueShape::operator==(const ValueShape& o) const {
  if (ndim != o.ndim) return false;
  for (int k = 0; k < ndim; ++k)
    if (dims[k] != o.dims[k]) return false;
  return true;
}

std::string shape_str(const ValueShape& s) {
  std::string out = "(";
  for (int k = 0; k < s.ndim; ++k) out += (k ? ", " : "") + std::to_string(s.dims[k]);
  return out + (s.ndim == 1 ? ",)" : ")");
}

namespace {

using json::Document;
using json::Type;
using Index = Document::Index;

// ------------------------------------------------------------------------------- limits (docs/program.md 4)
constexpr int64_t kMaxFileBytes = int64_t{2} << 30;
constexpr int64_t kMaxHeader = int64_t{100} * 1024 * 1024;
constexpr int64_t kMaxTensorElements = (int64_t{1} << 31) - 1;
constexpr int64_t kMaxOpBytes = int64_t{256} << 20;
constexpr int64_t kMaxPeakBytes = int64_t{1} << 30;
constexpr int64_t kMaxOpWork = int64_t{1} << 34;
constexpr int64_t kMaxOpParamBytes = int64_t{256} << 20;
constexpr int64_t kMaxParamBytes = int64_t{4} << 30;
constexpr int kMaxInfoNesting = 64;
constexpr int kMaxHeaderNesting = 64;
constexpr int kMaxGraphNesting = kMaxInfoNesting + 1;  // the graph object around 64 levels of "info"
constexpr int64_t kMaxInputDim = int64_t{1} << 20;
constexpr int64_t kMaxVariadicInputs = 64;
constexpr int kArithmeticVersion = 1;
// the native kernels' own limits and allocations (optable.py mirrors csrc/cpu and csrc/common/validate.cc)
constexpr int64_t kNativeIndexLimit = int64_t{1} << 40;
constexpr int64_t kNativeReductionLimit = int64_t{1} << 31;
constexpr int64_t kNativePoolTaps = int64_t{1} << 30;
constexpr int64_t kPanelRows = 24;
constexpr int64_t kScratchAlign = 64;
constexpr int64_t kConstantBytes = 36;
constexpr int64_t kGroupOverhead = 512;
constexpr int64_t kMaxMeanElements = int64_t{1} << 23;

constexpr const char* kFormat = "npuq-program";
constexpr const char* kMetadataKey = "npuq.program";
constexpr const char* kDigestKey = "npuq.sha256";

// ------------------------------------------------------------------------------- arithmetic
constexpr int64_t kSat = INT64_MAX;
int64_t sat_add(int64_t a, int64_t b) { return a > kSat - b ? kSat : a + b; }  // a, b >= 0
int64_t sat_mul(int64_t a, int64_t b) {                                          // a, b >= 0
  if (a == 0 || b == 0) return 0;
  return a > kSat / b ? kSat : a * b;
}
int64_t sat_prod(std::initializer_list<int64_t> v) {
  int64_t p = 1;
  for (int64_t x : v) p = sat_mul(p, x);
  return p;
}
int64_t round_up(int64_t v, int64_t m) { return sat_mul((v + m - 1) / m, m); }
int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }  // b > 0

// Python's f"{n:,}".
std::string commas(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

// Python's repr of tuple(a list): "(1, 2)", "(1,)".
std::string as_tuple(const json::Document& d, json::Document::Index list) {
  std::string out = "(";
  for (size_t k = 0; k < d.size(list) && out.size() < 120; ++k)
    out += (k ? ", " : "") + json::describe(d, d.element(list, k));
  return out + (d.size(list) == 1 ? ",)" : ")");
}

// The name between quotes as Python's f"'{name}'" writes it (where Python writes {name!r}: json::py_repr).
std::string quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

std::string str_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + json::py_repr(items[i]);
  return out + "]";
}

std::string int_tuple(const std::vector<int64_t>& v) {
  std::string out = "(";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out + (v.size() == 1 ? ",)" : ")");
}

std::string int_list(const std::vector<int64_t>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out + "]";
}

[[noreturn]] void fail(const std::string& where, const std::string& msg) {
  throw Error(NPUQ_PROGRAM_ERROR, where + ": " + msg);
}

[[noreturn]] void io_fail(const std::string& msg) { throw Error(NPUQ_IO_ERROR, msg); }

// Python's regex ^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$ under re.match: `$` also matches before one final
// newline, so "conv\n" is a name there and here alike.
bool valid_name(std::string_view s) {
  if (s.empty() || s.size() > 128) return false;
  auto alpha = [](char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; };
  if (!alpha(s[0])) return false;
  for (char c : s.substr(1))
    if (!alpha(c) && !(c >= '0' && c <= '9') && c != '.' && c != '-') return false;
  return true;
}
constexpr const char* kNamePattern = "^[A-Za-z_][A-Za-z0-9_.\\-]{0,127}$";

// ------------------------------------------------------------------------------- the file
std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a plain file";
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Fills [p, p + n) from fd; false when the file ends first.
bool read_fully(int fd, char* p, int64_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t got = ::read(fd, p, static_cast<size_t>(std::min<int64_t>(n, int64_t{1} << 30)));
    if (got < 0) {
      if (errno == EINTR) continue;
      io_fail(path + ": cannot read (" + errno_text(errno) + ")");
    }
    if (got == 0) return false;
    p += got;
    n -= got;
  }
  return true;
}

// The header size field, checked against the file size before anything else is read (program.py).
int64_t header_size(const unsigned char* head, int64_t file_size, const std::string& source) {
  if (file_size < 8)
    fail(source, "the file is " + std::to_string(file_size) + " bytes long: too short to be a program (truncated?)");
  uint64_t n = 0;
  for (int k = 7; k >= 0; --k) n = n << 8 | head[k];
  if (n > static_cast<uint64_t>(std::min(kMaxHeader, file_size - 8)))
    fail(source,
         "header size field says " + std::to_string(n) + " bytes but the file has " + std::to_string(file_size - 8) +
             " after it (truncated or not a program file; a header has at most " + commas(kMaxHeader) + " bytes)");
  return static_cast<int64_t>(n);
}

// The file's bytes, read only once it is known to be a regular file of an acceptable size whose header size
// field fits: a FIFO, a device or a 4 GB file is refused after at most 8 bytes.
std::string read_program_file(const std::string& path) {
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // a FIFO must not block the open
  if (f.fd < 0) {
    const int err = errno;
    if (err == ENOENT) io_fail(path + ": no such program file");
    if (err == EISDIR) io_fail(path + ": is a directory, not a program file");
    io_fail(path + ": cannot read (" + errno_text(err) + ")");
  }
  struct stat st{};
  if (::fstat(f.fd, &st) != 0) io_fail(path + ": cannot read (" + errno_text(errno) + ")");
  if (S_ISDIR(st.st_mode)) io_fail(path + ": is a directory, not a program file");
  if (!S_ISREG(st.st_mode))
    io_fail(path + ": is " + file_kind(st.st_mode) + ", not a regular file; a program is a file");
  const int64_t size = st.st_size;
  if (size > kMaxFileBytes)
    fail(path, "the file is " + commas(size) + " bytes, larger than the maximum program size of " +
                   commas(kMaxFileBytes) + " bytes (2 GiB; docs/program.md 4)");
  unsigned char head[8] = {};
  const int64_t head_size = std::min<int64_t>(size, 8);
  if (!read_fully(f.fd, reinterpret_cast<char*>(head), head_size, path))
    io_fail(path + ": the file shrank while it was read; read it again once it is written");
  header_size(head, size, path);
  std::string data(static_cast<size_t>(size), '\0');  // allocated only now that the header size fits the file
  std::memcpy(&data[0], head, static_cast<size_t>(head_size));
  if (!read_fully(f.fd, &data[0] + head_size, size - head_size, path))
    io_fail(path + ": the file shrank while it was read; read it again once it is written");
  char extra = 0;
  for (;;) {
    const ssize_t got = ::read(f.fd, &extra, 1);
    if (got < 0 && errno == EINTR) continue;
    if (got > 0) io_fail(path + ": the file grew while it was read; read it again once it is written");
    break;
  }
  return data;
}

// ------------------------------------------------------------------------------- tensors of the file
enum class DType { kI8, kU8, kI32 };

const char* numpy_name(DType d) { return d == DType::kI8 ? "int8" : d == DType::kU8 ? "uint8" : "int32"; }
const char* code_name(DType d) { return d == DType::kI8 ? "I8" : d == DType::kU8 ? "U8" : "I32"; }
int64_t item_size(DType d) { return d == DType::kI32 ? 4 : 1; }

struct FileTensor {
  std::string key;
  DType dtype = DType::kI8;
  std::vector<int64_t> shape;
  int64_t elements = 0;
  const unsigned char* data = nullptr;  // little-endian, in the file's buffer
  int64_t nbytes = 0;

  int64_t dim(size_t k) const { return shape[k]; }
  int64_t value(int64_t i) const {  // element i, widened
    switch (dtype) {
      case DType::kI8: return static_cast<int8_t>(data[i]);
      case DType::kU8: return data[i];
      case DType::kI32: {
        const uint32_t u = uint32_t{data[4 * i]} | uint32_t{data[4 * i + 1]} << 8 | uint32_t{data[4 * i + 2]} << 16 |
                           uint32_t{data[4 * i + 3]} << 24;
        return static_cast<int32_t>(u);
      }
    }
    return 0;
  }
};

// first_bad of npuq.npu._checks: "3 value(s), first at index (0, 1, 2, 0)" (a bare index for one dimension).
template <typename Bad>
bool find_bad(const FileTensor& t, Bad bad, std::string* message) {
  int64_t count = 0, first = -1;
  for (int64_t i = 0; i < t.elements; ++i)
    if (bad(t.value(i))) {
      if (first < 0) first = i;
      ++count;
    }
  if (count == 0) return false;
  std::vector<int64_t> idx(t.shape.size());
  int64_t rest = first;
  for (size_t k = t.shape.size(); k-- > 0;) {
    idx[k] = rest % t.shape[k];
    rest /= t.shape[k];
  }
  *message = std::to_string(count) + " value(s), first at index " +
             (idx.size() == 1 ? std::to_string(idx[0]) : int_tuple(idx));
  return true;
}

// ------------------------------------------------------------------------------- the op table (optable.py)
enum class AttrType { kInt, kInts, kQ31, kQ31s, kBool, kChoice };

struct AttrSpec {
  const char* name;
  AttrType type;
  int64_t lo = 0, hi = 0;
  int length = 0;  // kInts: 0 is one per input
  std::vector<const char*> choices = {};
  int since = 1;
  int64_t default_value = 0;  // for programs older than `since` (bools only)
};

struct TensorSpec {
  const char* name;
  DType dtype;
  int ndim;
};

struct KindSpec {
  const char* name;
  OpKind kind;
  int n_inputs;  // 0: 2 to 64 (concat)
  int since;
  std::vector<AttrSpec> attrs;
  std::vector<TensorSpec> tensors;
};

AttrSpec int8_attr(const char* name) { return {name, AttrType::kInt, -128, 127}; }
AttrSpec pair_attr(const char* name, int n, int64_t lo) { return {name, AttrType::kInts, lo, int64_t{1} << 16, n}; }

std::vector<TensorSpec> layer_tensors(int weight_ndim) {
  return {{"weight", DType::kI8, weight_ndim},
          {"bias", DType::kI32, 1},
          {"multiplier", DType::kI32, 1},
          {"exponent", DType::kI32, 1},
          {"shift", DType::kU8, 1}};
}

std::vector<AttrSpec> layer_attrs() {
  return {int8_attr("input_zero_point"), int8_attr("output_zero_point"), int8_attr("act_min"), int8_attr("act_max"),
          AttrSpec{"weight_bits", AttrType::kInt, 2, 8}};
}

const std::vector<KindSpec>& op_table() {
  static const std::vector<KindSpec> table = [] {
    std::vector<KindSpec> t;
    std::vector<AttrSpec> conv = {pair_attr("stride", 2, 1), pair_attr("padding", 4, 0), pair_attr("dilation", 2, 1),
                                  AttrSpec{"groups", AttrType::kInt, 1, int64_t{1} << 20}};
    for (const AttrSpec& a : layer_attrs()) conv.push_back(a);
    t.push_back({"conv2d", OpKind::kConv2d, 1, 1, conv, layer_tensors(4)});
    t.push_back({"fully_connected", OpKind::kFullyConnected, 1, 1, layer_attrs(), layer_tensors(2)});
    std::vector<AttrSpec> add;
    static const char* const add_names[] = {"a_zero_point",      "a_multiplier",      "a_exponent",
                                            "b_zero_point",      "b_multiplier",      "b_exponent",
                                            "output_zero_point", "output_multiplier", "output_exponent"};
    for (int s = 0; s < 3; ++s) {
      add.push_back(int8_attr(add_names[3 * s]));
      add.push_back({add_names[3 * s + 1], AttrType::kQ31});
      add.push_back({add_names[3 * s + 2], AttrType::kInt, -31, s == 2 ? 30 : 0});
    }
    add.push_back({"left_shift", AttrType::kInt, 0, 22});
    add.push_back(int8_attr("act_min"));
    add.push_back(int8_attr("act_max"));
    t.push_back({"add", OpKind::kAdd, 2, 1, add, {}});
    const std::vector<AttrSpec> window = {pair_attr("kernel", 2, 1), pair_attr("stride", 2, 1),
                                          pair_attr("padding", 4, 0)};
    std::vector<AttrSpec> avg = window;
    avg.push_back({"count_include_pad", AttrType::kBool});
    avg.push_back(int8_attr("input_zero_point"));
    avg.push_back(int8_attr("act_min"));
    avg.push_back(int8_attr("act_max"));
    t.push_back({"avg_pool2d", OpKind::kAvgPool2d, 1, 1, avg, {}});
    t.push_back({"global_avg_pool", OpKind::kGlobalAvgPool, 1, 1, {int8_attr("act_min"), int8_attr("act_max")}, {}});
    std::vector<AttrSpec> max = window;
    max.push_back({"ceil_mode", AttrType::kBool, 0, 0, 0, {}, 2, 0});
    t.push_back({"max_pool2d", OpKind::kMaxPool2d, 1, 1, max, {}});
    t.push_back({"flatten", OpKind::kFlatten, 1, 1, {}, {}});
    // format 2 (optable_format2.py)
    t.push_back({"lut",
                 OpKind::kLut,
                 1,
                 2,
                 {{"function",
                   AttrType::kChoice,
                   0,
                   0,
                   0,
                   {"hardswish", "hardsigmoid", "sigmoid", "tanh", "silu", "gelu", "gelu_tanh", "relu", "relu6",
                    "clamp", "leaky_relu", "custom"}}},
                 {{"table", DType::kI8, 1}}});
    t.push_back({"mul",
                 OpKind::kMul,
                 2,
                 2,
                 {int8_attr("a_zero_point"), int8_attr("b_zero_point"), int8_attr("output_zero_point"),
                  AttrSpec{"multiplier", AttrType::kQ31}, AttrSpec{"exponent", AttrType::kInt, -31, 30},
                  int8_attr("act_min"), int8_attr("act_max")},
                 {}});
    t.push_back({"concat",
                 OpKind::kConcat,
                 0,
                 2,
                 {AttrSpec{"zero_points", AttrType::kInts, -128, 127}, AttrSpec{"multipliers", AttrType::kQ31s},
                  AttrSpec{"exponents", AttrType::kInts, -31, 30}, int8_attr("output_zero_point")},
                 {}});
    t.push_back({"channel_shuffle",
                 OpKind::kChannelShuffle,
                 1,
                 2,
                 {AttrSpec{"groups", AttrType::kInt, 1, int64_t{1} << 20}},
                 {}});
    t.push_back(
        {"slice",
         OpKind::kSlice,
         1,
         2,
         {AttrSpec{"begin", AttrType::kInt, 0, int64_t{1} << 31}, AttrSpec{"end", AttrType::kInt, 1, int64_t{1} << 31}},
         {}});
    t.push_back({"pad", OpKind::kPad, 1, 2, {pair_attr("padding", 4, 0), int8_attr("value")}, {}});
    t.push_back({"upsample",
                 OpKind::kUpsample,
                 1,
                 2,
                 {AttrSpec{"scale", AttrType::kInts, 1, 64, 2},
                  AttrSpec{"mode", AttrType::kChoice, 0, 0, 0, {"nearest", "bilinear"}}, int8_attr("zero_point")},
                 {}});
    t.push_back({"mean",
                 OpKind::kMean,
                 1,
                 2,
                 {int8_attr("input_zero_point"), int8_attr("output_zero_point"), AttrSpec{"multiplier", AttrType::kQ31},
                  AttrSpec{"exponent", AttrType::kInt, -31, 30}, int8_attr("act_min"), int8_attr("act_max"),
                  AttrSpec{"tflite_rounding", AttrType::kBool}},
                 {}});
    return t;
  }();
  return table;
}

const KindSpec* find_kind(std::string_view name) {
  for (const KindSpec& k : op_table())
    if (name == k.name) return &k;
  return nullptr;
}

bool has_attr(const KindSpec& k, const char* name) {
  for (const AttrSpec& a : k.attrs)
    if (std::strcmp(a.name, name) == 0) return true;
  return false;
}

// ------------------------------------------------------------------------------- the loader
struct RawOp {  // one op of the graph as read (program_from_json), before validate()
  std::string name;
  std::string kind;
  Index inputs = Document::kNone;  // a list
  Index attrs = Document::kNone;   // an object
  std::map<std::string, const FileTensor*> tensors;
  double scale = 0;
  Index zero_point = Document::kNone;  // an int
};

class Loader {
 public:
  Loader(std::string source, bool skip_digest) : source_(std::move(source)), skip_digest_(skip_digest) {}

  std::unique_ptr<Program> load() {
    data_ = read_program_file(source_);
    parse_safetensors();
    auto text = metadata_text(kMetadataKey);
    if (!text)
      fail(source_, std::string("the header metadata has no '") + kMetadataKey +
                        "' entry: a safetensors file, but not an npuq program");
    graph_text_ = *text;
    graph_ = parse_json(graph_text_, kMaxGraphNesting, std::string("the '") + kMetadataKey + "' graph", "");
    program_ = std::make_unique<Program>();
    program_->source = source_;
    read_graph();
    validate();
    if (!skip_digest_) check_digest();
    pack_layers();
    return std::move(program_);
  }

 private:
  // ------------------------------------------------------------------ JSON
  Document parse_json(std::string_view text, int depth, const std::string& what, const std::string& hint) {
    try {
      return Document::parse(text, depth);
    } catch (const json::ParseError& e) {
      const std::string msg = e.what();
      if (msg.rfind("duplicate key", 0) == 0) fail(source_, what + ": " + msg);
      fail(source_, what + " is not valid JSON (" + msg + ")" + hint);
    }
  }

  // _get of program.py: the member `key` of `obj`, of the given JSON type(s).
  Index get(const Document& d, Index obj, const char* key, std::initializer_list<Type> types, const char* type_word,
            const std::string& where) {
    const Index v = d.find(obj, key);
    if (v == Document::kNone) fail(where, std::string("missing field '") + key + "'");
    for (Type t : types)
      if (d.type(v) == t) return v;
    fail(where, std::string("field '") + key + "' must be " + type_word + ", got " + json::type_name(d.type(v)) + " " +
                    json::describe(d, v, 80));
  }
  Index get_int(const Document& d, Index obj, const char* key, const std::string& where) {
    return get(d, obj, key, {Type::kInt, Type::kBigInt}, "int", where);
  }
  std::string get_str(const Document& d, Index obj, const char* key, const std::string& where) {
    return std::string(d.text(get(d, obj, key, {Type::kString}, "str", where)));
  }
  double get_float(const Document& d, Index obj, const char* key, const std::string& where) {
    const Index v = get(d, obj, key, {Type::kInt, Type::kBigInt, Type::kFloat}, "float", where);
    if (d.type(v) == Type::kFloat) return d.number(v);
    if (d.type(v) == Type::kInt) return static_cast<double>(d.integer(v));
    const double x = json::decimal_to_double(d.text(v));
    if (std::isinf(x))  // Python: float(int) raises OverflowError
      fail(where,
           std::string("field '") + key + "' = " + std::string(d.text(v).substr(0, 20)) + "... does not fit a float");
    return x;
  }

  // ------------------------------------------------------------------ safetensors (_parse_safetensors)
  void parse_safetensors() {
    const auto* bytes = reinterpret_cast<const unsigned char*>(data_.data());
    const int64_t size = static_cast<int64_t>(data_.size());
    if (size > kMaxFileBytes)
      fail(source_, commas(size) + " bytes: larger than the maximum program size of " + commas(kMaxFileBytes) +
                        " bytes (2 GiB; docs/program.md 4)");
    const int64_t n = header_size(bytes, size, source_);
    const std::string_view header_text(data_.data() + 8, static_cast<size_t>(n));
    const std::string hint = "; the file is corrupted or not a program";
    std::string utf8_error;
    if (!json::valid_utf8(header_text.data(), header_text.size(), &utf8_error))
      fail(source_, "the header is not valid JSON (" + utf8_error + ")" + hint);
    header_ = parse_json(header_text, kMaxHeaderNesting, "the header", hint);
    const Document& h = header_;
    if (h.type(h.root()) != Type::kObject) fail(source_, "the header is not a JSON object");
    meta_ = h.find(h.root(), "__metadata__");
    bool meta_ok = meta_ != Document::kNone && h.type(meta_) == Type::kObject;
    for (size_t k = 0; meta_ok && k < h.size(meta_); ++k) meta_ok = h.type(h.value(meta_, k)) == Type::kString;
    if (!meta_ok)
      fail(source_, "the header has no '__metadata__' string map: not an npuq program (plain safetensors?)");
    body_ = bytes + 8 + n;
    body_size_ = size - 8 - n;
    struct Span {
      int64_t begin, end;
      std::string key;
      bool operator<(const Span& o) const {
        if (begin != o.begin) return begin < o.begin;
        if (end != o.end) return end < o.end;
        return key < o.key;
      }
    };
    std::vector<Span> spans;
    for (size_t k = 0; k < h.size(h.root()); ++k) {
      const std::string key(h.key(h.root(), k));
      if (key == "__metadata__") continue;
      const Index entry = h.value(h.root(), k);
      const std::string where = source_ + ": tensor " + quoted(key);
      bool exact = h.type(entry) == Type::kObject && h.size(entry) == 3;
      for (const char* f : {"dtype", "shape", "data_offsets"}) exact = exact && h.find(entry, f) != Document::kNone;
      if (!exact) fail(where, "entry must have exactly 'dtype', 'shape' and 'data_offsets'");
      FileTensor t;
      t.key = key;
      const Index dtype = h.find(entry, "dtype");
      const std::string_view code = h.type(dtype) == Type::kString ? h.text(dtype) : std::string_view();
      if (code == "I8") t.dtype = DType::kI8;
      else if (code == "U8") t.dtype = DType::kU8;
      else if (code == "I32") t.dtype = DType::kI32;
      else fail(where, "dtype " + json::describe(h, dtype) + " is not one a program uses (I8, U8, I32)");
      const Index shape = h.find(entry, "shape");
      bool shape_ok = h.type(shape) == Type::kArray && h.size(shape) <= 8;
      for (size_t d = 0; shape_ok && d < h.size(shape); ++d) {
        const Index v = h.element(shape, d);
        shape_ok = h.type(v) == Type::kInt && h.integer(v) >= 0 && h.integer(v) < (int64_t{1} << 40);
        if (shape_ok) t.shape.push_back(h.integer(v));
      }
      if (!shape_ok) fail(where, "shape " + json::describe(h, shape) + " is not a list of non-negative integers");
      int64_t padded = 1, elements = 1;  // an empty tensor's other dimensions are bounded too
      for (int64_t d : t.shape) {
        padded = sat_mul(padded, std::max<int64_t>(d, 1));
        elements = sat_mul(elements, d);
      }
      if (padded > kMaxTensorElements) {
        std::vector<int64_t> shown;
        for (int64_t d : t.shape) shown.push_back(std::max<int64_t>(d, 1));
        fail(where, "shape " + int_tuple(shown) + " has " + commas(padded) + " elements, more than the limit of " +
                        commas(kMaxTensorElements) + " (2^31 - 1; docs/program.md 4)");
      }
      t.elements = elements;
      const Index offs = h.find(entry, "data_offsets");
      bool offs_ok = h.type(offs) == Type::kArray && h.size(offs) == 2;
      for (size_t d = 0; offs_ok && d < 2; ++d) {
        const Type ty = h.type(h.element(offs, d));
        offs_ok = ty == Type::kInt || ty == Type::kBigInt;
      }
      if (!offs_ok) fail(where, "data_offsets " + json::describe(h, offs) + " is not a pair of integers");
      const Index b = h.element(offs, 0), e = h.element(offs, 1);
      const bool in_range = h.type(b) == Type::kInt && h.type(e) == Type::kInt && 0 <= h.integer(b) &&
                            h.integer(b) <= h.integer(e) && h.integer(e) <= body_size_;
      if (!in_range)
        fail(where, "data_offsets " + json::describe(h, offs) + " fall outside the " + std::to_string(body_size_) +
                        " data bytes (truncated file?)");
      const int64_t begin = h.integer(b), end = h.integer(e);
      t.nbytes = elements * item_size(t.dtype);
      if (end - begin != t.nbytes)
        fail(where, "data_offsets " + int_list({begin, end}) + " hold " + std::to_string(end - begin) +
                        " bytes but shape " + int_list(t.shape) + " x " + numpy_name(t.dtype) + " needs " +
                        std::to_string(t.nbytes));
      t.data = body_ + begin;
      spans.push_back({begin, end, key});
      tensors_.emplace(key, std::move(t));
    }
    std::sort(spans.begin(), spans.end());
    int64_t pos = 0;
    for (const Span& s : spans) {
      if (s.begin != pos)
        fail(source_ + ": tensor " + quoted(s.key), "data starts at byte " + std::to_string(s.begin) + ", expected " +
                                                        std::to_string(pos) + " (overlapping or gapped tensor data)");
      pos = s.end;
    }
    if (pos != body_size_)
      fail(source_,
           std::to_string(body_size_ - pos) + " bytes after the last tensor's data (corrupted or appended file)");
  }

  std::optional<std::string> metadata_text(const char* key) const {
    const Index v = header_.find(meta_, key);
    if (v == Document::kNone) return std::nullopt;
    return std::string(header_.text(v));
  }

  // ------------------------------------------------------------------ the graph (program_from_json)
  void read_graph() {
    const Document& g = graph_;
    const Index root = g.root();
    Program& p = *program_;
    if (g.type(root) != Type::kObject) fail(source_, "the graph is not a JSON object");
    const Index fmt = g.find(root, "format");
    if (fmt == Document::kNone || g.type(fmt) != Type::kString || g.text(fmt) != kFormat)
      fail(source_, "field 'format' is " + (fmt == Document::kNone ? std::string("None") : json::describe(g, fmt)) +
                        ", expected '" + kFormat + "': not an npuq program");
    const Index version = get_int(g, root, "format_version", source_);
    if (g.type(version) != Type::kInt || (g.integer(version) != 1 && g.integer(version) != 2)) {
      const bool newer = g.type(version) == Type::kBigInt ? g.text(version)[0] != '-' : g.integer(version) > 2;
      fail(source_, "format_version " + json::describe(g, version) +
                        " is not supported: this npuq reads versions 1, 2" +
                        (newer ? "; the program was written by a newer npuq, upgrade npuq to run it" : ""));
    }
    p.format_version = static_cast<int>(g.integer(version));
    static const std::set<std::string> known = {
        "format", "format_version", "arithmetic_version", "model", "rounding", "overflow", "input", "output", "ops",
        "info"};
    std::vector<std::string> unknown;
    for (size_t k = 0; k < g.size(root); ++k)
      if (!known.count(std::string(g.key(root, k)))) unknown.emplace_back(g.key(root, k));
    if (!unknown.empty()) {
      std::sort(unknown.begin(), unknown.end());
      fail(source_, "unknown field(s) " + str_list(unknown));
    }
    const Index inp = get(g, root, "input", {Type::kObject}, "dict", source_);
    const std::string w_in = source_ + ": input";
    static const std::set<std::string> input_fields = {"name", "shape", "layout", "scale", "zero_point"};
    std::vector<std::string> extra_in;
    for (size_t k = 0; k < g.size(inp); ++k)
      if (!input_fields.count(std::string(g.key(inp, k)))) extra_in.emplace_back(g.key(inp, k));
    if (!extra_in.empty()) {
      std::sort(extra_in.begin(), extra_in.end());
      fail(w_in, "unknown field(s) " + str_list(extra_in));
    }
    const std::string layout = get_str(g, inp, "layout", w_in);
    if (layout != "HWC") fail(w_in, "layout " + json::py_repr(layout) + " is not supported (HWC)");
    p.input_name = get_str(g, inp, "name", w_in);
    input_shape_ = get(g, inp, "shape", {Type::kArray}, "list", w_in);
    p.input_scale = get_float(g, inp, "scale", w_in);
    input_zero_point_ = get_int(g, inp, "zero_point", w_in);
    const Index ops = get(g, root, "ops", {Type::kArray}, "list", source_);
    std::set<std::string> used;
    static const std::set<std::string> op_fields = {"name",    "kind",  "inputs",     "attrs",
                                                    "tensors", "scale", "zero_point", "path"};
    for (size_t i = 0; i < g.size(ops); ++i) {
      const Index o = g.element(ops, i);
      std::string where = source_ + ": op " + std::to_string(i);
      if (g.type(o) != Type::kObject) fail(where, "is not a JSON object");
      std::vector<std::string> extra;
      for (size_t k = 0; k < g.size(o); ++k)
        if (!op_fields.count(std::string(g.key(o, k)))) extra.emplace_back(g.key(o, k));
      if (!extra.empty()) {
        std::sort(extra.begin(), extra.end());
        fail(where, "unknown field(s) " + str_list(extra));
      }
      RawOp r;
      r.name = get_str(g, o, "name", where);
      where = source_ + ": op " + std::to_string(i) + " " + quoted(r.name);
      const Index fields = get(g, o, "tensors", {Type::kArray}, "list", where);
      for (size_t k = 0; k < g.size(fields); ++k) {
        const Index f = g.element(fields, k);
        if (g.type(f) != Type::kString) fail(where, "tensor field names must be strings, got " + json::describe(g, f));
        const std::string field(g.text(f));
        const std::string key = r.name + "." + field;
        auto it = tensors_.find(key);
        if (it == tensors_.end()) fail(where, "tensor " + quoted(key) + " is missing from the file");
        r.tensors[field] = &it->second;
        used.insert(key);
      }
      r.kind = get_str(g, o, "kind", where);
      r.inputs = get(g, o, "inputs", {Type::kArray}, "list", where);
      r.attrs = get(g, o, "attrs", {Type::kObject}, "dict", where);
      r.scale = get_float(g, o, "scale", where);
      r.zero_point = get_int(g, o, "zero_point", where);
      get_str(g, o, "path", where);
      raw_.push_back(std::move(r));
    }
    std::vector<std::string> stray;
    for (const auto& kv : tensors_)
      if (!used.count(kv.first)) stray.push_back(kv.first);
    if (!stray.empty()) {
      stray.resize(std::min<size_t>(stray.size(), 5));
      fail(source_, "tensor(s) " + str_list(stray) + " belong to no op");
    }
    const Index info = g.find(root, "info");
    if (info != Document::kNone) {
      if (g.type(info) != Type::kObject) fail(source_, "field 'info' must be an object");
      if (g.depth(info) > kMaxInfoNesting)
        fail(source_, "field 'info' is nested deeper than " + std::to_string(kMaxInfoNesting) + " levels");
      if (g.first_non_finite(info) != Document::kNone)
        fail(source_,
             "field 'info' cannot be written back as JSON (Out of range float values are not JSON "
             "compliant)");
    }
    output_name_ = get_str(g, root, "output", source_);
    rounding_ = get_str(g, root, "rounding", source_);
    overflow_ = get_str(g, root, "overflow", source_);
    p.model = get_str(g, root, "model", source_);
    arithmetic_version_ = get_int(g, root, "arithmetic_version", source_);
  }

  // ------------------------------------------------------------------ validate() of program.py
  void check_zp(Index v, const std::string& where) {
    const Document& g = graph_;
    if (g.type(v) != Type::kInt || g.integer(v) < -128 || g.integer(v) > 127)
      fail(where, "zero_point must be an integer in [-128, 127], got " + json::describe(g, v));
  }

  static void check_scale(double v, const std::string& where) {
    if (!std::isfinite(v) || v <= 0) fail(where, "scale must be a finite number > 0, got " + json::float_repr(v));
  }

  void validate() {
    Program& p = *program_;
    const Document& g = graph_;
    if (g.type(arithmetic_version_) != Type::kInt || g.integer(arithmetic_version_) != kArithmeticVersion)
      fail(source_, "arithmetic_version " + json::describe(g, arithmetic_version_) + " differs from this npuq's (" +
                        std::to_string(kArithmeticVersion) + "); its outputs would not be bit-exact here");
    if (rounding_ == "double") p.rounding = fp::Rounding::kDouble;
    else if (rounding_ == "single") p.rounding = fp::Rounding::kSingle;
    else fail(source_, "rounding must be one of ('double', 'single'), got " + json::py_repr(rounding_));
    if (overflow_ == "raise") p.overflow = fp::Overflow::kRaise;
    else if (overflow_ == "saturate") p.overflow = fp::Overflow::kSaturate;
    else if (overflow_ == "wrap") p.overflow = fp::Overflow::kWrap;
    else fail(source_, "overflow must be one of ('raise', 'saturate', 'wrap'), got " + json::py_repr(overflow_));
    const std::string w_in = source_ + ": input";
    if (!valid_name(p.input_name))
      fail(w_in, "name " + json::py_repr(p.input_name) + " is not a valid name (" + kNamePattern + ")");
    bool shape_ok = g.size(input_shape_) == 1 || g.size(input_shape_) == 3;
    for (size_t k = 0; shape_ok && k < g.size(input_shape_); ++k) {
      const Index d = g.element(input_shape_, k);
      shape_ok = g.type(d) == Type::kInt && g.integer(d) >= 1 && g.integer(d) <= kMaxInputDim;
      if (shape_ok) p.input_shape.dims[k] = g.integer(d);
    }
    if (!shape_ok) fail(w_in, "shape must be (H, W, C) or (K,) of positive integers, got " + as_tuple(g, input_shape_));
    p.input_shape.ndim = static_cast<int>(g.size(input_shape_));
    check_scale(p.input_scale, w_in);
    if (static_cast<double>(static_cast<float>(p.input_scale)) != p.input_scale)
      fail(w_in,
           "scale " + json::float_repr(p.input_scale) + " is not a float32 value (the input is quantized in float32)");
    check_zp(input_zero_point_, w_in);
    p.input_zero_point = static_cast<int32_t>(g.integer(input_zero_point_));
    check_elements(w_in, "shape", p.input_shape);
    if (raw_.empty()) fail(source_, "the program has no ops");
    names_[p.input_name] = -1;
    for (size_t i = 0; i < raw_.size(); ++i) validate_op(i);
    auto out = names_.find(output_name_);
    if (out == names_.end() || out->second < 0)
      fail(source_, "output " + json::py_repr(output_name_) + " is not the name of an op");
    p.output = out->second;
    for (size_t i = 0; i < p.ops.size(); ++i) p.by_name[p.ops[i].name] = static_cast<int64_t>(i);
    check_program_memory();
  }

  void check_elements(const std::string& where, const char* what, const ValueShape& s) {
    int64_t n = 1;
    for (int k = 0; k < s.ndim; ++k) n = sat_mul(n, s.dims[k]);
    if (n > kMaxTensorElements)
      fail(where, std::string(what) + " " + shape_str(s) + " has " + commas(n) + " elements, more than the limit of " +
                      commas(kMaxTensorElements) + " (2^31 - 1; docs/program.md 4)");
  }

  void validate_op(size_t i) {
    const Document& g = graph_;
    RawOp& r = raw_[i];
    std::string where = source_ + ": op " + std::to_string(i);
    if (!valid_name(r.name))
      fail(where, "name " + json::py_repr(r.name) + " is not a valid name (" + kNamePattern + ")");
    where += " " + quoted(r.name);
    if (names_.count(r.name)) fail(where, "the name is used twice");
    const KindSpec* spec = find_kind(r.kind);
    if (!spec) {
      std::string known;
      for (const KindSpec& k : op_table()) known += (known.empty() ? "" : ", ") + std::string(k.name);
      fail(where, "unknown kind " + json::py_repr(r.kind) + "; known: " + known);
    }
    ProgramOp op;
    op.name = r.name;
    op.kind_name = spec->name;
    op.kind = spec->kind;
    for (size_t k = 0; k < g.size(r.inputs); ++k)
      if (g.type(g.element(r.inputs, k)) != Type::kString)
        fail(where, "inputs must be a list of names, got " + json::describe(g, r.inputs));
    std::vector<std::string> input_names;
    for (size_t k = 0; k < g.size(r.inputs); ++k) {
      const std::string s(g.text(g.element(r.inputs, k)));
      auto it = names_.find(s);
      if (it == names_.end()) fail(where, "input " + quoted(s) + " is not the program input or an earlier op's output");
      op.inputs.push_back(it->second);
      op.input_shapes.push_back(program_->value_shape(it->second));
      input_names.push_back(s);
    }
    check_scale(r.scale, where);
    op.scale = r.scale;
    check_zp(r.zero_point, where);
    op.zero_point = static_cast<int32_t>(g.integer(r.zero_point));
    check_spec(*spec, r, op, where);
    op.shape = infer(r, op, input_names, where);
    op.footprint = footprint(r, op, input_names);
    check_resources(r, op, where);
    if (op.kind == OpKind::kLut) {
      const FileTensor& t = *r.tensors.at("table");
      op.table.assign(t.data, t.data + 256);
    }
    names_[op.name] = static_cast<int64_t>(i);
    program_->ops.push_back(std::move(op));
  }

  // OpSpec.check: the inputs, the attributes, the tensors (then the kind's infer).
  void check_spec(const KindSpec& spec, const RawOp& r, ProgramOp& op, const std::string& where) {
    const Document& g = graph_;
    const int version = program_->format_version;
    const std::string k = spec.name;
    if (version < spec.since)
      fail(where, "op kind " + json::py_repr(k) + " needs program format version " + std::to_string(spec.since) +
                      " (the file says " + std::to_string(version) + ")");
    const int64_t n_inputs = static_cast<int64_t>(op.inputs.size());
    if (spec.n_inputs == 0) {
      if (n_inputs < 2 || n_inputs > kMaxVariadicInputs)
        fail(where,
             k + " takes 2 to " + std::to_string(kMaxVariadicInputs) + " inputs, got " + std::to_string(n_inputs));
    } else if (n_inputs != spec.n_inputs) {
      fail(where, k + " takes " + std::to_string(spec.n_inputs) + " input(s), got " + std::to_string(n_inputs));
    }
    std::vector<std::string> allowed, unknown;
    for (const AttrSpec& a : spec.attrs)
      if (a.since <= version) allowed.emplace_back(a.name);
    if (spec.kind == OpKind::kFullyConnected) allowed.emplace_back("tflite_rescale");  // known, refused below
    for (size_t m = 0; m < g.size(r.attrs); ++m) {
      const std::string key(g.key(r.attrs, m));
      // an optional attribute of the Python emulator: TFLite's floating-point rescale of an imported
      // FULLY_CONNECTED (docs/arithmetic.md 16) is no NPU arithmetic, and this library runs NPU programs
      if (spec.kind == OpKind::kFullyConnected && key == "tflite_rescale")
        fail(where,
             "attribute 'tflite_rescale' (TFLite's floating-point FULLY_CONNECTED rescale) is emulated by the "
             "Python package only; import the TFLite model with --fc-rescale integer for a program the NPU and "
             "libnpuq run");
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) unknown.push_back(key);
    }
    if (!unknown.empty()) {
      std::sort(unknown.begin(), unknown.end());
      std::sort(allowed.begin(), allowed.end());
      fail(where, "unknown attribute(s) " + str_list(unknown) + "; this op kind has " + str_list(allowed));
    }
    for (const AttrSpec& a : spec.attrs) {
      AttrValue v;
      if (a.since <= version) v = check_attr(a, r.attrs, where, n_inputs);
      else v.i = a.default_value;
      op.attrs[a.name] = std::move(v);
    }
    if (has_attr(spec, "act_min") && has_attr(spec, "act_max") && op.attr("act_min") > op.attr("act_max"))
      fail(where, "act_min (" + std::to_string(op.attr("act_min")) + ") > act_max (" +
                      std::to_string(op.attr("act_max")) + ")");
    if (spec.tensors.empty()) {
      if (!r.tensors.empty()) {
        std::vector<std::string> got;
        for (const auto& kv : r.tensors) got.push_back(kv.first);
        fail(where, k + " has no tensors, got " + str_list(got));
      }
      return;
    }
    for (const TensorSpec& t : spec.tensors) {
      const std::string full = r.name + "." + t.name;
      auto it = r.tensors.find(t.name);
      if (it == r.tensors.end()) fail(where, "missing tensor " + quoted(full));
      const FileTensor& ft = *it->second;
      if (ft.dtype != t.dtype)
        fail(where,
             "tensor " + quoted(full) + " has dtype " + numpy_name(ft.dtype) + ", expected " + numpy_name(t.dtype));
      if (static_cast<int>(ft.shape.size()) != t.ndim)
        fail(where, "tensor " + quoted(full) + " has shape " + int_tuple(ft.shape) + ", expected " +
                        std::to_string(t.ndim) + " dimension(s)");
    }
    std::vector<std::string> extra;
    for (const auto& kv : r.tensors) {
      bool known = false;
      for (const TensorSpec& t : spec.tensors) known = known || kv.first == t.name;
      if (!known) extra.push_back(kv.first);
    }
    if (!extra.empty()) fail(where, "unknown tensor(s) " + str_list(extra));
  }

  // Attr.check of opschema.py.
  AttrValue check_attr(const AttrSpec& a, Index attrs, const std::string& where, int64_t n_inputs) {
    const Document& g = graph_;
    const std::string key = a.name;
    const Index v = g.find(attrs, a.name);
    if (v == Document::kNone) fail(where, "missing attribute '" + key + "'");
    AttrValue out;
    auto is_int = [&](Index x) { return g.type(x) == Type::kInt || g.type(x) == Type::kBigInt; };
    auto in_range = [&](Index x, int64_t lo, int64_t hi) {
      return g.type(x) == Type::kInt && g.integer(x) >= lo && g.integer(x) <= hi;
    };
    auto range_text = [](int64_t lo, int64_t hi) { return "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]"; };
    switch (a.type) {
      case AttrType::kInt:
      case AttrType::kQ31: {
        const int64_t lo = a.type == AttrType::kQ31 ? 0 : a.lo, hi = a.type == AttrType::kQ31 ? INT32_MAX : a.hi;
        if (!is_int(v))
          fail(where, "attribute '" + key + "' must be an integer, got " + json::type_name(g.type(v)) + " " +
                          json::describe(g, v));
        if (!in_range(v, lo, hi))
          fail(where, "attribute '" + key + "' = " + json::describe(g, v) + " is out of range " + range_text(lo, hi));
        out.i = g.integer(v);
        if (a.type == AttrType::kQ31 && out.i != 0 && out.i < (int64_t{1} << 30))
          fail(where, "attribute '" + key + "' = " + std::to_string(out.i) +
                          " is not a Q31 mantissa (0 or in [2^30, 2^31-1])");
        return out;
      }
      case AttrType::kInts:
      case AttrType::kQ31s: {
        const int64_t n = a.type == AttrType::kInts && a.length ? a.length : n_inputs;
        const int64_t lo = a.type == AttrType::kQ31s ? 0 : a.lo, hi = a.type == AttrType::kQ31s ? INT32_MAX : a.hi;
        if (g.type(v) != Type::kArray || static_cast<int64_t>(g.size(v)) != n)
          fail(where, "attribute '" + key + "' must be a list of " + std::to_string(n) + " integers, got " +
                          json::describe(g, v));
        for (size_t k = 0; k < g.size(v); ++k) {
          const Index x = g.element(v, k);
          const std::string at = "attribute '" + key + "'[" + std::to_string(k) + "]";
          if (!is_int(x)) fail(where, at + " must be an integer, got " + json::describe(g, x));
          if (!in_range(x, lo, hi))
            fail(where, at + " = " + json::describe(g, x) + " is out of range " + range_text(lo, hi));
          out.list.push_back(g.integer(x));
        }
        if (a.type == AttrType::kQ31s)
          for (size_t k = 0; k < out.list.size(); ++k)
            if (out.list[k] != 0 && out.list[k] < (int64_t{1} << 30))
              fail(where, "attribute '" + key + "'[" + std::to_string(k) + "] = " + std::to_string(out.list[k]) +
                              " is not a Q31 mantissa (0 or in [2^30, 2^31-1])");
        return out;
      }
      case AttrType::kChoice: {
        bool ok = g.type(v) == Type::kString;
        if (ok) {
          ok = false;
          for (const char* c : a.choices) ok = ok || g.text(v) == c;
        }
        if (!ok) {
          std::vector<std::string> choices(a.choices.begin(), a.choices.end());
          fail(where,
               "attribute '" + key + "' must be one of " + str_list(choices) + ", got " + json::describe(g, v, 80));
        }
        out.text = std::string(g.text(v));
        return out;
      }
      case AttrType::kBool:
        if (g.type(v) != Type::kBool)
          fail(where, "attribute '" + key + "' must be true or false, got " + json::describe(g, v));
        out.i = g.boolean(v) ? 1 : 0;
        return out;
    }
    return out;
  }

  // ------------------------------------------------------------------ the kinds' infer (optable.py)
  static void need_image(const ProgramOp& op, const std::vector<std::string>& names, const std::string& where,
                         size_t k = 0) {
    if (op.input_shapes[k].ndim != 3)
      fail(where, op.kind_name + " needs an (H, W, C) input, but " + quoted(names[k]) + " has shape " +
                      shape_str(op.input_shapes[k]));
  }

  // _check_layer_tensors: the sizes and values of a layer's tensors; C_out.
  int64_t check_layer_tensors(const RawOp& r, const ProgramOp& op, const std::string& where) {
    const FileTensor& w = *r.tensors.at("weight");
    const FileTensor& bias = *r.tensors.at("bias");
    const FileTensor& m = *r.tensors.at("multiplier");
    const FileTensor& e = *r.tensors.at("exponent");
    const FileTensor& s = *r.tensors.at("shift");
    const std::string n = r.name;
    const int64_t c_out = w.dim(0);
    if (w.elements == 0)
      fail(where, "tensor " + quoted(n + ".weight") + " is empty (shape " + int_tuple(w.shape) + ")");
    const int64_t bits = op.attr("weight_bits");
    const int64_t limit = (int64_t{1} << (bits - 1)) - 1;
    std::string bad;
    if (find_bad(w, [&](int64_t v) { return v < -limit || v > limit; }, &bad))
      fail(where, "tensor " + quoted(n + ".weight") + ": " + bad + " outside [-" + std::to_string(limit) + ", " +
                      std::to_string(limit) + "] (weight_bits = " + std::to_string(bits) + ")");
    if (bias.shape != std::vector<int64_t>{c_out})
      fail(where, "tensor " + quoted(n + ".bias") + " has shape " + int_tuple(bias.shape) + ", expected (" +
                      std::to_string(c_out) + ",)");
    if (m.dim(0) != 1 && m.dim(0) != c_out)
      fail(where, "tensor " + quoted(n + ".multiplier") + " has " + std::to_string(m.dim(0)) +
                      " values; expected 1 (per layer) or " + std::to_string(c_out) + " (per channel)");
    if (e.shape != m.shape)
      fail(where, "tensor " + quoted(n + ".exponent") + " has shape " + int_tuple(e.shape) + ", expected " +
                      int_tuple(m.shape) + " like the multiplier");
    if (s.shape != std::vector<int64_t>{c_out})
      fail(where, "tensor " + quoted(n + ".shift") + " has shape " + int_tuple(s.shape) + ", expected (" +
                      std::to_string(c_out) + ",)");
    if (find_bad(m, [](int64_t v) { return v != 0 && v < (int64_t{1} << 30); }, &bad))
      fail(where, "tensor " + quoted(n + ".multiplier") + ": " + bad + " not a Q31 mantissa (0 or in [2^30, 2^31-1])");
    if (find_bad(e, [](int64_t v) { return v < -31 || v > 30; }, &bad))
      fail(where, "tensor " + quoted(n + ".exponent") + ": " + bad + " outside [-31, 30]");
    if (find_bad(s, [](int64_t v) { return v > 15; }, &bad))
      fail(where, "tensor " + quoted(n + ".shift") + ": " + bad + " above 15 (shifts are 4-bit)");
    return c_out;
  }

  ValueShape infer(const RawOp& r, ProgramOp& op, const std::vector<std::string>& names, const std::string& where) {
    const std::vector<ValueShape>& in = op.input_shapes;
    const ValueShape& x = in[0];
    ValueShape y;
    switch (op.kind) {
      case OpKind::kConv2d: {
        const FileTensor& w = *r.tensors.at("weight");
        const int64_t c_out = check_layer_tensors(r, op, where);
        if (x.ndim != 3)
          fail(where, "conv2d needs an (H, W, C) input, but " + quoted(names[0]) + " has shape " + shape_str(x));
        const auto& stride = op.attr_list("stride");
        const auto& pad = op.attr_list("padding");
        const auto& dil = op.attr_list("dilation");
        const int64_t groups = op.attr("groups");
        if (c_out % groups)
          fail(where, "groups (" + std::to_string(groups) + ") does not divide the " + std::to_string(c_out) +
                          " output channels");
        const int64_t extent[2] = {dil[0] * (w.dim(1) - 1) + 1, dil[1] * (w.dim(2) - 1) + 1};
        const char* sides[4] = {"top", "bottom", "left", "right"};
        for (int k = 0; k < 4; ++k)
          if (pad[k] >= extent[k / 2])
            fail(where, std::string("padding ") + sides[k] + " = " + std::to_string(pad[k]) +
                            " must be smaller than the dilated kernel extent " + std::to_string(extent[k / 2]));
        if (w.dim(3) * groups != x.dims[2])
          fail(where, "weight " + int_tuple(w.shape) + " with groups=" + std::to_string(groups) + " expects " +
                          std::to_string(w.dim(3) * groups) + " input channels, but " + quoted(names[0]) + " has " +
                          std::to_string(x.dims[2]));
        const int64_t oh = floor_div(x.dims[0] + pad[0] + pad[1] - dil[0] * (w.dim(1) - 1) - 1, stride[0]) + 1;
        const int64_t ow = floor_div(x.dims[1] + pad[2] + pad[3] - dil[1] * (w.dim(2) - 1) - 1, stride[1]) + 1;
        if (oh < 1 || ow < 1)
          fail(where, "kernel " + std::to_string(w.dim(1)) + "x" + std::to_string(w.dim(2)) + " (dilation " +
                          int_tuple(dil) + ", padding " + int_tuple(pad) + ") does not fit the " +
                          std::to_string(x.dims[0]) + "x" + std::to_string(x.dims[1]) + " input");
        y.ndim = 3, y.dims[0] = oh, y.dims[1] = ow, y.dims[2] = c_out;
        return y;
      }
      case OpKind::kFullyConnected: {
        const FileTensor& w = *r.tensors.at("weight");
        const int64_t c_out = check_layer_tensors(r, op, where);
        if (x.ndim != 1)
          fail(where, "fully_connected needs a flat input (K,), but " + quoted(names[0]) + " has shape " +
                          shape_str(x) + "; insert a flatten op");
        if (w.dim(1) != x.dims[0])
          fail(where, "weight has " + std::to_string(w.dim(1)) + " input features but " + quoted(names[0]) + " has " +
                          std::to_string(x.dims[0]));
        y.ndim = 1, y.dims[0] = c_out;
        return y;
      }
      case OpKind::kAdd:
        if (in[0] != in[1])
          fail(where, "inputs " + quoted(names[0]) + " " + shape_str(in[0]) + " and " + quoted(names[1]) + " " +
                          shape_str(in[1]) + " differ in shape");
        return in[0];
      case OpKind::kAvgPool2d:
      case OpKind::kMaxPool2d: {
        need_image(op, names, where);
        const auto& kernel = op.attr_list("kernel");
        const auto& stride = op.attr_list("stride");
        const auto& pad = op.attr_list("padding");
        for (int k = 0; k < 4; ++k)
          if (pad[k] > kernel[k / 2] / 2)
            fail(where, "padding " + int_tuple(pad) + " exceeds half the kernel " + int_tuple(kernel) +
                            " (a window could lie wholly in the padding)");
        const bool ceil = op.kind == OpKind::kMaxPool2d && op.attr("ceil_mode") != 0;
        int64_t oh = 0, ow = 0;
        try {  // the kernels' own rule; it refuses a kernel larger than the padded input
          oh = pool_output_size(x.dims[0], kernel[0], stride[0], pad[0], pad[1], ceil);
          ow = pool_output_size(x.dims[1], kernel[1], stride[1], pad[2], pad[3], ceil);
        } catch (const InvalidArgument&) {
          oh = ow = 0;
        }
        if (oh < 1 || ow < 1)
          fail(where, "kernel " + int_tuple(kernel) + " does not fit the " + std::to_string(x.dims[0]) + "x" +
                          std::to_string(x.dims[1]) + " input");
        y.ndim = 3, y.dims[0] = oh, y.dims[1] = ow, y.dims[2] = x.dims[2];
        return y;
      }
      case OpKind::kGlobalAvgPool:
        need_image(op, names, where);
        y.ndim = 3, y.dims[0] = 1, y.dims[1] = 1, y.dims[2] = x.dims[2];
        return y;
      case OpKind::kFlatten: y.ndim = 1, y.dims[0] = x.count(); return y;
      case OpKind::kLut: {
        const FileTensor& t = *r.tensors.at("table");
        if (t.shape != std::vector<int64_t>{256})
          fail(where, "tensor " + quoted(r.name + ".table") + " has shape " + int_tuple(t.shape) +
                          ", expected (256,): one entry per int8 input");
        return x;
      }
      case OpKind::kMul: {
        const ValueShape& b = in[1];
        if (b == x) return x;
        if (x.ndim == 3 && b.ndim == 3 && b.dims[0] == 1 && b.dims[1] == 1 && b.dims[2] == x.dims[2]) return x;
        fail(where, "input " + quoted(names[1]) + " " + shape_str(b) + " does not broadcast to " + quoted(names[0]) +
                        " " + shape_str(x) +
                        ": it must have the same shape or be (1, 1, C) with C = " + std::to_string(x.last()));
      }
      case OpKind::kConcat: {
        int64_t channels = 0;
        for (size_t k = 0; k < in.size(); ++k) {
          const ValueShape& s = in[k];
          bool same = s.ndim == x.ndim;
          for (int d = 0; same && d + 1 < s.ndim; ++d) same = s.dims[d] == x.dims[d];
          if (!same)
            fail(where, "input " + quoted(names[k]) + " " + shape_str(s) + " does not match " + quoted(names[0]) + " " +
                            shape_str(x) +
                            ": concat joins (H, W, C) values of equal H and W (or flat values) along the channels");
          channels += s.last();
        }
        y = x;
        y.dims[y.ndim - 1] = channels;
        return y;
      }
      case OpKind::kChannelShuffle: {
        need_image(op, names, where);
        const int64_t groups = op.attr("groups");
        if (x.dims[2] % groups)
          fail(where, "groups (" + std::to_string(groups) + ") does not divide the " + std::to_string(x.dims[2]) +
                          " channels of " + quoted(names[0]));
        return x;
      }
      case OpKind::kSlice: {
        const int64_t begin = op.attr("begin"), end = op.attr("end");
        if (!(0 <= begin && begin < end && end <= x.last()))
          fail(where, "channels [" + std::to_string(begin) + ", " + std::to_string(end) +
                          ") are not a non-empty range of the " + std::to_string(x.last()) + " of " + quoted(names[0]));
        y = x;
        y.dims[y.ndim - 1] = end - begin;
        return y;
      }
      case OpKind::kPad: {
        need_image(op, names, where);
        const auto& pad = op.attr_list("padding");
        y.ndim = 3, y.dims[0] = x.dims[0] + pad[0] + pad[1], y.dims[1] = x.dims[1] + pad[2] + pad[3];
        y.dims[2] = x.dims[2];
        return y;
      }
      case OpKind::kUpsample: {
        need_image(op, names, where);
        const auto& f = op.attr_list("scale");
        y.ndim = 3, y.dims[0] = x.dims[0] * f[0], y.dims[1] = x.dims[1] * f[1], y.dims[2] = x.dims[2];
        return y;
      }
      case OpKind::kMean:
        need_image(op, names, where);
        if (x.dims[0] * x.dims[1] > kMaxMeanElements)
          fail(where, "a " + std::to_string(x.dims[0]) + "x" + std::to_string(x.dims[1]) +
                          " mean sums more than 2^23 values per channel (its int32 sum could overflow)");
        y.ndim = 3, y.dims[0] = 1, y.dims[1] = 1, y.dims[2] = x.dims[2];
        return y;
    }
    fail(where, "internal error: no shape rule for kind " + op.kind_name);
  }

  // ------------------------------------------------------------------ resources (footprint_of, _check_resources)
  // One im2col panel and its int16 copy per thread (cpu/kernels.h gemm_scratch_bytes).
  static int64_t gemm_scratch(int64_t k) {
    const int64_t k4 = round_up(k, 4);
    return sat_add(sat_add(round_up(sat_add(sat_mul(kPanelRows, k4), 16), 64), sat_prod({kPanelRows, k4, 2})),
                   kScratchAlign);
  }

  static int64_t gemm_params(int64_t groups, int64_t c_out, int64_t k) {
    const int64_t n16 = round_up(c_out / groups, 16), k4 = round_up(k, 4);
    const int64_t per_group = sat_add(sat_add(sat_prod({n16, k4, 3}), sat_mul(n16, kConstantBytes)), kGroupOverhead);
    return sat_add(sat_mul(groups, per_group), sat_mul(c_out, sat_add(k, 13)));
  }

  Footprint footprint(const RawOp& r, const ProgramOp& op, const std::vector<std::string>& names) {
    Footprint f;
    std::set<std::string> distinct;  // a value read twice is one buffer
    for (size_t k = 0; k < names.size(); ++k)
      if (distinct.insert(names[k]).second) f.input_bytes = sat_add(f.input_bytes, op.input_shapes[k].count());
    int64_t out = 1;
    for (int d = 0; d < op.shape.ndim; ++d) out = sat_mul(out, op.shape.dims[d]);
    f.output_bytes = out;
    const ValueShape& x = op.input_shapes[0];
    switch (op.kind) {
      case OpKind::kConv2d: {
        const FileTensor& w = *r.tensors.at("weight");
        const int64_t c_out = w.dim(0), kh = w.dim(1), kw = w.dim(2), c_group = w.dim(3);
        const int64_t groups = op.attr("groups");
        const int64_t pixels = sat_mul(op.shape.dims[0], op.shape.dims[1]);
        if (groups == x.dims[2] && groups > 1 && c_out == x.dims[2]) {  // Conv2dPlan's depthwise path
          const int64_t c16 = round_up(c_out, 16), c32 = round_up(c_out, 32), pairs = (kw + 1) / 2;
          const auto& pad = op.attr_list("padding");
          const int64_t padded_w = x.dims[1] + pad[2] + pad[3];
          const int64_t ring = sat_add(sat_mul(kh - 1, op.attr_list("dilation")[0]), 1);
          f.scratch_bytes = sat_add(sat_add(sat_add(sat_prod({ring, padded_w, c32, 4}), sat_mul(c32, 4)), padded_w),
                                    sat_add(sat_mul(c32 / 16, 1024), 128 + kScratchAlign));
          f.param_bytes = sat_add(
              sat_add(sat_prod({kh, kw, c16, 4}), sat_prod({sat_add(c32, c16), kh, pairs, 4})),
              sat_add(sat_mul(sat_add(2 * c16, c32), kConstantBytes), sat_mul(c_out, sat_add(sat_mul(kh, kw), 13))));
          f.work = sat_add(sat_prod({pixels, c16, kh, kw}), sat_prod({x.dims[0], padded_w, c32}));
          f.temporary =
              "the depthwise row ring (" + std::to_string(ring) + " rows of " + std::to_string(padded_w) + " columns)";
          return f;
        }
        const int64_t k = sat_prod({kh, kw, c_group});
        f.work = sat_prod({pixels, groups, round_up(c_out / groups, 16), round_up(k, 4)});
        f.scratch_bytes = gemm_scratch(k);
        f.param_bytes = gemm_params(groups, c_out, k);
        f.temporary = "the im2col panel";
        return f;
      }
      case OpKind::kFullyConnected: {
        const FileTensor& w = *r.tensors.at("weight");
        const int64_t c_out = w.dim(0), kk = w.dim(1);
        f.scratch_bytes = gemm_scratch(kk);
        f.param_bytes = gemm_params(1, c_out, kk);
        f.work = sat_mul(round_up(c_out, 16), round_up(kk, 4));
        f.temporary = "the im2col panel";
        return f;
      }
      case OpKind::kAvgPool2d:
      case OpKind::kMaxPool2d: {
        const auto& kernel = op.attr_list("kernel");
        f.work = sat_prod({out, kernel[0], kernel[1]});
        return f;
      }
      case OpKind::kGlobalAvgPool:
      case OpKind::kMean: f.work = x.count(); return f;
      case OpKind::kFlatten: return Footprint{0, 0, 0, 0, 0, 0, "none (a view of its input)"};
      case OpKind::kLut:
        f.param_bytes = 256;
        f.work = out;
        return f;
      case OpKind::kUpsample: f.work = sat_mul(op.attrs.at("mode").text == "bilinear" ? 4 : 1, out); return f;
      case OpKind::kAdd:
      case OpKind::kMul:
      case OpKind::kConcat:
      case OpKind::kChannelShuffle:
      case OpKind::kSlice:
      case OpKind::kPad: f.work = out; return f;
    }
    return f;
  }

  void check_resources(const RawOp& r, const ProgramOp& op, const std::string& where) {
    check_elements(where, "the output shape", op.shape);
    const Footprint& f = op.footprint;
    if (f.working_set() > kMaxOpBytes) {
      const std::string temp =
          f.temporary.empty()
              ? ""
              : " + temporaries " + commas(sat_add(f.intermediate_bytes, f.scratch_bytes)) + " B (" + f.temporary + ")";
      fail(where, "working set of " + commas(f.working_set()) + " bytes per image (inputs " + commas(f.input_bytes) +
                      " B + output " + commas(f.output_bytes) + " B" + temp + ") exceeds the limit of " +
                      commas(kMaxOpBytes) + " bytes (256 MiB; docs/program.md 4)");
    }
    if (f.work > kMaxOpWork)
      fail(where, "needs " + commas(f.work) + " operations per image, more than the limit of " + commas(kMaxOpWork) +
                      " (2^34; docs/program.md 4)");
    if (f.param_bytes > kMaxOpParamBytes)
      fail(where, "its parameters packed for the native kernels take " + commas(f.param_bytes) +
                      " bytes, more than the limit of " + commas(kMaxOpParamBytes) + " (256 MiB; docs/program.md 4)");
    check_native(r, op, where);
  }

  // The native kernels' own size checks (the op table's `native`), on one image.
  void check_native(const RawOp& r, const ProgramOp& op, const std::string& where) {
    const ValueShape& x = op.input_shapes[0];
    const ValueShape& y = op.shape;
    switch (op.kind) {
      case OpKind::kConv2d: {
        const FileTensor& w = *r.tensors.at("weight");
        const int64_t c_out = w.dim(0), kh = w.dim(1), kw = w.dim(2), c_group = w.dim(3);
        const auto& dil = op.attr_list("dilation");
        const int64_t extent[2] = {(kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1};
        const int64_t pairs[2][2] = {{x.dims[0], x.dims[1]}, {extent[0], extent[1]}};
        for (const auto& hw : pairs)
          if (sat_mul(hw[0], hw[1]) > kNativeIndexLimit / x.dims[2])
            fail(where, "the native convolution kernels refuse it: a " + std::to_string(hw[0]) + "x" +
                            std::to_string(hw[1]) + "x" + std::to_string(x.dims[2]) +
                            " input is beyond their 2^40 index limit");
        const int64_t k = sat_prod({kh, kw, c_group});
        if (sat_mul(y.dims[0], y.dims[1]) > kNativeIndexLimit / c_out || k > kNativeReductionLimit ||
            sat_mul(c_out, k) > kNativeIndexLimit)
          fail(where, "the native convolution kernels refuse it: output " + shape_str(y) + " with a reduction of " +
                          std::to_string(k) + " is beyond their index limits");
        return;
      }
      case OpKind::kAvgPool2d:
      case OpKind::kMaxPool2d: {
        const auto& kernel = op.attr_list("kernel");
        if (kernel[0] * kernel[1] > kNativePoolTaps)
          fail(where, "kernel " + int_list(kernel) + " has " + commas(kernel[0] * kernel[1]) + " taps, more than the " +
                          commas(kNativePoolTaps) + " (2^30) the native pooling kernels take");
        return;
      }
      case OpKind::kGlobalAvgPool:
        if (x.dims[0] * x.dims[1] > kNativePoolTaps)
          fail(where, "a " + std::to_string(x.dims[0]) + "x" + std::to_string(x.dims[1]) +
                          " window has more than the 2^30 taps the native pooling kernels take");
        return;
      default: return;
    }
  }

  // _check_program_memory: the values alive at every op plus its temporaries; all layers' parameters.
  void check_program_memory() {
    const Program& p = *program_;
    const int64_t n = static_cast<int64_t>(p.ops.size());
    // buffers: 0 the input, 1 + i op i; a view's output lives in its input's buffer
    std::vector<int64_t> storage(n + 1), born(n + 1, -1), last(n + 1, -1);
    storage[0] = 0, born[0] = 0, last[0] = 0;
    auto slot = [](int64_t value) { return value + 1; };
    for (int64_t i = 0; i < n; ++i) {
      const ProgramOp& op = p.ops[i];
      if (op.is_view()) {
        storage[slot(i)] = storage[slot(op.inputs[0])];
      } else {
        storage[slot(i)] = slot(i);
        born[slot(i)] = last[slot(i)] = i;
      }
      for (int64_t src : op.inputs) last[storage[slot(src)]] = i;
    }
    last[storage[slot(p.output)]] = n - 1;
    std::vector<int64_t> change(n + 1, 0);
    for (int64_t b = 0; b <= n; ++b) {
      if (born[b] < 0) continue;
      const int64_t size = p.value_shape(b - 1).count();
      change[born[b]] += size;
      change[last[b] + 1] -= size;
    }
    int64_t live = 0, params = 0;
    for (int64_t i = 0; i < n; ++i) {
      live += change[i];
      const Footprint& f = p.ops[i].footprint;
      const int64_t working = sat_add(sat_add(live, f.intermediate_bytes), f.scratch_bytes);
      if (working > kMaxPeakBytes)
        fail(source_ + ": op " + std::to_string(i) + " " + quoted(p.ops[i].name),
             "the values alive while it runs and its temporaries take " + commas(working) + " bytes per image (" +
                 commas(live) + " B of values alive), more than the limit of " + commas(kMaxPeakBytes) +
                 " (1 GiB; docs/program.md 4)");
      params = sat_add(params, f.param_bytes);
    }
    if (params > kMaxParamBytes)
      fail(source_, "the layers' parameters packed for the native kernels take " + commas(params) +
                        " bytes in total, more than the limit of " + commas(kMaxParamBytes) +
                        " (4 GiB; docs/program.md 4)");
  }

  // ------------------------------------------------------------------ the checksum (content_digest)
  void check_digest() {
    auto stored = metadata_text(kDigestKey);
    if (!stored)
      fail(source_, std::string("the header metadata has no '") + kDigestKey +
                        "' checksum (load with check_digest=False to accept a program written without one)");
    if (!json::valid_utf8(graph_text_.data(), graph_text_.size(), nullptr))  // a lone surrogate escape
      fail(source_, std::string("the '") + kMetadataKey +
                        "' graph holds a lone surrogate (\\ud800-\\udfff), which has no UTF-8 form: its checksum "
                        "cannot be computed");
    Sha256 h;
    h.update(graph_text_);
    for (const auto& kv : tensors_) {  // std::map: name order (byte order, the code point order of the names)
      const FileTensor& t = kv.second;
      std::string line = "\n" + kv.first + ":" + code_name(t.dtype) + ":" + int_list(t.shape) + "\n";
      h.update(line);
      h.update(t.data, static_cast<size_t>(t.nbytes));
    }
    if (*stored != h.hexdigest())
      fail(source_, std::string("checksum mismatch: the graph or the tensor data differ from what was written ('") +
                        kDigestKey + "' " + stored->substr(0, 16) +
                        "...); the file is corrupted or was edited (load with check_digest=False to accept an "
                        "edited program)");
  }

  // ------------------------------------------------------------------ packing
  void pack_layers() {
    Program& p = *program_;
    for (size_t i = 0; i < p.ops.size(); ++i) {
      ProgramOp& op = p.ops[i];
      if (op.kind != OpKind::kConv2d && op.kind != OpKind::kFullyConnected) continue;
      const RawOp& r = raw_[i];
      const FileTensor& w = *r.tensors.at("weight");
      const FileTensor& bias = *r.tensors.at("bias");
      const FileTensor& m = *r.tensors.at("multiplier");
      const FileTensor& e = *r.tensors.at("exponent");
      const FileTensor& s = *r.tensors.at("shift");
      const int64_t c_out = w.dim(0);
      std::vector<int8_t> weight(static_cast<size_t>(w.elements));
      std::memcpy(weight.data(), w.data, weight.size());
      std::vector<int32_t> b(c_out), m0(c_out), exp(c_out);
      std::vector<uint8_t> shift(s.data, s.data + c_out);
      for (int64_t c = 0; c < c_out; ++c) {
        b[c] = static_cast<int32_t>(bias.value(c));
        m0[c] = static_cast<int32_t>(m.value(m.elements == 1 ? 0 : c));  // per layer: one value for every channel
        exp[c] = static_cast<int32_t>(e.value(e.elements == 1 ? 0 : c));
      }
      Conv2dParams layer;
      Conv2dShape& sh = layer.shape;
      sh.out_c = c_out;
      if (op.kind == OpKind::kConv2d) {
        const auto& stride = op.attr_list("stride");
        const auto& pad = op.attr_list("padding");
        const auto& dil = op.attr_list("dilation");
        sh.in_c = op.input_shapes[0].dims[2];
        sh.kernel_h = w.dim(1), sh.kernel_w = w.dim(2);
        sh.stride_h = stride[0], sh.stride_w = stride[1];
        sh.pad_top = pad[0], sh.pad_bottom = pad[1], sh.pad_left = pad[2], sh.pad_right = pad[3];
        sh.dilation_h = dil[0], sh.dilation_w = dil[1];
        sh.groups = op.attr("groups");
        layer.op = "conv2d";
      } else {
        sh.in_c = w.dim(1);
        layer.op = "fully_connected";
      }
      layer.input_zero_point = static_cast<int32_t>(op.attr("input_zero_point"));
      layer.overflow = p.overflow;
      RequantParams& rq = layer.requant;
      rq.channels = c_out;
      rq.multiplier = m0.data();
      rq.exponent = exp.data();
      rq.shift = shift.data();
      rq.zero_point = static_cast<int32_t>(op.attr("output_zero_point"));
      rq.act_min = static_cast<int32_t>(op.attr("act_min"));
      rq.act_max = static_cast<int32_t>(op.attr("act_max"));
      rq.rounding = p.rounding;
      try {
        op.plan = std::make_unique<cpu::Conv2dPlan>(layer, weight.data(), b.data());
      } catch (const InvalidArgument& ex) {
        fail(source_ + ": op " + std::to_string(i) + " " + quoted(op.name),
             std::string("the native kernels refuse the layer: ") + ex.what());
      }
    }
  }

  std::string source_;
  bool skip_digest_;
  std::string data_;
  const unsigned char* body_ = nullptr;
  int64_t body_size_ = 0;
  Document header_, graph_;
  Index meta_ = Document::kNone;
  std::map<std::string, FileTensor> tensors_;
  std::string graph_text_;
  std::unique_ptr<Program> program_;
  std::vector<RawOp> raw_;
  Index input_shape_ = Document::kNone, input_zero_point_ = Document::kNone;
  Index arithmetic_version_ = Document::kNone;
  std::string output_name_, rounding_, overflow_;
  std::unordered_map<std::string, int64_t> names_;  // value name -> index (-1: the input)
};

}  // namespace

int64_t Footprint::working_set() const {
  return sat_add(sat_add(input_bytes, output_bytes), sat_add(intermediate_bytes, scratch_bytes));
}

std::unique_ptr<Program> load_program(const std::string& path, bool skip_digest) {
  return Loader(path, skip_digest).load();
}

}  // namespace capi
}  // namespace npuq
