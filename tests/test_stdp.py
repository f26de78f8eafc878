"""The public STDP API: argument checks, gradcheck, parity with SpikingJelly's per-step rule, chunked
state, graded spikes, the exp(-dt/tau) mapping, peak memory (no per-step outer product), torch.compile."""
import importlib
import importlib.util
import math
import os

import pytest
import torch

import bdh_kernels
from bdh_kernels import backends, reference

HERE = os.path.dirname(os.path.abspath(__file__))
stdp_module = importlib.import_module("bdh_kernels.stdp")
HAS_CPP = backends.extension_error() is None
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason=f"cpp backend: {backends.extension_error()}")
CPU_BACKENDS = [b for b in ("cpp", "triton", "reference") if backends.unavailable_reason(b, torch.device("cpu")) is None]


def spikes(shape, p=0.2, seed=0, dtype=torch.float32, graded=False):
    gen = torch.Generator().manual_seed(seed)
    s = (torch.rand(shape, generator=gen, dtype=torch.float64) < p).double()
    if graded:
        s = s * torch.rand(shape, generator=gen, dtype=torch.float64) * 2
    return s.to(dtype)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------------------ bad input
def _pre_post():
    return spikes((6, 4, 5)), spikes((6, 4, 3), seed=1)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"tau_pre": 0.0}, ValueError, "tau_pre must be >= 1"),
        ({"tau_pre": -3.0}, ValueError, "tau_pre must be >= 1"),
        ({"tau_post": 0.5}, ValueError, "tau_post must be >= 1"),
        ({"tau_pre": float("nan")}, ValueError, "tau_pre must be finite"),
        ({"tau_post": float("inf")}, ValueError, "tau_post must be finite"),
        ({"a_plus": float("nan")}, ValueError, "a_plus must be finite"),
        ({"a_minus": float("-inf")}, ValueError, "a_minus must be finite"),
        ({"a_plus": "0.1"}, TypeError, "a_plus must be a float"),
        ({"tau_pre": None}, TypeError, "tau_pre must be a float"),
        ({"time_dim": 2}, ValueError, "time_dim=2 is the last dim of pre"),
        ({"time_dim": -1}, ValueError, "time_dim=2 is the last dim of pre"),
        ({"time_dim": 3}, ValueError, "time_dim=3 is out of range"),
        ({"time_dim": 0.0}, TypeError, "time_dim must be an int"),
        ({"weight": torch.zeros(3, 5)}, ValueError, "soft bounds need weight, w_min and w_max together; missing w_min"),
        ({"w_min": 0.0, "w_max": 1.0}, ValueError, "missing weight"),
        ({"weight": torch.zeros(5, 3), "w_min": 0.0, "w_max": 1.0}, ValueError, r"weight must be \[Nout, Nin\]"),
        ({"weight": torch.zeros(3, 5, dtype=torch.int32), "w_min": 0.0, "w_max": 1.0}, TypeError,
         "weight must be a floating-point"),
        ({"weight": torch.zeros(3, 5), "w_min": 1.0, "w_max": 0.0}, ValueError, "w_min must be < w_max"),
        ({"weight": torch.zeros(3, 5), "w_min": float("nan"), "w_max": 1.0}, ValueError, "w_min must be finite"),
        ({"state": torch.zeros(4, 5)}, TypeError, "state must be the STDPState"),
        ({"state": (torch.zeros(4, 5), torch.zeros(4, 4))}, ValueError, "state.post must have the shape of post"),
        ({"state": (torch.zeros(5), torch.zeros(4, 3))}, ValueError, "state.pre must have the shape of pre"),
        ({"backend": "numba"}, ValueError, "backend must be one of"),
        ({"backend": "cuda"}, ValueError, "cuda.*runs on CUDA tensors"),
    ],
)
def test_update_bad_arguments_name_the_argument(kwargs, error, match):
    pre, post = _pre_post()
    with pytest.raises(error, match=match):
        bdh_kernels.stdp_update(pre, post, **kwargs)


