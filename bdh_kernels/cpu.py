"""CPU floating-point mode for spiking training: flush subnormal numbers to zero on every thread.

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


def flush_denormal(on: bool = True) -> bool:
    """Flush subnormals to zero (``on``) or stop (``not on``) on this thread and every intra-op thread.

    Returns False where the CPU has no such mode (as ``torch.set_flush_denormal``). Subnormal results
    become 0 and subnormal inputs are read as 0: values below ~1.2e-38 (fp32) are lost, which spiking
    gradients and traces can afford. Without the compiled extension only the calling thread is set.
    """
    if not isinstance(on, bool):
        raise TypeError(f"on must be a bool, got {type(on).__name__}")
    if backends.extension_error() is None:
        return bool(torch.ops.bdh.flush_denormal(on))
    warnings.warn(f"flush_denormal: only the calling thread is set ({backends.extension_error()})", stacklevel=2)
    return torch.set_flush_denormal(on)
