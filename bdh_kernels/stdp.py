"""The STDP ops: the fused trace scan (``stdp_traces``) and the one-GEMM weight update (``stdp_update``).

Kernel contract (shared by the C++, CUDA and Triton backends; ``reference.stdp_traces`` is the ground truth)
----------------------------------------------------------------------------------------------------------
The wrapper views the spikes as ``[P, T, Q]`` exactly as :mod:`bdh_kernels.lif` does
(:func:`bdh_kernels.layout.as_ptq`: any strides, a copy only when no dim order views them, ``[1, T, P]``
when Q == 1). Neuron ``n = p * Q + q``.

``stdp_trace_forward(spikes, trace_init, tau) -> (traces, trace_final)``

* ``trace_init``: None or contiguous ``[P*Q]`` in the state dtype (fp32; fp64 for fp64 spikes).
* ``traces``: contiguous ``[P, T, Q]`` in the spikes' dtype; ``trace_final``: ``[P*Q]`` in the state dtype.
* per neuron, in the state dtype, ``decay = 1 - 1/tau`` rounded once from double::

      tr = trace_init (or 0);  for t = 0 .. T-1:  tr = tr * decay + s_t;  traces_t = tr
      trace_final = tr

``stdp_trace_backward(grad_traces, grad_final, tau) -> (grad_spikes, grad_trace_init)``, ``grad_traces``
``[P, T, Q]`` of any strides, ``grad_final`` None or ``[P*Q]``; the reverse scan (nothing is saved by the
forward: the trace is linear in its inputs)::

      c = grad_final (or 0);  for t = T-1 .. 0:  c = c + g_t;  grad_spikes_t = c;  c = c * decay
      grad_trace_init = c

The weight update is the two scans above and two matrix products over all ``T * B`` rows. On the GPU (and
for fp16/bf16/fp64 or whenever autograd must see them) they are ``torch.mm`` / ``torch.addmm``, which cuBLAS
and BLAS run at their peak. For fp32 spikes on the cpp backend they are ``spike_matmul``, which adds up
only the rows where a spike is nonzero::

    spike_matmul(out, spikes [R, S], dense [R, D], alpha, transposed, accumulate):
        out = alpha * spikes^T @ dense (its transpose, [D, S], when transposed) (+ out when accumulate)

(csrc/spike_matmul_cpu.cpp; about 3x faster than the GEMM at spike probability 0.1; a GEMM above 25%
nonzeros). Both spike operands of the rule are spike trains, so the two products are
``spike_matmul(dW, post, trace_pre)`` and ``spike_matmul(dW, pre, trace_post, transposed, accumulate)``, into
one ``[Nout, Nin]`` matrix.
"""
import math
from typing import NamedTuple, Optional

import torch

from . import backends, reference
from .checks import check_bool, check_number, check_weight_bounds, reject_forward_ad
from .layout import as_ptq
from .lif import FLOAT_DTYPES, _check_state, _check_time_dim, state_dtype

TRACE_FORWARD_SCHEMA = "(Tensor spikes, Tensor? trace_init, float tau) -> (Tensor, Tensor)"
TRACE_BACKWARD_SCHEMA = "(Tensor grad_traces, Tensor? grad_final, float tau) -> (Tensor, Tensor)"


class STDPState(NamedTuple):
    """The traces after the last step of a :func:`stdp_update` call, to pass as ``state`` to the next.

    ``pre``: ``[batch..., Nin]``, ``post``: ``[batch..., Nout]`` (the spikes' shapes without the time dim),
    in fp32 (fp64 for fp64 spikes).
    """

    pre: torch.Tensor
    post: torch.Tensor


# ----------------------------------------------------------------------------------------- custom ops
def _trace_fake(x, state, tau):
    p, t, q = x.shape
    return x.new_empty((p, t, q)), x.new_empty((p * q,), dtype=state_dtype(x.dtype))