def test_update_bad_spikes():
    pre, post = _pre_post()
    with pytest.raises(ValueError, match="pre and post must have the same dims except the last"):
        bdh_kernels.stdp_update(pre, spikes((6, 3, 3)))
    with pytest.raises(ValueError, match="pre and post must have the same dims except the last"):
        bdh_kernels.stdp_update(pre, spikes((6, 4, 1, 3)))
    with pytest.raises(ValueError, match="pre must have at least 2 dims"):
        bdh_kernels.stdp_update(spikes((6,)), spikes((6,)))
    with pytest.raises(TypeError, match="pre must be a floating-point tensor"):
        bdh_kernels.stdp_update(pre.bool(), post)
    with pytest.raises(TypeError, match="post must be a floating-point tensor"):
        bdh_kernels.stdp_update(pre, post.to(torch.int64))
    with pytest.raises(TypeError, match="pre and post must have the same dtype"):
        bdh_kernels.stdp_update(pre, post.double())
    with pytest.raises(TypeError, match="pre must be a torch.Tensor"):
        bdh_kernels.stdp_update(pre.tolist(), post)
    with pytest.raises(ValueError, match="pre has an empty time dim"):
        bdh_kernels.stdp_update(pre[:0], post[:0])


def test_mixed_devices_are_a_value_error():
    """Checked before anything runs, so a meta tensor stands in for a second device on a CPU-only machine."""
    pre, post = _pre_post()
    with pytest.raises(ValueError, match="post is on meta but pre is on cpu"):
        bdh_kernels.stdp_update(pre, post.to("meta"))
    with pytest.raises(ValueError, match="weight is on meta but pre is on cpu"):
        bdh_kernels.stdp_update(pre, post, weight=torch.zeros(3, 5, device="meta"), w_min=0.0, w_max=1.0)
    with pytest.raises(ValueError, match="state.pre is on meta but pre is on cpu"):
        bdh_kernels.stdp_update(pre, post, state=(torch.zeros(4, 5, device="meta"), torch.zeros(4, 3)))
    with pytest.raises(ValueError, match="trace_init is on meta but spikes is on cpu"):
        bdh_kernels.stdp_traces(pre, 2.0, trace_init=torch.zeros(4, 5, device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to mix real devices")
def test_mixed_cuda_and_cpu():
    pre, post = _pre_post()
    with pytest.raises(ValueError, match="post is on cuda"):
        bdh_kernels.stdp_update(pre, post.cuda())


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"tau": 0.0}, ValueError, "tau must be >= 1"),
        ({"tau": -1.0}, ValueError, "tau must be >= 1"),
        ({"tau": 0.999}, ValueError, "tau must be >= 1"),
        ({"tau": float("nan")}, ValueError, "tau must be finite"),
        ({"tau": True}, TypeError, "tau must be a float"),
        ({"time_dim": 3}, ValueError, "time_dim=3 is out of range for spikes"),
        ({"trace_init": torch.zeros(4, 4)}, ValueError, "trace_init must have the shape of spikes"),
        ({"trace_init": torch.zeros(4, 5, dtype=torch.int64)}, TypeError, "trace_init must be a floating-point"),
        ({"trace_init": [0.0]}, TypeError, "trace_init must be a tensor"),
        ({"return_state": 1}, TypeError, "return_state must be a bool"),
        ({"backend": "cuda"}, ValueError, "cuda.*runs on CUDA tensors"),
    ],
)
def test_traces_bad_arguments_name_the_argument(kwargs, error, match):
    kwargs = {"tau": 2.0, **kwargs}
    with pytest.raises(error, match=match):
        bdh_kernels.stdp_traces(spikes((6, 4, 5)), **kwargs)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64, torch.uint8])
