"""python -m bdh.monitor: finding the run, reading a growing metrics.jsonl, --once, --export, --plot,
and the live view."""
import csv
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bdh.monitor import (EXIT_CRITICAL, EXIT_ERROR, EXIT_OK, MetricsReader, MonitorError, find_metrics, follow,
                         layer_rate_keys, main)
from metrics_cases import healthy_rows, write_metrics

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_dir(tmp_path):
    rows = healthy_rows(1000, log_every=10, stage_at=600)
    write_metrics(tmp_path / "runs" / "hatching_v1" / "metrics.jsonl", rows)
    return tmp_path / "runs" / "hatching_v1"


# -- finding the metrics file


def test_finds_the_run_from_its_folder_or_its_parent(run_dir):
    assert find_metrics(run_dir) == (run_dir / "metrics.jsonl", None)
    assert find_metrics(run_dir.parent) == (run_dir / "metrics.jsonl", None)


def test_several_runs_follow_the_newest_and_say_so(run_dir):
    newer = write_metrics(run_dir.parent / "hatching_v2" / "metrics.jsonl", healthy_rows(100, log_every=10))
    os.utime(run_dir / "metrics.jsonl", (time.time() - 100, time.time() - 100))
    path, note = find_metrics(run_dir.parent)
    assert path == newer
    assert "2 runs" in note and "hatching_v2" in note and "hatching_v1" in note


def test_missing_log_dir_and_missing_metrics_are_clear_errors(tmp_path, capsys):
    with pytest.raises(MonitorError, match="does not exist"):
        find_metrics(tmp_path / "nope")
    (tmp_path / "empty" / "run").mkdir(parents=True)
    with pytest.raises(MonitorError, match="no metrics.jsonl in"):
        find_metrics(tmp_path / "empty")
    assert main(["--log-dir", str(tmp_path / "nope"), "--once"]) == EXIT_ERROR
    assert "does not exist" in capsys.readouterr().err
    assert main(["--log-dir", str(tmp_path / "empty"), "--export", str(tmp_path / "x.csv")]) == EXIT_ERROR
    assert "no metrics.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


# -- reading a file that is being written


def test_reader_keeps_a_partial_last_line_until_it_is_complete(tmp_path):
    path = tmp_path / "metrics.jsonl"
    line = json.dumps({"step": 20, "train_loss": 4.0})
    write_metrics(path, [{"step": 10, "train_loss": 5.0}], partial_tail=line[:11])
    with MetricsReader(path) as reader:
        assert [r["step"] for r in reader.read()] == [10]
        assert reader.read() == []
        with open(path, "a") as f:
            f.write(line[11:] + "\nnot json\n" + json.dumps([1, 2]) + "\n" + json.dumps({"step": 30}) + "\n")
        assert [r["step"] for r in reader.read()] == [20, 30]
        assert reader.bad_lines == 2 and not reader.restarted


@pytest.mark.parametrize("step", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_row_whose_step_is_not_finite_is_skipped_and_counted(tmp_path, capsys, step):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 100, "train_loss": 3.0}) + "\n"
                    + f'{{"step": {step}, "train_loss": 2.0}}\n' + json.dumps({"step": 10**30}) + "\n")
    with MetricsReader(path) as reader:
        assert [r["step"] for r in reader.read()] == [100, 10**30]  # a huge int is still a step
        assert reader.bad_lines == 1
    assert main(["--log-dir", str(tmp_path), "--once"]) == EXIT_OK
    assert "(1 unreadable line(s) skipped)" in capsys.readouterr().out


def test_reader_starts_again_when_the_file_is_rewritten(tmp_path):
    path = write_metrics(tmp_path / "metrics.jsonl", healthy_rows(100, log_every=10))
    with MetricsReader(path) as reader:
        assert len(reader.read()) == 11
        write_metrics(path, [{"step": 0, "train_loss": 5.5}])
        assert [r["step"] for r in reader.read()] == [0] and reader.restarted


def test_reader_starts_again_when_the_file_is_replaced_by_a_longer_one(tmp_path):
    """A resumed run replaces metrics.jsonl (atomically) without the rows after its checkpoint, then logs
    them again: by the next read the file may have grown past the bytes already read."""
    path = tmp_path / "metrics.jsonl"
    write_metrics(path, [{"step": s, "train_loss": 5.0} for s in (1, 2, 3)])
    with MetricsReader(path) as reader:
        assert [r["train_loss"] for r in reader.read()] == [5.0] * 3
        replacement = write_metrics(tmp_path / "new.jsonl", [{"step": s, "train_loss": 4.0 - s / 10}
                                                             for s in (1, 2, 3, 4, 5)])
        os.replace(replacement, path)
        assert [(r["step"], r["train_loss"]) for r in reader.read()] == [(s, 4.0 - s / 10) for s in (1, 2, 3, 4, 5)]
        assert reader.restarted


