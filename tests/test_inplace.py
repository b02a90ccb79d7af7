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
import sys
from pathlib import Path

import pytest
import torch
from _helpers import DEVICE_BACKENDS, rel_err, stock_bn_act
from torch import nn

import fusedgan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import dcgan_models  # noqa: E402

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


@pytest.mark.parametrize("weight", ["frozen", "learnable"])
def test_inplace_saves_the_output(weight):
    """Of the activation-sized tensors, autograd keeps the output (the input's storage) and,
    when the weight needs a gradient, the input of the channels whose weight is 0 (zeros
    elsewhere): sized as the input, as choosing channels would read the weight back to the host."""
    layer = fusedgan.FusedBNLeakyReLU(4, 0.2, inplace=True)
    layer.weight.requires_grad_(weight == "learnable")
    x = torch.randn(2, 4, 8, 8, requires_grad=True) * 1
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    big = {t.untyped_storage().data_ptr() for t in saved if t.numel() >= x.numel()}
    assert y.untyped_storage().data_ptr() in big and y.data_ptr() == x.data_ptr()
    assert len(big) == (2 if weight == "learnable" else 1)


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


def _discriminator_step(D, optimizer, real):
    """One discriminator update: BCE on real and (stand-in) fake images, backward, SGD step."""
    loss = torch.nn.BCEWithLogitsLoss()
    logits = D(torch.cat([real, torch.tanh(real.flip(0))]))
    targets = torch.cat([torch.ones(len(real), 1), torch.zeros(len(real), 1)]).view_as(logits)
    loss_d = loss(logits, targets)
    optimizer.zero_grad(set_to_none=False)
    loss_d.backward()
    optimizer.step()
    return loss_d.detach()


@pytest.mark.parametrize("backend", sorted({b for d, b in DEVICE_BACKENDS if d == "cpu"}))
def test_memory_saving_step_reads_nothing_back_to_the_host(monkeypatch, backend):
    """On a GPU, reading a value back to the host synchronises and forbids CUDA graphs
    (tests/test_gpu.py captures this step in one): here every such read raises. The
    discriminator has a channel whose weight is exactly 0, which must still get its
    exact gradient (against the stock model, in float64)."""
    torch.manual_seed(0)
    _, stock, _ = dcgan_models.build("dcgan", 100, 32, 3)
    index = next(i for i, m in enumerate(stock) if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        stock[index].weight[5] = 0.0
    stock = stock.double()
    fused = fusedgan.convert(copy.deepcopy(stock), memory_saving=True, backend=backend)
    assert any(getattr(m, "inplace", False) for m in fused.modules())
    real = torch.rand(4, 3, 32, 32, dtype=torch.float64) * 2 - 1
    stock_optimizer = torch.optim.SGD(stock.parameters(), lr=0.1)
    fused_optimizer = torch.optim.SGD(fused.parameters(), lr=0.1)
    expected = _discriminator_step(stock, stock_optimizer, real)

    def host_read(*args):
        raise AssertionError("a tensor's value was read back to the host")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    loss = _discriminator_step(fused, fused_optimizer, real)
    monkeypatch.undo()
    assert rel_err(loss, expected) < 1e-12
    grads = [(p.grad, q.grad) for p, q in zip(fused.parameters(), stock.parameters())]
    assert stock[index].weight.grad[5] != 0
    assert rel_err(fused[index].weight.grad[5], stock[index].weight.grad[5]) < 1e-12
    for ours, theirs in grads:
        assert rel_err(ours, theirs) < 1e-10
