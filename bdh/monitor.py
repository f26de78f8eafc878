"""`python -m bdh.monitor`: follow a training run's metrics.jsonl, show its latest values and alerts.

The trainer writes ``<log-dir>/<run-name>/metrics.jsonl`` (one JSON object per logged step). This
reads it as it grows, evaluates the training guide's alerts with the same ``bdh.alerts.AlertMonitor``
the trainer uses, and shows a refreshing terminal view; ``--plot`` keeps a PNG dashboard up to date,
``--export`` writes every logged metric to CSV and ``--once`` prints a summary for scripts.
"""
import argparse
import contextlib
import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

from .alerts import CRITICAL, LAYER_RATE, START, Alert, AlertMonitor, is_step
from .metrics import OVERALL_WEIGHTS

# the generation metrics of the trainer's evals (bdh.evaluate.quick_eval), in the order shown
ANSWER_METRICS = ("overall", *OVERALL_WEIGHTS, "function_name_accuracy", "json_validity")

METRICS_FILE = "metrics.jsonl"
DEFAULT_LOG_DIR = "runs"
DASHBOARD_FILE = "dashboard.png"
EXIT_OK, EXIT_ERROR, EXIT_CRITICAL = 0, 1, 2

DESCRIPTION = """\
Follow a training run's metrics.jsonl: a terminal view of the latest values, the curriculum stage
and the active alerts, refreshed every --refresh seconds (Ctrl-C to stop).

LOG_DIR is the run's folder (holding metrics.jsonl) or the --log-dir given to the trainer (a folder
of runs, one per --name): with several runs in it, the newest metrics.jsonl is followed, and the
monitor says so. Started before the trainer, it waits for the file to appear.

Alerts (the training guide's thresholds; see bdh/alerts.py for the exact definitions):
  CRITICAL  NaN detected        any NaN/inf metric, or nan_count/inf_count grew  -> Stop training, reduce LR
  CRITICAL  loss > 10           train_loss                                       -> Check data, reduce LR
  WARNING   grad norm > 100     grad_norm                                        -> Enable gradient clipping
  WARNING   firing rate > 0.5   firing_rate or any firing_rate_layer<i>          -> Increase sparsity weight
  WARNING   loss plateau        smoothed train_loss improved < 1% in 500 iters   -> Adjust LR or check data
An alert is shown when it starts and when it clears; the view lists the ones active now.
"""

EPILOG = """\
one-shot modes (read the file as it is now, then exit):
  --once            print a summary (latest values, every alert event, the active alerts)
  --export FILE     write every logged metric to CSV (one column per key ever logged)
  with --plot, either one also writes the dashboard once.

exit status: 0 fine; 1 error (no log dir, no metrics file, bad option, --plot without matplotlib,
             an output path that cannot be written);
             2 with --once: a critical alert is active at the end of the log.

examples:
  python -m bdh.monitor --log-dir runs/hatching_v1
  python -m bdh.monitor --log-dir runs --plot --refresh 5     # newest run; PNG in its folder
  python -m bdh.monitor --log-dir runs/hatching_v1 --export metrics.csv
  python -m bdh.monitor --log-dir runs/hatching_v1 --once || echo "run needs attention"
"""


class MonitorError(Exception):
    """A problem the user can fix (bad path, no metrics yet): printed as one line, exit status 1."""


# ---------------------------------------------------------------------------------------------
# Finding and reading the metrics file