def test_a_resumed_trainer_run_restarts_the_reader(tmp_path):
    """The trainer's own rewrite (a resume dropping the rows after its checkpoint) is seen as one."""
    from bdh.train import drop_rows_after

    path = write_metrics(tmp_path / "metrics.jsonl", [{"step": s, "train_loss": 5.0} for s in (1, 2, 3)])
    with MetricsReader(path) as reader:
        assert len(reader.read()) == 3
        drop_rows_after(str(path), 1)
        with open(path, "a") as f:
            f.writelines(json.dumps({"step": s, "train_loss": 1.0, "resumed": True}) + "\n" for s in (2, 3, 4))
        assert [r["step"] for r in reader.read()] == [1, 2, 3, 4] and reader.restarted


# -- --once


def test_once_on_a_healthy_run_exits_0(run_dir, capsys):
    assert main(["--log-dir", str(run_dir), "--once"]) == EXIT_OK
    out = capsys.readouterr().out
    last = healthy_rows(1000, log_every=10, stage_at=600)[-1]
    assert "step 1000" in out and "stage 2 function_calling" in out and "0 active: none" in out
    assert f"train_loss {last['train_loss']:.4g}" in out and f"val_loss {last['val_loss']:.4g} (step 1000)" in out
    assert f"val_loss_function_call {last['val_loss_function_call']:.4g}" in out
    assert f"task_loss_function_call {last['task_loss_function_call']:.4g}" in out
    assert f"firing_rate_layer1 {last['firing_rate_layer1']:.4g}" in out


def test_once_exits_2_while_a_critical_alert_is_active(tmp_path, capsys):
    rows = healthy_rows(1000, log_every=10)
    for row in rows[-5:]:
        row["train_loss"] = 14.0
    write_metrics(tmp_path / "metrics.jsonl", rows)
    assert main(["--log-dir", str(tmp_path), "--once"]) == EXIT_CRITICAL
    out = capsys.readouterr().out
    assert "[CRITICAL] step 960: train_loss 14 > 10 -> Check data, reduce LR" in out
    assert "CRITICAL alert active at step 1000: loss_high (since step 960)" in out


