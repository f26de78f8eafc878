"""Evaluate a Hatching checkpoint: ``python -m bdh.evaluate --checkpoint PATH``.

Two kinds of numbers, over the val split of each task (bundled starter set, or ``--data-dir``):

* **val loss and perplexity** per task: the mean cross-entropy per target byte (nats; prompt bytes and
  padding carry no loss, as in training) over the first ``--max-loss-records`` val records, each cut
  to the training context (``training.max_seq_len``) as the trainer cuts it; perplexity = exp(loss),
  per byte.
* **generation metrics** (bdh.metrics, where each is defined): the model writes a greedy answer to
  the prompts of the first ``--max-samples`` records per task (tool_use: episodes), and the answers
  are scored: function format / name / argument accuracy, JSON validity, bash format accuracy,
  command validity, multi-step accuracy, coherence, and the overall score, each with its 95% interval and sample size.

What the model sees when it answers: the last ``prompt_bytes`` bytes of the prompt (default
``max(max_seq_len - max_new_tokens, max_seq_len // 2)``), so that prompt and answer fit the context
the model was trained on, which cut long prompts (tool schemas) from the start in the same way.

Every ``monitor.eval_freq`` steps the trainer takes the val losses (:func:`val_losses`) and
:func:`quick_eval`'s generation metrics on ``monitor.eval_samples`` records per task; they go into the checkpoint's
``eval_metrics`` and pick ``hatching_best.pt`` (``monitor.best_metric``).
"""
import argparse
import contextlib
import json
import math
import os
import sys
from collections import defaultdict
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from bdh.checkpoint import CheckpointError, load_model, resolve_device
from bdh.data import IGNORE_INDEX, TASKS, collate, decode, load_splits
from bdh.data.records import write_atomic
from bdh.generate import generate_batch
from bdh.metrics import evaluate_outputs, prompts_to_answer


