"""STDP benchmarks: ``bdh_kernels.stdp_update`` against the per-step learners and the GEMM floor.

One case per (device, library), on spike trains ``pre [T, B, Nin]``, ``post [T, B, Nout]`` with spike
probability 0.1, tau_pre = tau_post = 20, a_plus = 0.01, a_minus = 0.0105. Full mode (``--benchmark``): CPU
fp32 T=64, B=32, Nin=Nout=1024 (issue 5); GPU fp32 T=64, B=32, Nin=Nout=4096. Smoke mode: T=8, B=2, N=64.

==========================  ==========================================================================
floor                       two bare GEMMs of the update's size (``torch.mm(post^T, trace_pre)``,
                            ``torch.mm(trace_post^T, pre)`` on ``[T*B, N]`` rows) plus the two trace scans
                            (the compiled scan op called directly: cpp on CPU, triton on GPU). The least
                            work a GEMM-based update does: ``stdp_update`` should be within 1.2x of it (on
                            CPU its spike-driven products, ``spike_matmul``, do less).
two_gemms                   the two GEMMs alone (the floor without the scans)
bdh_cpp / bdh_triton /      ``bdh_kernels.stdp_update(pre, post, ..., backend=...)``
bdh_cuda
bdh_cpp_soft_bounds         the same with ``weight``, ``w_min=0``, ``w_max=1``
bdh_reference               ``bdh_kernels.reference.stdp_update``: the per-step loop, one [B]-summed product
                            per step (no [B, Nout, Nin] tensor either)
spikingjelly                ``functional.learning.stdp_linear_step`` per step (its learner's loop), summing
                            ``delta_w`` with the weight fixed; f_pre / f_post the constant amplitudes
snntorch                    ``snntorch.functional.stdp_learner.stdp_linear_single_step`` per step, the same
==========================  ==========================================================================

``test_spike_product_cpu`` times one of the update's two products alone, ``post^T @ trace_pre`` over the
``T*B`` rows of the CPU shape, as ``spike_matmul`` (what ``stdp_update`` runs on cpp in fp32) and as
``torch.mm``, at spike probabilities 0.02, 0.1 and 0.2 (``extra_info``: ``spike_product``, ``density``).

``benchmark.extra_info`` of each case: ``stdp_library`` (not ``library``, so benchmarks/report.py, which
reads the LIF cases, skips these), device, dtype, shape ``[T, B, Nin, Nout]``, ``peak_bytes`` (CPU: the
largest amount of tensor memory allocated during one call, from the torch profiler's memory records; GPU:
``torch.cuda.max_memory_allocated`` above the start), ``floor_median_s``, ``ratio_to_floor``.
``test_stdp_goals`` prints issue 5's goal lines; ``python benchmarks/bench_stdp.py bench.json`` prints the
Markdown table of a JSON written with ``--benchmark-json``.
"""
import pytest
import torch

import bdh_kernels
import bdh_kernels.stdp as stdp_module
from bdh_kernels import backends as bdh_backends
from bdh_kernels import reference
from goals import print_goals, verdict
from memory import peak_cpu_bytes, peak_gpu_bytes
from report import load_cases, report_main

INSTALL = "pip install --no-deps -r requirements-peers.txt"
TAU_PRE = TAU_POST = 20.0
A_PLUS, A_MINUS = 0.01, 0.0105
SPIKE_PROB = 0.1
FULL_CPU = (64, 32, 1024, 1024)
FULL_GPU = (64, 32, 4096, 4096)
SMOKE = (8, 2, 64, 64)
CPU_LIBRARIES = ("floor", "two_gemms", "bdh_cpp", "bdh_cpp_soft_bounds", "bdh_reference", "spikingjelly", "snntorch")
GPU_LIBRARIES = ("floor", "two_gemms", "bdh_triton", "bdh_cuda", "spikingjelly")
RESULTS = {}  # (device, library) -> {"median_s", "peak_bytes"}


def shape_for(full, device):
    return (FULL_CPU if device == "cpu" else FULL_GPU) if full else SMOKE


