// Compiling one region of a translation unit for a given instruction set. Everything included before
// NPUQ_TARGET_BEGIN (the standard library, fixedpoint.h) keeps the baseline target, so no function that
// another translation unit might share is ever emitted with wider instructions than the CPU has; the
// region's own functions are only called after a run-time check of the CPU (isa.cc).
#pragma once

#define NPUQ_STRINGIFY_(x) #x
#if defined(__clang__)
#define NPUQ_TARGET_BEGIN(isa) \
  _Pragma(NPUQ_STRINGIFY_(clang attribute push(__attribute__((target(isa))), apply_to = function)))
#define NPUQ_TARGET_END _Pragma("clang attribute pop")
#elif defined(__GNUC__)
#define NPUQ_TARGET_BEGIN(isa) _Pragma("GCC push_options") _Pragma(NPUQ_STRINGIFY_(GCC target(isa)))
#define NPUQ_TARGET_END _Pragma("GCC pop_options")
#else
#define NPUQ_TARGET_BEGIN(isa)
#define NPUQ_TARGET_END
#endif

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define NPUQ_HAVE_X86_TARGETS 1
#else
#define NPUQ_HAVE_X86_TARGETS 0
#endif

// The avxvnni target (and its _avx_ intrinsics) arrived in GCC 11 and Clang 12.
#if NPUQ_HAVE_X86_TARGETS && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define NPUQ_HAVE_AVX_VNNI_TARGET 1
#else
#define NPUQ_HAVE_AVX_VNNI_TARGET 0
#endif
