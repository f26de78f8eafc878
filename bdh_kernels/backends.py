"""Backend discovery and selection, shared by every op.

``reference`` (pure PyTorch) is always there. ``cpp`` is the compiled C++ extension (CPU tensors),
``cuda`` the same extension built with CUDA (CUDA tensors), ``triton`` the Triton kernels (CUDA tensors;
CPU tensors too under ``TRITON_INTERPRET=1``, for tests). ``backend=None`` picks the first available for
the tensor's device in :data:`PREFERENCE`; ``BDH_KERNELS_BACKEND`` replaces that automatic choice for
every call that does not name a backend. Nothing falls back silently: a backend that was asked for and
cannot run raises an error that says why and how to fix it.
"""
import importlib.metadata
import importlib.util
import logging
import os
import sys
from typing import List, Optional

import torch

BACKENDS = ("triton", "cuda", "cpp", "reference")
PREFERENCE = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpp", "reference")}
ENV_VAR = "BDH_KERNELS_BACKEND"
TRITON_MIN_VERSION = (3, 2)  # the kernels hold a segment in tuples of tensors (tl.tuple, new in 3.2)
# caps the registers per thread of the triton LIF kernels (bdh_kernels.triton.lif); named here, where
# importing it needs no Triton (benchmarks/kernel_stats.py reads it before Triton is imported)
TRITON_MAXNREG_ENV = "BDH_KERNELS_TRITON_MAXNREG"

log = logging.getLogger("bdh_kernels")


def _load_extension() -> Optional[str]:
    try:
        from . import _C  # noqa: F401  (registers torch.ops.bdh.*)
    except (ImportError, OSError) as e:  # not built, or built against another torch (undefined symbols)
        return (
            f"the compiled extension bdh_kernels._C is not importable ({e}); build it with "
            "`pip install --no-build-isolation -e .` against the torch you run"
        )
    return None


def _triton_unavailable() -> Optional[str]:
    """None when a recent enough Triton is installed, else why not (read from its package metadata, so
    that triton itself is imported only when a triton kernel runs)."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (`pip install triton`)"
    try:
        version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:  # a build under another distribution name
        return None
    numbers = tuple(int(part) for part in version.split("+")[0].split(".")[:2] if part.isdigit())
    if len(numbers) == 2 and numbers < TRITON_MIN_VERSION:
        return (f"Triton {version} is too old: the triton kernels need Triton >= "
                f"{'.'.join(map(str, TRITON_MIN_VERSION))} (`pip install -U triton`)")
    return None


# Probed once at import: plain values, so torch.compile traces the checks below without caches.
_EXTENSION_ERROR = _load_extension()
_EXTENSION_HAS_CUDA = _EXTENSION_ERROR is None and torch.ops.bdh.built_with_cuda()
_TRITON_ERROR = _triton_unavailable()


def extension_error() -> Optional[str]:
    """None when the compiled extension loads, else the reason it does not."""
    return _EXTENSION_ERROR


def extension_has_cuda() -> bool:
    return _EXTENSION_HAS_CUDA


def triton_error() -> Optional[str]:
    return _TRITON_ERROR


def triton_interpreted() -> bool:
    """Whether Triton kernels run under the interpreter (on CPU tensors).

    Triton reads TRITON_INTERPRET when the kernels are defined, so once they are, ask them.
    """
    kernels = sys.modules.get("bdh_kernels.triton.lif")
    if kernels is not None:
        return kernels.interpreted()
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_name(backend: Optional[str], source: str = "backend") -> None:
    """A backend argument must name a backend (or be None: automatic)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS} or None, got {backend!r}")


def unavailable_reason(backend: str, device: torch.device) -> Optional[str]:
    """Why ``backend`` cannot run on ``device`` now, or None when it can."""
    if backend == "reference":
        return None
    check_name(backend)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available here (torch.cuda.is_available() is False)"
    if backend == "cpp":
        if device.type != "cpu":
            return f"the cpp backend runs on CPU tensors, got a {device.type} tensor (use cuda or triton)"
        return extension_error()
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got a {device.type} tensor (use cpp)"
        if extension_error():
            return extension_error()
        if not extension_has_cuda():
            return (
                "bdh_kernels._C was built without CUDA; rebuild with a CUDA build of torch and nvcc "
                "(BDH_KERNELS_BUILD_CUDA=1 pip install --no-build-isolation -e .)"
            )
        return None
    if backend == "triton":
        if triton_error():
            return triton_error()
        if device.type == "cuda" or (device.type == "cpu" and triton_interpreted()):
            return None
        return (
            f"the triton backend runs on CUDA tensors (or on CPU tensors with TRITON_INTERPRET=1 set "
            f"before triton is imported), got a {device.type} tensor"
        )


def available_backends(device="cpu") -> List[str]:
    """The backends that can run on ``device`` here, in the order ``backend=None`` tries them."""
    device = torch.device(device)
    order = PREFERENCE.get(device.type, ("reference",))
    if device.type == "cpu" and triton_interpreted():
        order = order + ("triton",)
    return [b for b in order if unavailable_reason(b, device) is None]


_announced = set()


def select(op: str, device: torch.device, requested: Optional[str]) -> str:
    """Resolve the backend for one call of ``op`` on ``device``; raise if the requested one cannot run."""
    source = "backend"
    if requested is None and os.environ.get(ENV_VAR):
        requested, source = os.environ[ENV_VAR], ENV_VAR
    if requested is None:
        choice = next(b for b in PREFERENCE.get(device.type, ("reference",))
                      if unavailable_reason(b, device) is None)
    else:
        check_name(requested, source)
        reason = unavailable_reason(requested, device)
        if reason:
            raise ValueError(f"{source}={requested!r} is unavailable for {op}: {reason}")
        choice = requested
    # the once-per-process log line is skipped while torch.compile traces (logging would break the graph)
    if not torch.compiler.is_compiling() and (op, device.type, choice) not in _announced:
        _announced.add((op, device.type, choice))
        log.info("bdh_kernels.%s: %s backend on %s tensors%s", op, choice, device.type,
                 " (Triton compiles each dtype and option set on first use, up to a minute; cached on disk after)"
                 if choice == "triton" and device.type == "cuda" else "")
    return choice


class CustomOps:
    """One op family's (forward, backward) custom ops on the compiled backends, registered on first use.

    ``name`` gives the op names: ``torch.ops.bdh.<name>_forward`` / ``_backward`` (cpp and cuda) and
    ``bdh_kernels.triton.<triton_module>.<name>_forward`` / ``_backward`` (triton). ``register`` gives a
    pair its fake kernels and autograd formula, once per pair.
    """

    def __init__(self, name: str, triton_module: str, register):
        self.name, self.triton_module, self.register = name, triton_module, register
        self._registered = set()

    def __call__(self, backend: str):
        if backend in ("cpp", "cuda"):
            source = torch.ops.bdh
            pair = tuple(getattr(source, f"{self.name}_{d}").default for d in ("forward", "backward"))
        else:
            source = importlib.import_module(f"bdh_kernels.triton.{self.triton_module}")
            pair = tuple(getattr(source, f"{self.name}_{d}") for d in ("forward", "backward"))
        if pair[0] not in self._registered:
            self.register(*pair)
            self._registered.add(pair[0])
        return pair

    def register_runnable(self):
        """Register every runnable backend's ops now (at import), not on first call, so that a first call
        under torch.compile finds them ready: registration cannot happen inside a traced graph."""
        if extension_error() is None:
            self("cpp")
        if triton_error() is None and (torch.cuda.is_available() or triton_interpreted()):
            self("triton")
