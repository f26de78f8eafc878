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
