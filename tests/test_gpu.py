"""GPU-only checks, skipped without CUDA (benchmarks/run_gpu.sh runs them on the device):
tensors of more than 2^31 elements and grids of more than 65535 tiles, fp64 scalars kept
in fp64 (BatchNorm, GroupNorm), tensors on a device other than the current one, conv
tuning inside a CUDA graph capture, a whole DCGAN training step captured in a CUDA graph,
a memory-saving discriminator step captured under sync debug mode "error", and
compute-sanitizer's four tools over the kernels of both GPU backends."""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _helpers import rel_err
from torch import nn

import fusedgan
from fusedgan._backends import backend_module, why_unusable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import dcgan_models  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_BACKENDS = [b for b in ("cuda", "triton") if torch.cuda.is_available() and why_unusable(b, "cuda") is None]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", [(33, 2, 8192, 4096), (33, 1, 8192, 8192)], ids=str)
def test_more_than_2_31_elements(backend, shape):
    """2.2e9 bf16 elements, so offsets past 2^31 must be int64; (33, 1, 8192, 8192) has
    more than 2^31 rows in its one channel (row counts past 2^31 wrapped in int32). The
    values are held to bf16's default tolerances: the point is that every element, the
    last ones included, is read and written where it should be."""
    torch.cuda.empty_cache()
    assert torch.Size(shape).numel() > 2 ** 31
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    C = shape[1]
    layer = fusedgan.FusedBNReLU(C, momentum=1.0, backend=backend).cuda()  # momentum 1: running = batch stats
    stock = nn.BatchNorm2d(C, momentum=1.0).cuda()
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


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_grids_of_more_than_65535_tiles(backend, dtype):
    """(64, 64, 256, 256) channels_last: more tiles than a grid's axis 1 or 2 may hold
    (65535), in training forward, eval forward and backward, against stock."""
    torch.cuda.empty_cache()
    x = torch.randn(64, 64, 256, 256, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(x)
    layer = fusedgan.FusedBNLeakyReLU(64, 0.2, backend=backend).to("cuda", dtype)
    stock = nn.Sequential(nn.BatchNorm2d(64), nn.LeakyReLU(0.2)).to("cuda", dtype)
    # Two implementations rounding differently: an unwritten or misplaced element would be far off.
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-4
    for training in (True, False):
        layer.train(training)
        stock.train(training)
        x_fused, x_stock = x.clone().requires_grad_(), x.clone().requires_grad_()
        y, y_ref = layer(x_fused), stock(x_stock)
        assert rel_err(y, y_ref) < tolerance
        y.backward(grad)
        y_ref.backward(grad)
        del y, y_ref
        assert rel_err(x_fused.grad, x_stock.grad) < tolerance
    conv = fusedgan.FusedConvLeakyReLU(64, 64, 3, 1, 1, negative_slope=0.2, backend=backend).to("cuda", dtype)
    conv_stock = nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1), nn.LeakyReLU(0.2)).to("cuda", dtype)
    conv_stock[0].load_state_dict(conv.state_dict())
    x_fused, x_stock = x[:8].clone().requires_grad_(), x[:8].clone().requires_grad_()
    conv(x_fused).backward(grad[:8])
    conv_stock(x_stock).backward(grad[:8])
    assert rel_err(conv.bias.grad, conv_stock[0].bias.grad) < 1e-2  # TF32 or bf16 outputs: a few signs flip


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_fp64_keeps_eps_and_slope_in_fp64(backend):
    """eps and negative_slope of 0.1, which fp32 cannot represent (it rounds them by about
    1.5e-8 relative): with fp64 inputs the results match the float64 reference to 1e-12,
    as they can only if the kernels take both in fp64."""
    from fusedgan import reference

    torch.manual_seed(0)
    x = torch.randn(8, 16, 12, 12, device="cuda", dtype=torch.float64) * 0.3 + 0.1
    w, b = torch.rand(16, device="cuda", dtype=torch.float64) + 0.5, torch.randn(16, device="cuda", dtype=torch.float64)
    rm, rv = torch.randn(16, device="cuda", dtype=torch.float64), torch.rand(16, device="cuda", dtype=torch.float64)
    dy = torch.randn_like(x)
    ops = backend_module(backend)
    for training in (True, False):
        ours = ops.bn_act_forward(x, w, b, rm, rv, training, 0.1, 2, 0.1)
        ref = reference.bn_act_forward(x, w, b, rm, rv, training, 0.1, 2, 0.1)
        ours += ops.bn_act_backward(dy, x, w, b, ours[1], ours[2], training, 0.1, 2, 0.1)
        ref += reference.bn_act_backward(dy, x, w, b, ref[1], ref[2], training, 0.1, 2, 0.1)
        for actual, expected in zip(ours, ref):
            assert ((actual - expected).norm() / expected.norm()).item() < 1e-12
    y = torch.randn(8, 16, 12, 12, device="cuda", dtype=torch.float64)
    for actual, expected in zip(ops.leaky_relu_grad_bias(dy, y, 0.1, True), reference.leaky_relu_grad_bias(dy, y, 0.1,
                                                                                                           True)):
        assert ((actual - expected).norm() / expected.norm()).item() < 1e-12


