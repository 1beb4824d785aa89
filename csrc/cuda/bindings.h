// Python bindings of the CUDA conv / eltwise kernels and of device arrays (npuq._C.Cuda*, cuda_*),
// registered by csrc/bindings/module.cc in builds with CUDA.
#pragma once

#include <pybind11/pybind11.h>

namespace npuq {
namespace cuda {

void register_bindings(pybind11::module_& m);

}  // namespace cuda
}  // namespace npuq
