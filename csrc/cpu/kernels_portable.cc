// Portable kernels: the generic loops at the compiler's baseline instruction set.
#include "kernels.h"

namespace npuq {
namespace cpu {
namespace portable {
#include "kernels_generic.inc"
}  // namespace portable

const KernelTable& portable_kernels() {
  static const KernelTable table = {"portable",
                                    portable::generic_gemm_tile,
                                    portable::generic_depthwise_rows,
                                    portable::generic_requantize_rows,
                                    portable::generic_add,
                                    portable::generic_avg_pool_rows};
  return table;
}

}  // namespace cpu
}  // namespace npuq
