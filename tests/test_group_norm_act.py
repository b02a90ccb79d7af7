"""FusedGroupNorm{ReLU,LeakyReLU} and FusedInstanceNorm{ReLU,LeakyReLU} against the stock
layers they replace: outputs, every gradient and the running statistics, on every backend
that has GroupNorm kernels, odd shapes, every dtype and layout.

Tolerance (docs/numerics.md): against stock in float64, the fused layer's relative error is
at most twice stock's own error at the same precision, and never more than that or 1e-5
for fp32 (1e-12 for fp64), whichever is larger. Stock's own error scales with the
cancellation in dweight and dbias (sums that can nearly vanish) and in the input gradient
(a difference of group means), so the rule stays a relative error where nothing cancels and
follows the conditioning where something does.
"""

import copy
import warnings

import pytest
import torch
from _helpers import GN_BACKENDS, rel_err
from torch import nn

import fusedgan
from fusedgan import functional, reference
from fusedgan._backends import backend_module
from fusedgan._layout import channel_view

FLOOR = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-3, torch.bfloat16: 1e-2}


@pytest.fixture(params=GN_BACKENDS, ids=[f"{d}-{b}" for d, b in GN_BACKENDS])
def gn_backend(request):
    return request.param


def _activation(name, slope):
    return nn.ReLU() if name == "relu" else nn.LeakyReLU(slope)


def _randomized(module):
    with torch.no_grad():
        if module.weight is not None:
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.5, 0.5)
        if getattr(module, "running_mean", None) is not None:
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2)
    return module


def _step(model, x, grad):
    """(output, input gradient, parameter gradients) of one forward and backward."""
    x = x.detach().requires_grad_()
    y = model(x)
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(y, [x, *params], grad.to(y.dtype))
    return [y, *grads]


def stock_pair(stock, dtype):
    """(stock in float64: the reference, stock at the test's precision: its own error). For
    fp16/bf16 inputs the parameters stay fp32, as under autocast and in the fused layers."""
    low = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return copy.deepcopy(stock).double(), copy.deepcopy(stock).to(low)


def assert_steps(fused, reference, stock_low, shape, dtype, device, channels_last=False, steps=2):
    """Each step's output and gradients, and the buffers after them, against the reference.
    Outputs keep a channels_last input's layout, except on the "torch" backend, which is
    the stock composition and returns stock's layout (stock InstanceNorm's is contiguous)."""
    for step in range(steps):
        x = torch.randn(shape, dtype=torch.float64, device=device) * 2 + 0.5
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
        grad = torch.randn(shape, dtype=torch.float64, device=device).to(dtype)
        x_low = x.to(dtype)
        expected = _step(reference, x_low.double(), grad.double())
        theirs = _step(stock_low, x_low, grad)
        ours = _step(fused, x_low, grad)
        assert ours[0].dtype == dtype and ours[0].shape == expected[0].shape
        if channels_last and fused.backend != "torch":
            assert ours[0].is_contiguous(memory_format=torch.channels_last if x.dim() == 4 else
                                         torch.channels_last_3d)
        for name, o, t, e in zip(["output", "grad input", "grad weight", "grad bias"], ours, theirs, expected):
            assert torch.isfinite(o).all(), f"step {step} {name}: non-finite (an unwritten element?)"
            error, stock_error = rel_err(o, e), rel_err(t, e)
            allowed = max(2 * stock_error + 1e-6, FLOOR[dtype])
            assert error <= allowed, f"step {step} {name}: {error:.2e} > {allowed:.2e} (stock {stock_error:.2e})"
    expected_buffers = dict(reference.named_buffers())
    for name, buffer in fused.named_buffers():
        if buffer.is_floating_point():
            assert rel_err(buffer, expected_buffers[f"0.{name}"]) < FLOOR[torch.float32], name
        else:
            assert torch.equal(buffer, expected_buffers[f"0.{name}"]), name