def test_once_exits_0_when_criticals_have_cleared_and_lists_them(tmp_path, capsys):
    rows = healthy_rows(1000, log_every=10)
    rows[30]["train_loss"] = math.nan
    for row in rows[31:]:
        row["nan_count"] = 1
    for row in rows[50:]:
        row["grad_norm"] = 180.0  # a warning still active at the end: not a failure
    write_metrics(tmp_path / "metrics.jsonl", rows)
    assert main(["--log-dir", str(tmp_path), "--once"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "[CRITICAL] step 300: NaN detected: non-finite metrics: train_loss=nan" in out
    assert "step 310: cleared" not in out  # nan_count grows at 310: the NaN event goes on one more row
    assert "[CRITICAL] step 320: cleared: NaN detected" in out
    assert "1 active" in out and "[WARNING] step 500: grad_norm 180 > 100 -> Enable gradient clipping" in out


def test_once_ignores_a_half_written_last_line(run_dir, capsys):
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 1010, "train_loss": 99.0, "grad_')
    assert main(["--log-dir", str(run_dir), "--once"]) == EXIT_OK
    captured = capsys.readouterr()
    assert "step 1000" in captured.out and "incomplete" in captured.err


def test_layer_rates_without_a_number_come_after_the_numbered_layers(tmp_path, capsys):
    row = {"step": 100, "train_loss": 3.0, "firing_rate_layer10": 0.3, "firing_rate_layer_max": 0.4,
           "firing_rate_layer2": 0.2, "firing_rate_layer": 0.5}
    assert layer_rate_keys(row) == ["firing_rate_layer2", "firing_rate_layer10", "firing_rate_layer",
                                    "firing_rate_layer_max"]
    write_metrics(tmp_path / "metrics.jsonl", [row])
    assert main(["--log-dir", str(tmp_path), "--once"]) == EXIT_OK
    assert ("neurons  firing_rate_layer2 0.2   firing_rate_layer10 0.3   firing_rate_layer 0.5   "
            "firing_rate_layer_max 0.4") in capsys.readouterr().out


# -- --export


def _parse(cell):
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell


def test_export_round_trips_every_logged_metric(run_dir, tmp_path, capsys):
    rows = healthy_rows(1000, log_every=10, stage_at=600)
    rows[7]["grad_norm"] = math.inf
    rows[8]["activation_std"] = math.nan
    write_metrics(run_dir / "metrics.jsonl", rows)
    out = tmp_path / "out" / "metrics.csv"
    assert main(["--log-dir", str(run_dir), "--export", str(out)]) == EXIT_OK
    assert f"wrote {len(rows)} rows" in capsys.readouterr().out
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    keys = {k for row in rows for k in row}
    assert set(table[0]) == keys and list(table[0])[0] == "step"
    assert len(table) == len(rows)
    for row, back in zip(rows, table):
        assert {k for k, v in back.items() if v != ""} == set(row)  # absent keys are empty cells
        for key, value in row.items():
            got = _parse(back[key])
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(got)
            else:
                assert got == value and type(got) is type(value), (key, value, back[key])


# -- --plot


def test_plot_writes_a_png_dashboard(run_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["--log-dir", str(run_dir.parent), "--once", "--plot"]) == EXIT_OK
    png = run_dir / "dashboard.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    elsewhere = tmp_path / "dash.png"
    assert main(["--log-dir", str(run_dir), "--export", str(tmp_path / "m.csv"), "--plot", str(elsewhere)]) == EXIT_OK
    assert elsewhere.stat().st_size > 20_000
    assert not list(run_dir.glob(".*.tmp"))


def test_plot_creates_its_folder_and_output_paths_that_cannot_be_written_are_one_line_errors(run_dir, tmp_path,
                                                                                               capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "new" / "folder" / "dash.png"
    assert main(["--log-dir", str(run_dir), "--once", "--plot", str(png)]) == EXIT_OK
    assert png.stat().st_size > 20_000
    capsys.readouterr()
    (tmp_path / "a_file").write_text("")
    for option, path, why in (("--export", tmp_path, f"cannot write {tmp_path}: Is a directory"),
                              ("--plot", tmp_path / "new", f"cannot write {tmp_path / 'new'}: Is a directory"),
                              ("--export", tmp_path / "a_file" / "m.csv", "cannot create the folder of"),
                              ("--plot", tmp_path / "a_file" / "d.png", "cannot create the folder of")):
        assert main(["--log-dir", str(run_dir), "--once", option, str(path)]) == EXIT_ERROR, option
        err = capsys.readouterr().err
        assert err.startswith("python -m bdh.monitor: error: ") and err.count("\n") == 1 and why in err
        assert str(path) in err
    assert not list(tmp_path.glob(".*.tmp"))


# -- the live view


def test_follow_waits_for_the_run_to_start(tmp_path, capsys):
    args = type("Args", (), {"log_dir": str(tmp_path / "not_yet"), "refresh": 0.01, "plot": None})()
    assert follow(args, max_refreshes=3) == EXIT_OK
    assert "waiting: log dir" in capsys.readouterr().err


def _wait_for(condition, timeout=30.0):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_live_view_follows_new_rows_and_alerts(tmp_path):
    rows = healthy_rows(400, log_every=10)
    for row in rows[30:]:
        row["firing_rate"] = 0.8
    path = write_metrics(tmp_path / "run" / "metrics.jsonl", rows[:10])
    png = tmp_path / "run" / "dashboard.png"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "bdh.monitor", "--log-dir", str(tmp_path), "--refresh", "0.1",
                             "--plot"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        assert _wait_for(lambda: "step 90 " in "".join(out) and png.exists())
        first_plot = png.stat().st_mtime_ns
        with open(path, "a") as f:
            for row in rows[10:]:
                f.write(json.dumps(row) + "\n")
            f.write('{"step": 410, "train')  # a row still being written
        assert _wait_for(lambda: "step 400 " in "".join(out))
        assert _wait_for(lambda: png.stat().st_mtime_ns != first_plot)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        reader.join(timeout=10)
    text = "".join(out)
    assert "[WARNING] step 300: firing_rate 0.8 > 0.5 -> Increase sparsity weight" in text
    assert "step 410" not in text


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for words in ("--log-dir", "--plot", "--refresh", "--export", "--once", "Stop training, reduce LR",
                  "Increase sparsity weight", "exit status", "newest"):
        assert words in text


@pytest.mark.parametrize("refresh", ["0", "-1", "nan", "inf", "1e300", "soon"])
def test_bad_option_is_exit_1_not_the_critical_status(capsys, refresh):
    with pytest.raises(SystemExit) as exit_:
        main(["--refresh", refresh])
    assert exit_.value.code == EXIT_ERROR
    assert f"--refresh: must be a number of seconds in (0, 86400], got '{refresh}'" in capsys.readouterr().err


def test_once_shows_the_latest_evals_answer_metrics(tmp_path, capsys):
    rows = healthy_rows(1000, log_every=10, stage_at=600)
    eval_row = next(r for r in rows if r["step"] == 500)
    assert "val_loss" in eval_row
    eval_row.update({"overall": 0.25, "coherence": 0.5, "function_format_accuracy": 0.125, "json_validity": 0.5})
    last_eval = [r for r in rows if "val_loss" in r][-1]
    last_eval.update({"val_perplexity": 40.0, "val_loss_bash_command": 3.5})
    write_metrics(tmp_path / "metrics.jsonl", rows)
    assert main(["--log-dir", str(tmp_path), "--once"]) == EXIT_OK
    out = capsys.readouterr().out
    assert ("answers  overall 0.25   coherence 0.5   function_format_accuracy 0.125   json_validity 0.5   "
            "(step 500)") in out
    (val_line,) = [line for line in out.splitlines() if line.startswith("  val ")]
    assert "val_loss_bash_command 3.5" in val_line and val_line.endswith("val_perplexity 40")
    assert "other" not in out
