"""Test setup: Triton runs through its interpreter when no GPU is present, and every
kernel's outputs start as NaN.

TRITON_INTERPRET must be set before triton is imported (Triton reads it then), so it is set here,
before any test module imports fusedgan.triton. FUSEDGAN_POISON_OUTPUTS=1 makes the C++,
CUDA and Triton launchers fill their outputs with NaN before the kernels write them
(csrc/outputs.h and fusedgan/_outputs.py read it once), so an unwritten element fails the
comparisons.
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
def fresh_seed(request):
    """A different seed per test (stable across runs, so failures reproduce)."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
