"""Benchmark setup: the device, synchronising timers, and the providers compared."""

import functools
import os
import time

import pytest
import torch

from fusedgan._backends import why_unusable

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# FUSEDGAN_BENCH_QUICK=1 (benchmarks/run_gpu.sh) trims each suite to its headline cases.
QUICK = os.environ.get("FUSEDGAN_BENCH_QUICK") == "1"


def fused_backends():
    """The fused backends that run on DEVICE (the "torch" reference is the oracle, not a product)."""
    return [b for b in ("triton", "cuda", "cpu") if why_unusable(b, DEVICE.type) is None]


def synchronized(fn):
    if DEVICE.type != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize()

    return run


@functools.cache
def copy_roofline_gbps():
    """Bytes read + written per second by a large device-to-device copy: the roofline."""
    src = torch.empty(64 * 2**20 if DEVICE.type == "cuda" else 16 * 2**20, device=DEVICE)  # 256 MB / 64 MB fp32
    dst = torch.empty_like(src)
    copy = synchronized(lambda: dst.copy_(src))
    copy()
    start = time.perf_counter()
    for _ in range(10):
        copy()
    return 2 * src.numel() * src.element_size() * 10 / (time.perf_counter() - start) / 1e9


def environment_info():
    info = {"device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "CPU",
            "torch": torch.__version__, "cuda": torch.version.cuda or "", "roofline_gbps": copy_roofline_gbps()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = ""
    return info


@pytest.fixture
def device():
    return DEVICE
