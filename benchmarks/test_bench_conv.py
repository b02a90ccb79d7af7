"""Conv2d+LeakyReLU: fused backends vs stock eager (cuDNN/oneDNN conv + LeakyReLU) vs torch.compile.

    pytest benchmarks/ --benchmark-only

DCGAN discriminator layers (4x4, stride 2, padding 1). On GPU, batch 128: bf16
channels_last (the issue's target case) and fp32 NCHW; on CPU, batch 16 (a 2-core
machine): fp32 NCHW and channels_last, and bf16 channels_last.
"""

import pytest
import torch
from byte_model import conv_act_bytes
from conftest import DEVICE, GPU, QUICK, fused_backends, layer_step, precision_label, run_benchmark
from torch import nn

import fusedgan

BATCH = 128 if GPU else 16
PRECISIONS = [(torch.bfloat16, "channels_last"), (torch.float32, "nchw")] if GPU else \
    [(torch.float32, "nchw"), (torch.float32, "channels_last"), (torch.bfloat16, "channels_last")]
if QUICK:
    PRECISIONS = PRECISIONS[:1]
# (cin, cout, input size) of the DCGAN discriminator at 64x64
LAYERS = [(3, 64, 64), (64, 128, 32), (128, 256, 16), (256, 512, 8)]
PROVIDERS = ["stock", "compile"] + [f"fused-{b}" for b in fused_backends()]


def build(provider, cin, cout):
    if provider.startswith("fused-"):
        return fusedgan.FusedConvLeakyReLU(cin, cout, 4, 2, 1, negative_slope=0.2, backend=provider.split("-", 1)[1])
    model = nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2))
    return torch.compile(model) if provider == "compile" else model


@pytest.mark.parametrize("layer", LAYERS, ids=lambda s: f"{s[0]}to{s[1]}@{s[2]}")
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype,layout", PRECISIONS, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_conv_leaky_relu(benchmark, layer, provider, dtype, layout, mode):
    cin, cout, size = layer
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = build(provider, cin, cout).to(device=DEVICE, dtype=dtype, memory_format=memory_format)
    x = torch.randn(BATCH, cin, size, size, device=DEVICE, dtype=dtype).contiguous(memory_format=memory_format)
    x.requires_grad_(mode != "fwd")
    grad = torch.randn(BATCH, cout, size // 2, size // 2, device=DEVICE, dtype=dtype)
    run_benchmark(benchmark, layer_step(model, x, grad, mode), rounds=20 if GPU else 10, iterations=3 if GPU else 1,
                  bytes_moved=conv_act_bytes(x.numel(), cout * cin * 16, grad.numel(), x.element_size(), mode),
                  op="conv+leaky_relu", shape=[BATCH, cin, size, size, cout], provider=provider, mode=mode,
                  dtype=precision_label(dtype, layout))
