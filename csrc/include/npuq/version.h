// The version of docs/arithmetic.md the kernels implement. A program records the version it was
// compiled for; the Python module (_C.ARITHMETIC_VERSION) and the C ABI (npuq_arithmetic_version) report
// this one. Bumped only when some op's integer output changes for some input.
#pragma once

namespace npuq {
constexpr int kArithmeticVersion = 1;
}  // namespace npuq
