// Python bindings of the GPU truncated SVD (npuq._C.cuda_truncated_svd, cuda_load_libs, ...), registered by
// csrc/bindings/module.cc in builds with CUDA.
#pragma once

#include <pybind11/pybind11.h>

namespace npuq {
namespace cuda {

void register_svd_bindings(pybind11::module_& m);

}  // namespace cuda
}  // namespace npuq
