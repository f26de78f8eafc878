"""How the per-neuron ops (lif, stdp_traces) see a tensor: as a ``[P, T, Q]`` view with time in the middle.

The kernels take ``x3 = [P, T, Q]`` of any strides and number the neurons ``n = p * Q + q``; their state
vectors are ``[P * Q]`` in that order. :func:`as_ptq` finds such a view of ``x`` without copying whenever
the memory allows: first in x's own dim order (P = the dims before time, Q = those after), else with the
neuron dims put in memory order (largest stride first) and time among them. The op is elementwise over
neurons, so their order is free: every dense layout (a batch-first tensor transposed to time-first,
channels_last), slices and expanded inputs view that way; only when no dim order does (the neurons'
strides interleave with time's, or their dims overlap in memory) is x copied. The returned
:class:`Layout` maps the kernels' outputs and states back to x's shape.
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
        """A kernel's contiguous ``[P, T, Q]`` output as a tensor shaped like x (laid out as the view's dims)."""
        out3 = out3.permute(2, 1, 0) if self.swapped else out3
        return _unpermute(out3.view([self.shape[d] for d in self.order]), self.order)

    def flat_state(self, state: torch.Tensor) -> torch.Tensor:
        """A state shaped like x without its time dim as the kernels' contiguous ``[P * Q]``."""
        return _permute(state, self._neuron_order()).reshape(-1).contiguous()

    def state(self, flat: torch.Tensor) -> torch.Tensor:
        """The kernels' ``[P * Q]`` state shaped like x without its time dim."""
        order = self._neuron_order()
        state_shape = self.shape[:self.time_dim] + self.shape[self.time_dim + 1:]
        return _unpermute(flat.view([state_shape[d] for d in order]), order)

    @property
    def time_dim(self) -> int:
        return self.order[self.time_pos]

    def _neuron_order(self):
        """``order`` without time, as dims of x without its time dim."""
        return tuple(d - (d > self.time_dim) for d in self.order if d != self.time_dim)


# x's own order is the common case: no permute then (each costs microseconds on small per-step calls)
def _permute(t: torch.Tensor, order) -> torch.Tensor:
    return t if order == tuple(range(len(order))) else t.permute(order)


def _unpermute(t: torch.Tensor, order) -> torch.Tensor:
    """Undo ``_permute(., order)``."""
    if order == tuple(range(len(order))):
        return t
    inverse = [0] * len(order)
    for i, d in enumerate(order):
        inverse[d] = i
    return t.permute(inverse)


def _merges(x: torch.Tensor, dims) -> bool:
    """Whether x's ``dims``, in this order, flatten into one strided dim without a copy (size-1 dims have
    no say; an empty tensor views any way). Decided from sizes and strides, not by trying ``view``:
    torch.compile cannot trace the exception a failed view raises."""
    if x.numel() == 0:
        return True
    dims = [d for d in dims if x.shape[d] != 1]
    return all(x.stride(a) == x.stride(b) * x.shape[b] for a, b in zip(dims, dims[1:]))


def _views(x: torch.Tensor, order, time_dim: int) -> bool:
    """Whether x's dims in ``order`` view as ``[P, T, Q]`` (P: the dims before time, Q: after)."""
    time_pos = order.index(time_dim)
    return _merges(x, order[:time_pos]) and _merges(x, order[time_pos + 1:])


def _orders(x: torch.Tensor, time_dim: int):
    """The dim orders to try, best first: x's own; then the neuron dims in memory order (largest stride
    first; size-1 dims last, their stride has no say) with time before the first, second, ... of them (Q
    the innermost dims that merge, P the rest: the kernels take any strides for P, T and Q)."""
    yield tuple(range(x.dim()))
    neurons = []
    for d in (d for d in range(x.dim()) if d != time_dim):  # an insertion sort: under torch.compile the
        at = len(neurons)                                      # strides may be symbols, which `sorted`
        while at and _outer(x, d, neurons[at - 1]):            # cannot take as keys but `>` compares
            at -= 1
        neurons.insert(at, d)
    for k in range(len(neurons) + 1):
        yield tuple(neurons[:k]) + (time_dim,) + tuple(neurons[k:])


def _outer(x: torch.Tensor, a: int, b: int) -> bool:
    """Whether dim a comes before dim b in memory order: a larger stride, and size-1 dims last."""
    return x.shape[a] != 1 and (x.shape[b] == 1 or x.stride(a) > x.stride(b))


def as_ptq(x: torch.Tensor, time_dim: int):
    """``(x3, layout)``: x as a ``[P, T, Q]`` tensor, a view unless no dim order makes one (the neurons'
    strides interleave with time's, or their dims overlap in memory): then one copy."""
    order = next((o for o in _orders(x, time_dim) if _views(x, o, time_dim)), None)
    copy = order is None
    order = tuple(range(x.dim())) if copy else order
    xp = _permute(x, order)
    time_pos = order.index(time_dim)
    shape = (math.prod(xp.shape[:time_pos]), x.shape[time_dim], math.prod(xp.shape[time_pos + 1:]))
    x3 = xp.reshape(shape) if copy else xp.view(shape)
    swapped = x3.shape[2] == 1 and x3.shape[0] > 1  # neurons all before time: make them the inner dim
    return (x3.permute(2, 1, 0) if swapped else x3), Layout(x.shape, order, time_pos, swapped)