def register_trace_ops(forward_op, backward_op):
    """Give a (forward, backward) trace-scan op pair its fake kernels and autograd formulas.

    The scan is linear and the backward is its transpose, so each op's gradient is the other op: the
    backward of the forward is the reverse scan, and the backward of the backward (double backward) is the
    forward scan again. Nothing is saved.
    """

    torch.library.register_fake(forward_op, _trace_fake)
    torch.library.register_fake(backward_op, _trace_fake)

    def setup_context(ctx, inputs, output):
        ctx.tau = inputs[2]  # nothing saved: the transpose needs only the decay

    def transpose_of(op):
        def backward(ctx, grad_seq, grad_state):
            grad_state = grad_state.contiguous() if grad_state is not None else None
            grad_in, grad_state0 = op(grad_seq, grad_state, ctx.tau)
            need = ctx.needs_input_grad
            return grad_in if need[0] else None, grad_state0 if need[1] else None, None

        return backward

    torch.library.register_autograd(forward_op, transpose_of(backward_op), setup_context=setup_context)
    torch.library.register_autograd(backward_op, transpose_of(forward_op), setup_context=setup_context)


_ops = backends.CustomOps("stdp_trace", "stdp", register_trace_ops)


# ------------------------------------------------------------------------------------ argument checks
def _check_spikes(name, x, min_dim=1):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (fp16/bf16/fp32/fp64; convert bool or integer "
                        f"spikes with .float()), got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dim{'s' if min_dim > 1 else ''} "
                         f"(time{', ..., features' if min_dim > 1 else ''}), got {x.dim()}")


def _check_tau(name, tau):
    return check_number(name, tau, low=1.0, low_inclusive=True)


# ------------------------------------------------------------------------------------------ the scan
def _traces(spikes, tau, time_dim, trace_init, choice):
    """The scan on a resolved backend; arguments already checked. Returns ``(traces, final)``."""
    if choice == "reference":
        return reference.stdp_traces(spikes, tau, time_dim, trace_init)
    if spikes.dtype == torch.float64 and choice != "cpp":
        raise ValueError(f"backend={choice!r} supports fp16/bf16/fp32 spikes; fp64 runs on cpp and reference")
    reject_forward_ad("stdp_traces", choice, spikes, trace_init, reference_has_it=True)
    sd = state_dtype(spikes.dtype)
    forward_op, _ = _ops(choice)
    x3, layout = as_ptq(spikes, time_dim)
    init = None if trace_init is None else layout.flat_state(trace_init.to(sd))
    out3, final = forward_op(x3, init, tau)
    return layout.output(out3), layout.state(final)


def stdp_traces(
    spikes: torch.Tensor,
    tau: float,
    time_dim: int = 0,
    trace_init: Optional[torch.Tensor] = None,
    return_state: bool = False,
    backend: Optional[str] = None,
):
    r"""Exponential STDP traces of a spike train, as one fused scan over time.

    Per element of ``spikes`` off the time dim, per step t (state in fp32, fp64 for fp64 spikes)::

        trace_t = trace_{t-1} * (1 - 1/tau) + s_t,        trace_{-1} = trace_init (default 0)

    This is SpikingJelly's trace convention ``tr = tr - tr / tau + s`` (its STDP learners and
    ``functional.learning.stdp_linear_step``), with the decay ``1 - 1/tau`` computed in double and rounded
    once to fp32, so every backend gives bit-identical traces. ``tau`` is in time steps, ``>= 1`` (``tau = 1``:
    no memory, the trace is the spike). For the exponential form ``trace_t = exp(-dt/tau_exp) * trace_{t-1}
    + s_t`` (the exact solution of ``d trace/dt = -trace/tau_exp`` between spikes; SpikingJelly's and
    snnTorch's ``mstdp`` rules use it with ``dt = 1``) pass ``tau = 1 / (1 - exp(-dt / tau_exp))``: the
    decays are then equal (to the fp32 rounding of the decay); for ``tau_exp >> dt`` this is about
    ``tau_exp / dt + 1/2``. Norse's Euler form ``t += dt * tau_inv * (a * s - t)`` is ours with
    ``tau = 1 / (dt * tau_inv)``, scaled by ``dt * tau_inv * a``.

    Spikes may be graded (any real values, e.g. ``lif(..., output="gated")``): the trace is a linear filter.

    Args:
        spikes: fp16/bf16/fp32 (fp64 on the reference and cpp backends), any shape and strides.
        tau: trace time constant in steps, finite and >= 1.
        time_dim: which dim of ``spikes`` is time.
        trace_init: the trace before the first step, shaped like ``spikes`` without its time dim.
        return_state: also return the trace after the last step (fp32, fp64 for fp64 spikes), for streaming.
        backend: None (automatic, or ``$BDH_KERNELS_BACKEND``), ``"triton"``, ``"cuda"``, ``"cpp"`` or
            ``"reference"``; as for :func:`bdh_kernels.lif`.

    Returns:
        ``traces`` shaped and typed like ``spikes``, or ``(traces, final_trace)`` with ``return_state=True``.

    Differentiable in ``spikes`` and ``trace_init``: the backward is the reverse scan, and nothing is saved
    for it (not even the input).
    """
    _check_spikes("spikes", spikes)
    time_dim = _check_time_dim(time_dim, spikes, "spikes")
    tau = _check_tau("tau", tau)
    _check_state("trace_init", trace_init, spikes, time_dim, "spikes")
    check_bool("return_state", return_state)
    choice = backends.select("stdp_traces", spikes.device, backend)
    traces, final = _traces(spikes, tau, time_dim, trace_init, choice)
    return (traces, final) if return_state else traces