GN_GPU_BACKENDS = [b for b in ("cuda", "triton") if torch.cuda.is_available() and
                   why_unusable(b, "cuda", "gn_act") is None]


@pytest.mark.parametrize("backend", GN_GPU_BACKENDS)
def test_group_norm_fp64_scalars_and_more_than_2_31_elements(backend):
    """GroupNorm/InstanceNorm: fp64 with eps and slope of 0.1 (which fp32 cannot represent)
    to 1e-12 of the float64 reference, NCHW and channels_last; then bf16 tensors of more
    than 2^31 elements (int64 offsets), channels_last with groups of two channels and NCHW
    with one group, whose first and last samples (statistics are per sample) match stock's
    on those samples alone."""
    from fusedgan import reference

    torch.manual_seed(0)
    ops = backend_module(backend)
    for shape, groups, channels_last in [((4, 16, 12, 12), 4, False), ((4, 16, 12, 12), 16, True), ((6, 32), 8, False),
                                         ((2, 8, 128, 130), 2, False)]:
        x = torch.randn(shape, device="cuda", dtype=torch.float64) * 0.3 + 0.1
        x = x.to(memory_format=torch.channels_last) if channels_last else x
        C = shape[1]
        w, b = torch.rand(C, device="cuda", dtype=torch.float64) + 0.5, torch.randn(C, device="cuda",
                                                                                     dtype=torch.float64)
        dy = torch.randn_like(x)
        ours = ops.gn_act_forward(x, w, b, groups, 0.1, 2, 0.1)
        ref = reference.gn_act_forward(x, w, b, groups, 0.1, 2, 0.1)
        ours += ops.gn_act_backward(dy, x, w, b, ours[1], ours[2], groups, 0.1, 2, 0.1)
        ref += reference.gn_act_backward(dy, x, w, b, ref[1], ref[2], groups, 0.1, 2, 0.1)
        for actual, expected in zip(ours, ref):
            assert ((actual - expected).norm() / expected.norm()).item() < 1e-12
    for shape, groups, memory_format in [((16, 64, 2048, 1024), 32, torch.channels_last),
                                         ((33, 2, 8192, 4096), 1, torch.contiguous_format)]:
        torch.cuda.empty_cache()
        x = torch.randn(shape, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=memory_format)
        assert x.numel() >= 2 ** 31
        layer = fusedgan.FusedGroupNormLeakyReLU(groups, shape[1], 0.2, backend=backend).cuda()
        x.requires_grad_(True)
        y = layer(x)
        y.backward(torch.ones_like(y))
        for i in (0, -1):
            x_i = x[i:i + 1].detach().clone().requires_grad_()
            y_i = torch.nn.functional.leaky_relu(torch.nn.functional.group_norm(x_i, groups), 0.2)
            y_i.backward(torch.ones_like(y_i))
            torch.testing.assert_close(y[i:i + 1], y_i)
            torch.testing.assert_close(x.grad[i:i + 1], x_i.grad)
        del x, y


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_tensors_on_another_device_than_the_current_one(backend):
    """Layers on cuda:1 while cuda:0 is current (and busy on its own stream): every launch
    runs on the tensors' device and its current stream."""
    torch.manual_seed(0)
    fused = nn.Sequential(fusedgan.FusedConvLeakyReLU(3, 8, 4, 2, 1, negative_slope=0.2, backend=backend),
                          nn.Conv2d(8, 16, 3), fusedgan.FusedBNLeakyReLU(16, 0.2, backend=backend))
    stock = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16),
                          nn.LeakyReLU(0.2))
    stock[0].load_state_dict(fused[0].state_dict())
    stock[2].load_state_dict(fused[1].state_dict())
    fused, stock = fused.to("cuda:1"), stock.to("cuda:1")
    x = torch.randn(16, 3, 64, 64, device="cuda:1")
    with torch.cuda.device(0):
        busy = torch.randn(4096, 4096, device="cuda:0")
        for _ in range(4):
            busy = busy @ busy / 64
        for training in (True, False):
            fused.train(training)
            stock.train(training)
            x_fused, x_stock = x.clone().requires_grad_(), x.clone().requires_grad_()
            y = fused(x_fused)
            y.backward(torch.ones_like(y))
            y_ref = stock(x_stock)
            y_ref.backward(torch.ones_like(y_ref))
            assert y.device == torch.device("cuda:1")
            assert rel_err(y, y_ref) < 1e-2 and rel_err(x_fused.grad, x_stock.grad) < 1e-2  # TF32 convolutions
    assert rel_err(fused[2].running_var, stock[3].running_var) < 1e-2


