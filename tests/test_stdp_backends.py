"""Every fast backend of the STDP trace scan (cpp, triton, cuda) against the pure-PyTorch reference.

The ``backend`` fixture of tests/conftest.py, as in tests/test_lif_backends.py: cpp on CPU tensors; triton on CUDA tensors, or on CPU
tensors under Triton's interpreter (tests/conftest.py sets ``TRITON_INTERPRET=1`` without a GPU); cuda on CUDA
tensors. Traces and final traces must be bit-identical to the reference (same fp32 operations in the same
order); gradients agree to a relative error ``||a - b|| / ||b||`` paired with the dtype.
"""
import importlib

import pytest
import torch

import bdh_kernels
from bdh_kernels import backends, reference
from kernel_cases import (BACKEND_DEVICE, HAS_CUDA, compiled_kernels, contiguous, rel_err, same_output_on_every_isa,
                          sliced, transposed, unspecialised_args)

stdp_module = importlib.import_module("bdh_kernels.stdp")

GRAD_RTOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def spikes_of(shape, dtype=torch.float32, p=0.3, seed=0, graded=False, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    s = (torch.rand(shape, generator=gen, dtype=torch.float64) < p).double()
    if graded:
        s = s * torch.rand(shape, generator=gen, dtype=torch.float64) * 3
    return s.to(device, dtype)


def run(backend, spikes, layout=contiguous, *, tau=5.0, trace_init=None, time_dim=0, seed=0):
    """Forward and backward of ``stdp_traces`` with ``return_state``; the loss weighs every trace and the
    final trace by seeded random weights. Returns ``(traces, final, {name: grad})``."""
    leaf = spikes.clone().requires_grad_(True)
    leaves = {"spikes": leaf}
    if trace_init is not None:
        leaves["trace_init"] = trace_init = trace_init.clone().requires_grad_(True)
    traces, final = bdh_kernels.stdp_traces(layout(leaf), tau, time_dim=time_dim, trace_init=trace_init,
                                            return_state=True, backend=backend)
    gen = torch.Generator().manual_seed(seed + 1)

    def weights(t):
        sd = torch.float64 if t.dtype == torch.float64 else torch.float32
        return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device, sd)

    loss = (traces.to(weights(traces).dtype) * weights(traces)).sum() + (final * weights(final)).sum()
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    return traces.detach(), final.detach(), grads


def check_against_reference(backend, spikes, layout=contiguous, **kwargs):
    device = BACKEND_DEVICE[backend]
    spikes = spikes.to(device)
    if kwargs.get("trace_init") is not None:
        kwargs["trace_init"] = kwargs["trace_init"].to(device)
    traces, final, grads = run(backend, spikes, layout, **kwargs)
    ref_traces, ref_final, ref_grads = run("reference", spikes, layout, **kwargs)
    assert traces.dtype == spikes.dtype and traces.shape == spikes.shape
    assert final.dtype == ref_final.dtype and final.shape == ref_final.shape
    assert torch.equal(traces, ref_traces), f"traces differ at {(traces != ref_traces).nonzero()[:5].tolist()}"
    assert torch.equal(final, ref_final)
    for name, ref_grad in ref_grads.items():
        assert grads[name].dtype == ref_grad.dtype and grads[name].shape == ref_grad.shape, name
        err = rel_err(grads[name], ref_grad)
        assert err <= GRAD_RTOL[spikes.dtype], f"grad of {name}: relative error {err:.2e}"
    return traces


# (id, shape, dtype, layout, kwargs): several programs / windows, every time_dim, T = 1, graded spikes
CASES = [
    ("T1", (1, 37), torch.float32, contiguous, {}),
    ("1d-single-neuron", (50,), torch.float32, contiguous, {}),
    ("T7-3d", (7, 3, 11), torch.float32, contiguous, {}),
    ("T33", (33, 2, 21), torch.float32, contiguous, {"tau": 1.0}),
    ("T70-multi-program", (70, 131), torch.float32, contiguous, {"tau": 20.0}),
    ("wide-windows", (3, 2, 20011), torch.float32, contiguous, {}),  # cpp: 2048-neuron windows, a short tail
    ("time_dim1", (3, 33, 13), torch.float32, contiguous, {"time_dim": 1}),
    ("time_dim-last", (5, 7, 40), torch.float32, contiguous, {"time_dim": -1}),  # Q == 1: the [1, T, P] view
    ("transposed", (33, 23), torch.float32, transposed, {}),
    ("sliced", (40, 17), torch.float32, sliced, {"tau": 2.5}),
    ("graded", (40, 3, 9), torch.float32, contiguous, {"graded": True}),
    ("fp16", (33, 2, 11), torch.float16, contiguous, {}),
    ("fp16-time_dim1", (2, 40, 11), torch.float16, contiguous, {"time_dim": 1}),
    ("bf16", (33, 19), torch.bfloat16, contiguous, {"tau": 3.0}),
    ("bf16-sliced-graded", (40, 9), torch.bfloat16, sliced, {"graded": True}),
]