def find_metrics(log_dir) -> Tuple[Path, Optional[str]]:
    """The metrics.jsonl to follow, and a note when there was a choice to make.

    log_dir may be a run's folder (holding metrics.jsonl) or a folder of runs (each sub-folder one
    run); with several runs the newest metrics.jsonl (by modification time) is chosen.
    """
    log_dir = Path(log_dir)
    if not log_dir.exists():
        raise MonitorError(f"log dir {log_dir} does not exist (give the trainer's --log-dir, or a run folder in it)")
    if not log_dir.is_dir():
        raise MonitorError(f"log dir {log_dir} is not a folder")
    direct = log_dir / METRICS_FILE
    if direct.is_file():
        return direct, None
    runs = sorted((p for p in log_dir.glob(f"*/{METRICS_FILE}") if p.is_file()),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    if not runs:
        raise MonitorError(f"no {METRICS_FILE} in {log_dir} or its sub-folders: has the trainer logged yet, "
                           f"with this --log-dir?")
    note = None
    if len(runs) > 1:
        others = ", ".join(p.parent.name for p in runs[1:])
        note = (f"{len(runs)} runs in {log_dir}: following the newest, {runs[0].parent.name} "
                f"(others: {others}); pass --log-dir {log_dir / runs[0].parent.name} to choose one")
    return runs[0], note


class MetricsReader:
    """Read a growing JSON-lines file: each call returns the rows completed since the last one.

    A last line without its newline is still being written: it is kept and completed by the next
    read. A complete line that is not a JSON object with a finite numeric ``step`` (NaN, Infinity and
    1e400 are not) is counted in ``bad_lines`` and skipped. If the file is rewritten, reading starts
    again from the top and ``restarted`` is set: when the path names another file (the trainer
    replaces metrics.jsonl atomically when a resumed run drops the rows after its checkpoint, and a
    fresh run moves it aside), or when the file shrank (truncated in place). The file read is held open
    (``close()``, or use the reader as a context manager), so that its inode cannot be reused by a new
    file while it is held: a replaced file is always told apart, however much it has grown.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.file = None
        self.offset = 0
        self.partial = b""
        self.bad_lines = 0
        self.restarted = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def _rewritten(self, current: os.stat_result) -> bool:
        held = os.fstat(self.file.fileno())
        return (current.st_dev, current.st_ino) != (held.st_dev, held.st_ino) or current.st_size < self.offset

    def read(self) -> List[dict]:
        try:
            current = self.path.stat()
            if self.file is not None and self._rewritten(current):
                self.close()
                self.offset, self.partial, self.restarted = 0, b"", True
            if self.file is None:
                self.file = open(self.path, "rb")
        except FileNotFoundError:  # not written yet, or moved aside and not yet written again
            return []
        data = self.file.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()  # b"" when the data ended with a newline
        rows = []
        for line in lines:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                self.bad_lines += 1
                continue
            if isinstance(row, dict) and is_step(row.get("step")):
                rows.append(row)
            else:
                self.bad_lines += 1
        return rows


# ---------------------------------------------------------------------------------------------
# The run as seen so far


class RunState:
    """Every row read so far, the alerts evaluated on them, and the stage boundaries."""

    def __init__(self, path=None):
        self.path = path
        self.rows: List[dict] = []
        self.alerts = AlertMonitor()
        self.events: List[Alert] = []  # every start and clear, in order
        self.stages: List[Tuple[int, object, str]] = []  # (first step, stage, stage_name)
        self.last_val: Optional[Tuple[int, float]] = None  # (step, val_loss) of the latest eval
        self.last_val_metrics: dict = {}  # val_perplexity and val_loss_<task> of the latest eval
        self.last_answers: Optional[Tuple[int, dict]] = None  # (step, generation metrics) of the latest eval

    def add(self, rows: List[dict]) -> List[Alert]:
        new = []
        for row in rows:
            self.rows.append(row)
            new += self.alerts.update(row)
            stage = row.get("stage")
            if stage is not None and (not self.stages or self.stages[-1][1] != stage):
                self.stages.append((row["step"], stage, str(row.get("stage_name", ""))))
            if isinstance(row.get("val_loss"), (int, float)):
                self.last_val = (row["step"], row["val_loss"])
                self.last_val_metrics = {k: v for k, v in row.items() if k.startswith("val_loss_") or k == "val_perplexity"}
            answers = {k: row[k] for k in ANSWER_METRICS if k in row}
            if answers:
                self.last_answers = (row["step"], answers)
        self.events += new
        return new

    @property
    def latest(self) -> dict:
        return self.rows[-1] if self.rows else {}

    def keys(self) -> List[str]:
        """Every key ever logged, in the order first seen (step first)."""
        seen = {"step": None}
        for row in self.rows:
            for key in row:
                seen.setdefault(key, None)
        return list(seen)


# ---------------------------------------------------------------------------------------------
# Terminal view


def _num(value, fmt=".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, fmt)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def layer_rate_keys(keys) -> List[str]:
    """The firing_rate_layer* keys among keys: numbered layers in numeric order, then any other such key
    (firing_rate_layer_max, say) in alphabetical order."""
    def order(key):
        match = LAYER_RATE.match(key)
        return (0, int(match.group(1)), "") if match else (1, 0, key)
    return sorted((k for k in set(keys) if k.startswith("firing_rate_layer")), key=order)


def render(state: RunState, path: Path, reader: Optional[MetricsReader] = None, now: Optional[float] = None,
           recent_events: int = 8) -> str:
    """The text view: where the run is, its latest metrics, and its alerts."""
    now = time.time() if now is None else now
    row = state.latest
    lines = [f"bdh monitor: {path}"]
    if not row:
        lines.append("  no complete rows yet")
        return "\n".join(lines)
    age = ""
    if isinstance(row.get("time"), (int, float)):
        age = f"   (last row {_duration(now - row['time'])} ago)"
    stage = row.get("stage")
    stage_text = f"stage {stage}" + (f" {row['stage_name']}" if row.get("stage_name") else "") if stage is not None else "stage -"
    lines.append(f"  step {row['step']}   {stage_text}   rows {len(state.rows)}{age}")
    if len(state.stages) > 1:
        lines.append("  stages   " + "   ".join(f"{s} {n} (first row: step {st})" for st, s, n in state.stages))
    val = f"{_num(state.last_val[1])} (step {state.last_val[0]})" if state.last_val else "-"
    shown = {"step", "stage", "stage_name", "time", "val_loss"}

    def group(label, keys, fmt=".4g"):
        present = [k for k in keys if k in row]
        shown.update(present)
        if present:
            lines.append(f"  {label:<9}" + "   ".join(f"{k} {_num(row[k], fmt)}" for k in present))

    lines.append(f"  {'loss':<9}train_loss {_num(row.get('train_loss'))}   val_loss {val}"
                 + (f"   sparsity_loss {_num(row['sparsity_loss'])}" if "sparsity_loss" in row else ""))
    shown.update({"train_loss", "sparsity_loss"})
    group("tasks", sorted(k for k in row if k.startswith("task_loss_")))
    shown.update(k for k in row if k.startswith("val_loss_") or k == "val_perplexity")
    if state.last_val_metrics:
        lines.append(f"  {'val':<9}" + "   ".join(f"{k} {_num(v)}" for k, v in sorted(state.last_val_metrics.items())))
    shown.update(ANSWER_METRICS)
    if state.last_answers:
        step, answers = state.last_answers
        lines.append(f"  {'answers':<9}" + "   ".join(f"{k} {_num(v, '.3g')}" for k, v in answers.items())
                     + f"   (step {step})")
    group("grads", ["grad_norm", "grad_max", "nan_count", "inf_count"])
    group("neurons", ["firing_rate"] + layer_rate_keys(row) + ["activation_mean", "activation_std"])
    group("learning", ["learning_rate", "weight_norm", "update_ratio"])
    group("speed", ["tokens_per_s", "peak_memory_mb"], ".1f")
    group("other", [k for k in row if k not in shown])
    if reader is not None and reader.bad_lines:
        lines.append(f"  ({reader.bad_lines} unreadable line(s) skipped)")
    active = list(state.alerts.active.values())
    lines.append(f"  alerts   {len(active)} active" + ("" if active else ": none"))
    for alert in sorted(active, key=lambda a: (a.severity != CRITICAL, a.step)):
        lines.append(f"    {alert}")
    if state.events:
        lines.append(f"  alert events ({len(state.events)}, latest {min(recent_events, len(state.events))}):")
        for alert in state.events[-recent_events:]:
            lines.append(f"    {alert}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Output files


@contextlib.contextmanager
def _output(path: Path):
    """For writing path: create its missing parent folders, and turn an OSError (a folder in the way,
    no permission) into a MonitorError naming path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, say: e names it
        raise MonitorError(f"cannot create the folder of {path}: {e}") from e
    try:
        yield
    except OSError as e:
        raise MonitorError(f"cannot write {path}: {e.strerror or e}") from e


def export_csv(rows: List[dict], path) -> List[str]:
    """Write rows to CSV with one column per key ever logged (first seen order, step first); a
    missing value is an empty cell. Floats are written with repr, so they read back exactly. Missing
    parent folders are created; a path that cannot be written is a MonitorError. Returns the columns."""
    columns = {"step": None}
    for row in rows:
        for key in row:
            columns.setdefault(key, None)
    columns = list(columns)
    path = Path(path)
    with _output(path), open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(key)) for key in columns])
    return columns


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


