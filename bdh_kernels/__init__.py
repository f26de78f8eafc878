"""bdh-kernels: fused spiking-neuron ops for PyTorch (LIF neurons, STDP traces and weight updates)."""
from .backends import available_backends
from .lif import LIFState, lif

__all__ = ["lif", "LIFState", "available_backends"]
__version__ = "0.1.0"
