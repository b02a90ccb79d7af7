"""The C++/CUDA extension: op registration, opcheck (of its ops and of the Triton
backend's custom ops, which share their schemas), and falling back when it cannot load."""

import contextlib
import functools
import inspect
import math
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
import torch.utils._python_dispatch
from _helpers import DEVICES

import fusedgan
from fusedgan import _extension
from fusedgan._backends import why_unusable
from fusedgan._ops import FAMILIES, OPS, SCHEMAS

needs_extension = pytest.mark.skipif(_extension._load_error is not None,
                                     reason=f"fusedgan._C is not built here: {_extension._load_error}")

# (op namespace, device): the C++ ops on every device; the Triton custom ops where Triton runs;
# the emulated CUDA kernels on the CPU.
OP_SETS = [pytest.param("fusedgan", d, marks=needs_extension, id=f"cpp-{d}") for d in DEVICES] + \
    [pytest.param("fusedgan_triton", d, id=f"triton-{d}") for d in DEVICES if why_unusable("triton", d) is None] + \
    ([pytest.param("fusedgan_sim", "cpu", id="cuda-sim-cpu")] if why_unusable("cuda-sim", "cpu") is None else [])


def _ops(namespace):
    if namespace == "fusedgan_triton":
        import fusedgan.triton  # noqa: F401  (registers the custom ops)
    return getattr(torch.ops, namespace)


@needs_extension
def test_every_op_has_cpu_cuda_and_emulated_kernels():
    backends = ["cpu", "cuda-sim"]
    if torch.version.cuda is not None and os.environ.get("FUSEDGAN_BUILD_CUDA") != "0":
        # CI installs the CUDA build of torch and has nvcc: the CUDA kernels must be compiled in.
        backends.append("cuda")
    for family in FAMILIES:
        for backend in backends:
            assert _extension._HAS_KERNELS[(family, backend)], f"fusedgan._C has no {backend} kernels for {family}"


@pytest.mark.parametrize("namespace,device", OP_SETS)
def test_op_schemas_are_the_op_tables(namespace, device):
    """Every op namespace defines exactly the ops of fusedgan/_ops.py with its schemas (the
    C++ ones are written out in csrc/fusedgan_ops.cpp; the Triton ones come from the table)."""
    ops = _ops(namespace)
    for op in OPS:
        assert str(getattr(ops, op).default._schema) == f"{namespace}::{op}{SCHEMAS[op]}"


@needs_extension
def test_debug_build_only_when_asked_for():
    """FUSEDGAN_DEBUG=1 at build time gives fusedgan._C.debug == 1 (setup.py); the build the
    README installs, which the benchmarks measure, is a release build."""
    import fusedgan._C

    assert fusedgan._C.debug == (os.environ.get("FUSEDGAN_DEBUG") == "1")


