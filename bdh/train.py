"""Train the Hatching model through the curriculum: ``python -m bdh.train``.

    python -m bdh.train                                   # tiny config, bundled starter data, CPU: ~10 min
    python -m bdh.train --config small --name run1        # a tier by name, or --config path/to/custom.yaml
    python -m bdh.train --set training.learning_rate=3e-4 --set model.dropout=0.2
    python -m bdh.train --resume auto                     # the newest checkpoint of <log-dir>/<name>
    python -m bdh.train --resume runs/run1                # the newest checkpoint of that run (or give one)
    python -m bdh.train --config medium --dry-run         # predicted peak memory and micro-batch, no training
    torchrun --nproc_per_node=4 -m bdh.train --config medium --distributed

From Python: ``train(load_config("tiny", overrides), run_dir, resume_from=...)`` (see ``train``).

One loop (``_train``): per step, the curriculum stage of that step sets the sampler's task mix; the
effective batch (``training.batch_size``, over all ranks) is split into micro-batches that fit memory and
their gradients accumulated; a step whose loss or gradients are not finite is skipped; AdamW with linear
warmup then cosine decay, gradients clipped (the norm is logged before clipping).

Everything goes to ``<log_dir>/<name>/``:

* ``metrics.jsonl``: one JSON object per line (written and flushed line by line) every
  ``monitor.log_freq`` steps, at every eval and at every skipped step. Keys: step, stage (1-based),
  stage_name, train_loss (cross-entropy over the step's target bytes), val_loss, val_loss_<task> and
  val_perplexity (exp(val_loss), per byte; eval steps only), task_loss_<task> (tasks in the step's batch), sparsity_loss (the weighted term added
  to the loss), grad_norm (before clipping), grad_max (largest |gradient|), nan_count, inf_count
  (skipped steps so far), firing_rate and firing_rate_layer<i>, activation_mean, activation_std (of the
  LIF input currents), learning_rate, weight_norm, update_ratio (||delta theta|| / ||theta|| of the step
  taken; 0 for a skipped step), tokens_per_s (input positions per second of training time, all ranks),
  peak_memory_mb (GPU: max allocated; CPU: the process's peak RSS), time (unix seconds). Non-finite
  numbers are written as null.
* TensorBoard event files (when tensorboard is installed); wandb with ``--wandb`` (when installed).
* ``skipped_steps.jsonl``: each skipped step with its reason, loss, grad norm and batch record ids.
* ``alerts.jsonl``: the alerts ``bdh.alerts.AlertMonitor`` raises on the metrics rows (printed too).
* checkpoints ``hatching_step_N.pt`` (every save_freq), ``hatching_best.pt`` (the best eval, below),
  ``hatching_final.pt``: step, model_state, optimizer_state, scheduler_state, config (a plain dict),
  eval_metrics, rng_state (python, numpy, torch, cuda), sampler_state, trainer_state. Written
  atomically; ``torch.load(path, weights_only=True)`` loads them.

Every ``monitor.eval_freq`` steps and at each stage end (``evaluate_fn``): the val losses on fixed val
batches, and ``bdh.evaluate.quick_eval``'s generation metrics (greedy answers to the first
``monitor.eval_samples`` val prompts of each task, scored by bdh.metrics: function_format_accuracy,
argument_accuracy, json_validity, bash_format_accuracy, command_validity, multi_step_accuracy, coherence, overall).
They are logged, stored as the checkpoints' ``eval_metrics``, and pick ``hatching_best.pt``
(``monitor.best_metric``: the lowest val_loss; or the highest overall score, ties broken by val_loss).
"""
import argparse
import contextlib
import glob
import json
import logging
import math
import os
import random
import resource
import shlex
import signal
import sys
import threading
import time
import warnings
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from bdh.alerts import AlertMonitor, append_alerts
from bdh.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, resolve_device, save_checkpoint
from bdh.config import Config, ConfigError, load_config, parse_override, set_value, validate
from bdh.data import IGNORE_INDEX, TASKS, CurriculumSampler, collate, load_splits
from bdh.data.records import write_atomic
from bdh.evaluate import checkpoint_score, finite_or_none, perplexity, quick_eval, token_losses, val_losses
from bdh.model import Hatching
from bdh_kernels import backends as bdh_backends
from bdh_kernels.cpu import flush_denormal

log = logging.getLogger("bdh.train")

class TrainingStopped(RuntimeError):
    """Training stopped on purpose: too many non-finite steps in a row (exit code 3), or an interrupt
    (SIGINT/SIGTERM, exit code 130) after its checkpoint was saved."""

    def __init__(self, message: str, exit_code: int = 3):
        super().__init__(message)
        self.exit_code = exit_code


class StopRequest:
    """While training, the first SIGINT (Ctrl-C) or SIGTERM asks the loop to stop after the current step
    and save a checkpoint; a second one interrupts at once (KeyboardInterrupt, and more are ignored until
    training returns). Outside the main thread (where handlers cannot be installed) signals keep their
    default behaviour."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = True):
        self.signum, self.previous, self.announce = None, {}, announce

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.signum is not None:
            for s in self.SIGNALS:  # more of them would cut short the clean-up (a checkpoint's temp file)
                signal.signal(s, signal.SIG_IGN)
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            tqdm.write(f"{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
                       "(send it again to stop at once, without one)")

    def requested(self, distributed: bool, device: torch.device) -> bool:
        """Whether to stop now; with several ranks, whether any rank was asked (all stop at the same step)."""
        if not distributed:
            return self.signum is not None
        flag = torch.tensor([float(self.signum is not None)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


# ------------------------------------------------------------------------------------------- setup
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """training.dtype: "auto" (bf16 on a GPU that has it, else fp32), "float32" or "bfloat16"."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"training.dtype: {name!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def build_model(cfg: Config, device: torch.device) -> Hatching:
    return Hatching(cfg).to(device)


def lr_lambda(cfg: Config):
    """Multiplier of learning_rate for the optimizer step after ``it`` steps: linear warmup, cosine to min_lr."""
    t = cfg.training
    lr, min_lr = t.learning_rate, t.learning_rate / 10 if t.min_lr is None else t.min_lr

    def f(it):
        if it < t.warmup_iters:
            return (it + 1) / (t.warmup_iters + 1)
        if it >= t.max_iters:
            return min_lr / lr
        ratio = (it - t.warmup_iters) / max(1, t.max_iters - t.warmup_iters)
        return (min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)) / lr

    return f


