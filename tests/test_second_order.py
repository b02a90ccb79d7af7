"""Second-order gradients: gradient penalties (WGAN-GP, R1) through fused layers.

Critics are trained with penalties on the gradient of their output with respect to their
input, so the backward of every fused layer must itself be differentiable and match
stock's. Checked three ways: gradgradcheck in float64 on each layer and backend; WGAN-GP
and R1 penalties through converted critics against the stock critics (every parameter's
gradient, and None exactly where stock gives None); and the modes without second-order
gradients (sync=True, inplace=True) raising a clear error at the second backward.

Tolerances: float64 to 1e-10 relative. A parameter whose true gradient is zero by
construction (a bias in front of a BatchNorm in training) gets rounding noise on both sides,
so each parameter's error is measured against its own gradient's norm plus 1e-12 times the
norm of all the gradients together. float32: the fused critic's error against the float64
stock critic is at most twice stock float32's own error, plus 1e-6 (the rule for
precisions below float64 in docs/numerics.md).
"""

import copy
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
from _helpers import DEVICE_BACKENDS, GN_BACKENDS
from torch import nn

import fusedgan
from fusedgan import functional

FP64_TOL = 1e-10
_ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "identity": nn.Identity}


@pytest.mark.parametrize("rank", [2, 4, 5], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "identity"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradgradcheck(device_backend, rank, activation, training):
    device, backend = device_backend
    shape = {2: (5, 2), 4: (3, 2, 3, 2), 5: (3, 2, 2, 1, 2)}[rank]  # small: the checks run the layer ~200 times
    x = (torch.randn(shape, dtype=torch.float64, device=device) * 2 + 0.5).requires_grad_()
    weight = (torch.rand(2, dtype=torch.float64, device=device) + 0.5).requires_grad_()
    bias = torch.randn(2, dtype=torch.float64, device=device).requires_grad_()
    mean, var = torch.randn(2, dtype=torch.float64, device=device), torch.rand(2, dtype=torch.float64, device=device)
    stats = (None, None) if training else (mean, var + 0.5)

    def layer(x, weight, bias):
        return functional.batch_norm_act(x, *stats, weight, bias, training, 0.1, 1e-5, activation, 0.2,
                                         backend=backend)

    assert torch.autograd.gradcheck(layer, (x, weight, bias))
    assert torch.autograd.gradgradcheck(layer, (x, weight, bias))


@pytest.mark.parametrize("device,backend", GN_BACKENDS, ids=[f"{d}-{b}" for d, b in GN_BACKENDS])
@pytest.mark.parametrize("layer", ["group", "instance", "instance-tracked-eval"])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_gradgradcheck_group_and_instance_norm(device, backend, layer, activation):
    x = (torch.randn(3, 4, 3, 2, dtype=torch.float64, device=device) * 2 + 0.5).requires_grad_()
    weight = (torch.rand(4, dtype=torch.float64, device=device) + 0.5).requires_grad_()
    bias = torch.randn(4, dtype=torch.float64, device=device).requires_grad_()
    running = (torch.randn(4, dtype=torch.float64, device=device),
               torch.rand(4, dtype=torch.float64, device=device) + 0.5)

    def norm(x, weight, bias):
        if layer == "group":
            return functional.group_norm_act(x, 2, weight, bias, 1e-5, activation, 0.2, backend=backend)
        eval_mode = layer == "instance-tracked-eval"
        return functional.instance_norm_act(x, *(running if eval_mode else (None, None)), weight, bias,
                                            not eval_mode, 0.1, 1e-5, activation, 0.2, backend=backend)

    assert torch.autograd.gradcheck(norm, (x, weight, bias))
    assert torch.autograd.gradgradcheck(norm, (x, weight, bias))


def _critic(norm_after_linear):
    """A DCGAN-style critic: Conv+LeakyReLU, Conv+BatchNorm+LeakyReLU, Conv+BatchNorm+ReLU,
    then (optionally) Linear+BatchNorm1d+LeakyReLU; random BatchNorm parameters and statistics."""
    layers = [nn.Conv2d(3, 6, 3, 1, 1), nn.LeakyReLU(0.2),
              nn.Conv2d(6, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
              nn.Conv2d(8, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten()]
    layers += [nn.Linear(64, 16), nn.BatchNorm1d(16), nn.LeakyReLU(0.2), nn.Linear(16, 1)] if norm_after_linear \
        else [nn.Linear(64, 1)]
    critic = nn.Sequential(*layers)
    with torch.no_grad():
        for module in critic.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2)
    return critic


def _penalty_gradients(critic, real, fake, kind, alpha):
    """Every parameter's gradient of a WGAN-GP or R1 penalty (None where unused)."""
    if kind == "wgan-gp":
        x = (alpha * real + (1 - alpha) * fake).requires_grad_()
    else:  # R1: on real data
        x = real.clone().requires_grad_()
    grad, = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    norms = grad.flatten(1).norm(dim=1)
    penalty = ((norms - 1) ** 2).mean() if kind == "wgan-gp" else norms.square().mean() / 2
    return torch.autograd.grad(penalty, list(critic.parameters()), allow_unused=True)


def _check_close(fused, stock, total, tol, what):
    for index, (a, b) in enumerate(zip(fused, stock)):
        assert (a is None) == (b is None), f"{what}: parameter {index} has gradient {a} where stock has {b}"
        if a is not None:
            error = (a.double() - b.double()).norm().item()
            assert error <= tol * b.double().norm().item() + 1e-12 * total, \
                f"{what}: parameter {index} differs by {error:.3e} (norm {b.norm().item():.3e})"


@pytest.mark.parametrize("kind", ["wgan-gp", "r1"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("norm_after_linear", [False, True], ids=["conv", "conv+linear"])
def test_penalty_through_converted_critic_matches_stock_fp64(device_backend, kind, training, norm_after_linear):
    device, backend = device_backend
    stock = _critic(norm_after_linear).to(device, torch.float64).train(training)
    fused = fusedgan.convert(copy.deepcopy(stock), backend=backend)
    real, fake = (torch.randn(6, 3, 8, 8, dtype=torch.float64, device=device) for _ in range(2))
    alpha = torch.rand(6, 1, 1, 1, dtype=torch.float64, device=device)
    expected = _penalty_gradients(stock, real, fake, kind, alpha)
    got = _penalty_gradients(fused, real, fake, kind, alpha)
    total = torch.cat([g.flatten() for g in expected if g is not None]).norm().item()
    _check_close(got, expected, total, FP64_TOL, f"{kind} {backend}")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_penalty_through_converted_critic_fp32(device_backend, training):
    device, backend = device_backend
    reference = _critic(True).to(device, torch.float64).train(training)
    stock = _critic(True).to(device).train(training)
    stock.load_state_dict(reference.state_dict())
    fused = fusedgan.convert(copy.deepcopy(stock), backend=backend)
    real, fake = (torch.randn(6, 3, 8, 8, dtype=torch.float64, device=device) for _ in range(2))
    alpha = torch.rand(6, 1, 1, 1, dtype=torch.float64, device=device)
    flat = lambda grads: torch.cat([g.double().flatten() for g in grads if g is not None])  # noqa: E731
    expected = flat(_penalty_gradients(reference, real, fake, "wgan-gp", alpha))
    stock_error = (flat(_penalty_gradients(stock, real.float(), fake.float(), "wgan-gp", alpha.float())) -
                   expected).norm() / expected.norm()
    fused_error = (flat(_penalty_gradients(fused, real.float(), fake.float(), "wgan-gp", alpha.float())) -
                   expected).norm() / expected.norm()
    assert fused_error <= 2 * stock_error + 1e-6, f"fused {fused_error:.3e} vs stock {stock_error:.3e}"


@pytest.mark.parametrize("activation", ["leaky_relu", "identity"])
def test_memory_saving_mode_raises_at_second_backward(activation):
    layer = fusedgan.FusedBNLeakyReLU(3, 0.2, inplace=True) if activation == "leaky_relu" else \
        fusedgan.FusedBatchNorm(3, inplace=True)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(4, 2, 5, 5, requires_grad=True)
    grad, = torch.autograd.grad(layer(conv(x)).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"memory-saving mode \(inplace=True\) has no second-order gradients"):
        grad.square().sum().backward()


@pytest.fixture
def one_rank_group():
    """A gloo process group of this process alone, so that sync=True's Function can run here."""
    if not dist.is_available() or not dist.is_gloo_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed with gloo, not yet initialised")
    with tempfile.TemporaryDirectory() as folder:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(folder, 'init')}", rank=0, world_size=1)
        try:
            yield dist.group.WORLD
        finally:
            dist.destroy_process_group()


@pytest.mark.parametrize("backend", sorted({b for d, b in DEVICE_BACKENDS if d == "cpu"}))
def test_sync_raises_at_second_backward(one_rank_group, backend):
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    weight = torch.rand(3, requires_grad=True)
    bias = torch.randn(3, requires_grad=True)
    y, *_ = fusedgan.SyncBatchNormActFunction.apply(x, weight, bias, 1e-5, 1, 0.0, backend, one_rank_group)
    grad, = torch.autograd.grad(y.sum(), x, create_graph=True)  # dy does not depend on x: only saved tensors do
    with pytest.raises(RuntimeError, match=r"sync=True\) has no second-order gradients"):
        grad.square().sum().backward()
    # First-order gradients are unaffected.
    dx, = torch.autograd.grad(y.square().sum(), x)
    assert torch.isfinite(dx).all()