def _bn_args(device, dtype, channels_last, training):
    x = torch.randn(4, 3, 5, 6, device=device, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    w = torch.rand(3, device=device, dtype=param_dtype) + 0.5
    b = torch.randn(3, device=device, dtype=param_dtype)
    mean = torch.randn(3, device=device, dtype=param_dtype)
    var = torch.rand(3, device=device, dtype=param_dtype) + 0.5
    return x, w, b, mean, var


@pytest.mark.parametrize("namespace,device", OP_SETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_opcheck(namespace, device, dtype, channels_last, training):
    ops = _ops(namespace)
    x, w, b, mean, var = _bn_args(device, dtype, channels_last, training)
    fwd_mean, fwd_var = (None, None) if training else (mean, var)
    torch.library.opcheck(ops.bn_act_forward, (x, w, b, fwd_mean, fwd_var, training, 1e-5, 2, 0.2))
    dy = torch.randn_like(x)
    torch.library.opcheck(ops.bn_act_backward, (dy, x, w, b, mean, var, training, 1e-5, 1, 0.0))


# (namespace, device) pairs whose backend has GroupNorm kernels (fusedgan: the device's own).
_BACKEND_OF = {"fusedgan_triton": "triton", "fusedgan_sim": "cuda-sim"}
GN_OP_SETS = [p for p in OP_SETS
              if why_unusable(_BACKEND_OF.get(p.values[0], p.values[1]), p.values[1], "gn_act") is None]


@pytest.mark.parametrize("namespace,device", GN_OP_SETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nc", "ncl", "transposed"])
def test_opcheck_group_norm(namespace, device, dtype, layout):
    """Fakes and real outputs agree in every layout: a transposed input (spatial dimensions
    no one stride walks) is read as a contiguous copy by every backend, so y and dx are
    contiguous; channels_last stays channels_last."""
    ops = _ops(namespace)
    shape = {"nchw": (3, 6, 5, 4), "nhwc": (3, 6, 5, 4), "nc": (4, 6), "ncl": (3, 6, 7), "transposed": (3, 6, 4, 5)}
    x = torch.randn(shape[layout], device=device, dtype=dtype)
    x = x.to(memory_format=torch.channels_last) if layout == "nhwc" else x.transpose(2, 3) if layout == "transposed" \
        else x
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    w = torch.rand(6, device=device, dtype=param_dtype) + 0.5
    b = torch.randn(6, device=device, dtype=param_dtype)
    for groups in (1, 3, 6):
        y, mean, var = ops.gn_act_forward(x, w, b, groups, 1e-5, 2, 0.2)
        torch.library.opcheck(ops.gn_act_forward, (x, w, b, groups, 1e-5, 2, 0.2))
        torch.library.opcheck(ops.gn_act_backward, (torch.randn_like(x), x, w, b, mean, var, groups, 1e-5, 1, 0.0))


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_opcheck_entry_op(device, dtype, channels_last, training):
    """The eager entry op (checks, forward, running statistics, C++ autograd) as one op:
    its schema (the buffers it mutates), its autograd registration and its fake. It is
    eager-only (under torch.compile the layers trace the Python path, whose ops are checked
    above, AOT dispatch included), so opcheck's AOT-dispatch test is not run on it."""
    x, w, b, mean, var = _bn_args(device, dtype, channels_last, training)
    count = torch.tensor(3, device=device)
    for momentum, tracked in ((0.1, None), (None, count)):
        args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), mean.clone(), var.clone(), tracked,
                training, momentum, 1e-5, 2, 0.2)
        torch.library.opcheck(torch.ops.fusedgan.batch_norm_act, args,
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("namespace,device", OP_SETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_opcheck_conv(namespace, device, dtype, channels_last):
    ops = _ops(namespace)
    x = torch.randn(2, 3, 9, 8, device=device, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(5, 3, 4, 4, device=device, dtype=dtype)
    b = torch.randn(5, device=device, dtype=dtype)
    for bias in (b, None):
        torch.library.opcheck(ops.conv_leaky_relu_forward, (x, w, bias, [2, 2], [1, 1], [1, 1], 1, 0.2))
    y = torch.randn(2, 5, 4, 4, device=device, dtype=dtype)
    for has_bias in (True, False):
        torch.library.opcheck(ops.leaky_relu_grad_bias, (torch.randn_like(y), y, 0.2, has_bias))


@pytest.mark.parametrize("namespace,device", OP_SETS)
@pytest.mark.parametrize("layout", ["transposed", "channel_slice", "nc"])
def test_opcheck_layouts(namespace, device, layout):
    """Outputs in the layout the kernels really allocate: a dense input whose spatial
    dimensions cannot be walked with one stride (transposed) is read as a contiguous copy,
    so y and dx are contiguous."""
    ops = _ops(namespace)
    x = torch.randn(4, 6, 5, 7, device=device)
    x = {"transposed": x.transpose(2, 3), "channel_slice": x[:, ::2], "nc": x[:, :, 0, 0]}[layout]
    w, b, mean, var = (torch.rand(x.shape[1], device=device) + 0.5 for _ in range(4))
    for training in (True, False):
        fwd_mean, fwd_var = (None, None) if training else (mean, var)
        torch.library.opcheck(ops.bn_act_forward, (x, w, b, fwd_mean, fwd_var, training, 1e-5, 2, 0.2))
        torch.library.opcheck(ops.bn_act_backward, (torch.randn_like(x), x, w, b, mean, var, training, 1e-5, 2, 0.2))
    for has_bias in (True, False):
        torch.library.opcheck(ops.leaky_relu_grad_bias, (torch.randn_like(x), x, 0.2, has_bias))


@pytest.mark.parametrize("namespace,device", GN_OP_SETS)
@pytest.mark.parametrize("layout", ["transposed", "channel_slice", "nc"])
def test_opcheck_group_norm_layouts(namespace, device, layout):
    """As test_opcheck_layouts, for GroupNorm, with strided (C,) parameters."""
    ops = _ops(namespace)
    x = torch.randn(4, 6, 5, 7, device=device)
    x = {"transposed": x.transpose(2, 3), "channel_slice": x[:, ::2], "nc": x[:, :, 0, 0]}[layout]
    w, b = (torch.rand(2 * x.shape[1], device=device)[::2] + 0.5 for _ in range(2))
    for groups in (1, 3):
        y, mean, var = ops.gn_act_forward(x, w, b, groups, 1e-5, 2, 0.2)
        torch.library.opcheck(ops.gn_act_forward, (x, w, b, groups, 1e-5, 2, 0.2))
        torch.library.opcheck(ops.gn_act_backward, (torch.randn_like(x), x, w, b, mean, var, groups, 1e-5, 2, 0.2))


@pytest.mark.parametrize("namespace,device", OP_SETS)
def test_opcheck_eval_statistics_in_low_precision_buffers(namespace, device):
    """Eval returns the running statistics in the accumulation dtype (fp32), whatever
    dtype the buffers have (bf16 after module.bfloat16())."""
    ops = _ops(namespace)
    x, w, b, mean, var = (t.bfloat16() for t in _bn_args(device, torch.float32, False, False))
    torch.library.opcheck(ops.bn_act_forward, (x, w, b, mean, var, False, 1e-5, 2, 0.2))
    assert ops.bn_act_forward(x, w, b, mean, var, False, 1e-5, 2, 0.2)[1].dtype == torch.float32


@pytest.mark.parametrize("namespace,device", OP_SETS)
@pytest.mark.parametrize("x_layout,w_layout", [("nchw", "nhwc"), ("nhwc", "nchw")])
def test_opcheck_conv_mixed_layouts(namespace, device, x_layout, w_layout):
    ops = _ops(namespace)
    formats = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}
    x = torch.randn(2, 3, 9, 8, device=device).contiguous(memory_format=formats[x_layout])
    w = torch.randn(5, 3, 4, 4, device=device).contiguous(memory_format=formats[w_layout])
    torch.library.opcheck(ops.conv_leaky_relu_forward, (x, w, torch.randn(5, device=device), [2, 2], [1, 1], [1, 1], 1,
                                                        0.2))


@needs_extension
def test_import_falls_back_with_one_warning_when_extension_cannot_load():
    script = textwrap.dedent("""
        import importlib.abc, sys, warnings
        import torch

        class Broken(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "fusedgan._C":
                    raise ImportError("_C.so: undefined symbol: _ZN3c104impl3cow")

        sys.meta_path.insert(0, Broken())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import fusedgan
            import fusedgan.functional
        messages = [str(w.message) for w in caught if "fusedgan._C" in str(w.message)]
        print(len(messages))
        print(messages[0])
        from fusedgan._backends import resolve_backend
        print(resolve_backend("auto", torch.device("cpu")))
        print(fusedgan.backend_status()["cpu"])
    """)
    env = {k: v for k, v in os.environ.items() if k != "FUSEDGAN_BACKEND"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    count, message, auto, status = out.stdout.strip().splitlines()
    assert count == "1"
    assert "built against another torch" in message and "pip install --no-build-isolation -e ." in message
    assert auto == "torch"
    assert "could not be loaded" in status


@needs_extension
def test_fakes_check_their_inputs_as_the_kernels_do():
    """Traced calls (fake tensors) fail where eager calls fail, with the kernels' messages."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, w = torch.randn(2, 4, 3, 3), torch.ones(4)
    cases = [(torch.ops.fusedgan.bn_act_backward, (torch.randn(2, 4, 3, 2), x, w, w, w, w, True, 1e-5, 1, 0.0),
              "grad and input shapes differ"),
             (torch.ops.fusedgan.bn_act_forward, (x, w, w, None, None, False, 1e-5, 1, 0.0), "are required"),
             (torch.ops.fusedgan.gn_act_forward, (x, w, w, 3, 1e-5, 1, 0.0), r"groups \(3\) must divide")]
    for op, args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            op(*args)
        with FakeTensorMode() as mode, pytest.raises(RuntimeError, match=message):
            op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])


class _SeenOps(torch.utils._python_dispatch.TorchDispatchMode):
    """A dispatch mode that records the ops it sees."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@needs_extension
def test_eager_calls_take_the_plain_entry_unless_the_dispatcher_must_see_them():
    """An eager fused layer on plain CPU tensors calls the entry op as a plain _C function
    (no boxing through torch.ops); under a dispatch mode, or with a tensor subclass argument,
    it goes through the dispatcher op. Both give the same bits."""
    from fusedgan import functional as fn

    dispatcher, plain = _extension.ENTRY_OPS["bn_act"]
    x = torch.randn(2, 3, 5, 5)
    assert fn._entry_op(x, "cpu", "bn_act", torch.nn.Parameter(torch.ones(3)), None) is plain
    assert fn._entry_op(x, "cpu", "bn_act", torch.ones(3).as_subclass(_Marked)) is dispatcher
    assert fn._entry_op(x.as_subclass(_Marked), "cpu", "bn_act") is dispatcher
    assert fn._entry_op(torch.empty(0, 3, 5, 5), "cpu", "bn_act") is None
    # The "torch" backend: stock's ops themselves, which meet subclasses and modes as stock's do.
    assert fn._entry_op(x, "torch", "bn_act") is fn.STOCK_ENTRIES["bn_act"]
    assert fn._entry_op(x.as_subclass(_Marked), "torch", "bn_act") is fn.STOCK_ENTRIES["bn_act"]
    with _SeenOps():
        assert fn._entry_op(x, "cpu", "bn_act") is dispatcher

    conv = fusedgan.FusedConvLeakyReLU(3, 4, 3, padding=1, negative_slope=0.2, backend="cpu")
    layer = fusedgan.FusedBNLeakyReLU(4, 0.2, backend="cpu")
    outputs = conv(x), layer(conv(x))
    with _SeenOps() as mode:
        seen = conv(x), layer(conv(x))
    # The mode sits below autograd: it sees the kernels the entry ops call.
    assert {"fusedgan.conv_leaky_relu_forward", "fusedgan.bn_act_forward"} <= mode.seen, mode.seen
    for a, b in zip(outputs, seen):
        assert torch.equal(a, b)


class _Marked(torch.Tensor):
    """A tensor subclass (with torch function handling, as a DTensor has)."""


class _Recorded:
    """A function that records its calls before calling `function`."""

    def __init__(self, function):
        self.function, self.calls = function, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.function(*args, **kwargs)


def _c_function_with_spies(family):
    """fusedgan.functional's C function for `family` over a recorded Python path, the
    "torch" backend's checked path recorded too: (function, python_path, torch_checked)."""
    from fusedgan import functional as fn

    python_path = functools.wraps(fn.PYTHON_PATHS[family])(_Recorded(fn.PYTHON_PATHS[family]))
    torch_checked = _Recorded(fn.TORCH_CHECKED[family])
    return fn._make_c_function(python_path, family, torch_checked), python_path, torch_checked


class _FunctionMode(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _SeenActivations(torch.utils._python_dispatch.TorchDispatchMode):
    """A dispatch mode that records the activation ops it sees with their scalar arguments."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "relu" in str(func):
            self.seen.append((str(func), [(type(a), a) for a in args[1:]]))
        return func(*args, **(kwargs or {}))


def _modes(device):
    return {"dispatch mode": _SeenOps, "torch function mode": _FunctionMode,
            "autocast": lambda: torch.autocast(device, dtype=torch.bfloat16)}


def _assert_reaches_python_path(function, python_path, args, kwargs):
    """function(*args, **kwargs) hands exactly its arguments to python_path (a _Recorded)."""
    try:
        function(*args, **kwargs)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        pass
    assert python_path.calls == [(args, kwargs)], (args, kwargs)
    python_path.calls.clear()


def _grads(y, inputs):
    return torch.autograd.grad(y.square().sum(), inputs, retain_graph=True, allow_unused=True, materialize_grads=True)


@needs_extension
@pytest.mark.parametrize("family", ["bn_act", "conv_act"])
def test_functionals_are_c_functions_that_read_as_the_python_paths(family):
    """The C functionals carry their Python paths' signature and docstring, and pickle,
    print and name themselves as module-level functions (pickled by reference)."""
    from fusedgan import functional as fn

    python_path = fn.PYTHON_PATHS[family]
    function = getattr(fn, python_path.__name__)
    assert type(function) is type(len) and function.__name__ == function.__qualname__ == python_path.__name__
    assert inspect.signature(function) == inspect.signature(python_path)
    assert function.__doc__ == python_path.__doc__ and function.__module__ == "fusedgan.functional"
    assert repr(function) == f"<built-in function {python_path.__name__}>"
    assert pickle.loads(pickle.dumps(function)) is function
    assert pickle.loads(pickle.dumps(functools.partial(function, backend="torch"))).func is function


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
def test_functional_conv_is_one_c_call_unless_the_python_path_must_run(device):
    """fusedgan.functional.conv2d_leaky_relu is a C function (csrc/python_entries.cpp): a plain
    eager call on a C++ backend never reaches its Python path, and gives the Python path's
    bits; on "torch" it gives stock's bits, scalars and gradients; every other call reaches
    the Python path with exactly the arguments it was given (and so its checks and error
    messages), or for "torch", the checked path its stock entry would take."""
    from fusedgan import functional as fn

    entry, python_path, torch_checked = _c_function_with_spies("conv_act")
    x = torch.randn(2, 3, 6, 5, device=device, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(4, 3, 3, 3, device=device))
    b = torch.randn(4, device=device, requires_grad=True)
    plain = [((x, w, b), {}), ((x, w, b, 1, 1, 1, 1, 0.2), {}), ((x, w, None, (1, 2), [1, 0], 1, 1, 0), {}),
             ((), dict(input=x, weight=w, bias=b, padding=1, negative_slope=0, backend="auto")),
             ((x, w), dict(groups=1, dilation=(2, 1), stride=[2, 2], negative_slope=3))]
    for args, kwargs in plain:
        y = entry(*args, **kwargs)
        assert not python_path.calls, (args, kwargs)
        expected = fn.PYTHON_PATHS["conv_act"](*args, **kwargs)
        assert torch.equal(y, expected)
        assert torch.equal(torch.autograd.grad(y.sum(), (x, w))[0], torch.autograd.grad(expected.sum(), (x, w))[0])

    # Another backend, subclasses, an empty batch, arguments of other types (a float stride,
    # a bool slope, a triple, an int beyond int64), unknown or missing arguments, too many.
    python_only = [((x, w, b), dict(backend="cuda-sim")),
                   ((x.as_subclass(_Marked), w), {}),
                   ((x, w, b.as_subclass(_Marked)), {}), ((x[:0], w), {}), ((x, w, b, 1.0), {}),
                   ((x, w, b, 1, 1, 1, 1, True), {}), ((x, w, b, (1, 1, 1)), {}), ((x, w), dict(groups=2**70)),
                   ((x, w), dict(negative_slope=-1.0, nope=1)), ((x,), {}), ((x, w, b, 1, 1, 1, 1, 0.2, "cpu"), {}),
                   ((x, w), dict(backend=("cpu",))), ((x, w), dict(weight=w)),
                   ((x, w), dict(negative_slope=2**64, backend="torch"))]
    for args, kwargs in python_only:
        _assert_reaches_python_path(entry, python_path, args, kwargs)
    for name, mode in _modes(device).items():
        for backend in ("auto", "torch"):
            with mode():
                entry(x, w, b, backend=backend)
            # A C++ backend's call under any of these, a "torch" call under a function mode.
            assert python_path.calls == ([((x, w, b), dict(backend=backend))] if backend == "auto" or
                                         name == "torch function mode" else []), (name, backend)
            python_path.calls.clear()
    with torch.no_grad():  # no mode: the C++ op, recording no graph
        assert entry(x, w, b).grad_fn is None and not python_path.calls

    # The "torch" backend: stock's ops called from C: stock's bits and gradients, under a
    # dispatch mode and autocast too, with stock's scalars (an int slope stays an int); its
    # errors those of every backend, raised by the checked path.
    torch_calls = [(((x, w, b), dict(backend="torch")), lambda: F.leaky_relu(F.conv2d(x, w, b), 0.01)),
                   (((x, w), dict(stride=(1, 2), padding=[1, 0], negative_slope=0, backend="torch")),
                    lambda: F.leaky_relu(F.conv2d(x, w, None, (1, 2), [1, 0]), 0))]
    for (args, kwargs), stock in torch_calls:
        for name, mode in {"none": contextlib.nullcontext, "dispatch mode": _SeenActivations,
                           "autocast": _modes(device)["autocast"]}.items():
            with mode() as seen:
                y = entry(*args, **kwargs)
            with mode() as stock_seen:
                expected = stock()
            assert y.dtype == (torch.bfloat16 if name == "autocast" else x.dtype) and torch.equal(y, expected), name
            assert all(map(torch.equal, _grads(y, (x, w)), _grads(expected, (x, w)))), name
            if isinstance(seen, _SeenActivations):
                assert seen.seen == stock_seen.seen, (seen.seen, stock_seen.seen)
    assert not torch_checked.calls and not python_path.calls
    with pytest.raises(ValueError, match="negative_slope must be >= 0"):
        entry(x, w, b, negative_slope=-1.0, backend="torch")
    assert len(torch_checked.calls) == 1
    with pytest.raises(ValueError, match="weight expects 6 input channels"):  # stock's conv2d raises first
        entry(x, torch.randn(4, 6, 3, 3, device=device), backend="torch")
    assert len(torch_checked.calls) == 2 and not python_path.calls


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_functional_batch_norm_is_one_c_call_unless_the_python_path_must_run(device):
    """fusedgan.functional.batch_norm_act is a C function too, as conv2d_leaky_relu: a plain
    eager call never reaches its Python path; on a C++ backend it gives the Python path's
    bits and running statistics, on "torch" stock's (its ops called from C, second-order
    gradients included); every other call reaches the Python path with its arguments as
    given, or, for "torch", the checked path its stock entry would take."""
    from fusedgan import functional as fn

    entry, python_path, torch_checked = _c_function_with_spies("bn_act")
    options = dict(device=device, dtype=torch.float64)
    x = torch.randn(4, 3, 5, 2, **options, requires_grad=True)
    w = torch.nn.Parameter(torch.rand(3, **options) + 0.5)
    b = torch.randn(3, **options, requires_grad=True)

    def stats():
        return torch.randn(3, **options), torch.rand(3, **options) + 0.5

    def stock(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
              activation="relu", negative_slope=0.01, *, backend, sync=False, process_group=None, inplace=False):
        z = F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        return F.relu(z) if activation == "relu" else F.leaky_relu(z, negative_slope) if activation == "leaky_relu" \
            else z

    x_nhwc = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    plain = [lambda f, rm, rv, backend: f(x, rm, rv, backend=backend),
             lambda f, rm, rv, backend: f(x, rm, rv, w, b, True, backend=backend),
             lambda f, rm, rv, backend: f(x, rm, rv, w, b, False, 0.3, 1e-3, "leaky_relu", 0.2, backend=backend),
             lambda f, rm, rv, backend: f(input=x, running_mean=rm, running_var=rv, weight=w, training=True,
                                          momentum=1, eps=1e-3, activation="identity", backend=backend, sync=False,
                                          process_group=None, inplace=False),
             lambda f, rm, rv, backend: f(x, None, None, None, b, True, negative_slope=2, backend=backend),
             lambda f, rm, rv, backend: f(x_nhwc, rm, rv, w, b, True, 0.1, 1e-5, "leaky_relu", 0, backend=backend)]
    for backend, reference in (("auto", fn.PYTHON_PATHS["bn_act"]), ("torch", stock)):
        for i, call in enumerate(plain):
            # The C function and its reference from the same running statistics.
            rm, rv = stats()
            expected_rm, expected_rv = rm.clone(), rv.clone()
            # (A dispatch mode sends a C++ backend's call to the Python path: "torch" only.)
            mode = _SeenActivations if backend == "torch" else contextlib.nullcontext
            with mode() as seen:
                y = call(entry, rm, rv, backend)
            with mode() as expected_seen:
                expected = call(reference, expected_rm, expected_rv, backend)
            assert not python_path.calls and not torch_checked.calls, (backend, i)
            assert torch.equal(y, expected) and torch.equal(rm, expected_rm) and torch.equal(rv, expected_rv), \
                (backend, i)
            inputs = (x_nhwc if i == len(plain) - 1 else x, w, b)
            assert all(map(torch.equal, _grads(y, inputs), _grads(expected, inputs))), (backend, i)
            if backend == "torch":  # stock's ops with stock's scalars (an int slope stays an int)
                assert seen.seen == expected_seen.seen, (i, seen.seen, expected_seen.seen)
    # Second order through the "torch" C path, against finite differences.
    rm, rv = stats()
    assert torch.autograd.gradgradcheck(lambda x, w, b: entry(x, rm, rv, w, b, True, 0.0, backend="torch"), (x, w, b))

    # Another backend, subclasses, an empty batch on a C++ backend, sync / inplace /
    # process_group, arguments of other types (an int training flag, a tensor momentum, a
    # string eps, an unknown or unhashable activation, an int slope beyond int64), unknown or
    # missing arguments, too many.
    python_only = [((x, rm, rv), dict(backend="cuda-sim")), ((x.as_subclass(_Marked), rm, rv), {}),
                   ((x, rm, rv.as_subclass(_Marked)), {}), ((x, rm, rv, w.as_subclass(_Marked)), {}),
                   ((x[:0], rm, rv), dict(backend="auto")),
                   ((x, rm, rv), dict(sync=True)), ((x, rm, rv), dict(inplace=True, activation="identity")),
                   ((x, rm, rv), dict(process_group=object())), ((x, rm, rv, w, b, 1), {}),
                   ((x, rm, rv, w, b, True, torch.tensor(0.5)), {}), ((x, rm, rv), dict(eps="1e-5")),
                   ((x, rm, rv), dict(activation="gelu")), ((x, rm, rv), dict(activation=["relu"])),
                   ((x, rm, rv), dict(activation="leaky_relu", negative_slope=2**64)),
                   ((x, rm, rv), dict(nope=1)), ((x, rm), {}),
                   ((x, rm, rv, w, b, True, 0.1, 1e-5, "relu", 0.01, "cpu"), {}),
                   ((x, rm, rv), dict(backend=("cpu",))), ((x, rm, rv), dict(input=x))]
    for backend in ("auto", "torch"):
        for args, kwargs in python_only:
            _assert_reaches_python_path(entry, python_path, args, {"backend": backend, **kwargs})
    for name, mode in _modes(device).items():
        for backend in ("auto", "torch"):
            if name == "autocast" and backend == "auto":
                continue  # (a C++ BatchNorm takes its input's dtype under autocast, as stock's: no blocker)
            with mode():
                entry(x, rm, rv, backend=backend)
            # A C++ backend's call under a dispatch or function mode, a "torch" call under a
            # function mode.
            assert python_path.calls == ([((x, rm, rv), dict(backend=backend))] if backend == "auto" or
                                         name == "torch function mode" else []), (name, backend)
            python_path.calls.clear()
    assert not torch_checked.calls

    # "torch": what the stock entry must decide (arguments the fused layers refuse, one value
    # per channel, stock's own errors, a layout stock's kernels misread) goes to the checked
    # path, which raises every backend's errors, or runs the reference.
    with _SeenOps() as mode:
        entry(x, rm, rv, w, b, False, backend="torch")
    assert "aten.relu" in mode.seen and any("batch_norm" in op for op in mode.seen), mode.seen
    sparse = torch.randn(4, 3, **options).to_sparse_csr()
    errors = [((x, rm, rv), dict(eps=-1.0), "eps must be >= 0"),
              ((x, rm, rv), dict(negative_slope=math.inf, activation="leaky_relu"), "negative_slope must be a finite"),
              ((x, rm, rv), dict(momentum=math.nan, training=True), "momentum must be a finite"),
              ((x[:1, :, :1, :1], rm, rv), dict(training=True), "Expected more than 1 value per channel"),
              ((x, rm[:2], rv), {}, r"running_mean must have shape \(3,\)"),
              ((x[:, 0], rm, rv), {}, "must have shape"),
              ((sparse, None, None), dict(training=True, eps=-1.0), "eps must be >= 0")]
    for args, kwargs, message in errors:
        with pytest.raises(ValueError, match=message):
            entry(*args, **kwargs, backend="torch")
        assert len(torch_checked.calls) == 1, message
        torch_checked.calls.clear()
    strided = torch.randn(6, **options)[::2]
    y = entry(x_nhwc, rm, rv, strided, b, False, backend="torch")
    assert len(torch_checked.calls) == 1 and not python_path.calls
    assert torch.allclose(y, F.relu(F.batch_norm(x_nhwc, rm, rv, strided.contiguous(), b)))


@needs_extension
@pytest.mark.parametrize("family", ["bn_act", "conv_act"])
def test_functional_is_the_python_path_where_torch_compile_cannot_substitute_it(monkeypatch, family):
    """Where torch.compiler.substitute_in_graph is missing or refuses, the functional is the
    Python function itself (which torch.compile traces), not a C function it cannot."""
    from fusedgan import functional as fn

    def refuse(original, **kwargs):
        raise AttributeError("substitute_in_graph is not available")

    python_path = functools.wraps(fn.PYTHON_PATHS[family])(lambda *args, **kwargs: None)
    monkeypatch.setattr(torch.compiler, "substitute_in_graph", refuse)
    assert fn._c_function(python_path, family) is python_path
    monkeypatch.undo()
    entry = fn._c_function(python_path, family)
    assert entry is not python_path and inspect.signature(entry) == inspect.signature(python_path)
