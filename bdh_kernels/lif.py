"""The fused leaky integrate-and-fire op: argument checks, backend dispatch, custom ops and autograd.

Kernel contract (shared by the C++, CUDA and Triton backends; ``reference.lif`` is the ground truth)
---------------------------------------------------------------------------------------------------
The Python wrapper views the input as ``x3 = [P, T, Q]`` (:func:`bdh_kernels.layout.as_ptq`): P = product
of the dims before time, Q = product of the dims after, in x's dim order or, when that is no view of x,
with the neuron dims in memory order and time among them (any strides; x is copied, once, only when no
order gives such a view).
When Q == 1 and P > 1 it relabels the view as ``[1, T, P]`` so the neuron stride is the small one. Neuron
``n = p * Q + q``.

``lif_forward(x3, v_init, i_init, tau_mem, v_threshold, v_reset, decay_input, tau_syn, gated, surrogate,
alpha, detach_reset) -> (out, v_final, i_final, v_ckpt, i_ckpt)``

* ``v_init``/``i_init``: None or contiguous ``[P*Q]`` in the state dtype (fp32; fp64 for fp64 input).
* ``out``: contiguous ``[P, T, Q]`` in x's dtype; ``v_final``/``i_final``: ``[P*Q]`` state dtype
  (``i_final`` and ``i_ckpt`` have 0 elements without ``tau_syn``).
* ``v_ckpt``/``i_ckpt``: ``[ceil(T / CHECKPOINT_EVERY), P*Q]``, row c = the state *before* step
  ``c * CHECKPOINT_EVERY``. This is all the op saves besides a reference to x: 4/32 bytes per neuron-step
  (8/32 with tau_syn). The backward recomputes each 32-step segment's membranes from its checkpoint.

``lif_backward(grad_out, grad_v, grad_i, x3, v_ckpt, i_ckpt, <same parameters>) -> (grad_x, grad_v_init,
grad_i_init)`` with ``grad_out`` ``[P, T, Q]`` of any strides, ``grad_v``/``grad_i`` None or ``[P*Q]``,
``grad_x`` contiguous ``[P, T, Q]`` in x's dtype and the state gradients ``[P*Q]`` in the state dtype.
The reverse sweep, per step t from T-1 down (``gv`` = dL/dv_t and ``gi`` = the gradient reaching i_t
from later steps, both starting from grad_v / grad_i of the final state)::

    z = h_t - v_threshold;  g = surrogate'(z);  s = 1[z >= 0]
    gs = grad_out_t * (relu(x_t) if gated else 1) + gv * dv/ds     dv/ds = v_reset - h_t (hard), -v_threshold
                                                                   (soft), 0 with detach_reset
    gh = gs * g + gv * dv/dh                                       dv/dh = 1 - s (hard), 1 (soft)
    gu = gh * (k if decay_input else 1);  gv = gh * (1 - k)
    with tau_syn: gx = gu + gi; gi = gx * a_syn      without: gx = gu
    gated: gx += grad_out_t * s * 1[x_t > 0]

and at the end ``grad_v_init = gv``, ``grad_i_init = gi``.
"""
from typing import NamedTuple, Optional

import torch

from . import backends, reference
from .checks import check_bool, check_int, check_number, reject_forward_ad
from .layout import as_ptq
from .surrogate import resolve as resolve_surrogate

CHECKPOINT_EVERY = 32

