"""Parity of ``bdh_kernels.lif`` with the peer libraries (SpikingJelly 2.0, Norse 1.1, snnTorch 1.0).

Every test is skipped, saying how to install the library, when that library is missing
(``pip install --no-deps -r requirements-peers.txt``; see that file for why --no-deps).

What is compared, read from the peers' source (versions pinned in requirements-peers.txt):

* SpikingJelly ``neuron.LIFNode(..., step_mode="m")`` on CPU fp32 calls its op ``sj_lif::forward``, whose
  CPU/AutogradCPU kernel is the Python loop ``spikingjelly/_ops/lif/reference._forward_impl``,
  differentiated step by step by autograd: ``h = v + (x - (v - v_reset)) / tau`` (or
  ``v - (v - v_reset) / tau + x``), spike ``h - v_th >= 0`` through ``_ops/surrogate._SurrogateSpike``
  (gradient ``_surrogate_gradient``), hard reset ``s * v_reset + (1 - s) * h`` / soft reset
  ``h - s * v_th`` (v_reset=None), the reset's ``s`` detached with detach_reset; initial v = v_reset
  (0 for soft).
  SpikingJelly divides by tau where we multiply by the fp32 reciprocal, so for a tau that is not a power
  of two the membranes can differ in the last bit; spikes then agree except when h lands within an ulp
  of the threshold, which the fixed seeds here never do.
* Norse ``LIF`` (``lif_feed_forward_step``): ``i_new = i + x_t``; ``v_dec = v + dt*tau_mem_inv *
  ((v_leak - v) + i_new)``; ``i = i_new - dt*tau_syn_inv * i_new``; spike ``v_dec - v_th > 0``; ``v =
  (1 - z) v_dec + z v_reset`` (reset not detached). The input of step t reaches the membrane at step t,
  so with dt*tau_mem_inv = 1/tau_mem, dt*tau_syn_inv = 1/tau_syn, v_leak = v_reset the spikes equal ours
  at the same step (no delay). Norse's final ``state.i`` is the current after its decay,
  ``(1 - 1/tau_syn) * i_T`` of ours. Norse's only gradient here, SuperSpike, is ``grad / (|z| + 1)^2``
  whatever ``alpha`` (its backward ignores alpha): our ``fast_sigmoid`` with ``alpha=1``.
* snnTorch ``Leaky(beta, threshold, reset_mechanism="zero")``: ``reset = 1[mem_{t-1} > thr]`` (detached),
  ``mem_t = beta * (1 - reset) * mem_{t-1} + x_t``, spike ``mem_t - thr > 0`` with ATan(alpha=2). That is
  our hard reset to 0 with ``decay_input=False``, ``beta = 1 - 1/tau``, ``detach_reset=True``: the reset
  applied one step late to the stored pre-reset membrane is the same membrane as ours.
  ``reset_mechanism="subtract"`` does NOT map: snnTorch computes ``beta * mem + x - s * thr`` (the
  subtraction is not decayed) where we (and SpikingJelly) compute ``(1 - 1/tau) * (h - s * thr) + x``,
  so it is not tested.

Ties (h exactly at threshold) fire here and in SpikingJelly, not in Norse or snnTorch; the inputs are
continuous random values, so no tie occurs.
"""
import math

import pytest
import torch

import bdh_kernels

INSTALL = "pip install --no-deps -r requirements-peers.txt"

T, N = 50, 300  # time steps, neurons per test case
BACKENDS = [
    pytest.param("cpp", marks=pytest.mark.skipif("cpp" not in bdh_kernels.available_backends(),
                                                 reason="the C++ extension is not built")),
    "reference",
]


def _input(seed, scale=1.5, shift=0.6, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, N, generator=g) * scale + shift
    return x.requires_grad_(requires_grad)


def _grad_out(seed):
    return torch.randn(T, N, generator=torch.Generator().manual_seed(seed + 1000))


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _check_firing(s):
    """Guard against vacuous parity: the test input must make neurons fire, and not always."""
    rate = s.float().mean().item()
    assert 0.005 < rate < 0.95, f"firing rate {rate} makes this comparison uninformative"


# ----------------------------------------------------------------------------------------- SpikingJelly
@pytest.fixture(scope="module")
def sj():
    pytest.importorskip("spikingjelly", reason=f"SpikingJelly is not installed ({INSTALL})")
    from spikingjelly.activation_based import neuron, surrogate

    return neuron, surrogate


