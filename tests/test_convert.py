"""fusedgan.convert on the example's two GANs: same function, same checkpoints."""

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fusedgan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import dcgan_models  # noqa: E402


def _run(model, x, grad):
    x = x.clone().requires_grad_()
    y = model(x)
    y.backward(grad.to(y.dtype))
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return [y, x.grad] + grads


@pytest.mark.parametrize("memory_saving", [False, True], ids=["plain", "memory_saving"])
@pytest.mark.parametrize("arch,img_size", [("seed", 32), ("dcgan", 32), ("dcgan", 64)])
def test_convert_matches_stock_train_and_eval(arch, img_size, memory_saving):
    """Converted and stock in fp32 against the stock model in float64: the converted
    model's error at most twice stock's own (docs/numerics.md), in train and in eval."""
    torch.manual_seed(0)
    generator, discriminator, noise_shape = dcgan_models.build(arch, 16, img_size, 3)
    for model, make_input in ((generator, lambda: torch.randn(4, *noise_shape)),
                              (discriminator, lambda: torch.rand(4, 3, img_size, img_size) * 2 - 1)):
        model, shared = copy.deepcopy(model), model  # convert shares parameters and buffers: keep stock apart
        fused, report = fusedgan.convert(shared, return_report=True, memory_saving=memory_saving)
        reference = copy.deepcopy(model).double()
        assert any(decision == "fused" for _, decision, _ in report)
        assert list(fused.state_dict()) == list(model.state_dict())
        for training in (True, False):
            for m in (model, fused, reference):
                m.train(training)
            x = make_input()
            with torch.no_grad():  # the output's shape, without touching any running statistics
                grad = torch.randn_like(copy.deepcopy(model).eval()(x))
            expected = _run(reference, x.double(), grad.double())
            for ours, theirs, truth in zip(_run(fused, x, grad), _run(model, x, grad), expected):
                # A bias right before BatchNorm has an analytically zero gradient: both sides
                # hold rounding noise, so errors are also measured against 1e-6 of the scale.
                floor = 1e-6 * max(t.norm().item() for t in expected)
                err, stock_err = (ours - truth).norm().item(), (theirs - truth).norm().item()
                assert err <= 2 * stock_err + floor + 1e-5 * truth.norm().item()
        # Buffers moved in step (the same running statistics after the training steps).
        for a, b in zip(fused.buffers(), model.buffers()):
            assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6)


def test_state_dicts_load_both_ways_and_original_is_untouched():
    _, discriminator, _ = dcgan_models.build("seed", 16, 32, 1)
    before = {k: v.clone() for k, v in discriminator.state_dict().items()}
    kinds = [type(m) for m in discriminator.modules()]
    fused = fusedgan.convert(discriminator)
    assert [type(m) for m in discriminator.modules()] == kinds  # not inplace: original unchanged
    fused.load_state_dict(discriminator.state_dict())
    discriminator.load_state_dict(fused.state_dict())
    for key, value in before.items():
        assert torch.equal(discriminator.state_dict()[key], value)
    assert isinstance(fused.conv_blocks[0], fusedgan.FusedConvLeakyReLU)
    assert isinstance(fused.conv_blocks[3], fusedgan.FusedBNLeakyReLU)
    assert isinstance(fused.conv_blocks[1], nn.Identity)


def test_inplace_shares_parameters_mode_and_requires_grad():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 3),
                          nn.LeakyReLU(0.1), nn.Sequential(nn.BatchNorm1d(2), nn.LeakyReLU(0.3)))
    model[1].weight.requires_grad_(False)
    model.eval()
    weight = model[1].weight
    optimizer = torch.optim.SGD(model.parameters(), 0.1)
    converted, report = fusedgan.convert(model, inplace=True, return_report=True)
    assert converted is model
    assert isinstance(model[1], fusedgan.FusedBNReLU) and model[1].weight is weight
    assert not model[1].weight.requires_grad and not model[1].training
    assert isinstance(model[3], fusedgan.FusedConvLeakyReLU) and model[3].negative_slope == 0.1
    assert isinstance(model[5][0], fusedgan.FusedBNLeakyReLU) and model[5][0].negative_slope == 0.3
    assert {p for g in optimizer.param_groups for p in g["params"]} == set(model.parameters())
    decisions = {name: (decision, why) for name, decision, why in report}
    assert decisions["0"][0] == "left alone" and "BatchNorm2d" in decisions["0"][1]


