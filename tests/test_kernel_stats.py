"""benchmarks/kernel_stats.py: compiles the Triton LIF kernels for sm_90 without a GPU and reports their
registers, spills and instructions; bad arguments are usage errors."""
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")
HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "benchmarks", "kernel_stats.py")


def run_script(*argv, interpret=False):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, SCRIPT, *argv], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("layout", [[], ["--time-inside"]])
def test_compiles_the_forward_for_sm90_and_counts_its_instructions(layout):
    result = run_script("--kernel", "fwd", "--dtype", "float32", "--opcodes", "3", *layout)
    if "is not in this Triton install" in result.stderr:
        pytest.skip("this Triton has no NVIDIA tools (ptxas, cuobjdump)")
    assert result.returncode == 0, result.stderr
    line = re.search(r"fwd \(maxnreg none\): (\d+) registers, (\d+) bytes of stack \(spills\), (\d+) instructions, "
                     r"([\d.]+) per neuron-step; compiled in [\d.]+ s", result.stdout)
    assert line, result.stdout
    registers, stack, count, per_step = int(line[1]), int(line[2]), int(line[3]), float(line[4])
    assert 24 <= registers <= 255 and stack == 0
    # the segment's 32 steps are unrolled: each loads x, stores a spike and updates the membrane
    assert count > 32 * 5 and per_step == pytest.approx(count / 32, abs=0.05)
    assert re.search(r"^    [A-Z0-9_.]+ \d+, [A-Z0-9_.]+ \d+, [A-Z0-9_.]+ \d+$", result.stdout, re.M)


@pytest.mark.parametrize("argv, message", [
    (["--maxnreg", "7"], "must be an integer in [24, 255]"),
    (["--maxnreg", "lots"], "must be an integer in [24, 255]"),
    (["--kernel", "both-ways"], "invalid choice"),
    (["--surrogate", "relu"], "invalid choice"),
])
def test_bad_arguments_are_usage_errors(argv, message):
    result = run_script(*argv)
    assert result.returncode == 2 and message in result.stderr


def test_refuses_to_run_under_the_interpreter():
    result = run_script("--kernel", "fwd", interpret=True)
    assert result.returncode != 0 and "unset TRITON_INTERPRET" in result.stderr
