"""Benchmark setup: the device, synchronising timers, and the providers compared."""

import pytest
import torch

from fusedgan._backends import why_unusable

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def environment_info():
    info = {"device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "CPU",
            "torch": torch.__version__, "cuda": torch.version.cuda or ""}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = ""
    return info


@pytest.fixture
def device():
    return DEVICE