# -------------------------------------------------------------------------------------- the update
def stdp_update(
    pre: torch.Tensor,
    post: torch.Tensor,
    tau_pre: float = 20.0,
    tau_post: float = 20.0,
    a_plus: float = 0.01,
    a_minus: float = 0.0105,
    weight: Optional[torch.Tensor] = None,
    w_min: Optional[float] = None,
    w_max: Optional[float] = None,
    time_dim: int = 0,
    state: Optional[STDPState] = None,
    backend: Optional[str] = None,
):
    r"""Pair-based STDP weight change of a whole spike sequence, in one call.

    ``pre`` is ``[..., Nin]`` (the synapse's input spikes) and ``post`` ``[..., Nout]`` (its neurons' output
    spikes), with time along ``time_dim`` and the same other dims (the batch), as for an ``nn.Linear`` of
    weight ``[Nout, Nin]`` applied to every step. With the traces of :func:`stdp_traces`
    (``x = stdp_traces(pre, tau_pre)``, ``y = stdp_traces(post, tau_post)``)::

        LTP[o, i] = sum_{t,b} post[t,b,o] * x[t,b,i]        (pre before post: potentiation)
        LTD[o, i] = sum_{t,b} y[t,b,o] * pre[t,b,i]         (post before pre: depression)
        dW = a_plus * LTP - a_minus * LTD                                   (no bounds)
        dW = a_plus * (w_max - W) * LTP - a_minus * (W - w_min) * LTD       (soft bounds)

    The sums over t and b are two matrix products over all ``T*B`` rows: no ``[B, Nout, Nin]`` tensor is
    ever built, so the extra memory is the two traces (``T*B*(Nin+Nout)`` elements) and the ``[Nout, Nin]``
    result (plus one more ``[Nout, Nin]`` with soft bounds). For fp32 on the cpp backend a product whose
    spike factor is at most 25% nonzero adds up only the rows where it is nonzero (module docstring:
    ``spike_matmul``); otherwise the products are ``torch.mm`` / ``torch.addmm``. With finite traces the
    two agree; a non-finite trace reaches ``dW`` through a GEMM even where its spike is 0 (0 * inf is NaN),
    but not through ``spike_matmul``, so non-finite traces give backend- and density-dependent results.

    This equals SpikingJelly's ``functional.learning.stdp_linear_step(pre[t], post[t], trace, W, tau_pre,
    tau_post, f_pre, f_post)`` applied step by step with ``W`` fixed and its ``delta_w`` summed over the
    steps, with ``f_post(w) = a_plus`` and ``f_pre(w) = a_minus`` (no bounds), or ``f_post(w) = a_plus *
    (w_max - w)`` and ``f_pre(w) = a_minus * (w - w_min)`` (soft bounds: the multiplicative weight dependence
    that slows potentiation near ``w_max`` and depression near ``w_min``). The traces follow SpikingJelly's
    convention, traces updated before the products; see :func:`stdp_traces` for the mapping to the
    ``exp(-dt/tau)`` form. Graded (non-binary) spike values are allowed: the rule is bilinear in them.

    Args:
        pre, post: fp16/bf16/fp32 (fp64 on the reference and cpp backends) spikes of the same dtype and
            device, at least 2 dims (time and neurons); the neurons are the last dim.
        tau_pre, tau_post: trace time constants in steps, finite and >= 1.
        a_plus, a_minus: potentiation and depression amplitudes (finite; usually > 0).
        weight, w_min, w_max: all three for soft bounds (``weight`` ``[Nout, Nin]``, ``w_min < w_max``), or
            none. ``weight`` is read, never written, and not differentiated.
        time_dim: which dim is time (not the last).
        state: the :class:`STDPState` returned by the previous call, to continue a sequence: a long
            sequence split into chunks gives the same ``dW`` (summed) and final state as one call.
        backend: the backend of the trace scans (see :func:`stdp_traces`).

    Returns:
        ``(dW, state)``: ``dW`` ``[Nout, Nin]`` in the spikes' dtype (promoted with ``weight``'s with soft
        bounds; summed in fp32 for fp16/bf16 spikes and rounded once), and the :class:`STDPState` after the last step. Add ``lr * dW`` to the weight yourself, or
        use :class:`bdh_kernels.nn.STDPLearner`.
    """
    _check_spikes("pre", pre, min_dim=2)
    _check_spikes("post", post, min_dim=2)
    if post.dtype != pre.dtype:
        raise TypeError(f"pre and post must have the same dtype, got pre {pre.dtype} and post {post.dtype}")
    if post.device != pre.device:
        raise ValueError(f"post is on {post.device} but pre is on {pre.device}")
    if post.dim() != pre.dim() or post.shape[:-1] != pre.shape[:-1]:
        raise ValueError(f"pre and post must have the same dims except the last (neurons): got pre "
                         f"{tuple(pre.shape)} and post {tuple(post.shape)}")
    time_dim = _check_time_dim(time_dim, pre, "pre", exclude_last=True)
    tau_pre = _check_tau("tau_pre", tau_pre)
    tau_post = _check_tau("tau_post", tau_post)
    a_plus = check_number("a_plus", a_plus)
    a_minus = check_number("a_minus", a_minus)
    n_in, n_out = pre.shape[-1], post.shape[-1]
    bounded, w_min, w_max = _check_bounds(weight, w_min, w_max, pre, n_out, n_in)
    init_pre = init_post = None
    if state is not None:
        if not isinstance(state, tuple) or len(state) != 2:
            raise TypeError(f"state must be the STDPState (pre, post) of a previous call or None, got "
                            f"{type(state).__name__}")
        init_pre, init_post = state
        _check_state("state.pre", init_pre, pre, time_dim, "pre")
        _check_state("state.post", init_post, post, time_dim, "post")

    choice = backends.select("stdp_update", pre.device, backend)
    trace_pre, final_pre = _traces(pre, tau_pre, time_dim, init_pre, choice)
    trace_post, final_post = _traces(post, tau_post, time_dim, init_post, choice)
    spike_driven = _spike_driven(choice, pre, post, init_pre, init_post)
    # every (t, b) is a row: time and batch are summed alike, so their order in memory does not matter
    rows = math.prod(pre.shape[:-1])
    dw = _weight_change(pre.reshape(rows, n_in), trace_pre.reshape(rows, n_in), post.reshape(rows, n_out),
                        trace_post.reshape(rows, n_out), a_plus, a_minus, weight if bounded else None, w_min, w_max,
                        spike_driven)
    return dw, STDPState(final_pre, final_post)


