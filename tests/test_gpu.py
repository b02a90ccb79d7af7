"""GPU-only checks, skipped without CUDA (benchmarks/run_gpu.sh runs them on the device):
a tensor of more than 2^31 elements, a whole DCGAN training step captured in a CUDA
graph, and compute-sanitizer's four tools over the kernels of both GPU backends."""

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


def _sanitizer():
    found = shutil.which("compute-sanitizer")
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return found or next((str(p) for p in [Path(home) / "bin" / "compute-sanitizer"] if p.exists()), None)


@pytest.mark.skipif(_sanitizer() is None, reason="compute-sanitizer not found")
def test_compute_sanitizer():
    """memcheck (out-of-bounds and misaligned accesses), racecheck (shared-memory hazards),
    initcheck (reads of memory never written) and synccheck (barrier misuse) over small
    launches of every kernel of both GPU backends. The caching allocator is off, so memcheck
    sees each allocation's own bounds. The four tools run side by side (one GPU is enough)."""
    script = Path(__file__).with_name("_sanitize_kernels.py")
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    runs = {tool: subprocess.Popen([_sanitizer(), "--tool", tool, "--error-exitcode", "3", sys.executable,
                                    str(script), *GPU_BACKENDS], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
            for tool in ("memcheck", "racecheck", "initcheck", "synccheck")}
    for tool, run in runs.items():
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0 and "ERROR SUMMARY: 0 errors" in output, f"{tool}:\n{output[-4000:]}"
        assert f"ran every kernel of {' '.join(GPU_BACKENDS)}" in output, f"{tool}:\n{output[-2000:]}"
