"""The trainer: config errors, metrics, checkpoints, exact resume after SIGKILL, the NaN guard, DDP."""
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import bdh.train as train_module
from bdh.checkpoint import CHECKPOINT_KEYS, CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from bdh.config import ConfigError, load_config, stage_schedule
from bdh.data import load_splits
from bdh.data.prepare import STARTER_DIR
from bdh.train import main

from train_cases import CUSTOM, METRIC_KEYS, MICRO, SMALL, rows, run_args, small_model, subprocess_env


# ------------------------------------------------------------------------------------------- config
def test_custom_yaml_from_the_guide_loads_as_written():
    cfg = load_config(CUSTOM)
    assert cfg.training.learning_rate == 1e-3 and isinstance(cfg.training.learning_rate, float)  # "1e-3" in YAML 1.1
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.lif.tau_mem, cfg.lif.tau_syn) == (6, 256, 10.0, 5.0)
    assert cfg.stdp.A_minus == 0.0105 and cfg.monitor.nan_check is True
    names = [s.name for s in cfg.stages()]
    assert names == ["text_coherence", "function_calling", "bash_commands", "multi_task"]
    assert [(s.first, s.last) for s in cfg.stages()] == [(1, 2000), (2001, 5000), (5001, 8000), (8001, 10000)]


@pytest.mark.parametrize("text, key", [
    ("training:\n  learning_rte: 1e-3\n", "training.learning_rte"),
    ("modle:\n  n_layer: 2\n", "modle"),
    ("model:\n  n_layer: six\n", "model.n_layer"),
    ("model:\n  n_layer: 2.5\n", "model.n_layer"),
    ("lif:\n  enabled: 1\n", "lif.enabled"),
    ("training:\n  learning_rate: fast\n", "training.learning_rate"),
    ("curriculum:\n  stages:\n    - iters: 10\n      weights: {text_complet: 1.0}\n",
     "curriculum.stages[0].weights.text_complet"),
    ("curriculum:\n  stages:\n    - iter: 10\n      weights: {tool_use: 1.0}\n", "curriculum.stages[0].iter"),
    ("model:\n  n_embd: 30\n  n_head: 4\n", "model.n_embd"),
])
def test_bad_config_errors_name_the_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(str(path))


@pytest.mark.parametrize("override, message", [
    ("training.beta1=2", "training.beta1: must be in [0, 1)"),
    ("training.seed=-1", "training.seed: must be in [0, 2**32)"),
    ("data.max_bytes=-5", "data.max_bytes: must be >= 0"),
    ("training.device=mps", "training.device: 'mps' is not supported"),
    ("lif.backend=cuda", "lif.backend: 'cuda' cannot run on cpu"),
])
def test_bad_values_fail_before_training_with_their_key(tmp_path, capsys, override, message):
    assert main(["--log-dir", str(tmp_path), "--set", override, "--dry-run"]) == 1
    assert message in capsys.readouterr().err


def test_cli_reports_a_typo_with_its_key(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text(open(CUSTOM).read().replace("learning_rate", "learning_rte"))
    assert main(["--config", str(path), "--log-dir", str(tmp_path), "--dry-run"]) == 1
    assert "training.learning_rte" in capsys.readouterr().err


def test_a_config_path_that_is_no_yaml_file_is_a_config_error(tmp_path, capsys):
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"PK\x03\x04" + bytes(range(128, 256)))  # a checkpoint is a zip archive
    assert main(["--config", str(binary), "--log-dir", str(tmp_path), "--dry-run"]) == 1
    assert f"error: {binary}: not a YAML file: byte 0x80 at offset 4 is not UTF-8 text" in capsys.readouterr().err
    assert main(["--config", str(tmp_path), "--log-dir", str(tmp_path), "--dry-run"]) == 1
    assert f"error: config file {str(tmp_path)!r} is a directory" in capsys.readouterr().err
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list.yaml: top level: expected a mapping of sections, got list$"):
        load_config(str(tmp_path / "list.yaml"))


def test_a_min_lr_above_a_lowered_learning_rate_shows_both_and_the_fix(capsys):
    assert main(["--set", "training.learning_rate=1e-4", "--dry-run"]) == 1  # the tiny tier's min_lr is 2e-4
    assert ("training.min_lr: must be in [0, training.learning_rate] or null, got 0.0002 with learning_rate 0.0001 "
            "(lowering the learning rate? set training.min_lr too") in capsys.readouterr().err
    assert main(["--set", "training.learning_rate=1e-4", "training.min_lr=1e-5", "--dry-run"]) == 0


