"""InstanceNorm/GroupNorm + ReLU/LeakyReLU: fused backends vs stock eager vs torch.compile.

    pytest benchmarks/test_bench_gn_act.py --benchmark-only

Shapes of pix2pix/CycleGAN at 256x256 images (batch 1, the common case, and up to 16; 64
to 256 channels): InstanceNorm+ReLU as in the ResNet generator, InstanceNorm+LeakyReLU as in
the PatchGAN discriminator, GroupNorm+LeakyReLU as in a WGAN-GP critic. fp32 NCHW on the
CPU (plus channels_last for one shape); on a GPU also bf16 channels_last.
"""

import pytest
import torch
from byte_model import bn_act_bytes
from conftest import DEVICE, GPU, QUICK, layer_step, precision_label, run_benchmark
from torch import nn

import fusedgan
from fusedgan._backends import why_unusable

SHAPES = [(1, 64, 256, 256), (1, 128, 128, 128), (1, 256, 64, 64), (16, 256, 32, 32)]
if GPU:
    SHAPES += [(16, 64, 256, 256)]
if QUICK:
    SHAPES = [(1, 64, 256, 256), (16, 256, 32, 32)]
OPS = ["in+relu", "in+leaky_relu", "gn+leaky_relu"]
PROVIDERS = ["stock", "compile"] + [f"fused-{b}" for b in ("triton", "cuda", "cpu")
                                    if why_unusable(b, DEVICE.type, "gn_act") is None]
PRECISIONS = [(torch.float32, "nchw")] + ([(torch.bfloat16, "channels_last")] if GPU else [])


def build(op, provider, C):
    kind, activation = op.split("+")
    slope = 0.2
    if provider.startswith("fused-"):
        backend = provider.split("-", 1)[1]
        if kind == "gn":
            return fusedgan.FusedGroupNormLeakyReLU(32, C, slope, backend=backend)
        if activation == "relu":
            return fusedgan.FusedInstanceNormReLU(C, backend=backend)
        return fusedgan.FusedInstanceNormLeakyReLU(C, slope, backend=backend)
    norm = nn.GroupNorm(32, C) if kind == "gn" else nn.InstanceNorm2d(C)
    model = nn.Sequential(norm, nn.ReLU() if activation == "relu" else nn.LeakyReLU(slope))
    return torch.compile(model) if provider == "compile" else model


# (shape, dtype, layout, provider): channels_last for the first shape; on the CPU torch.compile
# only for the first shape in fp32 NCHW (each compile costs tens of seconds there).
CASES = [(shape, dtype, layout, provider) for shape in SHAPES for dtype, layout in PRECISIONS + [
             (torch.float32, "channels_last")] for provider in PROVIDERS
         if (layout == "nchw" or shape == SHAPES[0] or dtype != torch.float32)
         and (provider != "compile" or GPU or (shape == SHAPES[0] and layout == "nchw"))]


@pytest.mark.parametrize("shape,dtype,layout,provider", CASES,
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v).replace("torch.", ""))
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_gn_act(benchmark, shape, dtype, layout, provider, op, mode):
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = build(op, provider, shape[1]).to(DEVICE)
    x = torch.randn(shape, device=DEVICE).to(dtype).contiguous(memory_format=memory_format)
    x.requires_grad_(mode != "fwd")
    run_benchmark(benchmark, layer_step(model, x, torch.randn_like(x), mode), rounds=20 if GPU else 7,
                  iterations=5 if GPU else 1, bytes_moved=bn_act_bytes(x.numel(), x.element_size(), mode), op=op,
                  shape=list(shape), provider=provider, mode=mode, dtype=precision_label(dtype, layout))
