// STDP trace scan, forward and backward, on CUDA: one thread per neuron, the whole time loop inside it.
//
// The contract is the docstring of bdh_kernels/stdp.py (and stdp_common.h); the arithmetic is TraceStep<T>,
// the same function the CPU kernels call, so the traces are bit-identical to the reference and to the CPU
// backend (setup.py builds this file with --fmad=false: no contraction of tr * decay + s into an FMA).
//
//   forward   thread n = p * Q + q walks t = 0 .. T-1 with its trace in a register. Per 32-step segment it
//             loads the segment's 32 inputs into registers first (32 independent loads in flight), then
//             runs the 32 steps and stores the traces. The final trace at the end.
//   backward  thread n walks the segments from last to first: it loads a segment's 32 incoming gradients,
//             then runs the reverse scan over them (c = c + g_t; grad_s_t = c; c = c * decay), storing
//             grad_s_t. c carries across segments in a register; at the end it is grad_trace_init.
//
// Why this layout: as for the LIF kernels (lif_cuda.cu), neurons are independent and time is a
// recurrence, so one thread per neuron needs no shared memory, synchronisation or atomics, and
// consecutive threads own consecutive q (coalesced when the q-stride is 1). The scan is memory-bound
// (2 flops per element): traffic per neuron-step is one read and one write of the I/O dtype, nothing more.
// A time-parallel scan would only pay off when there are too few neurons to fill the GPU; the STDP layers
// this op serves (B * N in the tens of thousands and up) fill it.
//
// Registers (ptxas -v, sm_90, CUDA 13.0): forward 48, backward 56 (fp16/bf16) or 64 (fp32), no spills.
//
// fp64 input is rejected with a clear error (the Python wrapper routes fp64 to the cpp and reference
// backends); the kernels are instantiated for fp32, fp16 and bf16 input with fp32 state.
//
// Headers: c10/cuda only, as in lif_cuda.cu (ATen/cuda/CUDAContext.h would pull in cuBLAS headers).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "stdp_common.h"

namespace bdh {
namespace {

constexpr int kTraceSeg = 32;       // steps whose loads are issued together
constexpr int kTraceThreads = 128;  // threads per block (most of the time)

// Where thread n's data lives: the input (spikes, or the traces' gradient) is a strided [P, T, Q] view,
// the output a contiguous [P, T, Q], the per-neuron vectors [M]. All offsets int64.
template <typename scalar_t, typename T>
struct TraceArgs {
  int64_t M, T_, Q;     // neurons, steps, inner size of the view
  int64_t sP, sT, sQ;  // strides of the input
  TraceStep<T> step;
  const scalar_t* in;
  const T* state_in;  // nullable: trace_init (forward) or grad_final (backward); 0 when null
  scalar_t* out;
  T* state_out;  // final trace (forward) or grad_trace_init (backward)
};

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kTraceThreads) trace_forward_kernel(const TraceArgs<scalar_t, T> a) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= a.M) return;
  const int64_t pp = n / a.Q, q = n - pp * a.Q;
  const scalar_t* __restrict__ xn = a.in + pp * a.sP + q * a.sQ;
  scalar_t* __restrict__ on = a.out + pp * a.T_ * a.Q + q;
  T tr = a.state_in ? a.state_in[n] : T(0);
  for (int64_t t0 = 0; t0 < a.T_; t0 += kTraceSeg) {
    const int nt = static_cast<int>(a.T_ - t0 < kTraceSeg ? a.T_ - t0 : kTraceSeg);
    // loads first, by pointer steps (as lif_cuda.cu: no 32 hoisted 64-bit offsets); past the end of a
    // short last segment the loads repeat the last valid element
    const scalar_t* xp = xn + t0 * a.sT;
    scalar_t xr[kTraceSeg];
#pragma unroll
    for (int j = 0; j < kTraceSeg; ++j) {
      xr[j] = *xp;
      if (j + 1 < nt) xp += a.sT;
    }
    scalar_t* op = on + t0 * a.Q;
#pragma unroll
    for (int j = 0; j < kTraceSeg; ++j) {
      if (j < nt) {
        tr = a.step.forward(tr, static_cast<T>(xr[j]));
        *op = static_cast<scalar_t>(tr);
        op += a.Q;
      }
    }
  }
  a.state_out[n] = tr;
}

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kTraceThreads) trace_backward_kernel(const TraceArgs<scalar_t, T> a) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= a.M) return;
  const int64_t pp = n / a.Q, q = n - pp * a.Q;
  const scalar_t* __restrict__ gn = a.in + pp * a.sP + q * a.sQ;
  scalar_t* __restrict__ on = a.out + pp * a.T_ * a.Q + q;
  T c = a.state_in ? a.state_in[n] : T(0);
  const int64_t C = (a.T_ + kTraceSeg - 1) / kTraceSeg;
  for (int64_t seg = C - 1; seg >= 0; --seg) {
    const int64_t t0 = seg * kTraceSeg;
    const int nt = static_cast<int>(a.T_ - t0 < kTraceSeg ? a.T_ - t0 : kTraceSeg);
    const scalar_t* gp = gn + t0 * a.sT;
    T gr[kTraceSeg];
#pragma unroll
    for (int j = 0; j < kTraceSeg; ++j) {
      gr[j] = static_cast<T>(*gp);
      if (j + 1 < nt) gp += a.sT;
    }
    scalar_t* op = on + (t0 + nt - 1) * a.Q;
#pragma unroll
    for (int j = kTraceSeg - 1; j >= 0; --j) {
      if (j < nt) {
        const auto r = a.step.backward(c, gr[j]);
        *op = static_cast<scalar_t>(r.grad_spike);
        c = r.carried;
        if (j > 0) op -= a.Q;
      }
    }
  }
  a.state_out[n] = c;
}

