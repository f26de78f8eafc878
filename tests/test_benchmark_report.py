"""benchmarks/report.py on a hand-made pytest-benchmark JSON: tables, goal lines, and the sweep plots."""
import importlib.util
import json
import os
import runpy
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench_report", os.path.join(HERE, "..", "benchmarks", "report.py"))
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)

T_SWEEP = [(8, 32, 4096), (32, 32, 4096), (128, 32, 4096), (512, 32, 4096)]
N_SWEEP = [(128, 8, 1024), (128, 8, 4096), (128, 8, 16384)]
COST = {"bdh_cpp": 1.0, "spikingjelly": 3.5, "floor_4_clones": 1.2}  # seconds per 2^30 neuron-steps


def fake_json(path):
    benchmarks = []
    for shape in T_SWEEP + N_SWEEP:
        for lib, cost in COST.items():
            seconds = cost * shape[0] * shape[1] * shape[2] / 2**30
            benchmarks.append({"extra_info": {"library": lib, "device": "cpu", "dtype": "float32", "mode": "fwd+bwd",
                                              "shape": list(shape), "full": True,
                                              "saved_bytes_per_neuron_step": 0.125 if lib == "bdh_cpp" else 12.0},
                               "stats": {"median": seconds, "min": seconds, "rounds": 5}})
    data = {"benchmarks": benchmarks, "datetime": "2026-01-01T00:00:00", "version": "5.3.1",
            "machine_info": {"node": "test", "cpu": {"brand_raw": "a CPU"}, "python_version": "3.11"}}
    path.write_text(json.dumps(data))
    return str(path)


def test_sweeps_find_the_t_and_n_families(tmp_path):
    _, rows = report.load(fake_json(tmp_path / "bench.json"))
    families = report.sweeps(rows)
    assert {k[2] for k in families} == {"T", "N"}
    assert {r["shape"] for r in families[("cpu", "float32", "T")]} == set(T_SWEEP)
    assert {r["shape"] for r in families[("cpu", "float32", "N")]} == set(N_SWEEP)