# ---------------------------------------------------------------------------------------------
# Dashboard


def _series(rows, key):
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(row["step"])
            ys.append(value)
    return xs, ys


def write_dashboard(state: RunState, path) -> None:
    """Draw the dashboard PNG (matplotlib, Agg backend): loss by task, grad norm, firing rate,
    learning rate, update ratio, and the alerts; the stage boundaries are vertical lines on every
    panel. Written to a temporary file and renamed, so a viewer never sees half an image; missing
    parent folders are created, and a path that cannot be written is a MonitorError."""
    try:
        import matplotlib
    except ImportError as e:
        raise MonitorError("--plot needs matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = state.rows
    fig = Figure(figsize=(15, 8.5), dpi=90)
    axes = fig.subplots(2, 3)
    (loss_ax, grad_ax, fire_ax), (lr_ax, ratio_ax, text_ax) = axes

    loss_ax.plot(*_series(rows, "train_loss"), color="black", lw=1.2, label="train_loss")
    for key in sorted({k for row in rows for k in row if k.startswith("task_loss_")}):
        loss_ax.plot(*_series(rows, key), lw=0.8, alpha=0.8, label=key[len("task_loss_"):])
    xs, ys = _series(rows, "val_loss")
    if xs:
        loss_ax.plot(xs, ys, "o-", color="tab:red", ms=3, lw=1, label="val_loss")
    for key in sorted({k for row in rows for k in row if k.startswith("val_loss_")}):
        loss_ax.plot(*_series(rows, key), "x--", ms=3, lw=0.7, alpha=0.8, label=f"val {key[len('val_loss_'):]}")
    loss_ax.set_title("loss by task")

    grad_ax.plot(*_series(rows, "grad_norm"), lw=1, label="grad_norm")
    grad_ax.plot(*_series(rows, "grad_max"), lw=0.8, alpha=0.7, label="grad_max")
    grad_ax.axhline(state.alerts.grad_norm_max, color="tab:orange", ls=":", lw=1, label="alert > 100")
    grad_ax.set_title("gradient norm")

    for key in layer_rate_keys(k for row in rows for k in row):
        fire_ax.plot(*_series(rows, key), lw=0.7, alpha=0.6, label=key[len("firing_rate_"):])
    fire_ax.plot(*_series(rows, "firing_rate"), color="black", lw=1.4, label="mean")
    fire_ax.axhline(0.1, color="tab:green", ls="--", lw=1, label="target 0.1")
    fire_ax.axhline(state.alerts.firing_rate_max, color="tab:orange", ls=":", lw=1, label="alert > 0.5")
    fire_ax.set_title("firing rate")

    lr_ax.plot(*_series(rows, "learning_rate"), lw=1.2)
    lr_ax.set_title("learning rate")

    ratio_ax.plot(*_series(rows, "update_ratio"), lw=1, label="|update| / |weight|")
    ratio_ax.axhline(1e-3, color="tab:green", ls="--", lw=1, label="target 1e-3")
    ratio_ax.set_title("update ratio")

    for ax, key in ((grad_ax, "grad_norm"), (ratio_ax, "update_ratio")):
        ys = _series(rows, key)[1]
        if ys and min(ys) > 0:
            ax.set_yscale("log")
    for ax in (loss_ax, grad_ax, fire_ax, lr_ax, ratio_ax):
        for step, _, _ in state.stages[1:]:
            ax.axvline(step, color="gray", ls="--", lw=0.8)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len([line for line in ax.get_lines() if not line.get_label().startswith("_")]) > 1:
            ax.legend(fontsize=7, loc="upper right")
    for step, stage, name in state.stages:
        loss_ax.text(step, 0.02, f" stage {stage} {name}", fontsize=7, va="bottom", ha="right", color="gray",
                     rotation=90, transform=loss_ax.get_xaxis_transform())
    for alert in state.events:
        if alert.state == START:
            loss_ax.axvline(alert.step, color="tab:red" if alert.severity == CRITICAL else "tab:orange", lw=0.6, alpha=0.6)

    text_ax.axis("off")
    row = state.latest
    summary = [f"step {row.get('step', '-')}   stage {row.get('stage', '-')} {row.get('stage_name', '')}",
               f"train_loss {_num(row.get('train_loss'))}   val_loss {_num(state.last_val[1]) if state.last_val else '-'}",
               "", f"active alerts: {len(state.alerts.active) or 'none'}"]
    summary += [_wrap(str(a), 64) for a in state.alerts.active.values()]
    if state.events:
        summary += ["", f"alert events ({len(state.events)}, latest 6):"]
        summary += [_wrap(str(a), 64) for a in state.events[-6:]]
    text_ax.text(0, 1, "\n".join(summary), va="top", ha="left", fontsize=8, family="monospace",
                 transform=text_ax.transAxes)
    if state.path is not None:
        fig.suptitle(f"run {Path(state.path).parent.name}", fontsize=10)
    fig.tight_layout()

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with _output(path):
        try:
            fig.savefig(tmp, format="png")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = "  " + word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join(lines + [line])


# ---------------------------------------------------------------------------------------------
# Command line


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # exit status 2 is kept for "a critical alert is active"
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


MAX_REFRESH = 86400.0  # a day; time.sleep cannot wait for inf, and a longer wait is surely a typo


def _refresh_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_REFRESH:
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, {MAX_REFRESH:g}], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bdh.monitor", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-dir", default=DEFAULT_LOG_DIR, metavar="DIR",
                        help="a run folder, or a folder of runs (default: %(default)s)")
    parser.add_argument("--plot", nargs="?", const="", default=None, metavar="PNG",
                        help=f"also write a PNG dashboard, refreshed with the view (default file: "
                             f"{DASHBOARD_FILE} in the run folder)")
    parser.add_argument("--refresh", type=_refresh_seconds, default=5.0, metavar="S",
                        help="seconds between refreshes, at most a day (default: %(default)s)")
    parser.add_argument("--export", metavar="FILE.csv", help="write every logged metric to CSV, then exit")
    parser.add_argument("--once", action="store_true",
                        help="print a summary and exit; status 2 if a critical alert is active at the end")
    return parser