# ------------------------------------------------------------------------------------------ memory
def count_params(cfg: Config) -> int:
    m = cfg.model
    n = m.mlp_internal_dim_multiplier * m.n_embd // m.n_head
    sets = 1 if m.shared_weights else m.n_layer
    return 2 * m.vocab_size * m.n_embd + sets * 3 * m.n_head * m.n_embd * n


def predict_peak_bytes(cfg: Config, micro: int, dtype: torch.dtype, world_size: int = 1) -> int:
    """Predicted peak memory of a training step with micro-batches of ``micro`` records.

    Static: fp32 params, grads and AdamW's two moments (16 B/param; +4 with DDP's gradient buckets).
    Activations per layer, in the compute dtype (e bytes) with M = micro * nh * T * N elements: the
    drives x_lat and y_lat (kept by the LIF op, plus its fp32 membrane checkpoints, M/8 bytes each),
    x_s and y_s (kept by the gating product), the rotated queries and keys (kept by the score matmul),
    the gated product (kept by the decoder matmul; with dropout also its 1-byte mask), the T x T
    scores, the D-wide attention output, and about 2 M-sized tensors more that autograd keeps alive
    (fitted: on CPU fp32 the prediction is 1.02-1.07x the peak of live tensor bytes measured over a
    step, for tiny-like models with and without checkpointing and dropout). With activation
    checkpointing only each layer's input is kept, plus one layer's activations during its
    recomputation. Transient: the backward's temporaries of about 4 M-sized tensors in the compute
    dtype, and the logits (fp32, 3 copies). On an H200 in bf16 the prediction was 0.90 / 1.02 / 0.99 /
    1.01x the measured max_memory_allocated of the tiny / small / medium / large tiers' step.
    """
    m, t = cfg.model, cfg.training
    e = 2 if dtype == torch.bfloat16 else 4
    n = m.mlp_internal_dim_multiplier * m.n_embd // m.n_head
    big = micro * m.n_head * t.max_seq_len * n
    scores = micro * m.n_head * t.max_seq_len ** 2
    narrow = micro * m.n_head * t.max_seq_len * m.n_embd
    per_layer = big * (9 * e + 2 * 4 / 32) + (big if m.dropout > 0 else 0) + scores * e + narrow * (e + 8)
    layer_inputs = micro * t.max_seq_len * m.n_embd * 4 * 3
    if t.activation_checkpointing:
        activations = m.n_layer * layer_inputs + per_layer
    else:
        activations = m.n_layer * (per_layer + layer_inputs)
    transient = 4 * e * big + 3 * 4 * micro * t.max_seq_len * m.vocab_size
    static = count_params(cfg) * (16 + (4 if world_size > 1 else 0))
    return int(static + activations + transient)


def memory_budget(cfg: Config, device: torch.device) -> int:
    if cfg.training.memory_budget_gb > 0:
        return int(cfg.training.memory_budget_gb * 2**30)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.9)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.8)


def choose_micro_batch(cfg: Config, per_rank: int, dtype, device, world_size: int = 1) -> tuple:
    """(micro_batch, predicted_peak_bytes, budget_bytes): the largest divisor of the per-rank batch that fits."""
    budget = memory_budget(cfg, device)
    if cfg.training.micro_batch_size:
        micro = cfg.training.micro_batch_size
        if per_rank % micro:
            raise ConfigError(f"training.micro_batch_size: {micro} does not divide the per-rank batch {per_rank}")
        return micro, predict_peak_bytes(cfg, micro, dtype, world_size), budget
    for micro in sorted((d for d in range(1, per_rank + 1) if per_rank % d == 0), reverse=True):
        peak = predict_peak_bytes(cfg, micro, dtype, world_size)
        if peak <= budget:
            return micro, peak, budget
    return 1, predict_peak_bytes(cfg, 1, dtype, world_size), budget


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------- batches
def val_batches(splits: dict, cfg: Config, micro: int) -> list:
    """Fixed val batches: the first eval_batches * batch_size val records of each task, in micro-batches."""
    out = []
    per_task = cfg.monitor.eval_batches * cfg.training.batch_size
    for task in TASKS:
        if task in splits and splits[task].val:
            records = splits[task].val[:per_task]
            out += [collate(records[i:i + micro], cfg.training.max_seq_len) for i in range(0, len(records), micro)]
    return out


def evaluate_fn(model, batches, val_records, cfg, autocast) -> dict:
    """The periodic eval: val losses on the fixed batches, then the generation metrics (bdh.evaluate)."""
    metrics = val_losses(model, batches, autocast)
    if "val_loss" in metrics:
        metrics["val_perplexity"] = perplexity(metrics["val_loss"])
    metrics.update(quick_eval(model, val_records, cfg))
    return metrics


def use_config_optimizer_settings(optimizer, scheduler, t_cfg) -> None:
    """After loading a checkpoint's optimizer and schedule: the config's learning rate, betas and weight
    decay replace the saved ones (a resumed run may change them; its moments and step count are kept),
    and the current learning rate is the config's schedule at the saved step."""
    for group, weight_decay in zip(optimizer.param_groups, (t_cfg.weight_decay, 0.0)):
        group.update(betas=(t_cfg.beta1, t_cfg.beta2), weight_decay=weight_decay, initial_lr=t_cfg.learning_rate)
    scheduler.base_lrs = [t_cfg.learning_rate] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = t_cfg.learning_rate * factor(scheduler.last_epoch)


