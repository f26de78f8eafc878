"""bdh.alerts: each of the guide's alerts fires on rows that should trigger it, once at its start and
once when it clears, and stays silent on healthy runs."""
import json
import math
import random

import pytest

from bdh.alerts import CLEAR, CRITICAL, RULES, START, WARNING, Alert, AlertMonitor, append_alerts, read_alerts
from metrics_cases import healthy_rows


def run(rows, **kw):
    monitor = AlertMonitor(**kw)
    events = [a for row in rows for a in monitor.update(row)]
    return monitor, events


def names(events, state=START):
    return [a.name for a in events if a.state == state]


@pytest.mark.parametrize("log_every", [1, 10, 100])
def test_healthy_2000_step_run_is_silent(log_every):
    monitor, events = run(healthy_rows(2000, log_every=log_every))
    assert events == [] and monitor.active == {}


def test_healthy_run_with_a_stage_change_is_silent():
    # The loss jumps at the stage change (normal, says the guide): the plateau history restarts there.
    monitor, events = run(healthy_rows(3000, stage_at=2000))
    assert events == []


def test_the_table_is_the_guides():
    assert {n: (r.severity, r.action) for n, r in RULES.items()} == {
        "nan_detected": (CRITICAL, "Stop training, reduce LR"),
        "loss_high": (CRITICAL, "Check data, reduce LR"),
        "grad_norm_high": (WARNING, "Enable gradient clipping"),
        "firing_rate_high": (WARNING, "Increase sparsity weight"),
        "loss_plateau": (WARNING, "Adjust LR or check data"),
    }


@pytest.mark.parametrize("key, value", [("train_loss", math.nan), ("grad_norm", math.nan), ("grad_norm", math.inf),
                                        ("firing_rate_layer1", math.nan), ("val_loss", math.nan),
                                        ("train_loss", None), ("grad_norm", None)])  # null: NaN in strict JSON
def test_nan_in_any_metric_is_critical(key, value):
    rows = healthy_rows(300, log_every=10)
    rows[12][key] = value
    monitor, events = run(rows)
    nan_events = [a for a in events if a.name == "nan_detected"]
    assert [(a.state, a.step) for a in nan_events] == [(START, 120), (CLEAR, 130)]
    # an infinite grad norm is also above 100; a NaN is not compared with any threshold
    assert names(events) == ["nan_detected"] + (["grad_norm_high"] if value == math.inf else [])
    start = nan_events[0]
    assert start.severity == CRITICAL and start.action == "Stop training, reduce LR"
    assert key in start.message


@pytest.mark.parametrize("counter", ["nan_count", "inf_count"])
def test_skipped_step_counter_growth_is_critical(counter):
    rows = healthy_rows(300, log_every=10)
    for row in rows[5:]:
        row[counter] = 1  # cumulative: one skipped step at row 5, none after
    for row in rows[20:]:
        row[counter] = 3  # two more at row 20
    monitor, events = run(rows)
    assert [(a.name, a.state, a.step) for a in events] == [
        ("nan_detected", START, 50), ("nan_detected", CLEAR, 60),
        ("nan_detected", START, 200), ("nan_detected", CLEAR, 210)]
    assert f"{counter} 0 -> 1" in events[0].message and f"{counter} 1 -> 3" in events[2].message


def test_nan_still_happening_at_the_end_stays_active():
    rows = healthy_rows(300, log_every=10)
    for i, row in enumerate(rows[25:]):
        row["nan_count"] = i + 1
    monitor, events = run(rows)
    assert names(events) == ["nan_detected"] and names(events, CLEAR) == []
    assert [a.name for a in monitor.critical_active()] == ["nan_detected"]


def test_loss_above_10_is_critical_and_reported_once():
    rows = healthy_rows(500, log_every=10)
    for row in rows[10:20]:
        row["train_loss"] = 12.5
    monitor, events = run(rows)
    assert [(a.name, a.state, a.step) for a in events] == [("loss_high", START, 100), ("loss_high", CLEAR, 200)]
    assert events[0].severity == CRITICAL and events[0].value == 12.5 and events[0].threshold == 10
    assert events[0].action == "Check data, reduce LR"


