// Op schemas of the bdh namespace (the CPU and CUDA implementations register themselves in their own
// files) and the Python module stub that loads them. Schemas must match bdh_kernels/lif.py and
// bdh_kernels/stdp.py.
#include <Python.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

extern "C" {
// `import bdh_kernels._C` loads this library, which runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace bdh {

bool built_with_cuda() {
#ifdef BDH_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// torch.set_flush_denormal for every intra-op thread. It sets the floating-point control register (MXCSR on
// x86) of the calling thread only, and the OpenMP pool's threads keep the mode they started with, so
// after the first parallel op the matmuls' workers would still compute on subnormals (slowly). A
// parallel_for over one index per thread runs the setting on each (ATen's OpenMP split gives every
// thread of the team exactly one index here). Returns false where the CPU has no such mode.
bool flush_denormal(bool on) {
  if (!at::globalContext().setFlushDenormal(on)) return false;
  at::parallel_for(0, at::get_num_threads(), 1, [on](int64_t, int64_t) { at::globalContext().setFlushDenormal(on); });
  return true;
}

TORCH_LIBRARY(bdh, m) {
  m.def(
      "lif_forward(Tensor x, Tensor? v_init, Tensor? i_init, float tau_mem, float v_threshold, "
      "float? v_reset, bool decay_input, float? tau_syn, bool gated, int surrogate, float alpha, "
      "bool detach_reset) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lif_backward(Tensor grad_out, Tensor? grad_v, Tensor? grad_i, Tensor x, Tensor v_ckpt, "
      "Tensor i_ckpt, float tau_mem, float v_threshold, float? v_reset, bool decay_input, float? tau_syn, "
      "bool gated, int surrogate, float alpha, bool detach_reset) -> (Tensor, Tensor, Tensor)");
  m.def("stdp_trace_forward(Tensor spikes, Tensor? trace_init, float tau) -> (Tensor, Tensor)");
  m.def("stdp_trace_backward(Tensor grad_traces, Tensor? grad_final, float tau) -> (Tensor, Tensor)");
  m.def("spike_matmul(Tensor(a!) out, Tensor spikes, Tensor dense, float alpha, bool transposed, bool accumulate) -> ()");
  m.def("built_with_cuda() -> bool", &built_with_cuda);
  m.def("flush_denormal(bool on) -> bool", &flush_denormal);
}

}  // namespace bdh