def test_traces_non_float_spikes_are_a_type_error(dtype):
    with pytest.raises(TypeError, match="spikes must be a floating-point"):
        bdh_kernels.stdp_traces(torch.zeros(3, 4, dtype=dtype), 2.0)


def test_traces_empty_or_missing_time():
    with pytest.raises(ValueError, match="empty time dim"):
        bdh_kernels.stdp_traces(torch.zeros(0, 3), 2.0)
    with pytest.raises(ValueError, match="spikes must have at least 1 dim"):
        bdh_kernels.stdp_traces(torch.tensor(1.0), 2.0)


def test_fp64_only_on_cpp_and_reference():
    if "triton" in CPU_BACKENDS:
        with pytest.raises(ValueError, match="fp64 runs on cpp and reference"):
            bdh_kernels.stdp_traces(spikes((5, 3), dtype=torch.float64), 2.0, backend="triton")


# ----------------------------------------------------------------------------------------- dispatch
@needs_cpp
def test_automatic_choice_on_cpu_is_cpp(caplog):
    backends._announced.clear()
    with caplog.at_level("INFO", logger="bdh_kernels"):
        bdh_kernels.stdp_traces(spikes((5, 3)), 2.0)
        bdh_kernels.stdp_update(*_pre_post())
    assert "stdp_traces: cpp backend on cpu tensors" in caplog.text
    assert "stdp_update: cpp backend on cpu tensors" in caplog.text


