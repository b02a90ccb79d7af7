// Op schemas of fusedgan._C. Importing the module registers them; the kernels register
// themselves in cpu/, cuda/ and simt/, and Python adds fake (meta) implementations.
#include <Python.h>
#include <torch/library.h>

#include "op_schemas.h"

#ifndef FUSEDGAN_DEBUG_BUILD
#define FUSEDGAN_DEBUG_BUILD 0
#endif

namespace fusedgan {
int add_python_entries(PyObject* module);  // python_entries.cpp
}

extern "C" {
// A Python module with `debug` (1 for a FUSEDGAN_DEBUG=1 build) and the entry ops as plain
// functions (python_entries.cpp): `import fusedgan._C` loads this library and runs the
// registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr && (PyModule_AddIntConstant(module, "debug", FUSEDGAN_DEBUG_BUILD) < 0 ||
                            fusedgan::add_python_entries(module) < 0)) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

namespace fusedgan {

// The backend ops: each backend's kernels for one layer's forward or backward step. Defined
// in two namespaces: fusedgan (the C++ CPU and the CUDA kernels, by device) and fusedgan_sim
// (the CUDA kernels emulated on CPU tensors, csrc/simt/).
void define_backend_ops(torch::Library& m) {
  // y = act(batch_norm(x)). Returns (y, mean, var): the batch mean and biased variance
  // (fp32, fp64 for fp64 x) when training, else the given running ones.
  m.def(
      "bn_act_forward(Tensor x, Tensor weight, Tensor bias, Tensor? mean, Tensor? var, bool training, "
      "float eps, int act, float slope) -> (Tensor, Tensor, Tensor)");
  // (dx, dweight, dbias) of the above, from the statistics forward used.
  m.def(
      "bn_act_backward(Tensor dy, Tensor x, Tensor weight, Tensor bias, Tensor mean, Tensor var, "
      "bool training, float eps, int act, float slope) -> (Tensor, Tensor, Tensor)");
  // leaky_relu(conv2d(x, weight) + bias, slope): torch's convolution without bias, then one
  // in-place pass adding the bias and applying the activation.
  m.def(
      "conv_leaky_relu_forward(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, "
      "int[] dilation, int groups, float slope) -> Tensor");
  // (dz, dbias): dz = dy * (y > 0 ? 1 : slope) from the saved output, and dbias = sum of dz
  // per channel in the same pass (dbias is empty when has_bias is false).
  m.def("leaky_relu_grad_bias(Tensor dy, Tensor y, float slope, bool has_bias) -> (Tensor, Tensor)");
  // y = act(group_norm(x, groups)) (InstanceNorm: groups = C). Returns (y, mean, var): the mean
  // and biased variance of each (sample, group), shape (N, groups), fp32 (fp64 for fp64 x).
  m.def(
      "gn_act_forward(Tensor x, Tensor weight, Tensor bias, int groups, float eps, int act, float slope) "
      "-> (Tensor, Tensor, Tensor)");
  // (dx, dweight, dbias) of the above, from the statistics forward returned.
  m.def(
      "gn_act_backward(Tensor dy, Tensor x, Tensor weight, Tensor bias, Tensor mean, Tensor var, int groups, "
      "float eps, int act, float slope) -> (Tensor, Tensor, Tensor)");
}

}  // namespace fusedgan

TORCH_LIBRARY(fusedgan, m) {
  // The eager entry of a BatchNorm + activation layer (csrc/autograd/batch_norm_act.cpp):
  // checks, y = act(batch_norm(x)), the running-statistics update (running_mean,
  // running_var and num_batches_tracked, when given and training) and the backward.
  // momentum None is the cumulative average over num_batches_tracked.
  m.def(
      "batch_norm_act(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, bool training, float? momentum, float eps, "
      "int act, float slope) -> Tensor");
  // The eager entry of a Conv2d + LeakyReLU layer (csrc/autograd/conv_leaky_relu.cpp):
  // checks, leaky_relu(conv2d(x, weight, bias), slope) and the backward.
  m.def(
      "conv2d_leaky_relu(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, float slope) -> Tensor");
  fusedgan::define_backend_ops(m);
}
