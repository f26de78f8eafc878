"""Triton backend of the fused LIF op: forward and checkpointed backward, one launch each.

The kernel contract (the ``[P, T, Q]`` view, the op schemas, the checkpoint rows, the reverse-sweep
formulas) is the module docstring of :mod:`bdh_kernels.lif`; the arithmetic is :func:`bdh_kernels.reference.lif`
operation by operation. Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (tests).

Layout of the work
------------------
Neurons are independent and time is a recurrence, so one program owns ``BLOCK_N`` neurons along the
flattened neuron index ``n = p * Q + q`` and walks time inside the kernel, one neuron per thread.
Consecutive ``n`` are consecutive ``q``, so when x's q-stride is 1 neighbouring lanes read neighbouring
addresses (coalesced); any strides work, they are runtime arguments. ``T`` is a runtime argument (not
constexpr, and neither it nor the strides that can depend on it, those of P and Q, are specialised on
divisibility): a new sequence length does not compile a new kernel. The time stride does not depend on T
(it is Q, or 1 when time is the last dim), so its divisibility still lets the loads be vectorised.

Time is walked in segments of ``CKPT = 32`` steps (the checkpoint interval). A segment's loads are issued
all at once before its steps run (a step's arithmetic is a few flops, so one load in flight per thread
would leave the loop waiting on memory latency), into a tuple of ``CKPT`` ``[BLOCK_N]`` values that the
steps then read; the segment loops are unrolled (``tl.static_range``), so element ``j`` is a fixed
register per thread, as in the CUDA kernel's per-thread arrays. (A ``[CKPT, BLOCK_N]`` tile written and
read with selects compiles to the same machine code, but takes the compiler 2-3x as long.)

Forward, per neuron and step t (fp32 state whatever the I/O dtype, ``k = 1/tau_mem``,
``a_syn = 1 - 1/tau_syn``, both rounded to fp32 on the host from double as ``reference.lif_constants``)::

    i = i * a_syn + x_t;  u = i              (tau_syn; otherwise u = x_t)
    h = v + (u - (v - v_rest)) * k           (decay_input; otherwise h = v - (v - v_rest) * k + u)
    s = h >= v_threshold
    v = v_reset if s else h                  (hard reset)   |   v = h - s * v_threshold   (soft reset)
    out_t = s  or  s * relu(x_t)             (gated)

Before step ``c * CHECKPOINT_EVERY`` the state (v, i) is written to row c of ``v_ckpt`` / ``i_ckpt``.

Backward, per segment from the last to the first: load the segment's inputs, recompute its ``h_t``
from the checkpoint, load its output gradients, then run the reverse sweep of the contract over them,
all held in registers. ``gv`` (and ``gi``) carry across segments; see :func:`_lif_backward_kernel`.
Memory traffic per neuron-step: forward x and out, backward x, grad_out and grad_x, plus 4/32 bytes of
checkpoint each way (8/32 with tau_syn).

Bit-exactness: the kernels do the same fp32 operations in the same order as the reference and are
launched with ``enable_fp_fusion=False`` (no mul+add contracted into an FMA, which rounds once instead
of twice), so spikes and states are bit-identical to the reference, and the backward's recomputed
membranes are bit-identical to the forward's, so both passes agree on every spike. The gradients are
the reference's to rounding, not bit for bit: the reverse sweep asks for fused multiply-adds explicitly
(``tl.fma``) and takes the surrogate's reciprocals as ``rsqrt`` (see :func:`_surrogate_grad`), which
compiled for sm_90 cut the bf16 backward from 60 to 47 instructions per neuron-step.
"""
import functools
import os
import struct
from contextlib import nullcontext

import torch
import triton
import triton.language as tl

from .. import backends
from ..lif import BACKWARD_SCHEMA, CHECKPOINT_EVERY, FORWARD_SCHEMA, num_checkpoints
from ..reference import lif_constants

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Surrogate codes, as in bdh_kernels.surrogate.SURROGATES.
_SIGMOID, _ATAN, _FAST_SIGMOID, _PIECEWISE_QUADRATIC, _ERF = 0, 1, 2, 3, 4


