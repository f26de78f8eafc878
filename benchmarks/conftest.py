"""pytest configuration of the benchmarks (pytest-benchmark).

Run from the repository root::

    pytest benchmarks/                          # smoke: every benchmark once, on tiny sizes (what CI runs)
    pytest benchmarks/ --benchmark              # full sizes, timed (minutes on 2 cores)
    pytest benchmarks/ --benchmark --benchmark-json=lif_bench.json && \\
        python benchmarks/report.py lif_bench.json

Plain ``pytest`` never runs these: pyproject.toml's ``testpaths = ["tests"]``.

The ``--benchmark`` option is defined here, and pytest knows it when it parses the command line because
pytest loads the conftest.py files of the paths given as arguments (``benchmarks/``) *before* it parses
the remaining options: so no conftest at the repository root is needed. Consequences, checked:
``pytest benchmarks/ --benchmark``, ``pytest --benchmark benchmarks/bench_lif.py::test_mode`` and
``cd benchmarks && pytest --benchmark`` set it; ``pytest --benchmark`` with no path (testpaths = tests, so
this file is not loaded) fails with "unrecognized arguments: --benchmark", which is right: there are no
benchmarks to size there. pytest-benchmark's own ``--benchmark-*`` options do not clash with it: pytest's
argument parser is built with ``allow_abbrev=False``, so ``--benchmark`` is never read as an ambiguous
prefix of them, and an exact option name always wins. The option's dest is ``bdh_benchmark_full``, not
``benchmark``, to stay clear of pytest-benchmark's namespace.

Why ``bench_lif.py`` and not ``test_lif.py``: the benchmark files are named for what they are, and are
never picked up by a run that looks for tests (``python_files`` is ``test_*.py``). ``python_files`` is an
ini option and cannot be set from a conftest, so :func:`pytest_collect_file` below collects ``bench_*.py``
under this folder as test modules instead.

Without pytest-benchmark (not installed, or ``-p no:benchmark``) the run still starts: the header says so
and the cases that time something (they take its ``benchmark`` fixture) are skipped; ``pip install -e
".[test]"`` installs it.
"""
import os

import pytest
import torch

# The shapes [T, B, N] of issue 3 / PEERS.md's CPU table (full mode), and the tiny smoke shapes (default).
FULL_CPU_SHAPES = [(128, 32, 4096), (64, 16, 8192), (256, 8, 4096)]
SMOKE_CPU_SHAPES = [(40, 2, 96)]  # T > 32: the backward crosses a checkpoint boundary
FULL_GPU_SHAPES = [(128, 32, 4096), (256, 16, 16384), (1024, 8, 16384)]
SMOKE_GPU_SHAPES = [(40, 2, 96)]
TARGET_SHAPE = (128, 32, 4096)
# Full mode also sweeps fwd+bwd over T (B*N fixed) and over N (T, B fixed), for report.py's time-vs-T and
# time-vs-N plots; the target shape is the T sweep's T=128 point.
SWEEP_CPU_SHAPES = [(8, 32, 4096), (32, 32, 4096), (512, 32, 4096),
                    (128, 8, 1024), (128, 8, 4096), (128, 8, 16384), (128, 8, 65536)]
SWEEP_GPU_SHAPES = [(8, 32, 131072), (32, 32, 131072), (128, 32, 131072), (256, 32, 131072),
                    (128, 8, 16384), (128, 8, 65536), (128, 8, 262144), (128, 8, 524288)]


NO_PLUGIN = 'pytest-benchmark is not loaded (pip install -e ".[test]" installs it): the benchmark cases are skipped'


def has_plugin(config) -> bool:
    """Whether pytest-benchmark is loaded (installed, and not disabled with ``-p no:benchmark``)."""
    return config.pluginmanager.hasplugin("benchmark")


def pytest_report_header(config):
    return None if has_plugin(config) else NO_PLUGIN


def pytest_collection_modifyitems(config, items):
    """Without pytest-benchmark, skip the cases that need its ``benchmark`` fixture; the others still run."""
    if has_plugin(config):
        return
    skip = pytest.mark.skip(reason=NO_PLUGIN)
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False, dest="bdh_benchmark_full",
                     help="bdh_kernels benchmarks: run the full sizes with timed rounds (default: a one-round "
                          "smoke run on tiny sizes)")


