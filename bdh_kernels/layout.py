"""How the per-neuron ops (lif, stdp_traces) see a tensor: as a ``[P, T, Q]`` view with time in the middle.

The kernels take ``x3 = [P, T, Q]`` of any strides and number the neurons ``n = p * Q + q``; their state
vectors are ``[P * Q]`` in that order. :func:`as_ptq` finds such a view of ``x`` without copying whenever
the memory allows: first in x's own dim order (P = the dims before time, Q = those after), else with the
neuron dims put in memory order (largest stride first). The op is elementwise over neurons, so their order
is free, and every dense layout (a batch-first tensor transposed to time-first, channels_last) views that
way; only overlapping or expanded inputs are copied. The returned :class:`Layout` maps the kernels'
outputs and states back to x's shape.
"""
import math
from typing import NamedTuple

import torch


class Layout(NamedTuple):
    """A ``[P, T, Q]`` view of a tensor: ``order`` lists its dims in the view's order (time among them),
    ``time_pos`` is where time is in ``order``, ``swapped`` says the view was relabelled ``[1, T, P]``."""

    shape: torch.Size
    order: tuple
    time_pos: int
    swapped: bool

    def output(self, out3: torch.Tensor) -> torch.Tensor:
        """A kernel's ``[P, T, Q]`` output as a tensor shaped like x (in x's memory order)."""
        out3 = out3.permute(2, 1, 0) if self.swapped else out3
        return out3.view([self.shape[d] for d in self.order]).permute(_inverse(self.order))

    def flat_state(self, state: torch.Tensor) -> torch.Tensor:
        """A state shaped like x without its time dim as the kernels' contiguous ``[P * Q]``."""
        return state.permute(self._neuron_order()).reshape(-1).contiguous()

    def state(self, flat: torch.Tensor) -> torch.Tensor:
        """The kernels' ``[P * Q]`` state shaped like x without its time dim."""
        order = self._neuron_order()
        state_shape = self.shape[:self.time_dim] + self.shape[self.time_dim + 1:]
        return flat.view([state_shape[d] for d in order]).permute(_inverse(order))

    @property
    def time_dim(self) -> int:
        return self.order[self.time_pos]

    def _neuron_order(self):
        """``order`` without time, as dims of x without its time dim."""
        return tuple(d - (d > self.time_dim) for d in self.order if d != self.time_dim)


def _inverse(order):
    inverse = [0] * len(order)
    for i, d in enumerate(order):
        inverse[d] = i
    return inverse


def _as_3d(x: torch.Tensor, order, time_dim: int, copy: bool = False):
    """x's dims in ``order`` as ``[P, T, Q]`` (P: the dims before time, Q: after); None when that is not a
    view of x, unless ``copy``."""
    xp = x.permute(order)
    time_pos = order.index(time_dim)
    shape = (math.prod(xp.shape[:time_pos]), x.shape[time_dim], math.prod(xp.shape[time_pos + 1:]))
    if copy:
        return xp.reshape(shape)
    try:
        return xp.view(shape)
    except RuntimeError:
        return None


def as_ptq(x: torch.Tensor, time_dim: int):
    """``(x3, layout)``: x as a ``[P, T, Q]`` tensor, a view unless x overlaps itself or is expanded."""
    order = tuple(range(x.dim()))
    x3 = _as_3d(x, order, time_dim)
    if x3 is None:
        # memory order: largest stride first; a size-1 dim has no stride that matters (it sorts last)
        order = tuple(sorted(order, key=lambda d: -x.stride(d) if x.shape[d] > 1 else 0))
        x3 = _as_3d(x, order, time_dim)
    if x3 is None:  # overlapping or expanded: one copy
        order = tuple(range(x.dim()))
        x3 = _as_3d(x, order, time_dim, copy=True)
    swapped = x3.shape[2] == 1 and x3.shape[0] > 1  # neurons all before time: make them the inner dim
    return (x3.permute(2, 1, 0) if swapped else x3), Layout(x.shape, order, order.index(time_dim), swapped)
