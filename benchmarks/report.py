"""Markdown tables (and optional PNG plots) from a pytest-benchmark JSON of benchmarks/bench_lif.py.

    pytest benchmarks/ --benchmark --benchmark-json=lif_bench.json
    python benchmarks/report.py lif_bench.json                    # Markdown to stdout
    python benchmarks/report.py lif_bench.json --plots plots/     # also PNGs, if matplotlib is installed

Tables, per device / dtype / mode: the median (and min) in ms of each library on each shape; each median over the
4-clone floor measured in the same run for the same shape; bytes autograd saves per neuron-step
(fwd+bwd); and the goal lines of issue 3 for bdh_cpp on [128, 32, 4096]. Everything is computed from the
JSON's medians (not from numbers recorded elsewhere).

The other report scripts (``python benchmarks/bench_stdp.py bench.json``, ``bench_model.py``) share this one's
command line and file checks (:func:`report_main`) and its reading of the cases (:func:`load_cases`).
"""
import argparse
import json
import os
import sys
from collections import defaultdict

LIBRARY_ORDER = ["bdh_cpp", "bdh_triton", "bdh_cuda", "bdh_reference", "spikingjelly", "snntorch_unbind",
                 "norse_lifbox_unbind", "norse_lifcell_unbind", "plain_loop", "floor_4_clones"]
PEERS = ["spikingjelly", "snntorch_unbind", "norse_lifbox_unbind", "norse_lifcell_unbind"]
TARGET_SHAPE = (128, 32, 4096)


class ReportError(Exception):
    """A benchmark JSON the reports cannot use (missing, unreadable, not pytest-benchmark's layout): printed
    as one line naming the file, exit status 1."""


