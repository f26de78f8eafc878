// The LIF step, its reverse step and the surrogate derivatives, shared by the CPU and CUDA kernels.
//
// The arithmetic follows bdh_kernels/reference.py operation by operation (compiled without FMA
// contraction) so that every backend produces bit-identical spikes. The kernel contract — the [P, T, Q]
// view, the checkpoint rows, the reverse-sweep formulas — is the docstring of bdh_kernels/lif.py.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include <torch/types.h>

#ifdef __CUDACC__
#define BDH_HD __host__ __device__ __forceinline__
#else
#define BDH_HD inline __attribute__((always_inline))
#endif

namespace bdh {

constexpr int64_t kCheckpointEvery = 32;  // bdh_kernels.lif.CHECKPOINT_EVERY

enum Surrogate : int { kSigmoid = 0, kAtan = 1, kFastSigmoid = 2, kPiecewiseQuadratic = 3, kErf = 4 };

// The backward kernels are compiled once per surrogate: ``for_surrogate(code, pick)`` returns
// ``pick(std::integral_constant<int, S>{})`` for the S of a runtime code (host code only).
template <typename Pick>
auto for_surrogate(int64_t code, Pick pick) {
  switch (code) {
    case kSigmoid: return pick(std::integral_constant<int, kSigmoid>{});
    case kAtan: return pick(std::integral_constant<int, kAtan>{});
    case kFastSigmoid: return pick(std::integral_constant<int, kFastSigmoid>{});
    case kPiecewiseQuadratic: return pick(std::integral_constant<int, kPiecewiseQuadratic>{});
    case kErf: return pick(std::integral_constant<int, kErf>{});
  }
  TORCH_CHECK(false, "unknown surrogate code ", code);
  return pick(std::integral_constant<int, kSigmoid>{});
}

// exp for the surrogates. On the CPU the fp32 version is a branch-free polynomial (Cephes expf, about
// 1 ulp) that the compiler vectorises; libm's expf is a call per element. Only backward uses it.
BDH_HD float surrogate_exp(float a) {
#ifdef __CUDA_ARCH__
  return expf(a);
#else
  a = a < -87.3f ? -87.3f : (a > 88.3f ? 88.3f : a);
  // round to nearest by the 1.5 * 2^23 trick: vectorises without SSE4.1's roundps
  float n = (a * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = a - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union {
    int32_t i;
    float f;
  } scale = {(static_cast<int32_t>(n) + 127) << 23};  // 2^n, built in the exponent bits
  return p * scale.f;
#endif
}

BDH_HD double surrogate_exp(double a) { return ::exp(a); }

// g(z): the surrogate derivative of the spike, formulas in bdh_kernels/surrogate.py.
template <int S, typename T>
BDH_HD T surrogate_grad(T z, T alpha) {
  if constexpr (S == kSigmoid) {
    T sg = T(1) / (T(1) + surrogate_exp(-alpha * z));
    return alpha * sg * (T(1) - sg);
  } else if constexpr (S == kAtan) {
    T w = T(M_PI / 2) * alpha * z;
    return alpha / T(2) / (T(1) + w * w);
  } else if constexpr (S == kFastSigmoid) {
    T d = T(1) + alpha * (z < T(0) ? -z : z);
    return T(1) / (d * d);
  } else if constexpr (S == kPiecewiseQuadratic) {
    T g = alpha - alpha * alpha * (z < T(0) ? -z : z);
    return g > T(0) ? g : T(0);
  } else {
    T az = alpha * z;
    return alpha * T(0.56418958354775628) * surrogate_exp(-az * az);  // 1/sqrt(pi)
  }
}

// The neuron's parameters, rounded once to the state type T (float; double for fp64 input).
template <typename T>
struct LifStep {
  T k, a_syn, v_rest, v_th, v_reset, alpha;
  // Backward factors: dh/du (k with decay_input, else 1); dv/ds = hard_grad * (v_reset - h) + soft_grad;
  // hard_keep = 1 when a spike cuts dv/dh (hard reset); gate = 1 for gated output.
  T k_in, hard_grad, soft_grad, hard_keep, gate;
  bool hard, decay_input, syn, gated, detach_reset;

  BDH_HD T current(T i, T x) const { return i * a_syn + x; }

  BDH_HD T charge(T v, T u) const {
    return decay_input ? v + (u - (v - v_rest)) * k : v - (v - v_rest) * k + u;
  }

  BDH_HD T reset(T h, bool s) const { return hard ? (s ? v_reset : h) : h - (s ? v_th : T(0)); }

  BDH_HD T output(T x, bool s) const { return gated ? (s && x > T(0) ? x : T(0)) : (s ? T(1) : T(0)); }

  // One step of the reverse sweep. gv: dL/dv_t; gi: the gradient reaching i_t from later steps. Returns
  // dL/dx_t and the gradients reaching v_{t-1} and i_{t-1} (by value: no aliasing for the vectoriser).
  struct Grads {
    T x, v, i;
  };

  template <int S>
  BDH_HD Grads backward(T x, T h, T grad_out, T gv, T gi) const {
    // Conditions enter as 0/1 factors, not branches or bool fields, so that the CPU loop vectorises. Without tau_syn,
    // gi stays 0: it starts at 0 and a_syn is 0.
    const T z = h - v_th;
    const T s = z >= T(0) ? T(1) : T(0);
    const T x_pos = x > T(0) ? T(1) : T(0);
    const T dv_ds = hard_grad * (v_reset - h) + soft_grad;
    const T gs = grad_out * (gate * (x * x_pos) + (T(1) - gate)) + gv * dv_ds;  // relu(x) if gated, else 1
    const T gh = gs * surrogate_grad<S>(z, alpha) + gv * (T(1) - hard_keep * s);
    const T gx = gh * k_in + gi;
    return {gx + grad_out * (gate * s * x_pos), gh * (T(1) - k), gx * a_syn};
  }
};

// Constants computed in double (as reference.lif_constants does), then rounded to T.
template <typename T>
LifStep<T> make_step(double tau_mem, double v_threshold, std::optional<double> v_reset, bool decay_input,
                     std::optional<double> tau_syn, bool gated, double alpha, bool detach_reset) {
  LifStep<T> p;
  p.k = static_cast<T>(1.0 / tau_mem);
  p.k_in = decay_input ? p.k : T(1);
  p.hard_grad = v_reset && !detach_reset ? T(1) : T(0);
  p.soft_grad = !v_reset && !detach_reset ? static_cast<T>(-v_threshold) : T(0);
  p.hard_keep = v_reset ? T(1) : T(0);
  p.gate = gated ? T(1) : T(0);
  p.a_syn = static_cast<T>(tau_syn ? 1.0 - 1.0 / *tau_syn : 0.0);
  p.v_rest = static_cast<T>(v_reset ? *v_reset : 0.0);
  p.v_th = static_cast<T>(v_threshold);
  p.v_reset = static_cast<T>(v_reset ? *v_reset : 0.0);
  p.alpha = static_cast<T>(alpha);
  p.hard = v_reset.has_value();
  p.decay_input = decay_input;
  p.syn = tau_syn.has_value();
  p.gated = gated;
  p.detach_reset = detach_reset;
  return p;
}

inline at::ScalarType state_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline int64_t num_checkpoints(int64_t t) { return (t + kCheckpointEvery - 1) / kCheckpointEvery; }

// Shape and dtype checks of the op's inputs; the Python wrapper has already validated the user's call.
inline void check_state(const std::optional<at::Tensor>& s, const at::Tensor& x, int64_t m, const char* name) {
  if (!s) return;
  TORCH_CHECK(s->dim() == 1 && s->size(0) == m, name, " must be a flat [P*Q] tensor of ", m, " elements");
  TORCH_CHECK(s->scalar_type() == state_type(x.scalar_type()), name, " must be in the state dtype");
  TORCH_CHECK(s->device() == x.device(), name, " must be on x's device");
  TORCH_CHECK(s->is_contiguous(), name, " must be contiguous");
}

inline void check_x(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 3, "x must be a [P, T, Q] view, got ", x.dim(), " dims");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(x.size(1) > 0, "x has an empty time dim");
}

struct ForwardOutputs {
  at::Tensor out, v_final, i_final, v_ckpt, i_ckpt;
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tuple() const {
    return {out, v_final, i_final, v_ckpt, i_ckpt};
  }
};

// The per-step output is allocated by empty_steps (the CPU backend takes it from a cache of output
// buffers: cpu_output_cache.h).
using EmptyFn = at::Tensor (*)(at::IntArrayRef, const at::TensorOptions&);
inline at::Tensor plain_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::empty(sizes, options);
}

