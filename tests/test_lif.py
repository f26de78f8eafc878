"""The public `lif` API: argument checks, backend dispatch, saved memory, gradcheck, torch.compile."""
import importlib
import importlib.util
import math
import random

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as forward_ad

import bdh_kernels
from bdh_kernels import backends
from bdh_kernels.nn import LIF
from kernel_cases import run_with_isa, same_output_on_every_isa

lif_module = importlib.import_module("bdh_kernels.lif")
HAS_CPP = backends.extension_error() is None
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason=f"cpp backend: {backends.extension_error()}")
FAST_CPU = [b for b in ("cpp", "triton") if backends.unavailable_reason(b, torch.device("cpu")) is None]


def x_of(shape=(9, 4, 5), dtype=torch.float32, seed=0):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5).to(dtype)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64, torch.uint8])
def test_non_float_x_is_a_type_error(dtype):
    with pytest.raises(TypeError, match="x must be a floating-point"):
        bdh_kernels.lif(torch.zeros(3, 4, dtype=dtype))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"tau_mem": 1.0}, ValueError, "tau_mem must be > 1"),
        ({"tau_mem": 0.5}, ValueError, "tau_mem must be > 1"),
        ({"tau_mem": 0.0, "decay_input": False}, ValueError, "tau_mem must be > 0"),
        ({"tau_mem": -2.0, "decay_input": False}, ValueError, "tau_mem must be > 0"),
        ({"tau_mem": float("nan")}, ValueError, "tau_mem must be finite"),
        ({"tau_mem": float("inf")}, ValueError, "tau_mem must be finite"),
        ({"v_threshold": float("nan")}, ValueError, "v_threshold must be finite"),
        ({"v_reset": float("inf")}, ValueError, "v_reset must be finite"),
        ({"tau_syn": 0.5}, ValueError, "tau_syn must be >= 1"),
        ({"tau_syn": float("nan")}, ValueError, "tau_syn must be finite"),
        ({"alpha": -1.0}, ValueError, "alpha must be > 0"),
        ({"alpha": float("nan")}, ValueError, "alpha must be finite"),
        ({"alpha": 0.0}, ValueError, "alpha must be > 0"),
        ({"tau_mem": "2"}, TypeError, "tau_mem must be a float"),
        ({"decay_input": 1}, TypeError, "decay_input must be a bool"),
        ({"surrogate": "relu"}, ValueError, "surrogate must be one of"),
        ({"output": "voltage"}, ValueError, "output must be"),
        ({"time_dim": 3}, ValueError, "time_dim=3 is out of range"),
        ({"time_dim": -4}, ValueError, "time_dim=-4 is out of range"),
        ({"time_dim": 1.0}, TypeError, "time_dim must be an int"),
        ({"backend": "numba"}, ValueError, "backend must be one of"),
        ({"v_init": torch.zeros(4, 4)}, ValueError, "v_init must have the shape"),
        ({"v_init": torch.zeros(4, 5, dtype=torch.int64)}, TypeError, "v_init must be a floating-point"),
        ({"v_init": [0.0]}, TypeError, "v_init must be a tensor"),
        ({"i_init": torch.zeros(4, 5)}, ValueError, "i_init is the synaptic current and needs tau_syn"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        bdh_kernels.lif(x_of(), **kwargs)


def test_numpy_scalars_are_numbers():
    x = x_of()
    expected = bdh_kernels.lif(x, tau_mem=2.0, v_threshold=0.5, time_dim=-1)
    got = bdh_kernels.lif(x, tau_mem=np.float32(2.0), v_threshold=np.float64(0.5), time_dim=np.int64(-1))
    assert torch.equal(got, expected)
    with pytest.raises(TypeError, match="tau_mem must be a float"):
        bdh_kernels.lif(x, tau_mem=np.bool_(True))
    with pytest.raises(TypeError, match=r"decay_input must be a bool \(True or False\), got numpy\.bool"):
        bdh_kernels.lif(x, decay_input=np.bool_(True))


def test_empty_time_dim():
    with pytest.raises(ValueError, match="empty time dim"):
        bdh_kernels.lif(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="0-dim"):
        bdh_kernels.lif(torch.tensor(1.0))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        bdh_kernels.lif([[1.0]])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to mix devices")
def test_v_init_on_another_device():
    with pytest.raises(ValueError, match="v_init is on"):
        bdh_kernels.lif(x_of().cuda(), v_init=torch.zeros(4, 5))


def test_unavailable_backend_says_why():
    with pytest.raises(ValueError, match="cuda.*runs on CUDA tensors"):
        bdh_kernels.lif(x_of(), backend="cuda")
    if not backends.triton_interpreted():
        with pytest.raises(ValueError, match="triton"):
            bdh_kernels.lif(x_of(), backend="triton")


@pytest.mark.parametrize("version, too_old", [("3.1.0", True), ("2.3.1", True), ("3.2.0", False),
                                               ("3.10.0+git1234", False)])
def test_an_old_triton_is_unavailable_with_the_version_it_needs(monkeypatch, version, too_old):
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    monkeypatch.setattr(backends.importlib.metadata, "version", lambda name: version)
    reason = backends._triton_unavailable()
    if too_old:
        assert f"Triton {version} is too old" in reason and "Triton >= 3.2" in reason
    else:
        assert reason is None


def test_fp64_only_on_cpp_and_reference():
    if "triton" in FAST_CPU:
        with pytest.raises(ValueError, match="fp64 runs on cpp and reference"):
            bdh_kernels.lif(x_of(dtype=torch.float64), backend="triton")


# ------------------------------------------------------------------------------------------- dispatch
def test_available_backends_lists_what_runs():
    cpu = bdh_kernels.available_backends("cpu")
    assert cpu[0] == ("cpp" if HAS_CPP else "reference") and "reference" in cpu
    assert ("cpp" in cpu) == HAS_CPP
    if not torch.cuda.is_available():
        assert bdh_kernels.available_backends("cuda") == ["reference"]
        assert "CUDA is not available" in backends.unavailable_reason("triton", torch.device("cuda"))


def test_environment_variable_picks_the_backend(monkeypatch):
    calls = []
    monkeypatch.setattr(lif_module.reference, "lif", lambda *a, **k: calls.append(1) or (a[0], a[0][0], None))
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    bdh_kernels.lif(x_of())
    assert calls == [1]
    monkeypatch.setenv(backends.ENV_VAR, "nonsense")
    with pytest.raises(ValueError, match="BDH_KERNELS_BACKEND must be one of"):
        bdh_kernels.lif(x_of())


@needs_cpp
def test_automatic_choice_on_cpu_is_cpp(caplog):
    backends._announced.clear()
    with caplog.at_level("INFO", logger="bdh_kernels"):
        bdh_kernels.lif(x_of())
    assert "cpp backend on cpu tensors" in caplog.text


@needs_cpp
def test_cpp_schemas_match_the_python_contract():
    import torch._C as C  # noqa: F401

    for name, schema in (("lif_forward", lif_module.FORWARD_SCHEMA), ("lif_backward", lif_module.BACKWARD_SCHEMA)):
        declared = str(getattr(torch.ops.bdh, name).default._schema)
        assert declared == f"bdh::{name}{schema}"


# --------------------------------------------------------------------------------------- saved memory
def saved_bytes_beyond_input(fn, x):
    """Bytes of the tensors autograd saves during fn(x) whose storage is not x's."""
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(saved.values())


# layouts of a [T=128, 4 * 33 neurons] input that x's own dim order cannot view as [P, T, Q]; in memory
# order they can, so nothing is copied: batch-first transposed to time-first, a 4-dim permutation, and a
# slice of the neurons (whose batch dim then cannot merge with them: time goes between)
LAYOUTS = {
    "time_first": lambda x: x,
    "batch_first_transposed": lambda x: x.transpose(0, 1).contiguous().transpose(0, 1),
    "permuted_4d": lambda x: x.view(128, 4, 3, 11).permute(2, 0, 3, 1).contiguous().permute(1, 3, 0, 2),
    "sliced_neurons": lambda x: torch.cat([x, x], -1)[..., ::2],  # [T, B, N] with N's stride 2: T and B
}


@pytest.mark.parametrize("backend", FAST_CPU)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kwargs", [{}, {"tau_syn": 3.0}, {"output": "gated"}, {"time_dim": -1}],
                         ids=["plain", "tau_syn", "gated", "time_last"])
