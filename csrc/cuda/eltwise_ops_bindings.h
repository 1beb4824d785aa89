// Bindings of the CUDA eltwise kernels.
#pragma once

#include <pybind11/pybind11.h>

namespace npuq {
namespace cuda {

void register_eltwise_ops(pybind11::module_& m);

}  // namespace cuda
}  // namespace npuq