FORWARD_SCHEMA = (
    "(Tensor x, Tensor? v_init, Tensor? i_init, float tau_mem, float v_threshold, float? v_reset, "
    "bool decay_input, float? tau_syn, bool gated, int surrogate, float alpha, bool detach_reset) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)
BACKWARD_SCHEMA = (
    "(Tensor grad_out, Tensor? grad_v, Tensor? grad_i, Tensor x, Tensor v_ckpt, Tensor i_ckpt, "
    "float tau_mem, float v_threshold, float? v_reset, bool decay_input, float? tau_syn, bool gated, "
    "int surrogate, float alpha, bool detach_reset) -> (Tensor, Tensor, Tensor)"
)

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class LIFState(NamedTuple):
    """Final membrane ``v`` and synaptic current ``i`` (None without tau_syn), in fp32 (fp64 for fp64 x)."""

    v: torch.Tensor
    i: Optional[torch.Tensor]


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def num_checkpoints(t: int) -> int:
    return -(-t // CHECKPOINT_EVERY)


# ----------------------------------------------------------------------------------------- custom ops
def _forward_fake(x, v_init, i_init, tau_mem, v_threshold, v_reset, decay_input, tau_syn, gated,
                  surrogate, alpha, detach_reset):
    p, t, q = x.shape
    sd = state_dtype(x.dtype)
    m_syn = p * q if tau_syn is not None else 0
    return (
        x.new_empty((p, t, q)),
        x.new_empty((p * q,), dtype=sd),
        x.new_empty((m_syn,), dtype=sd),
        x.new_empty((num_checkpoints(t), p * q), dtype=sd),
        x.new_empty((num_checkpoints(t) if tau_syn is not None else 0, m_syn), dtype=sd),
    )


def _backward_fake(grad_out, grad_v, grad_i, x, v_ckpt, i_ckpt, tau_mem, v_threshold, v_reset,
                   decay_input, tau_syn, gated, surrogate, alpha, detach_reset):
    p, t, q = x.shape
    sd = state_dtype(x.dtype)
    return (x.new_empty((p, t, q)), x.new_empty((p * q,), dtype=sd),
            x.new_empty((p * q if tau_syn is not None else 0,), dtype=sd))


def register_lif_ops(forward_op, backward_op):
    """Give a (forward, backward) custom-op pair its fake kernels and its autograd formula."""

    torch.library.register_fake(forward_op, _forward_fake)
    torch.library.register_fake(backward_op, _backward_fake)

    def setup_context(ctx, inputs, output):
        x, v_init, i_init = inputs[:3]
        _, _, _, v_ckpt, i_ckpt = output
        ctx.save_for_backward(x, v_ckpt, i_ckpt)
        ctx.params = inputs[3:]
        ctx.mark_non_differentiable(v_ckpt, i_ckpt)

    def backward(ctx, grad_out, grad_v, grad_i, _grad_v_ckpt, _grad_i_ckpt):
        x, v_ckpt, i_ckpt = ctx.saved_tensors
        # state gradients are [P*Q]: make them contiguous here (they often arrive expanded from a sum)
        grad_v = grad_v.contiguous() if grad_v is not None else None
        grad_i = grad_i.contiguous() if grad_i is not None and grad_i.numel() else None
        grad_x, grad_v0, grad_i0 = backward_op(grad_out, grad_v, grad_i, x, v_ckpt, i_ckpt, *ctx.params)
        need = ctx.needs_input_grad
        return (grad_x if need[0] else None, grad_v0 if need[1] else None,
                grad_i0 if need[2] else None) + (None,) * len(ctx.params)

    def no_double_backward(ctx, *grads):
        raise RuntimeError("bdh_kernels.lif has no second derivative (its backward is not differentiable); "
                           "use backend='reference' for double backward")

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)
    # without this, a second derivative would be silently wrong (PyTorch only warns); with it, it is an error
    torch.library.register_autograd(backward_op, no_double_backward, setup_context=lambda ctx, inputs, output: None)


_ops = backends.CustomOps("lif", "lif", register_lif_ops)


# ------------------------------------------------------------------------------------ argument checks
def check_neuron(tau_mem, v_threshold, v_reset, decay_input, tau_syn, surrogate, alpha, detach_reset, output):
    """The neuron's parameters of :func:`lif`, checked: ``(tau_mem, v_threshold, v_reset, tau_syn,
    surrogate code, alpha, gated)`` as floats, the surrogate's code and default alpha resolved."""
    check_bool("decay_input", decay_input)
    check_bool("detach_reset", detach_reset)
    tau_mem = check_number("tau_mem", tau_mem, low=1.0 if decay_input else 0.0)
    v_threshold = check_number("v_threshold", v_threshold)
    v_reset = check_number("v_reset", v_reset, optional=True)
    tau_syn = check_number("tau_syn", tau_syn, low=1.0, low_inclusive=True, optional=True)
    code, alpha = resolve_surrogate(surrogate, alpha)
    if output not in ("spike", "gated"):
        raise ValueError(f'output must be "spike" or "gated", got {output!r}')
    return tau_mem, v_threshold, v_reset, tau_syn, code, alpha, output == "gated"


def _check_time_dim(time_dim, x, name, exclude_last=False):
    """``time_dim`` as a non-negative int for ``x`` (any int type, numpy's too; negative counts from the end)."""
    time_dim = check_int("time_dim", time_dim)
    if not -x.dim() <= time_dim < x.dim():
        raise ValueError(f"time_dim={time_dim} is out of range for {name} with {x.dim()} dims")
    time_dim %= x.dim()
    if exclude_last and time_dim == x.dim() - 1:
        raise ValueError(f"time_dim={time_dim} is the last dim of {name}, which holds the neurons (features); "
                         "put time on another dim")
    if x.shape[time_dim] == 0:
        raise ValueError(f"{name} has an empty time dim (time_dim={time_dim}, shape {tuple(x.shape)})")
    return time_dim


def _check_state(name, state, x, time_dim, xname="x"):
    """A carried state (v_init, a trace): None, or a float tensor shaped like ``x`` without its time dim."""
    if state is None:
        return
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or None, got {type(state).__name__}")
    if state.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor, got {state.dtype}")
    expected = x.shape[:time_dim] + x.shape[time_dim + 1:]
    if state.shape != expected:
        raise ValueError(f"{name} must have the shape of {xname} without its time dim, {tuple(expected)}, "
                         f"got {tuple(state.shape)}")
    if state.device != x.device:
        raise ValueError(f"{name} is on {state.device} but {xname} is on {x.device}")


# ----------------------------------------------------------------------------------------- public op
def lif(
    x: torch.Tensor,
    tau_mem: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: Optional[float] = 0.0,
    decay_input: bool = True,
    tau_syn: Optional[float] = None,
    surrogate: str = "sigmoid",
    alpha: Optional[float] = None,
    detach_reset: bool = False,
    time_dim: int = 0,
    v_init: Optional[torch.Tensor] = None,
    output: str = "spike",
    return_state: bool = False,
    backend: Optional[str] = None,
    i_init: Optional[torch.Tensor] = None,
):
    r"""Multi-step leaky integrate-and-fire neurons: membrane update, spike, reset, surrogate gradient.

    Each element of ``x`` off the time dim is one neuron; per step t (state in fp32, fp64 for fp64 x)::

        i_t = (1 - 1/tau_syn) * i_{t-1} + x_t,  u_t = i_t          (current-based, when tau_syn is set)
        u_t = x_t                                                   (otherwise)
        h_t = v_{t-1} + (u_t - (v_{t-1} - v_rest)) / tau_mem        (decay_input=True, SpikingJelly LIFNode)
        h_t = v_{t-1} - (v_{t-1} - v_rest) / tau_mem + u_t         (decay_input=False)
        s_t = 1[h_t >= v_threshold]                                 (backward: surrogate'(h_t - v_threshold))
        v_t = v_reset if s_t else h_t                               (hard reset)
        v_t = h_t - s_t * v_threshold                               (soft reset: v_reset=None)

    with ``v_rest = v_reset`` (0 for soft reset) and ``v_0 = v_init`` (default ``v_rest``), ``i_0 = i_init``
    (default 0). ``1/tau`` is applied as a multiplication by the fp32-rounded reciprocal in every backend.
    The spikes equal SpikingJelly's multi-step ``LIFNode(tau=tau_mem, decay_input, v_threshold, v_reset,
    detach_reset)`` (SpikingJelly divides by tau where this multiplies by the rounded reciprocal, so the
    membranes may differ in the last bit). With ``tau_syn`` they equal Norse's current-based ``LIF``
    (``lif_feed_forward_step``) with ``dt * tau_mem_inv = 1/tau_mem``, ``dt * tau_syn_inv = 1/tau_syn``,
    ``v_leak = v_reset`` and ``decay_input=True``, step for step; Norse's final ``state.i`` is
    ``(1 - 1/tau_syn)`` times ours (it stores the current after its decay). Ties (``h_t == v_threshold``)
    fire, as in SpikingJelly; snnTorch and Norse fire only above threshold. The backends give the same spikes
    and states for finite input; with NaN or inf in ``x`` (a NaN never fires) they may differ in the
    non-finite values they produce (the reference computes the hard reset as ``h (1 - s) + v_reset s``, NaN for infinite h).

    Args:
        x: input current, fp16/bf16/fp32 (fp64 on the reference and cpp backends), any layout.
        tau_mem: membrane time constant; > 1 with ``decay_input``, > 0 without.
        v_threshold, v_reset: firing threshold; reset potential (None: soft reset by subtraction).
        decay_input: whether the input is divided by ``tau_mem`` (see above).
        tau_syn: synaptic time constant (>= 1; 1 means no current memory) or None for voltage-based LIF.
        surrogate: ``sigmoid`` | ``atan`` | ``fast_sigmoid`` | ``piecewise_quadratic`` | ``erf``; see
            :mod:`bdh_kernels.surrogate` for formulas and the ``alpha`` defaults used when ``alpha=None``.
        detach_reset: detach the spike in the reset from the graph (SpikingJelly's ``detach_reset``).
        time_dim: which dim of x is time.
        v_init, i_init: initial membrane / synaptic current, shaped like x without its time dim.
        output: ``"spike"`` returns ``s`` in {0, 1}; ``"gated"`` returns ``s * relu(x)`` in one pass.
        return_state: also return :class:`LIFState` ``(v, i)`` after the last step (differentiable).
        backend: None (automatic, or ``$BDH_KERNELS_BACKEND``), ``"triton"``, ``"cuda"``, ``"cpp"`` or
            ``"reference"``; see :func:`bdh_kernels.available_backends`.

    Returns:
        ``out`` shaped and typed like x, or ``(out, LIFState)`` with ``return_state=True``.

    Autograd keeps a reference to x and fp32 membrane checkpoints every 32 steps (1/8 byte per neuron-step;
    1/4 with tau_syn); the backward recomputes membranes from them.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be a floating-point tensor (fp16/bf16/fp32/fp64), got {x.dtype}")
    if x.dim() == 0:
        raise ValueError("x must have a time dim, got a 0-dim tensor")
    time_dim = _check_time_dim(time_dim, x, "x")
    check_bool("return_state", return_state)
    tau_mem, v_threshold, v_reset, tau_syn, code, alpha, gated = check_neuron(
        tau_mem, v_threshold, v_reset, decay_input, tau_syn, surrogate, alpha, detach_reset, output)
    _check_state("v_init", v_init, x, time_dim)
    _check_state("i_init", i_init, x, time_dim)
    if i_init is not None and tau_syn is None:
        raise ValueError("i_init is the synaptic current and needs tau_syn to be set")
    choice = backends.select("lif", x.device, backend)
    if choice != "reference" and x.dtype == torch.float64 and choice != "cpp":
        raise ValueError(f"backend={choice!r} supports fp16/bf16/fp32 input; fp64 runs on cpp and reference")

    if choice == "reference":
        out, v, i = reference.lif(x, tau_mem, v_threshold, v_reset, decay_input, tau_syn, code, alpha,
                                  detach_reset, time_dim, v_init, i_init, gated)
    else:
        reject_forward_ad("lif", choice, x, v_init, i_init)
        sd = state_dtype(x.dtype)
        forward_op, _ = _ops(choice)
        x3, layout = as_ptq(x, time_dim)
        flat = [None if s is None else layout.flat_state(s.to(sd)) for s in (v_init, i_init)]
        out3, v, i, _, _ = forward_op(x3, flat[0], flat[1], tau_mem, v_threshold, v_reset,
                                      decay_input, tau_syn, gated, code, alpha, detach_reset)
        out = layout.output(out3)
        v = layout.state(v)
        i = layout.state(i) if tau_syn is not None else None
    return (out, LIFState(v, i)) if return_state else out


_ops.register_runnable()
