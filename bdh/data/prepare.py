"""Fetch sources, convert and validate their rows, dedupe, split train/val per task, and write.

The prepared layout (also the bundled starter set's, bdh/data/starter/):

    <dir>/manifest.json                  sources (origin, licence, counts, skips), tasks (counts, sha256)
    <dir>/<task>/train.jsonl, val.jsonl   one Record per line (bdh.data.records)

The tasks are those the manifest lists: `prepare` replaces the directory as a whole, and
`load_splits` reads what the manifest lists.

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

from .records import (DEFAULT_MAX_BYTES, TASKS, Record, format_counts, invalid_reason, normalise, read_records,
                      replace_dir, write_atomic)
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


class PrepareError(Exception):
    """`prepare` got no records at all; the message says why, per source. Nothing was written."""


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
        except UnicodeError:  # bytes that were not UTF-8 in a field the converter parses (sources.read_text)
            report.skipped["invalid_utf8"] += 1
            continue
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


def check_val_fraction(val_fraction: float) -> None:
    """Raise ValueError unless val_fraction is in (0, 1): both splits must be able to get records."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")


def in_val(split_key: str, val_fraction: float) -> bool:
    digest = hashlib.sha256(split_key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def cap_splits(splits: Splits, limit: Optional[int], val_fraction: float) -> Splits:
    """At most limit records in all, val_fraction of them (rounded up) from val where it has that many:
    capping after the split, not before, so that a capped task keeps its val records; train keeps at
    least one record where it has one (the trainer samples train)."""
    if limit is None or len(splits.train) + len(splits.val) <= limit:
        return splits
    n_val = min(len(splits.val), max(math.ceil(limit * val_fraction), limit - len(splits.train)),
                limit - min(1, len(splits.train)))
    return Splits(splits.train[:limit - n_val], splits.val[:n_val])


def starter_share(splits: Splits, limit: Optional[int], val_fraction: float) -> list:
    """The starter set's records of one task, at most limit of them. Its files hold train first, so a
    plain prefix would be all train: the records are sorted by the split they will land in (in_val,
    as split_records assigns it later, where duplicates are dropped and counted) and capped by cap_splits."""
    records = splits.train + splits.val
    if limit is None:
        return records
    val = [r for r in records if in_val(r.split_key, val_fraction)]
    train = [r for r in records if not in_val(r.split_key, val_fraction)]
    capped = cap_splits(Splits(train, val), limit, val_fraction)
    return capped.train + capped.val


def split_records(records: Iterable[Record], val_fraction: float, dropped: Counter) -> Splits:
    """Drop exact duplicates, split by split key, and make sure no val prompt is in train."""
    check_val_fraction(val_fraction)
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

    The tasks loaded are those its manifest.json lists (what the last `prepare` wrote; a listed task
    without its files is an error), or without a manifest every task folder with both split files.
    Lines that fail validation, and records of another task than their folder's (wrong_task), are
    skipped, counted per reason and logged, never fatal.
    """
    data_dir = data_dir or STARTER_DIR
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data_dir {data_dir!r} is not a directory (run `python -m bdh.data prepare`)")
    listed = manifest_tasks(data_dir)
    splits, skipped = {}, Counter()
    for task in TASKS if listed is None else listed:
        paths = [split_path(data_dir, task, name) for name in ("train", "val")]
        if all(paths):
            train, val = (list(read_records(p, skipped, max_bytes, task)) for p in paths)
            splits[task] = Splits(train, val)
        elif listed is not None:
            raise FileNotFoundError(f"{data_dir!r}: manifest.json lists task {task!r} but there is no "
                                    f"{task}/train.jsonl + val.jsonl (or .jsonl.gz)")
    if not splits:
        raise FileNotFoundError(f"no <task>/train.jsonl + val.jsonl (or .jsonl.gz) under {data_dir!r}")
    if skipped:
        log.warning("%s: skipped %d invalid records (%s)", data_dir, sum(skipped.values()), format_counts(skipped))
    return splits


def manifest_tasks(data_dir: str) -> Optional[list]:
    """The tasks data_dir's manifest.json lists, in TASKS order; None if there is no manifest."""
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            tasks = json.load(f)["tasks"]
        return [task for task in TASKS if task in tasks]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a prepared manifest with a 'tasks' object ({type(e).__name__}: {e})") from None


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


def check_out_dir(out_dir: str) -> None:
    """Raise ValueError unless out_dir may be replaced by a prepared directory: it does not exist, is
    empty, or is one (holds a manifest.json). Anything else is not ours to delete."""
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out: {out_dir!r} exists and is not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, "manifest.json")):
        raise ValueError(f"out: {out_dir!r} is not empty and has no manifest.json, so it is not a prepared "
                         "directory that may be replaced; choose a new or empty directory")


