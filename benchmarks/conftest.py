"""Benchmark setup: the device, the providers compared, and the one runner every benchmark
uses (run_benchmark: warm-up, timing, the record the report reads)."""

import ctypes
import ctypes.util
import functools
import os
import time

import pytest
import torch
from cuda_clock import CudaEventClock

from fusedgan._backends import why_unusable

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
GPU = DEVICE.type == "cuda"
# FUSEDGAN_BENCH_QUICK=1 (benchmarks/run_gpu.sh) trims each suite to its headline cases.
QUICK = os.environ.get("FUSEDGAN_BENCH_QUICK") == "1"


def keep_freed_memory():
    """Makes glibc's malloc keep freed memory in the process, for every provider alike.

    By default glibc returns large freed blocks to the system (mmap, heap trimming), so
    the next step's tensors page-fault their memory back in. Whether it does depends on the
    heap's history, and on this project's 2-core VM a page fault costs about 3 us: a
    64x128x16x16 BatchNorm+ReLU step took 6.5 ms at ~100 faults and 15-16 ms at ~2,500-3,300
    faults, stock alike, in repeats of the same loop. That is the allocator, not the
    kernels, so the CPU benchmarks run with what jemalloc/tcmalloc (PyTorch's CPU
    performance guide) would give: freed memory reused. FUSEDGAN_BENCH_MALLOC=default keeps
    glibc's defaults.
    """
    if DEVICE.type != "cpu" or os.environ.get("FUSEDGAN_BENCH_MALLOC") == "default":
        return
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


keep_freed_memory()


def fused_backends():
    """The fused backends that run on DEVICE (the "torch" reference is the oracle, not a product)."""
    return [b for b in ("triton", "cuda", "cpu") if why_unusable(b, DEVICE.type) is None]


def precision_label(dtype, layout):
    """e.g. "bfloat16/channels_last": the report's dtype column."""
    return f"{str(dtype).replace('torch.', '')}/{layout}"


def run_benchmark(benchmark, step, *, rounds, iterations, warmup=3, bytes_moved=None, **info):
    """The runner of every benchmark: `warmup` calls (JIT compilation, autotuning and
    torch.compile stay out of the timings), then `rounds` timed rounds of `iterations` calls
    each (perf_counter on CPU, CUDA events on GPU), then the record report.py reads:
    the environment, `info` (op, shape, provider, mode, dtype), bytes and GB/s from the
    median time when `bytes_moved` is given, and the peak GPU memory of the timed calls."""
    for _ in range(warmup):
        step()
    if GPU:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        benchmark._timer = CudaEventClock()  # pytest-benchmark has no public per-test timer
    benchmark.pedantic(step, rounds=rounds, iterations=iterations)
    benchmark.extra_info.update(environment_info())
    benchmark.extra_info.update(
        info, bytes=bytes_moved, gbps=bytes_moved / benchmark.stats.stats.median / 1e9 if bytes_moved else None,
        peak_memory=torch.cuda.max_memory_allocated() if GPU else None)


def time_in_turn(steps, rounds, calls, warmup):
    """{name: per-call microseconds of each round} for the `steps` (name -> no-argument
    step), timed in turn: each round times `calls` calls of every step, one after another,
    so slow and fast spells of a shared machine fall on all of them alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            if GPU:
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(calls):
                step()
            if GPU:
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return times


def layer_step(model, x, grad, mode):
    """The timed step of one layer: forward, and for "fwd+bwd" its backward to every input.

    The gradients come from torch.autograd.grad, as a layer inside a network gets them: the
    input's gradient is handed on, not added into x.grad. With y.backward(grad) every step
    would also pay x.grad += dx, a stock add over three tensors that every provider pays
    alike and that no layer inside a network pays (it diluted the ratios measured before
    this was changed; BENCHMARKS.md says which tables used which).
    """
    inputs = [x] + [p for p in model.parameters() if p.requires_grad]

    def step():
        y = model(x)
        if mode != "fwd":
            torch.autograd.grad(y, inputs, grad)

    return step


@functools.cache
def copy_roofline_gbps():
    """Bytes read + written per second by a large device-to-device copy: the roofline."""
    src = torch.empty(64 * 2**20 if DEVICE.type == "cuda" else 16 * 2**20, device=DEVICE)  # 256 MB / 64 MB fp32
    dst = torch.empty_like(src)
    dst.copy_(src)
    if GPU:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    if GPU:
        torch.cuda.synchronize()
    return 2 * src.numel() * src.element_size() * 10 / (time.perf_counter() - start) / 1e9


def environment_info():
    info = {"device": torch.cuda.get_device_name() if GPU else "CPU",
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
