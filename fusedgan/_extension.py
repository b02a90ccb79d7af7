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

_OPS = OPS
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


def _has_kernel(op, dispatch_key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedgan::{op}", dispatch_key)


# Read once at import: why_unusable then stays plain Python, which torch.compile traces
# without a graph break.
_HAS_KERNELS = {(family, key): _load_error is None and all(_has_kernel(op, key) for op in ops)
                for family, ops in FAMILIES.items() for key in ("CPU", "CUDA")}
_CPU_LACKS_AVX2 = torch.backends.cpu.get_cpu_capability() == "DEFAULT"


def why_unusable(backend, family="bn_act"):
    if _load_error is not None:
        return f"{_load_error}; to fix, {_FIX}"
    if backend == "cpu" and _CPU_LACKS_AVX2:
        return "the C++ CPU kernels are built for x86-64 with AVX2/FMA, which this processor lacks"
    key = "CUDA" if backend == "cuda" else "CPU"
    if _HAS_KERNELS[(family, key)]:
        return None
    if key == "CUDA" and not any(v for (_, k), v in _HAS_KERNELS.items() if k == "CUDA"):
        return (f"fusedgan._C was built without {backend} kernels; rebuild with FUSEDGAN_BUILD_CUDA=1 "
                "and nvcc on PATH (or CUDA_HOME set)")
    return f"fusedgan._C has no {backend} kernels for {LAYERS[family]} yet"


if _load_error is None:
    for _op, _fake_op in _fake.fakes("cpp").items():
        torch.library.register_fake(f"fusedgan::{_op}")(_fake_op)


def _leaky_relu_grad_bias(dy, y, slope, has_bias):
    dz, db = torch.ops.fusedgan.leaky_relu_grad_bias(dy, y, slope, has_bias)
    return dz, (db if has_bias else None)


# The backend object for "cpu" and "cuda" (the dispatcher picks the kernel by device),
# built once so that torch.compile sees a plain global.
_BACKEND = None
if _load_error is None:
    _BACKEND = types.SimpleNamespace(**{op: getattr(torch.ops.fusedgan, op) for op in _OPS})
    _BACKEND.leaky_relu_grad_bias = _leaky_relu_grad_bias


def ops(backend):
    return _BACKEND


# The eager entry ops (csrc/autograd/): checks, kernels, running statistics and backward
# in one dispatcher call. Called directly (the OpOverload, not the packet) to keep
# eager calls as cheap as stock's; None when _C is not loaded.
ENTRY_BACKENDS = ("cpu", "cuda")
batch_norm_act = torch.ops.fusedgan.batch_norm_act.default if _load_error is None else None
conv2d_leaky_relu = torch.ops.fusedgan.conv2d_leaky_relu.default if _load_error is None else None
