"""Training alerts: the Alert Thresholds table of the training guide, one metrics row at a time.

The trainer and ``python -m bdh.monitor`` raise the same alerts from this one class::

    monitor = AlertMonitor()
    for row in rows:                      # the dicts written to metrics.jsonl, in order
        for alert in monitor.update(row):
            append_alerts(run_dir / "alerts.jsonl", [alert])

=================  ========  ===============================================  ==========================
name               severity  condition, on one metrics row                    action (the guide's)
=================  ========  ===============================================  ==========================
nan_detected       critical  a value in the row is NaN, infinite or null      Stop training, reduce LR
                             (how JSON writers without NaN write it), or
                             ``nan_count`` / ``inf_count`` (the trainer's
                             cumulative skipped-step counters) grew
loss_high          critical  ``train_loss`` > 10                              Check data, reduce LR
grad_norm_high     warning   ``grad_norm`` > 100                              Enable gradient clipping
firing_rate_high   warning   ``firing_rate`` (the mean) or any                Increase sparsity weight
                             ``firing_rate_layer<i>`` > 0.5
loss_plateau       warning   no 1% improvement in 500 iterations (below)      Adjust LR or check data
=================  ========  ===============================================  ==========================

**Start and clear.** An alert is reported when its condition becomes true (``state="start"``) and
again when it becomes false (``state="clear"``), never on the rows in between, so a run whose grad
norm stays above 100 for 3000 steps logs two lines, not thirty. ``AlertMonitor.active`` holds the
start alert of each condition that is true now. A NaN event is a condition of one row: the row
where ``nan_count`` grew starts it and the next row without a new non-finite value clears it (the
skipped step is over); ``--once`` in the monitor therefore fails only for a NaN still happening at
the end of the log, and lists every NaN event of the run in its summary. A row that lacks a rule's
metric (or has NaN in it, which ``nan_detected`` reports) leaves that rule's state unchanged.

**Plateau.** Steps, not rows: the trainer logs every ``log_freq`` steps, and the window is 500
iterations whatever ``log_freq`` is. With ``L(s)`` the smoothed train loss at a logged step ``s`` (the
mean ``train_loss`` of the rows logged in the last ``smooth_iters`` = 100 iterations, ``(s-100, s]``,
and of at least the last ``smooth_rows`` = 3 rows, so that a run logged every 100 steps is smoothed
too) and ``t`` the current step, the loss has plateaued when

* there are at least 500 iterations of history in the current stage (a logged step ``<= t - 500``), and
* ``best_recent = min L(s) for t-500 < s <= t`` improves on ``best_before = min L(s) for s <= t-500``
  by less than 1% of it: ``best_before - best_recent < 0.01 * |best_before|``.

So the alert means "the best (smoothed) loss of the last 500 iterations is no better than what the
run had already reached", which covers both a flat loss and a rising one. It clears when the same
improvement reaches 2% (``plateau_clear_factor`` times the threshold), so a noisy flat loss does not
flap between start and clear. The history restarts at a stage change (a new task mix moves the loss
on purpose, and the guide expects a jump there) and when the step goes backwards (a resumed run
rewriting its log), so the alert never fires in the first 500 iterations of a stage.

Alerts are plain dataclasses; ``Alert.to_dict()`` is JSON (non-finite values become ``None``; the
message keeps them as text).
"""
import collections
import dataclasses
import json
import math
import os
import re
from typing import Dict, List, Optional

CRITICAL = "critical"
WARNING = "warning"
START = "start"
CLEAR = "clear"


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of the guide's table."""

    name: str
    severity: str
    condition: str  # the guide's wording
    action: str  # the guide's Action column


RULES = {
    rule.name: rule
    for rule in (
        Rule("nan_detected", CRITICAL, "NaN detected", "Stop training, reduce LR"),
        Rule("loss_high", CRITICAL, "Loss > 10", "Check data, reduce LR"),
        Rule("grad_norm_high", WARNING, "Grad norm > 100", "Enable gradient clipping"),
        Rule("firing_rate_high", WARNING, "Firing rate > 0.5", "Increase sparsity weight"),
        Rule("loss_plateau", WARNING, "Loss plateaus 500 iters", "Adjust LR or check data"),
    )
}


