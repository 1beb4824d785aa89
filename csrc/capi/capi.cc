// The C ABI's shared part: versions, this thread's error message, the conversions of its enums.
#include <string>

#include "capi/capi_internal.h"
#include "cpu/cpu.h"
#include "npuq/version.h"

#ifndef NPUQ_VERSION_STRING
#define NPUQ_VERSION_STRING "unknown"
#endif

namespace npuq {
namespace capi {

namespace {
thread_local std::string last_error;
}

void set_last_error(const std::string& message) {
  try {
    last_error = message;
  } catch (...) {
    last_error.clear();  // out of memory while reporting: an empty message beats an escaping exception
  }
}

void clear_last_error() { last_error.clear(); }

int64_t checked_product(std::initializer_list<int64_t> factors, const char* what) {
  int64_t p = 1;
  for (int64_t f : factors) {
    if (f < 0) invalid(std::string(what) + " has a negative size");
    if (f != 0 && p > INT64_MAX / f) invalid(std::string(what) + " has more than 2^63 elements");
    p *= f;
  }
  return p;
}

fp::Rounding rounding_of(int32_t r) {
  switch (r) {
    case NPUQ_ROUNDING_DOUBLE: return fp::Rounding::kDouble;
    case NPUQ_ROUNDING_SINGLE: return fp::Rounding::kSingle;
  }
  invalid("rounding must be NPUQ_ROUNDING_DOUBLE (0) or NPUQ_ROUNDING_SINGLE (1), got " +
          std::to_string(static_cast<int>(r)));
}

fp::Overflow overflow_of(int32_t o) {
  switch (o) {
    case NPUQ_OVERFLOW_RAISE: return fp::Overflow::kRaise;
    case NPUQ_OVERFLOW_SATURATE: return fp::Overflow::kSaturate;
    case NPUQ_OVERFLOW_WRAP: return fp::Overflow::kWrap;
  }
  invalid("overflow must be NPUQ_OVERFLOW_RAISE (0), NPUQ_OVERFLOW_SATURATE (1) or NPUQ_OVERFLOW_WRAP (2), got " +
          std::to_string(static_cast<int>(o)));
}

}  // namespace capi
}  // namespace npuq

using namespace npuq;

extern "C" {

NPUQ_API uint32_t npuq_abi_version(void) { return NPUQ_ABI_VERSION; }

NPUQ_API npuq_status npuq_check_abi(uint32_t caller_abi_version) {
  return capi::guarded("npuq_check_abi", [&] {
    if (caller_abi_version != NPUQ_ABI_VERSION)
      throw capi::Error(NPUQ_VERSION_MISMATCH, "the caller was compiled against npuq.h ABI version " +
                                                   std::to_string(caller_abi_version) +
                                                   ", this libnpuq (" NPUQ_VERSION_STRING ") has ABI version " +
                                                   std::to_string(NPUQ_ABI_VERSION) +
                                                   ": rebuild against this library's header (npuq config --cflags)");
  });
}

NPUQ_API uint32_t npuq_arithmetic_version(void) { return static_cast<uint32_t>(kArithmeticVersion); }

NPUQ_API const char* npuq_version(void) { return NPUQ_VERSION_STRING; }

NPUQ_API const char* npuq_isa(void) { return cpu::isa_name(cpu::active_isa()); }

NPUQ_API const char* npuq_last_error(void) { return capi::last_error.c_str(); }

NPUQ_API const char* npuq_status_name(npuq_status status) {
  switch (status) {
    case NPUQ_OK: return "NPUQ_OK";
    case NPUQ_INVALID_ARGUMENT: return "NPUQ_INVALID_ARGUMENT";
    case NPUQ_ACCUMULATOR_OVERFLOW: return "NPUQ_ACCUMULATOR_OVERFLOW";
    case NPUQ_PROGRAM_ERROR: return "NPUQ_PROGRAM_ERROR";
    case NPUQ_IO_ERROR: return "NPUQ_IO_ERROR";
    case NPUQ_OUT_OF_MEMORY: return "NPUQ_OUT_OF_MEMORY";
    case NPUQ_VERSION_MISMATCH: return "NPUQ_VERSION_MISMATCH";
    case NPUQ_INTERNAL_ERROR: return "NPUQ_INTERNAL_ERROR";
  }
  return "unknown npuq_status";
}

}  // extern "C"