# ------------------------------------------------------------------------------------------- kernels
@triton.jit
def _neuron_offsets(pid, N, Q, T, stride_p, stride_q, BLOCK_N: tl.constexpr, FLAT: tl.constexpr):
    """This program's neurons ``n``, their mask, and their offsets in x (strided) and in a contiguous
    ``[P, T, Q]`` tensor (``p * T * Q + q``). All int64: ``P * T * Q`` may exceed 2**31.

    ``FLAT`` (P == 1) skips the div/mod so that the compiler sees ``n * stride_q`` with ``stride_q == 1``
    specialised, i.e. contiguous offsets, and can vectorise the loads.
    """
    n = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = n < N
    if FLAT:
        x_off = n * stride_q
        ptq_off = n
    else:
        p = n // Q
        q = n - p * Q
        x_off = p * stride_p + q * stride_q
        ptq_off = p * T * Q + q
    return n, mask, x_off, ptq_off


@triton.jit
def _mask_if(mask, cond):
    """``mask & cond`` for a scalar ``cond``; spelled as a select because the interpreter turns a
    tensor-and-scalar ``&`` of booleans into int32, which ``tl.load`` rejects as a mask."""
    return tl.where(cond, mask, False)


@triton.jit
def _charge(v, i, x, k, a_syn, v_rest, SYN: tl.constexpr, DECAY_INPUT: tl.constexpr):
    """One step's synaptic current and pre-reset membrane ``h``, in the reference's order of operations."""
    if SYN:
        i = i * a_syn + x
        u = i
    else:
        u = x
    if DECAY_INPUT:
        h = v + (u - (v - v_rest)) * k
    else:
        h = v - (v - v_rest) * k + u
    return h, i


@triton.jit
def _reset(h, spike, v_threshold, v_reset, HARD_RESET: tl.constexpr):
    # hard: the reference's h * (1 - s) + v_reset * s is this select for finite h
    if HARD_RESET:
        v = tl.where(spike, v_reset, h)
    else:
        v = h - spike.to(tl.float32) * v_threshold
    return v


@triton.jit
def _surrogate_grad(h, v_threshold, alpha, SURROGATE: tl.constexpr):
    """g(z) = d spike / dz at ``z = h - v_threshold``, of bdh_kernels.surrogate (codes 0..4), in fp32.

    Reciprocals are ``rsqrt`` of a value >= 1 (one MUFU.RSQ on NVIDIA GPUs, 2^-22.9 relative error, as
    the exp2's), not divisions, which add range checks and rescalings for a divisor that could be tiny
    or huge. The sigmoid's is symmetric in z, ``alpha e / (1 + e)^2`` with ``e = exp(-alpha |z|)`` in
    (0, 1], so nothing overflows; its exponent is one fused multiply-add of ``h`` (the constants are
    uniform, computed once per program).
    """
    if SURROGATE == 0:  # sigmoid: alpha * sg * (1 - sg), sg = sigmoid(alpha * z)
        scale = alpha * 1.4426950408889634  # alpha * log2(e)
        e = tl.exp2(-tl.abs(tl.fma(h, scale, v_threshold * -scale)))
        r = tl.math.rsqrt((1.0 + e) * (1.0 + e))  # 1 / (1 + e)
        g = (alpha * e) * r * r
    else:
        z = h - v_threshold
        if SURROGATE == 1:  # atan: alpha / 2 / (1 + (pi / 2 * alpha * z)^2)
            w = (1.5707963267948966 * alpha) * z
            r = tl.math.rsqrt(tl.fma(w, w, 1.0))
            g = (alpha * 0.5) * r * r
        elif SURROGATE == 2:  # fast_sigmoid: 1 / (1 + alpha * |z|)^2 = rsqrt(d)^4 (d * d could overflow)
            q = tl.math.rsqrt(tl.fma(alpha, tl.abs(z), 1.0))
            q = q * q
            g = q * q
        elif SURROGATE == 3:  # piecewise_quadratic: max(0, alpha - alpha^2 * |z|)
            g = tl.maximum(alpha - alpha * alpha * tl.abs(z), 0.0)
        else:  # erf: alpha / sqrt(pi) * exp(-(alpha * z)^2)
            az = alpha * z
            g = (alpha * 0.5641895835477563) * tl.exp(-(az * az))
    return g


