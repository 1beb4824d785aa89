// Run-time choice of the kernel family, and the default thread count.
#include <algorithm>
#include <atomic>
#include <thread>

#include "cpu.h"
#include "target.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace npuq {
namespace cpu {
namespace {

// Every family in increasing order of preference: the last one the CPU and the build support wins.
constexpr Isa kAllIsas[] = {Isa::kPortable, Isa::kAvx2, Isa::kAvxVnni, Isa::kAvx512Vnni};

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
// AVX-VNNI is CPUID leaf 7, subleaf 1, EAX bit 4 (read directly: older compilers' __builtin_cpu_supports
// does not know it). The YMM state it needs is the one the AVX2 check already requires of the OS.
bool avx_vnni_vex_usable() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return NPUQ_HAVE_AVX_VNNI_TARGET && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && ((eax >> 4) & 1u);
}

bool avx_vnni_evex_usable() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512vnni");
}
#endif

bool cpu_has(Isa isa) {
  switch (isa) {
    case Isa::kPortable: return true;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
    case Isa::kAvxVnni:
      // The VEX encoding, or the EVEX one of AVX512-VNNI + VL (kernels_avx_vnni.cc).
      return cpu_has(Isa::kAvx2) && (avx_vnni_vex_usable() || avx_vnni_evex_usable());
    case Isa::kAvx512Vnni:
      return cpu_has(Isa::kAvx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512vnni");
#endif
    default: return false;
  }
}

const KernelTable* table_or_null(Isa isa) {
  switch (isa) {
    case Isa::kPortable: return &portable_kernels();
    case Isa::kAvx2: return avx2_kernels();
    case Isa::kAvxVnni:
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
      return avx_vnni_kernels(avx_vnni_vex_usable());
#else
      return nullptr;
#endif
    case Isa::kAvx512Vnni: return avx512_kernels();
  }
  return nullptr;
}

Isa best_isa() {
  const auto all = supported_isas();
  return all.back();
}

std::atomic<int>& active() {
  static std::atomic<int> isa{static_cast<int>(best_isa())};
  return isa;
}

int initial_threads() {
#ifdef _OPENMP
  return std::min(omp_get_max_threads(), kMaxThreads);
#else
  return 1;
#endif
}

std::atomic<int>& threads() {
  static std::atomic<int> n{initial_threads()};
  return n;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kPortable: return "portable";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvxVnni: return "avx_vnni";
    case Isa::kAvx512Vnni: return "avx512_vnni";
  }
  return "unknown";
}

Isa parse_isa(const std::string& name) {
  for (Isa isa : kAllIsas)
    if (name == isa_name(isa)) return isa;
  throw InvalidArgument("unknown instruction set '" + name +
                        "': expected 'portable', 'avx2', 'avx_vnni', 'avx512_vnni' or 'auto'");
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : kAllIsas)
    if (table_or_null(isa) && cpu_has(isa)) out.push_back(isa);
  return out;
}

Isa active_isa() { return static_cast<Isa>(active().load()); }

void set_isa(Isa isa) {
  if (!table_or_null(isa) || !cpu_has(isa))
    throw InvalidArgument(std::string("instruction set '") + isa_name(isa) +
                          "' is not supported by this CPU or this build; see npuq.cpu_features()");
  active().store(static_cast<int>(isa));
}

void reset_isa() { active().store(static_cast<int>(best_isa())); }

const KernelTable& kernels(Isa isa) { return *table_or_null(isa); }

int default_threads() { return threads().load(); }

void set_default_threads(int n) {
  if (n < 1 || n > kMaxThreads)
    throw InvalidArgument("threads must be in [1, " + std::to_string(kMaxThreads) + "], got " + std::to_string(n));
  threads().store(n);
}

int resolve_threads(int requested) {
  if (requested < 0 || requested > kMaxThreads)
    throw InvalidArgument("threads must be in [1, " + std::to_string(kMaxThreads) + "] (or None), got " +
                          std::to_string(requested));
#ifdef _OPENMP
  return requested == 0 ? default_threads() : requested;
#else
  return 1;
#endif
}

}  // namespace cpu
}  // namespace npuq
