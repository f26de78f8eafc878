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
from kernel_cases import BACKEND_DEVICE, HAS_CUDA, compiled_kernels, contiguous, rel_err, sliced, transposed

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


def test_fp64_on_cpp():
    if backends.unavailable_reason("cpp", torch.device("cpu")):
        pytest.skip(backends.unavailable_reason("cpp", torch.device("cpu")))
    init = spikes_of((4, 6), torch.float64, seed=2, graded=True)
    check_against_reference("cpp", spikes_of((65, 4, 6), torch.float64, graded=True), trace_init=init, tau=7.0)


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
