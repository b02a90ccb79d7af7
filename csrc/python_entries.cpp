// The eager entry ops as plain Python functions of fusedgan._C. Called through torch.ops,
// an op pays for its schema: every argument is boxed into an IValue and the boxed call
// unboxed again (about 5-10 us on the 2-core CPU, as much as stock's whole BatchNorm call
// on a small input). A pybind11 function converts the arguments once and calls the C++
// function itself. fusedgan.functional uses these only for plain tensors with no torch
// function or dispatch mode and no functorch transform active (nothing that needs the
// dispatcher to see the op); everything else goes through torch.ops.fusedgan.
//
// make_entry builds fusedgan.functional.batch_norm_act and conv2d_leaky_relu themselves as
// C functions. Stock's pairs are a few C calls (F.conv2d is one, F.batch_norm and F.relu
// thin Python wrappers), and each Python line in front of the fused call cost 0.3-9 us
// between ATen calls on the 2-core CPU (cold code), so the fused functionals took 1.02x-1.06x
// of stock's time per call with their backend choice and checks in Python. A C function
// takes its fast path only for a call it can prove is a plain eager call (exact
// Tensor/Parameter arguments, int/float scalars, the default sync/inplace) and hands every
// other call, unchanged, to the Python function, which has the full checks and error
// messages and which torch.compile traces. The fast path calls
// - for a C++ backend (no mode, transform or, for the convolution, autocast active): the
//   fused op's C++ function, as the Python path's plain entry does;
// - for the "torch" backend: its stock composition (fusedgan.functional._stock_*, the
//   Python entry the modules call) with ATen's C++ functions, where that Python entry would
//   call stock's ops (the same dispatcher ops, so stock's autograd, dispatch modes,
//   autocast and bits); where that entry would take its checked path (arguments the fused
//   layers refuse, or stock's op raising), that checked path (functional._torch_checked_*),
//   which names what is wrong as every backend does.
// A torch function mode (which only Python calls meet) or torch.compile's tracing sends
// every call to the Python function. The GIL is released around the ATen calls, as torch's
// own bindings do. The functions' `self` is a small module holding their state, so that
// pickle, __qualname__ and repr treat them as the module-level functions they replace.
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <array>
#include <cmath>
#include <optional>
#include <string>

#include "autograd/entry_ops.h"
#include "kernel_math.h"

namespace fusedgan {
namespace {

// A C entry function's state: a tuple of these.
enum State {
  kFallback,       // the Python path
  kPythonOnly,     // no-argument callables, true when every call must take the Python path
  kEagerEntry,     // fusedgan._backends.eager_entry
  kBlockers,       // no-argument callables, true when the dispatcher must see a C++ backend's call
  kTorchChecked,   // the "torch" backend's checked path, in its entry's arguments
  kParameterType,  // torch.nn.Parameter
  kActivations,    // fusedgan._activation.ACTIVATIONS
  kFamily,         // "bn_act" or "conv_act", eager_entry's argument
  kCpu,            // "cpu" and "cuda", eager_entry's device types
  kCuda,
  kDefaults,  // the signature's defaults, from its first optional argument on
};

// The functions' `self`: a module object whose state is the state tuple.
PyObject*& state_of(PyObject* holder) {
  return *static_cast<PyObject**>(PyModule_GetState(holder));
}
int traverse_state(PyObject* holder, visitproc visit, void* arg) {
  Py_VISIT(state_of(holder));
  return 0;
}
int clear_state(PyObject* holder) {
  Py_CLEAR(state_of(holder));
  return 0;
}
void free_state(void* holder) {
  clear_state(static_cast<PyObject*>(holder));
}
PyModuleDef holder_def = {PyModuleDef_HEAD_INIT, "fusedgan.functional", "the state of a C functional",
                          sizeof(PyObject*), nullptr, nullptr, traverse_state, clear_state, free_state};

bool plain_tensor(PyObject* object, PyObject* parameter_type) {
  const auto type = reinterpret_cast<PyObject*>(Py_TYPE(object));
  return type == THPVariableClass || type == parameter_type;
}

std::optional<at::Tensor> optional_tensor(PyObject* object) {
  if (object == Py_None) return std::nullopt;
  return THPVariable_Unpack(object);
}

// An exact int (not bool) that fits int64; an error set when it does not fit.
bool read_int(PyObject* object, int64_t& out) {
  if (!PyLong_CheckExact(object)) return false;
  out = PyLong_AsLongLong(object);
  return !(out == -1 && PyErr_Occurred());
}

// An exact float, or an exact int that converts; an error set when it does not.
bool read_number(PyObject* object, double& out) {
  if (PyFloat_CheckExact(object)) {
    out = PyFloat_AS_DOUBLE(object);
    return true;
  }
  if (!PyLong_CheckExact(object)) return false;
  out = PyLong_AsDouble(object);
  return !(out == -1.0 && PyErr_Occurred());
}

// An int or a tuple/list of two ints, as the Python path's _pair.
bool read_pair(PyObject* object, std::array<int64_t, 2>& out) {
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

// An exact float, or an exact int that fits int64, as the Scalar torch's bindings make of it.
bool read_scalar(PyObject* object, at::Scalar& out) {
  int64_t value;
  if (PyFloat_CheckExact(object)) {
    out = PyFloat_AS_DOUBLE(object);
    return true;
  }
  if (!read_int(object, value)) return false;
  out = value;
  return true;
}

// Whether any of a tuple of no-argument callables returns a true value (an error counts as
// true, and is cleared: the Python path meets it again).
bool any_active(PyObject* callables) {
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(callables); ++i) {
    PyObject* result = PyObject_CallNoArgs(PyTuple_GET_ITEM(callables, i));
    const int active = result == nullptr ? -1 : PyObject_IsTrue(result);
    Py_XDECREF(result);
    if (active != 0) {
      PyErr_Clear();
      return true;
    }
  }
  return false;
}

// Calls the "torch" backend's checked path with its entry's arguments; a Python error as a
// C++ exception (this runs inside HANDLE_TH_ERRORS).
PyObject* call_torch_checked(PyObject* state, PyObject* const* args, size_t n) {
  PyObject* result = PyObject_Vectorcall(PyTuple_GET_ITEM(state, kTorchChecked), args, n, nullptr);
  if (result == nullptr) throw python_error();
  return result;
}

// The arguments of one call, by position in the signature (nullptr: not given), and the
// signature's defaults for those not given.
template <size_t N>
struct Arguments {
  std::array<PyObject*, N> given{};
  PyObject* defaults;  // a tuple: the defaults of arguments first_optional.. N-1
  size_t first_optional;