def test_environment_variable_picks_the_backend(monkeypatch):
    calls = []
    real = reference.stdp_traces
    monkeypatch.setattr(stdp_module.reference, "stdp_traces", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    bdh_kernels.stdp_update(*_pre_post())
    assert calls == [1, 1]


@needs_cpp
def test_cpp_schemas_match_the_python_contract():
    for name, schema in (("stdp_trace_forward", stdp_module.TRACE_FORWARD_SCHEMA),
                         ("stdp_trace_backward", stdp_module.TRACE_BACKWARD_SCHEMA)):
        assert str(getattr(torch.ops.bdh, name).default._schema) == f"bdh::{name}{schema}"


# ---------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("backend", ["reference"] + (["cpp"] if HAS_CPP else []))
@pytest.mark.parametrize("time_dim", [0, 1, -1])
def test_gradcheck_traces(backend, time_dim):
    """The scan is linear, so finite differences in fp64 check its backward exactly (spikes, trace_init,
    and the gradients reaching both the traces and the final trace)."""
    x = spikes((9, 3, 4), graded=True, dtype=torch.float64).requires_grad_(True)
    init_shape = tuple(s for d, s in enumerate(x.shape) if d != time_dim % 3)
    init = torch.rand(init_shape, dtype=torch.float64, requires_grad=True)

    def fn(x, init):
        return bdh_kernels.stdp_traces(x, 3.0, time_dim=time_dim, trace_init=init, return_state=True,
                                       backend=backend)

    assert torch.autograd.gradcheck(fn, (x, init))
    assert torch.autograd.gradgradcheck(fn, (x, init))


@pytest.mark.parametrize("backend", ["reference"] + (["cpp"] if HAS_CPP else []))
def test_forward_mode_ad_on_the_reference_only(backend):
    """The scan is linear: its tangent is the scan of the tangent (the reference's autograd gives it).
    The compiled backends' custom ops have no forward formula and refuse rather than give zero tangents."""
    x, tangent = spikes((9, 3, 4), graded=True), spikes((9, 3, 4), graded=True, seed=1)

    def scan(s):
        return bdh_kernels.stdp_traces(s, 3.0, backend=backend)

    if backend == "reference":
        _, got = torch.func.jvp(scan, (x,), (tangent,))
        torch.testing.assert_close(got, scan(tangent))
        return
    with pytest.raises(NotImplementedError, match="stdp_traces: forward-mode AD .* or backend='reference'"):
        torch.func.jvp(scan, (x,), (tangent,))
    with pytest.raises(NotImplementedError, match="forward-mode AD"):
        torch.func.jacfwd(lambda pre: bdh_kernels.stdp_update(pre, x, backend=backend)[0])(x)


def test_traces_backward_saves_nothing():
    saved = []
    x = spikes((40, 3, 8)).requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        bdh_kernels.stdp_traces(x, 5.0, return_state=True)
    assert saved == []


# ------------------------------------------------------------------------------ SpikingJelly parity
PARAMS = [(20.0, 20.0, 0.01, 0.0105), (2.0, 5.0, 0.5, 0.3), (1.0, 3.0, 1.0, 0.0), (7.5, 1.5, -0.2, 0.4)]


def spikingjelly_per_step(pre, post, tau_pre, tau_post, a_plus, a_minus, weight, w_min=None, w_max=None):
    """SpikingJelly's ``stdp_linear_step`` applied step by step with the weight fixed, summing its
    ``delta_w``; the amplitudes (and the soft bounds) enter through its f_pre / f_post."""
    learning = pytest.importorskip(
        "spikingjelly.activation_based.functional.learning",
        reason="SpikingJelly is not installed (pip install --no-deps -r requirements-peers.txt)")
    if not hasattr(learning, "stdp_linear_step"):
        pytest.skip("this SpikingJelly has no functional.learning.stdp_linear_step (2.0 names it so)")
    if w_min is None:
        f_pre, f_post = (lambda w: a_minus), (lambda w: a_plus)
    else:
        f_pre, f_post = (lambda w: a_minus * (w - w_min)), (lambda w: a_plus * (w_max - w))
    n_in, n_out = pre.shape[-1], post.shape[-1]
    trace = (torch.zeros(pre[0].reshape(-1, n_in).shape, dtype=pre.dtype),
             torch.zeros(post[0].reshape(-1, n_out).shape, dtype=pre.dtype))
    total = torch.zeros_like(weight)
    for pre_t, post_t in zip(pre.unbind(0), post.unbind(0)):
        dw, trace = learning.stdp_linear_step(pre_t.reshape(-1, n_in), post_t.reshape(-1, n_out), trace, weight,
                                              tau_pre=tau_pre, tau_post=tau_post, f_pre=f_pre, f_post=f_post)
        total += dw
    return total, trace


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: "tau{}-{}_a{}-{}".format(*p))
@pytest.mark.parametrize("bounds", [None, (0.0, 1.0), (-0.5, 2.0)], ids=["unbounded", "soft01", "soft-0.5_2"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equals_spikingjelly_step_by_step(params, bounds, dtype):
    tau_pre, tau_post, a_plus, a_minus = params
    t, b, n_in, n_out = 48, 3, 17, 11
    # sparse enough for spike_matmul in fp32 on cpp (its GEMM fallback and fp64 take the GEMMs)
    pre, post = spikes((t, b, n_in), 0.1, seed=1, dtype=dtype), spikes((t, b, n_out), 0.2, seed=2, dtype=dtype)
    weight = torch.rand(n_out, n_in, generator=torch.Generator().manual_seed(3), dtype=dtype)
    kw = {} if bounds is None else dict(weight=weight, w_min=bounds[0], w_max=bounds[1])
    expected, (tr_pre, tr_post) = spikingjelly_per_step(pre, post, *params, weight, *(bounds or ()))
    dw, state = bdh_kernels.stdp_update(pre, post, *params, **kw)
    assert dw.shape == (n_out, n_in) and dw.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert rel_err(dw, expected) <= tol
    assert rel_err(state.pre, tr_pre.view(b, n_in)) <= tol and rel_err(state.post, tr_post.view(b, n_out)) <= tol


def test_graded_spikes_are_allowed_and_match_spikingjelly():
    """Graded values (rates, gated LIF outputs) are allowed: the rule is bilinear in pre and post."""
    pre, post = spikes((30, 4, 9), 0.5, seed=4, graded=True, dtype=torch.float64), \
        spikes((30, 4, 6), 0.5, seed=5, graded=True, dtype=torch.float64)
    weight = torch.zeros(6, 9, dtype=torch.float64)
    expected, _ = spikingjelly_per_step(pre, post, 4.0, 6.0, 0.1, 0.2, weight)
    dw, _ = bdh_kernels.stdp_update(pre, post, 4.0, 6.0, 0.1, 0.2)
    assert rel_err(dw, expected) <= 1e-12
    dw2, _ = bdh_kernels.stdp_update(2 * pre, 3 * post, 4.0, 6.0, 0.1, 0.2)
    assert rel_err(dw2, 6 * dw) <= 1e-12
    gated = bdh_kernels.lif(torch.randn(30, 4, 6, dtype=torch.float64) + 1.0, output="gated")
    assert ((gated != 0) & (gated != 1)).any()  # really graded
    dw3, _ = bdh_kernels.stdp_update(pre, gated, 4.0, 6.0, 0.1, 0.2)
    ref3, _ = reference.stdp_update(pre, gated, 4.0, 6.0, 0.1, 0.2)
    assert rel_err(dw3, ref3) <= 1e-12


# --------------------------------------------------------------------------------- against reference
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "shape_pre,n_out,time_dim",
    [((20, 5, 7), 4, 0), ((5, 20, 7), 4, 1), ((20, 7), 3, 0), ((3, 20, 2, 6), 5, 1), ((20, 2, 3, 6), 5, 0),
     ((20, 1, 1), 1, 0)],
)
def test_matches_reference_over_layouts(backend, shape_pre, n_out, time_dim):
    pre = spikes(shape_pre, 0.3, seed=6)
    post = spikes(shape_pre[:-1] + (n_out,), 0.3, seed=7)
    weight = torch.rand(n_out, shape_pre[-1])
    for kw in ({}, dict(weight=weight, w_min=0.0, w_max=1.0)):
        dw, state = bdh_kernels.stdp_update(pre, post, 3.0, 4.0, 0.2, 0.1, time_dim=time_dim, backend=backend, **kw)
        ref, ref_state = reference.stdp_update(pre, post, 3.0, 4.0, 0.2, 0.1, time_dim=time_dim, **kw)
        assert rel_err(dw, ref) <= 1e-5
        assert torch.equal(state.pre, ref_state[0]) and torch.equal(state.post, ref_state[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_io(dtype):
    pre, post = spikes((40, 4, 12), 0.3, seed=8, dtype=dtype), spikes((40, 4, 10), 0.3, seed=9, dtype=dtype)
    dw, state = bdh_kernels.stdp_update(pre, post, 5.0, 5.0, 0.1, 0.1)
    ref, _ = reference.stdp_update(pre, post, 5.0, 5.0, 0.1, 0.1)
    assert dw.dtype == dtype and state.pre.dtype == torch.float32
    assert rel_err(dw, ref) <= 2e-2
    weight = torch.rand(10, 12)  # fp32 weight: soft bounds promote
    dw, _ = bdh_kernels.stdp_update(pre, post, 5.0, 5.0, 0.1, 0.1, weight=weight, w_min=0.0, w_max=1.0)
    assert dw.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bounded", [False, True])
def test_half_precision_sums_neither_overflow_nor_drift(dtype, bounded):
    # 64000 rows at 50% spikes: LTP and LTD sums far beyond fp16's 65504, a small dW after the amplitudes
    pre, post = spikes((2000, 32, 8), 0.5, seed=10, dtype=dtype), spikes((2000, 32, 4), 0.5, seed=11, dtype=dtype)
    kw = dict(weight=torch.full((4, 8), 0.5, dtype=dtype), w_min=0.0, w_max=1.0) if bounded else {}
    dw, _ = bdh_kernels.stdp_update(pre, post, 5.0, 5.0, 1e-3, 1.1e-3, **kw)
    ref, _ = reference.stdp_update(pre, post, 5.0, 5.0, 1e-3, 1.1e-3, **kw)
    assert dw.dtype == dtype and torch.isfinite(dw).all()
    assert rel_err(dw, ref) <= 1e-2


# ------------------------------------------------------------------------------------ chunked state
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bounded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_calls_equal_one_call(backend, bounded, dtype):
    if dtype == torch.float64 and backend == "triton":
        pytest.skip("fp64 runs on cpp and reference")
    pre, post = spikes((70, 3, 9), 0.3, seed=10, dtype=dtype), spikes((70, 3, 5), 0.3, seed=11, dtype=dtype)
    kw = dict(weight=torch.rand(5, 9, dtype=dtype), w_min=-0.1, w_max=1.2) if bounded else {}
    args = (6.0, 3.0, 0.05, 0.06)
    whole, whole_state = bdh_kernels.stdp_update(pre, post, *args, backend=backend, **kw)
    total, state = torch.zeros_like(whole), None
    for lo, hi in ((0, 1), (1, 33), (33, 34), (34, 70)):
        dw, state = bdh_kernels.stdp_update(pre[lo:hi], post[lo:hi], *args, state=state, backend=backend, **kw)
        total += dw
    assert rel_err(total, whole) <= (1e-13 if dtype == torch.float64 else 1e-6)
    # the traces carried across chunks are bit-identical to one scan's
    assert torch.equal(state.pre, whole_state.pre) and torch.equal(state.post, whole_state.post)


def test_chunked_traces_equal_one_scan():
    x = spikes((50, 4, 6), 0.3, seed=12)
    whole = bdh_kernels.stdp_traces(x, 4.0)
    first, state = bdh_kernels.stdp_traces(x[:17], 4.0, return_state=True)
    second = bdh_kernels.stdp_traces(x[17:], 4.0, trace_init=state)
    assert torch.equal(torch.cat([first, second]), whole)


# ---------------------------------------------------------------------------------- the convention
def test_trace_convention_and_exp_mapping():
    """trace_t = trace_{t-1} (1 - 1/tau) + s_t, and tau = 1 / (1 - exp(-dt/tau_exp)) gives the
    exponential form trace_t = exp(-dt/tau_exp) trace_{t-1} + s_t."""
    x = spikes((60, 5), 0.3, seed=13, dtype=torch.float64)
    tr = bdh_kernels.stdp_traces(x, 4.0)
    assert torch.allclose(tr[1], tr[0] - tr[0] / 4.0 + x[1], rtol=0, atol=1e-15)
    dt, tau_exp = 1.0, 15.0
    tau = 1.0 / (1.0 - math.exp(-dt / tau_exp))
    expected, trace = [], torch.zeros(5, dtype=torch.float64)
    for s_t in x:
        trace = trace * math.exp(-dt / tau_exp) + s_t
        expected.append(trace)
    assert torch.allclose(bdh_kernels.stdp_traces(x, tau), torch.stack(expected), rtol=1e-14, atol=0)
    # in fp32 the decay is rounded once, so the exp form is matched to fp32 precision
    tr32 = bdh_kernels.stdp_traces(x.float(), tau)
    assert rel_err(tr32, torch.stack(expected)) <= 1e-6


def test_potentiation_and_depression_signs():
    """pre fires 2 steps before post: LTP only (dW > 0); post before pre: LTD only (dW < 0)."""
    pre, post = torch.zeros(10, 1, 1), torch.zeros(10, 1, 1)
    pre[3], post[5] = 1.0, 1.0
    dw, _ = bdh_kernels.stdp_update(pre, post, 4.0, 4.0, 1.0, 1.0)
    assert dw.item() == pytest.approx(0.75 ** 2)  # a_plus * trace_pre at step 5 = (1 - 1/4)^2
    dw, _ = bdh_kernels.stdp_update(post, pre, 4.0, 4.0, 1.0, 1.0)
    assert dw.item() == pytest.approx(-(0.75 ** 2))


# ------------------------------------------------------------------------------------------- memory
# the measure the STDP benchmarks report
_spec = importlib.util.spec_from_file_location("bench_memory", os.path.join(HERE, "..", "benchmarks", "memory.py"))
bench_memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_memory)
peak_allocated_bytes = bench_memory.peak_cpu_bytes


def test_memory_measure_sees_a_per_step_outer_product():
    """The control: the per-step learners' form ``(post[:, :, None] * trace_pre[:, None, :]).sum(0)`` holds a
    [B, Nout, Nin] tensor, and the measure finds it."""
    t, b, n = 2, 64, 256
    pre, post = spikes((t, b, n), 0.1), spikes((t, b, n), 0.1, seed=1)

    def per_step():
        trace, dw = torch.zeros(b, n), torch.zeros(n, n)
        for pre_t, post_t in zip(pre, post):
            trace = trace * 0.95 + pre_t
            dw += (post_t[:, :, None] * trace[:, None, :]).sum(0)
        return dw

    assert peak_allocated_bytes(per_step) >= b * n * n * 4


@needs_cpp
@pytest.mark.parametrize("bounded", [False, True], ids=["unbounded", "soft-bounds"])
def test_no_per_step_outer_product(bounded):
    """At B=64, Nin=Nout=2048 a [B, Nout, Nin] fp32 tensor is 1.07 GB; the op's peak extra memory must be
    O(T*B*(Nin+Nout) + Nin*Nout): the two traces and the final traces ((T+1)*B*(Nin+Nout) elements) plus
    one [Nout, Nin] matrix (three at once with soft bounds: LTP, LTD and a bound factor)."""
    t, b, n_in, n_out = 4, 64, 2048, 2048
    outer_bytes = b * n_out * n_in * 4
    assert outer_bytes >= 1 << 30
    pre, post = spikes((t, b, n_in), 0.1, seed=2), spikes((t, b, n_out), 0.1, seed=3)
    kw = dict(weight=torch.rand(n_out, n_in), w_min=0.0, w_max=1.0) if bounded else {}
    peak = peak_allocated_bytes(lambda: bdh_kernels.stdp_update(pre, post, 20.0, 20.0, 0.01, 0.0105, **kw))
    bound = 4 * ((t + 1) * b * (n_in + n_out) + (3 if bounded else 1) * n_in * n_out) + (64 << 10)
    assert peak <= bound, f"peak {peak / 2**20:.1f} MiB > {bound / 2**20:.1f} MiB"
    assert peak < outer_bytes / 10


# ------------------------------------------------------------------------------------ torch.compile
@needs_cpp
def test_compile_fullgraph_without_graph_breaks():
    def model(x, w, init):
        traces, final = bdh_kernels.stdp_traces(x @ w, 3.0, trace_init=init, return_state=True)
        return traces.square().sum() + final.sum()

    x, w = spikes((16, 3, 8)), torch.randn(8, 8, requires_grad=True)
    init = torch.rand(3, 8)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    (grad,) = torch.autograd.grad(compiled(x, w, init), w)
    (expected,) = torch.autograd.grad(model(x, w, init), w)
    torch.testing.assert_close(grad, expected)

    def update(pre, post):
        return bdh_kernels.stdp_update(pre, post, 5.0, 5.0, 0.1, 0.1)[0]

    pre, post = spikes((16, 3, 8)), spikes((16, 3, 4), seed=1)
    torch.testing.assert_close(torch.compile(update, fullgraph=True, backend="aot_eager")(pre, post),
                               update(pre, post))
    # dynamic=True: the default taus and amplitudes become symbols, which the checks must trace
    default_update = torch.compile(lambda pre, post: bdh_kernels.stdp_update(pre, post)[0], dynamic=True,
                                   fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(default_update(pre, post), bdh_kernels.stdp_update(pre, post)[0])
