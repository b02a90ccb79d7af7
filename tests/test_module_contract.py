"""The module contract stock layers keep: autocast, checkpoints, copies, dtype and device
moves, train/eval. Each check runs the fused layer beside the stock one it replaces."""

import copy
import io

import pytest
import torch
from _helpers import rel_err
from torch import nn

import fusedgan

# Under autocast both sides compute in fp32 and round to the low dtype at the same points;
# they differ by fp32 summation order, so results agree to a few units of the low dtype's
# rounding: 4 * unit roundoff (bf16 2^-8, fp16 2^-11) bounds the norm-wise difference.
AUTOCAST_TOL = {torch.bfloat16: 4 * 2.0 ** -8, torch.float16: 4 * 2.0 ** -11}


def _stock_model():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
                         nn.Conv2d(8, 4, 3), nn.LeakyReLU(0.1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_gives_stock_dtypes_and_values(device_backend, dtype):
    device, backend = device_backend
    torch.manual_seed(0)
    stock = _stock_model().to(device)
    fused = fusedgan.convert(copy.deepcopy(stock), backend=backend)  # its own parameters and statistics
    x = torch.randn(4, 3, 10, 10, device=device)
    outputs = {}
    for name, model in (("stock", stock), ("fused", fused)):
        with torch.autocast(torch.device(device).type, dtype=dtype):
            y = model(x)
        y.float().square().mean().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        outputs[name] = (y, grads, model[1].running_mean.clone())
    (y_stock, grads_stock, running_stock), (y_fused, grads_fused, running_fused) = outputs["stock"], outputs["fused"]
    assert y_fused.dtype == y_stock.dtype == dtype
    assert rel_err(y_fused, y_stock) < AUTOCAST_TOL[dtype]
    for ours, theirs in zip(grads_fused, grads_stock):
        assert ours.dtype == theirs.dtype == torch.float32  # parameters and their gradients stay fp32
        assert rel_err(ours, theirs) < AUTOCAST_TOL[dtype]
    assert running_fused.dtype == torch.float32 and rel_err(running_fused, running_stock) < AUTOCAST_TOL[dtype]


def test_autocast_leaves_an_fp32_batchnorm_input_in_fp32(device_backend):
    device, backend = device_backend
    layer = fusedgan.FusedBNLeakyReLU(3, 0.2, backend=backend).to(device)
    stock = nn.Sequential(nn.BatchNorm2d(3), nn.LeakyReLU(0.2)).to(device)
    x = torch.randn(2, 3, 4, 4, device=device)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        assert layer(x).dtype == stock(x).dtype == torch.float32


def _fused_layers():
    return [fusedgan.FusedBNReLU(4), fusedgan.FusedBNLeakyReLU(4, 0.3), fusedgan.FusedBatchNorm(4),
            fusedgan.FusedConvLeakyReLU(4, 4, 3, padding=1, negative_slope=0.2),
            fusedgan.FusedGroupNormLeakyReLU(2, 4, 0.2),
            fusedgan.FusedInstanceNormReLU(4, affine=True, track_running_stats=True)]


def _stock_like(layer):
    """The stock layer the fused one replaces, with its state."""
    if isinstance(layer, nn.Conv2d):
        stock = nn.Conv2d(4, 4, 3, padding=1)
    elif isinstance(layer, nn.GroupNorm):
        stock = nn.GroupNorm(2, 4)
    elif isinstance(layer, nn.modules.instancenorm._InstanceNorm):
        stock = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
    else:
        stock = nn.BatchNorm2d(4)
    stock.load_state_dict(layer.state_dict())
    return stock


def _trained(layer):
    layer.train()
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-1, 1)
    layer(torch.randn(3, 4, 5, 5))  # moves the running statistics
    return layer


@pytest.mark.parametrize("layer", _fused_layers(), ids=lambda m: type(m).__name__)
def test_save_load_and_deepcopy_keep_everything(layer):
    layer = _trained(layer).eval()
    x = torch.randn(2, 4, 5, 5)
    expected = layer(x)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    for copied in (torch.load(buffer, weights_only=False), copy.deepcopy(layer)):
        assert type(copied) is type(layer) and repr(copied) == repr(layer) and not copied.training
        assert all(torch.equal(a, b) for a, b in zip(copied.state_dict().values(), layer.state_dict().values()))
        assert torch.equal(copied(x), expected)
        copied.weight.data.add_(1)  # a copy, not shared storage
        assert not torch.equal(copied.weight, layer.weight)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = copy.deepcopy(layer)
    fresh.load_state_dict(torch.load(buffer))
    assert torch.equal(fresh(x), expected)


@pytest.mark.parametrize("layer", _fused_layers(), ids=lambda m: type(m).__name__)
def test_dtype_moves_as_stock(layer):
    layer = _trained(layer)
    stock = _stock_like(layer)
    for move in (lambda m: m.double(), lambda m: m.to(torch.float64), lambda m: m.half(), lambda m: m.bfloat16(),
                 lambda m: m.float()):
        ours, theirs = move(copy.deepcopy(layer)), move(copy.deepcopy(stock))
        assert {k: v.dtype for k, v in ours.state_dict().items()} == \
            {k: v.dtype for k, v in theirs.state_dict().items()}
        dtype = ours.weight.dtype
        x = torch.randn(2, 4, 5, 5, dtype=dtype)
        assert ours(x).dtype == dtype  # and it runs in that dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("layer", _fused_layers(), ids=lambda m: type(m).__name__)
def test_device_moves(layer):
    layer = _trained(layer).cuda()
    assert all(t.is_cuda for t in layer.state_dict().values())
    assert layer(torch.randn(2, 4, 5, 5, device="cuda")).is_cuda
    assert not layer.cpu()(torch.randn(2, 4, 5, 5)).is_cuda


@pytest.mark.parametrize("cls", [fusedgan.FusedBNReLU, fusedgan.FusedBatchNorm])
def test_train_and_eval_switch_statistics_as_stock(cls):
    ours, stock = _trained(cls(4)), nn.BatchNorm2d(4)
    stock.load_state_dict(ours.state_dict())
    act = nn.ReLU() if cls is fusedgan.FusedBNReLU else nn.Identity()
    x = torch.randn(3, 4, 5, 5)
    for training in (False, True, False):
        ours.train(training)
        stock.train(training)
        assert ours.training == training
        torch.testing.assert_close(ours(x), act(stock(x)))
        torch.testing.assert_close(ours.running_mean, stock.running_mean)
    assert ours.num_batches_tracked == stock.num_batches_tracked