def _plot_path(args, metrics: Path) -> Optional[Path]:
    if args.plot is None:
        return None
    return Path(args.plot) if args.plot else metrics.parent / DASHBOARD_FILE


def run_once(args, out=None, err=None) -> int:
    """--once / --export: read the file as it is, write what was asked, return the exit status."""
    out, err = out or sys.stdout, err or sys.stderr
    metrics, note = find_metrics(args.log_dir)
    if note:
        print(note, file=err)
    state = RunState(metrics)
    with MetricsReader(metrics) as reader:
        state.add(reader.read())
    if not state.rows:
        raise MonitorError(f"{metrics} has no complete rows yet")
    if reader.partial.strip():
        print(f"note: the last line of {metrics} is incomplete (still being written) and was not read", file=err)
    if args.export:
        columns = export_csv(state.rows, args.export)
        print(f"wrote {len(state.rows)} rows x {len(columns)} columns to {args.export}", file=out)
    plot = _plot_path(args, metrics)
    if plot is not None:
        write_dashboard(state, plot)
        print(f"wrote dashboard {plot}", file=out)
    if not args.once:
        return EXIT_OK
    print(render(state, metrics, reader, recent_events=len(state.events)), file=out)
    critical = state.alerts.critical_active()
    if critical:
        print(f"CRITICAL alert active at step {state.latest['step']}: "
              + "; ".join(f"{a.name} (since step {a.step})" for a in critical), file=out)
        return EXIT_CRITICAL
    return EXIT_OK


