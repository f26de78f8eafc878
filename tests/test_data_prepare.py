"""`prepare` end to end (offline), the bundled starter set, splits, and validation on load."""
import contextlib
import gzip
import io
import json
import logging
import os
import subprocess
import sys
from collections import Counter

import pytest

from bdh.data import TASKS, Record, load_splits, normalise, prepare
from bdh.data.prepare import DEFAULT_SOURCES, STARTER_DIR, PrepareError, Splits, cap_splits, split_records
from bdh.data.records import read_records, write_atomic
from bdh.data.sources import SOURCES

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREPARE_MODULE = sys.modules["bdh.data.prepare"]  # bdh.data.prepare, the attribute, is the function


def assert_no_val_prompt_in_train(splits):
    for task, task_splits in splits.items():
        train_prompts = {normalise(r.prompt) for r in task_splits.train}
        assert not any(normalise(r.prompt) in train_prompts for r in task_splits.val), task


def test_starter_set_loads_with_every_task_and_real_sizes():
    splits = load_splits()
    assert set(splits) == set(TASKS)
    for task, task_splits in splits.items():
        assert len(task_splits.train) >= 400 and len(task_splits.val) >= 20, task
        assert all(r.task == task for r in task_splits.train + task_splits.val)
    assert_no_val_prompt_in_train(splits)


def test_starter_set_ships_no_gpl_source_and_credits_each_source():
    with open(os.path.join(STARTER_DIR, "manifest.json")) as f:
        manifest = json.load(f)
    names = {s["name"] for s in manifest["sources"]}
    assert all(SOURCES[name].shippable for name in names)
    assert all(s["licence"] and s["credit"] and "sha256" in s["origin"] for s in manifest["sources"])
    shipped = {r.source for t in load_splits().values() for r in t.train + t.val}
    assert shipped == names


def test_prepare_offline_reads_local_files_and_its_output_loads(tmp_path):
    out = str(tmp_path / "prepared")
    manifest = prepare(out, DEFAULT_SOURCES, local_dir=FIXTURES, offline=True, progress=False)
    assert manifest["unreachable"] == {}  # offline, every hub source falls back to its fixture folder
    origins = {s["name"]: s["origin"] for s in manifest["sources"]}
    assert origins["gsm8k"] == f"local:{os.path.join(FIXTURES, 'gsm8k')}"
    assert all(s["licence"] for s in manifest["sources"])
    splits = load_splits(out)
    assert set(splits) == set(TASKS)
    assert_no_val_prompt_in_train(splits)
    for task, entry in manifest["tasks"].items():
        assert entry["train"] == len(splits[task].train) and len(entry["train_sha256"]) == 64


def test_prepare_names_what_it_could_not_reach(tmp_path):
    manifest = prepare(str(tmp_path / "out"), ["gsm8k", "glaive", "starter"], local_dir=str(tmp_path / "empty"),
                       offline=True, progress=False)
    assert set(manifest["unreachable"]) == {"gsm8k", "glaive"}
    assert "no local files in" in manifest["unreachable"]["glaive"]
    assert set(load_splits(str(tmp_path / "out"))) == set(TASKS)  # the starter set still made every task


def test_max_per_task_caps_each_task(tmp_path):
    manifest = prepare(str(tmp_path / "out"), ["starter"], max_per_task=50, progress=False)
    for entry in manifest["tasks"].values():
        assert entry["train"] + entry["val"] <= 50


@pytest.mark.parametrize("val_fraction", [0.05, 0.2])
def test_a_capped_task_keeps_its_val_split(tmp_path, val_fraction):
    # the starter files hold train first: a cap taken before the split used to leave val empty
    manifest = prepare(str(tmp_path / "out"), ["starter"], max_per_task=400, val_fraction=val_fraction, progress=False)
    for task, entry in manifest["tasks"].items():
        assert entry["train"] + entry["val"] == 400, task
        assert entry["val"] == pytest.approx(400 * val_fraction, abs=1), task
    assert_no_val_prompt_in_train(load_splits(str(tmp_path / "out")))


@pytest.mark.parametrize("limit, val_fraction, train, val", [(1, 0.1, 1, 0), (2, 0.1, 1, 1), (10, 0.1, 9, 1),
                                                             (10, 0.2, 8, 2), (2, 0.9, 1, 1)])