def load_data(cfg: Config, per_rank: int, stages: list, rank: int, world: int):
    """The prepared splits of ``data.dir`` and the curriculum sampler over their train records (with the
    first stage's mix); a data directory that is missing, empty or lacks train records of a task that any
    stage draws is a ConfigError naming it, before training starts."""
    where = f"data.dir={cfg.data.dir!r}" if cfg.data.dir else "the bundled starter set"
    try:
        splits = load_splits(cfg.data.dir, **({"max_bytes": cfg.data.max_bytes} if cfg.data.max_bytes else {}))
        train_records = {t: s.train for t, s in splits.items()}
        check_stage_tasks(stages, train_records)
        sampler = CurriculumSampler(train_records, per_rank, stages[0].weights,
                                    seed=cfg.training.seed, rank=rank, world_size=world)
    except (OSError, ValueError) as e:  # ConfigError is a ValueError too
        raise ConfigError(f"{where}: {e}") from None
    return splits, sampler


def check_stage_tasks(stages: list, train_records: dict) -> None:
    """Each stage's tasks of positive weight must have train records: a ConfigError naming the first stage
    that lacks some (the sampler would only find out at that stage's first step, after the ones before)."""
    have = ", ".join(sorted(t for t, records in train_records.items() if records))
    for i, stage in enumerate(stages):
        missing = [f"{t} (weight {w})" for t, w in stage.weights.items() if w > 0 and not train_records.get(t)]
        if missing:
            raise ConfigError(f"stage {i + 1}/{len(stages)} {stage.name} (steps {stage.first}-{stage.last}) "
                              f"draws tasks without train records: {', '.join(missing)} (tasks with records: "
                              f"{have}); add their data, or give them weight 0 in curriculum.stages")


LOG_FILES = ("metrics.jsonl", "skipped_steps.jsonl", "alerts.jsonl")


def keep_previous_logs(run_dir: str) -> None:
    """Before a fresh run in a directory that holds another run's logs: move them, its TensorBoard events
    and its checkpoints into ``previous-<UTC time>/`` beside, so that starting over never deletes a run's
    history and ``--resume auto`` never continues the other run."""
    old = [name for name in LOG_FILES if os.path.exists(os.path.join(run_dir, name))]
    if not old:
        return
    old += [os.path.basename(p) for pattern in ("events.out.tfevents.*", "hatching_*.pt")
            for p in glob.glob(os.path.join(run_dir, pattern))]
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    keep = os.path.join(run_dir, f"previous-{stamp}")
    os.makedirs(keep, exist_ok=True)
    for name in old:
        os.replace(os.path.join(run_dir, name), os.path.join(keep, name))
    log.warning("%s held another run's logs and checkpoints; moved them to %s", run_dir, keep)


