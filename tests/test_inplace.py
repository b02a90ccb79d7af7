"""Memory-saving mode (inplace=True): the output written over the input, only it saved.

Against stock BatchNorm + LeakyReLU / identity in float64, as in test_batch_norm_act.py,
with one channel's weight exactly 0 and one negative, on every backend.

Tolerances: fp32 1e-5 as everywhere (docs/numerics.md). For fp16/bf16, dx and the output are
held to twice stock's own error; dweight is not, and that is this mode's known cost: it
is a sum of dz * xhat with xhat recovered from the output, which is rounded to the
input's dtype, so each xhat carries a relative error of up to the unit roundoff u times
|z| / |weight * xhat|. With the weights and biases here (|bias / weight| <= 1) that stays
under 2u; stock computes xhat from the exact input and gets fp32 accuracy.
"""

import copy

import pytest
import torch
from _helpers import rel_err, stock_bn_act
from torch import nn

import fusedgan

FP32_TOL = 1e-5
UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}


def _modules(activation, C, device, backend):
    if activation == "leaky_relu":
        fused = fusedgan.FusedBNLeakyReLU(C, 0.2, backend=backend, inplace=True, momentum=0.3)
    else:
        fused = fusedgan.FusedBatchNorm(C, backend=backend, inplace=True, momentum=0.3)
    with torch.no_grad():
        fused.weight.uniform_(0.5, 1.5)
        fused.bias.uniform_(-0.5, 0.5)
        fused.weight[0] = 0.0  # y holds nothing of x here: dweight must still be exact
        fused.weight[-1] = -0.7
    stock = stock_bn_act(4, C, activation, 0.2, momentum=0.3)
    stock[0].load_state_dict(copy.deepcopy(fused.state_dict()))
    return fused.to(device), stock.double().to(device)


def _run(fused, stock, x, grad, dtype, channels_last):
    """One step; returns {what: (fused value, float64 stock value)}."""
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    leaf = x.clone().requires_grad_(True)
    x_ref = x.double().requires_grad_(True)
    inner = leaf * 1  # a non-leaf the layer may overwrite, as a convolution's output
    y = fused(inner)
    assert y.dtype == dtype and (y.data_ptr() == inner.data_ptr()) == fused.inplace, "written over the input"
    y_ref = stock(x_ref)
    y.backward(grad.to(dtype))
    y_ref.backward(grad.to(dtype).double())
    out = {"output": (y, y_ref), "grad input": (leaf.grad, x_ref.grad)}
    if fused.training:
        out["grad weight"] = (fused.weight.grad, stock[0].weight.grad)
        out["grad bias"] = (fused.bias.grad, stock[0].bias.grad)
        out["running mean"] = (fused.running_mean, stock[0].running_mean)
        out["running var"] = (fused.running_var, stock[0].running_var)
    fused.zero_grad()
    stock.zero_grad()
    return out


@pytest.mark.parametrize("activation", ["leaky_relu", "identity"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_inplace_matches_stock_fp32(device_backend, activation, channels_last):
    device, backend = device_backend
    fused, stock = _modules(activation, 5, device, backend)
    for training in (True, True, False):
        fused.train(training)
        stock.train(training)
        x = torch.randn(4, 5, 6, 7, dtype=torch.float64, device=device) * 2 + 0.5
        grad = torch.randn_like(x)
        for what, (got, expected) in _run(fused, stock, x, grad, torch.float32, channels_last).items():
            assert rel_err(got, expected) < FP32_TOL, (what, training)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_inplace_half_precision(device_backend, dtype):
    device, backend = device_backend
    fused, stock = _modules("leaky_relu", 6, device, backend)
    plain = fusedgan.FusedBNLeakyReLU(6, 0.2, backend=backend, momentum=0.3).to(device)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(8, 6, 5, 5, dtype=torch.float64, device=device) * 2 + 0.5
    grad = torch.randn_like(x)
    stock_copy = copy.deepcopy(stock)
    got = _run(fused, stock, x, grad, dtype, False)
    baseline = _run(plain, stock_copy, x, grad, dtype, False)  # the ordinary fused layer: stock-like error
    for what in ("output", "grad input", "grad bias"):
        assert rel_err(*got[what]) <= 2 * rel_err(*baseline[what]) + 1e-6, what
    assert rel_err(*got["grad weight"]) < 2 * UNIT_ROUNDOFF[dtype]


def test_inplace_saves_only_the_output():
    """Of the activation-sized tensors, autograd keeps the output alone (it is the input's storage)."""
    layer = fusedgan.FusedBNLeakyReLU(4, 0.2, inplace=True)
    x = torch.randn(2, 4, 8, 8, requires_grad=True) * 1
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    big = {t.untyped_storage().data_ptr() for t in saved if t.numel() >= x.numel()}
    assert big == {y.untyped_storage().data_ptr()} and y.data_ptr() == x.data_ptr()


def test_inplace_errors():
    with pytest.raises(ValueError, match="invertible activation"):
        fusedgan.FusedBNReLU(3, inplace=True)
    with pytest.raises(ValueError, match="negative_slope > 0"):
        fusedgan.FusedBNLeakyReLU(3, 0.0, inplace=True)
    with pytest.raises(ValueError, match="cannot be combined"):
        fusedgan.FusedBatchNorm(3, inplace=True, sync=True)
    with pytest.raises(ValueError, match="negative_slope > 0"):
        fusedgan.functional.batch_norm_act(torch.randn(2, 3), None, None, training=True, activation="relu",
                                           inplace=True)
    layer = fusedgan.FusedBNLeakyReLU(3, 0.2, inplace=True)
    with pytest.raises(RuntimeError, match="leaf Variable"):  # as any in-place op on a leaf that needs grad
        layer(torch.randn(2, 3, requires_grad=True))
    x = torch.randn(4, 3, requires_grad=True)
    y = layer(x * 1)
    y.add_(1)  # the saved output changed after forward: autograd refuses, as for stock in-place ops
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_inplace_state_dict_is_stock():
    layer = fusedgan.FusedBNLeakyReLU(3, 0.2, inplace=True)
    layer.load_state_dict(nn.BatchNorm2d(3).state_dict())
    assert "inplace=True" in repr(layer)


def test_inplace_nan_and_empty_batch_as_stock():
    layer = fusedgan.FusedBNLeakyReLU(3, 0.2, inplace=True)
    stock = nn.Sequential(nn.BatchNorm2d(3), nn.LeakyReLU(0.2))
    x = torch.randn(2, 3, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    assert torch.equal(torch.isnan(layer(x.clone())), torch.isnan(stock(x)))
    empty = torch.randn(0, 3, 4, 4, requires_grad=True)
    y = layer(empty * 1)
    y.sum().backward()
    assert y.shape == empty.shape and empty.grad.shape == empty.shape
    torch.testing.assert_close(layer.running_mean, stock[0].running_mean, equal_nan=True)  # NaN in channel 0
