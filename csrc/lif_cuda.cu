// LIF forward and backward on CUDA: one thread per neuron, the whole time loop inside the thread.
//
// Algorithm (the contract is the docstring of bdh_kernels/lif.py; the arithmetic is LifStep<T> from
// lif_common.h, the same functions the CPU kernels call):
//
//   forward   thread n = p * Q + q walks t = 0 .. T-1 with its state (v, and i with tau_syn) in
//             registers. Per 32-step segment it writes the checkpoint row (the state *before* the
//             segment), loads the segment's 32 inputs into registers first (32 independent loads in
//             flight), then runs the 32 steps and stores out_t. Final state at the end.
//   backward  thread n walks the segments from last to first: it reloads the segment's checkpoint, loads
//             the segment's x_t and grad_out_t into registers, recomputes the 32 membranes h_t into
//             `T h[32]` exactly as the forward did (so both passes agree on every spike), then runs the
//             reverse sweep t = t1-1 .. t0 with LifStep<T>::backward<S>, storing grad_x_t. gv / gi carry
//             across segments in registers; at the end they are grad_v_init / grad_i_init.
//
// Why one thread per neuron: neurons are independent and time is a strict recurrence, so a neuron's
// steps cannot be spread over threads without a scan (the reset makes the recurrence non-linear). One
// thread per neuron needs no shared memory, no synchronisation and no atomics, and consecutive threads
// own consecutive q, so every step of a warp reads/writes 32 neighbouring elements (coalesced when x's
// q-stride is 1; any strides are accepted, a strided x just costs more transactions). The price is
// that small layers cannot fill an H100: it holds 132 SMs x 64 warps of the forward (270k neurons) and
// 132 x 12 warps of the backward (50k neurons); below that the time loop is latency-bound, which is
// why the loads of a segment are issued together before the arithmetic.
//
// Registers per thread: the segment arrays are indexed only by compile-time constants (loops over the
// constant kCheckpointEvery = 32, fully unrolled, with a warp-uniform `j < nt` guard for the last,
// short segment), so they live in registers, not local memory. ptxas -v (sm_90, CUDA 13.0):
//   forward   32 inputs + state + pointers: 56 registers, no spills -> 16 blocks = 64 warps per SM
//   backward  32 h + 32 x + 32 grad_out (all fp32) + state + pointers: capped at 168 registers by
//             __launch_bounds__(128, 3) so that 3 blocks (12 warps) fit per SM; no spills except 8 bytes
//             in the fp16/bf16 atan kernels. Uncapped, ptxas picks 128-200 registers depending on the
//             surrogate and dtype (2-3 blocks per SM).
// Each warp has 32 (forward) or 64 (backward) independent loads in flight at the start of a segment;
// with 12-64 warps per SM that covers DRAM latency for large neuron counts.
//
// Memory traffic per neuron-step, with E = bytes per element of x (4 fp32, 2 fp16/bf16):
//   forward   read x (E) + write out (E) + checkpoints 4/32 B (8/32 with tau_syn)      = 2E + 0.125 B
//   backward  read x (E) + read grad_out (E) + write grad_x (E) + checkpoints 4/32 B   = 3E + 0.125 B
// x is read once per pass (the recompute and the reverse sweep use the register copy). The state
// (v_init, v_final, gradients of the state) is one access per neuron, not per step. Nothing of size
// T * neurons is saved for the backward beyond the checkpoints and the reference to x.
//
// Bit-exactness: setup.py builds this file with --fmad=false, so `a * b + c` is not contracted into an
// FMA and the fp32 operations round exactly as in reference.lif: spikes and states are bit-identical to
// the reference and to the CPU backend. (Surrogate derivatives use the device expf, within an ulp or so
// of the CPU's; they only scale gradients.)
//
// fp64 input is rejected with a clear error (the Python wrapper routes fp64 to the cpp and reference
// backends); the kernels are instantiated for fp32, fp16 and bf16 input with fp32 state.
//
// Headers: c10/cuda only (at::cuda::getCurrentCUDAStream is c10::cuda::getCurrentCUDAStream).
// ATen/cuda/CUDAContext.h would also pull in the cuBLAS/cuSPARSE/cuSOLVER headers, which a bare CUDA
// toolkit (and .ci/compile_cuda.sh's machine) may not have.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "lif_common.h"

