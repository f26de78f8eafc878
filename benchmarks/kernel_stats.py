"""Registers, spills and machine instructions of the Triton LIF kernels, compiled for an NVIDIA GPU
without one: Triton's compiler and the ptxas and cuobjdump that ship with it.

    python benchmarks/kernel_stats.py                                   # fwd and bwd, bf16, spike output
    python benchmarks/kernel_stats.py --kernel bwd --output gated --surrogate atan --maxnreg 96

A step of the kernels is a few flops, so the backward's speed is bounded by the instructions it issues
as much as by the bytes it moves: this is the instrument for changing the kernels where no GPU is at
hand. The launch is specialised as ``bdh_kernels.triton.lif`` launches a contiguous input, ``[T, B, N]``
or with ``--time-inside`` ``[B, H, T, N]`` (one program of 128 neurons, 4 warps; pointers 16-byte
aligned, the inner size a multiple of 16). The segment loops are unrolled, so the instruction count
divided by the segment length (32 steps) is the cost of a neuron-step, prologue and epilogue included.

Triton is an extra (``pip install -e ".[triton]"``): it is imported once the arguments are parsed, so that
``--help`` works without it.
"""
import argparse
import collections
import contextlib
import io
import os
import re
import subprocess
import tempfile
import time

from bdh_kernels.backends import TRITON_MAXNREG_ENV as MAXNREG_ENV
from bdh_kernels.lif import CHECKPOINT_EVERY
from bdh_kernels.surrogate import SURROGATES

BLOCK_N, NUM_WARPS = 128, 4
# the compute capabilities (x10) that Triton's NVIDIA backend compiles for, and its ptxas and cuobjdump
# take: Turing (75) on; checked with Triton 3.9
ARCHS = (75, 80, 86, 87, 89, 90, 100, 103, 110, 120, 121)
TRITON_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
# pointer arguments in the input's dtype; the others are fp32 states, checkpoints and their gradients
IO_POINTERS = {"x_ptr", "out_ptr", "grad_out_ptr", "grad_x_ptr"}
# integer arguments that a launch on a contiguous input leaves unspecialised (Triton's do_not_specialize)
UNSPECIALISED = {"T", "num_ckpt", "stride_xp", "stride_gp"}
UNIT_STRIDES = {"stride_xq", "stride_gq"}  # == 1 for a contiguous input: Triton makes them constants


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", default="both", choices=("fwd", "bwd", "both"))
    ap.add_argument("--dtype", default="bfloat16", choices=tuple(TRITON_DTYPES))
    ap.add_argument("--output", default="spike", choices=("spike", "gated"))
    ap.add_argument("--surrogate", default="sigmoid", choices=tuple(SURROGATES))
    ap.add_argument("--tau-syn", action="store_true", help="current-based LIF (tau_syn set)")
    ap.add_argument("--soft-reset", action="store_true", help="reset by subtraction (v_reset=None)")
    ap.add_argument("--time-inside", action="store_true", help="neurons on both sides of time, as the "
                    "model's [B, heads, T, N] (default: time first, [T, B, N])")
    ap.add_argument("--maxnreg", type=_register_cap, default=None, metavar="R",
                    help=f"cap on registers per thread, as ${MAXNREG_ENV} (default: none, Triton's choice)")
    ap.add_argument("--arch", type=int, default=90, choices=ARCHS, metavar="SM",
                    help=f"compute capability x10, one of {', '.join(map(str, ARCHS))} (default 90: H100/H200)")
    ap.add_argument("--opcodes", type=int, default=0, metavar="K", help="also list the K most frequent opcodes")
    return ap.parse_args(argv)


def _register_cap(text):
    if not text.isdigit() or not 24 <= int(text) <= 255:
        raise argparse.ArgumentTypeError(f"must be an integer in [24, 255], got {text!r}")
    return int(text)


def _constants(args, backward):
    flags = dict(SYN=args.tau_syn, DECAY_INPUT=True, HARD_RESET=not args.soft_reset,
                 GATED=args.output == "gated", CKPT=CHECKPOINT_EVERY, BLOCK_N=BLOCK_N, FLAT=not args.time_inside)
    if backward:
        return dict(flags, HAS_GRAD_V=False, HAS_GRAD_I=False, DETACH_RESET=False,
                    SURROGATE=SURROGATES[args.surrogate].code)
    return dict(flags, HAS_V_INIT=False, HAS_I_INIT=False)


