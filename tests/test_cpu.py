"""bdh_kernels.cpu: the flush-to-zero mode reaches every intra-op thread; the cpp ops' cache of large
output buffers reuses them, releases them, and changes no result."""
import io
import os
import subprocess
import sys

import pytest
import torch

import bdh_kernels
from bdh_kernels.cpu import empty_cache, flush_denormal


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


LARGE = (70, 3, 5003)  # 4.2 MB in fp32: over the cache's 4 MiB minimum


def test_a_freed_output_buffer_is_reused_and_released(cpp):
    x = torch.randn(LARGE)
    empty_cache()
    out = bdh_kernels.lif(x, tau_mem=2.0, backend="cpp")
    address = out.data_ptr()
    del out
    again = bdh_kernels.lif(x, tau_mem=2.0, backend="cpp")
    assert again.data_ptr() == address
    del again
    assert bdh_kernels.cpu.empty_cache() >= x.numel() * x.element_size()  # as the README calls it
    assert empty_cache() == 0


def test_cached_outputs_are_ordinary_tensors(cpp):
    x = torch.randn(LARGE)
    out = bdh_kernels.lif(x, tau_mem=2.0, backend="cpp")
    expected = out.clone()
    saved = io.BytesIO()
    torch.save(out, saved)
    saved.seek(0)
    assert torch.equal(torch.load(saved), expected)
    shared = bdh_kernels.lif(x, tau_mem=2.0, backend="cpp").share_memory_()  # a cached output, moved to shared memory
    assert shared.is_shared() and torch.equal(shared, expected)
    out.resize_(2 * x.numel())  # the storage is resizable (a new buffer, contents kept)
    assert torch.equal(out[: x.numel()].view(LARGE), expected)
    out.resize_(10)
    assert out.shape == (10,)


def test_the_profiler_sees_cached_outputs(cpp):
    """Outputs from the cache appear in the torch profiler's memory records, as PyTorch's own do."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(LARGE)
    bdh_kernels.lif(x, tau_mem=2.0, backend="cpp")  # so the next output comes from the cache
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = bdh_kernels.lif(x, tau_mem=2.0, backend="cpp")
        del out
    by_op = {e.key: e.self_cpu_memory_usage for e in prof.key_averages()}
    assert by_op["bdh::lif_forward"] >= x.numel() * x.element_size()
    assert sum(e.cpu_memory_usage for e in prof.events() if e.name == "[memory]") <= -x.numel() * x.element_size()


_EVICTION = """
import torch, bdh_kernels
from bdh_kernels.cpu import empty_cache

def output_of(t):  # a [t, 3, 5003] fp32 output: 4.2, 4.8, 6.0 MB for t = 70, 80, 100
    with torch.no_grad():
        return bdh_kernels.lif(torch.randn(t, 3, 5003), tau_mem=2.0, backend="cpp")

page = lambda n: -(-n // 4096) * 4096
sizes = {t: page(t * 3 * 5003 * 4) for t in (70, 80, 100, 200)}
addresses = {t: output_of(t).data_ptr() for t in (70, 80)}  # each freed at once: 9.0 MB cached
output_of(100)                            # 15.0 MB > 11 MiB: the oldest (t=70) goes
assert output_of(80).data_ptr() == addresses[80]  # still cached
output_of(200)                            # 12.0 MB, over the limit on its own: never cached
released = empty_cache()
assert released == sizes[80] + sizes[100], (released, sizes)
print("ok")
"""


def test_the_cache_keeps_the_newest_buffers_within_its_limit(cpp):
    env = dict(os.environ, BDH_KERNELS_CPU_CACHE_MB="11")
    run = subprocess.run([sys.executable, "-c", _EVICTION], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_a_bad_cache_size_is_a_clear_error(cpp):
    env = dict(os.environ, BDH_KERNELS_CPU_CACHE_MB="lots")
    code = "import torch, bdh_kernels; bdh_kernels.lif(torch.randn(70, 3, 5003), tau_mem=2.0, backend='cpp')"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode != 0 and "BDH_KERNELS_CPU_CACHE_MB must be a whole number" in run.stderr


@pytest.mark.parametrize("megabytes", ["17592186044416", "99999999999999999999"])  # 2^44 MiB; past int64
def test_a_cache_size_beyond_memory_is_no_limit(cpp, megabytes):
    env = dict(os.environ, BDH_KERNELS_CPU_CACHE_MB=megabytes)
    code = ("import torch, bdh_kernels; bdh_kernels.lif(torch.randn(70, 3, 5003), tau_mem=2.0, backend='cpp'); "
            "print(bdh_kernels.cpu.empty_cache())")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) >= 70 * 3 * 5003 * 4  # the freed output was cached, not the cache turned off


_LARGE_OUTPUTS_DIGEST = """
import hashlib, torch, bdh_kernels
digest = hashlib.sha256()
gen = torch.Generator().manual_seed(0)
for _ in range(3):  # a new input each step, so a reused buffer holds the previous step's values
    x = torch.randn(70, 3, 5003, generator=gen).requires_grad_()
    out = bdh_kernels.lif(x, tau_mem=2.0, backend="cpp")
    traces = bdh_kernels.stdp_traces(out, tau=4.0, backend="cpp")[0]
    (grad,) = torch.autograd.grad((out + traces).sum(), x)
    for t in (out, traces, grad):
        digest.update(t.detach().numpy().tobytes())
print(digest.hexdigest())
"""


def test_the_cache_changes_no_result(cpp):
    """Outputs from reused buffers (several steps, so buffers come back from the cache) equal outputs from
    fresh ones (BDH_KERNELS_CPU_CACHE_MB=0)."""
    digests = []
    for megabytes in ("0", "1024"):
        env = dict(os.environ, BDH_KERNELS_CPU_CACHE_MB=megabytes)
        run = subprocess.run([sys.executable, "-c", _LARGE_OUTPUTS_DIGEST], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        digests.append(run.stdout.strip())
    assert len(digests[0]) == 64 and digests[0] == digests[1]