def _sj_lif(sj, x, tau, decay_input, v_threshold, v_reset, surrogate_fn=None, detach_reset=False):
    neuron, surrogate = sj
    node = neuron.LIFNode(tau=tau, decay_input=decay_input, v_threshold=v_threshold, v_reset=v_reset,
                          surrogate_function=surrogate_fn if surrogate_fn is not None else surrogate.Sigmoid(),
                          detach_reset=detach_reset, step_mode="m")
    return node(x), node.v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("v_reset", [0.0, -0.3, None], ids=["hard0", "hard-0.3", "soft"])
@pytest.mark.parametrize("tau,v_threshold", [(2.0, 1.0), (3.0, 1.0), (1.7, 0.5), (8.0, 1.3)])
def test_spikingjelly_spikes(sj, backend, decay_input, v_reset, tau, v_threshold):
    drive = v_threshold if decay_input else v_threshold / tau  # the steady-state membrane ~ threshold
    x = _input(seed=int(tau * 10) + int(v_threshold * 100), shift=0.7 * drive, scale=1.5 * drive)
    s_ref, v_ref = _sj_lif(sj, x, tau, decay_input, v_threshold, v_reset)
    s, state = bdh_kernels.lif(x, tau_mem=tau, v_threshold=v_threshold, v_reset=v_reset,
                               decay_input=decay_input, return_state=True, backend=backend)
    _check_firing(s_ref)
    assert s.dtype == s_ref.dtype
    assert torch.equal(s, s_ref)
    if math.log2(tau).is_integer():  # 1/tau exact: SpikingJelly's division equals our multiplication
        assert torch.equal(state.v, v_ref)
    else:
        torch.testing.assert_close(state.v, v_ref, rtol=1e-6, atol=1e-6)