def read_json(path) -> dict:
    """The pytest-benchmark JSON at path: an object whose "benchmarks", if present, is a list of objects.
    Anything else is a ReportError naming path."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ReportError(f"cannot read {path}: {e.strerror or e}") from e
    except ValueError as e:  # not UTF-8
        raise ReportError(f"cannot read {path}: {e}") from e
    if not text.strip():
        raise ReportError(f"{path} is empty (did the benchmark run finish?)")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ReportError(f"{path} is not JSON: {e}") from e
    benchmarks = data.get("benchmarks", []) if isinstance(data, dict) else None
    if not isinstance(benchmarks, list) or not all(isinstance(b, dict) for b in benchmarks):
        raise ReportError(f"{path} is not a pytest-benchmark JSON: expected an object with a list of "
                          f"benchmark objects under \"benchmarks\"")
    return data


def load_cases(path, marker: str, kind: str, row):
    """The JSON at path and row(extra_info, stats) of each of its cases whose extra_info holds marker. A
    case lacking a field row reads (a KeyError or TypeError) is a ReportError naming the case, as a
    ``kind`` benchmark."""
    data = read_json(path)
    rows = []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info") or {}
        if marker not in info:
            continue
        try:
            rows.append(row(info, b.get("stats", {})))
        except (KeyError, TypeError) as e:
            raise ReportError(f"{path}: {kind} benchmark {b.get('name', '?')!r} lacks a field the report needs "
                              f"({type(e).__name__}: {e})") from e
    return data, rows


def lif_row(info, stats) -> dict:
    """The fields of a LIF case that the tables read."""
    return {"device": info["device"], "dtype": info["dtype"], "mode": info["mode"], "shape": tuple(info["shape"]),
            "library": info["library"], "full": info.get("full"), "median_s": stats["median"], "min_s": stats["min"],
            "rounds": stats["rounds"], "saved": info.get("saved_bytes_per_neuron_step")}


def load(path):
    """The JSON at path and its LIF cases, one row each; a LIF case without the fields the tables need
    is a ReportError."""
    return load_cases(path, "library", "LIF", lif_row)


def _libs(rows):
    present = {r["library"] for r in rows}
    return [lib for lib in LIBRARY_ORDER if lib in present] + sorted(present - set(LIBRARY_ORDER))


def _shape(shape):
    return "[" + ", ".join(map(str, shape)) + "]"


def _table(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def header_lines(data, rows):
    mi = data.get("machine_info", {})
    cpu = mi.get("cpu", {}) or {}
    out = ["## Run", ""]
    out.append(f"- date: {data.get('datetime', '?')}")
    out.append(f"- machine: {mi.get('node', '?')}, {cpu.get('brand_raw', mi.get('processor', '?'))}, "
               f"{mi.get('bdh_cpu_count', cpu.get('count', '?'))} CPUs visible to torch: "
               f"{mi.get('bdh_torch_threads', '?')} threads")
    out.append(f"- python {mi.get('python_version', '?')}, torch {mi.get('bdh_torch', '?')}, "
               f"pytest-benchmark {data.get('version', '?')}")
    if mi.get("bdh_cuda_device"):
        out.append(f"- GPU: {mi['bdh_cuda_device']}")
    peers = mi.get("bdh_peer_versions")
    if peers:
        out.append("- peers: " + ", ".join(f"{k} {v}" for k, v in peers.items()))
    if mi.get("bdh_backends"):
        out.append(f"- bdh_kernels backends available: {', '.join(mi['bdh_backends'])}")
    start, end = mi.get("bdh_loadavg_start"), mi.get("bdh_loadavg_end")
    if start and end:
        out.append(f"- load average (1, 5, 15 min) at start: {', '.join(f'{v:.2f}' for v in start)}; "
                   f"at end: {', '.join(f'{v:.2f}' for v in end)} (the run itself adds about 2 at the end)")
    if mi.get("bdh_cpu_busy_at_start") is not None:
        busy = mi["bdh_cpu_busy_at_start"]
        out.append(f"- CPU busy with other work during 1 s before the run: {busy:.0%}"
                   + (" (**timings unreliable**)" if busy > 0.2 else ""))
    full = {r["full"] for r in rows}
    if full == {False}:
        out.append("- **smoke run** (tiny sizes, one round each): these timings mean nothing")
    rounds = sorted({r["rounds"] for r in rows})
    if rounds:
        out.append(f"- rounds per case: {rounds[0]}–{rounds[-1]} (median reported)")
    return out


def tables(rows):
    out = []
    groups = defaultdict(list)
    for r in rows:
        groups[(r["device"], r["dtype"], r["mode"])].append(r)
    for (device, dtype, mode), grp in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "fwd")):
        libs = _libs(grp)
        shapes = sorted({r["shape"] for r in grp}, key=lambda s: [s != TARGET_SHAPE] + list(s))
        by = {(r["shape"], r["library"]): r for r in grp}
        title = f"{device} {dtype}, {'forward (no_grad)' if mode == 'fwd' else 'forward + backward'}"
        out += [f"### {title}: median ms", ""]
        out.append(_table(["T, B, N"] + libs, [
            [_shape(s)] + [f"{by[(s, lib)]['median_s'] * 1e3:.2f}" if (s, lib) in by else "–" for lib in libs]
            for s in shapes]))
        out.append("")
        out += [f"### {title}: min ms (the least disturbed round; compare with the median for noise)", ""]
        out.append(_table(["T, B, N"] + libs, [
            [_shape(s)] + [f"{by[(s, lib)]['min_s'] * 1e3:.2f}" if (s, lib) in by else "–" for lib in libs]
            for s in shapes]))
        out.append("")
        if any(lib == "floor_4_clones" for lib in libs):
            out += [f"### {title}: time / time of 4 clones of x (same run, same shape)", ""]
            body = []
            for s in shapes:
                floor = by.get((s, "floor_4_clones"))
                row = [_shape(s)]
                for lib in libs:
                    r = by.get((s, lib))
                    row.append(f"{r['median_s'] / floor['median_s']:.2f}" if r and floor else "–")
                body.append(row)
            out.append(_table(["T, B, N"] + libs, body))
            out.append("")
        if mode == "fwd+bwd":
            saved_libs = [lib for lib in libs if lib != "floor_4_clones"]
            out += [f"### {title}: bytes saved for backward per neuron-step (besides the input)", ""]
            out.append(_table(["T, B, N"] + saved_libs, [
                [_shape(s)] + [f"{by[(s, lib)]['saved']:.3f}" if (s, lib) in by and by[(s, lib)]["saved"] is not None
                               else "–" for lib in saved_libs] for s in shapes]))
            out.append("")
    return out


def goal_lines(rows):
    """Issue 3's goals for bdh_cpp, fp32 forward+backward on [128, 32, 4096]."""
    by = {(r["library"]): r for r in rows
          if (r["device"], r["dtype"], r["mode"], r["shape"]) == ("cpu", "float32", "fwd+bwd", TARGET_SHAPE)}
    out = ["## Goals of issue 3 (bdh_cpp, fp32, forward + backward, [128, 32, 4096])", ""]
    cpp = by.get("bdh_cpp")
    if cpp is None:
        return out + ["- not measured in this run (needs `--benchmark` and the cpp backend)", ""]
    peers = {p: by[p] for p in PEERS if p in by}
    if peers:
        best = min(peers, key=lambda p: peers[p]["median_s"])
        speedup = peers[best]["median_s"] / cpp["median_s"]
        out.append(f"- {'PASS' if speedup >= 3 else 'FALLS SHORT'}: speedup over the fastest peer {speedup:.2f}x "
                   f"(bdh_cpp {cpp['median_s'] * 1e3:.1f} ms, {best} {peers[best]['median_s'] * 1e3:.1f} ms); goal >= 3x")
    else:
        out.append("- no peer measured (pip install --no-deps -r requirements-peers.txt)")
    floor = by.get("floor_4_clones")
    if floor:
        ratio = cpp["median_s"] / floor["median_s"]
        out.append(f"- {'PASS' if ratio <= 1 else 'FALLS SHORT'}: {ratio:.2f}x the time of four clones of x "
                   f"({floor['median_s'] * 1e3:.1f} ms); goal <= 1x")
    if cpp["saved"] is not None:
        out.append(f"- {'PASS' if cpp['saved'] <= 1 else 'FALLS SHORT'}: {cpp['saved']:.3f} bytes saved per "
                   "neuron-step; goal <= 1")
    return out + [""]


