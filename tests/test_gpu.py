"""GPU-only checks, skipped without CUDA (benchmarks/run_gpu.sh runs them on the device):
a tensor of more than 2^31 elements, a whole DCGAN training step captured in a CUDA
graph, a memory-saving discriminator step captured under sync debug mode "error", and
compute-sanitizer's memcheck and racecheck over the CUDA kernels."""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fusedgan
from fusedgan._backends import why_unusable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import dcgan_models  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_BACKENDS = [b for b in ("cuda", "triton") if torch.cuda.is_available() and why_unusable(b, "cuda") is None]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_more_than_2_31_elements(backend):
    """(33, 2, 8192, 4096) bf16: 2.2e9 elements, so offsets past 2^31 must be int64. The
    values are held to bf16's default tolerances: the point is that every element, the
    last ones included, is read and written where it should be."""
    torch.cuda.empty_cache()
    shape = (33, 2, 8192, 4096)
    assert torch.Size(shape).numel() > 2 ** 31
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    layer = fusedgan.FusedBNReLU(2, momentum=1.0, backend=backend).cuda()  # momentum 1: running = batch stats
    stock = nn.BatchNorm2d(2, momentum=1.0).cuda()
    y = layer(x.requires_grad_(True))
    y.backward(torch.ones_like(y))
    dx_last, dx_first = x.grad[-1].clone(), x.grad[0].clone()
    x.grad = None
    y_last, y_first = y[-1].clone(), y[0].clone()
    del y
    y_ref = torch.relu(stock(x))
    y_ref.backward(torch.ones_like(y_ref))
    torch.testing.assert_close(y_last, y_ref[-1])
    torch.testing.assert_close(y_first, y_ref[0])
    torch.testing.assert_close(dx_last, x.grad[-1])
    torch.testing.assert_close(dx_first, x.grad[0])
    torch.testing.assert_close(layer.running_mean, stock.running_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.running_var, stock.running_var, rtol=1e-4, atol=1e-5)


