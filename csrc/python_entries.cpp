// The eager entry ops as plain Python functions of fusedgan._C. Called through torch.ops,
// an op pays for its schema: every argument is boxed into an IValue and the boxed call
// unboxed again (about 5-10 us on the 2-core CPU, as much as stock's whole BatchNorm call
// on a small input). A pybind11 function converts the arguments once and calls the C++
// function itself. fusedgan.functional uses these only for plain tensors with no torch
// function or dispatch mode and no functorch transform active (nothing that needs the
// dispatcher to see the op); everything else goes through torch.ops.fusedgan.
//
// make_conv2d_leaky_relu builds fusedgan.functional.conv2d_leaky_relu itself as a C
// function: stock's F.conv2d + F.leaky_relu are two C calls, and each Python line in front
// of the fused call cost 1.4-9 us between oneDNN convolutions on the 2-core CPU (cold code),
// so the fused functional took 1.03x of stock's time per call with its checks in Python.
// The C function takes the fast path only for a call it can prove is a plain eager call
// (exact Tensor/Parameter arguments, int/float scalars, no mode, transform or autocast
// active, a C++ backend) and hands every other call, unchanged, to the Python function,
// which has the full checks and error messages and which torch.compile traces.
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <array>
#include <optional>

#include "autograd/entry_ops.h"

namespace fusedgan {
namespace {

// The function's state, its `self`: a tuple of these.
enum State { kFallback, kEagerEntry, kBlockers, kParameterType, kFamily, kAuto, kCpu, kCuda, kDefaults };

// Argument order of conv2d_leaky_relu(input, weight, bias=None, stride=1, padding=0,
// dilation=1, groups=1, negative_slope=0.01, *, backend="auto").
enum Arg { kInput, kWeight, kBias, kStride, kPadding, kDilation, kGroups, kSlope, kBackend, kArgs };
constexpr Py_ssize_t kPositional = kBackend;  // backend is keyword-only
constexpr std::array<const char*, kArgs> kNames = {"input",    "weight", "bias",           "stride", "padding",
                                                   "dilation", "groups", "negative_slope", "backend"};

bool plain_tensor(PyObject* object, PyObject* parameter_type) {
  const auto type = reinterpret_cast<PyObject*>(Py_TYPE(object));
  return type == THPVariableClass || type == parameter_type;
}

// An exact int (not bool) that fits int64; an error set when it does not fit.
bool read_int(PyObject* object, int64_t& out) {
  if (!PyLong_CheckExact(object)) return false;
  out = PyLong_AsLongLong(object);
  return !(out == -1 && PyErr_Occurred());
}

// An int or a tuple/list of two ints, as the Python path's _pair; `absent` when not given.
bool read_pair(PyObject* object, int64_t absent, std::array<int64_t, 2>& out) {
  if (object == nullptr) {
    out = {absent, absent};
    return true;
  }
  if (read_int(object, out[0])) {
    out[1] = out[0];
    return true;
  }
  if (PyErr_Occurred() || !(PyTuple_CheckExact(object) || PyList_CheckExact(object)) ||
      PySequence_Fast_GET_SIZE(object) != 2) {
    return false;
  }
  PyObject** items = PySequence_Fast_ITEMS(object);
  return read_int(items[0], out[0]) && read_int(items[1], out[1]);
}

// Whether any blocker (a no-argument callable: a torch function or dispatch mode, a
// functorch transform or autocast being active) returns a true value.
bool blocked(PyObject* blockers) {
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(blockers); ++i) {
    PyObject* result = PyObject_CallNoArgs(PyTuple_GET_ITEM(blockers, i));
    const int active = result == nullptr ? -1 : PyObject_IsTrue(result);
    Py_XDECREF(result);
    if (active != 0) return true;  // an error (-1) too: the Python path meets it again
  }
  return false;
}

// The fused op's result for a plain eager call; nullptr with no Python error set when the
// call is not one (the Python path takes it, and raises whatever is wrong with it).
PyObject* try_fast_path(PyObject* state, const std::array<PyObject*, kArgs>& args) {
  PyObject* parameter_type = PyTuple_GET_ITEM(state, kParameterType);
  PyObject* bias = args[kBias] == Py_None ? nullptr : args[kBias];
  if (args[kInput] == nullptr || args[kWeight] == nullptr || !plain_tensor(args[kInput], parameter_type) ||
      !plain_tensor(args[kWeight], parameter_type) || (bias != nullptr && !plain_tensor(bias, parameter_type))) {
    return nullptr;
  }
  std::array<int64_t, 2> stride, padding, dilation;
  int64_t groups = 1;
  double slope = 0.01;
  bool plain = read_pair(args[kStride], 1, stride) && read_pair(args[kPadding], 0, padding) &&
               read_pair(args[kDilation], 1, dilation) && (args[kGroups] == nullptr || read_int(args[kGroups], groups));
  if (plain && args[kSlope] != nullptr) {
    if (PyFloat_CheckExact(args[kSlope])) {
      slope = PyFloat_AS_DOUBLE(args[kSlope]);
    } else if (PyLong_CheckExact(args[kSlope])) {
      slope = PyLong_AsDouble(args[kSlope]);
      plain = !(slope == -1.0 && PyErr_Occurred());
    } else {
      plain = false;
    }
  }
  PyObject* backend = args[kBackend] != nullptr ? args[kBackend] : PyTuple_GET_ITEM(state, kAuto);
  const at::Tensor& input = THPVariable_Unpack(args[kInput]);
  if (!plain || !PyUnicode_CheckExact(backend) || input.numel() == 0 || !(input.is_cpu() || input.is_cuda())) {
    PyErr_Clear();
    return nullptr;
  }
  // eager_entry(backend, "conv_act", device type): the cached pair (dispatcher op, plain
  // function) when `backend` resolves to a C++ backend on this device, the one this function
  // calls; the stock composition twice for "torch", called here with the arguments as given
  // (stock's conv2d takes ints and pairs alike; a Python call through the Python path
  // measured 3% of a call more); else None. Looked up before the blockers are asked: modes
  // and autocast meet the stock composition as they meet stock's ops.
  PyObject* lookup[] = {backend, PyTuple_GET_ITEM(state, kFamily), PyTuple_GET_ITEM(state, input.is_cpu() ? kCpu : kCuda)};
  PyObject* ops = PyObject_Vectorcall(PyTuple_GET_ITEM(state, kEagerEntry), lookup, 3, nullptr);
  if (ops == nullptr || !PyTuple_Check(ops) || PyTuple_GET_SIZE(ops) != 2) {
    Py_XDECREF(ops);
    PyErr_Clear();
    return nullptr;
  }
  PyObject* stock = PyTuple_GET_ITEM(ops, 0) == PyTuple_GET_ITEM(ops, 1) ? PyTuple_GET_ITEM(ops, 1) : nullptr;
  if (stock != nullptr) {
    // The signature's defaults (bias, then stride, padding, dilation, groups, negative_slope)
    // where an argument was not given.
    PyObject* defaults = PyTuple_GET_ITEM(state, kDefaults);
    std::array<PyObject*, kBackend> stock_args;
    for (int i = 0; i < kBackend; ++i) {
      stock_args[i] = args[i] != nullptr ? args[i] : PyTuple_GET_ITEM(defaults, i - kBias);
    }
    PyObject* result = PyObject_Vectorcall(stock, stock_args.data(), kBackend, nullptr);
    Py_DECREF(ops);
    return result;
  }
  Py_DECREF(ops);
  if (blocked(PyTuple_GET_ITEM(state, kBlockers))) {
    PyErr_Clear();
    return nullptr;
  }
  HANDLE_TH_ERRORS
  std::optional<at::Tensor> bias_tensor;
  if (bias != nullptr) bias_tensor = THPVariable_Unpack(bias);
  return THPVariable_Wrap(conv2d_leaky_relu(input, THPVariable_Unpack(args[kWeight]), bias_tensor, stride, padding,
                                            dilation, groups, slope));
  END_HANDLE_TH_ERRORS
}

// METH_FASTCALL | METH_KEYWORDS: args holds the positional arguments, then the values of
// the keywords named in kwnames.
PyObject* conv2d_leaky_relu_entry(PyObject* state, PyObject* const* args, Py_ssize_t n_positional,
                                  PyObject* kwnames) {
  std::array<PyObject*, kArgs> values{};
  bool parsed = n_positional <= kPositional;
  for (Py_ssize_t i = 0; parsed && i < n_positional; ++i) values[i] = args[i];
  const Py_ssize_t n_keywords = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
  for (Py_ssize_t j = 0; parsed && j < n_keywords; ++j) {
    PyObject* name = PyTuple_GET_ITEM(kwnames, j);
    int at = 0;
    while (at < kArgs && PyUnicode_CompareWithASCIIString(name, kNames[at]) != 0) ++at;
    parsed = at < kArgs && values[at] == nullptr;  // else unknown or repeated: the Python path says so
    if (parsed) values[at] = args[n_positional + j];
  }
  if (parsed) {
    if (PyObject* result = try_fast_path(state, values)) return result;
    if (PyErr_Occurred()) return nullptr;  // the fused op's own error
  }
  return PyObject_Vectorcall(PyTuple_GET_ITEM(state, kFallback), args, n_positional, kwnames);
}

PyMethodDef conv2d_leaky_relu_def = {
    "conv2d_leaky_relu", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&conv2d_leaky_relu_entry)),
    METH_FASTCALL | METH_KEYWORDS,
    "conv2d_leaky_relu(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, negative_slope=0.01, "
    "*, backend='auto')\n--\n\n"
    "leaky_relu(conv2d(input, weight, bias), negative_slope) in one op (negative_slope=0 is\n"
    "ReLU); the arguments of torch.nn.functional.conv2d, with zero padding."};

}  // namespace

