// A strict JSON reader for program files (docs/program.md 4): the header of the safetensors layout and the
// graph inside it come from files that are hostile until validated.
//
// Strict where parsers disagree: a key twice in one object, bytes after the value and nesting beyond a
// limit are errors. It reads what Python's json module reads (the program loader's reference): NaN,
// Infinity and -Infinity are numbers, integers keep their text when they leave int64, and an integer of
// more than 4300 digits is refused as Python refuses to convert it. Field checks decide what each value
// may be.
//
// The document is a flat array of 16-byte nodes, 4 bytes per array element or 8 per object member, and
// one string pool: a text of N bytes costs at most about 10 N bytes, whatever its shape.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace npuq {
namespace capi {
namespace json {

enum class Type : uint8_t { kNull, kBool, kInt, kBigInt, kFloat, kString, kArray, kObject };

const char* type_name(Type t);  // Python's type names: "NoneType", "bool", "int", "float", "str", "list", "dict"

// Why a text is not JSON (or is JSON that npuq refuses), in the words of Python's JSONDecodeError: the line,
// column and character where the reading stopped.
struct ParseError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Whether [data, data + size) is UTF-8 as Python's strict decoder takes it (no overlong forms, no
// surrogates, nothing above U+10FFFF); otherwise *error (when not NULL) is Python's UnicodeDecodeError text.
bool valid_utf8(const char* data, size_t size, std::string* error);

// The double nearest a decimal number's text (JSON grammar; an integer's digits too), correctly rounded as
// Python's float() rounds: a magnitude beyond double is an infinity, one below its range zero.
double decimal_to_double(std::string_view text);

class Document {
 public:
  using Index = uint32_t;
  static constexpr Index kNone = UINT32_MAX;
  static constexpr int kMaxIntDigits = 4300;  // Python's default int_max_str_digits

  // The text must be the whole document: whitespace may surround the value, nothing else. Strings are
  // unescaped to UTF-8; a lone surrogate escape (\ud800) is kept as its three-byte form, as Python keeps it
  // in a str. Throws ParseError.
  static Document parse(std::string_view text, int max_depth);

  Index root() const { return root_; }
  Type type(Index i) const { return nodes_[i].type; }
  bool boolean(Index i) const { return nodes_[i].payload != 0; }
  int64_t integer(Index i) const;  // kInt
  double number(Index i) const;    // kFloat
  // kString: the unescaped text; kBigInt: the integer's decimal text (sign included).
  std::string_view text(Index i) const { return {pool_.data() + nodes_[i].payload, nodes_[i].count}; }
  size_t size(Index i) const { return nodes_[i].count; }  // elements of an array, members of an object
  Index element(Index array, size_t k) const { return kids_[nodes_[array].payload + k]; }
  std::string_view key(Index object, size_t k) const { return text(kids_[nodes_[object].payload + 2 * k]); }
  Index value(Index object, size_t k) const { return kids_[nodes_[object].payload + 2 * k + 1]; }
  Index find(Index object, std::string_view name) const;  // kNone when absent

  // The deepest nesting of arrays and objects at and below i (a scalar: 0), without recursion.
  int depth(Index i) const;
  // The first float at or below i that is not finite (NaN, an infinity), or kNone.
  Index first_non_finite(Index i) const;

 private:
  struct Node {
    Type type;
    uint32_t count;    // string length, array elements or object members
    uint64_t payload;  // bool, int64 bits, double bits, pool offset or kids offset
  };
  class Parser;

  Index root_ = 0;
  std::vector<Node> nodes_;
  std::vector<Index> kids_;  // arrays: element nodes; objects: key node, value node per member
  std::string pool_;
};

// Python's repr of a value, cut after max_chars characters (its "{v!r:.80}"): for messages naming what was
// found. Python's repr is unbounded; 4000 characters keep a message readable and its size bounded.
std::string describe(const Document& doc, Document::Index i, size_t max_chars = 4000);
// Python's repr of a str (UTF-8): quotes, escapes of what is not printable.
std::string py_repr(std::string_view utf8);
// s cut after max_chars characters (not bytes).
std::string truncate_chars(const std::string& s, size_t max_chars);
// Python's repr of a float: the shortest digits that round-trip, "1e-05", "0.0001", "1e+16", "-128.0".
std::string float_repr(double v);

}  // namespace json
}  // namespace capi
}  // namespace npuq
