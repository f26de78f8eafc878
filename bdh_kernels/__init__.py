"""bdh-kernels: fused spiking-neuron ops for PyTorch (LIF neurons, STDP traces and weight updates)."""
from . import cpu  # noqa: F401  (bdh_kernels.cpu.flush_denormal, bdh_kernels.cpu.empty_cache)
from .backends import available_backends
from .lif import LIFState, lif
from .stdp import STDPState, stdp_traces, stdp_update

__all__ = ["lif", "LIFState", "stdp_traces", "stdp_update", "STDPState", "available_backends"]
__version__ = "0.1.0"