def write_splits(out_dir: str, splits: dict, manifest: dict, compress: bool = False) -> dict:
    """Write <task>/train.jsonl, val.jsonl (.jsonl.gz if compress) and manifest.json, replacing
    out_dir as a whole (records.replace_dir: a failure leaves the old one intact); returns the manifest."""
    check_out_dir(out_dir)
    return replace_dir(out_dir, lambda folder: write_layout(folder, splits, manifest, compress))


def write_layout(out_dir: str, splits: dict, manifest: dict, compress: bool) -> dict:
    """Write the split files and the manifest, with each file's count and sha256, into out_dir."""
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
    manifest["unreachable"] and skipped; the rest are still prepared. Bad arguments raise ValueError
    before any data is read; no records at all raise PrepareError. out_dir is replaced as a whole,
    and only once everything is written.
    """
    sources = list(dict.fromkeys(sources))
    check_options(out_dir, sources, max_per_task, val_fraction, max_bytes)
    offline = offline or os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"

    starter = load_splits(STARTER_DIR, max_bytes) if STARTER in sources else {}
    shares = Counter(SOURCES[s].task for s in sources if s != STARTER) + Counter(list(starter))
    per_source_limit = {task: math.ceil(max_per_task / n) for task, n in shares.items()} if max_per_task else {}

    by_task, reports = {task: [] for task in TASKS}, []
    for name in sources:
        if name == STARTER:
            for task, task_splits in starter.items():
                records = starter_share(task_splits, per_source_limit.get(task), val_fraction)
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


def warn_empty_splits(splits: dict, val_fraction: float) -> None:
    """Warn about each task with no train or no val records: the trainer samples train, and its val
    losses and `python -m bdh.evaluate` read val."""
    for task, task_splits in splits.items():
        for name in ("train", "val"):
            if not getattr(task_splits, name):
                log.warning("%s: no %s records (%d records in all, val_fraction %s)", task, name,
                            len(task_splits.train) + len(task_splits.val), val_fraction)


def check_options(out_dir: str, sources: list, max_per_task: Optional[int], val_fraction: float,
                  max_bytes: int) -> None:
    """Raise ValueError naming the first bad argument of prepare()."""
    unknown = [s for s in sources if s != STARTER and s not in SOURCES]
    if unknown:
        raise ValueError(f"sources: unknown {unknown}; known: {[STARTER, *SOURCES]}")
    if max_per_task is not None and max_per_task < 1:
        raise ValueError(f"max_per_task must be >= 1, got {max_per_task}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    check_val_fraction(val_fraction)
    check_out_dir(out_dir)


def write_prepared(out_dir: str, by_task: dict, reports: list, val_fraction: float, manifest: dict,
                   max_per_task: Optional[int] = None, compress: bool = False) -> dict:
    """Split each task's records, cap each task at max_per_task (cap_splits), and write the prepared
    layout with a manifest of the sources (origin, licence, counts, skips), the unreachable ones, and
    the splits.

    Raises PrepareError, writing nothing, if there are no records; warns about the tasks without any
    and about a split left empty."""
    splits, dropped = {}, Counter()
    for task, records in by_task.items():
        if records:
            splits[task] = cap_splits(split_records(records, val_fraction, dropped), max_per_task, val_fraction)
    if not splits:
        raise PrepareError(f"no records from any source; {out_dir!r} was left as it was:\n"
                           + "\n".join(f"  {r.name}: {r.unreachable or f'0 records (skipped: {format_counts(r.skipped)})'}"
                                       for r in reports))
    missing = [task for task in TASKS if task not in splits]
    if missing:
        log.warning("no records for %s: the default curriculum trains on every task", ", ".join(missing))
    warn_empty_splits(splits, val_fraction)
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