@triton.jit(do_not_specialize=["T", "num_ckpt"],
            do_not_specialize_on_alignment=["stride_xp", "stride_xq"])
def _lif_forward_kernel(
    x_ptr, v_init_ptr, i_init_ptr,
    out_ptr, v_final_ptr, i_final_ptr, v_ckpt_ptr, i_ckpt_ptr,
    N, Q, T, num_ckpt,
    stride_xp, stride_xt, stride_xq,
    k, a_syn, v_rest, v_threshold, v_reset,
    HAS_V_INIT: tl.constexpr, HAS_I_INIT: tl.constexpr, SYN: tl.constexpr, DECAY_INPUT: tl.constexpr,
    HARD_RESET: tl.constexpr, GATED: tl.constexpr, CKPT: tl.constexpr, BLOCK_N: tl.constexpr,
    FLAT: tl.constexpr,
):
    """LIF forward for ``BLOCK_N`` neurons over all ``T`` steps (formulas in the module docstring).

    Writes ``out`` (x's dtype, contiguous ``[P, T, Q]``), ``v_final``/``i_final`` and the checkpoint rows.
    Per segment of ``CKPT`` steps the inputs are loaded first, all at once (``CKPT`` loads in flight per
    thread, which is what hides the memory latency), into registers; then the steps run from them.
    Steps past ``T`` in the last segment are masked: they load and store nothing and leave the state as
    it is.
    """
    pid = tl.program_id(0)
    n, mask, x_off, out_off = _neuron_offsets(pid, N, Q, T, stride_xp, stride_xq, BLOCK_N, FLAT)

    if HAS_V_INIT:
        v = tl.load(v_init_ptr + n, mask=mask, other=0.0)
    else:
        v = tl.zeros([BLOCK_N], dtype=tl.float32) + v_rest
    i = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_I_INIT:
        i = tl.load(i_init_ptr + n, mask=mask, other=0.0)

    # Pointers advance by a stride per step (64-bit pointer arithmetic) rather than t * stride, which
    # would be a 32-bit product for a 32-bit loop index.
    x_ptrs = x_ptr + x_off
    out_ptrs = out_ptr + out_off
    v_ckpt_ptrs = v_ckpt_ptr + n
    i_ckpt_ptrs = i_ckpt_ptr + n
    for c in range(0, num_ckpt):
        tl.store(v_ckpt_ptrs, v, mask=mask)
        v_ckpt_ptrs += N
        if SYN:
            tl.store(i_ckpt_ptrs, i, mask=mask)
            i_ckpt_ptrs += N
        seg_len = tl.minimum(T - c * CKPT, CKPT)
        xs = ()
        for j in tl.static_range(CKPT):
            xs = xs + (tl.load(x_ptrs, mask=_mask_if(mask, j < seg_len), other=0.0).to(tl.float32),)
            x_ptrs += stride_xt
        for j in tl.static_range(CKPT):
            live = j < seg_len
            x_t = xs[j]
            h, i_next = _charge(v, i, x_t, k, a_syn, v_rest, SYN, DECAY_INPUT)
            spike = h >= v_threshold
            v = tl.where(live, _reset(h, spike, v_threshold, v_reset, HARD_RESET), v)
            if SYN:
                i = tl.where(live, i_next, i)
            s = spike.to(tl.float32)
            if GATED:
                s = s * tl.maximum(x_t, 0.0)  # s * relu(x_t) in fp32, then cast: as the reference
            tl.store(out_ptrs, s.to(out_ptr.dtype.element_ty), mask=_mask_if(mask, live))
            out_ptrs += Q

    tl.store(v_final_ptr + n, v, mask=mask)
    if SYN:
        tl.store(i_final_ptr + n, i, mask=mask)


@triton.jit(do_not_specialize=["T", "num_ckpt"],
            do_not_specialize_on_alignment=["stride_xp", "stride_xq", "stride_gp", "stride_gq"])
