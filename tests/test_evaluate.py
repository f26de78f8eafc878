"""Checkpoint evaluation: the report's losses and metrics, the trainer's quick eval, the best-checkpoint
score, and the CLI's output and errors."""
import gzip
import json
import math

import pytest
import torch
import torch.nn.functional as F

from bdh.config import load_config
from bdh.data import TASKS, Record, collate, load_splits
from bdh.evaluate import checkpoint_score, evaluate_checkpoint, finite_or_none, main, quick_eval, val_losses

from train_cases import MICRO, small_model


@pytest.fixture(scope="module")
def val_records():
    return {t: s.val for t, s in load_splits().items()}


def test_report_losses_are_the_mean_target_byte_loss(val_records):
    model = small_model().eval()
    cfg = model.cfg
    record = val_records["function_call"][0]
    report = evaluate_checkpoint(model, cfg, {"function_call": [record]}, max_samples=0)
    batch = collate([record], cfg.training.max_seq_len)
    logits = model(batch["inputs"]).logits
    mask = batch["loss_mask"].bool()
    expected = F.cross_entropy(logits[mask], batch["targets"][mask]).item()
    task = report["tasks"]["function_call"]
    assert task["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert task["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert report["samples"] == [] and report["overall"] is None


def test_report_has_every_task_with_losses_and_metrics(val_records):
    model = small_model().eval()
    report = evaluate_checkpoint(model, model.cfg, val_records, max_samples=1, max_loss_records=2, max_new_tokens=4)
    assert set(report["tasks"]) == set(TASKS)
    for task, metrics in report["tasks"].items():
        assert metrics["perplexity"] == pytest.approx(math.exp(metrics["val_loss"]))
    assert report["val_loss"] == pytest.approx(sum(m["val_loss"] for m in report["tasks"].values()) / len(TASKS))
    assert {"function_format_accuracy", "argument_accuracy", "bash_format_accuracy", "command_validity",
            "multi_step_accuracy", "coherence"} <= set(report["metrics"])
    for m in report["metrics"].values():
        assert 0 <= m["low"] <= m["value"] <= m["high"] <= 1 and m["n"] >= 1
    assert 0 <= report["overall"] <= 1
    assert all(len(s["output"].encode()) <= 4 * 3 for s in report["samples"])  # 4 bytes, replacement chars at most


def test_quick_eval_keeps_the_training_run_unchanged(val_records):
    cfg = load_config("tiny", MICRO)
    model = small_model(*MICRO).train()
    rng = torch.get_rng_state()
    metrics = quick_eval(model, val_records, cfg)
    assert torch.equal(torch.get_rng_state(), rng)  # greedy: no random draws
    assert model.training
    assert "overall" in metrics and "function_format_accuracy" in metrics
    assert quick_eval(model, val_records, load_config("tiny", MICRO + ["monitor.eval_samples=0"])) == {}
    assert "overall" not in quick_eval(model, {"tool_use": []}, cfg)  # nothing scored: no null in the log


def test_no_val_bytes_is_no_val_loss_not_a_zero_one():
    assert val_losses(small_model(), []) == {}


def test_checkpoint_score_orders_by_overall_then_val_loss():
    evals = [{"val_loss": 1.0, "overall": None}, {"val_loss": 3.0, "overall": 0.0},
             {"val_loss": 2.0, "overall": 0.0}, {"val_loss": 9.0, "overall": 0.5}]
    assert sorted(evals, key=lambda m: checkpoint_score(m, "overall")) == evals
    by_loss = sorted(evals, key=lambda m: checkpoint_score(m, "val_loss"))
    assert [m["val_loss"] for m in by_loss] == [9.0, 3.0, 2.0, 1.0]


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_prints_the_table_and_writes_the_json(micro_checkpoint, tmp_path, capsys):
    out = tmp_path / "report.json"
    argv = ["--checkpoint", micro_checkpoint, "--tasks", "function_call", "bash_command", "--max-samples", "2",
            "--max-loss-records", "3", "--max-new-tokens", "6", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "(step 4)" in printed and "overall" in printed and "function_format_accuracy" in printed
    report = json.loads(out.read_text())
    assert set(report["tasks"]) == {"function_call", "bash_command"}
    assert report["checkpoint"]["step"] == 4
    assert report["settings"] == {"max_samples": 2, "max_loss_records": 3, "max_new_tokens": 6,
                                  "prompt_bytes": 58, "decoding": "greedy"}  # max(64 - 6, 32)
    assert len(report["samples"]) == 4
    assert report["perplexity"] == pytest.approx(math.exp(report["val_loss"]))


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"), ("corrupt", "truncated or corrupt"), ("max_samples", "--max-samples"),
    ("prompt_bytes", "--prompt-bytes"), ("device", "--device"), ("data_dir", "nowhere"),
    ("out_folder", "--out: the folder of"), ("out_is_a_folder", "is a directory"),
])
def test_cli_errors_are_clear(micro_checkpoint, tmp_path, capsys, case, match):
    (tmp_path / "bad.pt").write_bytes(open(micro_checkpoint, "rb").read()[:1000])
    argv = {"missing": ["--checkpoint", str(tmp_path / "nope.pt")],
            "corrupt": ["--checkpoint", str(tmp_path / "bad.pt")],
            "max_samples": ["--checkpoint", micro_checkpoint, "--max-samples", "-1"],
            "prompt_bytes": ["--checkpoint", micro_checkpoint, "--prompt-bytes", "0"],
            "device": ["--checkpoint", micro_checkpoint, "--device", "gpu"],
            "data_dir": ["--checkpoint", micro_checkpoint, "--data-dir", str(tmp_path / "nowhere")],
            "out_folder": ["--checkpoint", micro_checkpoint, "--out", str(tmp_path / "no" / "eval.json")],
            "out_is_a_folder": ["--checkpoint", micro_checkpoint, "--out", str(tmp_path)]}[case]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err


@pytest.mark.parametrize("data", [b"not gzip", gzip.compress(b'{"id": "x"}\n' * 100)[:40]], ids=["not_gzip", "truncated"])
def test_cli_names_a_damaged_gzip_split(micro_checkpoint, tmp_path, capsys, data):
    folder = tmp_path / "data" / "bash_command"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text(Record("b:1", "bash_command", "t", "User: hi\nAssistant: ", "```bash\nls\n```").to_json())
    (folder / "val.jsonl.gz").write_bytes(data)
    assert main(["--checkpoint", micro_checkpoint, "--data-dir", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{folder / 'val.jsonl.gz'}: truncated or not gzip data" in err


@pytest.mark.parametrize("key, value, kind", [("model_state", "weights", "str"), ("step", "4", "str"),
                                              ("step", True, "bool"), ("config", [1], "list")])
def test_cli_names_a_checkpoint_field_of_the_wrong_type(micro_checkpoint, tmp_path, capsys, key, value, kind):
    ckpt = torch.load(micro_checkpoint, weights_only=True)
    ckpt[key] = value
    torch.save(ckpt, tmp_path / "odd.pt")
    assert main(["--checkpoint", str(tmp_path / "odd.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"({key} is a {kind}, not a" in err


def test_the_report_has_no_infinity_or_nan_for_json():
    report = {"perplexity": math.inf, "tasks": {"a": {"perplexity": float("nan"), "n": 3}}, "samples": [1.5, -math.inf]}
    assert json.dumps(finite_or_none(report), allow_nan=False) == (
        '{"perplexity": null, "tasks": {"a": {"perplexity": null, "n": 3}}, "samples": [1.5, null]}')
