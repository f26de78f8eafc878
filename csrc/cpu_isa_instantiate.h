// Compiles the kernel header named by BDH_CPU_KERNELS three times, into namespaces generic, avx2 and
// avx512 of the including namespace (see cpu_isa.h). Include it once per .cpp, inside its namespace:
//
//   #define BDH_CPU_KERNELS "lif_cpu_kernels.h"
//   #include "cpu_isa_instantiate.h"
//
// (Deliberately without include guard.) Off x86-64 all three names are the generic build.
namespace generic {
#include BDH_CPU_KERNELS
}  // namespace generic

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2")
namespace avx2 {
#include BDH_CPU_KERNELS
}  // namespace avx2
#pragma GCC pop_options
// 512-bit vectors: a 64-neuron window is 4 of them in fp32 (prefer-vector-width: GCC's generic tuning
// would otherwise stay at 256 bits).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,prefer-vector-width=512")
namespace avx512 {
#include BDH_CPU_KERNELS
}  // namespace avx512
#pragma GCC pop_options
#else
namespace avx2 = generic;
namespace avx512 = generic;
#endif

#undef BDH_CPU_KERNELS