def _lif_backward_kernel(
    grad_out_ptr, grad_v_ptr, grad_i_ptr, x_ptr, v_ckpt_ptr, i_ckpt_ptr,
    grad_x_ptr, grad_v_init_ptr, grad_i_init_ptr,
    N, Q, T, num_ckpt,
    stride_xp, stride_xt, stride_xq,
    stride_gp, stride_gt, stride_gq,
    k, a_syn, v_rest, v_threshold, v_reset, alpha,
    HAS_GRAD_V: tl.constexpr, HAS_GRAD_I: tl.constexpr, SYN: tl.constexpr, DECAY_INPUT: tl.constexpr,
    HARD_RESET: tl.constexpr, GATED: tl.constexpr, DETACH_RESET: tl.constexpr, SURROGATE: tl.constexpr,
    CKPT: tl.constexpr, BLOCK_N: tl.constexpr, FLAT: tl.constexpr,
):
    """LIF backward for ``BLOCK_N`` neurons: checkpointed recompute plus reverse sweep.

    Per step t from T-1 down, with ``gv = dL/dv_t`` and ``gi`` the gradient reaching ``i_t`` from later
    steps (both start as ``grad_v``, ``grad_i`` of the final state), as in the contract::

        z = h_t - v_threshold;  g = surrogate'(z);  s = 1[z >= 0]
        gs = grad_out_t * (relu(x_t) if gated else 1) + gv * dv/ds
              dv/ds = v_reset - h_t (hard), -v_threshold (soft), 0 (detach_reset)
        gh = gs * g + gv * dv/dh                  dv/dh = 1 - s (hard), 1 (soft)
        gu = gh * (k if decay_input else 1);  gv = gh * (1 - k)
        with tau_syn: gi_t = gu + gi;  gx = gi_t;  gi = gi_t * a_syn    (dL/di_{t-1})
        without:      gx = gu
        gated: gx += grad_out_t * s * 1[x_t > 0]

    and at the end ``grad_v_init = gv``, ``grad_i_init = gi`` (= ``gi_0 * a_syn``).

    The h_t of a segment are needed in reverse order but produced in forward order, so a segment's
    recomputed membranes (bit-identical to the forward's, so both passes agree on every spike) and its
    output gradients (all loads in flight at once) are held in registers (tuples of ``CKPT`` values), as
    the CUDA kernel keeps per-thread arrays, and the reverse sweep reads them back in reverse. Nothing of
    size T * neurons is written but grad_x.
    """
    pid = tl.program_id(0)
    n, mask, x_off, gx_off = _neuron_offsets(pid, N, Q, T, stride_xp, stride_xq, BLOCK_N, FLAT)
    if FLAT:
        go_off = n * stride_gq
    else:
        p = n // Q
        go_off = p * stride_gp + (n - p * Q) * stride_gq

    gv = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_GRAD_V:
        gv = tl.load(grad_v_ptr + n, mask=mask, other=0.0)
    gi = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_GRAD_I:
        gi = tl.load(grad_i_ptr + n, mask=mask, other=0.0)
    one_minus_k = 1.0 - k

    for cc in range(0, num_ckpt):
        c = num_ckpt - 1 - cc
        t0 = c.to(tl.int64) * CKPT
        seg_len = tl.minimum(T - c * CKPT, CKPT)

        # 1. the segment's membranes recomputed from its checkpoint (no stores in this loop, so the
        #    compiler issues the segment's loads of x ahead of the arithmetic); with gated output the
        #    sweep needs relu(x_t) too, kept from here: loading x_t again in the sweep would put each
        #    load behind the previous step's store, which may alias it (a memory round trip per step)
        v = tl.load(v_ckpt_ptr + c.to(tl.int64) * N + n, mask=mask, other=0.0)
        i = tl.zeros([BLOCK_N], dtype=tl.float32)
        if SYN:
            i = tl.load(i_ckpt_ptr + c.to(tl.int64) * N + n, mask=mask, other=0.0)
        x_ptrs = x_ptr + x_off + t0 * stride_xt
        hs = ()
        relu_xs = ()
        for j in tl.static_range(CKPT):
            x_j = tl.load(x_ptrs, mask=_mask_if(mask, j < seg_len), other=0.0).to(tl.float32)
            x_ptrs += stride_xt
            h, i = _charge(v, i, x_j, k, a_syn, v_rest, SYN, DECAY_INPUT)
            hs = hs + (h,)
            if GATED:
                relu_xs = relu_xs + (tl.maximum(x_j, 0.0),)
            v = _reset(h, h >= v_threshold, v_threshold, v_reset, HARD_RESET)  # past T: never read

        # 2. the segment's output gradients, all loaded before the sweep (its stores would otherwise
        #    keep each load behind the previous step), then the reverse sweep
        go_ptrs = grad_out_ptr + go_off + t0 * stride_gt
        gos = ()
        for j in tl.static_range(CKPT):
            go_j = tl.load(go_ptrs, mask=_mask_if(mask, j < seg_len), other=0.0).to(tl.float32)
            gos = gos + (go_j,)
            go_ptrs += stride_gt
        gx_ptrs = grad_x_ptr + gx_off + (t0 + CKPT - 1) * Q
        for jj in tl.static_range(CKPT):
            live = CKPT - 1 - jj < seg_len
            h = hs[CKPT - 1 - jj]
            grad_out = gos[CKPT - 1 - jj]
            spike = h >= v_threshold  # the forward's predicate: same spikes as the forward
            g = _surrogate_grad(h, v_threshold, alpha, SURROGATE)

            if GATED:
                relu_x = relu_xs[CKPT - 1 - jj]
                gs = grad_out * relu_x
            else:
                gs = grad_out
            # the sweep's products and sums as fused multiply-adds (tl.fma is explicit, so the kernel's
            # enable_fp_fusion=False, which keeps the recompute bit-exact, does not split them)
            if not DETACH_RESET:
                if HARD_RESET:
                    gs = tl.fma(gv, v_reset - h, gs)
                else:
                    gs = tl.fma(gv, -v_threshold, gs)
            if HARD_RESET:
                gh = tl.fma(gs, g, tl.where(spike, 0.0, gv))
            else:
                gh = tl.fma(gs, g, gv)
            gv = tl.where(live, gh * one_minus_k, gv)
            if SYN:
                if DECAY_INPUT:
                    gi_t = tl.fma(gh, k, gi)
                else:
                    gi_t = gh + gi
                gx = gi_t
                gi = tl.where(live, gi_t * a_syn, gi)
            elif DECAY_INPUT:
                gx = gh * k
            else:
                gx = gh
            if GATED:
                gx = gx + tl.where(spike & (relu_x > 0.0), grad_out, 0.0)  # relu_x > 0 iff x_t > 0
            tl.store(gx_ptrs, gx.to(grad_x_ptr.dtype.element_ty), mask=_mask_if(mask, live))
            gx_ptrs -= Q

    tl.store(grad_v_init_ptr + n, gv, mask=mask)
    if SYN:
        tl.store(grad_i_init_ptr + n, gi, mask=mask)