# SpikingJelly surrogates defined as ours (formula and default alpha), checked in spikingjelly/_ops/
# surrogate.py (_surrogate_gradient, what the LIFNode op's backward uses) and activation_based/surrogate.py:
#   Sigmoid(alpha=4)            alpha * sg * (1 - sg), sg = sigmoid(alpha z)        == our sigmoid
#   ATan(alpha=2)               alpha / 2 / (1 + (pi/2 alpha z)^2)                  == our atan
#   PiecewiseQuadratic(alpha=1) max(0, alpha - alpha^2 |z|)                          == our piecewise_quadratic
#   Erf(alpha=2)                alpha / sqrt(pi) * exp(-(alpha z)^2)                 == our erf
# Only with spiking=True (their default): spiking=False makes the node output the smooth primitive
# function instead of Heaviside spikes, which is not a spiking neuron and has no counterpart here.
# Not compared: SpikingJelly's PiecewiseExp, SoftSign, SuperSpike, ... (no counterpart here), and our
# fast_sigmoid 1/(1 + alpha|z|)^2 (SpikingJelly's SuperSpike is alpha/(1+|z|)^2, a different family).
SJ_SURROGATES = [("sigmoid", "Sigmoid"), ("atan", "ATan"), ("piecewise_quadratic", "PiecewiseQuadratic"),
                 ("erf", "Erf")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("detach_reset", [False, True], ids=["attached", "detach_reset"])
@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
@pytest.mark.parametrize("ours,theirs", SJ_SURROGATES, ids=[o for o, _ in SJ_SURROGATES])
def test_spikingjelly_gradients(sj, backend, detach_reset, decay_input, v_reset, ours, theirs):
    _, surrogate = sj
    fn = getattr(surrogate, theirs)()  # their default alpha, spiking=True
    assert fn.spiking
    tau = 3.0 if decay_input else 2.0
    x = _input(seed=7, shift=0.6 if decay_input else 0.2, scale=1.5 if decay_input else 0.8,
               requires_grad=True)
    g = _grad_out(seed=7)
    s_ref, _ = _sj_lif(sj, x, tau, decay_input, 1.0, v_reset, fn, detach_reset)
    (gx_ref,) = torch.autograd.grad(s_ref, x, g)
    s = bdh_kernels.lif(x, tau_mem=tau, v_reset=v_reset, decay_input=decay_input, surrogate=ours,
                        detach_reset=detach_reset, backend=backend)  # alpha=None: the same defaults
    (gx,) = torch.autograd.grad(s, x, g)
    _check_firing(s_ref)
    assert torch.equal(s, s_ref)
    assert gx_ref.norm() > 0
    assert _rel(gx, gx_ref) < 1e-5


# ---------------------------------------------------------------------------------------------- Norse
@pytest.fixture(scope="module")
def norse():
    pytest.importorskip("norse", reason=f"Norse is not installed ({INSTALL})")
    import norse.torch as nt
    from norse.torch.functional.lif import LIFParameters
    from norse.torch.functional.lif_box import LIFBoxParameters

    return nt, LIFParameters, LIFBoxParameters


def _norse_params(LIFParameters, tau_mem, tau_syn, v_threshold, v_reset):
    # the documented mapping, with dt = 1: dt * tau_mem_inv = 1/tau_mem, dt * tau_syn_inv = 1/tau_syn,
    # v_leak = v_reset
    return LIFParameters(tau_mem_inv=torch.as_tensor(1.0 / tau_mem), tau_syn_inv=torch.as_tensor(1.0 / tau_syn),
                         v_leak=torch.as_tensor(v_reset), v_th=torch.as_tensor(v_threshold),
                         v_reset=torch.as_tensor(v_reset), method="super", alpha=torch.as_tensor(100.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v_reset,v_threshold", [(0.0, 1.0), (-0.25, 0.4)])
@pytest.mark.parametrize("tau_syn", [1.0, 2.0, 4.0, 5.0])
@pytest.mark.parametrize("tau_mem", [2.0, 3.0])
def test_norse_lif(norse, backend, v_reset, v_threshold, tau_syn, tau_mem):
    nt, LIFParameters, _ = norse
    x = _input(seed=int(tau_mem * 10 + tau_syn), scale=1.0, shift=0.3, requires_grad=True)
    g = _grad_out(seed=3)
    module = nt.LIF(_norse_params(LIFParameters, tau_mem, tau_syn, v_threshold, v_reset), dt=1.0)
    z, state = module(x)
    s, ours = bdh_kernels.lif(x, tau_mem=tau_mem, v_threshold=v_threshold, v_reset=v_reset, decay_input=True,
                              tau_syn=tau_syn, surrogate="fast_sigmoid", alpha=1.0, return_state=True,
                              backend=backend)
    _check_firing(z)
    # same step: Norse adds x_t to the current before the membrane update of step t (no delay)
    assert torch.equal(s, z)
    torch.testing.assert_close(ours.v, state.v, rtol=1e-6, atol=1e-6)
    # Norse's state.i is after its decay; ours is the current that drove the last step
    torch.testing.assert_close(ours.i * (1.0 - 1.0 / tau_syn), state.i, rtol=1e-6, atol=1e-6)
    (gz,) = torch.autograd.grad(z, x, g)
    (gs,) = torch.autograd.grad(s, x, g)
    assert gz.norm() > 0
    assert _rel(gs, gz) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_norse_lif_box(norse, backend):
    """LIFBoxCell (no synaptic current, stepped with an unbind loop as in the benchmarks) with v_leak=0."""
    nt, _, LIFBoxParameters = norse
    x = _input(seed=11, scale=1.0, shift=0.5, requires_grad=True)
    p = LIFBoxParameters(tau_mem_inv=torch.as_tensor(1.0 / 3.0), v_leak=torch.as_tensor(0.0),
                         v_th=torch.as_tensor(1.0), v_reset=torch.as_tensor(0.0))
    cell, state, out = nt.LIFBoxCell(p, dt=1.0), None, []
    for x_t in x.unbind(0):
        z_t, state = cell(x_t, state)
        out.append(z_t)
    z = torch.stack(out)
    s = bdh_kernels.lif(x, tau_mem=3.0, surrogate="fast_sigmoid", alpha=1.0, backend=backend)
    _check_firing(z)
    assert torch.equal(s, z)
    g = _grad_out(seed=11)
    (gz,) = torch.autograd.grad(z, x, g)
    (gs,) = torch.autograd.grad(s, x, g)
    assert _rel(gs, gz) < 1e-5


# -------------------------------------------------------------------------------------------- snnTorch
@pytest.fixture(scope="module")
def snn():
    return pytest.importorskip("snntorch", reason=f"snnTorch is not installed ({INSTALL})")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v_threshold", [1.0, 0.5])
@pytest.mark.parametrize("tau", [2.0, 4.0, 3.0])
def test_snntorch_leaky_zero_reset(snn, backend, v_threshold, tau):
    # reset_mechanism="subtract" is excluded on purpose: see the module docstring
    x = _input(seed=int(tau * 10 + v_threshold * 100), scale=0.8, shift=0.3, requires_grad=True)
    leaky = snn.Leaky(beta=1.0 - 1.0 / tau, threshold=v_threshold, reset_mechanism="zero")
    leaky.reset_mem()
    z = torch.stack([leaky(x_t)[0] for x_t in x.unbind(0)])
    s = bdh_kernels.lif(x, tau_mem=tau, v_threshold=v_threshold, v_reset=0.0, decay_input=False,
                        surrogate="atan", detach_reset=True, backend=backend)
    _check_firing(z)
    assert torch.equal(s, z)
    g = _grad_out(seed=5)
    (gz,) = torch.autograd.grad(z, x, g)
    (gs,) = torch.autograd.grad(s, x, g)
    assert gz.norm() > 0
    assert _rel(gs, gz) < 1e-5
