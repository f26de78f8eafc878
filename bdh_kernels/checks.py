"""Argument checks shared by the ops and modules: each error names the argument and what it got."""
import math
import numbers

import torch
import torch.autograd.forward_ad as forward_ad


def check_number(name, value, *, low=None, low_inclusive=False, optional=False):
    """``value`` as a float: a finite real (numpy scalars too, never a bool), above ``low`` when given
    (``>=`` with low_inclusive); None passes when optional."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float{' or None' if optional else ''}, got {_type_name(value)}")
    value = float(value)
    # a comparison, not math.isfinite: under torch.compile(dynamic=True) value may be a SymFloat, which
    # math.isfinite cannot trace (NaN compares False too)
    if not abs(value) < math.inf:
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise ValueError(f"{name} must be {'>=' if low_inclusive else '>'} {low}, got {value}")
    return value


def _type_name(value):
    """``float``, ``numpy.bool``: builtins by name, other types with their module (a numpy bool is no bool)."""
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {_type_name(value)}")


def check_int(name, value):
    """``value`` as an int (numpy integers too, never a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_type_name(value)}")
    return int(value)


def check_step_mode(step_mode):
    if step_mode not in ("m", "s"):
        raise ValueError(f'step_mode must be "m" (multi-step) or "s" (single-step), got {step_mode!r}')


def check_weight_bounds(w_min, w_max):
    """Soft bounds ``(w_min, w_max)`` as floats with w_min < w_max."""
    w_min, w_max = check_number("w_min", w_min), check_number("w_max", w_max)
    if not w_min < w_max:
        raise ValueError(f"w_min must be < w_max, got w_min={w_min}, w_max={w_max}")
    return w_min, w_max


def reject_forward_ad(op, backend, *tensors, reference_has_it=False):
    """Refuse forward-mode AD (``torch.func.jvp``/``jacfwd``, dual tensors) through a compiled backend's
    custom ops: they have no forward formula, and PyTorch would give their outputs no tangent (silently
    zero) instead of an error."""
    if torch.compiler.is_compiling():
        return
    if any(t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        raise NotImplementedError(
            f"{op}: forward-mode AD (torch.func.jvp / jacfwd, forward_ad dual tensors) is not supported by the "
            f"{backend} backend; use reverse mode (.backward() or torch.autograd.grad)"
            + (" or backend='reference'" if reference_has_it else ""))