# ------------------------------------------------------------------------------------------ launchers
def _f32(value: float) -> float:
    """Round a Python float (double) to the nearest fp32, as torch does for a scalar times an fp32 tensor."""
    return struct.unpack("f", struct.pack("f", value))[0]


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    """Multiprocessors of CUDA ``device`` (a tensor's device, which always has an index)."""
    return torch.cuda.get_device_properties(device).multi_processor_count


MAXNREG_ENV = backends.TRITON_MAXNREG_ENV


def _register_cap() -> dict:
    """``{"maxnreg": R}`` when ``BDH_KERNELS_TRITON_MAXNREG=R`` caps the registers per thread of the LIF
    kernels (ptxas spills beyond it), else ``{}``: Triton's own choice. A tuning knob: the backward holds a
    segment's membranes and output gradients (and relu(x) with gated output) in registers, 149 per thread
    for sm_90 in bf16 (147 gated: benchmarks/kernel_stats.py), which leaves 12 warps per SM to hide memory
    latency; a cap trades spills for warps."""
    value = os.environ.get(MAXNREG_ENV, "")
    if not value:
        return {}
    if not value.isdigit() or not 24 <= int(value) <= 255:
        raise ValueError(f"{MAXNREG_ENV} must be an integer in [24, 255] (registers per thread), got {value!r}")
    return {"maxnreg": int(value)}


