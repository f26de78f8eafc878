"""bdh_kernels.cpu.flush_denormal: the flush-to-zero mode reaches every intra-op thread."""
import pytest
import torch

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
