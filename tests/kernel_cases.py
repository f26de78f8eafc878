"""Helpers shared by the backend-vs-reference tests of every op family."""
import os
import subprocess
import sys

import torch

HAS_CUDA = torch.cuda.is_available()
# where each fast backend's tensors live here: triton runs on CPU tensors under the interpreter
BACKEND_DEVICE = {"cpp": "cpu", "triton": "cuda" if HAS_CUDA else "cpu", "cuda": "cuda"}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in fp64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def contiguous(x):
    return x


def transposed(x):
    """[T, N] data stored as [N, T]: time is not the outer dim in memory."""
    return x.t().contiguous().t()


def sliced(x):
    """Every other step and neuron of a bigger buffer: no dim has unit stride."""
    big = torch.zeros((2 * x.shape[0], 2 * x.shape[1] + 1) + x.shape[2:], dtype=x.dtype, device=x.device)
    big[::2, 1::2] = x
    return big[::2, 1::2]


def compiled_kernels(*kernels) -> int:
    """How many specialisations of these Triton kernels are compiled for the current GPU (Triton 3.x keeps
    them in ``device_caches[device][0]``)."""
    device = torch.cuda.current_device()
    return sum(len(k.device_caches[device][0]) for k in kernels)


def unspecialised_args(kernel):
    """``(names never specialised, names not specialised on divisibility)`` of a Triton kernel: its jit
    settings, read alike from a compiled kernel and from one made by the interpreter."""
    settings = getattr(kernel, "kwargs", None)  # the interpreter keeps the jit's keyword arguments
    if settings is None:
        settings = {"do_not_specialize": kernel.do_not_specialize,
                    "do_not_specialize_on_alignment": kernel.do_not_specialize_on_alignment}
    return (set(settings.get("do_not_specialize") or ()),
            set(settings.get("do_not_specialize_on_alignment") or ()))


def run_with_isa(isa: str, script: str) -> subprocess.CompletedProcess:
    """Runs ``python -c script`` with the cpp kernels capped at instruction set ``isa``
    (``BDH_KERNELS_CPU_ISA``: the choice is made once per process)."""
    env = dict(os.environ, BDH_KERNELS_CPU_ISA=isa)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)


def same_output_on_every_isa(script: str) -> str:
    """Runs ``script`` (which prints a digest of its results) capped at each instruction set; asserts
    that it succeeds and prints the same digest under each, and returns that digest."""
    digests = {}
    for isa in ("generic", "avx2", "avx512"):
        result = run_with_isa(isa, script)
        assert result.returncode == 0, f"{isa}: {result.stderr}"
        digests[isa] = result.stdout.strip()
    assert len(set(digests.values())) == 1, digests
    return digests["generic"]
