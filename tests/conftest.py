"""Test-wide settings.

* Without a GPU, Triton kernels run on CPU tensors under Triton's interpreter; it must be switched on
  before triton is first imported, so it is set here, before any test module imports bdh_kernels.
* Uninitialised memory is filled with NaN (PyTorch's deterministic mode does this for every
  ``empty``, including the extension's ``at::empty``), so a kernel that leaves part of an output
  unwritten fails loudly instead of passing on leftover zeros.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def nan_filled_empty():
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(False)


def _available(name):
    """``name``, or the test skipped with the reason why that backend cannot run on this machine."""
    from bdh_kernels import backends
    from kernel_cases import BACKEND_DEVICE, HAS_CUDA

    if name == "cuda" and not HAS_CUDA:
        pytest.skip("cuda: no CUDA device")
    reason = backends.unavailable_reason(name, torch.device(BACKEND_DEVICE[name]))
    if reason:
        pytest.skip(f"{name}: {reason}")
    return name


@pytest.fixture(params=["cpp", "triton", "cuda"])
def backend(request):
    """A fast backend, skipped with the reason when it cannot run on this machine."""
    return _available(request.param)


@pytest.fixture
def cpp():
    """For tests of the cpp backend alone: "cpp", or the test skipped when the extension is not built."""
    return _available("cpp")


@pytest.fixture(scope="session")
def micro_checkpoint(tmp_path_factory):
    """hatching_final.pt of a 4-step training run of the micro model (tests/train_cases.py MICRO)."""
    from bdh.train import main
    from train_cases import run_args

    log_dir = tmp_path_factory.mktemp("micro_run")
    assert main(run_args(log_dir, iters=4, name="micro")) == 0
    return str(log_dir / "micro" / "hatching_final.pt")
