"""Triton backend of the STDP trace scan: forward and backward, one launch each.

The kernel contract (the ``[P, T, Q]`` view, the op schemas, the scan and its reverse) is the module
docstring of :mod:`bdh_kernels.stdp`; the arithmetic is :func:`bdh_kernels.reference.stdp_traces` operation
by operation. Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (tests).

The work is laid out as the LIF kernels' (:mod:`bdh_kernels.triton.lif`, whose jit functions this module reuses):
one program owns ``BLOCK_N`` neurons along the flat index ``n = p * Q + q`` and walks time inside the
kernel in segments of ``SEGMENT`` steps whose loads are all issued before their arithmetic (a step is two
flops, so one load in flight per thread would leave the scan waiting on memory latency); ``T`` is a
runtime argument. Per neuron and step (fp32, ``decay = 1 - 1/tau`` rounded to fp32 on the host)::

    forward   tr = tr * decay + s_t;  out_t = tr                      (tr starts at trace_init or 0)
    backward  c = c + g_t;  grad_s_t = c;  c = c * decay  (t = T-1 .. 0; c starts at grad_final or 0)

Launched with ``enable_fp_fusion=False`` (no FMA), so the traces are bit-identical to the reference.
"""
import torch
import triton
import triton.language as tl

from ..reference import trace_decay
from ..stdp import TRACE_BACKWARD_SCHEMA, TRACE_FORWARD_SCHEMA
from .lif import _device_guard, _f32, _flat_state, _mask_if, _neuron_offsets, _sm_count
from .lif import check_input

SEGMENT = 8  # steps whose loads are in flight at once: 8 x 16 bytes per thread for fp32