GPU_MIN_NEURONS = 2**22  # B*N from which the GPU goals apply
FWD_BWD_TRAFFIC = 5  # elements per neuron-step fwd+bwd must move: x and out (forward), x, grad_out and grad_x
FLOOR_TRAFFIC = 8    # elements per neuron-step the 4-clone floor moves: 4 reads and 4 writes


def gpu_goal_lines(rows):
    """Issue 3's GPU goals for the fast backends, forward + backward, on shapes with B*N >= 2^22: at least 80%
    of the copy bandwidth (5 elements moved per neuron-step at the rate the same run's 4-clone floor moves 8)
    and at least 1.5x SpikingJelly's fastest run of that shape, in any dtype of the run (SpikingJelly's
    Triton kernel needs a float32 membrane state, so given bf16 input its LIFNode takes its PyTorch loop;
    a user who wants speed feeds it fp32)."""
    by = {(r["dtype"], r["shape"], r["library"]): r for r in rows if r["device"] == "cuda" and r["mode"] == "fwd+bwd"}
    cases = sorted({(d, s) for d, s, _ in by if s[1] * s[2] >= GPU_MIN_NEURONS})
    out = []
    for dtype, shape in cases:
        floor = by.get((dtype, shape, "floor_4_clones"))
        sj_runs = [(r["median_s"], d) for (d, s, lib), r in by.items() if s == shape and lib == "spikingjelly"]
        sj = min(sj_runs) if sj_runs else None
        for lib in ("bdh_triton", "bdh_cuda"):
            fast = by.get((dtype, shape, lib))
            if fast is None:
                continue
            label = f"{lib} fwd+bwd {dtype} {_shape(shape)} {fast['median_s'] * 1e3:.2f} ms"
            if floor:
                share = FWD_BWD_TRAFFIC / FLOOR_TRAFFIC * floor["median_s"] / fast["median_s"]
                out.append(f"- {'PASS' if share >= 0.8 else 'FALLS SHORT'}: {label} reaches {share:.0%} of the copy "
                           f"bandwidth (4 clones: {floor['median_s'] * 1e3:.2f} ms); goal >= 80%")
            if sj:
                speedup = sj[0] / fast["median_s"]
                out.append(f"- {'PASS' if speedup >= 1.5 else 'FALLS SHORT'}: {label} is {speedup:.2f}x SpikingJelly's "
                           f"fastest ({sj[1]}, {sj[0] * 1e3:.2f} ms); goal >= 1.5x")
    if out:
        out = ["## GPU goals of issue 3 (fast backends, forward + backward, B*N >= 2^22)", ""] + out + [""]
    return out


