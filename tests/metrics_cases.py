"""Crafted metrics.jsonl rows, shaped exactly like the trainer's (bdh.train writes one per log step)."""
import json
import math
import random

TASK_MIX = {1: ("text_coherence", ["text_completion", "chain_of_thought"]),
            2: ("function_calling", ["text_completion", "function_call", "chain_of_thought"])}


def healthy_rows(steps=2000, log_every=1, stage_at=None, layers=2, seed=0, eval_every=500):
    """A healthy run: loss 5.5 -> ~3.1 over 2000 steps with batch noise, grad norm ~1, firing rate
    ~0.1, warmup + cosine learning rate. stage_at: the step where stage 2 starts (and the loss jumps
    up by 0.4, as the guide says it may), or None for one stage."""
    rng = random.Random(seed)
    rows = []
    for step in range(0, steps + 1, log_every):
        stage = 2 if stage_at is not None and step >= stage_at else 1
        name, tasks = TASK_MIX[stage]
        loss = 3.0 + 2.5 * math.exp(-step / 700) + rng.gauss(0, 0.08)
        if stage == 2:
            loss += 0.4 * math.exp(-(step - stage_at) / 300)
        lr = 1e-3 * min(1.0, (step + 1) / 200) * 0.5 * (1 + math.cos(math.pi * step / (steps + 1)))
        row = {"step": step, "stage": stage, "stage_name": name, "train_loss": loss}
        if eval_every and step % eval_every == 0:
            row["val_loss"] = loss + 0.05
            row.update({f"val_loss_{task}": loss + 0.05 + 0.1 * i for i, task in enumerate(tasks)})
        for i, task in enumerate(tasks):
            row[f"task_loss_{task}"] = loss + 0.1 * (i - 1) + rng.gauss(0, 0.05)
        rate = 0.1 + rng.gauss(0, 0.005)
        row.update({
            "sparsity_loss": 1e-3 * (rate - 0.1) ** 2,
            "grad_norm": 1.0 + 0.5 * rng.random(),
            "grad_max": 0.05 + 0.01 * rng.random(),
            "nan_count": 0,
            "inf_count": 0,
            "firing_rate": rate,
            **{f"firing_rate_layer{i}": rate + 0.01 * (i - (layers - 1) / 2) for i in range(layers)},
            "activation_mean": 0.01 * rng.gauss(0, 1),
            "activation_std": 1.0 + 0.01 * rng.gauss(0, 1),
            "learning_rate": lr,
            "weight_norm": 100.0 + 0.01 * step,
            "update_ratio": 1e-3 * (1 + 0.1 * rng.gauss(0, 1)),
            "tokens_per_s": 5000.0 + rng.gauss(0, 100),
            "peak_memory_mb": 312.5,
            "time": 1_760_000_000.0 + 0.05 * step,
        })
        rows.append(row)
    return rows


def write_metrics(path, rows, partial_tail=None):
    """Write rows as metrics.jsonl the way the trainer does (json.dumps, NaN as NaN); partial_tail: a
    half-written last line to append without its newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        if partial_tail:
            f.write(partial_tail)
    return path