namespace bdh {
namespace {

constexpr int kSeg = static_cast<int>(kCheckpointEvery);  // steps per segment, a compile-time 32
constexpr int kThreads = 128;                              // threads per block (most of the time)
constexpr int kBackwardMinBlocks = 3;  // backward: <= 168 registers, so 3 blocks (12 warps) fit per SM

// Where thread n's data lives. x / grad_out are strided [P, T, Q] views; out / grad_x are contiguous
// [P, T, Q]; state vectors and checkpoint rows are contiguous [M] / [C, M]. All offsets are int64:
// P * T * Q (and even M = P * Q) may exceed 2^31.
struct View {
  int64_t M, T, Q;     // neurons, steps, inner size of the view
  int64_t sP, sT, sQ;  // strides of the strided input (x)
  int64_t gP, gT, gQ;  // strides of grad_out (backward only)
};

template <typename scalar_t, typename T>
struct ForwardArgs {
  View w;
  LifStep<T> p;
  const scalar_t* x;
  const T* v_init;  // nullable: v_rest
  const T* i_init;  // nullable: 0
  scalar_t* out;
  T* v_final;
  T* i_final;  // null without tau_syn
  T* v_ckpt;
  T* i_ckpt;  // null without tau_syn
};

template <typename scalar_t, typename T>
struct BackwardArgs {
  View w;
  LifStep<T> p;
  const scalar_t* grad_out;
  const T* grad_v;  // nullable: 0
  const T* grad_i;  // nullable: 0
  const scalar_t* x;
  const T* v_ckpt;
  const T* i_ckpt;  // null without tau_syn
  scalar_t* grad_x;
  T* grad_v_init;
  T* grad_i_init;  // null without tau_syn
};

// ----------------------------------------------------------------------------------- per-neuron work
// The work of one thread, kept apart from the kernels (host+device) so it reads as the CPU code does.

template <typename scalar_t, typename T>
BDH_HD void forward_neuron(const ForwardArgs<scalar_t, T>& a, int64_t n) {
  const View& w = a.w;
  const LifStep<T>& p = a.p;
  const int64_t pp = n / w.Q, q = n - pp * w.Q;
  const scalar_t* __restrict__ xn = a.x + pp * w.sP + q * w.sQ;
  scalar_t* __restrict__ on = a.out + pp * w.T * w.Q + q;
  T v = a.v_init ? a.v_init[n] : p.v_rest;
  T i = a.i_init ? a.i_init[n] : T(0);
  for (int64_t t0 = 0, c = 0; t0 < w.T; t0 += kSeg, ++c) {
    const int nt = static_cast<int>(w.T - t0 < kSeg ? w.T - t0 : kSeg);
    a.v_ckpt[c * w.M + n] = v;
    if (p.syn) a.i_ckpt[c * w.M + n] = i;
    // The segment's 32 loads are issued together, before the arithmetic. Addresses advance by a
    // pointer step (not xs[j * sT]): otherwise the compiler hoists the 32 64-bit offsets j * sT (and
    // j * Q for the stores) out of the time loop and keeps them in registers (200 instead of 56 on
    // sm_90). Past the end of a short last segment the loads repeat the last valid element.
    const scalar_t* xp = xn + t0 * w.sT;
    scalar_t* op = on + t0 * w.Q;
    scalar_t xr[kSeg];
#pragma unroll
    for (int j = 0; j < kSeg; ++j) {
      xr[j] = *xp;
      if (j + 1 < nt) xp += w.sT;
    }
#pragma unroll
    for (int j = 0; j < kSeg; ++j) {
      if (j < nt) {
        const T xv = static_cast<T>(xr[j]);
        const T i_new = p.current(i, xv);
        i = i_new;
        const T h = p.charge(v, p.syn ? i_new : xv);
        const bool s = h >= p.v_th;
        *op = static_cast<scalar_t>(p.output(xv, s));
        op += w.Q;  // unconditional: a guarded step costs ~24 registers (ptxas)
        v = p.reset(h, s);
      }
    }
  }
  a.v_final[n] = v;
  if (p.syn) a.i_final[n] = i;
}

template <typename scalar_t, typename T, int S>
BDH_HD void backward_neuron(const BackwardArgs<scalar_t, T>& a, int64_t n) {
  const View& w = a.w;
  const LifStep<T>& p = a.p;
  const int64_t pp = n / w.Q, q = n - pp * w.Q;
  const scalar_t* __restrict__ xn = a.x + pp * w.sP + q * w.sQ;
  const scalar_t* __restrict__ gn = a.grad_out + pp * w.gP + q * w.gQ;
  scalar_t* __restrict__ gxn = a.grad_x + pp * w.T * w.Q + q;
  T gv = a.grad_v ? a.grad_v[n] : T(0);
  T gi = a.grad_i ? a.grad_i[n] : T(0);
  const int64_t C = (w.T + kSeg - 1) / kSeg;  // num_checkpoints (host-only in lif_common.h)
  for (int64_t c = C - 1; c >= 0; --c) {
    const int64_t t0 = c * kSeg;
    const int nt = static_cast<int>(w.T - t0 < kSeg ? w.T - t0 : kSeg);
    T v = a.v_ckpt[c * w.M + n];
    T i = p.syn ? a.i_ckpt[c * w.M + n] : T(0);
    T xr[kSeg], gr[kSeg], h[kSeg];  // converted at load: fewer registers than scalar_t copies (ptxas)
    const scalar_t* xp = xn + t0 * w.sT;  // pointer steps, loads issued together: as in forward_neuron
    const scalar_t* gp = gn + t0 * w.gT;
#pragma unroll
    for (int j = 0; j < kSeg; ++j) {
      xr[j] = static_cast<T>(*xp);
      gr[j] = static_cast<T>(*gp);
      if (j + 1 < nt) {
        xp += w.sT;
        gp += w.gT;
      }
    }
#pragma unroll
    for (int j = 0; j < kSeg; ++j) {  // recompute the segment's membranes, exactly as the forward
      if (j < nt) {
        const T i_new = p.current(i, xr[j]);
        i = i_new;
        h[j] = p.charge(v, p.syn ? i_new : xr[j]);
        v = p.reset(h[j], h[j] >= p.v_th);
      }
    }
    scalar_t* op = gxn + (t0 + nt - 1) * w.Q;
#pragma unroll
    for (int j = kSeg - 1; j >= 0; --j) {  // reverse sweep
      if (j < nt) {
        const auto g = p.template backward<S>(xr[j], h[j], gr[j], gv, gi);
        gv = g.v;
        gi = g.i;
        *op = static_cast<scalar_t>(g.x);
        if (j > 0) op -= w.Q;
      }
    }
  }
  a.grad_v_init[n] = gv;
  if (p.syn) a.grad_i_init[n] = gi;
}

// ------------------------------------------------------------------------------------------- kernels
__device__ __forceinline__ int64_t neuron_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads) lif_forward_kernel(const ForwardArgs<scalar_t, T> a) {
  const int64_t n = neuron_index();
  if (n < a.w.M) forward_neuron(a, n);
}

template <typename scalar_t, typename T, int S>
__global__ void __launch_bounds__(kThreads, kBackwardMinBlocks)
    lif_backward_kernel(const BackwardArgs<scalar_t, T> a) {
  const int64_t n = neuron_index();
  if (n < a.w.M) backward_neuron<scalar_t, T, S>(a, n);
}

// ---------------------------------------------------------------------------------------------- host
// One thread per neuron. 128-thread blocks; when that leaves SMs idle (few neurons), 32-thread blocks
// spread the warps over more SMs (each warp then has an SM's load/store and L1 bandwidth to itself).
struct Launch {
  dim3 grid, block;
};

Launch launch_for(int64_t M, const at::Device& device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device.index()));
  const int threads = (M + kThreads - 1) / kThreads >= sms ? kThreads : 32;
  const int64_t blocks = (M + threads - 1) / threads;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "too many neurons for one launch: ", M);
  return {dim3(static_cast<unsigned>(blocks)), dim3(static_cast<unsigned>(threads))};
}