def test_loss_of_exactly_10_does_not_fire():
    rows = healthy_rows(200, log_every=10)
    rows[3]["train_loss"] = 10.0
    assert run(rows)[1] == []


def test_grad_norm_above_100_is_a_warning():
    rows = healthy_rows(500, log_every=10)
    for row in rows[30:]:
        row["grad_norm"] = 250.0
    monitor, events = run(rows)
    assert [(a.name, a.state, a.step, a.severity) for a in events] == [("grad_norm_high", START, 300, WARNING)]
    assert monitor.active["grad_norm_high"].action == "Enable gradient clipping"
    assert monitor.critical_active() == []


@pytest.mark.parametrize("key", ["firing_rate", "firing_rate_layer0"])
def test_firing_rate_above_half_is_a_warning(key):
    rows = healthy_rows(500, log_every=10)
    for row in rows[8:12]:
        row[key] = 0.7
    monitor, events = run(rows)
    assert [(a.name, a.state, a.step) for a in events] == [("firing_rate_high", START, 80), ("firing_rate_high", CLEAR, 120)]
    assert events[0].value == 0.7 and key in events[0].message
    assert events[0].action == "Increase sparsity weight"


def flat_after(rows, step, noise=0.03, seed=1):
    """Make the loss stop improving at `step`: constant plus batch noise from there on."""
    rng, base = random.Random(seed), None
    for row in rows:
        if row["step"] >= step:
            base = base if base is not None else row["train_loss"]
            row["train_loss"] = base + rng.gauss(0, noise)
    return rows


@pytest.mark.parametrize("log_every", [1, 10, 100])
def test_plateau_fires_after_500_flat_iterations(log_every):
    rows = flat_after(healthy_rows(2000, log_every=log_every), 800)
    monitor, events = run(rows)
    starts = [a for a in events if a.state == START]
    assert [a.name for a in starts] == ["loss_plateau"]
    # The smoothed loss stops improving one smoothing window after 800 (100 iterations, or 3 rows =
    # 300 iterations when logged every 100); the alert needs 500 iterations more.
    assert 1250 <= starts[0].step <= (1500 if log_every < 100 else 1700)
    assert starts[0].severity == WARNING and starts[0].action == "Adjust LR or check data"
    assert "loss_plateau" in monitor.active


def test_plateau_never_fires_before_500_iterations_of_history():
    rows = [{"step": s, "stage": 1, "train_loss": 4.0} for s in range(0, 1000, 50)]
    _, events = run(rows)
    assert [(a.name, a.step) for a in events] == [("loss_plateau", 500)]
    rows = [{"step": s, "stage": 1, "train_loss": 4.0} for s in range(1000, 1500, 50)]  # starts at 1000
    _, events = run(rows)
    assert events == []


def test_plateau_ignores_a_second_row_for_the_same_step_and_restarts_when_steps_go_back():
    rows = []
    for s in range(0, 1000, 50):
        rows.append({"step": s, "stage": 1, "train_loss": 4.0})
        rows.append({"step": s, "stage": 1, "train_loss": 4.0, "val_loss": 4.1})  # an eval row at the same step
    _, events = run(rows)
    assert [(a.name, a.step) for a in events] == [("loss_plateau", 500)]
    resumed = rows[:30] + [{"step": s, "stage": 1, "train_loss": 4.0} for s in range(400, 1000, 50)]
    _, events = run(resumed)  # a resumed run rewrites its log from step 400: the history restarts there
    assert [(a.name, a.state, a.step) for a in events] == [
        ("loss_plateau", START, 500), ("loss_plateau", CLEAR, 400), ("loss_plateau", START, 900)]


