// The strict JSON reader (json.h). It follows the grammar Python's json module accepts, byte for byte where
// the program loader's outcome could differ: which escapes, which numbers, which whitespace, how surrogate
// escapes pair up.
#include "capi/json.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

namespace npuq {
namespace capi {
namespace json {

const char* type_name(Type t) {
  switch (t) {
    case Type::kNull: return "NoneType";
    case Type::kBool: return "bool";
    case Type::kInt:
    case Type::kBigInt: return "int";
    case Type::kFloat: return "float";
    case Type::kString: return "str";
    case Type::kArray: return "list";
    case Type::kObject: return "dict";
  }
  return "?";
}

bool valid_utf8(const char* data, size_t size, std::string* error) {
  const auto* s = reinterpret_cast<const unsigned char*>(data);
  size_t i = 0;
  while (i < size) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t n = 0;                   // continuation bytes the lead byte announces
    unsigned lo = 0x80, hi = 0xBF;  // the range of the first of them
    if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
    }
    // Python's UnicodeDecodeError: the bytes it consumed before the error, and why
    const char* reason = nullptr;
    size_t consumed = 1;
    if (n == 0) {
      reason = "invalid start byte";
    } else {
      for (size_t k = 1; k <= n; ++k) {
        if (i + k >= size) {
          reason = "unexpected end of data";
          consumed = size - i;
          break;
        }
        const unsigned d = s[i + k];
        if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF)) {
          reason = "invalid continuation byte";
          consumed = k;
          break;
        }
      }
    }
    if (reason) {
      if (error) {
        char byte[8];
        std::snprintf(byte, sizeof(byte), "0x%02x", c);
        *error = consumed == 1 ? std::string("'utf-8' codec can't decode byte ") + byte + " in position " +
                                     std::to_string(i) + ": " + reason
                               : "'utf-8' codec can't decode bytes in position " + std::to_string(i) + "-" +
                                     std::to_string(i + consumed - 1) + ": " + reason;
      }
      return false;
    }
    i += n + 1;
  }
  return true;
}

namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Code point cp as UTF-8 (a surrogate as its three-byte form, which only a lone \uD800-style escape gives).
void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

template <typename T>
uint64_t bits_of(T v) {
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(v));
  return b;
}

}  // namespace

// Correctly rounded, as Python's float(); a magnitude beyond double is an infinity, one below it zero.
double decimal_to_double(std::string_view text) {
  double v = 0;
  const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
  if (r.ec == std::errc()) return v;
  const bool negative = !text.empty() && text[0] == '-';
  // Out of range: the decimal exponent of the first non-zero digit says which way.
  int64_t point = 0, first = -1, exp = 0, index = 0;
  size_t i = negative ? 1 : 0;
  bool seen_point = false;
  for (; i < text.size() && text[i] != 'e' && text[i] != 'E'; ++i) {
    if (text[i] == '.') {
      seen_point = true;
      continue;
    }
    if (first < 0 && text[i] != '0') first = index;
    ++index;
    if (!seen_point) ++point;
  }
  if (i < text.size()) {
    ++i;
    bool exp_negative = false;
    if (i < text.size() && (text[i] == '+' || text[i] == '-')) exp_negative = text[i++] == '-';
    for (; i < text.size(); ++i) exp = std::min<int64_t>(exp * 10 + (text[i] - '0'), int64_t{1} << 40);
    if (exp_negative) exp = -exp;
  }
  const bool huge = first >= 0 && point - first + exp > 0;
  const double magnitude = huge ? std::numeric_limits<double>::infinity() : 0.0;
  return negative ? -magnitude : magnitude;
}

class Document::Parser {
 public:
  Parser(Document& doc, std::string_view text, int max_depth) : doc_(doc), s_(text), max_depth_(max_depth) {}

  Index run() {
    if (s_.substr(0, 3) == "\xEF\xBB\xBF") fail("Unexpected UTF-8 BOM (decode using utf-8-sig)", 0);
    skip_ws();
    const Index root = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("Extra data", pos_);
    return root;
  }