def drop_rows_after(path: str, step: int) -> None:
    """Rewrite the JSON-lines file at ``path`` (atomically) without its rows of steps after ``step``, which
    a run resumed from that step logs again, and without a half-written last line (a killed process's).
    Other lines are kept."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    lines = text.splitlines()
    rows = [_json_or(line, _NOT_JSON) for line in lines]
    if text and not text.endswith("\n") and rows[-1] is _NOT_JSON:
        lines, rows = lines[:-1], rows[:-1]
    kept = [line for line, row in zip(lines, rows)
            if not (isinstance(row, dict) and isinstance(row.get("step"), (int, float)) and row["step"] > step)]
    if kept != text.splitlines():
        write_atomic(path, "".join(line + "\n" for line in kept))


_NOT_JSON = object()


def _json_or(line: str, default):
    try:
        return json.loads(line)
    except ValueError:
        return default


class RunLog:
    """metrics.jsonl (+ TensorBoard, wandb, alerts) on rank 0. A fresh run moves another run's logs aside;
    a run resumed at ``resumed_step`` drops the rows logged after it (they are logged again)."""

    def __init__(self, run_dir: str, cfg: Config, resumed_step: Optional[int], use_wandb: bool, name: str):
        self.run_dir = run_dir
        if resumed_step is None:
            keep_previous_logs(run_dir)
        else:
            for log_file in LOG_FILES:
                drop_rows_after(os.path.join(run_dir, log_file), resumed_step)
        self.metrics = open(os.path.join(run_dir, "metrics.jsonl"), "a")
        self.skipped = open(os.path.join(run_dir, "skipped_steps.jsonl"), "a")
        open(os.path.join(run_dir, "alerts.jsonl"), "a").close()
        self.tb = None
        if cfg.monitor.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(run_dir, purge_step=None if resumed_step is None else resumed_step + 1)
            except ImportError:
                pass
        self.wandb = None
        if use_wandb:
            try:
                import wandb
                self.wandb = wandb
                wandb.init(project="bdh-hatching", name=name, config=cfg.to_dict(), dir=run_dir, resume="allow")
            except ImportError:
                log.warning("--wandb given but wandb is not installed (pip install wandb); logging without it")
        self.alert_monitor = AlertMonitor()  # its state travels in checkpoints

    def write(self, row: dict) -> list:
        row = finite_or_none(row)
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in ("step", "time")}
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(k, v, row["step"])
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(numbers, step=row["step"])
        alerts = list(self.alert_monitor.update(row))
        append_alerts(os.path.join(self.run_dir, "alerts.jsonl"), alerts)
        return alerts

    def write_skipped(self, entry: dict) -> None:
        self.skipped.write(json.dumps(finite_or_none(entry)) + "\n")
        self.skipped.flush()

    def close(self):
        self.metrics.close()
        self.skipped.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


# -------------------------------------------------------------------------------------------- steps
def warn_about_settings(cfg: Config, micro: int, peak: int, budget: int) -> None:
    """Warn about settings that do not do what they seem to: STDP rule constants the model does not use,
    and a predicted peak beyond the memory budget."""
    unused = [f"stdp.{k}" for k in ("tau_minus", "A_plus", "A_minus")
              if getattr(cfg.stdp, k) != getattr(type(cfg.stdp)(), k)]
    if unused:
        log.warning("%s set, but the model uses only stdp.tau_plus (its traces are the attention keys; no STDP "
                    "weight rule runs in training): these values are kept in the checkpoint, nothing more",
                    ", ".join(unused))
    if peak > budget:
        log.warning("the predicted peak memory %.2f GiB exceeds the budget %.2f GiB even at micro-batch %d: "
                    "training may run out of memory (try training.activation_checkpointing=true)",
                    peak / 2**30, budget / 2**30, micro)


def make_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device):
    """AdamW (weight decay on matrices only) and its schedule, warmup then cosine (lr_lambda)."""
    t = cfg.training
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=t.learning_rate, betas=(t.beta1, t.beta2), fused=device.type == "cuda")
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))


def restore(ckpt: dict, model, optimizer, scheduler, sampler, t_cfg) -> tuple:
    """Load a checkpoint into the run's model, optimizer, schedule, sampler and RNGs (the config's optimizer
    settings win: use_config_optimizer_settings). Returns (step, eval_metrics, trainer_state)."""
    model.load_state_dict(ckpt["model_state"])
    optimizer.load_state_dict(ckpt["optimizer_state"])
    scheduler.load_state_dict(ckpt["scheduler_state"])
    use_config_optimizer_settings(optimizer, scheduler, t_cfg)
    try:
        sampler.load_state_dict(ckpt["sampler_state"])
    except ValueError as e:  # another data.dir, without a task the checkpoint's run had
        saved_dir = ckpt["config"]["data"]["dir"]
        saved_dir = repr(saved_dir) if saved_dir else "null (the bundled starter set)"
        raise CheckpointError(f"the checkpoint's data position does not fit this run's data ({e}): resume with "
                              f"the checkpoint's data.dir, {saved_dir}, or start a fresh run") from None
    set_rng_state(ckpt["rng_state"])
    return int(ckpt["step"]), dict(ckpt["eval_metrics"]), dict(ckpt.get("trainer_state", {}))


def stage_at(stages: list, step: int) -> int:
    """The index of the curriculum stage (config.ScheduledStage) that holds ``step``; the last past the end."""
    for i, stage in enumerate(stages):
        if stage.first <= step <= stage.last:
            return i
    return len(stages) - 1


class StepStats:
    """What one step sums over its micro-batches, in one float64 buffer that the ranks reduce with one
    all_reduce: [cross-entropy sum, target tokens, per-task cross-entropy sums, per-task target tokens,
    firing rates (2 per layer) and sparsity loss (both means over the global batch), LIF input current
    sum, sum of squares and count]."""

    def __init__(self, n_layer: int, world_size: int, device: torch.device):
        self.world_size = world_size
        k = len(TASKS)
        self.task_ce, self.task_tokens = slice(2, 2 + k), slice(2 + k, 2 + 2 * k)
        self.rates = slice(2 + 2 * k, 2 + 2 * k + 2 * n_layer)
        self.sparsity = self.rates.stop
        self.drive = slice(self.sparsity + 1, self.sparsity + 4)
        self.buf = torch.zeros(self.drive.stop, dtype=torch.float64, device=device)
        self._host = None  # buf as a list, read from the device once per logged row

    def _values(self) -> list:
        if self._host is None:
            self._host = self.buf.tolist()
        return self._host

    def add(self, losses, targets, tasks, out, sparsity, share: float) -> None:
        """One micro-batch: its per-token losses [b, T] and targets, its records' tasks, the model's output,
        share: its fraction of the rank's batch, and its sparsity loss (already scaled by share)."""
        self._host = None
        with torch.no_grad():
            row_ce = losses.sum(1).double()
            row_tokens = (targets != IGNORE_INDEX).sum(1).double()
            task_ids = torch.tensor([TASKS.index(t) for t in tasks], device=self.buf.device)
            self.buf[0] += row_ce.sum()
            self.buf[1] += row_tokens.sum()
            self.buf[self.task_ce].index_add_(0, task_ids, row_ce)
            self.buf[self.task_tokens].index_add_(0, task_ids, row_tokens)
            self.buf[self.rates] += out.rates.detach().double().flatten() * (share / self.world_size)
            self.buf[self.sparsity] += sparsity.detach().double() / self.world_size
            if out.drive is not None:
                self.buf[self.drive] += out.drive.double().sum(0)

    def train_loss(self) -> float:
        return (self.buf[0] / self.buf[1].clamp_min(1)).item()

    def task_losses(self) -> dict:
        """task_loss_<task>: mean cross-entropy per target token of each task in the step's batch."""
        values = self._values()
        ce, tokens = values[self.task_ce], values[self.task_tokens]
        return {f"task_loss_{t}": c / n for t, c, n in zip(TASKS, ce, tokens) if n > 0}

    def sparsity_loss(self) -> float:
        return self._values()[self.sparsity]

    def activity(self) -> dict:
        """firing_rate (mean), firing_rate_layer<i>, and activation_mean/std of the LIF input currents."""
        values = self._values()
        rates = values[self.rates]
        row = {"firing_rate": sum(rates) / len(rates)}
        row.update({f"firing_rate_layer{i}": (rates[2 * i] + rates[2 * i + 1]) / 2 for i in range(len(rates) // 2)})
        total, squares, count = values[self.drive]
        if count > 0:
            mean = total / count
            row.update(activation_mean=mean, activation_std=math.sqrt(max(0.0, squares / count - mean * mean)))
        return row


def parameter_norms(params: list, before: Optional[list]) -> dict:
    """weight_norm ||theta|| and update_ratio ||theta - before|| / ||before|| (0 without ``before``: a
    skipped step, or a step whose row is not logged)."""
    with torch.no_grad():
        weight_norm = torch.linalg.vector_norm(torch.stack([p.detach().norm() for p in params])).item()
        update_ratio = 0.0
        if before is not None:
            delta = torch.stack([(p.detach() - b).norm() for p, b in zip(params, before)]).norm()
            update_ratio = (delta / torch.stack([b.norm() for b in before]).norm()).item()
    return {"weight_norm": weight_norm, "update_ratio": update_ratio}


def all_batch_ids(ids: list, distributed: bool) -> list:
    """The record ids of the whole step's batch: this rank's, or every rank's in rank order."""
    if not distributed:
        return ids
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, ids)
    return [i for g in gathered for i in g]


def progress_line(row: dict) -> str:
    """The line printed per metrics row when there is no progress bar (output not a terminal)."""
    return (f"step {row['step']} stage {row['stage']} loss {row['train_loss']:.4f}"
            + (f" val {row['val_loss']:.4f}" if "val_loss" in row else "")
            + f" rate {row['firing_rate']:.3f} grad {row['grad_norm']:.3f} {row['tokens_per_s']:.0f} tok/s")


# -------------------------------------------------------------------------------------------- train
def train(cfg: Config, run_dir: str, device=None, dtype=None, resume_from=None, distributed: bool = False,
          use_wandb: bool = False, name: Optional[str] = None) -> dict:
    """Run (or continue) training into ``run_dir``; returns the last metrics row. ``python -m bdh.train``
    calls it; from Python::

        from bdh.config import load_config
        from bdh.train import train
        train(load_config("tiny", ["training.max_iters=200"]), "runs/mine")   # a tier or YAML path, overrides
        longer = load_config("tiny", ["training.max_iters=400"])
        train(longer, "runs/mine", resume_from="runs/mine/hatching_final.pt")  # continue it to step 400

    device, dtype: torch.device / torch.dtype or their names; default the config's training.device and
    training.dtype. resume_from: a checkpoint's path or its loaded dict (bdh.checkpoint.load_checkpoint);
    its model and training.seed must be the config's, and the config's other training settings win
    (check_resume).
    distributed: the process group is initialised (torchrun); rank 0 logs and saves. name: the wandb run
    name (default: run_dir's name). Raises ConfigError, CheckpointError, or TrainingStopped (a stop after
    too many non-finite steps, or Ctrl-C/SIGTERM, each with its checkpoint saved).

    On CPU, subnormal floats are flushed to zero on every thread while training
    (``bdh_kernels.cpu.flush_denormal``): the LIF backward scales the membrane gradient by (1 - 1/tau_mem)
    per token, so after ~126 silent tokens (tau_mem 2) it underflows into subnormals, and CPU matmuls on
    subnormal operands run up to 100x slower (measured: the tiny tier's step 0.97 s -> 0.6 s).
    """
    if not isinstance(cfg, Config):
        raise TypeError(f"cfg must be a bdh.config.Config (from bdh.config.load_config), got {type(cfg).__name__}")
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"run_dir must be a path, got {type(run_dir).__name__}")
    validate(cfg)  # a Config changed in Python after loading is checked as a file would be
    master = not distributed or dist.get_rank() == 0
    if isinstance(resume_from, (str, os.PathLike)):
        resume_from = load_checkpoint(resume_from)
    elif resume_from is not None and not isinstance(resume_from, dict):
        raise TypeError(f"resume_from must be a checkpoint path, a loaded checkpoint dict or None, "
                        f"got {type(resume_from).__name__}")
    if resume_from is not None:
        changed = check_resume(resume_from, cfg)
        if changed and master:
            print("resuming with settings that differ from the checkpoint's: " + "; ".join(changed))
    device = resolve_device(device or cfg.training.device) if not isinstance(device, torch.device) else device
    dtype = resolve_dtype(dtype or cfg.training.dtype, device) if not isinstance(dtype, torch.dtype) else dtype
    check_backend(cfg, device)
    if master:
        os.makedirs(run_dir, exist_ok=True)
        for stale in glob.glob(os.path.join(run_dir, ".hatching_*.pt.tmp.*")):
            os.remove(stale)  # left by a process killed while writing a checkpoint
    if distributed:
        dist.barrier()  # the run folder is ready before any rank goes on
    run_dir = os.fspath(run_dir)
    name = name or os.path.basename(os.path.abspath(run_dir))
    flush = device.type == "cpu" and flush_denormal(True)
    try:
        with StopRequest(announce=master) as stop:
            return _train(cfg, run_dir, device, dtype, resume_from, distributed, use_wandb, name, stop)
    finally:
        if flush:
            flush_denormal(False)


def check_resume(ckpt: dict, cfg: Config) -> list:
    """The settings in which ``cfg`` differs from the checkpoint's config (``key: old -> new``). A different
    model is a CheckpointError; a different training.seed, or a checkpoint at or past training.max_iters,
    a ConfigError."""
    saved = Config.from_dict(ckpt["config"])
    changed = config_changes(saved.to_dict(), cfg.to_dict())
    model = [c for c in changed if c.startswith("model.")]
    if model:
        raise CheckpointError("the checkpoint's model differs from the config (checkpoint -> config): "
                              + "; ".join(model))
    if saved.training.seed != cfg.training.seed:  # the data order, whose position the checkpoint holds, is the seed's
        raise ConfigError(f"training.seed: the checkpoint's run has seed {saved.training.seed}, the config "
                          f"{cfg.training.seed}; a resumed run continues the same data order (resume with "
                          f"training.seed={saved.training.seed}, or start a fresh run for another seed)")
    if ckpt["step"] >= cfg.training.max_iters:
        raise ConfigError(f"the checkpoint is at step {ckpt['step']}, training.max_iters is "
                          f"{cfg.training.max_iters}: nothing left to train (a larger --max-iters continues)")
    return changed


def check_backend(cfg: Config, device: torch.device) -> None:
    """lif.backend, when set, must be able to run on ``device`` (a ConfigError saying why not)."""
    why = cfg.lif.backend and bdh_backends.unavailable_reason(cfg.lif.backend, device)
    if why:
        raise ConfigError(f"lif.backend: {cfg.lif.backend!r} cannot run on {device}: {why}")


def _train(cfg, run_dir, device, dtype, resume_from, distributed, use_wandb, name, stop):
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    master = rank == 0
    t_cfg, mon = cfg.training, cfg.monitor
    if t_cfg.batch_size % world:
        raise ConfigError(f"training.batch_size: {t_cfg.batch_size} is not divisible by the {world} ranks")
    per_rank = t_cfg.batch_size // world
    micro, peak, budget = choose_micro_batch(cfg, per_rank, dtype, device, world)
    accum = per_rank // micro
    stages = cfg.stages()
    if master:
        warn_about_settings(cfg, micro, peak, budget)

    # model, optimizer, schedule: seeded identically on every rank (DDP also broadcasts rank 0's weights)
    torch.manual_seed(t_cfg.seed)
    random.seed(t_cfg.seed)
    np.random.seed(t_cfg.seed)
    raw = build_model(cfg, device)
    raw.activation_checkpointing = t_cfg.activation_checkpointing
    optimizer, scheduler = make_optimizer(raw, cfg, device)
    torch.manual_seed(t_cfg.seed + rank)  # dropout differs between ranks

    splits, sampler = load_data(cfg, per_rank, stages, rank, world)
    vals = val_batches(splits, cfg, micro)
    val_records = {t: s.val for t, s in splits.items() if s.val}

    step, eval_metrics, alert_state = 0, {}, None
    counters = {"nan_count": 0, "inf_count": 0, "bad_in_row": 0, "best_score": None}
    if resume_from is not None:
        step, eval_metrics, trainer_state = restore(resume_from, raw, optimizer, scheduler, sampler, t_cfg)
        alert_state = trainer_state.pop("alerts", None)
        counters.update(trainer_state)
        if rank:
            torch.manual_seed(t_cfg.seed + rank + step)  # rank 0's RNG state is the one saved

    model = raw
    if t_cfg.compile:
        model = torch.compile(model)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    runlog = RunLog(run_dir, cfg, None if resume_from is None else step, use_wandb=use_wandb, name=name) if master else None
    if alert_state is not None and master:
        runlog.alert_monitor.load_state_dict(alert_state)

    def say(msg):
        if master:
            tqdm.write(msg)

    say(f"bdh.train: {count_params(cfg) / 1e6:.2f}M params, {t_cfg.max_iters} steps, batch {t_cfg.batch_size} "
        f"= {world} rank(s) x {accum} micro-batch(es) of {micro}, seq {t_cfg.max_seq_len}, {device} {dtype}, "
        f"predicted peak {peak / 2**30:.2f} GiB (budget {budget / 2**30:.1f} GiB); "
        f"lif {'on' if cfg.lif.enabled else 'OFF (ReLU)'}, stdp traces {'on' if cfg.stdp.enabled else 'OFF'}")
    for i, s in enumerate(stages):
        say(f"  stage {i + 1}/{len(stages)} {s.name}: steps {s.first}-{s.last}, mix {s.weights}")
    if step:
        say(f"resumed at step {step}")

    def save(fname, s):
        if master:
            trainer_state = {**counters, "alerts": runlog.alert_monitor.state_dict()}
            save_checkpoint(os.path.join(run_dir, fname), {
                "step": s, "model_state": raw.state_dict(), "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(), "config": cfg.to_dict(), "eval_metrics": eval_metrics,
                "rng_state": rng_state(), "sampler_state": sampler.state_dict(), "trainer_state": trainer_state})

    def stop_training(message: str, exit_code: int):
        """Save the state at this step, close the logs and stop with ``message``."""
        save(f"hatching_step_{step}.pt", step)
        bar.close()
        if master:
            runlog.close()
        raise TrainingStopped(message, exit_code)

    current = stage_at(stages, step + 1)
    sampler.set_weights(stages[current].weights)
    params = list(raw.parameters())
    bar = tqdm(total=t_cfg.max_iters, initial=step, disable=None if master else True, dynamic_ncols=True)
    row, train_time, tokens_since = {}, 0.0, 0
    while step < t_cfg.max_iters:
        step += 1
        stage = stage_at(stages, step)
        if stage != current:
            current = stage
            sampler.set_weights(stages[stage].weights)
            say(f"step {step}: stage {stage + 1}/{len(stages)} {stages[stage].name}, mix {stages[stage].weights}")
        eval_now = step % mon.eval_freq == 0 or step == stages[stage].last
        row_now = step % mon.log_freq == 0 or eval_now or step == t_cfg.max_iters
        t0 = time.time()

        # ---- forward / backward over the micro-batches of this rank's share of the batch
        batch = collate(sampler.next_batch(), t_cfg.max_seq_len)
        inputs, targets = batch["inputs"].to(device), batch["targets"].to(device)
        n_global = (targets != IGNORE_INDEX).sum().double()  # the step's target tokens, over all ranks
        if distributed:
            dist.all_reduce(n_global)
        raw.collect_stats = row_now
        stats = StepStats(cfg.model.n_layer, world, device)
        for j in range(accum):
            sl = slice(j * micro, (j + 1) * micro)
            sync = contextlib.nullcontext() if not distributed or j == accum - 1 else model.no_sync()
            with sync:
                with autocast:
                    out = model(inputs[sl])
                losses = token_losses(out.logits, targets[sl])
                sparsity = raw.sparsity_loss(out.rates) * (micro / per_rank)
                loss = losses.sum() * world / n_global.clamp_min(1).float() + sparsity
                loss.backward()
            stats.add(losses, targets[sl], batch["tasks"][sl], out, sparsity, share=micro / per_rank)
        if distributed:
            dist.all_reduce(stats.buf)
        train_loss = stats.train_loss()

        # ---- gradient health, the non-finite guard, the step
        grad_max = torch.stack([p.grad.abs().max() for p in params if p.grad is not None]).max().item()
        clip = t_cfg.grad_clip if t_cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip).item()  # the norm before clipping
        bad = mon.nan_check and not (math.isfinite(train_loss) and math.isfinite(grad_norm))
        before = [p.detach().clone() for p in params] if row_now and not bad else None
        lr = optimizer.param_groups[0]["lr"]
        if bad:
            kind = "nan_count" if math.isnan(train_loss) or math.isnan(grad_norm) else "inf_count"
            counters[kind] += 1
            counters["bad_in_row"] += 1
            ids = all_batch_ids(batch["ids"], distributed)
            if master:
                runlog.write_skipped({"step": step, "reason": kind[:3], "train_loss": train_loss,
                                      "grad_norm": grad_norm, "ids": ids, "time": time.time()})
            say(f"step {step}: non-finite {'loss' if not math.isfinite(train_loss) else 'gradient'} "
                f"(loss {train_loss}, grad_norm {grad_norm}); step skipped; batch ids {ids}")
        else:
            optimizer.step()
            counters["bad_in_row"] = 0
        optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # after a skipped step PyTorch warns that optimizer.step() was not called
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time += time.time() - t0
        tokens_since += t_cfg.batch_size * t_cfg.max_seq_len

        # ---- metrics row; at eval steps the evals, and hatching_best.pt when they are the best so far
        if row_now or bad:
            row = {"step": step, "stage": stage + 1, "stage_name": stages[stage].name, "train_loss": train_loss,
                   **stats.task_losses(), "sparsity_loss": stats.sparsity_loss(), "grad_norm": grad_norm,
                   "grad_max": grad_max, "nan_count": counters["nan_count"], "inf_count": counters["inf_count"],
                   **stats.activity(), "learning_rate": lr, **parameter_norms(params, before),
                   "tokens_per_s": tokens_since / max(train_time, 1e-9), "peak_memory_mb": peak_memory_mb(device)}
            train_time, tokens_since = 0.0, 0
            if eval_now and master:
                eval_metrics = {"step": step, **evaluate_fn(raw, vals, val_records, cfg, autocast)}
                row.update({k: v for k, v in eval_metrics.items() if k != "step"})
            row["time"] = time.time()
            if master:
                for a in runlog.write(row):
                    say(f"alert: {a}")
                if bar.disable:  # no progress bar (not a terminal): a line per row instead
                    print(progress_line(row), flush=True)
                if eval_now and "val_loss" in row:
                    say(f"step {step}: val_loss {row['val_loss']:.4f} "
                        + " ".join(f"{k[9:]} {v:.3f}" for k, v in row.items() if k.startswith("val_loss_")))
            if eval_now and master:
                score = checkpoint_score(eval_metrics, mon.best_metric)
                if counters["best_score"] is None or score > tuple(counters["best_score"]):
                    counters["best_score"] = list(score)
                    save("hatching_best.pt", step)
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{t_cfg.batch_size * t_cfg.max_seq_len / max(time.time() - t0, 1e-9):.0f}",
                        stage=f"{stage + 1}:{stages[stage].name}", refresh=False)

        if step % mon.save_freq == 0:
            save(f"hatching_step_{step}.pt", step)
        saved = os.path.join(run_dir, f"hatching_step_{step}.pt")
        if step < t_cfg.max_iters and stop.requested(distributed, device):
            stop_training(f"interrupted at step {step}; saved {saved}; continue with: "
                          f"{resume_command(saved, world)}", exit_code=130)
        if counters["bad_in_row"] >= mon.max_bad_steps:
            weights_ok = all(bool(torch.isfinite(p).all()) for p in params)
            stop_training(
                f"stopping at step {step}: {counters['bad_in_row']} steps in a row had a non-finite loss or "
                f"gradient (monitor.max_bad_steps={mon.max_bad_steps}); none of them was applied. "
                + (f"The state before them is saved in {saved}" if weights_ok else
                   f"The weights were already non-finite before them (an applied step made them so): {saved} "
                   f"holds them; resume from an earlier checkpoint")
                + "; see skipped_steps.jsonl for the batches. Try a lower training.learning_rate or a larger "
                  "lif.tau_mem.", exit_code=3)
    bar.close()
    save("hatching_final.pt", step)
    if master:
        say(f"done: step {step}, train_loss {row.get('train_loss', float('nan')):.4f}"
            + (f", val_loss {eval_metrics['val_loss']:.4f}" if "val_loss" in eval_metrics else "")
            + f"; checkpoints in {run_dir}")
        runlog.close()
    return row