def is_full(config) -> bool:
    return bool(config.getoption("bdh_benchmark_full", default=False))


def sizes(config, device: str = "cpu", mode: str = "fwd"):
    """The [T, B, N] shapes to benchmark in this run's mode (full with ``--benchmark``, else smoke); full
    fwd+bwd adds the sweep shapes."""
    if not is_full(config):
        return SMOKE_CPU_SHAPES if device == "cpu" else SMOKE_GPU_SHAPES
    shapes = FULL_CPU_SHAPES if device == "cpu" else FULL_GPU_SHAPES
    if mode == "fwd+bwd":
        shapes = shapes + [s for s in (SWEEP_CPU_SHAPES if device == "cpu" else SWEEP_GPU_SHAPES) if s not in shapes]
    return shapes


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        if parent.session.isinitpath(file_path):
            return None  # named on the command line: pytest's python plugin collects it already
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def full(pytestconfig) -> bool:
    """True with ``--benchmark`` (full sizes, timed rounds), False for the one-round smoke run."""
    return is_full(pytestconfig)


def _shape_id(shape):
    return "T{}xB{}xN{}".format(*shape)


def pytest_generate_tests(metafunc):
    """Parametrize ``lif_case`` = (device, dtype, mode, shape, library) from the test module's lists.

    One explicit, ordered list: per dtype, mode and shape the module's first library (the floor) comes
    first, so the cases after it can report their ratio to it.
    """
    if "lif_case" not in metafunc.fixturenames:
        return
    module = metafunc.module
    device = "cuda" if metafunc.function.__name__.endswith("_gpu") else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        metafunc.parametrize("lif_case", [pytest.param(None, marks=pytest.mark.skip(
            reason="no CUDA device: the GPU benchmarks (triton and cuda backends, fp32 and bf16, "
                   "SpikingJelly's GPU path) run only where torch.cuda.is_available()"))], ids=["gpu"])
        return
    dtypes = module.GPU_DTYPES if device == "cuda" else ("float32",)
    libraries = module.GPU_LIBRARIES if device == "cuda" else module.CPU_LIBRARIES
    cases, ids = [], []
    for dtype in dtypes:
        for mode in module.MODES:
            for shape in sizes(metafunc.config, device, mode):
                for lib in libraries:
                    cases.append((device, dtype, mode, shape, lib))
                    ids.append(f"{dtype}-{mode}-{_shape_id(shape)}-{lib}")
    metafunc.parametrize("lif_case", cases, ids=ids)


_LOAD_AT_START = None
_BUSY_AT_START = None  # fraction of all CPU time spent busy (by anything) during a 1 s sample at the start


def _cpu_busy_fraction(seconds=1.0):
    """Fraction of the machine's CPU time that was not idle over ``seconds`` (Linux /proc/stat), or None."""
    import time

    def sample():
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / (t1 - t0) if t1 > t0 else None


def pytest_sessionstart(session):
    global _LOAD_AT_START, _BUSY_AT_START
    if not is_full(session.config):
        return
    if hasattr(os, "getloadavg"):
        _LOAD_AT_START = os.getloadavg()
    _BUSY_AT_START = _cpu_busy_fraction()


def _busy_note():
    """A warning when other work was using the CPU as the run started (timings then unreliable)."""
    if _BUSY_AT_START is not None and _BUSY_AT_START > 0.2:
        return (f"WARNING: {_BUSY_AT_START:.0%} of the CPU was busy with other processes when the run started: "
                "these timings are unreliable (torch's threads then share the cores); rerun on an idle machine")
    return None


