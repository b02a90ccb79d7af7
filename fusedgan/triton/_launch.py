"""Launches as data: what a launcher runs, planned before anything runs.

Every launcher first plans (allocates its outputs and lists its kernel launches), then
runs the plan. Planned on meta tensors, nothing is allocated and nothing runs, so the
offline checks see exactly what the launchers launch for any shape: the compile check
(fusedgan.triton.compile_check) compiles each launch for sm_80 and sm_90, and the
launch-limit test checks grids and index widths for shapes past 2^34 elements.
"""

import contextlib
from typing import NamedTuple

import torch
import triton.language as tl

# CUDA's limits on a grid: 2^31 - 1 programs on axis 0, 65535 on axes 1 and 2.
MAX_GRID = (2 ** 31 - 1, 65535, 65535)
INT32_LIMIT = 2 ** 31


class Launch(NamedTuple):
    kernel: object       # a @triton.jit function
    grid: tuple          # programs per axis
    args: tuple          # the kernel's runtime arguments (tensors and scalars), in order
    constexprs: dict     # its tl.constexpr arguments, num_warps and num_stages
    index_bound: int     # an upper bound on every element offset and index the kernel forms


def index_dtype(bound):
    """int32 offset arithmetic while every offset and index fits in it, int64 beyond."""
    return tl.int32 if bound < INT32_LIMIT else tl.int64


def span(t):
    """1 + the largest element offset of tensor t (0 when it is empty)."""
    if t.numel() == 0:
        return 0
    return 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))


def acc_dtype(dtype):
    """The accumulation dtype of a tensor dtype: fp64 for fp64, else fp32 (tl and torch)."""
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def device_of(t):
    """Launch under the tensor's device: Triton launches on the current device and its stream."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def run(launches):
    for launch in launches:
        launch.kernel[launch.grid](*launch.args, **launch.constexprs)


def plan_and_run(plan, x, *args):
    """The outputs of plan(*args) (a launcher's planning function), its launches run, under
    the device of x."""
    with device_of(x):
        outputs, launches = plan(*args)
        run(launches)
    return outputs