  PyObject* operator[](size_t i) const {
    return given[i] != nullptr || i < first_optional ? given[i] : PyTuple_GET_ITEM(defaults, i - first_optional);
  }

  // Every argument, given or default.
  std::array<PyObject*, N> all() const {
    std::array<PyObject*, N> values;
    for (size_t i = 0; i < N; ++i) values[i] = (*this)[i];
    return values;
  }

  // METH_FASTCALL | METH_KEYWORDS: args holds the positional arguments, then the values of
  // the keywords named in kwnames. False for too many positional arguments, an unknown or
  // repeated keyword, or a required argument missing: the Python path says which.
  bool parse(const std::array<const char*, N>& names, size_t max_positional, PyObject* const* args,
             Py_ssize_t n_positional, PyObject* kwnames) {
    if (n_positional > static_cast<Py_ssize_t>(max_positional)) return false;
    for (Py_ssize_t i = 0; i < n_positional; ++i) given[i] = args[i];
    const Py_ssize_t n_keywords = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t j = 0; j < n_keywords; ++j) {
      PyObject* name = PyTuple_GET_ITEM(kwnames, j);
      size_t at = 0;
      while (at < N && PyUnicode_CompareWithASCIIString(name, names[at]) != 0) ++at;
      if (at == N || given[at] != nullptr) return false;
      given[at] = args[n_positional + j];
    }
    for (size_t i = 0; i < first_optional; ++i) {
      if (given[i] == nullptr) return false;
    }
    return true;
  }
};

// Where a call on `backend` goes, from eager_entry(backend, family, device type).
enum class Route { kPython, kCpp, kStock };

// kCpp when `backend` resolves to a C++ backend on the input's (CPU or CUDA) device, kStock
// for the "torch" backend, kPython for anything else (another backend, a bad name: the
// Python path's business, which raises its error again). An error that is not an
// Exception (KeyboardInterrupt) stays set.
Route route(PyObject* state, PyObject* backend, const at::Tensor& input) {
  if (!PyUnicode_CheckExact(backend) || !(input.is_cpu() || input.is_cuda())) return Route::kPython;
  PyObject* lookup[] = {backend, PyTuple_GET_ITEM(state, kFamily), PyTuple_GET_ITEM(state, input.is_cpu() ? kCpu : kCuda)};
  PyObject* pair = PyObject_Vectorcall(PyTuple_GET_ITEM(state, kEagerEntry), lookup, 3, nullptr);
  Route result = Route::kPython;
  if (pair != nullptr && PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2) {
    result = PyTuple_GET_ITEM(pair, 0) == PyTuple_GET_ITEM(pair, 1) ? Route::kStock : Route::kCpp;
  }
  Py_XDECREF(pair);
  if (PyErr_Occurred() && PyErr_ExceptionMatches(PyExc_Exception)) PyErr_Clear();
  return result;
}

// ---- conv2d_leaky_relu(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
//      negative_slope=0.01, *, backend="auto")
enum ConvArg { kConvInput, kConvWeight, kConvBias, kStride, kPadding, kDilation, kGroups, kConvSlope, kConvBackend,
               kConvArgs };
constexpr std::array<const char*, kConvArgs> kConvNames = {
    "input", "weight", "bias", "stride", "padding", "dilation", "groups", "negative_slope", "backend"};

// The fused op's result for a plain eager call; nullptr with no Python error set when the
// call is not one (the Python path takes it, and raises whatever is wrong with it).
PyObject* conv2d_leaky_relu_fast_path(PyObject* state, const Arguments<kConvArgs>& args) {
  PyObject* parameter_type = PyTuple_GET_ITEM(state, kParameterType);
  PyObject* bias = args[kConvBias];
  std::array<int64_t, 2> stride, padding, dilation;
  int64_t groups;
  at::Scalar slope;
  if (!plain_tensor(args[kConvInput], parameter_type) || !plain_tensor(args[kConvWeight], parameter_type) ||
      (bias != Py_None && !plain_tensor(bias, parameter_type)) || !read_pair(args[kStride], stride) ||
      !read_pair(args[kPadding], padding) || !read_pair(args[kDilation], dilation) ||
      !read_int(args[kGroups], groups) || !read_scalar(args[kConvSlope], slope)) {
    PyErr_Clear();
    return nullptr;
  }
  HANDLE_TH_ERRORS
  const at::Tensor& input = THPVariable_Unpack(args[kConvInput]);
  const at::Tensor& weight = THPVariable_Unpack(args[kConvWeight]);
  const std::optional<at::Tensor> bias_tensor = optional_tensor(bias);
  const Route to = input.numel() ? route(state, args[kConvBackend], input) : Route::kPython;
  if (to == Route::kStock) {
    // _stock_conv2d_leaky_relu: its conditions and stock's ops, in its order.
    at::Tensor output;
    bool convolved = false;
    try {
      pybind11::gil_scoped_release no_gil;
      // (Stock convolves a cpu input with meta weights, which the fused layers refuse.)
      const bool meta = input.is_meta();
      const double value = slope.toDouble();
      if (input.dim() == 4 && value >= 0.0 && value < INFINITY && weight.is_meta() == meta &&
          (!bias_tensor || bias_tensor->is_meta() == meta)) {
        const at::Tensor z = at::conv2d(input, weight, bias_tensor, stride, padding, dilation, groups);
        convolved = true;
        output = at::leaky_relu(z, slope);
      }
    } catch (const python_error&) {  // a dispatch mode's own error, as it is
      throw;
    } catch (const std::exception&) {
      if (convolved) throw;  // else stock's error: the checked path names it as every backend does
    }
    if (convolved) return THPVariable_Wrap(output);
    return call_torch_checked(state, args.all().data(), kConvBackend);
  }
  if (to == Route::kPython || any_active(PyTuple_GET_ITEM(state, kBlockers))) return nullptr;
  at::Tensor output;
  {
    pybind11::gil_scoped_release no_gil;
    output = conv2d_leaky_relu(input, weight, bias_tensor, stride, padding, dilation, groups, slope.toDouble());
  }
  return THPVariable_Wrap(output);
  END_HANDLE_TH_ERRORS
}

// ---- batch_norm_act(input, running_mean, running_var, weight=None, bias=None, training=False,
//      momentum=0.1, eps=1e-5, activation="relu", negative_slope=0.01, *, backend="auto",
//      sync=False, process_group=None, inplace=False)
enum NormArg { kNormInput, kRunningMean, kRunningVar, kNormWeight, kNormBias, kTraining, kMomentum, kEps, kActivation,
               kNormSlope, kNormBackend, kSync, kProcessGroup, kInplace, kNormArgs };
constexpr std::array<const char*, kNormArgs> kNormNames = {
    "input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps", "activation",
    "negative_slope", "backend", "sync", "process_group", "inplace"};

PyObject* batch_norm_act_fast_path(PyObject* state, const Arguments<kNormArgs>& args) {
  PyObject* parameter_type = PyTuple_GET_ITEM(state, kParameterType);
  if (args[kSync] != Py_False || args[kProcessGroup] != Py_None || args[kInplace] != Py_False ||
      !plain_tensor(args[kNormInput], parameter_type) || !PyBool_Check(args[kTraining])) {
    return nullptr;
  }
  for (int i : {kRunningMean, kRunningVar, kNormWeight, kNormBias}) {
    if (args[i] != Py_None && !plain_tensor(args[i], parameter_type)) return nullptr;
  }
  double momentum, eps;
  at::Scalar slope;
  if (!read_number(args[kMomentum], momentum) || !read_number(args[kEps], eps) ||
      !read_scalar(args[kNormSlope], slope)) {
    PyErr_Clear();
    return nullptr;
  }
  // ACTIVATIONS[activation]: its code, a borrowed int (nullptr for a name it lacks or an
  // unhashable argument).
  PyObject* act = PyDict_GetItemWithError(PyTuple_GET_ITEM(state, kActivations), args[kActivation]);
  if (act == nullptr || !PyLong_CheckExact(act)) {
    PyErr_Clear();
    return nullptr;
  }
  const int64_t act_code = PyLong_AsLongLong(act);
  const bool training = args[kTraining] == Py_True;
  HANDLE_TH_ERRORS
  const at::Tensor& input = THPVariable_Unpack(args[kNormInput]);
  const std::optional<at::Tensor> running_mean = optional_tensor(args[kRunningMean]),
                                  running_var = optional_tensor(args[kRunningVar]),
                                  weight = optional_tensor(args[kNormWeight]), bias = optional_tensor(args[kNormBias]);
  const Route to = route(state, args[kNormBackend], input);
  if (to == Route::kStock) {
    // _stock_batch_norm_act: its conditions and stock's ops, in its order: finite arguments
    // the fused layers take, more than one value per channel when training, and a layout
    // stock's kernels read right (a contiguous input, or contiguous (C,) tensors).
    at::Tensor output;
    bool normalized = false;
    const double slope_value = slope.toDouble();
    if (eps >= 0.0 && eps < INFINITY && std::isfinite(slope_value) && std::isfinite(momentum)) {
      try {
        pybind11::gil_scoped_release no_gil;
        bool layout_fits = input.is_contiguous();
        if (!layout_fits && input.numel() > 0) {
          layout_fits = true;
          for (const auto* tensor : {&running_mean, &running_var, &weight, &bias}) {
            layout_fits = layout_fits && (!*tensor || (*tensor)->is_contiguous());
          }
        }
        if (input.dim() >= 2 && !(training && input.numel() == input.size(1)) && layout_fits) {
          output = at::batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps,
                                  at::globalContext().userEnabledCuDNN());
          normalized = true;
          if (act_code == kRelu) output = at::relu(output);
          if (act_code == kLeakyRelu) output = at::leaky_relu(output, slope);
        }
      } catch (const python_error&) {  // a dispatch mode's own error, as it is
        throw;
      } catch (const std::exception&) {
        if (normalized) throw;  // else stock's error: the checked path names it as every backend does
      }
    }
    if (normalized) return THPVariable_Wrap(output);
    PyObject* entry_args[] = {args[kNormInput], args[kNormWeight], args[kNormBias], args[kRunningMean],
                              args[kRunningVar], args[kTraining], args[kMomentum], args[kEps], act,
                              args[kNormSlope]};
    return call_torch_checked(state, entry_args, std::size(entry_args));
  }
  if (to == Route::kPython || input.numel() == 0 || any_active(PyTuple_GET_ITEM(state, kBlockers))) return nullptr;
  at::Tensor output;
  {
    pybind11::gil_scoped_release no_gil;
    output = batch_norm_act(input, weight, bias, running_mean, running_var, std::nullopt, training, momentum, eps,
                            act_code, slope.toDouble());
  }
  return THPVariable_Wrap(output);
  END_HANDLE_TH_ERRORS
}