 private:
  // Python's JSONDecodeError text: "<what>: line L column C (char P)", P and C counted in characters.
  [[noreturn]] void fail(const std::string& what, size_t at) const {
    size_t chars = 0, line = 1, line_start = 0;  // line_start: characters before the current line
    for (size_t i = 0; i < at && i < s_.size(); ++i) {
      const unsigned char c = static_cast<unsigned char>(s_[i]);
      if ((c & 0xC0) == 0x80) continue;  // a continuation byte: the same character
      ++chars;
      if (c == '\n') ++line, line_start = chars;
    }
    throw ParseError(what + ": line " + std::to_string(line) + " column " + std::to_string(chars - line_start + 1) +
                     " (char " + std::to_string(chars) + ")");
  }

  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }

  bool next_is(std::string_view word) const { return s_.substr(pos_, word.size()) == word; }

  Index add(Type type, uint32_t count, uint64_t payload) {
    if (doc_.nodes_.size() >= kNone - 1) fail("too many values", pos_);
    doc_.nodes_.push_back(Node{type, count, payload});
    return static_cast<Index>(doc_.nodes_.size() - 1);
  }

  Index parse_value(int depth) {
    if (pos_ >= s_.size()) fail("Expecting value", pos_);
    const char c = s_[pos_];
    if (c == '{') return parse_object(depth + 1);
    if (c == '[') return parse_array(depth + 1);
    if (c == '"') {
      const uint64_t offset = doc_.pool_.size();
      parse_string();
      return add(Type::kString, static_cast<uint32_t>(doc_.pool_.size() - offset), offset);
    }
    if (next_is("null")) {
      pos_ += 4;
      return add(Type::kNull, 0, 0);
    }
    if (next_is("true")) {
      pos_ += 4;
      return add(Type::kBool, 0, 1);
    }
    if (next_is("false")) {
      pos_ += 5;
      return add(Type::kBool, 0, 0);
    }
    if (next_is("NaN")) {
      pos_ += 3;
      return add(Type::kFloat, 0, bits_of(std::numeric_limits<double>::quiet_NaN()));
    }
    if (next_is("Infinity")) {
      pos_ += 8;
      return add(Type::kFloat, 0, bits_of(std::numeric_limits<double>::infinity()));
    }
    if (next_is("-Infinity")) {
      pos_ += 9;
      return add(Type::kFloat, 0, bits_of(-std::numeric_limits<double>::infinity()));
    }
    if (c == '-' || is_digit(c)) return parse_number();
    fail("Expecting value", pos_);
  }

  void enter(int depth) {
    if (depth > max_depth_) fail("nesting deeper than " + std::to_string(max_depth_) + " levels", pos_);
  }

  // The child indices of the container being parsed live on stack_ until it closes, then move to kids_
  // in one piece: a container's children are contiguous however deep they nest.
  uint64_t close(size_t mark) {
    const uint64_t offset = doc_.kids_.size();
    doc_.kids_.insert(doc_.kids_.end(), stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return offset;
  }

  Index parse_array(int depth) {
    enter(depth);
    ++pos_;
    const size_t mark = stack_.size();
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
    } else {
      for (;;) {
        skip_ws();
        const Index child = parse_value(depth);
        stack_.push_back(child);
        if (closed_after_item(']')) break;
      }
    }
    const size_t count = stack_.size() - mark;
    if (count > UINT32_MAX) fail("an array too long", pos_);
    const uint64_t offset = close(mark);
    return add(Type::kArray, static_cast<uint32_t>(count), offset);
  }

  // After an array element or an object member: true at the closing `closer` (consumed), false after a
  // comma (consumed); anything else is Python's error.
  bool closed_after_item(char closer) {
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == ',') {
      ++pos_;
      return false;
    }
    if (pos_ < s_.size() && s_[pos_] == closer) {
      ++pos_;
      return true;
    }
    fail("Expecting ',' delimiter", pos_);
  }

  Index parse_object(int depth) {
    enter(depth);
    ++pos_;
    const size_t mark = stack_.size();
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
    } else {
      for (;;) {
        skip_ws();
        if (pos_ >= s_.size() || s_[pos_] != '"') fail("Expecting property name enclosed in double quotes", pos_);
        const uint64_t offset = doc_.pool_.size();
        parse_string();
        stack_.push_back(add(Type::kString, static_cast<uint32_t>(doc_.pool_.size() - offset), offset));
        skip_ws();
        if (pos_ >= s_.size() || s_[pos_] != ':') fail("Expecting ':' delimiter", pos_);
        ++pos_;
        skip_ws();
        const Index child = parse_value(depth);
        stack_.push_back(child);
        if (closed_after_item('}')) break;
      }
    }
    check_unique_keys(mark);
    const size_t count = (stack_.size() - mark) / 2;
    if (count > UINT32_MAX) fail("an object too long", pos_);
    const uint64_t offset = close(mark);
    return add(Type::kObject, static_cast<uint32_t>(count), offset);
  }

  std::string_view key_text(Index key) const {
    return {doc_.pool_.data() + doc_.nodes_[key].payload, doc_.nodes_[key].count};
  }

  void check_unique_keys(size_t mark) {
    const size_t members = (stack_.size() - mark) / 2;
    std::vector<Index> keys(members);
    for (size_t k = 0; k < members; ++k) keys[k] = stack_[mark + 2 * k];
    std::sort(keys.begin(), keys.end(), [&](Index a, Index b) { return key_text(a) < key_text(b); });
    for (size_t k = 1; k < members; ++k)
      if (key_text(keys[k]) == key_text(keys[k - 1])) {
        throw ParseError("duplicate key " + py_repr(key_text(keys[k])).substr(0, 80) +
                         ": it appears twice in one object (readers that keep the first or the last value would "
                         "read different files)");
      }
  }

  // The 4 hex digits after the 'u' at pos_ - 1; Python names that 'u' in its errors, and wants a character
  // after the digits (the closing quote at least).
  uint32_t hex4() {
    const size_t u = pos_ - 1;
    if (pos_ + 4 >= s_.size()) fail("Invalid \\uXXXX escape", u);
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const int h = hex_value(s_[pos_ + k]);
      if (h < 0) fail("Invalid \\uXXXX escape", u);
      v = v * 16 + static_cast<uint32_t>(h);
    }
    pos_ += 4;
    return v;
  }

  // The string at pos_ (its opening quote), unescaped onto the pool.
  void parse_string() {
    std::string& out = doc_.pool_;
    const size_t quote = pos_++;
    for (;;) {
      const size_t start = pos_;
      while (pos_ < s_.size() && s_[pos_] != '"' && s_[pos_] != '\\' && static_cast<unsigned char>(s_[pos_]) >= 0x20)
        ++pos_;
      out.append(s_.data() + start, pos_ - start);
      if (pos_ >= s_.size()) fail("Unterminated string starting at", quote);
      const char c = s_[pos_];
      if (c == '"') {
        ++pos_;
        if (out.size() > UINT32_MAX) fail("a string too long", quote);
        return;
      }
      if (c != '\\') fail("Invalid control character at", pos_);
      ++pos_;
      if (pos_ >= s_.size()) fail("Unterminated string starting at", quote);
      const char e = s_[pos_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          uint32_t cp = hex4();
          // A high surrogate escape followed by a low one is one code point; anything else leaves it lone
          // and the next escape is read on its own (Python's scanner does the same).
          if (cp >= 0xD800 && cp <= 0xDBFF && pos_ + 6 < s_.size() && s_[pos_] == '\\' && s_[pos_ + 1] == 'u') {
            const size_t back = pos_;
            pos_ += 2;
            const uint32_t low = hex4();
            if (low >= 0xDC00 && low <= 0xDFFF) cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            else pos_ = back;
          }
          append_utf8(out, cp);
          break;
        }
        default: fail("Invalid \\escape", pos_ - 2);
      }
    }
  }

  Index parse_number() {
    const size_t start = pos_;
    if (s_[pos_] == '-') ++pos_;
    if (pos_ >= s_.size()) fail("Expecting value", start);
    if (s_[pos_] == '0') {
      ++pos_;
    } else if (s_[pos_] >= '1' && s_[pos_] <= '9') {
      while (pos_ < s_.size() && is_digit(s_[pos_])) ++pos_;
    } else {
      fail("Expecting value", start);
    }
    const size_t int_end = pos_;
    bool is_float = false;
    if (pos_ + 1 < s_.size() && s_[pos_] == '.' && is_digit(s_[pos_ + 1])) {
      is_float = true;
      pos_ += 2;
      while (pos_ < s_.size() && is_digit(s_[pos_])) ++pos_;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      const size_t e_start = pos_++;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      const size_t digits = pos_;
      while (pos_ < s_.size() && is_digit(s_[pos_])) ++pos_;
      if (pos_ > digits) is_float = true;
      else pos_ = e_start;  // not an exponent: what follows is an error of the enclosing grammar
    }
    const std::string_view text = s_.substr(start, pos_ - start);
    if (!is_float) return add_integer(text, int_end - start - (s_[start] == '-' ? 1 : 0));
    return add(Type::kFloat, 0, bits_of(decimal_to_double(text)));
  }

  Index add_integer(std::string_view text, size_t digits) {
    if (digits > static_cast<size_t>(kMaxIntDigits))  // Python's ValueError, which has no position
      throw ParseError("Exceeds the limit (" + std::to_string(kMaxIntDigits) +
                       " digits) for integer string conversion: value has " + std::to_string(digits) +
                       " digits; use sys.set_int_max_str_digits() to increase the limit");
    int64_t v = 0;
    const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
    if (r.ec == std::errc() && r.ptr == text.data() + text.size()) return add(Type::kInt, 0, static_cast<uint64_t>(v));
    const uint64_t offset = doc_.pool_.size();
    doc_.pool_.append(text.data(), text.size());
    return add(Type::kBigInt, static_cast<uint32_t>(text.size()), offset);
  }

 private:
  Document& doc_;
  std::string_view s_;
  int max_depth_;
  size_t pos_ = 0;
  std::vector<Index> stack_;
};