# --------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bdh.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="tier name (tiny, small, medium, large) or a YAML path "
                   "(default: tiny; when resuming: the checkpoint's config)")
    p.add_argument("--resume", default=None, help="a checkpoint path (the run goes on in its folder, with its "
                   "config unless --config is given); a run's folder: its newest checkpoint; or 'auto': the newest "
                   "in <log-dir>/<name> (a fresh start when there is none)")
    p.add_argument("--log-dir", default=None, help="default: runs")
    p.add_argument("--name", default=None, help="run name: <log-dir>/<name>/ (default: the config's name)")
    p.add_argument("--max-iters", type=int, default=None,
                   help="total steps; the stages and warmup are scaled in proportion")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (training.device)")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16"], help="training.dtype")
    p.add_argument("--distributed", action="store_true", help="under torchrun: DDP (nccl on GPU, gloo on CPU)")
    p.add_argument("--dry-run", action="store_true", help="print predicted peak memory and micro-batch, then exit")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config field, e.g. --set training.learning_rate=3e-4")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (when installed)")
    return p.parse_args(argv)


def make_config(args, base=None) -> Config:
    """The config file (or, resuming without --config, the checkpoint's config); then --max-iters, which
    scales the stages and warmup_iters in proportion; then --set / --device / --dtype, taken literally."""
    name = args.config if args.config or base is not None else "tiny"
    cfg = load_config(name, base=base)
    if args.max_iters is not None and args.max_iters != cfg.training.max_iters:
        if args.max_iters < 1:
            raise ConfigError(f"--max-iters must be >= 1, got {args.max_iters}")
        scale = args.max_iters / cfg.training.max_iters
        cfg.training.warmup_iters = round(cfg.training.warmup_iters * scale)
        cfg.training.max_iters = args.max_iters
    overrides = [parse_override(o) for o in args.overrides]
    if args.device:
        overrides.append(("training.device", args.device))
    if args.dtype:
        overrides.append(("training.dtype", args.dtype))
    for key, value in overrides:
        set_value(cfg, key, value)
    return validate(cfg)


