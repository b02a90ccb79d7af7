"""Shared test helpers: which backends run here, stock reference layers, error measures."""

import copy

import torch
from torch import nn

from fusedgan._backends import why_unusable

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def device_backends(family="bn_act"):
    """Every (device, backend) pair that can run the layers of op `family` in this process."""
    return [(d, b) for d in DEVICES for b in ("triton", "cuda", "cpu", "torch", "cuda-sim")
            if why_unusable(b, d, family) is None]


DEVICE_BACKENDS = device_backends()
GN_BACKENDS = device_backends("gn_act")

_STOCK_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def stock_activation(activation, slope):
    if activation == "relu":
        return nn.ReLU()
    if activation == "leaky_relu":
        return nn.LeakyReLU(slope)
    return nn.Identity()


def stock_bn_act(rank, C, activation="relu", slope=0.01, **bn_kwargs):
    """nn.BatchNorm{1,2,3}d followed by the activation: what our modules replace."""
    return nn.Sequential(_STOCK_BN[rank](C, **bn_kwargs), stock_activation(activation, slope))


def randomize_affine(bn):
    """Weights and biases away from the 1/0 defaults, so swapped or unused parameters show."""
    with torch.no_grad():
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return bn


def as_stock_copy(fused, rank, activation, slope, dtype=torch.float64, **bn_kwargs):
    """A stock BN+activation with the fused module's parameters and buffers, in `dtype`."""
    stock = stock_bn_act(rank, fused.num_features, activation, slope, **bn_kwargs)
    stock[0].load_state_dict(copy.deepcopy(fused.state_dict()))
    return stock.to(device=fused.running_mean.device if fused.running_mean is not None else "cpu", dtype=dtype)


def rel_err(actual, expected, abs_terms=None):
    """||actual - expected|| / ||expected|| in float64 (absolute when expected is 0).

    For a reduction, abs_terms (the sums of |terms|) bounds what rounding can do: the
    denominator is then the larger of the two norms (see test_batch_norm_act.py).
    """
    actual, expected = actual.double(), expected.double()
    scale = expected.norm().item()
    if abs_terms is not None:
        scale = max(scale, abs_terms.double().norm().item())
    return (actual - expected).norm().item() / (scale if scale > 0 else 1.0)


def random_input(shape, dtype, device, channels_last=False, scale=2.0, shift=0.5):
    x = torch.randn(shape, dtype=torch.float64, device=device) * scale + shift
    x = x.to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x
