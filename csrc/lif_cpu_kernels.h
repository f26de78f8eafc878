// The LIF window kernels of lif_cpu.cpp. Deliberately without include guard or includes: lif_cpu.cpp
// compiles this file three times, for three instruction sets (cpu_isa_instantiate.h).
// Needs cpu_windows.h, lif_common.h and <vector> included and kMaxLifBlock (the widest window) defined before.

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
  T v[kMaxLifBlock], i[kMaxLifBlock];
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
  T gv[kMaxLifBlock], gi[kMaxLifBlock], v[kMaxLifBlock], i[kMaxLifBlock];
  std::vector<T> h_buf(kCheckpointEvery * w.nb);
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
      T* ht = h_buf.data() + (t - t0) * w.nb;
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
      const T* ht = h_buf.data() + (t - t0) * w.nb;
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