def newest_checkpoint(run_dir: str) -> str:
    """``--resume`` given a run's folder: its newest checkpoint (as ``--resume auto`` picks)."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"--resume {run_dir!r}: a directory without checkpoints (hatching_*.pt)")
    return found[0]


def resume_command(checkpoint: str, world: int) -> str:
    """The command that continues a run from ``checkpoint`` on ``world`` processes: its config and run
    folder come from the checkpoint."""
    launcher = f"torchrun --nproc_per_node={world} -m bdh.train --distributed" if world > 1 else "python -m bdh.train"
    return f"{launcher} --resume {shlex.quote(checkpoint)}"


def config_changes(old: dict, new: dict, prefix: str = "") -> list:
    """``key: old -> new`` for each setting that differs between two ``Config.to_dict()`` trees."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    # started by torchrun with several processes: they must train together, not each the whole run
    distributed = args.distributed or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        missing = [v for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            sys.exit(f"--distributed needs torchrun ({', '.join(missing)} not set)")
        local = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available() and args.device not in ("cpu",):
            torch.cuda.set_device(local)
            dist.init_process_group("nccl")
            args.device = f"cuda:{local}"
        else:
            dist.init_process_group("gloo")
            args.device = "cpu"
    rank = dist.get_rank() if distributed else 0
    run_dir = None
    try:
        config_name = os.path.splitext(os.path.basename(args.config))[0] if args.config else "tiny"
        log_dir = args.log_dir or "runs"
        name = args.name or config_name
        run_dir = os.path.join(log_dir, name)
        ckpt = None
        resume = args.resume
        if resume and resume != "auto" and os.path.isdir(resume):
            resume = newest_checkpoint(resume)
        if resume and resume != "auto" and args.name is None:  # continue in the checkpoint's run
            run_dir = os.path.dirname(os.path.abspath(resume))
            if args.log_dir is not None:
                run_dir = os.path.join(args.log_dir, os.path.basename(run_dir))
            name = os.path.basename(run_dir)
        if resume == "auto":
            found = list_checkpoints(run_dir)
            if found:
                ckpt = load_checkpoint(found[0])
                if rank == 0:
                    print(f"--resume auto: {found[0]} (step {ckpt['step']})")
            elif rank == 0:
                why = "" if args.name else (f" (<log-dir>/<name>, and without --name the name is the config's, "
                                            f"{config_name}: give the run's --name, or --resume its checkpoint)")
                print(f"--resume auto: no checkpoint in {run_dir}{why}; starting a fresh run")
        elif resume:
            ckpt = load_checkpoint(resume)
        cfg = make_config(args, base=ckpt["config"] if ckpt and not args.config else None)
        if ckpt is not None:
            changed = check_resume(ckpt, cfg)  # train() checks again and says what changed
            if args.dry_run and changed and rank == 0:
                print("resuming with settings that differ from the checkpoint's: " + "; ".join(changed))
        device = resolve_device(cfg.training.device)
        dtype = resolve_dtype(cfg.training.dtype, device)
        check_backend(cfg, device)
        world = dist.get_world_size() if distributed else 1
        if args.dry_run:
            per_rank = cfg.training.batch_size // world
            micro, peak, budget = choose_micro_batch(cfg, per_rank, dtype, device, world)
            fits = "fits" if peak <= budget else "DOES NOT FIT (try training.activation_checkpointing=true)"
            if rank == 0:
                print(f"config {config_name}: {count_params(cfg) / 1e6:.2f}M params, {device} {dtype}, "
                      f"batch {cfg.training.batch_size} x seq {cfg.training.max_seq_len}, "
                      f"activation checkpointing {'on' if cfg.training.activation_checkpointing else 'off'}\n"
                      f"micro-batch {micro} x {per_rank // micro} accumulation step(s) x {world} rank(s)\n"
                      f"predicted peak memory {peak / 2**30:.2f} GiB per rank; budget {budget / 2**30:.2f} GiB: {fits}")
                for i, s in enumerate(cfg.stages()):
                    print(f"stage {i + 1} {s.name}: steps {s.first}-{s.last} {s.weights}")
            return 0
        train(cfg, run_dir, device, dtype, resume_from=ckpt, distributed=distributed, use_wandb=args.wandb, name=name)
        return 0
    except (ConfigError, CheckpointError, TrainingStopped, OSError) as e:  # OSError: unwritable --log-dir, full disk
        if rank == 0 or not isinstance(e, TrainingStopped):  # a stop is the same on every rank: say it once
            print(f"error: {e}" if not isinstance(e, TrainingStopped) else str(e), file=sys.stderr)
        return 1 if not isinstance(e, TrainingStopped) else e.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C while training, or one before: at once (a checkpoint being
        # written is dropped, its temp file removed), without a traceback
        if rank == 0:
            found = list_checkpoints(run_dir) if run_dir else []
            world = dist.get_world_size() if distributed else 1
            print("interrupted: stopped at once, without a checkpoint of this step"
                  + (f"; the newest is {found[0]}: continue with: {resume_command(found[0], world)}"
                     if found else ""), file=sys.stderr)
        return 130
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
