// STDP trace scan, forward and backward, on the CPU: OpenMP across windows of neurons (cpu_windows.h),
// the time loop inside each window, the neuron loop vectorised. The arithmetic is TraceStep in
// stdp_common.h; the contract is there and in bdh_kernels/stdp.py.
//
// The scan is memory-bound (one multiply and one add per element): each window reads its [T, nb] slice of
// the input once and writes the output once, with the nb running traces in a small array. Nothing is
// saved for the backward, which is the same scan run from the last step to the first on the gradient.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "cpu_output_cache.h"
#include "cpu_windows.h"
#include "stdp_common.h"

namespace bdh {
namespace {

// Window width (cpu_windows.h). The scan holds one running value per neuron, so windows can be as wide
// as 8 KiB of fp32 state. Measured on 2 cores, fp32 [1, 64, 32768], two scans with fresh outputs: 5.5 ms
// with 64-neuron windows, 2.3 ms with 512-4096.
constexpr int64_t kMaxTraceBlock = 2048;

// kUnitStride: the input has stride 1 along the neurons, so loads are contiguous and vectorise.
// The step is passed by value (a copy in registers, not a pointer the vectoriser must assume aliased).
template <typename scalar_t, typename T, bool kUnitStride>
void trace_forward_window(const Window& w, const at::Tensor& x, const TraceStep<T> step, const T* init,
                          scalar_t* out, T* final_trace) {
  const int64_t T_ = x.size(1), Q = x.size(2), sT = x.stride(1);
  const int64_t sQ = kUnitStride ? 1 : x.stride(2);
  const scalar_t* xw = x.const_data_ptr<scalar_t>() + w.p * x.stride(0) + w.q0 * x.stride(2);
  scalar_t* ow = out + w.p * T_ * Q + w.q0;
  T tr[kMaxTraceBlock];
  for (int64_t j = 0; j < w.nb; ++j) tr[j] = init ? init[w.n0 + j] : T(0);
  for (int64_t t = 0; t < T_; ++t) {
    const scalar_t* xt = xw + t * sT;
    scalar_t* ot = ow + t * Q;
#pragma omp simd
    for (int64_t j = 0; j < w.nb; ++j) {
      const T v = step.forward(tr[j], static_cast<T>(xt[j * sQ]));
      tr[j] = v;
      ot[j] = static_cast<scalar_t>(v);
    }
  }
  std::copy(tr, tr + w.nb, final_trace + w.n0);
}

template <typename scalar_t, typename T, bool kUnitStride>
void trace_backward_window(const Window& w, const at::Tensor& g, const TraceStep<T> step, const T* grad_final,
                           scalar_t* grad_x, T* grad_init) {
  const int64_t T_ = g.size(1), Q = g.size(2), gT = g.stride(1);
  const int64_t gQ = kUnitStride ? 1 : g.stride(2);
  const scalar_t* gw = g.const_data_ptr<scalar_t>() + w.p * g.stride(0) + w.q0 * g.stride(2);
  scalar_t* ow = grad_x + w.p * T_ * Q + w.q0;
  T c[kMaxTraceBlock];
  for (int64_t j = 0; j < w.nb; ++j) c[j] = grad_final ? grad_final[w.n0 + j] : T(0);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const scalar_t* gt = gw + t * gT;
    scalar_t* ot = ow + t * Q;
#pragma omp simd
    for (int64_t j = 0; j < w.nb; ++j) {
      const auto r = step.backward(c[j], static_cast<T>(gt[j * gQ]));
      ot[j] = static_cast<scalar_t>(r.grad_spike);
      c[j] = r.carried;
    }
  }
  std::copy(c, c + w.nb, grad_init + w.n0);
}

std::tuple<at::Tensor, at::Tensor> stdp_trace_forward_cpu(const at::Tensor& spikes,
                                                          const std::optional<at::Tensor>& trace_init, double tau) {
  check_trace_input(spikes, "spikes", tau);
  const int64_t M = spikes.size(0) * spikes.size(2);
  check_state(trace_init, spikes, M, "trace_init");
  auto [out, final_trace] = allocate_trace_outputs(spikes, empty_output);
  if (M == 0) return {out, final_trace};
  const bool unit = spikes.stride(2) == 1 || spikes.size(2) == 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, spikes.scalar_type(), "stdp_trace_forward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const TraceStep<T> step = make_trace_step<T>(tau);
    const auto run = unit ? &trace_forward_window<scalar_t, T, true> : &trace_forward_window<scalar_t, T, false>;
    const T* init = optional_ptr<T>(trace_init);
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    T* f = final_trace.mutable_data_ptr<T>();
    for_each_window(spikes.size(0), spikes.size(2), [&](const Window& w) { run(w, spikes, step, init, o, f); },
                    window_width(spikes.size(0), spikes.size(2), kMaxTraceBlock));
  });
  return {out, final_trace};
}

std::tuple<at::Tensor, at::Tensor> stdp_trace_backward_cpu(const at::Tensor& grad_traces,
                                                           const std::optional<at::Tensor>& grad_final, double tau) {
  check_trace_input(grad_traces, "grad_traces", tau);
  const int64_t M = grad_traces.size(0) * grad_traces.size(2);
  check_state(grad_final, grad_traces, M, "grad_final");
  auto [grad_x, grad_init] = allocate_trace_outputs(grad_traces, empty_output);
  if (M == 0) return {grad_x, grad_init};
  const bool unit = grad_traces.stride(2) == 1 || grad_traces.size(2) == 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_traces.scalar_type(), "stdp_trace_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const TraceStep<T> step = make_trace_step<T>(tau);
    const auto run = unit ? &trace_backward_window<scalar_t, T, true> : &trace_backward_window<scalar_t, T, false>;
    const T* gf = optional_ptr<T>(grad_final);
    scalar_t* o = grad_x.mutable_data_ptr<scalar_t>();
    T* gi = grad_init.mutable_data_ptr<T>();
    for_each_window(grad_traces.size(0), grad_traces.size(2),
                    [&](const Window& w) { run(w, grad_traces, step, gf, o, gi); },
                    window_width(grad_traces.size(0), grad_traces.size(2), kMaxTraceBlock));
  });
  return {grad_x, grad_init};
}

}  // namespace

TORCH_LIBRARY_IMPL(bdh, CPU, m) {
  m.impl("stdp_trace_forward", &stdp_trace_forward_cpu);
  m.impl("stdp_trace_backward", &stdp_trace_backward_cpu);
}

}  // namespace bdh