@pytest.mark.parametrize("name,shape,dtype,layout,kwargs", CASES, ids=[c[0] for c in CASES])
def test_matches_reference(backend, name, shape, dtype, layout, kwargs):
    kwargs = dict(kwargs)
    graded = kwargs.pop("graded", False)
    check_against_reference(backend, spikes_of(shape, dtype, graded=graded), layout, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("time_dim", [0, 1])
def test_trace_init_and_its_gradient(backend, dtype, time_dim):
    shape = (35, 3, 7) if time_dim == 0 else (3, 35, 7)
    init = spikes_of((3, 7), seed=5, graded=True)
    check_against_reference(backend, spikes_of(shape, dtype, seed=4), trace_init=init, time_dim=time_dim, tau=4.0)


def test_fp64_on_cpp(cpp):
    init = spikes_of((4, 6), torch.float64, seed=2, graded=True)
    check_against_reference("cpp", spikes_of((65, 4, 6), torch.float64, graded=True), trace_init=init, tau=7.0)


def test_cpp_large_outputs(cpp):
    """Traces over 4 MiB: the cpp op takes its outputs from the cache of output buffers
    (csrc/cpu_output_cache.h)."""
    spikes = spikes_of((70, 3, 5003), graded=True)
    assert spikes.numel() * spikes.element_size() > 4 << 20
    check_against_reference("cpp", spikes, tau=5.0)


def test_expanded_grad(backend):
    """``traces.sum()`` sends a zero-stride gradient into the backward."""
    x = spikes_of((33, 19), seed=2, device=BACKEND_DEVICE[backend])
    grads = []
    for name in (backend, "reference"):
        leaf = x.clone().requires_grad_(True)
        bdh_kernels.stdp_traces(leaf, 3.0, backend=name).sum().backward()
        grads.append(leaf.grad)
    assert rel_err(*grads) <= GRAD_RTOL[torch.float32]


def test_no_neurons(backend):
    x = torch.zeros((6, 0, 3), device=BACKEND_DEVICE[backend], requires_grad=True)
    traces, final = bdh_kernels.stdp_traces(x, 2.0, backend=backend, return_state=True)
    assert traces.shape == x.shape and final.shape == (0, 3)
    traces.sum().backward()
    assert x.grad.shape == x.shape


def test_fake_kernels_match(backend):
    fwd, bwd = stdp_module._ops(backend)
    x = spikes_of((2, 9, 5), device=BACKEND_DEVICE[backend])
    real = fwd(x, None, 3.0)
    fake = stdp_module._trace_fake(x, None, 3.0)
    for r, f in zip(real, fake):
        assert r.shape == f.shape and r.dtype == f.dtype
    real_b = bwd(torch.ones_like(x), None, 3.0)
    for r, f in zip(real_b, fake):
        assert r.shape == f.shape and r.dtype == f.dtype


def test_opcheck(backend):
    """Schema, fake kernel and autograd registration of the custom ops, as torch.library checks them."""
    fwd, bwd = stdp_module._ops(backend)
    device = BACKEND_DEVICE[backend]
    x = spikes_of((1, 33, 5), seed=9, graded=True, device=device).requires_grad_(True)
    init = torch.rand(5, device=device, requires_grad=True)
    torch.library.opcheck(fwd, (x, init, 4.0))
    torch.library.opcheck(fwd, (x.detach()[:, :, :3].transpose(0, 2), None, 1.0))
    torch.library.opcheck(bwd, (x.detach(), torch.rand(5, device=device), 4.0))


def test_deterministic(backend):
    x = spikes_of((40, 3, 17), seed=12, graded=True, device=BACKEND_DEVICE[backend])
    first, second = run(backend, x, tau=3.0), run(backend, x, tau=3.0)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(first[2]["spikes"], second[2]["spikes"])


def test_stdp_update_on_each_backend(backend):
    """The update built on this backend's scans equals the per-step reference."""
    device = BACKEND_DEVICE[backend]
    pre, post = spikes_of((37, 3, 21), seed=1, device=device), spikes_of((37, 3, 13), seed=2, device=device)
    dw, state = bdh_kernels.stdp_update(pre, post, 4.0, 6.0, 0.3, 0.2, backend=backend)
    ref_dw, ref_state = reference.stdp_update(pre, post, 4.0, 6.0, 0.3, 0.2)
    assert rel_err(dw, ref_dw) <= 1e-5  # fp32 sums in another order (one GEMM vs per-step products)
    assert torch.equal(state.pre, ref_state[0]) and torch.equal(state.post, ref_state[1])


def test_triton_traces_leave_the_t_dependent_arguments_unspecialised():
    """Without a GPU, the settings behind the next test (see the LIF kernels' twin of this test)."""
    from bdh_kernels.triton import stdp as kernels

    for kernel, strides in ((kernels._trace_forward_kernel, {"stride_xp", "stride_xq"}),
                            (kernels._trace_backward_kernel, {"stride_gp", "stride_gq"})):
        never, not_on_alignment = unspecialised_args(kernel)
        assert "T" in never
        assert strides <= never | not_on_alignment


@pytest.mark.skipif(not HAS_CUDA, reason="Triton compiles only for a GPU (the interpreter keeps no compiled kernels)")
def test_triton_traces_do_not_recompile_when_t_changes():
    from bdh_kernels.triton import stdp as kernels

    def run(t):
        spikes = (torch.rand(t, 3, 100, device="cuda") < 0.2).float().requires_grad_()
        bdh_kernels.stdp_traces(spikes, 5.0, backend="triton").sum().backward()

    run(7)
    before = compiled_kernels(kernels._trace_forward_kernel, kernels._trace_backward_kernel)
    for t in (1, 32, 33, 128, 1000):
        run(t)
    assert compiled_kernels(kernels._trace_forward_kernel, kernels._trace_backward_kernel) == before


# ----------------------------------------------------------------------------- spike_matmul (cpp, fp32)
needs_cpp = pytest.mark.skipif(backends.extension_error() is not None,
                               reason=f"cpp backend: {backends.extension_error()}")
SPIKE_MATMUL_SHAPES = [(1, 1, 1), (129, 65, 63), (300, 37, 130), (257, 20, 64), (0, 5, 7), (50, 0, 3), (50, 4, 0)]


def spike_matmul_expected(out, spikes, dense, alpha, transposed, accumulate):
    product = alpha * (spikes.double().t() @ dense.double())
    product = product.t() if transposed else product
    return product + out.double() if accumulate else product


@needs_cpp
@pytest.mark.parametrize("shape", SPIKE_MATMUL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("p", [0.0, 0.1, 0.6], ids=["empty", "sparse", "dense-gemm"])
@pytest.mark.parametrize("graded", [False, True], ids=["binary", "graded"])
@pytest.mark.parametrize("transposed,accumulate", [(False, False), (True, True), (True, False)])
def test_spike_matmul_matches_matmul(shape, p, graded, transposed, accumulate):
    """``out = alpha * spikes^T @ dense`` (transposed: its transpose) (+ out): odd row counts (chunks of 128)
    and column counts (tiles of 64), empty dims, all-zero spikes, and densities above 25% (a GEMM)."""
    r, s, d = shape
    spikes = spikes_of((r, s), p=p, seed=r + s, graded=graded)
    dense = torch.randn(r, d, generator=torch.Generator().manual_seed(d))
    out_shape = (d, s) if transposed else (s, d)
    out = torch.full(out_shape, float("nan")) if not accumulate else torch.randn(out_shape)
    expected = spike_matmul_expected(out, spikes, dense, -0.75, transposed, accumulate)
    torch.ops.bdh.spike_matmul(out, spikes, dense, -0.75, transposed, accumulate)
    assert not out.isnan().any()  # without accumulate the old contents are never read
    scale = max(1.0, expected.abs().amax().item() if expected.numel() else 0.0)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5 * scale)


@needs_cpp
def test_spike_matmul_reads_any_strides():
    base_spikes = spikes_of((40, 300), p=0.1, seed=5, graded=True)
    spikes, dense = base_spikes[:, ::3].t().contiguous().t(), torch.randn(70, 40).t()  # both non-contiguous
    out = torch.empty(100, 70)
    torch.ops.bdh.spike_matmul(out, spikes, dense, 1.0, False, False)
    assert not spikes.is_contiguous() and not dense.is_contiguous()
    torch.testing.assert_close(out, spikes.t() @ dense, rtol=1e-5, atol=1e-5)


@needs_cpp
def test_spike_matmul_bad_arguments_are_clear_errors():
    spikes, dense = spikes_of((8, 3)), torch.randn(8, 5)
    with pytest.raises(RuntimeError, match="same rows"):
        torch.ops.bdh.spike_matmul(torch.empty(3, 5), spikes, torch.randn(7, 5), 1.0, False, False)
    with pytest.raises(RuntimeError, match="must be float32"):
        torch.ops.bdh.spike_matmul(torch.empty(3, 5), spikes.double(), dense, 1.0, False, False)
    with pytest.raises(RuntimeError, match=r"out must be a contiguous \[5, 3\]"):
        torch.ops.bdh.spike_matmul(torch.empty(3, 5), spikes, dense, 1.0, True, False)


@needs_cpp
def test_spike_matmul_opcheck_and_thread_count_independence():
    spikes, dense = spikes_of((300, 70), p=0.1, seed=3, graded=True), torch.randn(300, 90)
    torch.library.opcheck(torch.ops.bdh.spike_matmul.default, (torch.randn(70, 90), spikes, dense, 0.5, False, True))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):  # the tiles' sums run in a fixed order whatever the split
            torch.set_num_threads(n)
            out = torch.empty(90, 70)
            torch.ops.bdh.spike_matmul(out, spikes, dense, 0.5, True, False)
            results.append(out)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])