def test_set_overrides_any_field_with_types():
    cfg = load_config("tiny", ["training.learning_rate=3e-4", "lif.tau_syn=5", "lif.v_reset=null",
                               "model.dropout=0.2", "stdp.enabled=false", "data.dir=some/where"])
    assert cfg.training.learning_rate == 3e-4 and cfg.lif.tau_syn == 5.0 and cfg.lif.v_reset is None
    assert cfg.model.dropout == 0.2 and cfg.stdp.enabled is False and cfg.data.dir == "some/where"
    with pytest.raises(ConfigError, match="training.learning_rte"):
        load_config("tiny", ["training.learning_rte=1"])
    with pytest.raises(ConfigError, match="model.n_layer"):
        load_config("tiny", ["model.n_layer=many"])


def test_config_round_trips_as_a_plain_dict():
    cfg = load_config(CUSTOM, ["lif.v_reset=null"])
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert type(cfg).from_dict(d) == cfg


def test_tiers_match_the_guide():
    expected = {"small": (4, 128, 16, 256), "medium": (6, 256, 32, 512), "large": (12, 512, 64, 1024)}
    for tier, dims in expected.items():
        cfg = load_config(tier)
        assert (cfg.model.n_layer, cfg.model.n_embd, cfg.training.batch_size, cfg.training.max_seq_len) == dims
    assert load_config("tiny").training.device == "auto"


def test_stages_scale_with_max_iters():
    cfg = load_config(CUSTOM, ["training.max_iters=40"])
    assert [(s.first, s.last) for s in stage_schedule(cfg)] == [(1, 8), (9, 20), (21, 32), (33, 40)]
    cfg = load_config(CUSTOM, ["training.max_iters=3"])  # fewer steps than stages: the last ones drop out
    spans = [(s.first, s.last) for s in stage_schedule(cfg)]
    assert spans[0][0] == 1 and spans[-1][1] == 3 and all(a <= b for a, b in spans)


def test_stage_at_finds_each_steps_stage():
    stages = stage_schedule(load_config(CUSTOM, ["training.max_iters=40"]))
    assert stages[1].name == stages[1][0] and (stages[1].first, stages[1].last) == (9, 20)
    assert [train_module.stage_at(stages, s) for s in (1, 8, 9, 20, 21, 40, 41)] == [0, 0, 1, 1, 2, 3, 3]


def test_step_stats_sum_micro_batches_into_the_rows_metrics():
    """Two micro-batches of a rank's batch: task losses are per-token means over both, rates and the
    sparsity loss the batch means, activation mean/std from the summed moments."""
    from types import SimpleNamespace
    from bdh.data import IGNORE_INDEX
    stats = train_module.StepStats(n_layer=2, world_size=1, device=torch.device("cpu"))
    losses = [torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 0.0]]), torch.tensor([[4.0, 4.0, 4.0]])]
    targets = [torch.tensor([[5, 5, IGNORE_INDEX], [5, IGNORE_INDEX, IGNORE_INDEX]]), torch.tensor([[5, 5, 5]])]
    tasks = [["text_completion", "bash_command"], ["text_completion"]]
    rates = [torch.tensor([[0.1, 0.2], [0.3, 0.4]]), torch.tensor([[0.3, 0.4], [0.5, 0.6]])]
    drives = [torch.tensor([[1.0, 5.0, 4.0]]), torch.tensor([[3.0, 5.0, 2.0]])]  # sum, sum of squares, count
    for j, share in enumerate((2 / 3, 1 / 3)):
        out = SimpleNamespace(rates=rates[j], drive=drives[j])
        stats.add(losses[j], targets[j], tasks[j], out, torch.tensor(0.5 * share), share)
    assert stats.train_loss() == pytest.approx(18 / 6)
    assert stats.task_losses() == pytest.approx({"task_loss_text_completion": 16 / 5, "task_loss_bash_command": 2.0})
    assert stats.sparsity_loss() == pytest.approx(0.5)
    rate = [(2 / 3) * a + (1 / 3) * b for a, b in zip([0.1, 0.2, 0.3, 0.4], [0.3, 0.4, 0.5, 0.6])]
    activity = stats.activity()
    assert activity["firing_rate"] == pytest.approx(sum(rate) / 4)
    assert activity["firing_rate_layer1"] == pytest.approx((rate[2] + rate[3]) / 2)
    assert activity["activation_mean"] == pytest.approx(4 / 6)
    assert activity["activation_std"] == pytest.approx(math.sqrt(10 / 6 - (4 / 6) ** 2))