def follow(args, out=None, err=None, max_refreshes: Optional[int] = None) -> int:
    """The live view: wait for the metrics file, then re-read and redraw every args.refresh seconds."""
    out, err = out or sys.stdout, err or sys.stderr
    clear = "\033[H\033[2J" if out.isatty() else ""
    refreshes = 0
    waiting_said = False
    while True:
        try:
            metrics, note = find_metrics(args.log_dir)
            break
        except MonitorError as e:
            if not waiting_said:
                print(f"waiting: {e}", file=err, flush=True)
                waiting_said = True
        refreshes += 1
        if max_refreshes is not None and refreshes >= max_refreshes:
            return EXIT_OK
        time.sleep(args.refresh)
    if note:
        print(note, file=err, flush=True)
    state, plot, first = RunState(metrics), _plot_path(args, metrics), True
    with MetricsReader(metrics) as reader:
        while True:
            rows = reader.read()
            if reader.restarted:
                print(f"{metrics} was rewritten from the start: reading it again", file=err, flush=True)
                reader.restarted = False
                state = RunState(metrics)
            state.add(rows)
            if rows or first or clear:
                print(clear + render(state, metrics, reader), file=out, flush=True)
                if not clear:
                    print("", file=out, flush=True)
            if plot is not None and (rows or first) and state.rows:
                write_dashboard(state, plot)
            first = False
            refreshes += 1
            if max_refreshes is not None and refreshes >= max_refreshes:
                return EXIT_OK
            time.sleep(args.refresh)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.once or args.export:
            return run_once(args)
        return follow(args)
    except MonitorError as e:
        print(f"python -m bdh.monitor: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
