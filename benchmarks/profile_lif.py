"""Where one LIF forward + backward spends its time: host work and kernels, from torch.profiler.

    python benchmarks/profile_lif.py --backend cpp --shape 128,32,4096
    python benchmarks/profile_lif.py --backend triton --shape 128,32,4096 --dtype bfloat16 --device cuda

Times ``--calls`` forward + backward calls (as bench_lif.py's fwd+bwd case: the input gradient for a fixed
output gradient, synchronised after each call) without the profiler, then profiles as many more and prints
the profiler's table by self CPU time (by device time too on a GPU). On small shapes the wall time per
call is mostly host work (Python, the custom ops' dispatch, autograd, kernel launches); the table says
which.
"""
import argparse
import time

import torch

import bdh_kernels
from bdh_kernels import backends as bdh_backends


def _shape(text):
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape takes comma-separated sizes like 128,32,4096, got {text!r}")
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"--shape needs >= 2 positive sizes (time first), got {text!r}")
    return shape


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _device(text):
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"--device takes cpu, cuda or cuda:INDEX, got {text!r}")
    return device


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default=None, choices=bdh_backends.BACKENDS,
                    help="bdh_kernels backend (default: the automatic choice)")
    ap.add_argument("--shape", type=_shape, default=(128, 32, 4096), help="[T, ...] sizes, time first")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "float64"))
    ap.add_argument("--device", type=_device, default="cpu", help="cpu or cuda (default: cpu)")
    ap.add_argument("--output", default="spike", choices=("spike", "gated"), help="the op's output (default: spike)")
    ap.add_argument("--calls", type=_positive, default=20, help="calls timed, and calls profiled (default 20)")
    ap.add_argument("--rows", type=_positive, default=15, help="rows of each profiler table (default 15)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    reason = args.backend and bdh_backends.unavailable_reason(args.backend, device)
    if reason:
        raise SystemExit(f"--backend {args.backend}: {reason}")
    gen = torch.Generator(device=device).manual_seed(0)
    x = (torch.randn(args.shape, generator=gen, device=device) * 1.5 + 0.6).to(getattr(torch, args.dtype))
    x.requires_grad_(True)
    grad_out = torch.randn(args.shape, generator=gen, device=device).to(x.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def call():
        out = bdh_kernels.lif(x, backend=args.backend, output=args.output)
        torch.autograd.grad(out, x, grad_out)
        sync()

    call()  # first call: compiles (Triton), allocates; not timed
    start = time.perf_counter()
    for _ in range(args.calls):
        call()
    per_call = (time.perf_counter() - start) / args.calls
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.calls):
            call()
    table = prof.key_averages()
    print(f"lif fwd+bwd {args.dtype} {list(args.shape)} {args.output} on {device}, backend {args.backend or 'auto'}: "
          f"{per_call * 1e3:.3f} ms per call (wall, {args.calls} calls, without the profiler)")
    print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if device.type == "cuda":
        print(table.table(sort_by="self_device_time_total", row_limit=args.rows))
    return per_call


if __name__ == "__main__":
    main()
