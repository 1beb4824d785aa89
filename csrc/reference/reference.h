// Scalar reference kernels: the readable, single-threaded statement of every op in
// docs/arithmetic.md. The fast paths in csrc/cpu are tested bit-for-bit against these.
// Callers validate() the params first.
#pragma once

#include <cstdint>

#include "npuq/ops.h"

namespace npuq {
namespace ref {

// Exact (64-bit) accumulator of one conv output: bias + sum (x - z_x) * w (section 4).
int64_t conv2d_accumulator(const int8_t* x, const int8_t* w, const int32_t* bias, const Conv2dParams& p, int64_t n,
                           int64_t oh, int64_t ow, int64_t oc);

// The int32 accumulators before requantization, acc: [N, OH, OW, C_out]: conv2d_accumulator after the
// overflow policy (section 5). Throws AccumulatorOverflow under the kRaise policy.
void conv2d_accumulators(const int8_t* x, const int8_t* w, const int32_t* bias, int32_t* acc, const Conv2dParams& p);

// out: [N, OH, OW, C_out]. Throws AccumulatorOverflow under the kRaise policy.
void conv2d(const int8_t* x, const int8_t* w, const int32_t* bias, int8_t* out, const Conv2dParams& p);

// acc: [rows, channels] -> out: [rows, channels].
void requantize(const int32_t* acc, int64_t rows, int8_t* out, const RequantParams& r);

void add(const int8_t* a, const int8_t* b, int8_t* out, int64_t count, const AddParams& p);

// x: [N, H, W, C] -> out: [N, OH, OW, C].
void avg_pool2d(const int8_t* x, int8_t* out, const Pool2dParams& p);

}  // namespace ref
}  // namespace npuq
