"""Shared by the model, trainer, evaluate and generate tests: small model configs and run helpers."""
import json
import os

import torch

from bdh.config import load_config
from bdh.model import Hatching

HERE = os.path.dirname(os.path.abspath(__file__))
CUSTOM = os.path.join(HERE, "fixtures", "custom.yaml")

SMALL = ["model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.mlp_internal_dim_multiplier=4",
         "model.dropout=0"]


def small_model(*overrides, seed=0):
    """The tiny tier shrunk to 2 layers of 2 heads x 64 neurons, D = 32 (seeded weights)."""
    cfg = load_config("tiny", SMALL + list(overrides))
    torch.manual_seed(seed)
    return Hatching(cfg)


# a model small enough that a step takes a few tens of milliseconds, and evals that answer one short prompt per task
MICRO = ["model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.mlp_internal_dim_multiplier=4",
         "training.batch_size=4", "training.max_seq_len=64", "monitor.eval_batches=1", "training.warmup_iters=2",
         "monitor.eval_samples=1", "monitor.eval_max_new_tokens=8"]

METRIC_KEYS = {"step", "stage", "stage_name", "train_loss", "sparsity_loss", "grad_norm", "grad_max", "nan_count",
               "inf_count", "firing_rate", "activation_mean", "activation_std", "learning_rate", "weight_norm",
               "update_ratio", "tokens_per_s", "peak_memory_mb", "time"}


def run_args(tmp_path, *extra, name="run", iters=8, sets=()):
    return ["--log-dir", str(tmp_path), "--name", name, "--max-iters", str(iters), "--set", *MICRO, *sets, *extra]


def rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    return env
