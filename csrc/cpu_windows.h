// The CPU kernels' unit of work, shared by every op on the [P, T, Q] view (lif_cpu.cpp, stdp_cpu.cpp).
//
// OpenMP (at::parallel_for) hands out windows of kBlock contiguous neurons of one view row p; each task
// walks the whole time loop over its window with the neurons' state in a small array (L1-resident), and
// the loop over the window's neurons is the one the compiler vectorises.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

namespace bdh {

constexpr int64_t kBlock = 64;  // the narrowest window and the unit of window widths: 256 B of fp32 per row

// One task's neurons: a [T, nb] window of the [P, T, Q] view.
struct Window {
  int64_t p, q0, nb, n0;  // view row, first column, neurons in the block, first flat neuron index
};

// Calls fn(Window) for every window of `block` neurons (kBlock unless given) of the [P, T, Q] view, in
// parallel. A window never spans two view rows.
template <typename F>
void for_each_window(int64_t P, int64_t Q, F&& fn, int64_t block = kBlock) {
  const int64_t blocks_per_row = (Q + block - 1) / block;
  at::parallel_for(0, P * blocks_per_row, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t p = b / blocks_per_row, q0 = (b % blocks_per_row) * block;
      fn(Window{p, q0, std::min(block, Q - q0), p * Q + q0});
    }
  });
}

// Window width for a [P, T, Q] view: about four windows per thread, rounded to kBlock neurons, between
// kBlock and max_block, never wider than a view row. Wide windows matter: a window's step touches nb
// contiguous elements and the next step is a whole view row further, so narrow windows (256 B per step, a
// new page every step) leave the hardware prefetcher idle and miss the TLB on every row.
inline int64_t window_width(int64_t P, int64_t Q, int64_t max_block) {
  const int64_t tasks = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t per_task = (P * Q + tasks - 1) / tasks;
  int64_t b = (per_task + kBlock - 1) / kBlock * kBlock;
  b = std::min(std::max(b, kBlock), max_block);
  return std::min(b, (Q + kBlock - 1) / kBlock * kBlock);
}

template <typename T>
const T* optional_ptr(const std::optional<at::Tensor>& t) {
  return t ? t->const_data_ptr<T>() : nullptr;
}

}  // namespace bdh