def test_plateau_history_restarts_at_a_stage_change():
    rows = [{"step": s, "stage": 1 if s < 600 else 2, "train_loss": 4.0} for s in range(0, 1200, 50)]
    _, events = run(rows)
    assert [(a.name, a.state, a.step) for a in events] == [
        ("loss_plateau", START, 500), ("loss_plateau", CLEAR, 600), ("loss_plateau", START, 1100)]


def test_rising_loss_is_a_plateau_and_recovery_clears_it():
    rows = [{"step": s, "stage": 1, "train_loss": 3.0 + (0.001 * (s - 500) if s > 500 else 0) - (3e-3 * (s - 1300) if s > 1300 else 0)}
            for s in range(0, 2500, 10)]
    _, events = run(rows)
    assert names(events) == ["loss_plateau"] and names(events, CLEAR) == ["loss_plateau"]


def test_plateau_threshold_is_one_percent_relative():
    # 0.5% better per 500 iterations: a plateau; 2% better: not.
    slow = [{"step": s, "stage": 1, "train_loss": 4.0 * (1 - 0.005) ** (s / 500)} for s in range(0, 3000, 10)]
    fast = [{"step": s, "stage": 1, "train_loss": 4.0 * (1 - 0.02) ** (s / 500)} for s in range(0, 3000, 10)]
    assert names(run(slow)[1]) == ["loss_plateau"]
    assert run(fast)[1] == []


def test_several_alerts_on_one_row_and_rows_missing_metrics():
    rows = healthy_rows(100, log_every=10)
    rows[5].update(train_loss=11.0, grad_norm=500.0, firing_rate=0.9)
    del rows[6]["grad_norm"]  # no grad_norm on this row: its state carries over
    monitor, events = run(rows)
    assert sorted(names(events)) == ["firing_rate_high", "grad_norm_high", "loss_high"]
    assert [(a.name, a.step) for a in events if a.state == CLEAR] == [
        ("loss_high", 60), ("firing_rate_high", 60), ("grad_norm_high", 70)]


def test_alerts_are_json_and_round_trip(tmp_path):
    rows = healthy_rows(100, log_every=10)
    rows[3]["grad_norm"] = math.inf
    _, events = run(rows)
    path = tmp_path / "alerts.jsonl"
    append_alerts(path, events)
    for line in path.read_text().splitlines():
        row = json.loads(line, parse_constant=pytest.fail)  # strict JSON: no NaN / Infinity tokens
        assert set(row) == {"name", "severity", "state", "step", "value", "threshold", "message", "action", "stage", "time"}
    back = read_alerts(path)
    assert [a.to_dict() for a in back] == [a.to_dict() for a in events]
    assert isinstance(back[0], Alert) and "inf" in back[0].message


def test_read_alerts_skips_lines_that_are_not_json_objects(tmp_path):
    alert = Alert("loss_high", CRITICAL, START, 5, 11.0, 10.0, "train_loss 11 > 10", RULES["loss_high"].action)
    path = tmp_path / "alerts.jsonl"
    path.write_text("[1]\n" + alert.to_json() + '\n"text"\n3\nnull\n' + alert.to_json()[:20])
    assert [a.to_dict() for a in read_alerts(path)] == [alert.to_dict()]


def test_state_dict_resumes_exactly():
    rows = flat_after(healthy_rows(2000, log_every=10), 900)
    rows[40]["grad_norm"] = 300.0
    rows[41]["grad_norm"] = 300.0
    straight, expected = run(rows)
    first, events = run(rows[:41])
    second = AlertMonitor()
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    events += [a for row in rows[41:] for a in second.update(row)]
    assert [a.to_dict() for a in events] == [a.to_dict() for a in expected]
    assert second.active.keys() == straight.active.keys()


@pytest.mark.parametrize("step", [None, True, "5", math.nan, math.inf, -math.inf])
def test_a_row_without_a_finite_step_is_an_error(step):
    row = {"train_loss": 3.0} if step is None else {"step": step, "train_loss": 3.0}
    with pytest.raises(ValueError, match="step"):
        AlertMonitor().update(row)