def test_dry_run_prints_memory_and_micro_batch(tmp_path, capsys):
    assert main(["--config", "medium", "--log-dir", str(tmp_path), "--dry-run", "--device", "cpu",
                 "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "predicted peak memory" in out and "micro-batch" in out
    assert not os.listdir(tmp_path)  # nothing trained, nothing written
    # a smaller budget gives a smaller micro-batch
    assert main(["--config", "medium", "--dry-run", "--device", "cpu", "--dtype", "bfloat16",
                 "--set", "training.memory_budget_gb=4"]) == 0
    small = capsys.readouterr().out
    micro = lambda text: int(text.split("micro-batch ")[1].split()[0])  # noqa: E731
    assert micro(small) < micro(out)


# ------------------------------------------------------------------------------------------ training
def test_short_run_writes_metrics_checkpoints_and_events(tmp_path):
    assert main(run_args(tmp_path, iters=8, sets=["monitor.log_freq=2", "monitor.eval_freq=4",
                                                  "monitor.save_freq=4", "model.dropout=0.1"])) == 0
    run = tmp_path / "run"
    got = rows(run / "metrics.jsonl")
    assert [r["step"] for r in got] == [2, 4, 6, 8]
    for r in got:
        assert METRIC_KEYS <= set(r), METRIC_KEYS - set(r)
        assert {f"firing_rate_layer{i}" for i in range(2)} <= set(r)
        assert any(k.startswith("task_loss_") for k in r)
        assert isinstance(r["step"], int) and isinstance(r["stage"], int) and 1 <= r["stage"] <= 4
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))
        assert 0.02 <= r["firing_rate"] <= 0.3
        assert r["nan_count"] == 0 and r["inf_count"] == 0 and r["update_ratio"] > 0
    # val_loss on eval steps: every 4, and the last step of each stage (2, 4, 6, 8 of 8 steps)
    assert [r["step"] for r in got if "val_loss" in r] == [2, 4, 6, 8]
    assert [r["stage"] for r in got] == [1, 2, 3, 4]
    names = sorted(os.listdir(run))
    for expected in ("hatching_step_4.pt", "hatching_step_8.pt", "hatching_best.pt", "hatching_final.pt"):
        assert expected in names
    assert any(n.startswith("events.out.tfevents") for n in names) or not _has_tensorboard()
    ckpt = torch.load(run / "hatching_final.pt", weights_only=True)
    assert set(CHECKPOINT_KEYS) <= set(ckpt)
    assert ckpt["step"] == 8 and ckpt["config"]["training"]["max_iters"] == 8
    assert set(ckpt["rng_state"]) == {"python", "numpy", "torch", "cuda"}
    assert ckpt["sampler_state"]["draws"] == 8 * 4
    generation = {"coherence", "function_format_accuracy", "argument_accuracy", "bash_format_accuracy",
                  "command_validity", "overall"}
    assert {"val_loss", "val_perplexity"} | generation <= set(ckpt["eval_metrics"])
    assert ckpt["eval_metrics"]["val_perplexity"] == pytest.approx(math.exp(ckpt["eval_metrics"]["val_loss"]))
    evals = [r for r in got if "val_loss" in r]
    assert all(generation <= set(r) for r in evals)
    best = torch.load(run / "hatching_best.pt", weights_only=True)
    assert best["eval_metrics"]["val_loss"] == min(r["val_loss"] for r in evals)  # monitor.best_metric: val_loss