def _launch_config(num_neurons: int, device: torch.device):
    """``(BLOCK_N, num_warps)`` for ``num_neurons`` neurons.

    On a GPU one thread owns one neuron (``BLOCK_N = 32 * num_warps``): a thread holds its neuron's
    segment (``CKPT`` inputs, membranes and output gradients, fp32) in registers, so more neurons
    per thread would spill. Blocks of 4 warps once there are enough neurons for two such blocks per SM,
    smaller blocks below that so that all SMs get work. Under the interpreter each program is a Python
    loop, so fewer, larger programs are faster; 64 still leaves several programs in the tests.
    """
    if device.type != "cuda":
        return 64, 1
    sms = _sm_count(device)
    warps = 4
    while warps > 1 and num_neurons < 2 * sms * 32 * warps:
        warps //= 2
    return 32 * warps, warps


def interpreted() -> bool:
    # Whether the kernels were created by the interpreter: TRITON_INTERPRET is read when @triton.jit runs,
    # i.e. when this module is imported, so setting it later does not make CPU tensors runnable.
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_lif_forward_kernel, InterpretedFunction)


def check_input(x: torch.Tensor, name: str = "x"):
    """The checks every Triton launcher makes on its [P, T, Q] input."""
    if x.dim() != 3:
        raise ValueError(f"{name} must be a [P, T, Q] view, got {x.dim()} dims")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the triton kernels take fp16/bf16/fp32 input, got {x.dtype} for {name}")
    if x.device.type != "cuda" and not (x.device.type == "cpu" and interpreted()):
        raise ValueError(f"the triton kernels run on CUDA tensors (CPU tensors only with TRITON_INTERPRET=1 "
                         f"set before bdh_kernels.triton is imported), got a {x.device.type} tensor")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has an empty time dim")


def _flat_state(state, num_neurons: int, name: str):
    """A [P*Q] fp32 contiguous view/copy of an optional state or state gradient."""
    if state is None:
        return None
    if state.numel() != num_neurons:
        raise ValueError(f"{name} must have {num_neurons} elements, got {tuple(state.shape)}")
    return state.reshape(num_neurons).to(torch.float32).contiguous()


def _device_guard(x: torch.Tensor):
    # Triton launches on the current CUDA device; make it x's.
    return torch.cuda.device(x.device) if x.is_cuda else nullcontext()


@torch.library.custom_op("bdh::lif_forward_triton", mutates_args=(), schema=FORWARD_SCHEMA)
def lif_forward(x, v_init, i_init, tau_mem, v_threshold, v_reset, decay_input, tau_syn, gated,
                surrogate, alpha, detach_reset):
    """Triton LIF forward: ``(out, v_final, i_final, v_ckpt, i_ckpt)`` per the contract in bdh_kernels.lif."""
    check_input(x)
    P, T, Q = x.shape
    N = P * Q
    syn = tau_syn is not None
    num_ckpt = num_checkpoints(T)
    f32 = dict(dtype=torch.float32, device=x.device)
    out = torch.empty((P, T, Q), dtype=x.dtype, device=x.device)
    v_final = torch.empty((N,), **f32)
    i_final = torch.empty((N if syn else 0,), **f32)
    v_ckpt = torch.empty((num_ckpt, N), **f32)
    i_ckpt = torch.empty((num_ckpt if syn else 0, N if syn else 0), **f32)
    if N == 0:  # no neurons: nothing to compute, and a zero-size grid must not be launched
        return out, v_final, i_final, v_ckpt, i_ckpt

    v_init = _flat_state(v_init, N, "v_init")
    i_init = _flat_state(i_init, N, "i_init") if syn else None
    k, a_syn, v_rest = lif_constants(tau_mem, v_reset, tau_syn)
    block, num_warps = _launch_config(N, x.device)
    grid = (triton.cdiv(N, block),)
    with _device_guard(x):
        _lif_forward_kernel[grid](
            x, v_init if v_init is not None else v_final, i_init if i_init is not None else v_final,
            out, v_final, i_final if syn else v_final, v_ckpt, i_ckpt if syn else v_ckpt,
            N, Q, T, num_ckpt,
            x.stride(0), x.stride(1), x.stride(2),
            _f32(k), _f32(a_syn), _f32(v_rest), _f32(v_threshold), _f32(v_reset if v_reset is not None else 0.0),
            HAS_V_INIT=v_init is not None, HAS_I_INIT=i_init is not None, SYN=syn, DECAY_INPUT=decay_input,
            HARD_RESET=v_reset is not None, GATED=gated, CKPT=CHECKPOINT_EVERY, BLOCK_N=block, FLAT=P == 1,
            num_warps=num_warps, enable_fp_fusion=False, **_register_cap(),
        )
    return out, v_final, i_final, v_ckpt, i_ckpt


