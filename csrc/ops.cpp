// Op schemas of the bdh namespace (the CPU and CUDA implementations register themselves in their own
// files) and the Python module stub that loads them. Schemas must match bdh_kernels/lif.py and
// bdh_kernels/stdp.py.
#include <Python.h>
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
  m.def("built_with_cuda() -> bool", &built_with_cuda);
}

}  // namespace bdh
