"""Test setup: Triton runs through its interpreter when no GPU is present, and every
kernel's outputs start as NaN.

TRITON_INTERPRET must be set before triton is imported (Triton reads it then), so it is set here,
before any test module imports fusedgan.triton. FUSEDGAN_POISON_OUTPUTS=1 makes the C++
kernels fill their outputs with NaN before writing them (csrc/outputs.h reads it once).
"""

import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("FUSEDGAN_POISON_OUTPUTS", "1")

from _helpers import DEVICE_BACKENDS  # noqa: E402


@pytest.fixture(params=DEVICE_BACKENDS, ids=[f"{d}-{b}" for d, b in DEVICE_BACKENDS])
def device_backend(request):
    """Every (device, backend) pair that can run in this process."""
    return request.param


@pytest.fixture(autouse=True)
def poison_allocations(monkeypatch):
    """Fill every fresh floating-point allocation with NaN, so elements a kernel forgets
    to write show up in the comparisons."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(tensor):
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
        return tensor

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poisoned(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poisoned(empty_like(*a, **k)))


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """A different seed per test (stable across runs, so failures reproduce)."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
