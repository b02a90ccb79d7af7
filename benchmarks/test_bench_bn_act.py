"""BatchNorm+ReLU / BatchNorm+LeakyReLU: fused backends vs stock eager vs torch.compile.

    pytest benchmarks/ --benchmark-only

Bytes (GUIDE §2): the minimal traffic of a fused op is 2N elements forward (read x,
write y) and 3N more backward (read x and dy, write dx); GB/s is that over the time.
"""

import pytest
import torch
from conftest import DEVICE, environment_info, fused_backends, synchronized
from torch import nn

import fusedgan

SHAPES = [(64, 128, 16, 16), (64, 256, 8, 8), (64, 64, 32, 32)]
if DEVICE.type == "cuda":
    SHAPES += [(256, 256, 64, 64)]
PROVIDERS = ["stock", "compile"] + [f"fused-{b}" for b in fused_backends()]
ACTIVATIONS = [("relu", 0.0), ("leaky_relu", 0.2)]


def build(provider, C, activation, slope):
    if provider.startswith("fused-"):
        backend = provider.split("-", 1)[1]
        if activation == "relu":
            return fusedgan.FusedBNReLU(C, backend=backend)
        return fusedgan.FusedBNLeakyReLU(C, slope, backend=backend)
    act = nn.ReLU() if activation == "relu" else nn.LeakyReLU(slope)
    model = nn.Sequential(nn.BatchNorm2d(C), act)
    return torch.compile(model) if provider == "compile" else model


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation,slope", ACTIVATIONS, ids=["relu", "leaky_relu"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_bn_act(benchmark, shape, activation, slope, provider, mode):
    model = build(provider, shape[1], activation, slope).to(DEVICE)
    x = torch.randn(shape, device=DEVICE, requires_grad=mode != "fwd")
    grad = torch.randn_like(x)

    def step():
        y = model(x)
        if mode != "fwd":
            y.backward(grad)

    fn = synchronized(step)
    for _ in range(3):  # warm-up: JIT, autotuning and torch.compile stay out of the timings
        fn()
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rounds = 20 if DEVICE.type == "cuda" else 15
    benchmark.pedantic(fn, rounds=rounds, iterations=5 if DEVICE.type == "cuda" else 1)
    elements = x.numel()
    bytes_moved = (2 if mode == "fwd" else 5) * elements * x.element_size()
    benchmark.extra_info.update(environment_info())
    benchmark.extra_info.update(
        op=f"bn+{activation}", shape=list(shape), provider=provider, mode=mode, dtype="float32",
        bytes=bytes_moved, gbps=bytes_moved / benchmark.stats.stats.median / 1e9,
        peak_memory=torch.cuda.max_memory_allocated() if DEVICE.type == "cuda" else None)
