"""torch.compile(fullgraph=True) through the fused modules: no graph break, eager's results.

The C++ ops trace through their fake implementations, the Triton launchers through the
fusedgan_triton:: custom ops (on CPU tensors through the interpreter), and the reference backend is
plain torch.
"""

import pytest
import torch
from _helpers import GN_BACKENDS, rel_err
from torch import nn

import fusedgan


@pytest.mark.filterwarnings("error:Dynamo detected")  # no Dynamo warnings about our code either
def test_fullgraph_compile_matches_eager(device_backend):
    device, backend = device_backend
    torch._dynamo.reset()
    model = nn.Sequential(fusedgan.FusedConvLeakyReLU(3, 8, 3, negative_slope=0.2, backend=backend),
                          fusedgan.FusedBNReLU(8, backend=backend),
                          nn.Conv2d(8, 4, 3), fusedgan.FusedBNLeakyReLU(4, 0.2, backend=backend)).to(device)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(4, 3, 10, 10, device=device)
    for training in (True, False):
        model.train(training)
        x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
        grad = torch.randn(4, 4, 6, 6, device=device)
        y_eager = model(x_eager)
        y_eager.backward(grad)
        eager_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        y_compiled = compiled(x_compiled)
        y_compiled.backward(grad)
        assert rel_err(y_compiled, y_eager) < 1e-5
        assert rel_err(x_compiled.grad, x_eager.grad) < 1e-5
        # The first conv's bias feeds BatchNorm, so its gradient is zero up to rounding noise:
        # each parameter's error is measured against the largest gradient as well.
        largest = max(g.norm().item() for g in eager_grads)
        for p, g in zip(model.parameters(), eager_grads):
            assert (p.grad - g).norm().item() <= 1e-5 * max(g.norm().item(), largest)
        model.zero_grad()


@pytest.mark.filterwarnings("error:Dynamo detected")
@pytest.mark.parametrize("device,backend", GN_BACKENDS, ids=[f"{d}-{b}" for d, b in GN_BACKENDS])
def test_fullgraph_compile_group_and_instance_norm(device, backend):
    torch._dynamo.reset()
    model = nn.Sequential(nn.Conv2d(3, 8, 3), fusedgan.FusedInstanceNormReLU(8, affine=True, backend=backend),
                          nn.Conv2d(8, 8, 3), fusedgan.FusedGroupNormLeakyReLU(4, 8, 0.2, backend=backend)).to(device)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 10, 10, device=device)
    x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(2, 8, 6, 6, device=device)
    model(x_eager).backward(grad)
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    y = compiled(x_compiled)
    y.backward(grad)
    assert rel_err(y, model(x)) < 1e-5 and rel_err(x_compiled.grad, x_eager.grad) < 1e-5
    largest = max(g.norm().item() for g in eager_grads)  # conv biases before InstanceNorm: zero gradients
    for p, g in zip(model.parameters(), eager_grads):
        assert (p.grad - g).norm().item() <= 1e-5 * max(g.norm().item(), largest)