def make_spikes(shape, device):
    t, b, n_in, n_out = shape
    gen = torch.Generator().manual_seed(0)
    pre = (torch.rand((t, b, n_in), generator=gen) < SPIKE_PROB).float().to(device)
    post = (torch.rand((t, b, n_out), generator=gen) < SPIKE_PROB).float().to(device)
    return pre, post


# ---------------------------------------------------------------------------------------- libraries
def _scan_op(device):
    backend = "cpp" if device == "cpu" else "triton"
    reason = bdh_backends.unavailable_reason(backend, torch.device(device))
    if reason:
        pytest.skip(f"the floor's scans need the {backend} backend: {reason}")
    return stdp_module._ops(backend)[0]


def _make(lib, pre, post):
    """A callable running ``lib`` once on (pre, post), returning dW."""
    device = pre.device.type
    t, b, n_in = pre.shape
    n_out = post.shape[-1]
    weight = torch.rand(n_out, n_in, generator=torch.Generator().manual_seed(1)).to(pre.device)
    if lib in ("floor", "two_gemms"):
        pre2, post2 = pre.reshape(-1, n_in), post.reshape(-1, n_out)
        scan = _scan_op(device)
        # the GEMMs' operands: the traces, computed once here (the floor recomputes them below)
        trace_pre2 = scan(pre.reshape(1, t, b * n_in), None, TAU_PRE)[0].view(-1, n_in)
        trace_post2 = scan(post.reshape(1, t, b * n_out), None, TAU_POST)[0].view(-1, n_out)

        def gemms():
            return torch.mm(post2.t(), trace_pre2), torch.mm(trace_post2.t(), pre2)

        if lib == "two_gemms":
            return gemms

        def floor():
            scan(pre.reshape(1, t, b * n_in), None, TAU_PRE)
            scan(post.reshape(1, t, b * n_out), None, TAU_POST)
            return gemms()

        return floor
    if lib.startswith("bdh_") and lib != "bdh_reference":
        backend = lib.split("_")[1]
        reason = bdh_backends.unavailable_reason(backend, torch.device(device))
        if reason:
            pytest.skip(f"bdh_kernels backend {backend!r} unavailable: {reason}")
        kw = dict(weight=weight, w_min=0.0, w_max=1.0) if lib.endswith("soft_bounds") else {}
        return lambda: bdh_kernels.stdp_update(pre, post, TAU_PRE, TAU_POST, A_PLUS, A_MINUS, backend=backend, **kw)[0]
    if lib == "bdh_reference":
        return lambda: reference.stdp_update(pre, post, TAU_PRE, TAU_POST, A_PLUS, A_MINUS)[0]
    if lib == "spikingjelly":
        learning = pytest.importorskip("spikingjelly.activation_based.functional.learning",
                                       reason=f"SpikingJelly is not installed ({INSTALL})")

        def run_sj():
            trace = (torch.zeros_like(pre[0]), torch.zeros_like(post[0]))
            total = torch.zeros_like(weight)
            for pre_t, post_t in zip(pre.unbind(0), post.unbind(0)):
                dw, trace = learning.stdp_linear_step(pre_t, post_t, trace, weight, tau_pre=TAU_PRE,
                                                      tau_post=TAU_POST, f_pre=lambda w: A_MINUS,
                                                      f_post=lambda w: A_PLUS)
                total += dw
            return total

        return run_sj
    if lib == "snntorch":
        stdp = pytest.importorskip("snntorch.functional.stdp_learner", reason=f"snnTorch is not installed ({INSTALL})")
        fc = torch.nn.Linear(n_in, n_out, bias=False).to(pre.device)
        with torch.no_grad():
            fc.weight.copy_(weight)

        def run_snn():
            trace_pre = trace_post = None
            total = torch.zeros_like(weight)
            for pre_t, post_t in zip(pre.unbind(0), post.unbind(0)):
                trace_pre, trace_post, dw = stdp.stdp_linear_single_step(
                    fc, pre_t, post_t, trace_pre, trace_post, TAU_PRE, TAU_POST,
                    f_pre=lambda w: A_MINUS, f_post=lambda w: A_PLUS)
                total += dw
            return total

        return run_snn
    raise ValueError(lib)


