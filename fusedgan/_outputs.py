"""How the kernels of every backend allocate their outputs, and in which dtype they
accumulate (the Python side of csrc/outputs.h).

Accumulation: sums, statistics and per-element math in fp64 for fp64 tensors and in fp32
otherwise (fp16, bf16, fp32), rounded once when stored. Batch statistics and per-channel
sums come back in this dtype.

Allocation: with FUSEDGAN_POISON_OUTPUTS=1 in the environment (read once, at import) every
output and workspace of the Triton launchers starts as NaN, as the C++ and CUDA ones do,
so an element a kernel forgets to write shows up as NaN in the comparisons. The GPU run
and the test suite turn it on; off, these are plain allocations.
"""

import os

import torch

POISON = os.environ.get("FUSEDGAN_POISON_OUTPUTS") == "1"


def accumulation_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def poison(t):
    """t, NaN-filled when poisoning is on (for outputs allocated elsewhere)."""
    return t.fill_(float("nan")) if POISON and t.is_floating_point() else t


def empty(*size, **options):
    """torch.empty, NaN-filled when poisoning is on."""
    return poison(torch.empty(*size, **options))


def empty_like(t, **options):
    """torch.empty_like, NaN-filled when poisoning is on."""
    return poison(torch.empty_like(t, **options))