Document Document::parse(std::string_view text, int max_depth) {
  Document doc;
  Parser p(doc, text, max_depth);
  doc.root_ = p.run();  // a container's node follows its children's: the root is the last node
  return doc;
}

int64_t Document::integer(Index i) const { return static_cast<int64_t>(nodes_[i].payload); }

double Document::number(Index i) const {
  double v = 0;
  std::memcpy(&v, &nodes_[i].payload, sizeof(v));
  return v;
}

Document::Index Document::find(Index object, std::string_view name) const {
  for (size_t k = 0; k < size(object); ++k)
    if (key(object, k) == name) return value(object, k);
  return kNone;
}

int Document::depth(Index i) const {
  int deepest = 0;
  std::vector<std::pair<Index, int>> todo{{i, 0}};
  while (!todo.empty()) {
    auto [n, d] = todo.back();
    todo.pop_back();
    const Type t = type(n);
    if (t != Type::kArray && t != Type::kObject) continue;
    deepest = std::max(deepest, d + 1);
    for (size_t k = 0; k < size(n); ++k) todo.push_back({t == Type::kArray ? element(n, k) : value(n, k), d + 1});
  }
  return deepest;
}

Document::Index Document::first_non_finite(Index i) const {
  std::vector<Index> todo{i};
  while (!todo.empty()) {
    const Index n = todo.back();
    todo.pop_back();
    const Type t = type(n);
    if (t == Type::kFloat && !std::isfinite(number(n))) return n;
    if (t == Type::kArray)
      for (size_t k = size(n); k-- > 0;) todo.push_back(element(n, k));
    if (t == Type::kObject)
      for (size_t k = size(n); k-- > 0;) todo.push_back(value(n, k));
  }
  return kNone;
}

