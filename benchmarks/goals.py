"""Shared by the benchmark modules: a goal's verdict, printing the goal lines, and reading cases back from
a pytest-benchmark JSON."""
import json


def verdict(ok: bool, full: bool) -> str:
    """PASS / FALLS SHORT, judged on the full sizes (``--benchmark``) only: smoke timings mean nothing."""
    return ("PASS" if ok else "FALLS SHORT") if full else "SMOKE, NOT JUDGED"


def print_goals(capsys, title: str, lines, full: bool, nothing: str) -> None:
    """Print a block of goal lines past pytest's output capture (``nothing`` when there are none)."""
    with capsys.disabled():
        print(f"\n[{title}" + ("" if full else ": smoke sizes") + "]\n" + "\n".join(lines or [nothing]))


def load_cases(path, marker: str) -> list:
    """(extra_info, stats) of each case in a pytest-benchmark JSON whose extra_info holds ``marker``."""
    with open(path) as f:
        data = json.load(f)
    return [(b["extra_info"], b["stats"]) for b in data.get("benchmarks", []) if marker in b.get("extra_info", {})]