def token_losses(logits, targets):
    """[B, T] cross-entropy per position (0 where targets is IGNORE_INDEX)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="none").view(targets.shape)


@torch.no_grad()
def val_losses(model, batches, autocast=None) -> dict:
    """val_loss_<task>: mean loss per target byte of that task; val_loss: the mean over tasks (absent,
    like the per-task ones, when there are no val target bytes: no loss is not a loss of 0).

    batches: ``bdh.data.collate`` batches; autocast: a context manager around the forward (or None).
    """
    was_training = model.training
    model.eval()
    sums, counts = defaultdict(float), defaultdict(float)
    device = next(model.parameters()).device
    for batch in batches:
        with autocast or contextlib.nullcontext():
            logits = model(batch["inputs"].to(device)).logits
        losses = token_losses(logits, batch["targets"].to(device)).sum(1).cpu()
        for task, loss, n in zip(batch["tasks"], losses.tolist(), batch["loss_mask"].sum(1).tolist()):
            sums[task] += loss
            counts[task] += n
    model.train(was_training)
    metrics = {f"val_loss_{t}": sums[t] / counts[t] for t in sorted(sums) if counts[t] > 0}
    if metrics:
        metrics["val_loss"] = sum(metrics.values()) / len(metrics)
    return metrics


def default_prompt_bytes(max_seq_len: int, max_new_tokens: int) -> int:
    return max(max_seq_len - max_new_tokens, max_seq_len // 2)


def greedy_answers(model, prompts: Sequence[str], max_new_tokens: int, prompt_bytes: int, batch_size: int = 32,
                   progress: bool = False) -> dict:
    """{prompt: the model's greedy answer (text up to EOS)}, the model seeing each prompt's last
    prompt_bytes bytes; answered batch_size prompts at a time (bdh.generate.generate_batch)."""
    unique = list(dict.fromkeys(prompts))
    answers = {}
    with tqdm(total=len(unique), desc="answering", unit="answer", file=sys.stderr, dynamic_ncols=True,
              disable=not progress) as bar:
        for i in range(0, len(unique), batch_size):
            chunk = unique[i:i + batch_size]
            new = generate_batch(model, [p.encode()[-prompt_bytes:] for p in chunk], max_new_tokens)
            for prompt, ids in zip(chunk, new):
                answers[prompt] = decode(ids)
            bar.update(len(chunk))
    return answers


def generation_metrics(model, records_by_task: Mapping[str, Sequence], max_samples: Optional[int],
                       max_new_tokens: int, prompt_bytes: int, progress: bool = False) -> dict:
    """bdh.metrics.evaluate_outputs with the model's greedy answers (the model is left in eval mode);
    progress: a progress bar of the answers on stderr."""
    answers = greedy_answers(model, prompts_to_answer(records_by_task, max_samples), max_new_tokens, prompt_bytes,
                             progress=progress)
    return evaluate_outputs(records_by_task, answers.__getitem__, max_samples)


def quick_eval(model, records_by_task: Mapping[str, Sequence], cfg) -> dict:
    """The trainer's periodic generation eval, flattened: {metric: value, ..., "overall": float} ("overall"
    left out when no answer could be scored).

    Greedy decoding draws no random numbers, so an eval does not change the training run that follows.
    """
    mon = cfg.monitor
    if mon.eval_samples <= 0:
        return {}
    was_training = model.training
    report = generation_metrics(model, records_by_task, mon.eval_samples, mon.eval_max_new_tokens,
                                default_prompt_bytes(cfg.training.max_seq_len, mon.eval_max_new_tokens))
    model.train(was_training)
    flat = {name: m["value"] for name, m in report["metrics"].items()}
    if report["overall"] is not None:  # None (no scored answer) would read as a NaN alert in the log
        flat["overall"] = report["overall"]
    return flat


def checkpoint_score(metrics: Mapping, best_metric: str) -> tuple:
    """How good an eval is, as a tuple that compares higher-is-better (for hatching_best.pt).

    "overall": (overall score, -val_loss), so the val loss decides between equal scores (early in
    training every answer scores 0); an eval without an overall score ranks below any with one.
    "val_loss": (-val_loss,).
    """
    neg_loss = -metrics.get("val_loss", math.inf)
    if best_metric == "val_loss":
        return (neg_loss,)
    overall = metrics.get("overall")
    return (-math.inf if overall is None else overall, neg_loss)


def perplexity(loss: float) -> float:
    """exp(loss); inf when that is past the float range (a loss above ~709 nats: a diverging run, which the
    trainer's alerts and non-finite guard deal with, so an eval must not fail on it)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def finite_or_none(value):
    """value with every non-finite float (in nested dicts and lists too) as None: JSON has no inf or NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def evaluate_checkpoint(model, cfg, records_by_task: Mapping[str, Sequence], max_samples: Optional[int] = 50,
                        max_loss_records: Optional[int] = None, max_new_tokens: int = 256,
                        prompt_bytes: Optional[int] = None, batch_size: int = 8, progress: bool = False) -> dict:
    """The full report (see the module docstring) as plain data, ready for JSON."""
    seq_len = cfg.training.max_seq_len
    batches = []
    for task, records in records_by_task.items():
        records = list(records)[:max_loss_records]
        batches += [collate(records[i:i + batch_size], seq_len) for i in range(0, len(records), batch_size)]
    losses = val_losses(model, batches)
    per_task = {t: {"val_loss": losses[f"val_loss_{t}"], "perplexity": perplexity(losses[f"val_loss_{t}"])}
                for t in records_by_task if f"val_loss_{t}" in losses}
    prompt_bytes = prompt_bytes or default_prompt_bytes(seq_len, max_new_tokens)
    gen = generation_metrics(model, records_by_task, max_samples, max_new_tokens, prompt_bytes, progress)
    for task, metrics in gen["tasks"].items():
        per_task.setdefault(task, {}).update(metrics)
    val_loss = losses.get("val_loss")  # None without val target bytes
    return {"val_loss": val_loss, "perplexity": None if val_loss is None else perplexity(val_loss), "tasks": per_task,
            "metrics": gen["metrics"], "overall": gen["overall"], "samples": gen["samples"],
            "settings": {"max_samples": max_samples, "max_loss_records": max_loss_records,
                         "max_new_tokens": max_new_tokens, "prompt_bytes": prompt_bytes, "decoding": "greedy"}}


def format_report(report: dict) -> str:
    """The report as a text table: per task, then the pooled metrics and the overall score."""
    lines = [f"{'task':<18} {'metric':<26} {'value':>8}  {'95% interval':<15} {'n':>5}"]
    for task, metrics in report["tasks"].items():
        for name, m in metrics.items():
            if isinstance(m, dict):
                lines.append(f"{task:<18} {name:<26} {m['value']:>8.3f}  [{m['low']:.3f}, {m['high']:.3f}]  {m['n']:>5}")
            else:
                lines.append(f"{task:<18} {name:<26} {m:>8.3f}")
    lines.append("")
    for name, m in report["metrics"].items():
        lines.append(f"{'all':<18} {name:<26} {m['value']:>8.3f}  [{m['low']:.3f}, {m['high']:.3f}]  {m['n']:>5}")
    if report["val_loss"] is not None:
        lines.append(f"{'all':<18} {'val_loss':<26} {report['val_loss']:>8.3f}")
    overall = report["overall"]
    lines.append(f"{'all':<18} {'overall':<26} {overall:>8.3f}" if overall is not None else "overall: n/a")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bdh.evaluate",
        description="Val loss, perplexity and generation metrics of a Hatching checkpoint on the val splits "
                    "(definitions: the bdh.evaluate and bdh.metrics docstrings).")
    p.add_argument("--checkpoint", required=True, help="a hatching_*.pt written by python -m bdh.train")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=None, help="default: every task with val data")
    p.add_argument("--max-samples", type=int, default=50,
                   help="records (tool_use: episodes) per task to answer; 0: losses only (default: 50)")
    p.add_argument("--max-loss-records", type=int, default=None, help="val records per task for the losses (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in bytes (default: 256)")
    p.add_argument("--prompt-bytes", type=int, default=None,
                   help="the prompt's last bytes the model sees (default: max(max_seq_len - max_new_tokens, max_seq_len // 2))")
    p.add_argument("--data-dir", default=None, help="a python -m bdh.data prepare output (default: the bundled starter set)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--out", default=None, help="write the report, with every answer, as JSON here")
    return p.parse_args(argv)


def check_writable(path: str, what: str) -> None:
    """A ValueError naming ``what`` unless a file can be written at ``path`` (an existing, writable folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{what}: {path!r} is a directory")
    if not os.path.isdir(folder):
        raise ValueError(f"{what}: the folder of {path!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{what}: cannot write in the folder of {path!r}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        for name in ("max_samples", "max_new_tokens"):
            if getattr(args, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
        for name in ("prompt_bytes", "max_loss_records"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.out:
            check_writable(args.out, "--out")  # before the evaluation, not after it
        model, cfg, ckpt = load_model(args.checkpoint, resolve_device(args.device, "--device"))
        splits = load_splits(args.data_dir)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    tasks = args.tasks or [t for t in TASKS if t in splits]
    missing = [t for t in tasks if t not in splits or not splits[t].val]
    if missing:
        print(f"error: no val records for {', '.join(missing)}", file=sys.stderr)
        return 1
    records = {t: splits[t].val for t in tasks}
    report = evaluate_checkpoint(model, cfg, records, args.max_samples, args.max_loss_records,
                                 args.max_new_tokens, args.prompt_bytes, progress=True)
    report["checkpoint"] = {"path": args.checkpoint, "step": int(ckpt["step"])}
    print(f"{args.checkpoint} (step {ckpt['step']})")
    print(format_report(report))
    if args.out:
        try:
            write_atomic(args.out, json.dumps(finite_or_none(report), indent=1) + "\n")
        except OSError as e:
            print(f"error: --out: cannot write {args.out}: {e}", file=sys.stderr)
            return 1
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
