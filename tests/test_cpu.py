"""bdh_kernels.cpu.flush_denormal: the flush-to-zero mode reaches every intra-op thread; the cpp ops'
huge-page switch changes no result."""
import os
import subprocess
import sys

import pytest
import torch

from bdh_kernels import backends

from bdh_kernels.cpu import flush_denormal


def test_flush_denormal_reaches_every_intra_op_thread():
    x = torch.full((1 << 22,), 1e-40)  # subnormal in fp32; large enough that every thread takes a chunk
    assert x.count_nonzero() == x.numel()
    try:
        if not flush_denormal(True):
            pytest.skip("this CPU has no flush-to-zero mode")
        assert (x * 1.0).count_nonzero() == 0  # read as zero on whichever thread computed each chunk
    finally:
        flush_denormal(False)
    assert (x * 1.0).count_nonzero() == x.numel()


def test_flush_denormal_wants_a_bool():
    with pytest.raises(TypeError, match="on must be a bool"):
        flush_denormal(1)


_LARGE_OUTPUTS_DIGEST = """
import hashlib, torch, bdh_kernels
x = torch.randn(70, 3, 5003, generator=torch.Generator().manual_seed(0)).requires_grad_()
out = bdh_kernels.lif(x, tau_mem=2.0, backend="cpp")
traces = bdh_kernels.stdp_traces(out, tau=4.0, backend="cpp")[0]
(grad,) = torch.autograd.grad((out + traces).sum(), x)
print(hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in (out, traces, grad))).hexdigest())
"""


def test_hugepages_switch_changes_no_result():
    """BDH_KERNELS_HUGEPAGES=0 only changes how the outputs over 4 MiB are allocated (csrc/cpu_alloc.h)."""
    if backends.unavailable_reason("cpp", torch.device("cpu")):
        pytest.skip(backends.unavailable_reason("cpp", torch.device("cpu")))
    digests = []
    for switch in ("0", "1"):
        env = dict(os.environ, BDH_KERNELS_HUGEPAGES=switch)
        run = subprocess.run([sys.executable, "-c", _LARGE_OUTPUTS_DIGEST], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        digests.append(run.stdout.strip())
    assert len(digests[0]) == 64 and digests[0] == digests[1]
