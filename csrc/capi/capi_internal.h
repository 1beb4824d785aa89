// What the C ABI's translation units share: the status every exception becomes, this thread's error
// message, and the argument checks of pointers and element counts.
//
// Every exported function body runs inside guarded(), so no C++ exception crosses the C boundary.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <new>
#include <stdexcept>
#include <string>

#include "npuq.h"
#include "npuq/ops.h"

namespace npuq {
namespace capi {

// An error with the status it becomes; the message is the one npuq_last_error() returns.
struct Error : std::runtime_error {
  npuq_status status;
  Error(npuq_status s, const std::string& message) : std::runtime_error(message), status(s) {}
};

// This thread's message: set by every failing call, cleared by every successful one.
void set_last_error(const std::string& message);
void clear_last_error();

// fn: the exported function's name, which prefixes the message ("npuq_conv2d: weight_count is 9, ...").
template <typename F>
npuq_status guarded(const char* fn, F&& body) noexcept {
  try {
    body();
    clear_last_error();
    return NPUQ_OK;
  } catch (const Error& e) {
    set_last_error(std::string(fn) + ": " + e.what());
    return e.status;
  } catch (const AccumulatorOverflow& e) {
    set_last_error(std::string(fn) + ": " + e.what());
    return NPUQ_ACCUMULATOR_OVERFLOW;
  } catch (const InvalidArgument& e) {
    set_last_error(std::string(fn) + ": " + e.what());
    return NPUQ_INVALID_ARGUMENT;
  } catch (const std::bad_alloc&) {
    set_last_error(std::string(fn) + ": out of memory");
    return NPUQ_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    set_last_error(std::string(fn) + ": internal error: " + e.what());
    return NPUQ_INTERNAL_ERROR;
  } catch (...) {
    set_last_error(std::string(fn) + ": internal error");
    return NPUQ_INTERNAL_ERROR;
  }
}

[[noreturn]] inline void invalid(const std::string& message) { throw Error(NPUQ_INVALID_ARGUMENT, message); }

template <typename T>
void require_pointer(const T* p, const char* name) {
  if (p == nullptr) invalid(std::string(name) + " is NULL");
}

// `count` elements were passed as `name`; the shape implies `expected`.
inline void require_count(int64_t count, int64_t expected, const char* name) {
  if (count != expected)
    invalid(std::string(name) + " is " + std::to_string(count) + " elements; the shape needs " +
            std::to_string(expected));
}

// a * b * ... without signed overflow: the product of non-negative sizes, or an error naming `what`.
int64_t checked_product(std::initializer_list<int64_t> factors, const char* what);

fp::Rounding rounding_of(int32_t r);
fp::Overflow overflow_of(int32_t o);

}  // namespace capi
}  // namespace npuq
