"""Argument checks shared by the ops and modules: each error names the argument and what it got."""
import math
import numbers


def check_number(name, value, *, low=None, low_inclusive=False, optional=False):
    """``value`` as a float: a finite real (numpy scalars too, never a bool), above ``low`` when given
    (``>=`` with low_inclusive); None passes when optional."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float{' or None' if optional else ''}, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise ValueError(f"{name} must be {'>=' if low_inclusive else '>'} {low}, got {value}")
    return float(value)


def check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_step_mode(step_mode):
    if step_mode not in ("m", "s"):
        raise ValueError(f'step_mode must be "m" (multi-step) or "s" (single-step), got {step_mode!r}')


def check_weight_bounds(w_min, w_max):
    """Soft bounds ``(w_min, w_max)`` as floats with w_min < w_max."""
    w_min, w_max = check_number("w_min", w_min), check_number("w_max", w_max)
    if not w_min < w_max:
        raise ValueError(f"w_min must be < w_max, got w_min={w_min}, w_max={w_max}")
    return w_min, w_max
