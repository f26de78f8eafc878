"""benchmarks/kernel_stats.py: compiles the Triton LIF kernels for sm_90 without a GPU and reports their
registers, spills and instructions; bad arguments are usage errors, a failed compile a one-line error, and
without Triton --help still works."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "benchmarks", "kernel_stats.py")
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
# runs the script as `python kernel_stats.py ARGS` would, with `import triton` failing as where it is not installed
WITHOUT_TRITON = ("import runpy, sys; sys.modules['triton'] = None; sys.argv[0] = {script!r}; "
                  "runpy.run_path({script!r}, run_name='__main__')")


def run_script(*argv, interpret=False, triton=True, env=None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | (env or {})
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    command = [SCRIPT] if triton else ["-c", WITHOUT_TRITON.format(script=SCRIPT)]
    return subprocess.run([sys.executable, *command, *argv], capture_output=True, text=True, env=env, timeout=600,
                          check=False)


@needs_triton
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
    (["--arch", "0"], "invalid choice: 0 (choose from 75, 80,"),
    (["--arch", "88"], "invalid choice: 88"),
])
def test_bad_arguments_are_usage_errors(argv, message):
    result = run_script(*argv)
    assert result.returncode == 2 and message in result.stderr


def test_refuses_to_run_under_the_interpreter():
    result = run_script("--kernel", "fwd", interpret=True)
    assert result.returncode != 0 and "unset TRITON_INTERPRET" in result.stderr


def test_without_triton_help_works_and_a_run_says_to_install_it():
    help_ = run_script("--help", triton=False)
    assert help_.returncode == 0 and "usage: kernel_stats.py" in help_.stdout
    run = run_script("--kernel", "fwd", triton=False)
    assert run.returncode == 1 and run.stderr.count("\n") == 1
    assert 'Triton, which is not importable here' in run.stderr and 'pip install -e ".[triton]"' in run.stderr


@needs_triton
def test_names_the_register_cap_variable_of_the_triton_backend():
    from bdh_kernels.triton import lif

    spec = importlib.util.spec_from_file_location("kernel_stats", SCRIPT)
    kernel_stats = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel_stats)
    assert kernel_stats.MAXNREG_ENV == lif.MAXNREG_ENV


@needs_triton
def test_a_failed_compile_is_a_one_line_error():
    result = run_script("--kernel", "fwd", "--dtype", "float32", env={"PTXAS_OPTIONS": "--no-such-option"})
    assert result.returncode == 1
    assert result.stdout.count("\n") == 1  # the header line, not the listing of the code
    assert re.fullmatch(r"kernel_stats: compiling _lif_forward_kernel for sm_90 failed: ptxas\S* fatal +: "
                        r"Unknown option '-no-such-option'\n", result.stderr), result.stderr
