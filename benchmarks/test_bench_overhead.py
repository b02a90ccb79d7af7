"""Per-call cost: fused layers against the stock pair they replace, on inputs so small that
the time is all overhead (Python, dispatcher, autograd, launches), not memory traffic.

    pytest benchmarks/test_bench_overhead.py --benchmark-only

A GAN step at small batch is a few dozen such calls, so a fused layer must cost no more
per call than BatchNorm + ReLU (or Conv2d + LeakyReLU) do. Cases: BatchNorm+ReLU,
BatchNorm+LeakyReLU and Conv2d+LeakyReLU; module and functional call; forward and
forward+backward; train and eval (BatchNorm); every backend that runs on the device,
the "torch" reference included.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, run_benchmark
from torch import nn

import fusedgan
from fusedgan._backends import why_unusable

BN_SHAPE = (2, 256, 1, 2)  # the smallest DCGAN-like BatchNorm input: 512 values
CONV_SHAPE, CONV_OUT = (2, 8, 4, 4), 16  # a 3x3 convolution of 8 -> 16 channels on 4x4 pixels
PROVIDERS = ["stock"] + [f"fused-{b}" for b in ("triton", "cuda", "cpu", "torch")
                         if why_unusable(b, DEVICE.type) is None]
OPS = [("bn+relu", "train"), ("bn+relu", "eval"), ("bn+leaky_relu", "train"), ("bn+leaky_relu", "eval"),
       ("conv+leaky_relu", "train")]


def bn_call(op, provider, interface, training):
    """(step function taking x, the parameters) for one BatchNorm+activation call."""
    activation, slope = ("relu", 0.0) if op == "bn+relu" else ("leaky_relu", 0.2)
    backend = provider.split("-", 1)[1] if provider != "stock" else None
    if backend is None:
        module = nn.Sequential(nn.BatchNorm2d(BN_SHAPE[1]), nn.ReLU() if slope == 0 else nn.LeakyReLU(slope))
    elif activation == "relu":
        module = fusedgan.FusedBNReLU(BN_SHAPE[1], backend=backend)
    else:
        module = fusedgan.FusedBNLeakyReLU(BN_SHAPE[1], slope, backend=backend)
    module = module.to(DEVICE).train(training)
    bn = module[0] if backend is None else module
    if interface == "module":
        return module, list(module.parameters())
    # The functionals as a user writes them, every argument spelled out (a call through
    # *args and a keyword builds a tuple and a dict: microseconds on the fused function's
    # longer signature, not what a training script pays).
    mean, var, weight, bias = bn.running_mean, bn.running_var, bn.weight, bn.bias
    if backend is None and slope == 0:
        return (lambda x: F.relu(F.batch_norm(x, mean, var, weight, bias, training, 0.1, 1e-5))), [weight, bias]
    if backend is None:
        return (lambda x: F.leaky_relu(F.batch_norm(x, mean, var, weight, bias, training, 0.1, 1e-5), slope)), \
            [weight, bias]
    return (lambda x: fusedgan.functional.batch_norm_act(x, mean, var, weight, bias, training, 0.1, 1e-5, activation,
                                                         slope, backend=backend)), [weight, bias]


def conv_call(provider, interface):
    backend = provider.split("-", 1)[1] if provider != "stock" else None
    if backend is None:
        module = nn.Sequential(nn.Conv2d(CONV_SHAPE[1], CONV_OUT, 3, 1, 1), nn.LeakyReLU(0.2)).to(DEVICE)
        conv = module[0]
    else:
        module = conv = fusedgan.FusedConvLeakyReLU(CONV_SHAPE[1], CONV_OUT, 3, 1, 1, negative_slope=0.2,
                                                    backend=backend).to(DEVICE)
    weight, bias = conv.weight, conv.bias
    if interface == "module":
        return module, [weight, bias]
    if backend is None:
        return (lambda x: F.leaky_relu(F.conv2d(x, weight, bias, 1, 1), 0.2)), [weight, bias]
    return (lambda x: fusedgan.functional.conv2d_leaky_relu(x, weight, bias, 1, 1, 1, 1, 0.2, backend=backend)), \
        [weight, bias]


def call_step(op, phase, interface, provider, mode):
    """(the timed step of one case: a call, and for "fwd+bwd" its gradients, the input's shape)."""
    shape = CONV_SHAPE if op.startswith("conv") else BN_SHAPE
    call, params = conv_call(provider, interface) if op.startswith("conv") else \
        bn_call(op, provider, interface, phase == "train")
    x = torch.randn(shape, device=DEVICE, requires_grad=mode != "fwd")
    inputs = [x] + params

    def step():
        y = call(x)
        if mode != "fwd":
            torch.autograd.grad(y, inputs, torch.ones_like(y))

    return step, shape


@pytest.mark.parametrize("op,phase", OPS, ids=[f"{op}-{phase}" for op, phase in OPS])
@pytest.mark.parametrize("interface", ["module", "functional"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_call_overhead(benchmark, op, phase, interface, provider, mode):
    step, shape = call_step(op, phase, interface, provider, mode)
    run_benchmark(benchmark, step, rounds=30, iterations=50, warmup=50, op=f"{op} call", shape=list(shape),
                  provider=provider, mode=mode, dtype=f"float32/{interface}/{phase}")