FusedGN = {"relu": fusedgan.FusedGroupNormReLU,
           "leaky_relu": lambda g, c, **kw: fusedgan.FusedGroupNormLeakyReLU(g, c, 0.2, **kw)}
FusedIN = {"relu": fusedgan.FusedInstanceNormReLU,
           "leaky_relu": lambda c, **kw: fusedgan.FusedInstanceNormLeakyReLU(c, 0.2, **kw)}


GN_CASES = [  # (shape, groups)
    ((3, 6, 5, 7), 2), ((2, 6, 5, 7), 6), ((2, 6, 5, 7), 1), ((1, 16, 33, 17), 4), ((4, 6), 3), ((2, 4, 9), 2),
    ((2, 4, 3, 5, 3), 2), ((5, 3, 1, 1), 1),
]


@pytest.mark.parametrize("shape,groups", GN_CASES, ids=[f"{'x'.join(map(str, s))}-g{g}" for s, g in GN_CASES])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_group_norm_matches_stock(gn_backend, shape, groups, activation, dtype):
    device, backend = gn_backend
    C = shape[1]
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # fp32 parameters for fp16/bf16
    fused = FusedGN[activation](groups, C, backend=backend).to(device, param_dtype)
    _randomized(fused)
    stock = nn.Sequential(nn.GroupNorm(groups, C), _activation(activation, 0.2)).to(device)
    stock[0].load_state_dict(fused.state_dict())
    reference, stock_low = stock_pair(stock, dtype)
    for channels_last in (False, True) if len(shape) in (4, 5) else (False,):
        assert_steps(fused, reference, stock_low, shape, dtype, device, channels_last)


@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("track", [False, True], ids=["batch-stats", "tracked"])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
@pytest.mark.parametrize("shape", [(1, 8, 16, 16), (3, 5, 7, 6), (2, 4, 11), (2, 3, 4, 3, 5)],
                         ids=lambda s: "x".join(map(str, s)))
def test_instance_norm_matches_stock_train_then_eval(gn_backend, affine, track, activation, shape):
    device, backend = gn_backend
    C, rank = shape[1], len(shape)
    stock_cls = {3: nn.InstanceNorm1d, 4: nn.InstanceNorm2d, 5: nn.InstanceNorm3d}[rank]
    fused = FusedIN[activation](C, affine=affine, track_running_stats=track, backend=backend).to(device)
    _randomized(fused)
    stock = nn.Sequential(stock_cls(C, affine=affine, track_running_stats=track), _activation(activation, 0.2))
    stock = stock.to(device)
    stock[0].load_state_dict(fused.state_dict())
    reference, stock_low = stock_pair(stock, torch.float32)
    for training in (True, False):
        for model in (fused, reference, stock_low):
            model.train(training)
        channels_last = rank >= 4 and not training
        assert_steps(fused, reference, stock_low, shape, torch.float32, device, channels_last, 2 if training else 1)