@pytest.mark.skipif("triton" not in GPU_BACKENDS, reason="Triton cannot run here")
def test_conv_first_met_inside_a_cuda_graph_capture():
    """A conv shape first seen inside a capture takes the first tile config untuned (the
    tuner's benchmark would synchronise and break the capture), and is tuned when met eagerly."""
    from fusedgan.triton import conv_leaky_relu as triton_conv

    torch.manual_seed(0)
    conv = fusedgan.FusedConvLeakyReLU(5, 24, 3, 1, 1, negative_slope=0.2, backend="triton").cuda()
    with torch.no_grad():
        # Warm-up on another image size (another tune key) with the same argument
        # specialisations: the kernel's binaries are loaded before the capture.
        conv(torch.randn(3, 5, 39, 43, device="cuda"))
        x = torch.randn(3, 5, 37, 41, device="cuda")
        y_ref = torch.nn.functional.leaky_relu(
            torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), 1, 1), 0.2)
        key = triton_conv.tune_key(x, conv.weight, conv.bias, 1, 1, 1)
        assert key not in triton_conv._TUNED
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = conv(x)
        graph.replay()
        assert rel_err(y, y_ref) < 1e-3  # TF32, as in test_conv_leaky_relu.py
        assert key not in triton_conv._TUNED
        assert rel_err(conv(x), y_ref) < 1e-3
        assert key in triton_conv._TUNED


def _gan_step(G, D, opt_g, opt_d, real, z):
    """The example's step, its gradients kept between steps (a captured graph reuses them)."""
    return dcgan_models.gan_step(G, D, opt_g, opt_d, real, z, set_to_none=False)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("batch,img_size", [(16, 32), (128, 64)], ids=["one-pass", "tiled"])
def test_dcgan_training_step_in_a_cuda_graph(backend, batch, img_size):
    """Capture G and D forward, backward and Adam steps in one CUDA graph (which fails on
    any host synchronisation), replay it, and match eager steps on the same data. At batch
    16 and 32x32 every BatchNorm takes the one-pass path; at batch 128 and 64x64 the large
    layers take the split (tiled) path with its merge kernels."""
    torch.manual_seed(0)
    G, D, noise_shape = dcgan_models.build("dcgan", 100, img_size, 3)
    models = {}
    for name in ("graph", "eager"):
        g, d = (fusedgan.convert(copy.deepcopy(m), backend=backend).cuda() for m in (G, D))  # own parameters
        opts = [torch.optim.Adam(m.parameters(), 2e-4, betas=(0.5, 0.999), capturable=True) for m in (g, d)]
        models[name] = (g, d, *opts)
    data = [(torch.rand(batch, 3, img_size, img_size, device="cuda") * 2 - 1,
             torch.randn(batch, *noise_shape, device="cuda")) for _ in range(6)]
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
