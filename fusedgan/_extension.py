"""The C++/CUDA extension fusedgan._C: loading it, and why a backend of it cannot run."""

import importlib

_C = None
_load_error = None
try:
    _C = importlib.import_module("fusedgan._C")
except ImportError as error:
    _load_error = error


def why_unusable(backend):
    if _C is None:
        return (f"the C++ extension fusedgan._C is not available ({_load_error}); "
                "it is built by `pip install -e .` (see README)")
    return f"fusedgan._C has no {backend} kernels"


def ops(backend):
    raise RuntimeError(f"fusedgan._C has no {backend} kernels")