// 128-thread blocks; 32-thread blocks when that leaves SMs idle (few neurons), as in lif_cuda.cu.
std::pair<dim3, dim3> trace_launch(int64_t M, const at::Device& device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device.index()));
  const int threads = (M + kTraceThreads - 1) / kTraceThreads >= sms ? kTraceThreads : 32;
  const int64_t blocks = (M + threads - 1) / threads;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "too many neurons for one launch: ", M);
  return {dim3(static_cast<unsigned>(blocks)), dim3(static_cast<unsigned>(threads))};
}

// AT_DISPATCH over fp32 / fp16 / bf16 (fp64 is rejected before, so no fp64 kernels are compiled).
#define BDH_STDP_DISPATCH_CUDA_TYPES(TYPE, NAME, ...)               \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                    \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)      \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)       \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

// The forward (kForward) or backward scan: in = spikes or grad_traces, state = trace_init or grad_final.
template <bool kForward>
std::tuple<at::Tensor, at::Tensor> trace_scan_cuda(const at::Tensor& in, const std::optional<at::Tensor>& state,
                                                   double tau, const char* name, const char* state_name) {
  check_trace_input(in, name, tau);
  TORCH_CHECK(in.is_cuda(), "the cuda backend needs CUDA tensors, got ", name, " on ", in.device());
  TORCH_CHECK(in.scalar_type() != at::kDouble,
              "the cuda backend supports fp16/bf16/fp32 input; fp64 runs on the cpp and reference backends");
  const int64_t M = in.size(0) * in.size(2);
  check_state(state, in, M, state_name);
  const c10::cuda::CUDAGuard guard(in.device());
  auto [out, state_out] = allocate_trace_outputs(in);
  if (M == 0) return {out, state_out};
  const auto launch = trace_launch(M, in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(in.device().index()).stream();
  BDH_STDP_DISPATCH_CUDA_TYPES(in.scalar_type(), "stdp_trace_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    TraceArgs<scalar_t, T> a;
    a.M = M;
    a.T_ = in.size(1);
    a.Q = in.size(2);
    a.sP = in.stride(0);
    a.sT = in.stride(1);
    a.sQ = in.stride(2);
    a.step = make_trace_step<T>(tau);
    a.in = in.const_data_ptr<scalar_t>();
    a.state_in = state ? state->const_data_ptr<T>() : nullptr;
    a.out = out.mutable_data_ptr<scalar_t>();
    a.state_out = state_out.mutable_data_ptr<T>();
    if constexpr (kForward) {
      trace_forward_kernel<scalar_t, T><<<launch.first, launch.second, 0, stream>>>(a);
    } else {
      trace_backward_kernel<scalar_t, T><<<launch.first, launch.second, 0, stream>>>(a);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, state_out};
}

std::tuple<at::Tensor, at::Tensor> stdp_trace_forward_cuda(const at::Tensor& spikes,
                                                           const std::optional<at::Tensor>& trace_init, double tau) {
  return trace_scan_cuda<true>(spikes, trace_init, tau, "spikes", "trace_init");
}

std::tuple<at::Tensor, at::Tensor> stdp_trace_backward_cuda(const at::Tensor& grad_traces,
                                                            const std::optional<at::Tensor>& grad_final, double tau) {
  return trace_scan_cuda<false>(grad_traces, grad_final, tau, "grad_traces", "grad_final");
}

}  // namespace

TORCH_LIBRARY_IMPL(bdh, CUDA, m) {
  m.impl("stdp_trace_forward", &stdp_trace_forward_cuda);
  m.impl("stdp_trace_backward", &stdp_trace_backward_cuda);
}

}  // namespace bdh