@dataclasses.dataclass
class Alert:
    """One alert event.

    name:      a key of RULES (nan_detected, loss_high, grad_norm_high, firing_rate_high, loss_plateau).
    severity:  "critical" or "warning".
    state:     "start" (the condition became true at this row) or "clear" (it became false).
    step:      the training step of the row.
    value:     the number the rule looked at (loss, grad norm, highest firing rate, relative
               improvement for a plateau, count of non-finite values for NaN); None when not finite.
    threshold: the limit it was compared with.
    message:   what happened, in words, with the metric names and values.
    action:    the suggested action (the guide's Action column).
    stage:     the curriculum stage of the row (1-based), when logged.
    time:      the row's unix time, when logged.
    """

    name: str
    severity: str
    state: str
    step: int
    value: Optional[float]
    threshold: Optional[float]
    message: str
    action: str
    stage: Optional[int] = None
    time: Optional[float] = None

    def to_dict(self) -> dict:
        row = dataclasses.asdict(self)
        for key in ("value", "threshold", "time"):
            if isinstance(row[key], float) and not math.isfinite(row[key]):
                row[key] = None
        return row

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, row: dict) -> "Alert":
        return cls(**{f.name: row.get(f.name) for f in dataclasses.fields(cls)})

    def __str__(self) -> str:
        what = "cleared: " if self.state == CLEAR else ""
        action = "" if self.state == CLEAR else f" -> {self.action}"
        return f"[{self.severity.upper()}] step {self.step}: {what}{self.message}{action}"