def test_left_alone_with_reasons():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Tanh(), nn.Conv2d(3, 3, 1), nn.LeakyReLU(-0.5), nn.SyncBatchNorm(3),
                          nn.BatchNorm2d(3))
    converted, report = fusedgan.convert(model, return_report=True)
    reasons = {name: why for name, decision, why in report if decision == "left alone"}
    assert "Tanh" in reasons["0"]
    assert "negative slope" in reasons["2"]
    assert "followed by BatchNorm2d" in reasons["4"]
    assert "not followed by an activation" in reasons["5"]
    assert not any(decision == "fused" for _, decision, _ in report)
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        fusedgan.convert("model")


def test_sync_batchnorm_followed_by_an_activation_is_fused_with_sync_on():
    model = nn.Sequential(nn.SyncBatchNorm(3), nn.LeakyReLU(0.2))
    converted = fusedgan.convert(model)
    assert isinstance(converted[0], fusedgan.FusedBNLeakyReLU) and converted[0].sync
    assert converted[0].process_group is model[0].process_group


def test_memory_saving_makes_leaky_layers_after_convolutions_inplace():
    """(Its numbers: test_convert_matches_stock_train_and_eval[memory_saving].)"""
    torch.manual_seed(0)
    _, discriminator, _ = dcgan_models.build("dcgan", 100, 32, 3)
    saving, report = fusedgan.convert(discriminator, memory_saving=True, return_report=True)
    inplace = [m for m in saving.modules() if getattr(m, "inplace", False) and isinstance(m, fusedgan.FusedBNLeakyReLU)]
    assert len(inplace) == 2 and sum("(inplace)" in why for _, _, why in report) == 2
    with pytest.raises(ValueError, match="process_group"):
        fusedgan.convert(discriminator, process_group=object())


def test_optimizer_built_before_convert_trains_the_converted_model():
    """model = convert(model) keeps the Parameter and buffer objects: an optimizer (or EMA)
    built before the call updates the converted model; the original modules stay stock."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.LeakyReLU(0.2))
    optimizer = torch.optim.Adam(model.parameters(), 0.1)
    before = [p.detach().clone() for p in model.parameters()]
    original, running_mean = model, model[1].running_mean
    model = fusedgan.convert(model)
    assert isinstance(model[1], fusedgan.FusedBNReLU) and isinstance(original[1], nn.BatchNorm2d)
    assert [id(p) for p in model.parameters()] == [id(p) for p in original.parameters()]
    assert model[1].running_mean is running_mean
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    optimizer.step()
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))  # every parameter moved
    assert not torch.equal(running_mean, torch.zeros(4))  # the shared buffer was updated


def test_instance_and_group_norms_are_fused_and_other_norms_reported():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3),
                          nn.GroupNorm(2, 4), nn.LeakyReLU(0.2), nn.Flatten(), nn.LayerNorm(4), nn.ReLU())
    converted, report = fusedgan.convert(model, return_report=True)
    decisions = {name: (decision, why) for name, decision, why in report}
    assert isinstance(converted[1], fusedgan.FusedInstanceNormReLU) and converted[1].spatial_dims == 2
    assert isinstance(converted[4], fusedgan.FusedGroupNormLeakyReLU) and converted[4].negative_slope == 0.2
    assert decisions["1"][0] == decisions["4"][0] == "fused"
    assert decisions["7"] == ("left alone", "LayerNorm + ReLU: not supported yet")