@torch.library.custom_op("bdh::lif_backward_triton", mutates_args=(), schema=BACKWARD_SCHEMA)
def lif_backward(grad_out, grad_v, grad_i, x, v_ckpt, i_ckpt, tau_mem, v_threshold, v_reset, decay_input,
                 tau_syn, gated, surrogate, alpha, detach_reset):
    """Triton LIF backward: ``(grad_x, grad_v_init, grad_i_init)`` per the contract in bdh_kernels.lif."""
    check_input(x)
    P, T, Q = x.shape
    N = P * Q
    syn = tau_syn is not None
    if tuple(grad_out.shape) != (P, T, Q):
        raise ValueError(f"grad_out must have x's shape {(P, T, Q)}, got {tuple(grad_out.shape)}")
    if surrogate not in (_SIGMOID, _ATAN, _FAST_SIGMOID, _PIECEWISE_QUADRATIC, _ERF):
        raise ValueError(f"unknown surrogate code {surrogate}")
    num_ckpt = num_checkpoints(T)
    if tuple(v_ckpt.shape) != (num_ckpt, N) or (syn and tuple(i_ckpt.shape) != (num_ckpt, N)):
        raise ValueError(f"checkpoints must be [{num_ckpt}, {N}], got {tuple(v_ckpt.shape)} and "
                         f"{tuple(i_ckpt.shape)}")
    f32 = dict(dtype=torch.float32, device=x.device)
    grad_x = torch.empty((P, T, Q), dtype=x.dtype, device=x.device)
    grad_v_init = torch.empty((N,), **f32)
    grad_i_init = torch.empty((N if syn else 0,), **f32)
    if N == 0:
        return grad_x, grad_v_init, grad_i_init

    grad_v = _flat_state(grad_v, N, "grad_v")
    grad_i = _flat_state(grad_i, N, "grad_i") if syn else None
    v_ckpt = v_ckpt.contiguous()
    i_ckpt = i_ckpt.contiguous() if syn else v_ckpt
    k, a_syn, v_rest = lif_constants(tau_mem, v_reset, tau_syn)
    block, num_warps = _launch_config(N, x.device)
    grid = (triton.cdiv(N, block),)
    with _device_guard(x):
        _lif_backward_kernel[grid](
            grad_out, grad_v if grad_v is not None else grad_v_init,
            grad_i if grad_i is not None else grad_v_init, x, v_ckpt, i_ckpt,
            grad_x, grad_v_init, grad_i_init if syn else grad_v_init,
            N, Q, T, num_ckpt,
            x.stride(0), x.stride(1), x.stride(2),
            grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
            _f32(k), _f32(a_syn), _f32(v_rest), _f32(v_threshold),
            _f32(v_reset if v_reset is not None else 0.0), _f32(alpha),
            HAS_GRAD_V=grad_v is not None, HAS_GRAD_I=grad_i is not None, SYN=syn, DECAY_INPUT=decay_input,
            HARD_RESET=v_reset is not None, GATED=gated, DETACH_RESET=detach_reset, SURROGATE=surrogate,
            CKPT=CHECKPOINT_EVERY, BLOCK_N=block, FLAT=P == 1,
            num_warps=num_warps, enable_fp_fusion=False, **_register_cap(),
        )
    return grad_x, grad_v_init, grad_i_init