def append_alerts(path, alerts: List[Alert]) -> None:
    """Append alerts to a JSON-lines file (alerts.jsonl), one object per line, flushed."""
    if not alerts:
        return
    with open(path, "a", encoding="utf-8") as f:
        for alert in alerts:
            f.write(alert.to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_alerts(path) -> List[Alert]:
    """The alerts of an alerts.jsonl file. A line that is not a JSON object (a partly written last line,
    say) is skipped."""
    alerts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                alerts.append(Alert.from_dict(row))
    return alerts


LAYER_RATE = re.compile(r"firing_rate_layer(\d+)$")  # group 1: the layer's index
COUNTERS = ("nan_count", "inf_count")


def is_step(value) -> bool:
    """Whether value can be a metrics row's step: an int, or a finite float (bools are not numbers)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _number(row: dict, key: str) -> Optional[float]:
    """row[key] as a float, or None if it is absent or not a number (bools are not numbers)."""
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


class _Plateau:
    """The plateau rule's history for one stage: smoothed losses in the last `window` iterations
    (with a monotonic deque for their minimum) and the best smoothed loss before them."""

    def __init__(self, window: int, smooth: int, smooth_rows: int):
        self.window, self.smooth, self.smooth_rows = window, smooth, smooth_rows
        self.reset(None)

    def reset(self, stage) -> None:
        self.stage = stage
        self.last_step = None
        self.raw = collections.deque()  # (step, loss) within the smoothing window
        self.raw_sum = 0.0
        self.recent = collections.deque()  # (step, smoothed) within the plateau window
        self.mins = collections.deque()  # the increasing minima of `recent`
        self.best_before = math.inf

    def add(self, step: int, loss: float) -> float:
        """Add a row's loss; return the smoothed loss at this step."""
        self.last_step = step
        self.raw.append((step, loss))
        self.raw_sum += loss
        while len(self.raw) > self.smooth_rows and self.raw[0][0] <= step - self.smooth:
            self.raw_sum -= self.raw.popleft()[1]
        smoothed = self.raw_sum / len(self.raw)
        self.recent.append((step, smoothed))
        while self.mins and self.mins[-1][1] >= smoothed:
            self.mins.pop()
        self.mins.append((step, smoothed))
        while self.recent[0][0] <= step - self.window:
            old_step, old = self.recent.popleft()
            self.best_before = min(self.best_before, old)
            if self.mins[0][0] == old_step:
                self.mins.popleft()
        return smoothed

    @property
    def best_recent(self) -> float:
        return self.mins[0][1]


class AlertMonitor:
    """Evaluate the guide's alerts on metrics rows fed one at a time, in step order.

    ``update(row)`` returns the alerts that started or cleared at that row (usually none);
    ``active`` maps each alert name whose condition holds now to its start alert. The thresholds are
    the guide's; they are arguments so that tests and unusual runs can move them.

    ``state_dict()`` / ``load_state_dict()`` give the monitor's state as plain JSON data, for a trainer
    that resumes from a checkpoint and wants the plateau history and active alerts to carry on.
    """

    def __init__(self, loss_max: float = 10.0, grad_norm_max: float = 100.0, firing_rate_max: float = 0.5,
                 plateau_iters: int = 500, plateau_min_improvement: float = 0.01, smooth_iters: int = 100,
                 smooth_rows: int = 3, plateau_clear_factor: float = 2.0):
        if plateau_iters < 1 or smooth_iters < 1 or smooth_rows < 1:
            raise ValueError("plateau_iters, smooth_iters and smooth_rows must be >= 1, got "
                             f"{plateau_iters}, {smooth_iters}, {smooth_rows}")
        self.loss_max, self.grad_norm_max, self.firing_rate_max = loss_max, grad_norm_max, firing_rate_max
        self.plateau_iters, self.plateau_min_improvement = plateau_iters, plateau_min_improvement
        self.smooth_iters, self.smooth_rows, self.plateau_clear_factor = smooth_iters, smooth_rows, plateau_clear_factor
        self.active: Dict[str, Alert] = {}
        self._counters: Dict[str, float] = {}
        self._plateau = _Plateau(plateau_iters, smooth_iters, smooth_rows)

    # -- the rules: each returns None (cannot tell from this row) or (active, value, threshold, message)

    def _nan(self, row: dict):
        bad = [f"{k}={'null' if v is None else v}" for k, v in row.items()
               if v is None or isinstance(v, float) and not math.isfinite(v)]
        grew = []
        for key in COUNTERS:
            count = _number(row, key)
            if count is None or not math.isfinite(count):
                continue
            before = self._counters.get(key, 0.0)
            if count > before:
                grew.append(f"{key} {before:g} -> {count:g} (steps skipped)")
            self._counters[key] = count
        if not bad and not grew:
            return False, 0.0, 0.0, "no non-finite values"
        parts = ([f"non-finite metrics: {', '.join(bad)}"] if bad else []) + grew
        return True, float(len(bad) + len(grew)), 0.0, "NaN detected: " + "; ".join(parts)

    def _loss(self, row: dict):
        loss = _number(row, "train_loss")
        if loss is None or math.isnan(loss):
            return None
        high = loss > self.loss_max
        return high, loss, self.loss_max, f"train_loss {_fmt(loss)} {'>' if high else '<='} {_fmt(self.loss_max)}"

    def _grad(self, row: dict):
        norm = _number(row, "grad_norm")
        if norm is None or math.isnan(norm):
            return None
        high = norm > self.grad_norm_max
        message = f"grad_norm {_fmt(norm)} {'>' if high else '<='} {_fmt(self.grad_norm_max)}"
        return high, norm, self.grad_norm_max, message

    def _firing(self, row: dict):
        rates = {k: _number(row, k) for k in row if k == "firing_rate" or LAYER_RATE.match(k)}
        rates = {k: v for k, v in rates.items() if v is not None and not math.isnan(v)}
        if not rates:
            return None
        high = {k: v for k, v in rates.items() if v > self.firing_rate_max}
        top = max(rates.values())
        if high:
            message = ", ".join(f"{k} {_fmt(v)}" for k, v in high.items()) + f" > {_fmt(self.firing_rate_max)}"
        else:
            message = f"highest firing rate {_fmt(top)} <= {_fmt(self.firing_rate_max)}"
        return bool(high), top, self.firing_rate_max, message

    def _plateau_rule(self, row: dict, step: int):
        loss = _number(row, "train_loss")
        if loss is None or not math.isfinite(loss):
            return None
        p = self._plateau
        stage = row.get("stage", p.stage)
        if stage != p.stage or (p.last_step is not None and step < p.last_step):
            p.reset(stage)
        elif step == p.last_step:
            return None  # a second row for the same step (an eval row, say): its loss is counted
        p.add(step, loss)
        if not math.isfinite(p.best_before):
            return False, None, self.plateau_min_improvement, "less than 500 iterations of history in this stage"
        before, recent = p.best_before, p.best_recent
        improvement = (before - recent) / abs(before) if before != 0 else (0.0 if recent >= before else math.inf)
        # hysteresis: an active plateau clears only once the improvement reaches twice the threshold
        needed = self.plateau_min_improvement * (self.plateau_clear_factor if "loss_plateau" in self.active else 1.0)
        flat = improvement < needed
        message = (f"best smoothed train_loss of steps ({step - self.plateau_iters}, {step}] is {_fmt(recent)}, "
                   f"best before was {_fmt(before)}: improvement {improvement:+.2%} {'<' if flat else '>='} "
                   f"{needed:.0%} in {self.plateau_iters} iterations")
        return flat, improvement, needed, message

    # -- feeding rows

    def update(self, row: dict) -> List[Alert]:
        """Evaluate one metrics row; return the alerts that start or clear at it."""
        step = row.get("step")
        if not is_step(step):
            raise ValueError(f"a metrics row needs a finite numeric 'step', got {step!r}")
        step = int(step)
        results = {
            "nan_detected": self._nan(row),
            "loss_high": self._loss(row),
            "grad_norm_high": self._grad(row),
            "firing_rate_high": self._firing(row),
            "loss_plateau": self._plateau_rule(row, step),
        }
        stage = row.get("stage") if isinstance(row.get("stage"), int) else None
        when = _number(row, "time")
        events = []
        for name, result in results.items():
            if result is None:
                continue
            is_active, value, threshold, message = result
            rule = RULES[name]
            if is_active and name not in self.active:
                alert = Alert(name, rule.severity, START, step, value, threshold, message, rule.action, stage, when)
                self.active[name] = alert
                events.append(alert)
            elif not is_active and name in self.active:
                del self.active[name]
                events.append(Alert(name, rule.severity, CLEAR, step, value, threshold,
                                    f"{rule.condition} no longer holds ({message})", rule.action, stage, when))
        return events

    def critical_active(self) -> List[Alert]:
        return [a for a in self.active.values() if a.severity == CRITICAL]

    # -- state for checkpoints

    def state_dict(self) -> dict:
        p = self._plateau
        return {
            "active": {name: alert.to_dict() for name, alert in self.active.items()},
            "counters": dict(self._counters),
            "plateau": {"stage": p.stage, "last_step": p.last_step, "raw": [list(x) for x in p.raw],
                        "recent": [list(x) for x in p.recent],
                        "best_before": None if math.isinf(p.best_before) else p.best_before},
        }

    def load_state_dict(self, state: dict) -> None:
        self.active = {name: Alert.from_dict(row) for name, row in state["active"].items()}
        self._counters = dict(state["counters"])
        saved, p = state["plateau"], self._plateau
        p.reset(saved["stage"])
        for step, loss in saved["raw"]:
            p.raw.append((step, loss))
            p.raw_sum += loss
        for step, smoothed in saved["recent"]:
            p.recent.append((step, smoothed))
            while p.mins and p.mins[-1][1] >= smoothed:
                p.mins.pop()
            p.mins.append((step, smoothed))
        p.last_step = saved["last_step"]
        p.best_before = math.inf if saved["best_before"] is None else saved["best_before"]
