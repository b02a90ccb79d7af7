"""BatchNorm+ReLU / BatchNorm+LeakyReLU: fused backends vs stock eager vs torch.compile.

    pytest benchmarks/ --benchmark-only

Shapes: the DCGAN generator's BatchNorm layers (64x64 output) at batch 64 and 128, plus one
large bandwidth-bound shape on GPU; fp32 and bf16 (fp32 parameters), NCHW and
channels_last. On the 2-core CPU the set is cut to batch 64 and torch.compile to fp32
NCHW (each compile costs tens of seconds there), to stay near 15 minutes.
"""

import pytest
import torch
from byte_model import bn_act_bytes
from conftest import DEVICE, GPU, QUICK, fused_backends, layer_step, precision_label, run_benchmark
from torch import nn

import fusedgan

LAYERS = [(512, 4), (256, 8), (128, 16), (64, 32)]  # (channels, spatial size) of DCGAN's G
SHAPES = [(batch, c, s, s) for batch in ((64, 128) if GPU else (64,)) for c, s in LAYERS]
if GPU:
    SHAPES.append((256, 256, 64, 64))
PROVIDERS = ["stock", "compile"] + [f"fused-{b}" for b in fused_backends()]
ACTIVATIONS = [("relu", 0.0), ("leaky_relu", 0.2)]
# (provider, dtype, layout); on the CPU, torch.compile only for fp32 NCHW (compile time).
CASES = [(provider, dtype, layout) for provider in PROVIDERS for dtype in (torch.float32, torch.bfloat16)
         for layout in ("nchw", "channels_last")
         if GPU or provider != "compile" or (dtype == torch.float32 and layout == "nchw")]
if QUICK:
    SHAPES = [s for s in SHAPES if s in ((64, 128, 16, 16), (128, 256, 8, 8), (256, 256, 64, 64))]
    ACTIVATIONS = ACTIVATIONS[:1]
    CASES = [c for c in CASES if (c[1], c[2]) in ((torch.float32, "nchw"), (torch.bfloat16, "channels_last"))]


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
@pytest.mark.parametrize("activation,slope", ACTIVATIONS, ids=[a for a, _ in ACTIVATIONS])
@pytest.mark.parametrize("provider,dtype,layout", CASES, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_bn_act(benchmark, shape, activation, slope, provider, dtype, layout, mode):
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = build(provider, shape[1], activation, slope).to(DEVICE)
    x = torch.randn(shape, device=DEVICE).to(dtype).contiguous(memory_format=memory_format)
    x.requires_grad_(mode != "fwd")
    grad = torch.randn_like(x)
    run_benchmark(benchmark, layer_step(model, x, grad, mode), rounds=20 if GPU else 10, iterations=5 if GPU else 1,
                  bytes_moved=bn_act_bytes(x.numel(), x.element_size(), mode), op=f"bn+{activation}",
                  shape=list(shape), provider=provider, mode=mode, dtype=precision_label(dtype, layout))