std::string float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);  // shortest digits
  const std::string sci(buf, r.ptr);
  const size_t e = sci.find('e');
  const bool negative = sci[0] == '-';
  std::string digits;
  for (size_t k = negative ? 1 : 0; k < e; ++k)
    if (sci[k] != '.') digits += sci[k];
  const int exp10 = std::stoi(sci.substr(e + 1));
  std::string out = negative ? "-" : "";
  if (exp10 < -4 || exp10 >= 16) {  // Python's repr switches to an exponent here
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    const int a = exp10 < 0 ? -exp10 : exp10;
    out += std::string(exp10 < 0 ? "e-" : "e+") + (a < 10 ? "0" : "") + std::to_string(a);
    return out;
  }
  if (exp10 < 0) return out + "0." + std::string(static_cast<size_t>(-exp10 - 1), '0') + digits;
  const size_t point = static_cast<size_t>(exp10) + 1;
  if (digits.size() <= point) return out + digits + std::string(point - digits.size(), '0') + ".0";
  return out + digits.substr(0, point) + "." + digits.substr(point);
}

namespace {

// The code points of UTF-8 (or of the three-byte form of a lone surrogate), for repr.
template <typename F>
void for_each_code_point(std::string_view s, F f) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    uint32_t cp = n == 1 ? c : n == 2 ? c & 0x1F : n == 3 ? c & 0x0F : c & 0x07;
    for (size_t k = 1; k < n && i + k < s.size(); ++k) cp = cp << 6 | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    f(cp, s.substr(i, n));
    i += n;
  }
}