SPIKE_MATMUL_ISA_SCRIPT = """
import hashlib, torch, bdh_kernels
gen = torch.Generator().manual_seed(0)
digest = hashlib.sha256()
for graded in (False, True):
    spikes = (torch.rand(300, 77, generator=gen) < 0.1).float()
    if graded:
        spikes = spikes * torch.rand(300, 77, generator=gen)
    dense = torch.randn(300, 130, generator=gen)
    for transposed in (False, True):
        out = torch.ones((130, 77) if transposed else (77, 130))
        torch.ops.bdh.spike_matmul(out, spikes, dense, 0.3, transposed, True)
        digest.update(out.numpy().tobytes())
print(digest.hexdigest())
"""


@needs_cpp
def test_spike_matmul_same_bits_on_every_instruction_set():
    same_output_on_every_isa(SPIKE_MATMUL_ISA_SCRIPT)


@needs_cpp
@pytest.mark.parametrize("bounded", [False, True], ids=["unbounded", "soft-bounds"])
def test_stdp_update_is_spike_driven_in_fp32_on_cpp(bounded):
    """fp32 spike trains on cpp take spike_matmul (seen in the profiler) and equal the per-step reference;
    when autograd needs dW's graph, the GEMMs run instead and dW is differentiable."""
    pre, post = spikes_of((37, 3, 200), p=0.1, seed=1), spikes_of((37, 3, 130), p=0.1, seed=2)
    weight = torch.rand(130, 200, generator=torch.Generator().manual_seed(3))
    kw = dict(weight=weight, w_min=0.0, w_max=1.0) if bounded else {}
    ref_dw, _ = reference.stdp_update(pre.double(), post.double(), 4.0, 6.0, 0.3, 0.2, **kw)
    with torch.profiler.profile() as prof:
        dw, _ = bdh_kernels.stdp_update(pre, post, 4.0, 6.0, 0.3, 0.2, backend="cpp", **kw)
    assert sum(e.name == "bdh::spike_matmul" for e in prof.events()) == 2
    assert rel_err(dw, ref_dw) <= 1e-6
    pre_leaf = pre.clone().requires_grad_(True)
    dw_graph, _ = bdh_kernels.stdp_update(pre_leaf, post, 4.0, 6.0, 0.3, 0.2, backend="cpp", **kw)
    assert dw_graph.grad_fn is not None and rel_err(dw_graph, ref_dw) <= 1e-6
    (grad,) = torch.autograd.grad(dw_graph.sum(), pre_leaf)
    assert grad.abs().sum() > 0


def test_stdp_update_gemm_path_needs_no_extension_op(monkeypatch):
    """Without the C++ extension there is no bdh::spike_matmul: the GEMM path must not look it up."""
    monkeypatch.setattr(torch.ops, "bdh", object())  # a namespace with no ops at all
    pre, post = spikes_of((9, 2, 7), p=0.1, seed=4), spikes_of((9, 2, 5), p=0.1, seed=5)
    dw, _ = bdh_kernels.stdp_update(pre, post, 4.0, 6.0, 0.3, 0.2, backend="reference")
    ref_dw, _ = reference.stdp_update(pre, post, 4.0, 6.0, 0.3, 0.2)
    assert rel_err(dw, ref_dw) <= 1e-6
