// The cpp ops' large per-step outputs (LIF spikes and input gradient, STDP traces and their gradient)
// come from a cache that keeps freed output buffers, with their pages mapped, for the next call.
//
// Why: a fresh CPU tensor of tens of MiB is a new anonymous mapping (glibc mmaps every request over
// 32 MiB and unmaps it on free), so each call's first write to every 4 KiB page of its outputs is a
// page fault that zeroes the page. On [128, 32, 4096] fp32 (two 64 MiB outputs per forward + backward)
// the faults cost about as much as the op's own work (BENCHMARKS.md). A training loop asks for the same
// sizes every step, so a buffer freed by one step is what the next step needs. (The CUDA caching
// allocator does this on the GPU; on the CPU, jemalloc or tcmalloc do it for a whole process.)
//
// Buffers under 4 MiB come from PyTorch's CPU allocator as usual. The cache holds at most
// BDH_KERNELS_CPU_CACHE_MB MiB of freed buffers (default 1024; 0 turns it off), the most recently freed
// ones: past the limit the oldest go back to the system. A request it cannot serve from memory first
// releases the cached buffers; bdh_kernels.cpu.empty_cache() releases them on demand. The buffers are
// reported to the torch profiler's memory records like PyTorch's own allocations.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace bdh {

// at::empty(sizes, options) for a CPU tensor, taken from the cache when it holds a buffer of this size.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// Frees every cached buffer; returns the bytes released.
int64_t empty_output_cache();

}  // namespace bdh