# -------------------------------------------------------------------------------------- measurement
def _bench(benchmark, full, device, lib):
    shape = shape_for(full, device)
    pre, post = make_spikes(shape, device)
    fn = _make(lib, pre, post)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        out = fn()
        sync()
        return out

    step()  # warm-up: first calls, allocator, Triton compilation outside the timing
    peak = peak_cpu_bytes(step) if device == "cpu" else peak_gpu_bytes(step)
    benchmark.group = f"stdp {device} float32 [{','.join(map(str, shape))}]"
    if full:
        benchmark(step)
    else:
        benchmark.pedantic(step, rounds=1, iterations=1)
    stats = getattr(benchmark, "stats", None)
    median = stats.stats.median if stats is not None else None
    if median is not None:
        RESULTS[(device, lib)] = {"median_s": median, "peak_bytes": peak}
    floor = RESULTS.get((device, "floor"), {}).get("median_s")
    benchmark.extra_info.update({
        "stdp_library": lib, "device": device, "dtype": "float32", "shape": list(shape), "full": full,
        "peak_bytes": peak, "floor_median_s": floor,
        "ratio_to_floor": (median / floor) if (median is not None and floor) else None,
    })


@pytest.mark.parametrize("lib", CPU_LIBRARIES)
def test_stdp_cpu(benchmark, full, lib):
    _bench(benchmark, full, "cpu", lib)


@pytest.mark.parametrize("lib", GPU_LIBRARIES)
def test_stdp_gpu(benchmark, full, lib):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the GPU STDP benchmarks run only where torch.cuda.is_available()")
    _bench(benchmark, full, "cuda", lib)


PRODUCT_DENSITIES = (0.02, 0.1, 0.2)  # below spike_matmul's 25% switch to the GEMM


@pytest.mark.parametrize("density", PRODUCT_DENSITIES)
@pytest.mark.parametrize("lib", ("spike_matmul", "mm"))
def test_spike_product_cpu(benchmark, full, lib, density):
    if bdh_backends.extension_error() is not None:
        pytest.skip(f"spike_matmul is in the C++ extension: {bdh_backends.extension_error()}")
    t, b, n_in, n_out = shape_for(full, "cpu")
    gen = torch.Generator().manual_seed(2)
    post = (torch.rand((t * b, n_out), generator=gen) < density).float()
    trace_pre = torch.rand((t * b, n_in), generator=gen)
    out = torch.empty(n_out, n_in)
    if lib == "mm":
        def step():
            torch.mm(post.t(), trace_pre, out=out)
    else:
        def step():
            torch.ops.bdh.spike_matmul(out, post, trace_pre, 1.0, False, False)

    step()
    benchmark.group = f"stdp one product cpu float32 [{t * b}, {n_out}] x [{t * b}, {n_in}]"
    if full:
        benchmark(step)
    else:
        benchmark.pedantic(step, rounds=1, iterations=1)
    benchmark.extra_info.update({"spike_product": lib, "density": density, "rows": t * b, "n_out": n_out,
                                 "n_in": n_in, "full": full})


def product_row(info, stats) -> dict:
    """The fields of a one-product case that the table reads."""
    return {"product": info["spike_product"], "density": info["density"], "rows": info["rows"],
            "n_out": info["n_out"], "n_in": info["n_in"], "median_s": stats["median"]}


def product_table(path):
    """The Markdown table of the one-product cases in a pytest-benchmark JSON ('' when there are none)."""
    _, rows = load_cases(path, "spike_product", "spike product", product_row)
    if not rows:
        return ""
    medians = {(r["product"], r["density"]): r["median_s"] for r in rows}
    first = rows[0]
    title = (f"one product, post^T @ trace_pre: [{first['rows']}, {first['n_out']}] spikes, [{first['rows']}, "
             f"{first['n_in']}] traces:")
    out = [title, "", "| spike probability | spike_matmul ms | torch.mm ms | torch.mm / spike_matmul |",
           "|---|---|---|---|"]
    for density in sorted({d for _, d in medians}):
        sparse, dense = medians.get(("spike_matmul", density)), medians.get(("mm", density))
        if sparse and dense:
            out.append(f"| {density} | {sparse * 1e3:.2f} | {dense * 1e3:.2f} | {dense / sparse:.1f}x |")
    return "\n".join(out + [""])