def _gan_step(G, D, opt_g, opt_d, real, z):
    """The example's step: one D update on real and detached fake, one G update."""
    loss = nn.BCEWithLogitsLoss()
    ones = torch.ones(real.shape[0], 1, device=real.device)
    fake = G(z)
    loss_d = loss(D(real), ones) + loss(D(fake.detach()), torch.zeros_like(ones))
    opt_d.zero_grad(set_to_none=False)
    loss_d.backward()
    opt_d.step()
    loss_g = loss(D(fake), ones)
    opt_g.zero_grad(set_to_none=False)
    loss_g.backward()
    opt_g.step()
    return loss_d.detach(), loss_g.detach()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_dcgan_training_step_in_a_cuda_graph(backend):
    """Capture G and D forward, backward and Adam steps in one CUDA graph (which fails on
    any host synchronisation), replay it, and match eager steps on the same data."""
    torch.manual_seed(0)
    G, D, noise_shape = dcgan_models.build("dcgan", 100, 32, 3)
    models = {}
    for name in ("graph", "eager"):
        g, d = (fusedgan.convert(copy.deepcopy(m), backend=backend).cuda() for m in (G, D))  # own parameters
        opts = [torch.optim.Adam(m.parameters(), 2e-4, betas=(0.5, 0.999), capturable=True) for m in (g, d)]
        models[name] = (g, d, *opts)
    data = [(torch.rand(16, 3, 32, 32, device="cuda") * 2 - 1, torch.randn(16, *noise_shape, device="cuda"))
            for _ in range(6)]
    g, d, opt_g, opt_d = models["graph"]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (autotuning, cuDNN plans, lazily made state) off the graph
        for real, z in data[:3]:
            _gan_step(g, d, opt_g, opt_d, real, z)
    torch.cuda.current_stream().wait_stream(side)
    static_real, static_z = data[3][0].clone(), data[3][1].clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_losses = _gan_step(g, d, opt_g, opt_d, static_real, static_z)
    graph_losses = []
    for real, z in data[3:]:
        static_real.copy_(real)
        static_z.copy_(z)
        graph.replay()
        graph_losses.append(torch.stack(static_losses).clone())
    eager_losses = [torch.stack(_gan_step(*models["eager"], real, z)) for real, z in data]
    torch.cuda.synchronize()
    # The same kernels in the same order; the tolerance allows for cuDNN picking other
    # algorithms inside the capture, amplified over six GAN steps (as the example's --compare).
    torch.testing.assert_close(torch.stack(graph_losses), torch.stack(eager_losses[3:]), rtol=0, atol=1e-3)
    for m_graph, m_eager in zip(models["graph"][:2], models["eager"][:2]):
        for (name, a), b in zip(m_graph.state_dict().items(), m_eager.state_dict().values()):
            torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=1e-3, msg=name)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_memory_saving_discriminator_step_in_a_cuda_graph(backend):
    """convert(D, memory_saving=True) (BatchNorm+LeakyReLU written over the convolutions'
    outputs), with a channel whose weight is exactly 0: a discriminator step (forward,
    backward, Adam) reads nothing back to the host, so it is captured in a CUDA graph under
    torch.cuda.set_sync_debug_mode("error"), and replays match eager steps on the same data."""
    torch.manual_seed(0)
    _, D, _ = dcgan_models.build("dcgan", 100, 32, 3)
    index = next(i for i, m in enumerate(D) if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        D[index].weight[5] = 0.0
    models = {}
    for name in ("graph", "eager"):
        d = fusedgan.convert(copy.deepcopy(D), memory_saving=True, backend=backend).cuda()
        assert any(getattr(m, "inplace", False) for m in d.modules())
        models[name] = (d, torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999), capturable=True))
    loss = nn.BCEWithLogitsLoss()
    labels = torch.cat([torch.ones(16, 1), torch.zeros(16, 1)]).cuda()

    def step(d, optimizer, images):
        loss_d = loss(d(images).view(-1, 1), labels)
        optimizer.zero_grad(set_to_none=False)
        loss_d.backward()
        optimizer.step()
        return loss_d.detach()

    data = [torch.rand(32, 3, 32, 32, device="cuda") * 2 - 1 for _ in range(6)]
    d, optimizer = models["graph"]
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for images in data[:3]:
                step(d, optimizer, images)
        torch.cuda.current_stream().wait_stream(side)
        static_images = data[3].clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_loss = step(d, optimizer, static_images)
        graph_losses = []
        for images in data[3:]:
            static_images.copy_(images)
            graph.replay()
            graph_losses.append(static_loss.clone())
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    eager_losses = [step(*models["eager"], images) for images in data]
    torch.cuda.synchronize()
    torch.testing.assert_close(torch.stack(graph_losses), torch.stack(eager_losses[3:]), rtol=0, atol=1e-3)
    for (name, a), b in zip(models["graph"][0].state_dict().items(), models["eager"][0].state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=1e-3, msg=name)
    assert models["graph"][0][index].weight[5] != 0  # the zero weight got its gradient and moved


def _sanitizer():
    found = shutil.which("compute-sanitizer")
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return found or next((str(p) for p in [Path(home) / "bin" / "compute-sanitizer"] if p.exists()), None)


@pytest.mark.skipif(_sanitizer() is None, reason="compute-sanitizer not found")
@pytest.mark.skipif(why_unusable("cuda", "cuda") is not None, reason=f"cuda backend: {why_unusable('cuda', 'cuda')}")
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_compute_sanitizer(tool):
    script = Path(__file__).with_name("_sanitize_kernels.py")
    run = subprocess.run([_sanitizer(), "--tool", tool, "--error-exitcode", "3", sys.executable, str(script)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "ERROR SUMMARY: 0 errors" in run.stdout + run.stderr