@pytest.hookimpl(optionalhook=True)  # pytest-benchmark's hook: unknown to pytest without it
def pytest_benchmark_update_machine_info(config, machine_info):
    """Put what the report needs into the JSON's machine_info: torch, threads, backends, peer versions."""
    import importlib.metadata as md

    machine_info["bdh_loadavg_start"] = list(_LOAD_AT_START) if _LOAD_AT_START else None
    machine_info["bdh_cpu_busy_at_start"] = _BUSY_AT_START
    machine_info["bdh_loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    machine_info["bdh_torch"] = torch.__version__
    machine_info["bdh_torch_threads"] = torch.get_num_threads()
    machine_info["bdh_cpu_count"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if torch.cuda.is_available():
        machine_info["bdh_cuda_device"] = torch.cuda.get_device_name(0)
    try:
        import bdh_kernels

        machine_info["bdh_backends"] = bdh_kernels.available_backends()
    except Exception as e:  # report, do not fail the run
        machine_info["bdh_backends"] = [f"error: {e}"]
    versions = {}
    for dist in ("spikingjelly", "snntorch", "norse"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = "not installed"
    machine_info["bdh_peer_versions"] = versions


# ------------------------------------------------------------------ results shared across the session
RESULTS = {}  # (device, dtype, mode, shape, library) -> {"median_s": float, "saved_bytes": float|None}


def record(key, median_s, saved_bytes):
    if median_s is not None:
        RESULTS[key] = {"median_s": median_s, "saved_bytes": saved_bytes}


@pytest.fixture(scope="session")
def lif_record():
    """``lif_record(key, median_s, saved_bytes)``: keep a result for the end-of-session goal lines."""
    return record


PEERS = ("spikingjelly", "snntorch_unbind", "norse_lifbox_unbind", "norse_lifcell_unbind")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Issue 3's goals for the LIF op, as pass / falls-short lines (goals, not assertions): the GPU ones
    (benchmarks/report.py's) where GPU cases ran, then the CPU ones."""
    if not RESULTS:
        return
    tr = terminalreporter
    full = is_full(config)
    tr.write_sep("=", "LIF op goals (issue 3)" + ("" if full else ": smoke sizes, NOT the target shape"))
    from goals import verdict
    from report import gpu_goal_lines  # benchmarks/report.py: the same lines as the report's

    gpu_rows = [{"device": d, "dtype": dt, "mode": m, "shape": s, "library": lib, "median_s": r["median_s"]}
                for (d, dt, m, s, lib), r in RESULTS.items() if d == "cuda"]
    for line in gpu_goal_lines(gpu_rows) if full else []:  # smoke shapes are below the goals' 2^22 neurons
        tr.write_line(line)
    shape = TARGET_SHAPE if full else SMOKE_CPU_SHAPES[0]
    label = "fp32 [%s]" % ",".join(map(str, shape))

    def get(lib):
        return RESULTS.get(("cpu", "float32", "fwd+bwd", shape, lib))

    cpp, floor = get("bdh_cpp"), get("floor_4_clones")
    peers = {p: get(p) for p in PEERS if get(p) is not None}
    if cpp is None:
        tr.write_line(f"cpp fwd+bwd {label}: not measured (cpp backend unavailable or deselected)")
        return

    if peers:
        best = min(peers, key=lambda p: peers[p]["median_s"])
        speedup = peers[best]["median_s"] / cpp["median_s"]
        tr.write_line(f"{verdict(speedup >= 3.0, full)}: cpp fwd+bwd {label} {cpp['median_s'] * 1e3:.2f} ms vs the fastest "
                      f"peer ({best}) {peers[best]['median_s'] * 1e3:.2f} ms: speedup {speedup:.2f}x; goal >= 3x")
    else:
        tr.write_line(f"NOT MEASURED: no peer library installed for cpp vs fastest peer ({label}); "
                      "pip install --no-deps -r requirements-peers.txt")
    if floor is not None:
        ratio = cpp["median_s"] / floor["median_s"]
        tr.write_line(f"{verdict(ratio <= 1.0, full)}: cpp fwd+bwd {label} takes {ratio:.2f}x the four-clone floor "
                      f"({floor['median_s'] * 1e3:.2f} ms); goal <= 1.0x")
    saved = cpp["saved_bytes"]
    if saved is not None:
        tr.write_line(f"{verdict(saved <= 1.0, full)}: cpp saves {saved:.3f} bytes per neuron-step for backward "
                      "(besides the input); goal <= 1")
    if not full:
        tr.write_line("(smoke run: timings on tiny sizes mean nothing; use --benchmark for the goal check)")
    if _busy_note():
        tr.write_line(_busy_note())
