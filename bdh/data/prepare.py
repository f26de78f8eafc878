"""Fetch sources, convert and validate their rows, dedupe, split train/val per task, and write.

The prepared layout (also the bundled starter set's, bdh/data/starter/):

    <dir>/manifest.json                  sources (origin, licence, counts, skips), tasks (counts, sha256)
    <dir>/<task>/train.jsonl, val.jsonl   one Record per line (bdh.data.records)

Splits are assigned by a hash of each record's split key (its group, else its normalised prompt),
so they are stable across runs and machines, the steps of one conversation stay together, and a
prompt is never in both splits; exact duplicates are dropped.
"""
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
from collections import Counter
from typing import Iterable, Iterator, Optional

from tqdm import tqdm

from .records import DEFAULT_MAX_BYTES, TASKS, Record, format_counts, invalid_reason, normalise, read_records, write_atomic
from .sources import ROW_ERRORS, SOURCES, Source, read_json_rows

log = logging.getLogger("bdh.data")

STARTER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "starter")
STARTER = "starter"  # the name --sources uses for the bundled starter set
# What `prepare` uses unless told: every hub dataset, and the starter set (which already holds the
# local-only sources: shakespeare, gsm_symbolic, eg, cheat, tooltalk).
DEFAULT_SOURCES = (*(name for name, s in SOURCES.items() if s.hub), STARTER)
DEFAULT_VAL_FRACTION = 0.05


class Unreachable(Exception):
    """A source has no hub access and no local files; the message says what was tried."""


@dataclasses.dataclass
class SourceReport:
    name: str
    task: str
    licence: str
    origin: str = ""
    records: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    unreachable: str = ""


@dataclasses.dataclass
class Splits:
    train: list
    val: list


# ---------------------------------------------------------------------------------------------
# Rows from the hub or from local files


def hub_rows(source: Source, cache_dir: Optional[str]) -> Iterator:
    """The source's rows from the Hugging Face hub. `datasets` is optional and imported only here."""
    try:
        import datasets
    except ImportError:
        raise Unreachable("the `datasets` package is not installed (pip install datasets)") from None
    hub = source.hub
    if hub.files:
        from huggingface_hub import snapshot_download  # installed with datasets

        folder = snapshot_download(hub.id, repo_type="dataset", allow_patterns=list(hub.files), cache_dir=cache_dir)
        return (source.read_local or read_json_rows)(folder)
    return iter(datasets.load_dataset(hub.id, hub.config, split=hub.split, streaming=True, cache_dir=cache_dir))


