// The STDP trace step and its reverse step, shared by the CPU and CUDA kernels.
//
// Kernel contract (the Python side is bdh_kernels/stdp.py; the ground truth is reference.stdp_traces):
// the spikes are viewed as [P, T, Q] (any strides), neuron n = p * Q + q, and per neuron
//
//   forward   tr_t = tr_{t-1} * decay + s_t,   tr_{-1} = trace_init (0 when absent),  out_t = tr_t
//   backward  c = grad_final (0 when absent); for t = T-1 .. 0: c = c + g_t; grad_s_t = c; c = c * decay
//             and grad_trace_init = c at the end,
//
// with decay = 1 - 1/tau computed in double and rounded once to the state type (fp32; fp64 for fp64
// spikes), and both lines evaluated in that type with the operations in this order (no FMA: setup.py
// builds with -ffp-contract=off and nvcc --fmad=false), so every backend is bit-identical to the reference.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>

#include <torch/types.h>

#include "lif_common.h"  // BDH_HD, state_type, check_state

namespace bdh {

template <typename T>
struct TraceStep {
  T decay;
  BDH_HD T forward(T trace, T spike) const { return trace * decay + spike; }

  // One step of the reverse scan: from c, the gradient carried from the later steps, and g_t, the
  // gradient of this step's output, the spike's gradient and the c carried to the step before.
  struct Reverse {
    T grad_spike, carried;
  };
  BDH_HD Reverse backward(T carried, T grad_out) const {
    const T acc = carried + grad_out;
    return {acc, acc * decay};
  }
};

template <typename T>
TraceStep<T> make_trace_step(double tau) {
  return {static_cast<T>(1.0 - 1.0 / tau)};
}

inline void check_trace_input(const at::Tensor& x, const char* name, double tau) {
  TORCH_CHECK(x.dim() == 3, name, " must be a [P, T, Q] view, got ", x.dim(), " dims");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), name, " must be floating point, got ", x.scalar_type());
  TORCH_CHECK(x.size(1) > 0, name, " has an empty time dim");
  TORCH_CHECK(std::isfinite(tau) && tau >= 1.0, "tau must be finite and >= 1, got ", tau);
}

// (per-step output [P, T, Q] contiguous in x's dtype, allocated by empty_steps as in allocate_forward;
// per-neuron [P*Q] in the state dtype)
inline std::tuple<at::Tensor, at::Tensor> allocate_trace_outputs(const at::Tensor& x, EmptyFn empty_steps = plain_empty) {
  const int64_t P = x.size(0), T = x.size(1), Q = x.size(2);
  return {empty_steps({P, T, Q}, x.options()), at::empty({P * Q}, x.options().dtype(state_type(x.scalar_type())))};
}

}  // namespace bdh
