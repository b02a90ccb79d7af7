"""fusedgan.convert on pix2pix/CycleGAN-style models (tests/_gan_models.py): what it fuses,
and a few training steps of the converted models against stock.

float64: every parameter after three Adam steps to 1e-9 relative, except the parameters
whose gradient is zero by construction (a convolution's bias in front of InstanceNorm),
which Adam moves by +-lr in a direction rounding noise picks whatever the implementation
(docs/numerics.md); for those, the first step's gradients are both at rounding level.
float32: the first step's gradients of the converted model are as close to float64 stock as
stock float32's are (twice its error, plus 1e-5 of the gradients' norm).
"""

import copy

import pytest
import torch
from _gan_models import NLayerDiscriminator, ResnetGenerator, UnetGenerator, group_norm_critic
from _helpers import GN_BACKENDS, device_backends
from torch import nn

import fusedgan

BACKENDS = [pair for pair in GN_BACKENDS if pair in device_backends("conv_act")]


def _fused_kinds(report):
    return sorted(why.split(" -> ")[1] for _, decision, why in report if decision == "fused")


def test_convert_fuses_every_adjacent_norm_activation_pair():
    _, report = fusedgan.convert(ResnetGenerator(n_blocks=3), return_report=True)
    assert _fused_kinds(report) == ["FusedInstanceNormReLU"] * 8  # stem, 2 down, 3 blocks, 2 up
    _, report = fusedgan.convert(NLayerDiscriminator(), return_report=True)
    assert _fused_kinds(report) == ["FusedConvLeakyReLU"] + ["FusedInstanceNormLeakyReLU"] * 3
    _, report = fusedgan.convert(group_norm_critic(), return_report=True)
    assert _fused_kinds(report) == ["FusedConvLeakyReLU"] + ["FusedGroupNormLeakyReLU"] * 2
    # The U-Net's norms end a block's nn.Sequential; the next activation is the first layer
    # of the inner block, applied in place to a tensor the skip concatenation also reads:
    # those pairs are not adjacent, and the report says so. The innermost conv + ReLU is.
    unet, report = fusedgan.convert(UnetGenerator(), return_report=True)
    assert _fused_kinds(report) == ["FusedConvLeakyReLU"]
    left = [why for _, decision, why in report if decision == "left alone"]
    assert any("followed by UnetSkipConnectionBlock" in why for why in left)


def _models(kind):
    torch.manual_seed(0)
    if kind == "cyclegan":
        return ResnetGenerator(n_blocks=2), NLayerDiscriminator(n_layers=2)
    if kind == "pix2pix":
        return UnetGenerator(), NLayerDiscriminator(input_nc=6, n_layers=2)
    return ResnetGenerator(n_blocks=1), group_norm_critic()


def _train(G, D, kind, steps, dtype):
    """`steps` GAN steps (pix2pix: conditional D and an L1 term; cyclegan: LSGAN; WGAN-GP
    with a gradient penalty); returns the first step's gradients of G and D."""
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), 2e-4, betas=(0.5, 0.999)) for m in (G, D))
    generator, device = torch.Generator().manual_seed(1), next(G.parameters()).device
    draw = lambda *shape: torch.rand(*shape, generator=generator, dtype=torch.float64).to(device, dtype)  # noqa: E731
    first = None
    for _ in range(steps):
        a, b = draw(2, 3, 32, 32) * 2 - 1, draw(2, 3, 32, 32) * 2 - 1
        fake = G(a)
        pair = (lambda x, a=a: torch.cat([a, x], 1)) if kind == "pix2pix" else (lambda x: x)  # D sees (a, b)
        if kind == "wgan-gp":
            alpha = draw(2, 1, 1, 1)
            x = (alpha * b + (1 - alpha) * fake.detach()).requires_grad_()
            grad, = torch.autograd.grad(D(x).sum(), x, create_graph=True)
            loss_d = D(fake.detach()).mean() - D(b).mean() + 10 * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        else:
            loss_d = ((D(pair(b)) - 1) ** 2).mean() + (D(pair(fake.detach())) ** 2).mean()
        opt_d.zero_grad()
        loss_d.backward()
        grads_d = [p.grad.clone() for p in D.parameters()]
        opt_d.step()
        loss_g = -D(fake).mean() if kind == "wgan-gp" else ((D(pair(fake)) - 1) ** 2).mean()
        if kind == "pix2pix":
            loss_g = loss_g + 100 * (fake - b).abs().mean()
        opt_g.zero_grad()
        loss_g.backward()
        grads_g = [p.grad.clone() for p in G.parameters()]
        opt_g.step()
        first = first or grads_g + grads_d
    return first


@pytest.mark.parametrize("kind", ["pix2pix", "cyclegan", "wgan-gp"])
def test_converted_training_matches_stock_fp64(kind):
    stock_g, stock_d = (m.double() for m in _models(kind))
    fused_g, fused_d = (fusedgan.convert(copy.deepcopy(m)) for m in (stock_g, stock_d))
    stock_grads = _train(stock_g, stock_d, kind, 3, torch.float64)
    fused_grads = _train(fused_g, fused_d, kind, 3, torch.float64)
    scale = torch.cat([g.flatten() for g in stock_grads]).norm()
    stock_params = [*stock_g.parameters(), *stock_d.parameters()]
    fused_params = [*fused_g.parameters(), *fused_d.parameters()]
    compared = 0
    for g_stock, g_fused, p_stock, p_fused in zip(stock_grads, fused_grads, stock_params, fused_params):
        if g_stock.norm() <= 1e-12 * scale:  # zero by construction: both at rounding level
            assert g_fused.norm() <= 1e-12 * scale
            continue
        assert (g_fused - g_stock).norm() <= 1e-9 * g_stock.norm()
        assert (p_fused - p_stock).norm() <= 1e-9 * p_stock.norm()
        compared += 1
    assert compared >= len(stock_params) // 2


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("kind", ["pix2pix", "cyclegan", "wgan-gp"])
def test_converted_gradients_fp32(device, backend, kind):
    reference = [m.double().to(device) for m in _models(kind)]
    stock = [copy.deepcopy(m).float() for m in reference]
    fused = [fusedgan.convert(copy.deepcopy(m), backend=backend) for m in stock]
    flat = lambda grads: torch.cat([g.double().flatten() for g in grads])  # noqa: E731
    expected = flat(_train(*reference, kind, 1, torch.float64))
    stock_error = (flat(_train(*stock, kind, 1, torch.float32)) - expected).norm()
    fused_error = (flat(_train(*fused, kind, 1, torch.float32)) - expected).norm()
    assert fused_error <= 2 * stock_error + 1e-5 * expected.norm()


def test_report_counts_on_a_model_with_nested_sequentials():
    """The conversion walks nested nn.Sequentials (the ResNet blocks' conv_block)."""
    G = ResnetGenerator(n_blocks=2)
    fused = fusedgan.convert(G)
    blocks = [m for m in fused.modules() if type(m).__name__ == "ResnetBlock"]
    assert all(isinstance(b.conv_block[2], fusedgan.FusedInstanceNormReLU) and isinstance(b.conv_block[3], nn.Identity)
               for b in blocks)
    assert all(b.conv_block[2].spatial_dims == 2 for b in blocks)