// str.isprintable() for the characters a program's strings hold. Python's table is the Unicode database; this
// knows the ranges that matter here (controls, format characters, spaces other than ' ', surrogates, private
// use, the unassigned planes 4 to 13) and takes the rest as printable.
bool printable(uint32_t cp) {
  if (cp < 0x20 || (cp >= 0x7F && cp <= 0xA0) || cp == 0xAD) return false;
  if (cp == 0x1680 || cp == 0x180E || (cp >= 0x2000 && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202F)) return false;
  if ((cp >= 0x205F && cp <= 0x206F) || cp == 0x3000 || cp == 0xFEFF || (cp >= 0xFFF9 && cp <= 0xFFFB)) return false;
  if ((cp >= 0xD800 && cp <= 0xF8FF) || (cp & 0xFFFE) == 0xFFFE) return false;  // surrogates, private use
  if (cp >= 0x40000 && !(cp >= 0xE0100 && cp <= 0xE01EF)) return false;
  return true;
}

}  // namespace

std::string py_repr(std::string_view s) {
  const bool single = s.find('\'') == std::string_view::npos || s.find('"') != std::string_view::npos;
  const char quote = single ? '\'' : '"';
  std::string out(1, quote);
  for_each_code_point(s, [&](uint32_t cp, std::string_view bytes) {
    char buf[16];
    if (cp == static_cast<uint32_t>(quote) || cp == '\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (printable(cp)) {
      out.append(bytes.data(), bytes.size());
    } else {
      std::snprintf(buf, sizeof(buf), cp < 0x100 ? "\\x%02x" : cp < 0x10000 ? "\\u%04x" : "\\U%08x", cp);
      out += buf;
    }
  });
  return out + quote;
}

std::string truncate_chars(const std::string& s, size_t max_chars) {
  size_t chars = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) continue;
    if (chars++ == max_chars) return s.substr(0, i);
  }
  return s;
}

std::string describe(const Document& doc, Document::Index i, size_t max_chars) {
  std::string out;
  switch (doc.type(i)) {
    case Type::kNull: out = "None"; break;
    case Type::kBool: out = doc.boolean(i) ? "True" : "False"; break;
    case Type::kInt: out = std::to_string(doc.integer(i)); break;
    case Type::kBigInt: out = std::string(doc.text(i)); break;
    case Type::kFloat: out = float_repr(doc.number(i)); break;
    case Type::kString: out = py_repr(doc.text(i)); break;
    case Type::kArray: {
      out = "[";
      for (size_t k = 0; k < doc.size(i) && out.size() <= max_chars; ++k)
        out += (k ? ", " : "") + describe(doc, doc.element(i, k), max_chars);
      out += "]";
      break;
    }
    case Type::kObject: {
      out = "{";
      for (size_t k = 0; k < doc.size(i) && out.size() <= max_chars; ++k)
        out += (k ? ", " : "") + py_repr(doc.key(i, k)) + ": " + describe(doc, doc.value(i, k), max_chars);
      out += "}";
      break;
    }
  }
  return truncate_chars(out, max_chars);
}

}  // namespace json
}  // namespace capi
}  // namespace npuq