inline ForwardOutputs allocate_forward(const at::Tensor& x, bool syn, EmptyFn empty_steps = plain_empty) {
  const int64_t P = x.size(0), T = x.size(1), Q = x.size(2), M = P * Q, C = num_checkpoints(T);
  auto so = x.options().dtype(state_type(x.scalar_type()));
  return {empty_steps({P, T, Q}, x.options()), at::empty({M}, so), at::empty({syn ? M : 0}, so),
          at::empty({C, M}, so), at::empty({syn ? C : 0, syn ? M : 0}, so)};
}

// The backward's inputs beside x: grad_out shaped like x, the final-state gradients, the forward's checkpoints.
inline void check_backward_inputs(const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_v,
                                  const std::optional<at::Tensor>& grad_i, const at::Tensor& x,
                                  const at::Tensor& v_ckpt, const at::Tensor& i_ckpt, bool syn) {
  TORCH_CHECK(grad_out.sizes() == x.sizes() && grad_out.scalar_type() == x.scalar_type(),
              "grad_out must match x in shape and dtype");
  TORCH_CHECK(grad_out.device() == x.device(), "grad_out must be on x's device");
  const int64_t M = x.size(0) * x.size(2);
  check_state(grad_v, x, M, "grad_v");
  check_state(grad_i, x, M, "grad_i");
  TORCH_CHECK(v_ckpt.sizes() == at::IntArrayRef({num_checkpoints(x.size(1)), M}) && v_ckpt.is_contiguous(),
              "v_ckpt must be the forward's checkpoints");
  TORCH_CHECK(!syn || (i_ckpt.sizes() == v_ckpt.sizes() && i_ckpt.is_contiguous()),
              "i_ckpt must be the forward's checkpoints");
  TORCH_CHECK(v_ckpt.device() == x.device() && (!syn || i_ckpt.device() == x.device()),
              "the checkpoints must be on x's device");
}

struct BackwardOutputs {
  at::Tensor grad_x, grad_v_init, grad_i_init;
  std::tuple<at::Tensor, at::Tensor, at::Tensor> tuple() const { return {grad_x, grad_v_init, grad_i_init}; }
};

inline BackwardOutputs allocate_backward(const at::Tensor& x, bool syn, EmptyFn empty_steps = plain_empty) {
  const int64_t M = x.size(0) * x.size(2);
  auto so = x.options().dtype(state_type(x.scalar_type()));
  return {empty_steps(x.sizes(), x.options()), at::empty({M}, so), at::empty({syn ? M : 0}, so)};
}

}  // namespace bdh
