// AVX-VNNI kernels: the 256-bit vpdpbusd / vpdpwssd of client and recent server CPUs without AVX-512
// (Alder Lake and later, Zen 5 client parts), dispatched at run time like every other family.
//
// * GEMM: vpdpbusd multiplies 4 unsigned activation bytes (u = x + 128) by 4 signed weight bytes and
//   adds them to an int32 lane exactly, 32 MACs per instruction, on the same panels and packed weights
//   as the AVX-512 family, in blocks of 6 rows x 16 channels.
// * Depthwise: the AVX2 kernel on int16 tap pairs with vpdpwssd as its multiply-accumulate.
// * Requantization, add: the shared 256-bit code (kernels_256.inc).
//
// The same source is compiled twice: with the VEX encoding ({vex} vpdpbusd, CPUID AVX-VNNI) and with
// the EVEX encoding of AVX512-VNNI + VL, which AVX-512 VNNI servers execute. The family runs whichever
// encoding the CPU has, so that it is tested bit for bit on both kinds of machine.
#include <cstring>

#include "kernels.h"
#include "target.h"

#if NPUQ_HAVE_AVX_VNNI_TARGET
#include <immintrin.h>
#endif

namespace npuq {
namespace cpu {

#if NPUQ_HAVE_AVX_VNNI_TARGET
NPUQ_TARGET_BEGIN("avx2,fma,bmi,bmi2,popcnt,avxvnni")
namespace avx_vnni_vex {
#include "kernels_generic.inc"
static inline __m256i dot_u8s8(__m256i acc, __m256i u8, __m256i s8) { return _mm256_dpbusd_avx_epi32(acc, u8, s8); }
static inline __m256i pair_mac(__m256i acc, __m256i pairs, __m256i weights) {
  return _mm256_dpwssd_avx_epi32(acc, pairs, weights);
}
#include "kernels_256.inc"
#include "kernels_vnni256_gemm.inc"
}  // namespace avx_vnni_vex
NPUQ_TARGET_END

NPUQ_TARGET_BEGIN("avx2,fma,bmi,bmi2,popcnt,avx512f,avx512vl,avx512vnni")
namespace avx_vnni_evex {
#include "kernels_generic.inc"
static inline __m256i dot_u8s8(__m256i acc, __m256i u8, __m256i s8) { return _mm256_dpbusd_epi32(acc, u8, s8); }
static inline __m256i pair_mac(__m256i acc, __m256i pairs, __m256i weights) {
  return _mm256_dpwssd_epi32(acc, pairs, weights);
}
#include "kernels_256.inc"
#include "kernels_vnni256_gemm.inc"
}  // namespace avx_vnni_evex
NPUQ_TARGET_END

const KernelTable* avx_vnni_kernels(bool vex) {
  static const KernelTable vex_table = {"avx_vnni",
                                        avx_vnni_vex::vnni256_gemm_tile,
                                        avx_vnni_vex::depthwise256_rows,
                                        avx_vnni_vex::requantize256_rows,
                                        avx_vnni_vex::add256,
                                        avx_vnni_vex::generic_avg_pool_rows};
  static const KernelTable evex_table = {"avx_vnni",
                                         avx_vnni_evex::vnni256_gemm_tile,
                                         avx_vnni_evex::depthwise256_rows,
                                         avx_vnni_evex::requantize256_rows,
                                         avx_vnni_evex::add256,
                                         avx_vnni_evex::generic_avg_pool_rows};
  return vex ? &vex_table : &evex_table;
}
#else
const KernelTable* avx_vnni_kernels(bool) { return nullptr; }
#endif

}  // namespace cpu
}  // namespace npuq