def goal_lines(results, full):
    """Issue 5's goals, as pass / falls-short lines (goals, not assertions)."""
    lines = []
    get = results.get
    cpp, floor, sj = get(("cpu", "bdh_cpp")), get(("cpu", "floor")), get(("cpu", "spikingjelly"))
    if cpp and sj:
        x = sj["median_s"] / cpp["median_s"]
        lines.append(f"{verdict(x >= 100, full)}: cpu stdp_update {cpp['median_s'] * 1e3:.1f} ms is {x:.0f}x faster than "
                     f"SpikingJelly's per-step loop ({sj['median_s'] * 1e3:.0f} ms); goal >= 100x")
    if cpp and floor:
        r = cpp["median_s"] / floor["median_s"]
        lines.append(f"{verdict(r <= 1.2, full)}: cpu stdp_update takes {r:.2f}x the floor (2 GEMMs + 2 scans, "
                     f"{floor['median_s'] * 1e3:.1f} ms); goal <= 1.2x")
    for backend in ("triton", "cuda"):
        gpu, gfloor = get(("cuda", f"bdh_{backend}")), get(("cuda", "floor"))
        if gpu and gfloor:
            r = gpu["median_s"] / gfloor["median_s"]
            lines.append(f"{verdict(r <= 1.3, full)}: gpu stdp_update ({backend}) takes {r:.2f}x the floor (cuBLAS "
                         f"GEMMs + scans, {gfloor['median_s'] * 1e3:.2f} ms); goal <= 1.3x")
    return lines


def test_stdp_goals(full, capsys):
    """Prints the goal lines of the cases measured above in this run."""
    print_goals(capsys, "stdp goals (issue 5)", goal_lines(RESULTS, full), full, "no STDP case measured in this run")


# --------------------------------------------------------------------------------------------- report
def update_row(info, stats) -> dict:
    """The fields of an update case that the table and the goal lines read."""
    return {"library": info["stdp_library"], "device": info["device"], "shape": info["shape"], "full": info["full"],
            "peak_bytes": info["peak_bytes"], "median_s": stats["median"], "rounds": stats["rounds"]}


def markdown(path):
    """The Markdown table of the STDP cases in a pytest-benchmark JSON."""
    _, rows = load_cases(path, "stdp_library", "STDP", update_row)
    if not rows:
        return f"no STDP benchmark in {path}"
    results = {(r["device"], r["library"]): r for r in rows}
    out = []
    for device in ("cpu", "cuda"):
        grp = [r for r in rows if r["device"] == device]
        if not grp:
            continue
        t, b, n_in, n_out = grp[0]["shape"]
        floor = results.get((device, "floor"), {}).get("median_s")
        sj = results.get((device, "spikingjelly"), {}).get("median_s")
        out += [f"{device}, fp32, T={t}, B={b}, Nin={n_in}, Nout={n_out}, spike probability {SPIKE_PROB}:", "",
                "| library | median ms | / floor | SpikingJelly / this | peak MiB allocated | rounds |",
                "|---|---|---|---|---|---|"]
        for r in grp:
            m = r["median_s"]
            out.append(f"| {r['library']} | {m * 1e3:.1f} | {m / floor:.2f} | " if floor else
                       f"| {r['library']} | {m * 1e3:.1f} | – | ")
            out[-1] += (f"{sj / m:.0f} | " if sj else "– | ") + f"{r['peak_bytes'] / 2**20:.1f} | {r['rounds']} |"
        out.append("")
    return "\n".join(out + goal_lines(results, all(r["full"] for r in rows)))


if __name__ == "__main__":
    report_main("Markdown tables of the STDP cases in a pytest-benchmark JSON.", markdown, product_table)