def test_instance_norm_modes_and_inputs_as_stock():
    # Unbatched input with spatial_dims (as convert sets it), and stock's channel-mismatch rules.
    fused = fusedgan.FusedInstanceNormReLU(3, spatial_dims=2)
    stock = nn.Sequential(nn.InstanceNorm2d(3), nn.ReLU())
    x = torch.randn(3, 6, 5)
    torch.testing.assert_close(fused(x), stock(x))
    with pytest.raises(ValueError, match="expected 3D or 4D input"):
        fused(torch.randn(2, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="expected 3D to 5D input"):
        fusedgan.FusedInstanceNormReLU(3)(torch.randn(2, 3))
    with pytest.raises(ValueError, match="to match num_features"):
        fusedgan.FusedInstanceNormReLU(3, affine=True)(torch.randn(2, 4, 5, 5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fusedgan.FusedInstanceNormReLU(3)(torch.randn(2, 4, 5, 5))
    assert any("num_features" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="Expected more than 1 spatial element when training"):
        fusedgan.FusedInstanceNormReLU(3)(torch.randn(2, 3, 1, 1))
    layer = fusedgan.FusedInstanceNormLeakyReLU(3, 0.2, affine=True, track_running_stats=True)
    assert isinstance(layer, nn.modules.instancenorm._InstanceNorm)
    assert isinstance(fusedgan.FusedGroupNormReLU(1, 3), nn.GroupNorm)
    assert list(layer.state_dict()) == list(nn.InstanceNorm2d(3, affine=True, track_running_stats=True).state_dict())
    assert "negative_slope=0.2" in repr(layer)


def test_bad_arguments_name_the_argument():
    x = torch.randn(2, 6, 4, 4)
    with pytest.raises(ValueError, match="num_groups must be a positive int dividing the channels"):
        functional.group_norm_act(x, 4)
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\)"):
        functional.group_norm_act(x, 2, torch.ones(5))
    with pytest.raises(TypeError, match="input must be float16, bfloat16, float32 or float64"):
        functional.group_norm_act(x.long(), 2)
    with pytest.raises(ValueError, match="activation must be one of"):
        functional.group_norm_act(x, 2, activation="gelu")
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):  # as stock GroupNorm
        functional.group_norm_act(torch.randn(1, 2), 2)
    with pytest.raises(ValueError, match="running_mean and running_var are required when use_input_stats=False"):
        functional.instance_norm_act(x, use_input_stats=False)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        functional.instance_norm_act(x, eps=-1.0)


@pytest.mark.parametrize("device,backend", [(d, b) for d, b in GN_BACKENDS if b != "torch"])
def test_results_are_bitwise_repeatable_across_thread_counts(device, backend):
    """The fused kernels sum in a fixed order (the "torch" backend is stock's own kernels,
    whose sums depend on the thread count)."""
    x = torch.randn(2, 8, 33, 35, device=device)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            for memory_format in (torch.contiguous_format, torch.channels_last):
                xi = x.contiguous(memory_format=memory_format).requires_grad_()
                y = functional.group_norm_act(xi, 4, activation="leaky_relu", negative_slope=0.2, backend=backend)
                (dx,) = torch.autograd.grad(y, xi, torch.ones_like(y))
                results.append((memory_format, y, dx))
    finally:
        torch.set_num_threads(threads)
    for memory_format, y, dx in results:
        first = next(r for r in results if r[0] == memory_format)
        assert torch.equal(y, first[1]) and torch.equal(dx, first[2])


TRITON_DEVICES = [d for d, b in GN_BACKENDS if b == "triton"]
# (shape, groups, layout): groups of 3 channels in position tiles and splits; 32 channels
# a group in channel blocks; channels_last groups of two side by side; (N, C) with samples
# sharing a program (and a partial last block); views read in place or copied.
SPLIT_CASES = [((2, 6, 7, 9), 2, "nchw"), ((1, 32, 6), 1, "ncl"), ((2, 16, 5, 7), 8, "channels_last"),
               ((37, 12), 3, "nc"), ((2, 6, 5, 7), 6, "channel_slice"), ((2, 4, 9, 10), 2, "transposed")]


def _triton_input(shape, layout, dtype, device):
    x = (torch.randn(shape, dtype=torch.float64, device=device) * 2 + 0.5).to(dtype)
    if layout == "channels_last":
        return x.to(memory_format=torch.channels_last)
    if layout == "channel_slice":
        return torch.cat([x, x], 1)[:, ::2]
    return x.transpose(2, 3).contiguous().transpose(2, 3) if layout == "transposed" else x


@pytest.mark.skipif(not TRITON_DEVICES, reason="Triton cannot run GroupNorm here")
@pytest.mark.parametrize("shape,groups,layout", SPLIT_CASES, ids=[f"{c[2]}-g{c[1]}" for c in SPLIT_CASES])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_triton_split_path(monkeypatch, shape, groups, layout, dtype):
    """The split path on small shapes, by lowering the plan's one-pass budget (to none) and
    its tile (to 64 elements): several position tiles, splits, channel blocks of a group,
    samples sharing a program; partial statistics and sums merged by the second kernels.
    Against the reference on the same input (also with the gradient of y.sum(), an
    expanded scalar), and bitwise the same run after run."""
    from fusedgan.triton import group_norm_act as triton_gn

    monkeypatch.setattr(triton_gn, "ONE_PASS_BUDGET", {False: (0, 0), True: (0, 0)})
    monkeypatch.setattr(triton_gn, "SPLIT_TILE", 64)
    device = TRITON_DEVICES[0]
    x = _triton_input(shape, layout, dtype, device)
    C = shape[1]
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    w, b = torch.rand(C, dtype=param_dtype, device=device) + 0.5, torch.randn(C, dtype=param_dtype, device=device)
    read, _, strides = channel_view(x)
    plan = triton_gn._plan(*channel_view(x)[1], groups, strides, True, triton_gn.acc_dtype(dtype)[0], x.device)
    assert not plan.one_pass and (plan.n_parts > 1 or plan.block_n > 1)
    floor = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    for repeat, dy in ((2, torch.randn(shape, dtype=torch.float64, device=device).to(dtype)),
                       (1, torch.ones((), dtype=dtype, device=device).expand(shape))):
        runs = []
        for _ in range(repeat):
            y, mean, var = triton_gn.gn_act_forward(x, w, b, groups, 1e-5, 2, 0.2)
            runs.append([y, mean, var, *triton_gn.gn_act_backward(dy, x, w, b, mean, var, groups, 1e-5, 2, 0.2)])
        assert all(torch.equal(first, again) for first, again in zip(runs[0], runs[-1]))
        y_ref, mean_ref, var_ref = reference.gn_act_forward(x.double(), w.double(), b.double(), groups, 1e-5, 2, 0.2)
        expected = [y_ref, mean_ref, var_ref, *reference.gn_act_backward(
            dy.double(), x.double(), w.double(), b.double(), mean_ref, var_ref, groups, 1e-5, 2, 0.2)]
        for name, ours, theirs in zip(["y", "mean", "var", "dx", "dweight", "dbias"], runs[0], expected):
            # bf16 rounds y and dx; the statistics and dweight, dbias stay fp32.
            tolerance = floor if name in ("y", "dx") or dtype != torch.bfloat16 else 1e-5
            assert rel_err(ours, theirs) <= tolerance, name
        assert runs[0][0].stride() == torch.empty_like(read).stride()


@pytest.mark.parametrize("shape, groups, channels_last", [((2, 8, 16, 16), 8, False), ((2, 8, 16, 16), 2, False),
                                                          ((1, 2, 128, 128), 1, False), ((2, 8, 16, 16), 2, True)])
def test_group_statistics_when_the_mean_dwarfs_the_spread(gn_backend, shape, groups, channels_last):
    """x = 1e4 + N(0, 1) in fp32: each (sample, group)'s mean and variance within the fp32
    rule (1e-5) of float64's, as test_batch_norm_act's test of the same name; (1, 2, 128,
    128) takes the CUDA kernels' tiled splits and their merge."""
    device, backend = gn_backend
    torch.manual_seed(0)
    x = (torch.randn(shape, dtype=torch.float64, device=device) + 1e4).float()
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    C = shape[1]
    ones, zeros = torch.ones(C, device=device), torch.zeros(C, device=device)
    _, mean, var = backend_module(backend).gn_act_forward(x, ones, zeros, groups, 1e-5, 0, 0.0)
    ref_var, ref_mean = torch.var_mean(x.double().reshape(shape[0], groups, -1), dim=2, correction=0)
    assert rel_err(mean.reshape(ref_mean.shape), ref_mean) < FLOOR[torch.float32]
    assert ((var.double().reshape(ref_var.shape) - ref_var).abs() / ref_var).max().item() < FLOOR[torch.float32]