# ------------------------------------------------------------------------------------------- kernels
@triton.jit
def _to_output(v, out_ptr, RNE_BF16: tl.constexpr):
    """``v`` (fp32) in the output's dtype, rounded to nearest even as torch rounds.

    ``RNE_BF16`` (bf16 output under the interpreter only): the interpreter converts fp32 to bf16 by
    truncation, where a GPU (and torch) rounds to nearest even, so there the rounding is done on the bits.
    """
    if RNE_BF16:
        u = v.to(tl.uint32, bitcast=True)
        u = u + 0x7FFF + ((u >> 16) & 1)
        return (u >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(out_ptr.dtype.element_ty)


@triton.jit(do_not_specialize=["T"], do_not_specialize_on_alignment=["stride_xp", "stride_xq"])
def _trace_forward_kernel(
    x_ptr, init_ptr, out_ptr, final_ptr,
    N, Q, T,
    stride_xp, stride_xt, stride_xq,
    decay,
    HAS_INIT: tl.constexpr, BLOCK_N: tl.constexpr, FLAT: tl.constexpr, RNE_BF16: tl.constexpr,
    SEG: tl.constexpr,
):
    """The trace of ``BLOCK_N`` neurons over all ``T`` steps: ``out`` (contiguous ``[P, T, Q]``, x's dtype)
    and the final trace (fp32). Steps past ``T`` in the last segment load and store nothing and leave the
    trace as it is."""
    pid = tl.program_id(0)
    n, mask, x_off, out_off = _neuron_offsets(pid, N, Q, T, stride_xp, stride_xq, BLOCK_N, FLAT)
    tr = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_INIT:
        tr = tl.load(init_ptr + n, mask=mask, other=0.0)
    x_ptrs = x_ptr + x_off
    out_ptrs = out_ptr + out_off
    for t0 in range(0, T, SEG):
        xs = ()
        for j in tl.static_range(SEG):
            xs = xs + (tl.load(x_ptrs, mask=_mask_if(mask, t0 + j < T), other=0.0),)
            x_ptrs += stride_xt
        for j in tl.static_range(SEG):
            live = t0 + j < T
            tr = tl.where(live, tr * decay + xs[j].to(tl.float32), tr)
            tl.store(out_ptrs, _to_output(tr, out_ptr, RNE_BF16), mask=_mask_if(mask, live))
            out_ptrs += Q
    tl.store(final_ptr + n, tr, mask=mask)


@triton.jit(do_not_specialize=["T"], do_not_specialize_on_alignment=["stride_gp", "stride_gq"])
def _trace_backward_kernel(
    g_ptr, grad_final_ptr, grad_x_ptr, grad_init_ptr,
    N, Q, T,
    stride_gp, stride_gt, stride_gq,
    decay,
    HAS_GRAD_FINAL: tl.constexpr, BLOCK_N: tl.constexpr, FLAT: tl.constexpr, RNE_BF16: tl.constexpr,
    SEG: tl.constexpr,
):
    """The reverse scan of ``BLOCK_N`` neurons: ``grad_x`` (contiguous ``[P, T, Q]``) and the gradient of
    the initial trace (fp32). ``g`` (the gradient of the traces) has any strides. Segments run from the
    end, the first segment's steps before 0 masked."""
    pid = tl.program_id(0)
    n, mask, g_off, gx_off = _neuron_offsets(pid, N, Q, T, stride_gp, stride_gq, BLOCK_N, FLAT)
    c = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_GRAD_FINAL:
        c = tl.load(grad_final_ptr + n, mask=mask, other=0.0)
    t_last = (T - 1).to(tl.int64)
    g_ptrs = g_ptr + g_off + t_last * stride_gt
    gx_ptrs = grad_x_ptr + gx_off + t_last * Q
    for t0 in range(0, T, SEG):  # t0 counts steps from the end: step T-1-t0-j below
        gs = ()
        for j in tl.static_range(SEG):
            gs = gs + (tl.load(g_ptrs, mask=_mask_if(mask, t0 + j < T), other=0.0),)
            g_ptrs -= stride_gt
        for j in tl.static_range(SEG):
            live = t0 + j < T
            c_t = c + gs[j].to(tl.float32)
            tl.store(gx_ptrs, _to_output(c_t, grad_x_ptr, RNE_BF16), mask=_mask_if(mask, live))
            gx_ptrs -= Q
            c = tl.where(live, c_t * decay, c)
    tl.store(grad_init_ptr + n, c, mask=mask)


# ------------------------------------------------------------------------------------------ launchers
def _launch_config(num_neurons: int, device: torch.device):
    """``(BLOCK_N, num_warps)`` for ``num_neurons`` neurons.

    The scan is a latency-bound chain per neuron, so the goal is to have every neuron resident at once
    (each with a segment of loads in flight): blocks of 512 neurons on 4 warps (4 per thread: 16-byte
    vector accesses for fp32 when the q-stride is 1) once there are enough neurons for two such blocks
    per SM, smaller blocks below that so that all SMs get work. Under the interpreter each program is a Python loop over T, so fewer, larger programs
    are faster; 64 still leaves several programs in the tests.
    """
    if device.type != "cuda":
        return 64, 1
    sms = _sm_count(device)
    block = triton.next_power_of_2(max(1, -(-num_neurons // (2 * sms))))
    block = max(32, min(512, block))
    return block, max(1, min(4, block // 128))


def _check_input(x: torch.Tensor, name: str, tau: float):
    check_input(x, name)
    if not tau >= 1.0 or tau == float("inf"):
        raise ValueError(f"tau must be finite and >= 1, got {tau}")


def _scan(kernel, x, state, has_state_flag, tau, name):
    _check_input(x, name, tau)
    P, T, Q = x.shape
    N = P * Q
    out = torch.empty((P, T, Q), dtype=x.dtype, device=x.device)
    final = torch.empty((N,), dtype=torch.float32, device=x.device)
    if N == 0:  # a zero-size grid must not be launched
        return out, final
    state = _flat_state(state, N, "the state")
    block, num_warps = _launch_config(N, x.device)
    with _device_guard(x):
        kernel[(triton.cdiv(N, block),)](
            x, state if state is not None else final, out, final,
            N, Q, T,
            x.stride(0), x.stride(1), x.stride(2),
            _f32(trace_decay(tau)),
            **{has_state_flag: state is not None}, BLOCK_N=block, FLAT=P == 1,
            RNE_BF16=x.dtype == torch.bfloat16 and not x.is_cuda, SEG=SEGMENT,
            num_warps=num_warps, enable_fp_fusion=False,
        )
    return out, final


@torch.library.custom_op("bdh::stdp_trace_forward_triton", mutates_args=(), schema=TRACE_FORWARD_SCHEMA)
def stdp_trace_forward(spikes, trace_init, tau):
    """Triton trace scan: ``(traces, trace_final)`` per the contract in bdh_kernels.stdp."""
    return _scan(_trace_forward_kernel, spikes, trace_init, "HAS_INIT", tau, "spikes")


@torch.library.custom_op("bdh::stdp_trace_backward_triton", mutates_args=(), schema=TRACE_BACKWARD_SCHEMA)
def stdp_trace_backward(grad_traces, grad_final, tau):
    """Triton reverse scan: ``(grad_spikes, grad_trace_init)`` per the contract in bdh_kernels.stdp."""
    return _scan(_trace_backward_kernel, grad_traces, grad_final, "HAS_GRAD_FINAL", tau, "grad_traces")
