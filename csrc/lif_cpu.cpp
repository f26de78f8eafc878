// LIF forward and backward on the CPU: OpenMP across blocks of neurons, the time loop inside each block,
// the neuron loop vectorised.
//
// Each task owns kBlock contiguous neurons and walks t forward with their membranes in a small array
// (L1-resident). The backward walks the 32-step segments from last to first: it reloads a segment's
// checkpoint, recomputes the segment's membranes h_t into a 32 x kBlock buffer (8 KiB in fp32), then runs
// the reverse sweep over it. So the op saves only the checkpoints, and the input is read twice in
// backward, the second time from cache.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_windows.h"
#include "lif_common.h"

namespace bdh {
namespace {

// A window reads only nb neurons (a few cache lines) of each time step, and consecutive steps are a whole
// row apart, which the hardware prefetcher does not follow: without these hints the loops wait on memory.
constexpr int64_t kPrefetchSteps = 8;

template <typename scalar_t>
inline void prefetch_row(const scalar_t* row, int64_t nb) {
  for (int64_t j = 0; j < nb; j += 64 / sizeof(scalar_t)) __builtin_prefetch(row + j);
}

// kUnitStride: x (and grad_out) have stride 1 along the neurons, so loads are contiguous and vectorise.
template <typename scalar_t, typename T, bool kUnitStride>
void forward_window(const Window& w, const at::Tensor& x, const LifStep<T> p, const T* v_init,
                    const T* i_init, scalar_t* out, T* v_final, T* i_final, T* v_ckpt, T* i_ckpt) {
  const int64_t T_ = x.size(1), Q = x.size(2), M = x.size(0) * Q, sT = x.stride(1);
  const int64_t sQ = kUnitStride ? 1 : x.stride(2);
  const scalar_t* xw = x.const_data_ptr<scalar_t>() + w.p * x.stride(0) + w.q0 * x.stride(2);
  scalar_t* ow = out + w.p * T_ * Q + w.q0;
  T v[kBlock], i[kBlock];
  for (int64_t j = 0; j < w.nb; ++j) {
    v[j] = v_init ? v_init[w.n0 + j] : p.v_rest;
    i[j] = i_init ? i_init[w.n0 + j] : T(0);
  }
  for (int64_t t = 0; t < T_; ++t) {
    if (t % kCheckpointEvery == 0) {
      const int64_t row = (t / kCheckpointEvery) * M + w.n0;
      std::copy(v, v + w.nb, v_ckpt + row);
      if (p.syn) std::copy(i, i + w.nb, i_ckpt + row);
    }
    const scalar_t* xt = xw + t * sT;
    scalar_t* ot = ow + t * Q;
    if (kUnitStride && t + kPrefetchSteps < T_) prefetch_row(xt + kPrefetchSteps * sT, w.nb);
#pragma omp simd
    for (int64_t j = 0; j < w.nb; ++j) {
      const T xv = static_cast<T>(xt[j * sQ]);
      const T i_new = p.current(i[j], xv);
      i[j] = i_new;
      const T h = p.charge(v[j], p.syn ? i_new : xv);
      const bool s = h >= p.v_th;
      ot[j] = static_cast<scalar_t>(p.output(xv, s));
      v[j] = p.reset(h, s);
    }
  }
  std::copy(v, v + w.nb, v_final + w.n0);
  if (p.syn) std::copy(i, i + w.nb, i_final + w.n0);
}

template <typename scalar_t, typename T, int S, bool kUnitStride>
void backward_window(const Window& w, const at::Tensor& grad_out, const at::Tensor& x, const LifStep<T> p,
                     const T* grad_v, const T* grad_i, const T* v_ckpt, const T* i_ckpt, scalar_t* grad_x,
                     T* grad_v_init, T* grad_i_init) {
  const int64_t T_ = x.size(1), Q = x.size(2), M = x.size(0) * Q;
  const int64_t sT = x.stride(1), sQ = kUnitStride ? 1 : x.stride(2);
  const int64_t gT = grad_out.stride(1), gQ = kUnitStride ? 1 : grad_out.stride(2);
  const scalar_t* xw = x.const_data_ptr<scalar_t>() + w.p * x.stride(0) + w.q0 * x.stride(2);
  const scalar_t* gw = grad_out.const_data_ptr<scalar_t>() + w.p * grad_out.stride(0) + w.q0 * grad_out.stride(2);
  scalar_t* gxw = grad_x + w.p * T_ * Q + w.q0;
  T gv[kBlock], gi[kBlock], v[kBlock], i[kBlock];
  T h_seg[kCheckpointEvery][kBlock];
  for (int64_t j = 0; j < w.nb; ++j) {
    gv[j] = grad_v ? grad_v[w.n0 + j] : T(0);
    gi[j] = grad_i ? grad_i[w.n0 + j] : T(0);
  }
  for (int64_t c = num_checkpoints(T_) - 1; c >= 0; --c) {
    const int64_t t0 = c * kCheckpointEvery, t1 = std::min(T_, t0 + kCheckpointEvery);
    for (int64_t j = 0; j < w.nb; ++j) {
      v[j] = v_ckpt[c * M + w.n0 + j];
      i[j] = p.syn ? i_ckpt[c * M + w.n0 + j] : T(0);
    }
    for (int64_t t = t0; t < t1; ++t) {  // recompute the segment's membranes, exactly as the forward
      const scalar_t* xt = xw + t * sT;
      T* ht = h_seg[t - t0];
      if (kUnitStride) {  // this segment's grad_out for the sweep below; x a few steps ahead
        prefetch_row(gw + t * gT, w.nb);
        if (t + kPrefetchSteps < t1) prefetch_row(xt + kPrefetchSteps * sT, w.nb);
      }
#pragma omp simd
      for (int64_t j = 0; j < w.nb; ++j) {
        const T xv = static_cast<T>(xt[j * sQ]);
        const T i_new = p.current(i[j], xv);
        i[j] = i_new;
        const T h = p.charge(v[j], p.syn ? i_new : xv);
        ht[j] = h;
        v[j] = p.reset(h, h >= p.v_th);
      }
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {  // reverse sweep
      const scalar_t* xt = xw + t * sT;
      const scalar_t* gt = gw + t * gT;
      scalar_t* gxt = gxw + t * Q;
      const T* ht = h_seg[t - t0];
      if (kUnitStride && t >= kCheckpointEvery) prefetch_row(xt - kCheckpointEvery * sT, w.nb);  // next segment
#pragma omp simd
      for (int64_t j = 0; j < w.nb; ++j) {
        const auto g = p.template backward<S>(static_cast<T>(xt[j * sQ]), ht[j], static_cast<T>(gt[j * gQ]),
                                              gv[j], gi[j]);
        gv[j] = g.v;
        gi[j] = g.i;
        gxt[j] = static_cast<scalar_t>(g.x);
      }
    }
  }
  for (int64_t j = 0; j < w.nb; ++j) {
    grad_v_init[w.n0 + j] = gv[j];
    if (p.syn) grad_i_init[w.n0 + j] = gi[j];
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lif_forward_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& v_init, const std::optional<at::Tensor>& i_init,
    double tau_mem, double v_threshold, std::optional<double> v_reset, bool decay_input,
    std::optional<double> tau_syn, bool gated, int64_t surrogate, double alpha, bool detach_reset) {
  check_x(x);
  const int64_t M = x.size(0) * x.size(2);
  check_state(v_init, x, M, "v_init");
  check_state(i_init, x, M, "i_init");
  ForwardOutputs o = allocate_forward(x, tau_syn.has_value());
  if (M == 0) return o.tuple();
  const bool unit = x.stride(2) == 1 || x.size(2) == 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lif_forward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto p = make_step<T>(tau_mem, v_threshold, v_reset, decay_input, tau_syn, gated, alpha, detach_reset);
    const T *v0 = optional_ptr<T>(v_init), *i0 = optional_ptr<T>(i_init);
    T* i_final = o.i_final.numel() ? o.i_final.mutable_data_ptr<T>() : nullptr;
    T* i_ckpt = o.i_ckpt.numel() ? o.i_ckpt.mutable_data_ptr<T>() : nullptr;
    for_each_window(x.size(0), x.size(2), [&](const Window& w) {
      auto run = unit ? &forward_window<scalar_t, T, true> : &forward_window<scalar_t, T, false>;
      run(w, x, p, v0, i0, o.out.mutable_data_ptr<scalar_t>(), o.v_final.mutable_data_ptr<T>(), i_final,
          o.v_ckpt.mutable_data_ptr<T>(), i_ckpt);
    });
  });
  return o.tuple();
}

template <typename scalar_t, typename T, bool kUnitStride>
decltype(&backward_window<scalar_t, T, kSigmoid, kUnitStride>) backward_for(int64_t surrogate) {
  switch (surrogate) {
    case kSigmoid: return backward_window<scalar_t, T, kSigmoid, kUnitStride>;
    case kAtan: return backward_window<scalar_t, T, kAtan, kUnitStride>;
    case kFastSigmoid: return backward_window<scalar_t, T, kFastSigmoid, kUnitStride>;
    case kPiecewiseQuadratic: return backward_window<scalar_t, T, kPiecewiseQuadratic, kUnitStride>;
    case kErf: return backward_window<scalar_t, T, kErf, kUnitStride>;
  }
  TORCH_CHECK(false, "unknown surrogate code ", surrogate);
  return nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_v, const std::optional<at::Tensor>& grad_i,
    const at::Tensor& x, const at::Tensor& v_ckpt, const at::Tensor& i_ckpt, double tau_mem, double v_threshold,
    std::optional<double> v_reset, bool decay_input, std::optional<double> tau_syn, bool gated,
    int64_t surrogate, double alpha, bool detach_reset) {
  check_x(x);
  TORCH_CHECK(grad_out.sizes() == x.sizes() && grad_out.scalar_type() == x.scalar_type(),
              "grad_out must match x in shape and dtype");
  const int64_t P = x.size(0), T_ = x.size(1), Q = x.size(2), M = P * Q;
  const bool syn = tau_syn.has_value();
  check_state(grad_v, x, M, "grad_v");
  check_state(grad_i, x, M, "grad_i");
  TORCH_CHECK(v_ckpt.sizes() == at::IntArrayRef({num_checkpoints(T_), M}) && v_ckpt.is_contiguous(),
              "v_ckpt must be the forward's checkpoints");
  TORCH_CHECK(!syn || (i_ckpt.sizes() == v_ckpt.sizes() && i_ckpt.is_contiguous()),
              "i_ckpt must be the forward's checkpoints");
  auto so = x.options().dtype(state_type(x.scalar_type()));
  at::Tensor grad_x = at::empty({P, T_, Q}, x.options());
  at::Tensor grad_v_init = at::empty({M}, so), grad_i_init = at::empty({syn ? M : 0}, so);
  if (M == 0) return {grad_x, grad_v_init, grad_i_init};
  const bool unit = (x.stride(2) == 1 && grad_out.stride(2) == 1) || Q == 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lif_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto p = make_step<T>(tau_mem, v_threshold, v_reset, decay_input, tau_syn, gated, alpha, detach_reset);
    const auto run = unit ? backward_for<scalar_t, T, true>(surrogate) : backward_for<scalar_t, T, false>(surrogate);
    const T* i_ck = syn ? i_ckpt.const_data_ptr<T>() : nullptr;
    T* gi0 = syn ? grad_i_init.mutable_data_ptr<T>() : nullptr;
    for_each_window(P, Q, [&](const Window& w) {
      run(w, grad_out, x, p, optional_ptr<T>(grad_v), optional_ptr<T>(grad_i), v_ckpt.const_data_ptr<T>(),
          i_ck, grad_x.mutable_data_ptr<scalar_t>(), grad_v_init.mutable_data_ptr<T>(), gi0);
    });
  });
  return {grad_x, grad_v_init, grad_i_init};
}

}  // namespace

TORCH_LIBRARY_IMPL(bdh, CPU, m) {
  m.impl("lif_forward", &lif_forward_cpu);
  m.impl("lif_backward", &lif_backward_cpu);
}

}  // namespace bdh
