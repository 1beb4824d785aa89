// AVX2 kernels: the generic loops compiled for AVX2 + FMA (x86-64 only).
#include "kernels.h"
#include "target.h"

namespace npuq {
namespace cpu {

#if NPUQ_HAVE_X86_TARGETS
NPUQ_TARGET_BEGIN("avx2,fma,bmi,bmi2,popcnt")
namespace avx2 {
#include "kernels_generic.inc"
}  // namespace avx2
NPUQ_TARGET_END

const KernelTable* avx2_kernels() {
  static const KernelTable table = {"avx2", avx2::generic_gemm_tile, avx2::generic_depthwise_rows,
                                    avx2::generic_requantize_rows, avx2::generic_add,
                                    avx2::generic_avg_pool_rows};
  return &table;
}
#else
const KernelTable* avx2_kernels() { return nullptr; }
#endif

}  // namespace cpu
}  // namespace npuq
