"""CPU settings for spiking training: flush subnormal numbers to zero on every thread; release the cpp
ops' cache of output buffers.

The LIF backward multiplies the membrane gradient by ``(1 - 1/tau_mem)`` per step (and the STDP trace
backward by ``1 - 1/tau``), so along silent stretches it decays into subnormal floats; CPU arithmetic on
subnormal operands is up to ~100x slower, and the matmuls that consume those gradients slow down with it
(measured in bdh.train: a tiny-tier step 0.97 s -> 0.6 s with flushing). GPUs flush them in matmuls
anyway. ``torch.set_flush_denormal`` alone sets the mode of the calling thread only: the intra-op
OpenMP threads that already exist keep theirs, so :func:`flush_denormal` sets it on each of them too.
"""
import warnings

import torch

from . import backends
from .checks import check_bool


def flush_denormal(on: bool = True) -> bool:
    """Flush subnormals to zero (``on``) or stop (``not on``) on this thread and every intra-op thread.

    Returns False where the CPU has no such mode (as ``torch.set_flush_denormal``). Subnormal results
    become 0 and subnormal inputs are read as 0: values below ~1.2e-38 (fp32) are lost, which spiking
    gradients and traces can afford. Without the compiled extension only the calling thread is set.
    """
    check_bool("on", on)
    if backends.extension_error() is None:
        return bool(torch.ops.bdh.flush_denormal(on))
    warnings.warn(f"flush_denormal: only the calling thread is set ({backends.extension_error()})", stacklevel=2)
    return torch.set_flush_denormal(on)


def empty_cache() -> int:
    """Free the buffers the cpp ops keep for their next large outputs; returns the bytes released.

    The cpp LIF and STDP trace ops take their per-step outputs of 4 MiB and more from a cache that keeps
    freed output buffers with their pages mapped, so a training loop does not page-fault every output in
    again each step (the CUDA caching allocator does the same on the GPU). It holds at most
    ``BDH_KERNELS_CPU_CACHE_MB`` MiB (default 1024; 0 turns it off). Returns 0 without the extension.
    """
    if backends.extension_error() is not None:
        return 0
    return int(torch.ops.bdh.empty_cpu_output_cache())