def plots(rows, folder):
    """PNG charts of rows in folder (made by :func:`plot_folder`); the paths written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("<!-- plots skipped: matplotlib is not installed (pip install matplotlib) -->", file=sys.stderr)
        return []
    written = []
    groups = defaultdict(list)
    for r in rows:
        groups[(r["device"], r["dtype"], r["mode"])].append(r)
    for (device, dtype, mode), grp in groups.items():
        libs = _libs(grp)
        shapes = sorted({r["shape"] for r in grp}, key=lambda s: [s != TARGET_SHAPE] + list(s))
        by = {(r["shape"], r["library"]): r["median_s"] * 1e3 for r in grp}
        fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(libs) * len(shapes) / 3, 4.5))
        width = 0.8 / len(libs)
        for i, lib in enumerate(libs):
            xs = [j + i * width for j in range(len(shapes))]
            ax.bar(xs, [by.get((s, lib), 0) for s in shapes], width, label=lib)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
        ax.set_xticklabels([_shape(s) for s in shapes])
        ax.set_yscale("log")
        ax.set_ylabel("median ms (log)")
        ax.set_title(f"LIF {device} {dtype} {mode}")
        written.append(_save(plt, fig, ax, folder, f"lif_{device}_{dtype}_{mode.replace('+', '_')}.png"))
    return written + sweep_plots(rows, folder, plt)


def _save(plt, fig, ax, folder, name):
    """Legend, layout, PNG; returns the path written."""
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = os.path.join(folder, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweeps(rows):
    """The fwd+bwd sweep families in rows: {(device, dtype, "T" or "N"): [rows]} with >= 3 sizes each.

    The T family holds B and N fixed at the most common (B, N) among shapes that share it; the N family
    holds T and B fixed likewise."""
    families = defaultdict(list)
    for r in rows:
        if r["mode"] != "fwd+bwd":
            continue
        t, b, n = r["shape"]
        families[(r["device"], r["dtype"], "T", (b, n))].append(r)
        families[(r["device"], r["dtype"], "N", (t, b))].append(r)
    best = {}
    for (device, dtype, axis, fixed), grp in families.items():
        count = len({r["shape"] for r in grp})
        key = (device, dtype, axis)
        if count >= 3 and count > best.get(key, (0, None))[0]:
            best[key] = (count, grp)
    return {key: grp for key, (_, grp) in best.items()}


def plot_folder(folder) -> None:
    """Create the ``--plots`` folder (and its parents) if need be: a path that is not a writable folder
    there is a ReportError."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ReportError(f"--plots {folder}: not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ReportError(f"--plots {folder}: cannot create the folder: {e.strerror or e}") from e
    if not os.access(folder, os.W_OK):
        raise ReportError(f"--plots {folder}: the folder is not writable")


def sweep_plots(rows, folder, plt):
    """Log-log lines of median time against T and against N, one line per library."""
    written = []
    for (device, dtype, axis), grp in sweeps(rows).items():
        index = 0 if axis == "T" else 2
        fixed = {0: "T", 1: "B", 2: "N"}
        t, b, n = grp[0]["shape"]
        held = f"B={b}, N={n}" if axis == "T" else f"T={t}, B={b}"
        fig, ax = plt.subplots(figsize=(6.4, 4.5))
        for lib in _libs(grp):
            pts = sorted((r["shape"][index], r["median_s"] * 1e3) for r in grp if r["library"] == lib)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=lib)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(fixed[index])
        ax.set_ylabel("median ms (log)")
        ax.set_title(f"LIF fwd+bwd {device} {dtype}: time vs {axis} ({held})")
        written.append(_save(plt, fig, ax, folder, f"lif_{device}_{dtype}_time_vs_{axis}.png"))
    return written


def json_parser(description: str) -> argparse.ArgumentParser:
    """The report scripts' argument parser: one positional argument, the pytest-benchmark JSON."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("json", help="file written by pytest --benchmark-json")
    return ap


def checked(ap: argparse.ArgumentParser, loader, path):
    """loader(path); a ReportError ends the program as a one-line error (exit status 1)."""
    try:
        return loader(path)
    except ReportError as e:
        ap.exit(1, f"{ap.prog}: error: {e}\n")


def report_main(description: str, *tables, argv=None) -> None:
    """The command line of a report script: ``SCRIPT bench.json`` prints each table(path) in turn, once all
    are made. No argument is a usage error (exit status 2); a file that is not a readable pytest-benchmark
    JSON, or a case lacking a field a table reads, a one-line error (exit status 1)."""
    ap = json_parser(description)
    path = ap.parse_args(argv).json
    for text in [checked(ap, table, path) for table in tables]:
        print(text)


def main(argv=None):
    ap = json_parser(__doc__.splitlines()[0])
    ap.add_argument("--plots", metavar="DIR", help="also write PNG bar charts there (needs matplotlib)")
    args = ap.parse_args(argv)
    data, rows = checked(ap, load, args.json)
    if not rows:
        print(f"no LIF benchmark in {args.json}", file=sys.stderr)
        return 1
    if args.plots:
        checked(ap, plot_folder, args.plots)  # before the tables: a bad folder is said alone
    print("\n".join(header_lines(data, rows) + [""] + goal_lines(rows) + gpu_goal_lines(rows) + tables(rows)))
    if args.plots:
        for path in plots(rows, args.plots):
            print(f"<!-- plot written: {path} -->")
    return 0


if __name__ == "__main__":
    sys.exit(main())
