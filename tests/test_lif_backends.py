"""Every fast LIF backend (cpp, triton, cuda) against the pure-PyTorch reference.

Each case runs on each fast backend that can run here (the ``backend`` fixture of tests/conftest.py): cpp on CPU tensors; triton on CUDA tensors, or on
CPU tensors under Triton's interpreter (tests/conftest.py sets ``TRITON_INTERPRET=1`` when there is no
GPU); cuda on CUDA tensors. The interpreter runs every program as a Python loop over time, so the shapes
stay small: a few thousand neuron-steps per case.

Spikes, gated outputs and final states must be bit-identical to the reference (same fp32 operations in
the same order); gradients agree to a relative error ``||a - b|| / ||b||`` paired with the input dtype.
"""
import importlib

import pytest
import torch

import bdh_kernels
from bdh_kernels import reference
from bdh_kernels.lif import CHECKPOINT_EVERY
from kernel_cases import (BACKEND_DEVICE, HAS_CUDA, compiled_kernels, contiguous, rel_err, sliced, transposed,
                          unspecialised_args)

# the module, not the function `bdh_kernels.lif` that the package exports under the same name
lif_module = importlib.import_module("bdh_kernels.lif")

GRAD_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def run(backend, x_data, layout=contiguous, *, v_init=None, i_init=None, return_state=False, seed=0,
        **kwargs):
    """Forward and backward of ``bdh_kernels.lif`` on one backend.

    The loss weighs every output (and the final state with ``return_state``) by seeded random weights,
    so every incoming gradient is non-trivial. Returns ``(out, state, {name: grad})``.
    """
    leaf = x_data.clone().requires_grad_(True)
    leaves = {"x": leaf}
    if v_init is not None:
        leaves["v_init"] = v_init = v_init.clone().requires_grad_(True)
    if i_init is not None:
        leaves["i_init"] = i_init = i_init.clone().requires_grad_(True)
    result = bdh_kernels.lif(layout(leaf), v_init=v_init, i_init=i_init, return_state=return_state,
                             backend=backend, **kwargs)
    out, state = result if return_state else (result, None)

    gen = torch.Generator().manual_seed(seed + 1)

    def weights(t):
        return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device, state_dtype(t))

    loss = (out.to(state_dtype(out)) * weights(out)).sum()
    if state is not None:
        loss = loss + (state.v * weights(state.v)).sum()
        if state.i is not None:
            loss = loss + (state.i * weights(state.i)).sum()
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    return out.detach(), state, grads


