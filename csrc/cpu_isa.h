// Run-time choice of the CPU kernels' instruction set. A file's window kernels live in a header without
// include guard, compiled three times by cpu_isa_instantiate.h: for any x86-64 (SSE2), for AVX2 and for
// AVX-512, into namespaces generic, avx2 and avx512. for_this_cpu picks the widest the CPU has; all three
// perform the same IEEE operations (setup.py forbids FMA contraction), so they give the same bits.
// BDH_KERNELS_CPU_ISA=generic|avx2|avx512 caps the choice (the tests run each).
#pragma once

#include <cstdlib>
#include <cstring>

#include <c10/util/Exception.h>

namespace bdh {

enum class Isa { kGeneric, kAvx2, kAvx512 };

inline Isa isa_cap() {
  const char* env = std::getenv("BDH_KERNELS_CPU_ISA");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "avx512") == 0) return Isa::kAvx512;  // unset: no cap
  if (std::strcmp(env, "avx2") == 0) return Isa::kAvx2;
  TORCH_CHECK(std::strcmp(env, "generic") == 0, "BDH_KERNELS_CPU_ISA must be generic, avx2 or avx512, got '",
              env, "'");
  return Isa::kGeneric;
}

inline Isa cpu_isa() {
  static const Isa isa = [] {
    const Isa cap = isa_cap();  // first, so that a misspelt value is an error on every CPU
#if defined(__x86_64__) && defined(__GNUC__)
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    if (avx512 && cap == Isa::kAvx512) return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2") && cap != Isa::kGeneric) return Isa::kAvx2;
#endif
    return Isa::kGeneric;
  }();
  return isa;
}

// Of a kernel's three instantiations, the one for this CPU's instruction set.
template <typename Fn>
Fn for_this_cpu(Fn generic_kernel, Fn avx2_kernel, Fn avx512_kernel) {
  switch (cpu_isa()) {
    case Isa::kAvx512: return avx512_kernel;
    case Isa::kAvx2: return avx2_kernel;
    default: return generic_kernel;
  }
}

}  // namespace bdh