def test_a_small_cap_keeps_a_train_record(limit, val_fraction, train, val):
    capped = cap_splits(Splits(list(range(100)), list(range(100, 108))), limit, val_fraction)
    assert (len(capped.train), len(capped.val)) == (train, val)


def test_cli_prepare_offline_and_help(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = tmp_path / "cli"
    run = subprocess.run([sys.executable, "-m", "bdh.data", "prepare", "--offline", "--no-progress", "--out", str(out),
                          "--local-dir", str(tmp_path / "none"), "--sources", "gsm8k", "starter"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "Could not reach:" in run.stdout and "gsm8k: hub (openai/gsm8k) skipped: offline" in run.stdout
    assert (out / "manifest.json").exists() and (out / "tool_use" / "val.jsonl").exists()
    help_text = subprocess.run([sys.executable, "-m", "bdh.data", "prepare", "--help"], capture_output=True, text=True,
                               env=env).stdout
    assert "--max-per-task" in help_text and "pip install datasets" in help_text
    bad = subprocess.run([sys.executable, "-m", "bdh.data", "prepare", "--sources", "nope"], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "unknown ['nope']" in bad.stderr


def test_split_keeps_groups_together_and_drops_duplicates():
    records = [Record(f"r{i}", "tool_use", "t", f"User: step {i}\nAssistant: ", "ok", group=f"conv{i // 3}") for i in range(300)]
    records.append(records[0])
    dropped = Counter()
    splits = split_records(records, 0.2, dropped)
    assert dropped["duplicate"] == 1
    val_groups = {r.group for r in splits.val}
    assert val_groups and not val_groups & {r.group for r in splits.train}
    assert all(sum(r.group == g for r in splits.val) == 3 for g in val_groups)


def test_split_never_leaves_a_val_prompt_in_train():
    # the same prompt in two groups: whichever group lands in val, the train copy is dropped
    records = [Record(f"a{i}", "text_completion", "t", f"User: Prompt {i}\nAssistant: ", "a", group=f"ga{i}") for i in range(200)]
    records += [Record(f"b{i}", "text_completion", "t", f"user:   prompt {i}\nAssistant: ", "b", group=f"gb{i}") for i in range(200)]
    dropped = Counter()
    splits = split_records(records, 0.3, dropped)
    assert dropped["prompt_in_val"] > 0
    assert_no_val_prompt_in_train({"text_completion": splits})


def test_validation_on_load_skips_and_counts_bad_lines(tmp_path, caplog):
    good = Record("ok:1", "function_call", "test", "User: hi\nAssistant: ", '<function_call>{"name": "f", "arguments": {}}</function_call>')
    lines = [
        good.to_json(),
        '{"id": "broken", "task": ',                                                          # malformed JSON
        json.dumps({"id": "x", "task": "bash_command", "source": "t", "prompt": "p"}),        # no target field
        Record("e:1", "bash_command", "t", "User: hi\nAssistant: ", "  ").to_json(),           # empty target
        Record("f:1", "function_call", "t", "User: hi\nAssistant: ", "<function_call>{name: f}</function_call>").to_json(),
        Record("f:2", "function_call", "t", "User: hi\nAssistant: ", '<function_call>{"name": "f"}').to_json(),
        Record("l:1", "text_completion", "t", "User: hi\nAssistant: ", "x" * 9000).to_json(),  # too long
        Record("u:1", "poetry", "t", "User: hi\nAssistant: ", "x").to_json(),                  # unknown task
    ]
    for task in TASKS:
        for split in ("train", "val"):
            write_atomic(str(tmp_path / task / f"{split}.jsonl"), "\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="bdh.data"):
        splits = load_splits(str(tmp_path))
    assert [r.id for r in splits["function_call"].train] == ["ok:1"]
    assert "skipped 78 invalid records" in caplog.text
    for reason in ("malformed_json: 10", "missing_field: 10", "empty_target: 10", "invalid_function_call: 20",
                   "too_long: 10", "unknown_task: 10", "wrong_task: 8"):  # ok:1 in the 8 other tasks' files
        assert reason in caplog.text
    skipped = Counter()
    list(read_records(str(tmp_path / "tool_use" / "train.jsonl"), skipped, max_bytes=20000))
    assert "too_long" not in skipped  # the limit is the caller's


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "sub" / "file.jsonl"
    write_atomic(str(path), "old\n")
    write_atomic(str(path), "new\n")
    assert path.read_text() == "new\n" and os.listdir(path.parent) == ["file.jsonl"]
    write_atomic(str(tmp_path / "file.jsonl.gz"), "zipped\n")
    skipped = Counter()
    assert list(read_records(str(tmp_path / "file.jsonl.gz"), skipped)) == [] and skipped == {"malformed_json": 1}


def test_load_splits_on_a_missing_directory_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m bdh.data prepare"):
        load_splits(str(tmp_path / "missing"))


def snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


def test_preparing_again_replaces_the_output_and_loads_only_what_it_wrote(tmp_path):
    out = str(tmp_path / "out")
    prepare(out, ["starter"], progress=False)
    manifest = prepare(out, ["gsm8k"], local_dir=FIXTURES, offline=True, progress=False)
    assert sorted(os.listdir(out)) == ["chain_of_thought", "manifest.json"] == sorted([*manifest["tasks"], "manifest.json"])
    assert set(load_splits(out)) == {"chain_of_thought"}
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary folders left beside it


def test_load_splits_reads_the_tasks_the_manifest_lists(tmp_path):
    out = str(tmp_path / "out")
    prepare(out, ["starter"], max_per_task=20, progress=False)
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    del manifest["tasks"]["tool_use"]  # as an older `prepare` left it: a folder its manifest does not list
    write_atomic(os.path.join(out, "manifest.json"), json.dumps(manifest))
    assert set(load_splits(out)) == set(TASKS) - {"tool_use"}
    manifest["tasks"]["tool_use"] = {}
    os.remove(os.path.join(out, "bash_command", "val.jsonl"))
    write_atomic(os.path.join(out, "manifest.json"), json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match="lists task 'bash_command'"):
        load_splits(out)


def test_a_failed_prepare_leaves_the_previous_output_as_it_was(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    prepare(out, ["starter"], max_per_task=20, progress=False)
    before = snapshot(out)
    calls = []

    def failing_write(path, text):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", path)
        write_atomic(path, text)

    monkeypatch.setattr(PREPARE_MODULE, "write_atomic", failing_write)
    with pytest.raises(OSError, match="No space left"):
        prepare(out, ["starter"], max_per_task=30, progress=False)
    assert snapshot(out) == before and sorted(os.listdir(tmp_path)) == ["out"]


def test_prepare_refuses_to_replace_what_is_not_a_prepared_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "tool_use").write_text("my file")
    with pytest.raises(ValueError, match="not empty and has no manifest.json"):
        prepare(str(tmp_path / "mine"), ["starter"], progress=False)
    assert (tmp_path / "mine" / "tool_use").read_text() == "my file"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        prepare(str(tmp_path / "file"), ["starter"], progress=False)


@pytest.mark.parametrize("option, value, message", [
    ("max_bytes", -1, "max_bytes must be >= 1, got -1"),
    ("max_bytes", 0, "max_bytes must be >= 1, got 0"),
    ("val_fraction", 1.5, r"val_fraction must be in \(0, 1\), got 1.5"),
    ("val_fraction", 0.0, r"val_fraction must be in \(0, 1\), got 0.0"),
    ("val_fraction", float("nan"), r"val_fraction must be in \(0, 1\)"),
])
def test_bad_options_fail_before_any_data_is_read(tmp_path, monkeypatch, option, value, message):
    def read_nothing(*args):
        raise AssertionError("data was read")

    monkeypatch.setattr(PREPARE_MODULE, "source_rows", read_nothing)
    monkeypatch.setattr(PREPARE_MODULE, "load_splits", read_nothing)
    with pytest.raises(ValueError, match=message):
        prepare(str(tmp_path / "out"), ["gsm8k", "starter"], offline=True, progress=False, **{option: value})


def test_no_records_is_an_error_and_writes_nothing(tmp_path):
    (tmp_path / "raw" / "gsm8k").mkdir(parents=True)
    (tmp_path / "raw" / "gsm8k" / "a.jsonl").write_text("")
    with pytest.raises(PrepareError, match=r"no records from any source(.|\n)*gsm8k: 0 records"):
        prepare(str(tmp_path / "out"), ["gsm8k"], local_dir=str(tmp_path / "raw"), offline=True, progress=False)
    with pytest.raises(PrepareError, match=r"glaive: hub \(glaiveai/glaive-function-calling-v2\) skipped: offline"):
        prepare(str(tmp_path / "out"), ["glaive"], local_dir=str(tmp_path / "none"), offline=True, progress=False)
    assert not (tmp_path / "out").exists()


def test_prepare_warns_about_the_tasks_it_got_no_records_for(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="bdh.data"):
        prepare(str(tmp_path / "out"), ["gsm8k"], local_dir=FIXTURES, offline=True, progress=False)
    assert "no records for text_completion, function_call, bash_command, tool_use" in caplog.text
    assert "chain_of_thought: no val records (2 records in all, val_fraction 0.05)" in caplog.text


def run_cli(*args):
    """(exit status, stderr) of `python -m bdh.data prepare --offline --no-progress ARGS`, in this process."""
    from bdh.data.__main__ import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(["prepare", "--offline", "--no-progress", *args])
        except SystemExit as e:
            status = e.code
    return status, err.getvalue()


def test_cli_reports_errors_on_one_line_with_a_nonzero_exit(tmp_path):
    (tmp_path / "afile").write_text("x")
    status, err = run_cli("--sources", "starter", "--out", str(tmp_path / "afile" / "out"))  # OSError while writing
    assert status == 1 and "Traceback" not in err and err.count("\n") == 1 and str(tmp_path / "afile") in err
    status, err = run_cli("--sources", "starter", "--out", str(tmp_path / "afile"))
    assert status == 2 and "is not a directory" in err
    status, err = run_cli("--local-dir", str(tmp_path / "none"), "--sources", "gsm8k", "--out", str(tmp_path / "out"))
    assert status == 1 and "no records from any source" in err and not (tmp_path / "out").exists()
    for option, value in (("--max-bytes", "-1"), ("--max-bytes", "0"), ("--val-fraction", "1.5")):
        status, err = run_cli(option, value, "--local-dir", str(tmp_path / "none"), "--sources", "gsm8k",
                              "--out", str(tmp_path / "out"))
        assert status == 2 and option[2:].replace("-", "_") in err and "usage: python -m bdh.data prepare" in err


def test_prepared_lines_that_are_not_utf8_are_skipped_and_counted(tmp_path):
    good = Record("ok:1", "bash_command", "t", "User: hi\nAssistant: ", "```bash\nls\n```")
    bad = Record("bad:1", "bash_command", "t", "User: caf\udce9\nAssistant: ", "```bash\nls\n```")
    path = tmp_path / "train.jsonl"
    path.write_bytes((good.to_json() + "\n").encode() + bad.to_json().encode("utf-8", "surrogateescape") + b"\n")
    skipped = Counter()
    assert list(read_records(str(path), skipped)) == [good] and skipped == {"invalid_utf8": 1}


def test_a_prepared_line_nested_too_deep_is_skipped_as_malformed_json(tmp_path):
    good = Record("ok:1", "bash_command", "t", "User: hi\nAssistant: ", "```bash\nls\n```")
    path = tmp_path / "train.jsonl"
    path.write_text("[" * 100000 + "\n" + good.to_json() + "\n")
    skipped = Counter()
    assert list(read_records(str(path), skipped)) == [good] and skipped == {"malformed_json": 1}


@pytest.mark.parametrize("damage", ["truncated", "not_gzip"])
def test_a_damaged_gzip_split_is_an_error_naming_the_file(tmp_path, damage):
    out = str(tmp_path / "out")
    prepare(out, ["starter"], max_per_task=20, progress=False)
    val = tmp_path / "out" / "bash_command" / "val.jsonl"
    data = gzip.compress(val.read_bytes())
    val.unlink()
    (tmp_path / "out" / "bash_command" / "val.jsonl.gz").write_bytes(data[:len(data) // 2] if damage == "truncated" else b"not gzip")
    with pytest.raises(ValueError, match=r"bash_command/val\.jsonl\.gz: truncated or not gzip data"):
        load_splits(out)
