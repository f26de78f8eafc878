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