def test_saves_at_most_one_byte_per_neuron_step(backend, layout, kwargs):
    t, b, n = 128, 4, 33
    x = LAYOUTS[layout](x_of((t, b, n), seed=1))
    if "time_dim" in kwargs:
        x = x.movedim(0, -1)
        kwargs = {**kwargs, "time_dim": x.dim() - 1}
    x = x.detach().requires_grad_(True)
    nbytes = saved_bytes_beyond_input(lambda x: bdh_kernels.lif(x, backend=backend, **kwargs), x)
    per_step = nbytes / (t * b * n)
    assert 0 < per_step <= 1.0, f"{per_step:.3f} bytes per neuron-step saved beyond the input"


@pytest.mark.parametrize("backend", FAST_CPU)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_gives_the_reference_results(backend, layout):
    """Outputs, final state and gradients (of x and v_init) in any layout equal the reference's."""
    x = LAYOUTS[layout](x_of((128, 4, 33), seed=2)).detach()
    v0 = torch.rand(x.shape[1:]).transpose(0, -1).contiguous().transpose(0, -1)  # a state in another layout
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    results = []
    for b in (backend, "reference"):
        xb, vb = x.clone().requires_grad_(True), v0.clone().requires_grad_(True)
        xb = LAYOUTS[layout](xb.contiguous())  # the same layout, as a leaf's view
        out, state = bdh_kernels.lif(xb, v_init=vb, tau_syn=2.0, return_state=True, backend=b)
        grads = torch.autograd.grad((out * grad_out).sum() + state.v.sum(), (xb, vb))
        results.append((out, state.v, state.i) + grads)
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ gradcheck
@pytest.mark.parametrize("backend", ["reference"] + (["cpp"] if HAS_CPP else []))
@pytest.mark.parametrize("kwargs", [{}, {"decay_input": False, "tau_mem": 3.0}, {"tau_syn": 2.0},
                                    {"v_reset": None, "tau_syn": 1.5}], ids=["plain", "no-decay", "syn", "soft-syn"])