// A C function's body: every call to the Python path while a kPythonOnly callable is
// active, else its arguments parsed (names, how many are required or positional) and its
// fast path tried, and the Python path for whatever the fast path does not take.
template <size_t N, PyObject* (*fast_path)(PyObject*, const Arguments<N>&)>
PyObject* entry(PyObject* holder, PyObject* const* args, Py_ssize_t n_positional, PyObject* kwnames,
                const std::array<const char*, N>& names, size_t first_optional, size_t max_positional) {
  PyObject* state = state_of(holder);
  if (state == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "fusedgan: a functional called after its state was cleared");
    return nullptr;
  }
  if (any_active(PyTuple_GET_ITEM(state, kPythonOnly))) {
    return PyObject_Vectorcall(PyTuple_GET_ITEM(state, kFallback), args, n_positional, kwnames);
  }
  Arguments<N> parsed{{}, PyTuple_GET_ITEM(state, kDefaults), first_optional};
  if (parsed.parse(names, max_positional, args, n_positional, kwnames)) {
    if (PyObject* result = fast_path(state, parsed)) return result;
    if (PyErr_Occurred()) return nullptr;  // the fused op's (or the checked path's) own error
  }
  return PyObject_Vectorcall(PyTuple_GET_ITEM(state, kFallback), args, n_positional, kwnames);
}