def test_a_val_loss_past_the_float_range_gives_an_infinite_perplexity(tmp_path, monkeypatch):
    """A diverging run's val loss (> ~709 nats) overflows exp(): the perplexity is inf (null in the metrics,
    which raises the NaN alert) and the run goes on."""
    import bdh.evaluate as evaluate_module

    assert train_module.perplexity(800.0) == math.inf and train_module.perplexity(1.0) == math.e
    real = train_module.val_losses
    monkeypatch.setattr(train_module, "val_losses", lambda *args: {**real(*args), "val_loss": 800.0})
    assert main(run_args(tmp_path, iters=2)) == 0
    evals = [r for r in rows(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r]
    assert evals and all(r["val_loss"] == 800.0 and r["val_perplexity"] is None for r in evals)
    assert load_checkpoint(str(tmp_path / "run" / "hatching_final.pt"))["eval_metrics"]["val_perplexity"] == math.inf
    assert "val_perplexity=null" in (tmp_path / "run" / "alerts.jsonl").read_text()

    monkeypatch.setattr(evaluate_module, "val_losses", lambda *args: {"val_loss": 800.0, "val_loss_tool_use": 900.0})
    records = load_splits()["tool_use"].val[:1]
    report = evaluate_module.evaluate_checkpoint(small_model(), load_config("tiny", SMALL), {"tool_use": records},
                                                 max_samples=0)
    assert report["perplexity"] == math.inf and report["tasks"]["tool_use"]["perplexity"] == math.inf


def _has_tensorboard():
    try:
        import tensorboard  # noqa: F401
        return True
    except ImportError:
        return False


def test_micro_batches_accumulate_to_the_full_batch(tmp_path):
    losses = {}
    for micro in (4, 2, 1):
        name = f"m{micro}"
        assert main(run_args(tmp_path, name=name, iters=3, sets=["monitor.log_freq=1", f"training.micro_batch_size={micro}",
                                                                 "bio.sparsity_weight=0", "curriculum.enabled=false"])) == 0
        losses[micro] = [r["train_loss"] for r in rows(tmp_path / name / "metrics.jsonl")]
    assert losses[4][0] == pytest.approx(losses[2][0], rel=1e-6) == pytest.approx(losses[1][0], rel=1e-6)
    for micro in (2, 1):
        assert losses[micro] == pytest.approx(losses[4], rel=1e-4)


def test_nan_in_a_batch_is_skipped_counted_and_training_continues(tmp_path, monkeypatch):
    forward_calls = {"n": 0}
    build = train_module.build_model

    def poisoned(cfg, device):
        model = build(cfg, device)

        def hook(module, args, output):
            if module.training:
                forward_calls["n"] += 1
                if forward_calls["n"] == 3:  # the third training step's batch
                    return output * float("nan")
            return output

        model.embed.register_forward_hook(hook)
        return model

    monkeypatch.setattr(train_module, "build_model", poisoned)
    assert main(run_args(tmp_path, iters=6, sets=["monitor.log_freq=2", "curriculum.enabled=false"])) == 0
    run = tmp_path / "run"
    skipped = rows(run / "skipped_steps.jsonl")
    assert [s["step"] for s in skipped] == [3] and skipped[0]["reason"] == "nan" and len(skipped[0]["ids"]) == 4
    got = rows(run / "metrics.jsonl")
    assert [r["step"] for r in got] == [2, 3, 4, 6]
    bad = got[1]
    assert bad["train_loss"] is None and bad["nan_count"] == 1 and bad["update_ratio"] == 0.0
    assert got[-1]["nan_count"] == 1 and math.isfinite(got[-1]["train_loss"])
    if (run / "alerts.jsonl").exists() and os.path.getsize(run / "alerts.jsonl"):  # bdh.alerts is there
        assert any(a["name"] == "nan_detected" and a["step"] == 3 for a in rows(run / "alerts.jsonl"))
    final = torch.load(run / "hatching_final.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in final["model_state"].values())


def test_too_many_bad_steps_in_a_row_stop_with_a_checkpoint(tmp_path, monkeypatch, capsys):
    build = train_module.build_model

    def always_nan(cfg, device):
        model = build(cfg, device)
        model.embed.register_forward_hook(lambda m, a, out: out * float("inf") if m.training else out)
        return model

    monkeypatch.setattr(train_module, "build_model", always_nan)
    assert main(run_args(tmp_path, iters=10, sets=["monitor.max_bad_steps=3"])) == 3
    err = capsys.readouterr().err
    assert "3 steps in a row" in err and "monitor.max_bad_steps=3" in err
    ckpt = load_checkpoint(str(tmp_path / "run" / "hatching_step_3.pt"))
    assert ckpt["trainer_state"]["nan_count"] + ckpt["trainer_state"]["inf_count"] == 3
    assert not (tmp_path / "run" / "hatching_final.pt").exists()


# ---------------------------------------------------------------------------------------- checkpoints
def test_truncated_checkpoint_is_refused_clearly_and_others_are_untouched(tmp_path, capsys):
    assert main(run_args(tmp_path, iters=4, sets=["monitor.save_freq=2"])) == 0
    run = tmp_path / "run"
    good = (run / "hatching_step_4.pt").read_bytes()
    data = (run / "hatching_final.pt").read_bytes()
    (run / "hatching_final.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(str(run / "hatching_final.pt"))
    os.utime(run / "hatching_final.pt")  # the newest: --resume auto picks it, and must refuse it
    assert main(run_args(tmp_path, "--resume", "auto", iters=6)) == 1
    err = capsys.readouterr().err
    assert "hatching_final.pt" in err and "truncated or corrupt" in err and "hatching_step_4.pt" in err
    assert (run / "hatching_step_4.pt").read_bytes() == good
    assert load_checkpoint(str(run / "hatching_step_2.pt"))["step"] == 2
    (run / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(str(run / "garbage.pt"))


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tmp_path):
    sets = ["monitor.log_freq=1", "monitor.save_freq=1000"]
    cmd = [sys.executable, "-m", "bdh.train", "--device", "cpu"] + run_args(tmp_path, iters=400, sets=sets)
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    (saved,) = (tmp_path / "run").glob("hatching_step_*.pt")
    step = load_checkpoint(str(saved))["step"]
    assert 2 <= step < 400 and f"interrupted at step {step}; saved {saved}; continue with: " in err
    command = shlex.split(err.split("continue with: ")[1].splitlines()[0])
    assert command == ["python", "-m", "bdh.train", "--resume", str(saved)]  # the run's config and folder are the checkpoint's
    assert main(command[3:] + ["--max-iters", str(step + 2)]) == 0  # (only fewer steps than the 400)
    assert load_checkpoint(str(tmp_path / "run" / "hatching_final.pt"))["step"] == step + 2
    assert [r["step"] for r in rows(tmp_path / "run" / "metrics.jsonl")] == list(range(1, step + 3))


def test_resume_auto_says_where_it_looked(tmp_path, capsys):
    assert main(["--log-dir", str(tmp_path), "--resume", "auto", "--dry-run"]) == 0
    assert (f"--resume auto: no checkpoint in {tmp_path / 'tiny'} (<log-dir>/<name>, and without --name the name "
            "is the config's, tiny: give the run's --name, or --resume its checkpoint); starting a fresh run"
            in capsys.readouterr().out)


SLOW_INTERRUPT_SAVE = textwrap.dedent("""
    import sys, time, torch
    import bdh.train
    real_save = torch.save
    def slow_save(obj, f):  # the checkpoint of a stop (hatching_step_N.pt: save_freq is out of reach) is slow
        real_save(obj, f)
        if ".hatching_step_" in f.name:
            f.flush()
            print("WRITING", flush=True)
            time.sleep(60)
    torch.save = slow_save
    sys.exit(bdh.train.main(sys.argv[1:]))
""")


def test_a_second_ctrl_c_during_the_interrupt_checkpoint_stops_quietly(tmp_path):
    sets = ["monitor.log_freq=1", "monitor.save_freq=1000"]
    cmd = [sys.executable, "-c", SLOW_INTERRUPT_SAVE, "--device", "cpu"] + run_args(tmp_path, iters=400, sets=sets)
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    while proc.poll() is None and not (metrics.exists() and "train_loss" in metrics.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    for line in proc.stdout:  # the progress lines, then the write of the checkpoint
        if line.strip() == "WRITING":
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "interrupted: stopped at once, without a checkpoint of this step" in err and "Traceback" not in err
    assert not list((tmp_path / "run").glob("*hatching_step_*"))  # neither the checkpoint nor its temp file


def test_resume_takes_the_configs_optimizer_settings(tmp_path, capsys):
    assert main(run_args(tmp_path, iters=4, sets=["monitor.log_freq=1"])) == 0
    changed = ["monitor.log_freq=1", "training.learning_rate=0.5", "training.beta1=0.5"]
    capsys.readouterr()
    assert main(run_args(tmp_path, "--resume", "auto", "--dry-run", iters=6, sets=changed)) == 0
    said = capsys.readouterr().out
    assert said.count("differ from the checkpoint's: training.beta1: 0.9 -> 0.5; training.learning_rate:") == 1
    assert main(run_args(tmp_path, "--resume", "auto", iters=6, sets=changed)) == 0
    said = capsys.readouterr().out
    assert said.count("differ from the checkpoint's: training.beta1: 0.9 -> 0.5; training.learning_rate:") == 1
    cfg = load_config("tiny", [*MICRO, "training.learning_rate=0.5", "training.beta1=0.5"])
    cfg.training.max_iters = 6  # --set applies after --max-iters scales the warmup: MICRO's warmup stays
    row = {r["step"]: r for r in rows(tmp_path / "run" / "metrics.jsonl")}[5]
    assert row["learning_rate"] == pytest.approx(0.5 * train_module.lr_lambda(cfg)(4))


def test_a_resumed_run_logs_each_step_once(tmp_path):
    sets = ["monitor.log_freq=1", "monitor.save_freq=2"]
    assert main(run_args(tmp_path, iters=4, sets=sets)) == 0
    run = tmp_path / "run"
    for later in ("hatching_step_4.pt", "hatching_final.pt", "hatching_best.pt"):
        (run / later).unlink()  # as if killed after logging step 4 but before saving it
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train_loss": 1.0')  # and a half-written row
    assert main(run_args(tmp_path, "--resume", "auto", iters=4, sets=sets)) == 0
    assert [r["step"] for r in rows(run / "metrics.jsonl")] == [1, 2, 3, 4]
    assert main(run_args(tmp_path, "--resume", "auto", iters=4, sets=sets)) == 1  # at max_iters: nothing to do


def test_a_fresh_run_keeps_the_previous_runs_logs(tmp_path):
    assert main(run_args(tmp_path, iters=2)) == 0
    run = tmp_path / "run"
    first = rows(run / "metrics.jsonl")
    assert main(run_args(tmp_path, iters=2)) == 0  # no --resume: starts over in the same directory
    (previous,) = [p for p in run.iterdir() if p.name.startswith("previous-")]
    assert rows(previous / "metrics.jsonl") == first
    assert load_checkpoint(str(previous / "hatching_final.pt"))["step"] == 2  # its checkpoints went along
    assert {r["step"] for r in rows(run / "metrics.jsonl")} == {r["step"] for r in first}


def test_resume_refuses_a_config_with_another_model(tmp_path, capsys):
    assert main(run_args(tmp_path, iters=2)) == 0
    assert main(run_args(tmp_path, "--resume", "auto", iters=4, sets=["model.n_layer=3"])) == 1
    assert "the checkpoint's model differs from the config (checkpoint -> config): model.n_layer: 2 -> 3" \
        in capsys.readouterr().err


def test_train_from_python_runs_and_resumes_from_a_path(tmp_path):
    """The Python form of the CLI: train(cfg, run_dir), then train(..., resume_from=path) continues."""
    cfg = load_config("tiny", [*MICRO, "training.max_iters=2"])
    run = tmp_path / "py"
    assert train_module.train(cfg, str(run))["step"] == 2
    longer = load_config("tiny", [*MICRO, "training.max_iters=3"])
    assert train_module.train(longer, str(run), resume_from=str(run / "hatching_final.pt"))["step"] == 3
    assert [r["step"] for r in rows(run / "metrics.jsonl")] == [1, 2, 3]
    with pytest.raises(CheckpointError, match="model.n_layer: 2 -> 3"):
        train_module.train(load_config("tiny", [*MICRO, "model.n_layer=3", "training.max_iters=9"]), str(run),
                           resume_from=str(run / "hatching_final.pt"))
    with pytest.raises(ConfigError, match="nothing left to train"):
        train_module.train(longer, str(run), resume_from=str(run / "hatching_final.pt"))
    with pytest.raises(ConfigError, match="training.dtype: 'float16'"):
        train_module.train(cfg, str(tmp_path / "other"), dtype="float16")
    cfg.training.max_iters = 0  # changed in Python: checked as a config file would be
    with pytest.raises(ConfigError, match="training.max_iters: must be >= 1"):
        train_module.train(cfg, tmp_path / "other")
    with pytest.raises(TypeError, match="cfg must be a bdh.config.Config"):
        train_module.train({"training": {}}, tmp_path / "other")
    with pytest.raises(TypeError, match="resume_from must be a checkpoint path"):
        train_module.train(longer, tmp_path / "other", resume_from=3)


def test_resume_from_a_path_continues_in_that_runs_folder(tmp_path):
    assert main(run_args(tmp_path, iters=2, name="first")) == 0
    ckpt = tmp_path / "first" / "hatching_final.pt"
    argv = ["--log-dir", str(tmp_path), "--resume", str(ckpt), "--max-iters", "3"]
    assert main(argv) == 0
    assert load_checkpoint(str(ckpt))["step"] == 3 and not (tmp_path / "tiny").exists()


def test_processes_started_by_torchrun_train_together(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it, without --distributed
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit, match="--distributed needs torchrun"):
        main(["--dry-run"])


def test_resume_auto_takes_the_best_checkpoint_when_it_is_the_only_one(tmp_path, capsys):
    assert main(run_args(tmp_path, iters=4, sets=["monitor.save_freq=100"])) == 0
    run = tmp_path / "run"
    (run / "hatching_final.pt").unlink()
    assert sorted(p.name for p in run.glob("hatching_*.pt")) == ["hatching_best.pt"]
    assert list_checkpoints(str(run)) == [str(run / "hatching_best.pt")]
    assert main(run_args(tmp_path, "--resume", "auto", iters=6, sets=["monitor.save_freq=100"])) == 0
    assert "--resume auto: " + str(run / "hatching_best.pt") in capsys.readouterr().out


def test_a_missing_or_empty_data_dir_is_a_config_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for data_dir in (tmp_path / "missing", tmp_path / "empty"):
        assert main(run_args(tmp_path, iters=2, sets=[f"data.dir={data_dir}"])) == 1
        assert f"error: data.dir={str(data_dir)!r}" in capsys.readouterr().err


def two_task_data(tmp_path):
    """A data folder of the starter set's text_completion and chain_of_thought only: stage 1's tasks."""
    for task in ("text_completion", "chain_of_thought"):
        shutil.copytree(os.path.join(STARTER_DIR, task), tmp_path / "data" / task)
    return tmp_path / "data"


def test_a_task_that_a_later_stage_needs_and_the_data_lacks_is_a_config_error_up_front(tmp_path, capsys):
    data = two_task_data(tmp_path)
    assert main(run_args(tmp_path, iters=8, sets=[f"data.dir={data}"])) == 1
    assert (f"error: data.dir={str(data)!r}: stage 2/4 function_calling (steps 3-4) draws tasks without train "
            "records: function_call (weight 0.4) (tasks with records: chain_of_thought, text_completion)"
            in capsys.readouterr().err)
    assert not list((tmp_path / "run").iterdir())  # before any training: no logs, no checkpoint


def test_resume_refuses_another_seed_and_data_that_lacks_the_checkpoints_tasks(tmp_path, capsys):
    assert main(run_args(tmp_path, iters=2)) == 0
    logged = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert main(run_args(tmp_path, "--resume", "auto", iters=4, sets=["training.seed=7"])) == 1
    assert ("error: training.seed: the checkpoint's run has seed 1337, the config 7; a resumed run continues the "
            "same data order (resume with training.seed=1337") in capsys.readouterr().err
    stage_1_only = "curriculum.stages=[{iters: 1, weights: {text_completion: 1}}]"
    assert main(run_args(tmp_path, "--resume", "auto", iters=4,
                         sets=[f"data.dir={two_task_data(tmp_path)}", stage_1_only])) == 1
    err = capsys.readouterr().err
    assert "error: the checkpoint's data position does not fit this run's data (" in err
    assert "resume with the checkpoint's data.dir, null (the bundled starter set), or start a fresh run" in err
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == logged


def test_resume_from_a_runs_folder_takes_its_newest_checkpoint(tmp_path, capsys):
    assert main(run_args(tmp_path, iters=2)) == 0
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match=f"checkpoint {str(run)!r} is a directory, not a checkpoint file "
                                              f"\\(its newest checkpoint: {run / 'hatching_final.pt'}\\)"):
        load_checkpoint(str(run))
    assert main(["--resume", str(run), "--max-iters", "3"]) == 0
    assert load_checkpoint(str(run / "hatching_final.pt"))["step"] == 3
    (tmp_path / "empty").mkdir()
    assert main(["--resume", str(tmp_path / "empty"), "--max-iters", "3"]) == 1
    assert f"error: --resume {str(tmp_path / 'empty')!r}: a directory without checkpoints" in capsys.readouterr().err


KILL_DURING_WRITE = textwrap.dedent("""
    import sys, time, torch
    import bdh.checkpoint as t
    path = sys.argv[1]
    t.save_checkpoint(path, {"step": 1, "payload": torch.zeros(1000)})
    real_save = torch.save
    def slow_save(obj, f):
        real_save(obj, f)
        f.flush()
        print("WRITING", flush=True)
        time.sleep(60)
    torch.save = slow_save
    t.save_checkpoint(path, {"step": 2, "payload": torch.ones(1000)})
""")


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = tmp_path / "hatching_step_1.pt"
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_WRITE, str(path)], stdout=subprocess.PIPE,
                            text=True, env=subprocess_env())
    assert proc.stdout.readline().strip() == "WRITING"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["step"] == 1 and ckpt["payload"].sum() == 0
    leftovers = [n for n in os.listdir(tmp_path) if n != path.name]
    assert len(leftovers) == 1 and leftovers[0].startswith(".hatching_step_1.pt.tmp.")
    assert list_checkpoints(str(tmp_path)) == [str(path)]  # the temp file is never a candidate


def test_save_checkpoint_replaces_atomically(tmp_path):
    path = str(tmp_path / "x.pt")
    save_checkpoint(path, {"a": torch.ones(3)})
    save_checkpoint(path, {"a": torch.zeros(3)})
    assert torch.load(path, weights_only=True)["a"].sum() == 0 and os.listdir(tmp_path) == ["x.pt"]


@pytest.mark.slow
def test_resume_after_sigkill_reproduces_the_uninterrupted_losses_exactly(tmp_path):
    """N steps straight == N/2 steps, SIGKILL, --resume auto for the rest: bit-identical losses (CPU fp32)."""
    n = 16
    sets = ["monitor.log_freq=1", "monitor.save_freq=8", "monitor.eval_freq=5", "model.dropout=0.1",
            "training.max_seq_len=128", "training.batch_size=8"]
    cmd = [sys.executable, "-m", "bdh.train", "--device", "cpu"]
    straight = tmp_path / "straight"
    subprocess.run(cmd + run_args(straight, iters=n, sets=sets), check=True, env=subprocess_env(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + run_args(killed, iters=n, sets=sets), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = killed / "run" / "hatching_step_8.pt"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "run" / "hatching_final.pt").exists()
    before = {r["step"] for r in rows(killed / "run" / "metrics.jsonl")}
    assert 8 in before and n not in before

    subprocess.run(cmd + run_args(killed, "--resume", "auto", iters=n, sets=sets), check=True,
                   env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    expected = {r["step"]: r for r in rows(straight / "run" / "metrics.jsonl")}
    resumed = {}
    for r in rows(killed / "run" / "metrics.jsonl"):  # a killed run's rows after step 8 are redone
        resumed[r["step"]] = r
    assert sorted(resumed) == sorted(expected) == list(range(1, n + 1))
    for step in expected:
        for key in ("train_loss", "grad_norm", "firing_rate", "val_loss", "weight_norm"):
            assert resumed[step].get(key) == expected[step].get(key), (step, key)
    a = torch.load(straight / "run" / "hatching_final.pt", weights_only=True)["model_state"]
    b = torch.load(killed / "run" / "hatching_final.pt", weights_only=True)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_default_command_runs_end_to_end(tmp_path):
    """`python -m bdh.train --max-iters 40`: the tiny config on the starter data, all four stages."""
    proc = subprocess.run([sys.executable, "-m", "bdh.train", "--max-iters", "40"], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = rows(tmp_path / "runs" / "tiny" / "metrics.jsonl")
    assert {r["stage"] for r in got} == {1, 2, 3, 4}
    assert got[-1]["step"] == 40 and got[-1]["train_loss"] < got[0]["train_loss"]
    assert (tmp_path / "runs" / "tiny" / "hatching_final.pt").exists()
    assert "stage 4/4 multi_task" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(tmp_path):
    """torchrun --nproc_per_node=2 (gloo, CPU) == one process with the same global batch, within tolerance."""
    sets = ["monitor.log_freq=1", "training.batch_size=8", "monitor.eval_freq=100"]
    single = subprocess.run([sys.executable, "-m", "bdh.train", "--device", "cpu"]
                            + run_args(tmp_path, name="single", iters=4, sets=sets),
                            env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "bdh.train", "--distributed"] + run_args(tmp_path, name="ddp", iters=4, sets=sets),
                         env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = rows(tmp_path / "single" / "metrics.jsonl")
    b = rows(tmp_path / "ddp" / "metrics.jsonl")  # rank 0 alone writes
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=2e-3)
        assert rb["firing_rate"] == pytest.approx(ra["firing_rate"], rel=2e-2)
    assert b[0]["train_loss"] == pytest.approx(a[0]["train_loss"], rel=1e-5)  # same weights, same records
    ckpts = [n for n in os.listdir(tmp_path / "ddp") if n.endswith(".pt")]
    assert "hatching_final.pt" in ckpts


# ------------------------------------------------------------------------------------------- memory
class LiveBytes:
    """Peak bytes of live tensor storages created by the ops run inside it (a dispatch mode)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                torch.utils._pytree.tree_map(tracker.track, out)
                return out

        self.mode, self.live, self.peak, self.seen = Mode(), 0, 0, {}

    def track(self, t):
        import weakref

        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key and key not in self.seen:
                self.seen[key] = storage.nbytes()
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self.free, key)
        return t

    def free(self, key):
        self.live -= self.seen.pop(key, 0)


@pytest.mark.parametrize("overrides", [[], ["training.activation_checkpointing=true"],
                                       ["model.dropout=0.1", "training.max_seq_len=256"]])
def test_memory_prediction_is_within_15_percent_of_a_measured_step(overrides):
    """On CPU fp32: predicted peak vs the peak of live tensor bytes over a training step (+ params, AdamW)."""
    from bdh.model import Hatching
    from bdh.train import predict_peak_bytes, token_losses

    cfg = load_config("tiny", ["model.n_layer=2", "model.mlp_internal_dim_multiplier=16", "training.batch_size=4",
                               "training.max_seq_len=128"] + overrides)
    model = Hatching(cfg)
    model.activation_checkpointing = cfg.training.activation_checkpointing
    opt = torch.optim.AdamW(model.parameters())
    idx = torch.randint(0, 256, (4, cfg.training.max_seq_len))
    for _ in range(2):  # the second step, when AdamW's moments exist
        tracker = LiveBytes()
        with tracker.mode:
            out = model(idx)
            (token_losses(out.logits, idx).mean() + model.sparsity_loss(out.rates)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        del out
    measured = tracker.peak + 3 * 4 * sum(p.numel() for p in model.parameters())  # params + 2 moments
    predicted = predict_peak_bytes(cfg, 4, torch.float32)
    assert 0.85 < predicted / measured < 1.15, (predicted, measured)
