"""Surrogate gradients shared by every backend.

The forward of a spike is the Heaviside step ``s = 1[z >= 0]`` with ``z = h - v_threshold`` (SpikingJelly's
tie rule: a membrane exactly at threshold fires). Its derivative is zero almost everywhere, so training
uses a surrogate derivative ``g(z)`` in the backward pass. Each surrogate below names its formula and its
customary ``alpha`` (the value the library it comes from uses by default):

=====================  ============================================================  =======  ===========
name                   g(z) = d spike / dz in the backward                            alpha    as in
=====================  ============================================================  =======  ===========
sigmoid                alpha * sg * (1 - sg),  sg = sigmoid(alpha * z)                4.0      SpikingJelly
atan                   alpha / 2 / (1 + (pi / 2 * alpha * z)^2)                       2.0      SpikingJelly
fast_sigmoid           1 / (1 + alpha * |z|)^2                                        25.0     snnTorch
piecewise_quadratic    max(0, alpha - alpha^2 * |z|)                                  1.0      SpikingJelly
erf                    alpha / sqrt(pi) * exp(-(alpha * z)^2)                         2.0      SpikingJelly
=====================  ============================================================  =======  ===========

The integer codes are the ones the C++, CUDA and Triton kernels switch on.
"""
import math
from typing import NamedTuple, Optional

import torch

from .checks import check_number


class Surrogate(NamedTuple):
    code: int
    default_alpha: float


SURROGATES = {
    "sigmoid": Surrogate(0, 4.0),
    "atan": Surrogate(1, 2.0),
    "fast_sigmoid": Surrogate(2, 25.0),
    "piecewise_quadratic": Surrogate(3, 1.0),
    "erf": Surrogate(4, 2.0),
}


def resolve(name: str, alpha: Optional[float]):
    """Return ``(code, alpha)`` for a surrogate name, with a clear error for an unknown one."""
    if not isinstance(name, str) or name not in SURROGATES:
        raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}, got {name!r}")
    spec = SURROGATES[name]
    if alpha is None:
        return spec.code, spec.default_alpha
    return spec.code, check_number("alpha", alpha, low=0.0, optional=True)


def surrogate_grad(z: torch.Tensor, code: int, alpha: float) -> torch.Tensor:
    """The surrogate derivative ``g(z)`` of the table above, in plain PyTorch."""
    if code == 0:
        sg = torch.sigmoid(alpha * z)
        return alpha * sg * (1 - sg)
    if code == 1:
        return alpha / 2 / (1 + (math.pi / 2 * alpha * z) ** 2)
    if code == 2:
        return 1 / (1 + alpha * z.abs()) ** 2
    if code == 3:
        return torch.clamp(alpha - alpha * alpha * z.abs(), min=0)
    if code == 4:
        return alpha / math.sqrt(math.pi) * torch.exp(-((alpha * z) ** 2))
    raise ValueError(f"unknown surrogate code {code}")


class SpikeFn(torch.autograd.Function):
    """Heaviside forward, surrogate backward: the reference spike function."""

    @staticmethod
    def forward(ctx, z, code, alpha):
        ctx.save_for_backward(z)
        ctx.code, ctx.alpha = code, alpha
        return (z >= 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return grad * surrogate_grad(z, ctx.code, ctx.alpha), None, None


def spike(z: torch.Tensor, code: int, alpha: float) -> torch.Tensor:
    return SpikeFn.apply(z, code, alpha)