PyObject* batch_norm_act_entry(PyObject* holder, PyObject* const* args, Py_ssize_t n, PyObject* kwnames) {
  return entry<kNormArgs, batch_norm_act_fast_path>(holder, args, n, kwnames, kNormNames, kNormWeight, kNormBackend);
}

PyObject* conv2d_leaky_relu_entry(PyObject* holder, PyObject* const* args, Py_ssize_t n, PyObject* kwnames) {
  return entry<kConvArgs, conv2d_leaky_relu_fast_path>(holder, args, n, kwnames, kConvNames, kConvBias, kConvBackend);
}

// The C function of a family: its name, its text signature (inspect.signature reads it; the
// tests check it equals the Python path's), how many defaults it has, and its body.
struct EntryKind {
  const char* family;
  const char* name;
  const char* signature;
  size_t n_defaults;
  PyObject* (*function)(PyObject*, PyObject* const*, Py_ssize_t, PyObject*);  // METH_FASTCALL | METH_KEYWORDS
};
const std::array<EntryKind, 2> kEntryKinds = {{
    {"bn_act", "batch_norm_act",
     "(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-05, "
     "activation='relu', negative_slope=0.01, *, backend='auto', sync=False, process_group=None, inplace=False)",
     kNormArgs - kNormWeight, &batch_norm_act_entry},
    {"conv_act", "conv2d_leaky_relu",
     "(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, negative_slope=0.01, *, "
     "backend='auto')",
     kConvArgs - kConvBias, &conv2d_leaky_relu_entry},
}};

}  // namespace

