// Bindings of the resample ops: npuq._C functions, registered by csrc/bindings/module.cc.
#pragma once

#include <pybind11/pybind11.h>

namespace npuq {
namespace bindings {

void register_resample_ops(pybind11::module_& m);

}  // namespace bindings
}  // namespace npuq
