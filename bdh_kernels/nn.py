"""Modules over the ops, for use in any PyTorch model."""
from typing import Optional

import torch
from torch import nn

from .lif import lif


class LIF(nn.Module):
    """Leaky integrate-and-fire neurons as a layer: a drop-in replacement for an activation.

    The arguments are those of :func:`bdh_kernels.lif` (see its docstring for the formulas), plus:

    * ``step_mode="m"`` (multi-step): ``forward(x)`` takes a whole sequence with time along ``time_dim``.
      Each call starts from rest unless ``stateful=True``, in which case the final state of one call is
      the initial state of the next until :meth:`reset` (SpikingJelly's behaviour).
    * ``step_mode="s"`` (single-step, for streaming): ``forward(x)`` takes one time step (no time dim),
      and the membrane carries over between calls until :meth:`reset`. Running a sequence step by step
      gives the same spikes and gradients as one multi-step call.
    """

    def __init__(self, tau_mem: float = 2.0, v_threshold: float = 1.0, v_reset: Optional[float] = 0.0,
                 decay_input: bool = True, tau_syn: Optional[float] = None, surrogate: str = "sigmoid",
                 alpha: Optional[float] = None, detach_reset: bool = False, output: str = "spike",
                 step_mode: str = "m", time_dim: int = 0, stateful: bool = False,
                 backend: Optional[str] = None):
        super().__init__()
        if step_mode not in ("m", "s"):
            raise ValueError(f'step_mode must be "m" (multi-step) or "s" (single-step), got {step_mode!r}')
        self.params = dict(tau_mem=tau_mem, v_threshold=v_threshold, v_reset=v_reset,
                           decay_input=decay_input, tau_syn=tau_syn, surrogate=surrogate, alpha=alpha,
                           detach_reset=detach_reset, output=output, backend=backend)
        self.step_mode, self.time_dim, self.stateful = step_mode, time_dim, stateful
        self.v: Optional[torch.Tensor] = None
        self.i: Optional[torch.Tensor] = None

    def reset(self):
        """Forget the membrane (and synaptic current): the next call starts from rest."""
        self.v = self.i = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.step_mode == "s"
        keep = single or self.stateful
        out, state = lif(x.unsqueeze(0) if single else x, time_dim=0 if single else self.time_dim,
                         v_init=self.v if keep else None, i_init=self.i if keep else None,
                         return_state=True, **self.params)
        if keep:
            self.v, self.i = state
        return out.squeeze(0) if single else out

    def extra_repr(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.params.items() if v is not None)
        return f"{shown}, step_mode={self.step_mode!r}"


def reset(model: nn.Module):
    """Reset every :class:`LIF` in ``model`` (SpikingJelly's ``functional.reset_net``)."""
    for module in model.modules():
        if isinstance(module, LIF):
            module.reset()
