// Python bindings of the low-rank factorization code (npuq._C.lrf_*), registered by
// csrc/bindings/module.cc.
#pragma once

#include <pybind11/pybind11.h>

namespace npuq {
namespace lrf {

void register_bindings(pybind11::module_& m);

}  // namespace lrf
}  // namespace npuq
