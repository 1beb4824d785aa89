// Checks of the numpy arrays the bindings receive (CPU: csrc/bindings/module.cc; both backends: the
// parameter conversions of params.cc), so that no call can read out of bounds whatever it is given.
#pragma once

#include <pybind11/numpy.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>

#include "npuq/ops.h"

namespace npuq {
namespace bindings {

inline std::string shape_of(const pybind11::array& a) {
  std::ostringstream os;
  os << "(";
  for (pybind11::ssize_t i = 0; i < a.ndim(); ++i) os << (i ? ", " : "") << a.shape(i);
  os << (a.ndim() == 1 ? ",)" : ")");
  return os.str();
}

template <typename T>
const char* dtype_name() {
  if (std::is_same<T, int8_t>::value) return "int8";
  if (std::is_same<T, uint8_t>::value) return "uint8";
  if (std::is_same<T, int32_t>::value) return "int32";
  return "?";
}

// The array as a read-only view of T, after checking dtype, rank (ndim < 0: any) and C-contiguity.
template <typename T>
const T* view(const pybind11::array& a, const char* name, int ndim) {
  // equal types, not the same dtype object: numpy makes new, equivalent objects (np.dtype("<i4") on a
  // little-endian machine, arrays read from files), and a byte-swapped array is not equivalent
  const pybind11::dtype want = pybind11::dtype::of<T>();
  if (!a.dtype().is(want) && !pybind11::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(), want.ptr()))
    throw pybind11::type_error(std::string(name) + " must have dtype " + dtype_name<T>() + ", got " +
                               std::string(pybind11::str(a.dtype())));
  if (ndim >= 0 && a.ndim() != ndim)
    throw InvalidArgument(std::string(name) + " must have " + std::to_string(ndim) + " dimensions, got shape " +
                          shape_of(a));
  if (!(a.flags() & pybind11::array::c_style)) throw InvalidArgument(std::string(name) + " must be C-contiguous");
  if (reinterpret_cast<uintptr_t>(a.data()) % alignof(T) != 0)
    throw InvalidArgument(std::string(name) + " is not aligned to " + std::to_string(alignof(T)) + " bytes");
  for (pybind11::ssize_t i = 0; i < a.ndim(); ++i)
    if (a.shape(i) == 0) throw InvalidArgument(std::string(name) + " is empty: shape " + shape_of(a));
  return static_cast<const T*>(a.data());
}

inline void require_length(const pybind11::array& a, const char* name, int64_t n) {
  if (a.ndim() != 1 || a.shape(0) != n)
    throw InvalidArgument(std::string(name) + " must have shape (" + std::to_string(n) + ",), got " + shape_of(a));
}

}  // namespace bindings
}  // namespace npuq
