// Large fresh CPU outputs, faulted in before the kernels write them.
//
// A fresh tensor of tens of MiB is a new anonymous mapping (glibc mmaps every request over 32 MiB), and
// the first write to each of its 4 KiB pages is a page fault that zeroes the page. The kernels write
// their [P, T, Q] outputs in the worst order for that: each task owns a few neurons of every time step,
// so all threads fault pages of the same rows at once and each fault interrupts a task's streaming
// loop. On [128, 32, 4096] fp32 (64 MiB) those faults cost about 10 ms, as much as the LIF forward's
// own work (BENCHMARKS.md). So empty_prefaulted asks for transparent huge pages on the buffer (2 MiB
// pages: 512x fewer faults, where the system's THP setting is `madvise` or `always`) and faults it in
// by contiguous chunks, one per thread, before any kernel runs. BDH_KERNELS_HUGEPAGES=0 turns both off.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace bdh {

constexpr int64_t kPageBytes = 4096, kHugePageBytes = int64_t(2) << 20;
constexpr int64_t kPrefaultMinBytes = 2 * kHugePageBytes;  // smaller buffers mostly come from reused heap

inline bool hugepages_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("BDH_KERNELS_HUGEPAGES");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return enabled;
}

// at::empty(sizes, options) for a CPU tensor, its pages already mapped (see above).
inline at::Tensor empty_prefaulted(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  const int64_t bytes = t.nbytes();
  if (bytes < kPrefaultMinBytes || !hugepages_enabled()) return t;
  char* data = static_cast<char*>(t.data_ptr());
#ifdef MADV_HUGEPAGE
  // Only whole huge pages inside the buffer: the advice applies to the mapping, and the edges may share
  // their pages with other allocations. A refusal (THP off, an old kernel) only leaves 4 KiB pages.
  const auto first = (reinterpret_cast<uintptr_t>(data) + kHugePageBytes - 1) & ~uintptr_t(kHugePageBytes - 1);
  const auto last = (reinterpret_cast<uintptr_t>(data) + bytes) & ~uintptr_t(kHugePageBytes - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
  // One store per 4 KiB page, each thread on a contiguous range: where huge pages were granted, the first
  // store in each 2 MiB faults in all of it and the rest find it mapped.
  at::parallel_for(0, (bytes + kPageBytes - 1) / kPageBytes, 64, [&](int64_t begin, int64_t end) {
    for (int64_t page = begin; page < end; ++page) reinterpret_cast<volatile char*>(data)[page * kPageBytes] = 0;
  });
  return t;
}

}  // namespace bdh