def test_report_prints_goals_and_writes_the_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = fake_json(tmp_path / "bench.json")
    assert report.main([path, "--plots", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "speedup over the fastest peer 3.50x" in out and "PASS" in out
    for name in ("lif_cpu_float32_time_vs_T.png", "lif_cpu_float32_time_vs_N.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000


@pytest.mark.parametrize("name", ["afile", "afile/plots"])
def test_report_on_a_plot_path_that_is_no_folder_is_a_one_line_error(tmp_path, capsys, name):
    path = fake_json(tmp_path / "bench.json")
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as exit_:
        report.main([path, "--plots", str(tmp_path / name)])
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""  # said before the tables
    why = "not a folder" if name == "afile" else "cannot create the folder: Not a directory"
    assert err.endswith(f": error: --plots {tmp_path / name}: {why}\n") and err.count("\n") == 1


def test_report_on_a_plot_folder_that_is_not_writable_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    path = fake_json(tmp_path / "bench.json")
    monkeypatch.setattr(report.os, "access", lambda path, mode: False)
    with pytest.raises(SystemExit) as exit_:
        report.main([path, "--plots", str(tmp_path)])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.endswith(f": error: --plots {tmp_path}: the folder is not writable\n")


def test_gpu_goal_lines_use_the_same_runs_floor_and_spikingjelly():
    shape = (128, 32, 131072)  # B*N = 2^22
    def row(lib, ms):
        return {"device": "cuda", "dtype": "bfloat16", "mode": "fwd+bwd", "shape": shape, "library": lib,
                "median_s": ms / 1e3, "min_s": ms / 1e3, "rounds": 5, "saved": None, "full": True}
    rows = [row("floor_4_clones", 8.0), row("bdh_triton", 6.0), row("bdh_cuda", 4.0), row("spikingjelly", 8.0)]
    lines = "\n".join(report.gpu_goal_lines(rows))
    assert "PASS: bdh_triton fwd+bwd bfloat16 [128, 32, 131072] 6.00 ms reaches 83% of the copy bandwidth" in lines
    assert "FALLS SHORT: bdh_triton fwd+bwd bfloat16 [128, 32, 131072] 6.00 ms is 1.33x SpikingJelly's fastest " \
           "(bfloat16, 8.00 ms)" in lines
    assert "PASS: bdh_cuda fwd+bwd bfloat16 [128, 32, 131072] 4.00 ms reaches 125%" in lines
    # SpikingJelly's fastest run of the shape counts, whatever its dtype
    faster_in_fp32 = dict(row("spikingjelly", 5.0), dtype="float32")
    lines = "\n".join(report.gpu_goal_lines(rows + [faster_in_fp32]))
    assert "PASS: bdh_cuda fwd+bwd bfloat16 [128, 32, 131072] 4.00 ms is 1.25x SpikingJelly's fastest" not in lines
    assert "FALLS SHORT: bdh_cuda fwd+bwd bfloat16 [128, 32, 131072] 4.00 ms is 1.25x SpikingJelly's fastest " \
           "(float32, 5.00 ms)" in lines
    small = [dict(r, shape=(128, 8, 4096)) for r in rows]
    assert report.gpu_goal_lines(small) == []  # below 2^22 neurons the goals do not apply


def test_stdp_tables_from_a_benchmark_json(tmp_path, monkeypatch):
    """benchmarks/bench_stdp.py's tables: the update's cases with their ratios and goal lines, and the
    one-product cases (spike_matmul against torch.mm per spike probability)."""
    monkeypatch.syspath_prepend(os.path.join(HERE, "..", "benchmarks"))  # its `from goals import ...`
    spec = importlib.util.spec_from_file_location("bench_stdp", os.path.join(HERE, "..", "benchmarks", "bench_stdp.py"))
    bench_stdp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_stdp)
    cases = []
    for lib, ms in (("floor", 30.0), ("bdh_cpp", 10.0), ("spikingjelly", 1500.0)):
        cases.append({"extra_info": {"stdp_library": lib, "device": "cpu", "dtype": "float32", "full": True,
                                     "shape": [64, 32, 1024, 1024], "peak_bytes": 2**20},
                      "stats": {"median": ms / 1e3, "rounds": 5}})
    for lib, density, ms in (("spike_matmul", 0.1, 4.0), ("mm", 0.1, 13.0), ("spike_matmul", 0.2, 6.5)):
        cases.append({"extra_info": {"spike_product": lib, "density": density, "rows": 2048, "n_out": 1024,
                                     "n_in": 1024, "full": True}, "stats": {"median": ms / 1e3, "rounds": 5}})
    path = tmp_path / "stdp.json"
    path.write_text(json.dumps({"benchmarks": cases}))
    table = bench_stdp.markdown(str(path))
    assert "| bdh_cpp | 10.0 | 0.33 | 150 | 1.0 | 5 |" in table
    assert "PASS: cpu stdp_update 10.0 ms is 150x faster than SpikingJelly's per-step loop (1500 ms)" in table
    products = bench_stdp.product_table(str(path))
    assert "| 0.1 | 4.00 | 13.00 | 3.2x |" in products
    assert "| 0.2 |" not in products  # no torch.mm case to compare with


@pytest.mark.parametrize("content, why", [
    (None, "cannot read {path}: No such file or directory"),
    ("", "{path} is empty"),
    ("{", "{path} is not JSON"),
    ("[]", "{path} is not a pytest-benchmark JSON"),
    ('{"benchmarks": null}', "{path} is not a pytest-benchmark JSON"),
    ('{"benchmarks": [1]}', "{path} is not a pytest-benchmark JSON"),
    ('{"benchmarks": [{"name": "lif", "extra_info": {"library": "bdh_cpp"}}]}',
     "{path}: LIF benchmark 'lif' lacks a field the report needs (KeyError: 'device')"),
])
def test_report_on_a_bad_file_is_a_one_line_error(tmp_path, capsys, content, why):
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        report.main([str(path)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why.format(path=path) in err


def _run_script(name, args, monkeypatch):
    """Run benchmarks/<name> as `python benchmarks/<name> ARGS` would, in this process."""
    script = os.path.join(HERE, "..", "benchmarks", name)
    monkeypatch.syspath_prepend(os.path.dirname(script))  # its `from goals import ...`
    monkeypatch.setattr("sys.argv", [script, *args])
    runpy.run_path(script, run_name="__main__")


@pytest.mark.parametrize("name", ["bench_stdp.py", "bench_model.py"])
def test_report_scripts_check_their_argument(tmp_path, capsys, monkeypatch, name):
    with pytest.raises(SystemExit) as exit_:
        _run_script(name, [], monkeypatch)
    assert exit_.value.code == 2 and "usage:" in capsys.readouterr().err
    missing = tmp_path / "missing.json"
    with pytest.raises(SystemExit) as exit_:
        _run_script(name, [str(missing)], monkeypatch)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == f"{name}: error: cannot read {missing}: No such file or directory\n"
    empty = tmp_path / "empty.json"
    empty.write_text('{"benchmarks": []}')
    _run_script(name, [str(empty)], monkeypatch)
    assert f"no {'STDP' if name == 'bench_stdp.py' else 'model'} benchmark in {empty}" in capsys.readouterr().out


@pytest.mark.parametrize("name, case, why", [
    ("bench_stdp.py", {"name": "s", "extra_info": {"stdp_library": "bdh_cpp"}, "stats": {"median": 1}},
     "STDP benchmark 's' lacks a field the report needs (KeyError: 'device')"),
    ("bench_stdp.py", {"name": "p", "extra_info": {"spike_product": "mm"}, "stats": {"median": 1}},
     "spike product benchmark 'p' lacks a field the report needs (KeyError: 'density')"),
    ("bench_model.py", {"name": "m", "extra_info": {"model_case": "train_step", "full": True}, "stats": {"median": 1}},
     "model benchmark 'm' lacks a field the report needs (KeyError: 'variant')"),
    ("bench_model.py", {"name": "g", "extra_info": {"model_case": "generate", "full": True, "context": 8,
                                                     "per_byte_s": 0.1}, "stats": {"median": 1}},
     "model benchmark 'g' lacks a field the report needs (KeyError: 'rounds')"),
])
def test_report_scripts_name_a_case_lacking_a_field(tmp_path, capsys, monkeypatch, name, case, why):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": [case]}))
    with pytest.raises(SystemExit) as exit_:
        _run_script(name, [str(path)], monkeypatch)
    assert exit_.value.code == 1
    assert capsys.readouterr() == ("", f"{name}: error: {path}: {why}\n")


def test_benchmarks_start_without_pytest_benchmark():
    """Without the plugin the timed cases are skipped, saying why; the others run."""
    root = os.path.join(HERE, "..")
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:benchmark", "-p", "no:cacheprovider", "-rs",
                             "benchmarks/bench_lif.py::test_mode", "benchmarks/bench_stdp.py::test_stdp_cpu[floor]"],
                            cwd=root, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'pytest-benchmark is not loaded (pip install -e ".[test]" installs it): the benchmark cases are ' \
        'skipped' in result.stdout
    assert "1 passed, 1 skipped" in result.stdout