def state_dtype(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def make_input(shape, dtype=torch.float32, seed=0, scale=2.0, shift=0.5, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift).to(device, dtype)


def check_against_reference(backend, x, layout=contiguous, **kwargs):
    """Run ``backend`` and the reference on x (moved to the backend's device); compare; return out."""
    device = BACKEND_DEVICE[backend]
    x = x.to(device)
    for key in ("v_init", "i_init"):
        if kwargs.get(key) is not None:
            kwargs[key] = kwargs[key].to(device)
    out, state, grads = run(backend, x, layout, **kwargs)
    ref_out, ref_state, ref_grads = run("reference", x, layout, **kwargs)

    assert out.dtype == ref_out.dtype and out.shape == ref_out.shape
    assert torch.equal(out, ref_out), f"outputs differ at {(out != ref_out).nonzero()[:5].tolist()}"
    if ref_state is not None:
        assert torch.equal(state.v, ref_state.v)
        assert (state.i is None) == (ref_state.i is None)
        if ref_state.i is not None:
            assert torch.equal(state.i, ref_state.i)
    for name, ref_grad in ref_grads.items():
        assert grads[name].dtype == ref_grad.dtype and grads[name].shape == ref_grad.shape, name
        err = rel_err(grads[name], ref_grad)
        assert err <= GRAD_RTOL[x.dtype], f"grad of {name}: relative error {err:.2e}"
    return out


# ------------------------------------------------------------------------------ the representative grid
# Each case: (id, shape, dtype, layout, lif kwargs). Small, but together they cover every flag, the
# checkpoint boundary (T = 32, 33, 70), several programs (N > 64 neurons), and every time_dim.
CASES = [
    ("T1", (1, 37), torch.float32, contiguous, {}),
    ("T7-3d", (7, 3, 11), torch.float32, contiguous, {}),
    ("T32-exact-segment", (32, 9), torch.float32, contiguous, {"return_state": True}),
    ("T33-boundary", (33, 2, 21), torch.float32, contiguous, {"return_state": True}),
    ("T70-multi-program", (70, 131), torch.float32, contiguous, {"return_state": True}),
    ("T128", (128, 2, 9), torch.float32, contiguous, {"return_state": True, "tau_syn": 2.0}),
    ("time_dim1", (3, 33, 13), torch.float32, contiguous, {"time_dim": 1}),
    ("time_dim-last", (5, 7, 40), torch.float32, contiguous, {"time_dim": -1, "return_state": True}),
    ("transposed", (33, 23), torch.float32, transposed, {}),
    ("sliced", (40, 17), torch.float32, sliced, {"v_reset": None}),
    ("soft-reset", (33, 19), torch.float32, contiguous, {"v_reset": None, "return_state": True}),
    ("hard-reset-offset", (33, 19), torch.float32, contiguous,
     {"v_reset": -0.25, "v_threshold": 0.75, "return_state": True}),
    ("no-decay-input", (33, 19), torch.float32, contiguous, {"decay_input": False, "tau_mem": 3.0}),
    ("no-decay-input-soft", (33, 19), torch.float32, contiguous,
     {"decay_input": False, "tau_mem": 0.75, "v_reset": None}),
    ("detach-reset-hard", (33, 19), torch.float32, contiguous, {"detach_reset": True}),
    ("detach-reset-soft", (33, 19), torch.float32, contiguous, {"detach_reset": True, "v_reset": None}),
    ("tau_syn", (70, 19), torch.float32, contiguous, {"tau_syn": 2.5, "return_state": True}),
    ("tau_syn-1", (33, 19), torch.float32, contiguous, {"tau_syn": 1.0, "return_state": True}),
    ("tau_syn-soft-no-decay", (40, 2, 9), torch.float32, contiguous,
     {"tau_syn": 4.0, "v_reset": None, "decay_input": False, "tau_mem": 5.0, "time_dim": 1,
      "return_state": True}),
    ("gated", (33, 19), torch.float32, contiguous, {"output": "gated"}),
    ("gated-tau_syn-soft", (40, 19), torch.float32, transposed,
     {"output": "gated", "tau_syn": 3.0, "v_reset": None, "return_state": True}),
    ("fp16", (33, 2, 11), torch.float16, contiguous, {"return_state": True}),
    ("fp16-gated-time_dim1", (2, 40, 11), torch.float16, contiguous,
     {"output": "gated", "time_dim": 1, "tau_syn": 2.0}),
    ("bf16", (33, 19), torch.bfloat16, contiguous, {"return_state": True, "v_reset": None}),
    ("bf16-gated-sliced", (40, 9), torch.bfloat16, sliced, {"output": "gated", "detach_reset": True}),
]


@pytest.mark.parametrize("name,shape,dtype,layout,kwargs", CASES, ids=[c[0] for c in CASES])
def test_matches_reference(backend, name, shape, dtype, layout, kwargs):
    check_against_reference(backend, make_input(shape, dtype), layout, **kwargs)


@pytest.mark.parametrize("surrogate", ["sigmoid", "atan", "fast_sigmoid", "piecewise_quadratic", "erf"])
@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
def test_surrogates(backend, surrogate, v_reset):
    # piecewise_quadratic is zero for |z| > 1/alpha: a smaller alpha keeps its gradient non-trivial
    alpha = 0.5 if surrogate == "piecewise_quadratic" else None
    check_against_reference(backend, make_input((33, 15), seed=3), surrogate=surrogate, alpha=alpha,
                            v_reset=v_reset, return_state=True)


@pytest.mark.parametrize("surrogate", ["sigmoid", "atan", "fast_sigmoid", "erf"])
def test_surrogates_on_inputs_of_every_magnitude(backend, surrogate):
    """Inputs from 1 to 1e18 put membranes far from threshold, where the surrogates' exponentials and
    squares underflow or overflow (the triton backward takes reciprocals as rsqrt): the gradients equal
    the reference's, so they are finite too (an inf or NaN makes the relative error inf or NaN, which
    fails the comparison). Soft reset, so that large membranes persist."""
    gen = torch.Generator().manual_seed(5)
    magnitude = 10.0 ** torch.randint(0, 19, (40, 17), generator=gen, dtype=torch.float64)
    x = (make_input((40, 17), dtype=torch.float64, seed=5) * magnitude).float()
    check_against_reference(backend, x, surrogate=surrogate, v_reset=None, return_state=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tau_syn", [None, 2.0], ids=["no-syn", "syn"])
def test_initial_state_gradients(backend, dtype, tau_syn):
    shape = (35, 3, 7)
    x = make_input(shape, dtype, seed=5)
    v_init = make_input(shape[1:], seed=6, scale=0.5, shift=0.0)
    i_init = make_input(shape[1:], seed=7, scale=0.5, shift=0.0) if tau_syn else None
    check_against_reference(backend, x, v_init=v_init, i_init=i_init, tau_syn=tau_syn, return_state=True)


def test_threshold_ties_fire(backend):
    """Dyadic inputs make h land exactly on v_threshold: a tie must fire, as in the reference."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randint(-4, 9, (40, 21), generator=gen).float() / 4
    out = check_against_reference(backend, x, tau_mem=2.0, v_threshold=1.0)
    # at least one step sits exactly on the threshold, or the test proves nothing
    k, _, _ = reference.lif_constants(2.0, 0.0, None)
    v, hit = torch.zeros(21), False
    for x_t in x:
        h = v + (x_t - v) * k
        hit |= bool((h == 1.0).any())
        v = torch.where(h >= 1.0, torch.zeros_like(h), h)
    assert hit and out.sum() > 0


def test_expanded_grad_out(backend):
    """``out.sum()`` sends a zero-stride grad_out into the backward."""
    x = make_input((33, 19), seed=2, device=BACKEND_DEVICE[backend])
    grads = []
    for name in (backend, "reference"):
        leaf = x.clone().requires_grad_(True)
        out, state = bdh_kernels.lif(leaf, backend=name, return_state=True)
        (out.sum() + state.v.sum()).backward()
        grads.append(leaf.grad)
    assert rel_err(*grads) <= GRAD_RTOL[torch.float32]


def forward_op(backend):
    return lif_module._ops(backend)[0]


def test_checkpoints_are_states_before_each_segment(backend):
    t, n = 70, 13
    x = make_input((1, t, n), seed=4, device=BACKEND_DEVICE[backend])
    _, v_final, i_final, v_ckpt, i_ckpt = forward_op(backend)(
        x, None, None, 2.0, 1.0, 0.0, True, 3.0, False, 0, 4.0, False)
    fake = lif_module._forward_fake(x, None, None, 2.0, 1.0, 0.0, True, 3.0, False, 0, 4.0, False)
    for real, expected in zip((v_final, i_final, v_ckpt, i_ckpt), fake[1:]):
        assert real.shape == expected.shape and real.dtype == expected.dtype
    assert v_ckpt.shape == (3, n)
    for c in range(v_ckpt.shape[0]):
        steps = c * CHECKPOINT_EVERY
        if steps == 0:
            v, i = torch.zeros(n, device=x.device), torch.zeros(n, device=x.device)
        else:
            _, v, i = reference.lif(x[0, :steps], tau_syn=3.0)
        assert torch.equal(v_ckpt[c], v) and torch.equal(i_ckpt[c], i), f"checkpoint row {c}"


def test_without_tau_syn_the_current_outputs_are_empty(backend):
    fwd, bwd = lif_module._ops(backend)
    x = make_input((2, 5, 3), seed=8, device=BACKEND_DEVICE[backend])
    _, v_final, i_final, v_ckpt, i_ckpt = fwd(x, None, None, 2.0, 1.0, 0.0, True, None, False, 0, 4.0, False)
    assert v_final.shape == (6,) and i_final.shape == (0,) and v_ckpt.shape == (1, 6)
    assert i_ckpt.shape == (0, 0)
    grad_x, grad_v0, grad_i0 = bwd(
        torch.ones_like(x), None, None, x, v_ckpt, i_ckpt, 2.0, 1.0, 0.0, True, None, False, 0, 4.0, False)
    assert grad_x.shape == x.shape and grad_x.is_contiguous() and grad_v0.shape == (6,)
    assert grad_i0.shape == (0,)


@pytest.mark.parametrize("tau_syn", [None, 2.0], ids=["no-syn", "syn"])
def test_no_neurons(backend, tau_syn):
    x = torch.zeros((6, 0, 3), device=BACKEND_DEVICE[backend], requires_grad=True)
    out, state = bdh_kernels.lif(x, backend=backend, tau_syn=tau_syn, return_state=True)
    assert out.shape == x.shape and state.v.shape == (0, 3)
    out.sum().backward()
    assert x.grad.shape == x.shape
    # the fake kernel's shapes (checkpoint rows too) agree with the kernel's
    fwd = forward_op(backend)
    torch.library.opcheck(fwd, (x.detach().view(1, 6, 0), None, None, 2.0, 1.0, 0.0, True, tau_syn, False, 0,
                                 4.0, False))


def test_opcheck(backend):
    """Schema, fake kernel and autograd registration of the custom ops, as torch.library checks them."""
    fwd = forward_op(backend)  # registers the fake kernels and the autograd formula
    x = make_input((1, 33, 5), seed=9, device=BACKEND_DEVICE[backend]).requires_grad_(True)
    v_init = torch.zeros(5, device=x.device)
    args = (x, v_init, None, 2.0, 1.0, 0.0, True, 2.0, True, 1, 2.0, False)
    torch.library.opcheck(fwd, args)


def test_deterministic(backend):
    """Two runs give bit-identical outputs and gradients."""
    x = make_input((40, 3, 17), seed=12)
    first = run(backend, x.to(BACKEND_DEVICE[backend]), tau_syn=2.0, return_state=True)
    second = run(backend, x.to(BACKEND_DEVICE[backend]), tau_syn=2.0, return_state=True)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1].v, second[1].v)
    assert all(torch.equal(first[2][k], second[2][k]) for k in first[2])


FP64_OPTIONS = [
    {},
    {"v_reset": None},
    {"decay_input": False, "tau_mem": 3.0},
    {"tau_syn": 2.0},
    {"detach_reset": True},
    {"detach_reset": True, "v_reset": None, "tau_syn": 3.0},
    {"output": "gated"},
    {"output": "gated", "v_reset": -0.5, "decay_input": False, "tau_mem": 4.0},
]


@pytest.mark.parametrize("surrogate", ["sigmoid", "atan", "fast_sigmoid", "piecewise_quadratic", "erf"])
@pytest.mark.parametrize("options", FP64_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_fp64_backward_is_the_reference_autograd(cpp, surrogate, options):
    """In fp64 the cpp backward equals autograd through the reference to rounding (the surrogate
    derivative is the function's defined derivative, so this is the gradient check that applies)."""
    alpha = 0.5 if surrogate == "piecewise_quadratic" else None
    x = make_input((128, 3, 5), torch.float64, seed=13)
    v_init = make_input((3, 5), torch.float64, seed=14, scale=0.5, shift=0.0)
    i_init = make_input((3, 5), torch.float64, seed=15, scale=0.5, shift=0.0) if "tau_syn" in options else None
    check_against_reference("cpp", x, surrogate=surrogate, alpha=alpha, v_init=v_init, i_init=i_init,
                            return_state=True, **options)


@pytest.mark.parametrize("shape,time_dim", [((70, 3, 5003), 0), ((3, 70, 5003), 1)], ids=["P1", "P3"])
def test_cpp_wide_windows_and_large_outputs(cpp, shape, time_dim):
    """The cpp kernels' 512-neuron windows with a short last one in each view row, over several
    checkpoint segments, and outputs over 4 MiB (taken from the cache of output buffers:
    csrc/cpu_output_cache.h)."""
    x = make_input(shape)
    assert x.numel() * x.element_size() > 4 << 20
    check_against_reference("cpp", x, time_dim=time_dim, tau_syn=2.0, return_state=True)


def test_triton_lif_leaves_the_t_dependent_arguments_unspecialised():
    """Without a GPU, the settings behind the next test: T, the checkpoint count and the strides that can
    depend on T (P's is T * Q for time-first input, Q's is T for time-last input) are not specialised
    (Triton specialises integers on equality to 1 and divisibility by 16, which change with T)."""
    from bdh_kernels.triton import lif as kernels

    for kernel, strides in ((kernels._lif_forward_kernel, {"stride_xp", "stride_xq"}),
                            (kernels._lif_backward_kernel, {"stride_xp", "stride_xq", "stride_gp", "stride_gq"})):
        never, not_on_alignment = unspecialised_args(kernel)
        assert {"T", "num_ckpt"} <= never
        assert strides <= never | not_on_alignment


@pytest.mark.skipif(not HAS_CUDA, reason="Triton compiles only for a GPU (the interpreter keeps no compiled kernels)")
def test_triton_lif_does_not_recompile_when_t_changes():
    from bdh_kernels.triton import lif as kernels

    def run(t):
        x = torch.randn(t, 3, 100, device="cuda", requires_grad=True)
        bdh_kernels.lif(x, tau_mem=2.0, backend="triton").sum().backward()

    run(7)
    before = compiled_kernels(kernels._lif_forward_kernel, kernels._lif_backward_kernel)
    for t in (1, 32, 33, 128, 1000):
        run(t)
    assert compiled_kernels(kernels._lif_forward_kernel, kernels._lif_backward_kernel) == before


def test_triton_register_cap_gives_the_same_results(monkeypatch):
    """BDH_KERNELS_TRITON_MAXNREG caps the kernels' registers (a tuning knob: spills for occupancy); the
    results stay bit-identical, and a value outside [24, 255] is an error naming the variable."""
    name = "triton"
    if name not in bdh_kernels.available_backends(BACKEND_DEVICE[name]):
        pytest.skip("triton cannot run here")
    x = make_input((CHECKPOINT_EVERY + 5, 3, 7), device=BACKEND_DEVICE[name])
    expected = run(name, x, output="gated")
    monkeypatch.setenv("BDH_KERNELS_TRITON_MAXNREG", "80")
    capped = run(name, x, output="gated")
    assert torch.equal(capped[0], expected[0]) and torch.equal(capped[2]["x"], expected[2]["x"])
    for bad in ("7", "256", "many"):
        monkeypatch.setenv("BDH_KERNELS_TRITON_MAXNREG", bad)
        with pytest.raises(ValueError, match="BDH_KERNELS_TRITON_MAXNREG must be an integer in"):
            bdh_kernels.lif(x, backend=name)
