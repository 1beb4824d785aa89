// SHA-256 (FIPS 180-4), for the content digest of program files (docs/program.md 1): the loader checks
// the stored checksum without any cryptography library.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace npuq {
namespace capi {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  void update(const std::string& s) { update(s.data(), s.size()); }
  // The digest as 64 lowercase hex digits (Python's hexdigest()). The object is spent afterwards.
  std::string hexdigest();

 private:
  void block(const uint8_t* p);

  uint32_t h_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t length_ = 0;  // bytes hashed so far
};

}  // namespace capi
}  // namespace npuq
