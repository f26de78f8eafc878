"""Readable pure-PyTorch ground truth for every op: a loop over time, differentiated by autograd.

Every fast backend (C++, CUDA, Triton) is tested against these functions, never against itself. The
arithmetic here is the canonical order of operations: the fast kernels perform the same fp32 operations
in the same order (no fused multiply-add), so their spikes are bit-identical to these.
"""
from typing import Optional, Tuple

import torch

from .surrogate import spike


def lif_constants(tau_mem: float, v_reset: Optional[float], tau_syn: Optional[float]):
    """The per-step constants every backend uses: ``k = 1/tau_mem``, ``a_syn = 1 - 1/tau_syn``, ``v_rest``.

    They are computed once in double precision and rounded to the state dtype by each backend.
    """
    k = 1.0 / tau_mem
    a_syn = 1.0 - 1.0 / tau_syn if tau_syn is not None else 0.0
    v_rest = v_reset if v_reset is not None else 0.0
    return k, a_syn, v_rest


def lif(
    x: torch.Tensor,
    tau_mem: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: Optional[float] = 0.0,
    decay_input: bool = True,
    tau_syn: Optional[float] = None,
    surrogate_code: int = 0,
    alpha: float = 4.0,
    detach_reset: bool = False,
    time_dim: int = 0,
    v_init: Optional[torch.Tensor] = None,
    i_init: Optional[torch.Tensor] = None,
    gated: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Leaky integrate-and-fire over time; returns ``(out, v_final, i_final)``.

    Arguments are validated by :func:`bdh_kernels.lif`; this function assumes them valid. Per neuron and
    step t, with state in fp32 (fp64 for fp64 input), ``k = 1/tau_mem``, ``a_syn = 1 - 1/tau_syn`` and
    ``v_rest = v_reset`` (0 for soft reset)::

        i_t = a_syn * i_{t-1} + x_t;  u_t = i_t         (only with tau_syn; otherwise u_t = x_t)
        h_t = v_{t-1} + (u_t - (v_{t-1} - v_rest)) * k   (decay_input=True)
        h_t = v_{t-1} - (v_{t-1} - v_rest) * k + u_t     (decay_input=False)
        s_t = 1[h_t - v_threshold >= 0]                  (surrogate gradient in backward)
        v_t = h_t * (1 - s_t) + v_reset * s_t            (hard reset)
        v_t = h_t - s_t * v_threshold                    (soft reset, v_reset=None)
        out_t = s_t   or   s_t * relu(x_t)               (gated)

    With ``detach_reset`` the ``s_t`` in the reset line is detached from the graph.
    """
    state_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    k, a_syn, v_rest = lif_constants(tau_mem, v_reset, tau_syn)
    xs = x.movedim(time_dim, 0).to(state_dtype)
    zeros = torch.zeros(xs.shape[1:], dtype=state_dtype, device=x.device)
    v = zeros + v_rest if v_init is None else v_init.to(state_dtype)
    i = None
    if tau_syn is not None:
        i = zeros if i_init is None else i_init.to(state_dtype)
    outs = []
    for x_t in xs.unbind(0):
        if i is not None:
            i = i * a_syn + x_t
            u = i
        else:
            u = x_t
        if decay_input:
            h = v + (u - (v - v_rest)) * k
        else:
            h = v - (v - v_rest) * k + u
        s = spike(h - v_threshold, surrogate_code, alpha)
        outs.append(s * torch.relu(x_t) if gated else s)
        s_r = s.detach() if detach_reset else s
        if v_reset is not None:
            v = h * (1 - s_r) + v_reset * s_r
        else:
            v = h - s_r * v_threshold
    out = torch.stack(outs, 0).movedim(0, time_dim).to(x.dtype)
    return out, v, i


# ---------------------------------------------------------------------------------------------- STDP
def trace_decay(tau: float) -> float:
    """The per-step decay of an STDP trace, ``1 - 1/tau``, in double; each backend rounds it once to the
    state dtype (fp32; fp64 for fp64 spikes)."""
    return 1.0 - 1.0 / tau


def stdp_traces(
    spikes: torch.Tensor,
    tau: float,
    time_dim: int = 0,
    trace_init: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exponential traces of ``spikes`` over time; returns ``(traces, final_trace)``.

    Arguments are validated by :func:`bdh_kernels.stdp_traces`. Per element and step t, in the state dtype
    (fp32; fp64 for fp64 spikes) with ``decay = 1 - 1/tau`` rounded once to it::

        trace_t = trace_{t-1} * decay + s_t,     trace_{-1} = trace_init (default 0)

    ``traces`` has the shape and dtype of ``spikes``; ``final_trace`` (the last step's trace, in the state
    dtype) has the shape of ``spikes`` without its time dim.
    """
    sd = torch.float64 if spikes.dtype == torch.float64 else torch.float32
    decay = torch.tensor(trace_decay(tau), dtype=sd, device=spikes.device)
    ss = spikes.movedim(time_dim, 0).to(sd)
    trace = torch.zeros(ss.shape[1:], dtype=sd, device=spikes.device) if trace_init is None else trace_init.to(sd)
    outs = []
    for s_t in ss.unbind(0):
        trace = trace * decay + s_t
        outs.append(trace)
    return torch.stack(outs, 0).movedim(0, time_dim).to(spikes.dtype), trace


def stdp_update(
    pre: torch.Tensor,
    post: torch.Tensor,
    tau_pre: float,
    tau_post: float,
    a_plus: float,
    a_minus: float,
    weight: Optional[torch.Tensor] = None,
    w_min: Optional[float] = None,
    w_max: Optional[float] = None,
    time_dim: int = 0,
    state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Pair-based STDP, one time step at a time; returns ``(dW, (final_trace_pre, final_trace_post))``.

    Arguments are validated by :func:`bdh_kernels.stdp_update`. ``pre`` is ``[..., Nin]`` and ``post``
    ``[..., Nout]`` with time along ``time_dim`` and the same other dims (the batch). Per step t, in the
    state dtype, traces first (SpikingJelly's order), then the step's contribution summed over the batch
    ``b``, with ``W`` fixed over the sequence::

        x_t = x_{t-1} * (1 - 1/tau_pre) + pre_t           y_t = y_{t-1} * (1 - 1/tau_post) + post_t
        LTP += sum_b outer(post_t[b], x_t[b])             LTD += sum_b outer(y_t[b], pre_t[b])
        dW = a_plus * LTP - a_minus * LTD                                   (no bounds)
        dW = a_plus * (w_max - W) * LTP - a_minus * (W - w_min) * LTD       (soft bounds)
    """
    sd = torch.float64 if pre.dtype == torch.float64 else torch.float32
    n_in, n_out = pre.shape[-1], post.shape[-1]
    pres = pre.movedim(time_dim, 0).to(sd)
    posts = post.movedim(time_dim, 0).to(sd)
    batch_shape = pres.shape[1:-1]
    pres = pres.reshape(pres.shape[0], -1, n_in)
    posts = posts.reshape(posts.shape[0], -1, n_out)
    d_pre = torch.tensor(trace_decay(tau_pre), dtype=sd, device=pre.device)
    d_post = torch.tensor(trace_decay(tau_post), dtype=sd, device=pre.device)
    if state is None:
        x = torch.zeros(pres.shape[1:], dtype=sd, device=pre.device)
        y = torch.zeros(posts.shape[1:], dtype=sd, device=pre.device)
    else:
        x, y = (s.to(sd).reshape(-1, n) for s, n in zip(state, (n_in, n_out)))
    ltp = torch.zeros(n_out, n_in, dtype=sd, device=pre.device)
    ltd = torch.zeros(n_out, n_in, dtype=sd, device=pre.device)
    for pre_t, post_t in zip(pres.unbind(0), posts.unbind(0)):
        x = x * d_pre + pre_t
        y = y * d_post + post_t
        ltp = ltp + post_t.t() @ x  # [Nout, B] @ [B, Nin]: sum over the batch of the outer products
        ltd = ltd + y.t() @ pre_t
    if weight is None:
        dw = a_plus * ltp - a_minus * ltd
    else:
        w = weight.detach().to(sd)
        dw = a_plus * (w_max - w) * ltp - a_minus * (w - w_min) * ltd
    return dw, (x.reshape(batch_shape + (n_in,)), y.reshape(batch_shape + (n_out,)))
