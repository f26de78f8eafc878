"""`prepare` end to end (offline), the bundled starter set, splits, and validation on load."""
import json
import logging
import os
import subprocess
import sys
from collections import Counter

import pytest

from bdh.data import TASKS, Record, load_splits, normalise, prepare
from bdh.data.prepare import DEFAULT_SOURCES, STARTER_DIR, split_records
from bdh.data.records import read_records, write_atomic
from bdh.data.sources import SOURCES

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    assert "skipped 70 invalid records" in caplog.text
    for reason in ("malformed_json: 10", "missing_field: 10", "empty_target: 10", "invalid_function_call: 20",
                   "too_long: 10", "unknown_task: 10"):
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