def _spike_driven(choice, *inputs):
    """Whether the update's products can be ``spike_matmul``: fp32 on the cpp backend, and no input that
    autograd must differentiate ``dW`` by (``spike_matmul`` has no autograd formula; the GEMMs have)."""
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    return choice == "cpp" and inputs[0].dtype == torch.float32 and not needs_grad


def _weight_change(pre2, trace_pre2, post2, trace_post2, a_plus, a_minus, weight, w_min, w_max, spike_driven):
    """dW from the ``[rows, N]`` spikes and traces (arguments checked): two products over the rows, by
    ``spike_matmul`` when ``spike_driven``, else by GEMMs. fp16/bf16 operands are multiplied in fp32 and
    dW rounded once: a sum over the rows outgrows fp16's range (65504) long before it is scaled by
    ``a_plus``, and bf16 keeps too few bits to add thousands of rows."""
    n_out, n_in = post2.shape[1], pre2.shape[1]
    out_dtype = pre2.dtype if weight is None else torch.promote_types(pre2.dtype, weight.dtype)
    sd = state_dtype(pre2.dtype)
    if pre2.dtype != sd:
        pre2, trace_pre2, post2, trace_post2 = (t.to(sd) for t in (pre2, trace_pre2, post2, trace_post2))
    # looked up only when used: without the C++ extension (GEMM path) the op does not exist
    spike_matmul = torch.ops.bdh.spike_matmul if spike_driven else None
    if weight is None:
        if spike_driven:
            dw = pre2.new_empty((n_out, n_in))
            spike_matmul(dw, post2, trace_pre2, a_plus, False, False)   # a_plus LTP
            spike_matmul(dw, pre2, trace_post2, -a_minus, True, True)   # - a_minus LTD
            return dw
        dw = torch.mm(post2.t(), trace_pre2)                            # LTP
        dw.addmm_(trace_post2.t(), pre2, beta=a_plus, alpha=-a_minus)  # a_plus LTP - a_minus LTD
        return dw.to(out_dtype)
    if spike_driven:
        ltp, ltd = pre2.new_empty((n_out, n_in)), pre2.new_empty((n_out, n_in))
        spike_matmul(ltp, post2, trace_pre2, 1.0, False, False)
        spike_matmul(ltd, pre2, trace_post2, 1.0, True, False)
    else:
        ltp = torch.mm(post2.t(), trace_pre2)
        ltd = torch.mm(trace_post2.t(), pre2)
    w = weight.detach()
    dtype = torch.promote_types(sd, w.dtype)
    ltp, ltd, w = ltp.to(dtype), ltd.to(dtype), w.to(dtype)
    # a_plus (w_max - W) LTP - a_minus (W - w_min) LTD, in place: one [Nout, Nin] temporary at a time
    dw = ltp.mul_((w_max - w).mul_(a_plus))
    return dw.sub_(ltd.mul_((w - w_min).mul_(a_minus))).to(out_dtype)


