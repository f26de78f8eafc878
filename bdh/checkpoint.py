"""Training checkpoints: atomic writes, a clear error for a bad file, and loading a model for inference.

A checkpoint is a dict with CHECKPOINT_KEYS (bdh.train writes them) that ``torch.load(path,
weights_only=True)`` reads: tensors, and plain Python data for the rest (the config as a dict).
"""
import glob
import math
import os

import torch

from bdh.config import Config, ConfigError
from bdh.model import Hatching

CHECKPOINT_KEYS = ("step", "model_state", "optimizer_state", "scheduler_state", "config", "eval_metrics",
                   "rng_state", "sampler_state")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (missing, truncated, corrupt, or from another model)."""


def save_checkpoint(path: str, state: dict) -> None:
    """Write atomically: a temp file in the same directory, fsync, rename over ``path``, fsync the dir."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(run_dir: str) -> list:
    """Resumable checkpoints of a run, newest first: hatching_step_N.pt, hatching_best.pt (a run stopped
    before its first save_freq step may have only that) and hatching_final.pt."""
    paths = [p for name in ("hatching_step_*.pt", "hatching_best.pt", "hatching_final.pt")
             for p in glob.glob(os.path.join(run_dir, name))]

    def key(p):
        stem = os.path.basename(p)[len("hatching_"):-3]
        return os.path.getmtime(p), int(stem[5:]) if stem.startswith("step_") and stem[5:].isdigit() else math.inf

    return sorted(paths, key=key, reverse=True)


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint (weights_only) or raise CheckpointError saying what is wrong with it."""
    if os.path.isdir(path):
        found = list_checkpoints(path)
        raise CheckpointError(f"checkpoint {path!r} is a directory, not a checkpoint file"
                              + (f" (its newest checkpoint: {found[0]})" if found else " (it holds no hatching_*.pt)"))
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, ...: torch raises several types
        others = [p for p in list_checkpoints(os.path.dirname(path) or ".") if os.path.abspath(p) != os.path.abspath(path)]
        hint = f"; other checkpoints (untouched): {', '.join(map(os.path.basename, others))}" if others else ""
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt and cannot be loaded "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}){hint}") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        raise CheckpointError(f"checkpoint {path!r} is not a Hatching training checkpoint (missing {missing})")
    for key, kind in (("step", int), ("model_state", dict), ("config", dict)):
        if isinstance(ckpt[key], bool) or not isinstance(ckpt[key], kind):
            raise CheckpointError(f"checkpoint {path!r} is not a Hatching training checkpoint ({key} is a "
                                  f"{type(ckpt[key]).__name__}, not a {kind.__name__})")
    return ckpt


def resolve_device(name: str, what: str = "training.device") -> torch.device:
    """"auto" (a GPU when there is one), "cpu", "cuda" or "cuda:N"; a ValueError naming ``what`` otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{what}: {name!r} is not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{what}: {name!r} is not supported (auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what}: {name!r} asked for but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{what}: {name!r} asked for but there are {torch.cuda.device_count()} CUDA devices")
    return device


def load_model(path: str, device="cpu"):
    """(model in eval mode on ``device``, its Config, the checkpoint dict) from a training checkpoint."""
    device = resolve_device(device, "device") if isinstance(device, str) else device
    ckpt = load_checkpoint(path)
    cfg = Config.from_dict(ckpt["config"])
    model = Hatching(cfg)
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path!r}: its weights do not fit its own config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), cfg, ckpt