// Adds batch_norm_act, conv2d_leaky_relu and make_conv2d_leaky_relu to `module`; returns -1
// with a Python error set on failure (PyInit__C's convention).
int add_python_entries(PyObject* module) {
  try {
    auto m = pybind11::reinterpret_borrow<pybind11::module_>(module);
    m.def("batch_norm_act", &batch_norm_act, "fusedgan::batch_norm_act without the dispatcher");
    m.def("conv2d_leaky_relu", &conv2d_leaky_relu, "fusedgan::conv2d_leaky_relu without the dispatcher");
    // make_conv2d_leaky_relu(fallback, eager_entry, blockers, parameter_type, module_name): the
    // functional as a C function (above) over the Python path `fallback`.
    m.def("make_conv2d_leaky_relu", [](pybind11::object fallback, pybind11::object eager_entry,
                                       pybind11::tuple blockers, pybind11::object parameter_type,
                                       pybind11::str module_name) {
      pybind11::tuple state =
          pybind11::make_tuple(fallback, eager_entry, blockers, parameter_type, "conv_act", "auto", "cpu", "cuda",
                               pybind11::make_tuple(pybind11::none(), 1, 0, 1, 1, 0.01));
      PyObject* function = PyCFunction_NewEx(&conv2d_leaky_relu_def, state.ptr(), module_name.ptr());
      if (function == nullptr) throw pybind11::error_already_set();
      return pybind11::reinterpret_steal<pybind11::object>(function);
    });
    return 0;
  } catch (pybind11::error_already_set& error) {
    error.restore();
    return -1;
  }
}

}  // namespace fusedgan
