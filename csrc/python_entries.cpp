// The eager entry ops as plain Python functions of fusedgan._C. Called through torch.ops,
// an op pays for its schema: every argument is boxed into an IValue and the boxed call
// unboxed again (about 5-10 us on the 2-core CPU, as much as stock's whole BatchNorm call
// on a small input). A pybind11 function converts the arguments once and calls the C++
// function itself. fusedgan.functional uses these only for plain tensors with no torch
// function or dispatch mode and no functorch transform active (nothing that needs the
// dispatcher to see the op); everything else goes through torch.ops.fusedgan.
#include <torch/extension.h>

#include "autograd/entry_ops.h"

namespace fusedgan {

// Adds batch_norm_act and conv2d_leaky_relu to `module`; returns -1 with a Python error set
// on failure (PyInit__C's convention).
int add_python_entries(PyObject* module) {
  try {
    auto m = pybind11::reinterpret_borrow<pybind11::module_>(module);
    m.def("batch_norm_act", &batch_norm_act, "fusedgan::batch_norm_act without the dispatcher");
    m.def("conv2d_leaky_relu", &conv2d_leaky_relu, "fusedgan::conv2d_leaky_relu without the dispatcher");
    return 0;
  } catch (pybind11::error_already_set& error) {
    error.restore();
    return -1;
  }
}

}  // namespace fusedgan