def test_gradcheck_below_threshold(backend, kwargs):
    """Finite differences in fp64 where no neuron comes near threshold, so the function is smooth and its
    gradient is the true derivative (leak, input scaling, synaptic filter, initial states, final state).
    Where neurons fire, the surrogate gradient is a defined derivative, not a finite difference: those
    cases are checked against autograd through the reference in test_lif_backends.py."""
    x = (torch.rand(11, 2, 3, dtype=torch.float64) * 0.2).requires_grad_(True)
    v0 = (torch.rand(2, 3, dtype=torch.float64) * 0.2).requires_grad_(True)
    i0 = (torch.rand(2, 3, dtype=torch.float64) * 0.1).requires_grad_(True) if "tau_syn" in kwargs else None

    def fn(x, v0, i0=None):
        out, state = bdh_kernels.lif(x, v_threshold=50.0, surrogate="fast_sigmoid", v_init=v0, i_init=i0,
                                     return_state=True, backend=backend, **kwargs)
        return (out, state.v) + ((state.i,) if state.i is not None else ())

    inputs = (x, v0) + ((i0,) if i0 is not None else ())
    assert torch.autograd.gradcheck(fn, inputs)


# ------------------------------------------------------------------------------------- torch.compile
@needs_cpp
def test_compile_fullgraph_without_graph_breaks():
    def model(x, w):
        return bdh_kernels.lif(x @ w, output="gated", tau_syn=2.0).square().sum()

    x, w = x_of((16, 3, 8)), torch.randn(8, 8, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss = compiled(x, w)
    (grad,) = torch.autograd.grad(loss, w)
    (expected,) = torch.autograd.grad(model(x, w), w)
    torch.testing.assert_close(grad, expected)
    # a new sequence length reuses the op: T is a runtime value
    torch.testing.assert_close(compiled(x_of((23, 3, 8)), w), model(x_of((23, 3, 8)), w))


@needs_cpp
def test_compile_dynamic_with_the_parameters_as_symbols():
    """dynamic=True makes the module's float attributes and lif's default floats symbolic (SymFloat): the
    argument checks must trace them without a graph break."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), LIF(tau_syn=3.0), torch.nn.Linear(8, 2), LIF())
    x = x_of((16, 3, 8))
    compiled = torch.compile(model, dynamic=True, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x))
    plain = torch.compile(lambda x: bdh_kernels.lif(x), dynamic=True, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(plain(x), bdh_kernels.lif(x))


@pytest.mark.parametrize("backend", FAST_CPU)
def test_forward_mode_ad_is_refused(backend):
    """The custom ops have no forward-mode formula, and PyTorch would silently give them zero tangents."""
    x = x_of((9, 2, 3))
    with pytest.raises(NotImplementedError, match="lif: forward-mode AD .* not supported by the"):
        torch.func.jvp(lambda x: bdh_kernels.lif(x, backend=backend), (x,), (torch.ones_like(x),))
    v0 = torch.zeros(2, 3)
    with forward_ad.dual_level(), pytest.raises(NotImplementedError, match="forward-mode AD"):
        bdh_kernels.lif(x, v_init=forward_ad.make_dual(v0, torch.ones_like(v0)), backend=backend)
    # other transforms still run
    vmapped = torch.func.vmap(lambda x: bdh_kernels.lif(x, backend=backend), in_dims=1, out_dims=1)(x)
    assert torch.equal(vmapped, bdh_kernels.lif(x, backend="reference"))


def random_layout(rng):
    """A small fp64 tensor in a random layout: permuted, sliced with steps, sometimes expanded, with size-1
    dims; and a random time_dim (negative sometimes)."""
    shape = [rng.choice([1, 2, 3, 5]) for _ in range(rng.randint(1, 5))]
    perm = rng.sample(range(len(shape)), len(shape))
    steps = [rng.choice([1, 1, 2]) for _ in shape]
    base = torch.randn([shape[d] * steps[d] + 1 for d in perm], dtype=torch.float64) * 2
    x = base.permute([perm.index(d) for d in range(len(shape))])
    x = x[tuple(slice(1, 1 + n * k, k) for n, k in zip(shape, steps))]
    if rng.random() < 0.2 and len(shape) > 1:
        d = rng.randrange(len(shape))
        x = x.narrow(d, 0, 1).expand(shape)
    return x, rng.randrange(len(shape)) - (len(shape) if rng.random() < 0.3 else 0)


@needs_cpp
@pytest.mark.parametrize("seed", range(40))
def test_random_layouts_give_the_reference_results(seed):
    """Outputs, final states and gradients (x, v_init, i_init) in random layouts equal the reference's, for
    lif and stdp_traces."""
    rng = random.Random(seed)
    x, time_dim = random_layout(rng)
    state_shape = x.shape[:time_dim % x.dim()] + x.shape[time_dim % x.dim() + 1:]
    v0, i0 = torch.randn(state_shape, dtype=torch.float64), torch.randn(state_shape, dtype=torch.float64)
    grad_out = torch.randn(x.shape, dtype=torch.float64)
    results = []
    for backend in ("cpp", "reference"):
        leaves = [t.detach().requires_grad_(True) for t in (x, v0, i0)]
        out, state = bdh_kernels.lif(leaves[0], v_threshold=0.5, tau_syn=3.0, time_dim=time_dim, v_init=leaves[1],
                                     i_init=leaves[2], output="gated", return_state=True, backend=backend)
        grads = torch.autograd.grad((out * grad_out).sum() + state.v.sum() + state.i.square().sum(), leaves)
        traces = bdh_kernels.stdp_traces(x, 3.0, time_dim=time_dim, trace_init=v0, return_state=True,
                                         backend=backend)
        results.append((out, state.v, state.i, *grads, *traces))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@needs_cpp
@pytest.mark.parametrize("layout", LAYOUTS)
def test_compile_with_an_input_that_views_only_in_memory_order(layout):
    """The layout search decides from strides (torch.compile cannot trace a failed view's exception)."""
    x = LAYOUTS[layout](x_of((128, 4, 33))).detach().requires_grad_(True)
    compiled = torch.compile(lambda x: bdh_kernels.lif(x, tau_syn=2.0), fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, bdh_kernels.lif(x, tau_syn=2.0))
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(grad, torch.autograd.grad(bdh_kernels.lif(x, tau_syn=2.0).sum(), x)[0])


@pytest.mark.slow
@needs_cpp
def test_compile_with_inductor():
    def model(x, w):
        return bdh_kernels.lif(x @ w, v_reset=None).sum()

    x, w = x_of((16, 3, 8)), torch.randn(8, 8, requires_grad=True)
    loss = torch.compile(model, fullgraph=True)(x, w)
    (grad,) = torch.autograd.grad(loss, w)
    (expected,) = torch.autograd.grad(model(x, w), w)
    torch.testing.assert_close(grad, expected)


# --------------------------------------------------------------------------------------------- layout
@needs_cpp
def test_output_keeps_the_input_shape_and_dtype_for_every_time_dim():
    for time_dim in range(3):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            x = x_of((6, 7, 8), dtype)
            out, state = bdh_kernels.lif(x, time_dim=time_dim, return_state=True, backend="cpp")
            assert out.shape == x.shape and out.dtype == dtype
            assert state.v.dtype == torch.float32
            assert state.v.shape == tuple(s for d, s in enumerate(x.shape) if d != time_dim)
            ref = bdh_kernels.lif(x, time_dim=time_dim, backend="reference")
            assert torch.equal(out, ref)


@needs_cpp
def test_firing_is_plausible():
    """A sanity anchor that does not come from the reference: constant drive above threshold fires
    periodically, and the count matches the closed form of the membrane's approach to x."""
    x = torch.full((100, 1), 1.5)
    out = bdh_kernels.lif(x, tau_mem=2.0, backend="cpp")
    # h_t after a reset: 1.5 * (1 - 2^-t); reaches 1.0 at t = 2 steps -> one spike every 2 steps
    assert out.sum().item() == 50
    period_inputs = torch.full((64, 1), 1.0 + 1e-3)
    slow = bdh_kernels.lif(period_inputs, tau_mem=2.0, backend="cpp").sum().item()
    expected = 64 // math.ceil(math.log2(1.001 / 0.001))
    assert slow == expected


@pytest.mark.parametrize("backend", FAST_CPU)
def test_double_backward_is_a_clear_error(backend):
    x = x_of((9, 3, 4), seed=2).requires_grad_(True)
    out = bdh_kernels.lif(x, backend=backend, output="gated")
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no second derivative"):
        grad.sum().backward()


ISA_SCRIPT = """
import hashlib, torch, bdh_kernels
x = (torch.randn(70, 3, 67, generator=torch.Generator().manual_seed(0)) * 2 + 0.5).requires_grad_()
digest = hashlib.sha256()
for surrogate in ('sigmoid', 'atan', 'fast_sigmoid', 'piecewise_quadratic', 'erf'):
    for tau_syn, v_reset in ((None, 0.0), (2.0, None)):
        results = []
        for backend in ('cpp', 'reference'):
            out, st = bdh_kernels.lif(x, backend=backend, tau_syn=tau_syn, v_reset=v_reset, surrogate=surrogate,
                                      return_state=True)
            results.append((out, torch.autograd.grad((out * 1.5).sum() + st.v.sum(), x)[0]))
        (o1, g1), (o2, g2) = results
        assert torch.equal(o1, o2), f'spikes differ from the reference ({surrogate})'
        assert ((g1 - g2).norm() / g2.norm()).item() < 1e-5, f'gradients differ from the reference ({surrogate})'
        digest.update(o1.detach().numpy().tobytes() + g1.numpy().tobytes())
print(digest.hexdigest())
"""


@needs_cpp
def test_every_cpu_instruction_set_gives_the_same_bits():
    """The cpp kernels are compiled for plain x86-64, AVX2 and AVX-512 and the widest the CPU has is
    picked; BDH_KERNELS_CPU_ISA caps it. The backend tests run the machine's pick, so each cap is checked
    here in a fresh process: the same spikes as the reference, and the same bits from every instruction set
    (a cap above what the CPU has falls back to the widest it has)."""
    same_output_on_every_isa(ISA_SCRIPT)


@needs_cpp
def test_unknown_cpu_instruction_set_is_a_clear_error():
    script = "import torch, bdh_kernels; bdh_kernels.lif(torch.ones(4, 3), backend='cpp')"
    result = run_with_isa("avx9000", script)
    assert result.returncode != 0
    assert "BDH_KERNELS_CPU_ISA must be generic, avx2 or avx512, got 'avx9000'" in result.stderr
    assert run_with_isa("", script).returncode == 0  # set but empty: no cap, like the other variables