void check_cuda_input(const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "the cuda backend needs CUDA tensors, got x on ", x.device());
  TORCH_CHECK(x.scalar_type() != at::kDouble,
              "the cuda backend supports fp16/bf16/fp32 input; fp64 runs on the cpp and reference backends");
}

template <typename T>
const T* optional_ptr(const std::optional<at::Tensor>& t) {
  return t ? t->const_data_ptr<T>() : nullptr;
}

View view_of(const at::Tensor& x) {
  return View{x.size(0) * x.size(2), x.size(1), x.size(2), x.stride(0), x.stride(1), x.stride(2), 0, 0, 0};
}

// AT_DISPATCH over fp32 / fp16 / bf16 (fp64 was rejected above, so no fp64 kernels are compiled).
#define BDH_DISPATCH_CUDA_TYPES(TYPE, NAME, ...)                    \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                    \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)      \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)       \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lif_forward_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& v_init, const std::optional<at::Tensor>& i_init,
    double tau_mem, double v_threshold, std::optional<double> v_reset, bool decay_input,
    std::optional<double> tau_syn, bool gated, int64_t surrogate, double alpha, bool detach_reset) {
  check_x(x);
  check_cuda_input(x);
  const int64_t M = x.size(0) * x.size(2);
  check_state(v_init, x, M, "v_init");
  check_state(i_init, x, M, "i_init");
  const c10::cuda::CUDAGuard guard(x.device());
  ForwardOutputs o = allocate_forward(x, tau_syn.has_value());
  if (M == 0) return o.tuple();
  const Launch l = launch_for(M, x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  BDH_DISPATCH_CUDA_TYPES(x.scalar_type(), "lif_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    ForwardArgs<scalar_t, T> a;
    a.w = view_of(x);
    a.p = make_step<T>(tau_mem, v_threshold, v_reset, decay_input, tau_syn, gated, alpha, detach_reset);
    a.x = x.const_data_ptr<scalar_t>();
    a.v_init = optional_ptr<T>(v_init);
    a.i_init = optional_ptr<T>(i_init);
    a.out = o.out.mutable_data_ptr<scalar_t>();
    a.v_final = o.v_final.mutable_data_ptr<T>();
    a.i_final = a.p.syn ? o.i_final.mutable_data_ptr<T>() : nullptr;
    a.v_ckpt = o.v_ckpt.mutable_data_ptr<T>();
    a.i_ckpt = a.p.syn ? o.i_ckpt.mutable_data_ptr<T>() : nullptr;
    lif_forward_kernel<scalar_t, T><<<l.grid, l.block, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return o.tuple();
}

template <typename scalar_t, typename T>
auto backward_kernel_for(int64_t surrogate) {
  return for_surrogate(surrogate, [](auto s) { return &lif_backward_kernel<scalar_t, T, decltype(s)::value>; });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_v, const std::optional<at::Tensor>& grad_i,
    const at::Tensor& x, const at::Tensor& v_ckpt, const at::Tensor& i_ckpt, double tau_mem, double v_threshold,
    std::optional<double> v_reset, bool decay_input, std::optional<double> tau_syn, bool gated,
    int64_t surrogate, double alpha, bool detach_reset) {
  check_x(x);
  check_cuda_input(x);
  const int64_t M = x.size(0) * x.size(2);
  const bool syn = tau_syn.has_value();
  check_backward_inputs(grad_out, grad_v, grad_i, x, v_ckpt, i_ckpt, syn);
  const c10::cuda::CUDAGuard guard(x.device());
  BackwardOutputs o = allocate_backward(x, syn);
  if (M == 0) return o.tuple();
  const Launch l = launch_for(M, x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  BDH_DISPATCH_CUDA_TYPES(x.scalar_type(), "lif_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    BackwardArgs<scalar_t, T> a;
    a.w = view_of(x);
    a.w.gP = grad_out.stride(0);
    a.w.gT = grad_out.stride(1);
    a.w.gQ = grad_out.stride(2);
    a.p = make_step<T>(tau_mem, v_threshold, v_reset, decay_input, tau_syn, gated, alpha, detach_reset);
    a.grad_out = grad_out.const_data_ptr<scalar_t>();
    a.grad_v = optional_ptr<T>(grad_v);
    a.grad_i = optional_ptr<T>(grad_i);
    a.x = x.const_data_ptr<scalar_t>();
    a.v_ckpt = v_ckpt.const_data_ptr<T>();
    a.i_ckpt = syn ? i_ckpt.const_data_ptr<T>() : nullptr;
    a.grad_x = o.grad_x.mutable_data_ptr<scalar_t>();
    a.grad_v_init = o.grad_v_init.mutable_data_ptr<T>();
    a.grad_i_init = syn ? o.grad_i_init.mutable_data_ptr<T>() : nullptr;
    const auto kernel = backward_kernel_for<scalar_t, T>(surrogate);
    kernel<<<l.grid, l.block, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return o.tuple();
}

}  // namespace

TORCH_LIBRARY_IMPL(bdh, CUDA, m) {
  m.impl("lif_forward", &lif_forward_cuda);
  m.impl("lif_backward", &lif_backward_cuda);
}

}  // namespace bdh