def _import_triton():
    """Triton and its LIF kernels, compiled past Triton's cache (so that the compile time is measured); a
    one-line error without Triton, or under its interpreter."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("kernel_stats compiles the kernels: unset TRITON_INTERPRET")
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    try:
        import triton
    except ImportError as e:
        raise SystemExit(f'kernel_stats compiles the kernels with Triton, which is not importable here ({e}): '
                         f'pip install -e ".[triton]"') from e
    from bdh_kernels.triton import lif

    return triton, lif


def _source(kernel, constants, io_dtype):
    """An ASTSource for ``kernel``: its signature, constants and alignment attributes as a launch on a
    contiguous input makes them."""
    from triton.compiler.compiler import ASTSource

    names = kernel.arg_names
    signature, consts, attrs = {}, {}, {}
    for index, name in enumerate(names):
        if name in constants or name in UNIT_STRIDES:
            signature[name] = "constexpr"
            consts[(index,)] = constants.get(name, 1)
        elif name.endswith("_ptr"):
            signature[name] = "*" + (io_dtype if name in IO_POINTERS else "fp32")
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in ("N", "Q") or name.startswith("stride_"):
            signature[name] = "i32"
            if name not in UNSPECIALISED:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in UNSPECIALISED:
            signature[name] = "i32"
        else:
            signature[name] = "fp32"  # the neuron's constants
    missing = set(constants) - set(names)
    if missing:
        raise SystemExit(f"kernel_stats is out of date: {kernel.__name__} has no parameters {sorted(missing)}")
    return ASTSource(kernel, signature, consts, attrs)


def _tool(name):
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise SystemExit(f"{name} is not in this Triton install ({path}): the NVIDIA backend's tools are needed")
    return path


def kernel_stats(kernel, constants, io_dtype, arch=90, maxnreg=None):
    """``(registers, stack bytes, SASS instructions, opcode counts, compile seconds)`` of ``kernel``
    compiled for ``arch`` with at most ``maxnreg`` registers per thread (None: no cap)."""
    options = dict(num_warps=NUM_WARPS, enable_fp_fusion=False)
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    source = _source(kernel, constants, io_dtype)
    start = time.perf_counter()
    compiled = _compile(source, arch, options, kernel.__name__)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True,
                              check=True).stdout
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))
    # an instruction line: /*offset*/  [@predicate] OPCODE ...
    opcodes = re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass, re.M)
    return registers, stack, len(opcodes), collections.Counter(opcodes), seconds


def _compile(source, arch, options, name):
    """triton.compile for sm_<arch>, passing on what Triton prints; a failure is a one-line error, without
    the listing of the code that Triton prints as it fails."""
    import triton
    from triton.backends.compiler import GPUTarget

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as e:  # Triton's compile errors share no base class
        raise SystemExit(f"kernel_stats: compiling {name} for sm_{arch} failed: {_error_line(e)}") from e
    print(printed.getvalue(), end="")
    return compiled


def _error_line(error):
    """The line of a compile error that says what went wrong: ptxas's own, where there is one."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return next((line for line in lines if line.startswith("ptxas")), lines[0])


def main(argv=None):
    args = parse_args(argv)
    triton, triton_lif = _import_triton()
    kernels = {"fwd": (triton_lif._lif_forward_kernel, False), "bwd": (triton_lif._lif_backward_kernel, True)}
    chosen = ("fwd", "bwd") if args.kernel == "both" else (args.kernel,)
    options = (f"{'[P, T, Q]' if args.time_inside else '[T, Q]'} input, {args.dtype}, {args.output} output, "
               f"{args.surrogate}, "
               f"{'tau_syn' if args.tau_syn else 'no tau_syn'}, {'soft' if args.soft_reset else 'hard'} reset, "
               f"sm_{args.arch}, Triton {triton.__version__}")
    print(f"Triton LIF kernels ({options}):")
    results = {}
    for name in chosen:
        kernel, backward = kernels[name]
        registers, stack, count, opcodes, seconds = kernel_stats(kernel, _constants(args, backward),
                                                        TRITON_DTYPES[args.dtype], args.arch, args.maxnreg)
        results[name] = dict(registers=registers, stack_bytes=stack, instructions=count, compile_s=seconds)
        print(f"  {name} (maxnreg {args.maxnreg or 'none'}): {registers} registers, {stack} bytes of stack (spills), "
              f"{count} instructions, {count / CHECKPOINT_EVERY:.1f} per neuron-step; compiled in {seconds:.1f} s")
        if args.opcodes:
            print("    " + ", ".join(f"{op} {n}" for op, n in opcodes.most_common(args.opcodes)))
    return results


if __name__ == "__main__":
    main()
