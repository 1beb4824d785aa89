// Bindings of the eltwise ops: npuq._C functions, registered by csrc/bindings/module.cc.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

#include "npuq/eltwise_ops.h"

namespace npuq {
namespace bindings {

void register_eltwise_ops(pybind11::module_& m);

// The layout of mul on a of shape (N, H, W, C) or (N, K) and b of a's shape or (N, 1, 1, C); throws
// InvalidArgument naming the argument otherwise. Also used by the CUDA bindings.
MulParams mul_shape(const std::vector<int64_t>& a, const std::vector<int64_t>& b);

}  // namespace bindings
}  // namespace npuq