def source_rows(source: Source, local_dir: str, offline: bool, cache_dir: Optional[str]) -> tuple:
    """(rows, origin) from the hub when reachable, else from local files; raises Unreachable."""
    tried = []
    if source.hub is None:
        tried.append("not on the hub")
    elif offline:
        tried.append(f"hub ({source.hub.id}) skipped: offline")
    else:
        try:
            rows = hub_rows(source, cache_dir)
            first = next(rows, None)  # streaming datasets connect on the first row
            origin = f"hub:{source.hub.id}" + (f"/{source.hub.config}" if source.hub.config else "")
            return (rows if first is None else itertools.chain([first], rows)), origin
        except Unreachable as e:
            tried.append(f"hub ({source.hub.id}): {e}")
        except Exception as e:  # no network, no such dataset, hub errors: all mean "not reachable"
            tried.append(f"hub ({source.hub.id}): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    folder = os.path.join(local_dir, source.name)
    if os.path.isdir(folder):
        return (source.read_local or read_json_rows)(folder), f"local:{folder}"
    tried.append(f"no local files in {folder} (expected {source.local_files})")
    raise Unreachable("; ".join(tried))


def convert_rows(source: Source, rows: Iterable, report: SourceReport, max_bytes: int, limit: Optional[int],
                 progress: bool = True) -> list:
    """Valid records from rows; every row or record skipped is counted in report.skipped[reason]."""
    records = []
    for index, row in enumerate(tqdm(rows, desc=source.name, unit=" rows", disable=not progress, leave=False)):
        if row is None:
            report.skipped["malformed_json"] += 1
            continue
        try:
            converted = source.convert(row, index)
        except ROW_ERRORS:
            report.skipped["malformed_row"] += 1
            continue
        if not converted:
            report.skipped["no_content"] += 1
        for record in converted:
            reason = invalid_reason(record, max_bytes)
            if reason:
                report.skipped[reason] += 1
            else:
                records.append(record)
        if limit is not None and len(records) >= limit:
            break
    report.records = len(records)
    return records


# ---------------------------------------------------------------------------------------------
# Dedupe and split


def in_val(split_key: str, val_fraction: float) -> bool:
    digest = hashlib.sha256(split_key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def split_records(records: Iterable[Record], val_fraction: float, dropped: Counter) -> Splits:
    """Drop exact duplicates, split by split key, and make sure no val prompt is in train."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    seen, train, val = set(), [], []
    for record in records:
        key = (normalise(record.prompt), record.target)
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        (val if in_val(record.split_key, val_fraction) else train).append(record)
    val_prompts = {normalise(r.prompt) for r in val}
    kept = [r for r in train if normalise(r.prompt) not in val_prompts]
    dropped["prompt_in_val"] += len(train) - len(kept)
    return Splits(kept, val)


# ---------------------------------------------------------------------------------------------
# Reading and writing the prepared layout


def load_splits(data_dir: Optional[str] = None, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """{task: Splits(train, val)} from a prepared directory (default: the bundled starter set).

    Lines that fail validation are skipped, counted per reason and logged, never fatal.
    """
    data_dir = data_dir or STARTER_DIR
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data_dir {data_dir!r} is not a directory (run `python -m bdh.data prepare`)")
    splits, skipped = {}, Counter()
    for task in TASKS:
        paths = [split_path(data_dir, task, name) for name in ("train", "val")]
        if all(paths):
            train, val = (list(read_records(p, skipped, max_bytes)) for p in paths)
            splits[task] = Splits(train, val)
    if not splits:
        raise FileNotFoundError(f"no <task>/train.jsonl + val.jsonl (or .jsonl.gz) under {data_dir!r}")
    if skipped:
        log.warning("%s: skipped %d invalid records (%s)", data_dir, sum(skipped.values()), format_counts(skipped))
    return splits


def split_path(data_dir: str, task: str, name: str) -> Optional[str]:
    """The path of a task's split file, .jsonl or .jsonl.gz, or None if there is neither."""
    for suffix in (".jsonl", ".jsonl.gz"):
        path = os.path.join(data_dir, task, name + suffix)
        if os.path.exists(path):
            return path
    return None


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_splits(out_dir: str, splits: dict, manifest: dict, compress: bool = False) -> dict:
    """Write <task>/train.jsonl, val.jsonl (.jsonl.gz if compress) and manifest.json atomically;
    returns the manifest."""
    manifest = {**manifest, "tasks": {}}
    for task, task_splits in sorted(splits.items()):
        entry = {}
        for name in ("train", "val"):
            path = os.path.join(out_dir, task, f"{name}.jsonl" + (".gz" if compress else ""))
            records = getattr(task_splits, name)
            write_atomic(path, "".join(r.to_json() + "\n" for r in records))
            entry[name] = len(records)
            entry[f"{name}_sha256"] = file_sha256(path)
        manifest["tasks"][task] = entry
    write_atomic(os.path.join(out_dir, "manifest.json"), json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


# ---------------------------------------------------------------------------------------------
# The pipeline


def prepare(out_dir: str, sources: Iterable[str], local_dir: str = "data/raw", max_per_task: Optional[int] = None,
            val_fraction: float = DEFAULT_VAL_FRACTION, max_bytes: int = DEFAULT_MAX_BYTES, offline: bool = False,
            cache_dir: Optional[str] = None, progress: bool = True) -> dict:
    """Build a prepared directory from the named sources (names in SOURCES, or "starter").

    Returns the manifest it wrote. A source that cannot be reached is reported in
    manifest["unreachable"] and skipped; the rest are still prepared.
    """
    sources = list(dict.fromkeys(sources))
    unknown = [s for s in sources if s != STARTER and s not in SOURCES]
    if unknown:
        raise ValueError(f"sources: unknown {unknown}; known: {[STARTER, *SOURCES]}")
    if max_per_task is not None and max_per_task < 1:
        raise ValueError(f"max_per_task must be >= 1, got {max_per_task}")
    offline = offline or os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"

    starter = load_splits(STARTER_DIR, max_bytes) if STARTER in sources else {}
    shares = Counter(SOURCES[s].task for s in sources if s != STARTER) + Counter(list(starter))
    per_source_limit = {task: math.ceil(max_per_task / n) for task, n in shares.items()} if max_per_task else {}

    by_task, reports = {task: [] for task in TASKS}, []
    for name in sources:
        if name == STARTER:
            for task, task_splits in starter.items():
                records = (task_splits.train + task_splits.val)[: per_source_limit.get(task)]
                by_task[task] += records
                reports.append(SourceReport(STARTER, task, "see the starter set's manifest", f"bundled:{task}", len(records)))
            continue
        source = SOURCES[name]
        report = SourceReport(source.name, source.task, source.licence)
        reports.append(report)
        try:
            rows, report.origin = source_rows(source, local_dir, offline, cache_dir)
        except Unreachable as e:
            report.unreachable = str(e)
            log.info("%s: not reachable: %s", name, e)  # in manifest["unreachable"]
            continue
        by_task[source.task] += convert_rows(source, rows, report, max_bytes, per_source_limit.get(source.task), progress)
        if report.skipped:
            log.warning("%s: skipped %d (%s)", name, sum(report.skipped.values()), format_counts(report.skipped))

    manifest = {"max_bytes": max_bytes, "max_per_task": max_per_task}
    if STARTER in sources:
        with open(os.path.join(STARTER_DIR, "manifest.json"), encoding="utf-8") as f:
            manifest["starter_sources"] = json.load(f)["sources"]
    return write_prepared(out_dir, by_task, reports, val_fraction, manifest, max_per_task)


def write_prepared(out_dir: str, by_task: dict, reports: list, val_fraction: float, manifest: dict,
                   max_per_task: Optional[int] = None, compress: bool = False) -> dict:
    """Split each task's records (at most max_per_task of them) and write the prepared layout with
    a manifest of the sources (origin, licence, counts, skips), the unreachable ones, and the splits."""
    splits, dropped = {}, Counter()
    for task, records in by_task.items():
        if records:
            splits[task] = split_records(records[:max_per_task], val_fraction, dropped)
    manifest = {
        "val_fraction": val_fraction,
        **manifest,
        "sources": [
            {"name": r.name, "task": r.task, "licence": r.licence, "credit": SOURCES[r.name].credit if r.name in SOURCES else "",
             "origin": r.origin, "records": r.records, "skipped": dict(sorted(r.skipped.items()))}
            for r in reports if not r.unreachable
        ],
        "unreachable": {r.name: r.unreachable for r in reports if r.unreachable},
        "dropped_in_split": dict(sorted(dropped.items())),
    }
    return write_splits(out_dir, splits, manifest, compress)
