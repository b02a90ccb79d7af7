"""Which backend runs an op: "auto" | "triton" | "cuda" | "cpu" | "torch" | "cuda-sim".

A backend is a module with the same functions (bn_act_forward, bn_act_backward, ...).
"auto" picks, by the tensor's device: CUDA tensors -> "cuda", else "triton", else
"torch"; CPU tensors -> "cpu", else "torch". It never picks Triton on the CPU (only its
interpreter runs there), nor "cuda-sim" (the CUDA kernels emulated on CPU tensors, to
test them without a GPU: slow). FUSEDGAN_BACKEND overrides "auto" (read once, when a backend is
first resolved: set it before the process starts). A backend asked for by name
that cannot run raises BackendUnavailableError saying why and how to get it.
"""

import functools
import os

import torch

from fusedgan._ops import FAMILIES, LAYERS

BACKENDS = ("auto", "triton", "cuda", "cpu", "torch", "cuda-sim")
ENV_VAR = "FUSEDGAN_BACKEND"

_AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}


class BackendUnavailableError(RuntimeError):
    """A backend asked for by name cannot run on the given device."""


def check_backend_name(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


@functools.cache
def _import_triton_backend():
    """(module, None) or (None, why it cannot be imported)."""
    try:
        from fusedgan import triton  # an import statement, which torch.compile traces (importlib it does not)

        return triton, None
    except Exception as error:  # ImportError, or a Triton too old/broken to compile our kernels
        return None, f"Triton could not be imported ({type(error).__name__}: {error}); pip install triton"


def _triton_interpreted():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _extension():
    from fusedgan import _extension

    return _extension


def why_unusable(backend, device_type, family="bn_act"):
    """None if `backend` can run the layers of op `family` (fusedgan._ops) on tensors of
    `device_type`, else the reason and the fix."""
    if backend == "torch":
        return None
    if backend == "triton":
        module, why = _import_triton_backend()
        if why:
            return why
        if not all(hasattr(module, op) for op in FAMILIES[family]):
            return f"fusedgan has no Triton kernels for {LAYERS[family]} yet"
        if device_type == "cuda" and not torch.cuda.is_available():
            return "no CUDA GPU is available to this process"
        if device_type == "cpu" and not _triton_interpreted():
            return ("Triton runs on CPU tensors only through its interpreter: set TRITON_INTERPRET=1 "
                    "before triton is imported (slow; for tests), or use backend='cpu' or 'torch'")
        if device_type not in ("cpu", "cuda"):
            return f"Triton kernels run on cuda tensors, not {device_type}"
        return None
    if backend in ("cpu", "cuda"):
        if device_type != backend:
            return f"the {backend!r} backend runs on {backend} tensors, not {device_type} tensors"
        if backend == "cuda" and not torch.cuda.is_available():
            return "no CUDA GPU is available to this process"
        return _extension().why_unusable(backend, family)
    if backend == "cuda-sim":
        if device_type != "cpu":
            return (f"the 'cuda-sim' backend (the CUDA kernels emulated on the CPU, for tests) runs on cpu tensors, "
                    f"not {device_type} tensors")
        return _extension().why_unusable(backend, family)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


@functools.cache
def resolve_eager(backend, device_type, family):
    """resolve_backend by device type, for eager code (torch.compile must not trace it)."""
    # Cached, FUSEDGAN_BACKEND included: it is read when a (backend, device, family) is first
    # resolved (reading the environment costs microseconds a call, against stock's ~20 per layer).
    override = os.environ.get(ENV_VAR, "")
    if backend == "auto" and override:
        backend = check_backend_name(override) if override != "auto" else "auto"
    if backend == "auto":
        for candidate in _AUTO_ORDER.get(device_type, ("torch",)):
            if why_unusable(candidate, device_type, family) is None:
                return candidate
    why = why_unusable(backend, device_type, family)
    if why is not None:
        source = f" (from {ENV_VAR})" if override and backend == override else ""
        raise BackendUnavailableError(
            f"fusedgan backend {backend!r}{source} cannot run on {device_type} tensors: {why}")
    return backend


@functools.cache
def eager_entry(backend, family, device_type):
    """The pair (for calls the dispatcher must see, for plain calls) that an eager call of op
    `family` on `device_type` tensors goes through, in the C++ entry op's arguments: for a
    C++ backend, its entry op and the same function bound in _C (fusedgan._extension.
    ENTRY_OPS); for "torch", the stock composition twice (fusedgan.functional.
    STOCK_ENTRIES); else None. resolve_eager's errors. One cached lookup for the eager
    fast paths."""
    name = resolve_eager(check_backend_name(backend), device_type, family)
    if name == "torch":
        from fusedgan.functional import STOCK_ENTRIES  # imported here: functional imports this module

        return STOCK_ENTRIES[family], STOCK_ENTRIES[family]
    extension = _extension()
    return extension.ENTRY_OPS[family] if name in extension.ENTRY_BACKENDS else None


def clear_resolution_cache():
    """Forget every resolved backend: FUSEDGAN_BACKEND and the backends' availability are
    read again (tests that change them)."""
    resolve_eager.cache_clear()
    eager_entry.cache_clear()


@torch.compiler.assume_constant_result  # under torch.compile: run once while tracing, its name baked in
def resolve_backend(backend, device, family="bn_act"):
    """The name of the backend that runs the layers of op `family` for `backend` on `device`."""
    return resolve_eager(backend, device.type, family)


def backend_module(name):
    if name == "torch":
        from fusedgan import reference

        return reference
    if name == "triton":  # resolve_backend checked that it imports
        from fusedgan import triton

        return triton
    return _extension().ops(name)


def backend_status(family="bn_act"):
    """{backend: None if usable for op `family` on some device of this process, else why not}."""
    status = {}
    for name in BACKENDS[1:]:
        devices = ("cuda", "cpu") if name == "triton" else ((name,) if name in ("cpu", "cuda") else ("cpu",))
        reasons = [why_unusable(name, device, family) for device in devices]
        status[name] = None if None in reasons else "; ".join(dict.fromkeys(reasons))
    return status


def available_backends():
    """The backends usable in this process, in the order "auto" prefers them."""
    return [name for name, why in backend_status().items() if why is None]