def _check_bounds(weight, w_min, w_max, pre, n_out, n_in):
    """``(bounded, w_min, w_max)``: whether soft bounds apply, and the checked bounds."""
    given = {"weight": weight is not None, "w_min": w_min is not None, "w_max": w_max is not None}
    if not any(given.values()):
        return False, None, None
    if not all(given.values()):
        missing = ", ".join(k for k, v in given.items() if not v)
        raise ValueError(f"soft bounds need weight, w_min and w_max together; missing {missing}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a tensor or None, got {type(weight).__name__}")
    if weight.dtype not in FLOAT_DTYPES:
        raise TypeError(f"weight must be a floating-point tensor, got {weight.dtype}")
    if tuple(weight.shape) != (n_out, n_in):
        raise ValueError(f"weight must be [Nout, Nin] = [{n_out}, {n_in}] (post's and pre's last dims), got "
                         f"{tuple(weight.shape)}")
    if weight.device != pre.device:
        raise ValueError(f"weight is on {weight.device} but pre is on {pre.device}")
    return (True, *check_weight_bounds(w_min, w_max))


def _spike_matmul_fake(out, spikes, dense, alpha, transposed, accumulate):
    return None


_ops.register_runnable()
if backends.extension_error() is None:
    torch.library.register_fake("bdh::spike_matmul")(_spike_matmul_fake)
