// LIF forward and backward on the CPU: OpenMP across blocks of neurons, the time loop inside each block,
// the neuron loop vectorised (the kernels themselves are in lif_cpu_kernels.h, compiled for SSE2, AVX2
// and AVX-512).
//
// Each task owns a window of up to kMaxLifBlock contiguous neurons and walks t forward with their
// membranes in a small array (L1-resident). The backward walks the 32-step segments from last to first:
// it reloads a segment's checkpoint, recomputes the segment's membranes h_t into a 32 x nb buffer (64 KiB
// in fp32 at 512 neurons, L2-resident), then runs the reverse sweep over it. So the op saves only the
// checkpoints, and the input is read twice in backward, the second time from cache. The per-step
// outputs come from a cache of buffers whose pages stay mapped (cpu_output_cache.h).
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_output_cache.h"
#include "cpu_isa.h"
#include "cpu_windows.h"
#include "lif_common.h"

namespace bdh {
namespace {

// The window kernels, compiled for SSE2, AVX2 and AVX-512 (cpu_isa.h). On [128, 32, 4096] fp32 fwd+bwd
// the AVX-512 build takes 23 ms against AVX2's 28-30 (BENCHMARKS.md).
//
// Window width: up to 512 neurons (cpu_windows.h). Measured on 2 cores, fp32 fwd / bwd medians with the
// outputs faulted in beforehand: [128, 32, 4096] 15.0 / 20.0 ms at 512 against 19.2 / 27.4 ms at 64;
// [512, 32, 4096] 55 / 92 against 105 / 119; 1024-4096 no better.
constexpr int64_t kMaxLifBlock = 512;
#define BDH_CPU_KERNELS "lif_cpu_kernels.h"
#include "cpu_isa_instantiate.h"

template <typename scalar_t, typename T, bool kUnitStride>
decltype(&generic::forward_window<scalar_t, T, kUnitStride>) forward_for() {
  return for_this_cpu(&generic::forward_window<scalar_t, T, kUnitStride>,
                      &avx2::forward_window<scalar_t, T, kUnitStride>,
                      &avx512::forward_window<scalar_t, T, kUnitStride>);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lif_forward_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& v_init, const std::optional<at::Tensor>& i_init,
    double tau_mem, double v_threshold, std::optional<double> v_reset, bool decay_input,
    std::optional<double> tau_syn, bool gated, int64_t surrogate, double alpha, bool detach_reset) {
  check_x(x);
  const int64_t M = x.size(0) * x.size(2);
  check_state(v_init, x, M, "v_init");
  check_state(i_init, x, M, "i_init");
  ForwardOutputs o = allocate_forward(x, tau_syn.has_value(), empty_output);
  if (M == 0) return o.tuple();
  const bool unit = x.stride(2) == 1 || x.size(2) == 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lif_forward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto p = make_step<T>(tau_mem, v_threshold, v_reset, decay_input, tau_syn, gated, alpha, detach_reset);
    const T *v0 = optional_ptr<T>(v_init), *i0 = optional_ptr<T>(i_init);
    T* i_final = o.i_final.numel() ? o.i_final.mutable_data_ptr<T>() : nullptr;
    T* i_ckpt = o.i_ckpt.numel() ? o.i_ckpt.mutable_data_ptr<T>() : nullptr;
    for_each_window(x.size(0), x.size(2), [&](const Window& w) {
      auto run = unit ? forward_for<scalar_t, T, true>() : forward_for<scalar_t, T, false>();
      run(w, x, p, v0, i0, o.out.mutable_data_ptr<scalar_t>(), o.v_final.mutable_data_ptr<T>(), i_final,
          o.v_ckpt.mutable_data_ptr<T>(), i_ckpt);
    }, window_width(x.size(0), x.size(2), kMaxLifBlock));
  });
  return o.tuple();
}

template <typename scalar_t, typename T, int S, bool kUnitStride>
decltype(&generic::backward_window<scalar_t, T, S, kUnitStride>) backward_isa() {
  return for_this_cpu(&generic::backward_window<scalar_t, T, S, kUnitStride>,
                      &avx2::backward_window<scalar_t, T, S, kUnitStride>,
                      &avx512::backward_window<scalar_t, T, S, kUnitStride>);
}

template <typename scalar_t, typename T, bool kUnitStride>
auto backward_for(int64_t surrogate) {
  return for_surrogate(surrogate, [](auto s) { return backward_isa<scalar_t, T, decltype(s)::value, kUnitStride>(); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_v, const std::optional<at::Tensor>& grad_i,
    const at::Tensor& x, const at::Tensor& v_ckpt, const at::Tensor& i_ckpt, double tau_mem, double v_threshold,
    std::optional<double> v_reset, bool decay_input, std::optional<double> tau_syn, bool gated,
    int64_t surrogate, double alpha, bool detach_reset) {
  check_x(x);
  const int64_t P = x.size(0), Q = x.size(2), M = P * Q;
  const bool syn = tau_syn.has_value();
  check_backward_inputs(grad_out, grad_v, grad_i, x, v_ckpt, i_ckpt, syn);
  BackwardOutputs o = allocate_backward(x, syn, empty_output);
  if (M == 0) return o.tuple();
  const bool unit = (x.stride(2) == 1 && grad_out.stride(2) == 1) || Q == 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lif_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto p = make_step<T>(tau_mem, v_threshold, v_reset, decay_input, tau_syn, gated, alpha, detach_reset);
    const auto run = unit ? backward_for<scalar_t, T, true>(surrogate) : backward_for<scalar_t, T, false>(surrogate);
    const T* i_ck = syn ? i_ckpt.const_data_ptr<T>() : nullptr;
    T* gi0 = syn ? o.grad_i_init.mutable_data_ptr<T>() : nullptr;
    for_each_window(P, Q, [&](const Window& w) {
      run(w, grad_out, x, p, optional_ptr<T>(grad_v), optional_ptr<T>(grad_i), v_ckpt.const_data_ptr<T>(),
          i_ck, o.grad_x.mutable_data_ptr<scalar_t>(), o.grad_v_init.mutable_data_ptr<T>(), gi0);
    }, window_width(P, Q, kMaxLifBlock));
  });
  return o.tuple();
}

}  // namespace

TORCH_LIBRARY_IMPL(bdh, CPU, m) {
  m.impl("lif_forward", &lif_forward_cpu);
  m.impl("lif_backward", &lif_backward_cpu);
}

}  // namespace bdh
