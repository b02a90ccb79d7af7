"""The C++/CUDA extension fusedgan._C: loading it, its ops' fake implementations, and
why its backends cannot run when they cannot.

Importing fusedgan never fails because of the extension: if _C is missing or was built
against another torch ("undefined symbol"), one warning says why and how to fix it, and
"auto" falls back to Triton on GPU and the reference on CPU.
"""

import importlib
import types
import warnings

import torch

from fusedgan import _fake
from fusedgan._ops import FAMILIES, LAYERS, OPS

_FIX = ("reinstall fusedgan against the torch you run: pip install --no-build-isolation -e . "
        "(see README, 'Install')")

_load_error = None
try:
    importlib.import_module("fusedgan._C")
except ImportError as error:  # not built, or built against another torch
    reason = "built against another torch" if "undefined symbol" in str(error) else "not built"
    _load_error = f"the C++ extension fusedgan._C could not be loaded ({reason}: {error})"
    warnings.warn(f"{_load_error}; the 'cpu' and 'cuda' backends are unavailable; to fix, {_FIX}",
                  RuntimeWarning, stacklevel=2)


# Read once at import: why_unusable then stays plain Python, which torch.compile traces
# without a graph break. "cuda-sim" is the CUDA kernels emulated on the CPU (csrc/simt/), in
# their own op namespace.
_DISPATCH = {"cpu": ("fusedgan", "CPU"), "cuda": ("fusedgan", "CUDA"), "cuda-sim": ("fusedgan_sim", "CPU")}
_HAS_KERNELS = {(family, backend): _load_error is None and all(
    torch._C._dispatch_has_kernel_for_dispatch_key(f"{namespace}::{op}", key) for op in ops)
    for family, ops in FAMILIES.items() for backend, (namespace, key) in _DISPATCH.items()}
_CPU_LACKS_AVX2 = torch.backends.cpu.get_cpu_capability() == "DEFAULT"


def why_unusable(backend, family="bn_act"):
    if _load_error is not None:
        return f"{_load_error}; to fix, {_FIX}"
    if backend in ("cpu", "cuda-sim") and _CPU_LACKS_AVX2:
        return "the C++ CPU kernels are built for x86-64 with AVX2/FMA, which this processor lacks"
    if _HAS_KERNELS[(family, backend)]:
        return None
    if not any(_HAS_KERNELS[(f, backend)] for f in FAMILIES):
        if backend == "cuda-sim":
            return f"fusedgan._C was built without the emulated CUDA kernels (an older build); to fix, {_FIX}"
        return (f"fusedgan._C was built without {backend} kernels; rebuild with FUSEDGAN_BUILD_CUDA=1 "
                "and nvcc on PATH (or CUDA_HOME set)")
    return f"fusedgan._C has no {backend} kernels for {LAYERS[family]} yet"


if _load_error is None:
    for _op, _fake_op in _fake.fakes("cpp").items():
        torch.library.register_fake(f"fusedgan::{_op}")(_fake_op)
    for _op, _fake_op in _fake.fakes("cuda-sim").items():
        torch.library.register_fake(f"fusedgan_sim::{_op}")(_fake_op)


def _backend_ops(backend):
    """The backend object of a backend's op namespace (the ops it defines), built once so that
    torch.compile sees a plain global."""
    ops = getattr(torch.ops, _DISPATCH[backend][0])

    def leaky_relu_grad_bias(dy, y, slope, has_bias):
        dz, db = ops.leaky_relu_grad_bias(dy, y, slope, has_bias)
        return dz, (db if has_bias else None)

    table = types.SimpleNamespace(**{op: getattr(ops, op) for op in OPS if hasattr(ops, op)})
    table.leaky_relu_grad_bias = leaky_relu_grad_bias
    return table


# "cpu" and "cuda" share one (the dispatcher picks the kernel by device).
_BACKEND = _backend_ops("cpu") if _load_error is None else None
_SIM_BACKEND = _backend_ops("cuda-sim") if _load_error is None else None


def ops(backend):
    return _SIM_BACKEND if backend == "cuda-sim" else _BACKEND


# The eager entry ops (csrc/autograd/): checks, kernels, running statistics and backward
# in one call, by family: (the OpOverload, for calls the dispatcher must see; the same C++
# function bound as a plain function of _C, without the boxing of a dispatcher call from
# Python, csrc/python_entries.cpp). None when _C is not loaded.
ENTRY_BACKENDS = ("cpu", "cuda")
if _load_error is None:
    _C = importlib.import_module("fusedgan._C")
    ENTRY_OPS = {"bn_act": (torch.ops.fusedgan.batch_norm_act.default, _C.batch_norm_act),
                 "conv_act": (torch.ops.fusedgan.conv2d_leaky_relu.default, _C.conv2d_leaky_relu)}
else:
    ENTRY_OPS = None