// Adds batch_norm_act, conv2d_leaky_relu and make_entry to `module`; returns -1 with a
// Python error set on failure (PyInit__C's convention).
int add_python_entries(PyObject* module) {
  try {
    auto m = pybind11::reinterpret_borrow<pybind11::module_>(module);
    m.def("batch_norm_act", &batch_norm_act, "fusedgan::batch_norm_act without the dispatcher",
          pybind11::call_guard<pybind11::gil_scoped_release>());
    m.def("conv2d_leaky_relu", &conv2d_leaky_relu, "fusedgan::conv2d_leaky_relu without the dispatcher",
          pybind11::call_guard<pybind11::gil_scoped_release>());
    // make_entry(family, fallback, python_only, eager_entry, blockers, torch_checked,
    // parameter_type, activations, defaults, module_name, doc): the functional of `family` as
    // a C function (above) over the Python path `fallback`, documented by `doc`.
    m.def("make_entry", [](const std::string& family, pybind11::object fallback, pybind11::tuple python_only,
                           pybind11::object eager_entry, pybind11::tuple blockers, pybind11::object torch_checked,
                           pybind11::object parameter_type, pybind11::dict activations, pybind11::tuple defaults,
                           pybind11::str module_name, const std::string& doc) {
      const EntryKind* kind = nullptr;
      for (const auto& k : kEntryKinds) {
        if (family == k.family) kind = &k;
      }
      if (kind == nullptr) throw pybind11::value_error("make_entry: no C function for family '" + family + "'");
      if (defaults.size() != kind->n_defaults) {
        throw pybind11::value_error("make_entry: " + std::string(kind->name) + " takes " +
                                    std::to_string(kind->n_defaults) + " defaults, got " +
                                    std::to_string(defaults.size()));
      }
      pybind11::tuple state = pybind11::make_tuple(fallback, python_only, eager_entry, blockers, torch_checked,
                                                   parameter_type, activations, kind->family, "cpu", "cuda", defaults);
      auto holder = pybind11::reinterpret_steal<pybind11::object>(PyModule_Create(&holder_def));
      if (!holder) throw pybind11::error_already_set();
      state_of(holder.ptr()) = state.release().ptr();
      // A method definition must outlive its functions: these are made once per import (and
      // a few times by the tests), so they are never freed.
      auto* text = new std::string(std::string(kind->name) + kind->signature + "\n--\n\n" + doc);
      auto* def = new PyMethodDef{kind->name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(kind->function)),
                                  METH_FASTCALL | METH_KEYWORDS, text->c_str()};
      PyObject* function = PyCFunction_NewEx(def, holder.ptr(), module_name.ptr());
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
