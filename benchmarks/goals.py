"""Shared by the benchmark modules: a goal's verdict and printing the goal lines."""


def verdict(ok: bool, full: bool) -> str:
    """PASS / FALLS SHORT, judged on the full sizes (``--benchmark``) only: smoke timings mean nothing."""
    return ("PASS" if ok else "FALLS SHORT") if full else "SMOKE, NOT JUDGED"


def print_goals(capsys, title: str, lines, full: bool, nothing: str) -> None:
    """Print a block of goal lines past pytest's output capture (``nothing`` when there are none)."""
    with capsys.disabled():
        print(f"\n[{title}" + ("" if full else ": smoke sizes") + "]\n" + "\n".join(lines or [nothing]))

