"""FusedConvLeakyReLU against stock nn.Conv2d + nn.LeakyReLU.

Tolerances (docs/numerics.md): fp32 against a float64 reference, relative error under 1e-5 with
TF32 off, 1e-3 with TF32 on (GPU, as torch.backends.cudnn.allow_tf32 allows); fp16/bf16
at most twice stock's own error at that precision (plus 1e-6).
"""

import pytest
import torch
import torch.nn.functional as F
from _helpers import DEVICE_BACKENDS, rel_err
from torch import nn

import fusedgan
from fusedgan import FusedConvLeakyReLU
from fusedgan.functional import conv2d_leaky_relu

# (cin, cout, kernel, stride, padding, dilation, batch, H, W, bias)
DCGAN_SHAPES = [
    (3, 64, 4, 2, 1, 1, 7, 32, 32, True),
    (3, 64, 4, 2, 1, 1, 64, 16, 16, True),
    (64, 128, 4, 2, 1, 1, 7, 16, 16, True),
    (128, 256, 4, 2, 1, 1, 1, 8, 8, True),
    (256, 512, 4, 2, 1, 1, 1, 4, 4, False),
]
ODD_SHAPES = [
    (5, 7, 1, 1, 0, 1, 3, 9, 11, True),     # 1x1, non-square input
    (1, 3, 3, 1, 1, 1, 2, 8, 8, True),      # Cin = 1
    (6, 5, 3, 3, 2, 1, 2, 13, 10, False),   # stride 3, padding 2, no bias
    (4, 9, 5, 2, 2, 1, 2, 11, 12, True),    # kernel 5
    (3, 6, 3, 1, 2, 2, 2, 10, 9, True),     # dilation 2
    (7, 3, (3, 1), (1, 2), (1, 0), 1, 2, 8, 9, True),  # rectangular kernel and strides
    (3, 8, 3, 1, 1, 1, 2, 48, 48, True),    # 4608 output positions a channel: dbias over row splits
]


def make_pair(shape, slope, backend, device, dtype=torch.float64, **kwargs):
    cin, cout, k, s, p, d, *_rest, bias = shape
    fused = FusedConvLeakyReLU(cin, cout, k, s, p, d, bias=bias, negative_slope=slope, backend=backend, **kwargs)
    stock = nn.Sequential(nn.Conv2d(cin, cout, k, s, p, d, bias=bias, **kwargs), nn.LeakyReLU(slope))
    stock[0].load_state_dict(fused.state_dict())
    return fused.to(device), stock.to(device=device, dtype=dtype)


def run(module, x, grad):
    x = x.detach().requires_grad_()
    y = module(x)
    y.backward(grad)
    conv = module[0] if isinstance(module, nn.Sequential) else module
    grads = [("output", y), ("grad input", x.grad), ("grad weight", conv.weight.grad)]
    if conv.bias is not None:
        grads.append(("grad bias", conv.bias.grad))
    return y, grads


def fp32_tolerance(device):
    return 1e-3 if device == "cuda" and torch.backends.cudnn.allow_tf32 else 1e-5


@pytest.mark.parametrize("shape", DCGAN_SHAPES + ODD_SHAPES, ids=str)
@pytest.mark.parametrize("slope", [0.2, 0.0], ids=["leaky0.2", "relu"])
def test_matches_stock_fp32(device_backend, shape, slope):
    device, backend = device_backend
    fused, stock = make_pair(shape, slope, backend, device)
    n, h, w = shape[6:9]
    x = torch.randn(n, shape[0], h, w, device=device)
    y_ref, theirs = run(stock, x.double(), grad := torch.randn(stock(x.double()).shape, device=device,
                                                                dtype=torch.float64))
    y, ours = run(fused, x, grad.float())
    assert y.dtype == torch.float32 and y.shape == y_ref.shape
    for (what, actual), (_, expected) in zip(ours, theirs):
        assert torch.isfinite(actual).all(), f"{what}: non-finite (an unwritten element?)"
        assert rel_err(actual, expected) < fp32_tolerance(device), f"{what}: {rel_err(actual, expected):.2e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_low_precision_within_twice_stock_error(device_backend, dtype, channels_last):
    device, backend = device_backend
    shape = (16, 32, 4, 2, 1, 1, 4, 16, 16, True)
    fused, reference = make_pair(shape, 0.2, backend, device)
    stock_low = make_pair(shape, 0.2, backend, device, dtype=dtype)[1]
    stock_low[0].load_state_dict(fused.state_dict())
    fused = fused.to(dtype)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 16, 16, 16, device=device).to(dtype).contiguous(memory_format=memory_format)
    _, theirs_fp64 = run(reference, x.double(), grad := torch.randn(4, 32, 8, 8, device=device, dtype=torch.float64))
    y, ours = run(fused, x, grad.to(dtype))
    _, stock = run(stock_low, x, grad.to(dtype))
    assert y.dtype == dtype
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    for (what, actual), (_, stock_value), (_, expected) in zip(ours, stock, theirs_fp64):
        err, stock_err = rel_err(actual, expected), rel_err(stock_value, expected)
        assert err <= 2 * stock_err + 1e-6, f"{what}: error {err:.2e}, stock's {stock_err:.2e}"


def test_channels_last_fp32(device_backend):
    device, backend = device_backend
    shape = (5, 7, 3, 2, 1, 1, 3, 12, 10, True)
    fused, stock = make_pair(shape, 0.2, backend, device)
    x = torch.randn(3, 5, 12, 10, device=device).contiguous(memory_format=torch.channels_last)
    y_ref, theirs = run(stock, x.double(), grad := torch.randn(3, 7, 6, 5, device=device, dtype=torch.float64))
    y, ours = run(fused, x, grad.float().contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    for (what, actual), (_, expected) in zip(ours, theirs):
        assert rel_err(actual, expected) < fp32_tolerance(device), what


@pytest.mark.parametrize("variant", ["groups", "reflect", "circular", "same"])
def test_groups_and_padding_modes(device_backend, variant):
    device, backend = device_backend
    kwargs = {"groups": dict(groups=2), "reflect": dict(padding_mode="reflect"),
              "circular": dict(padding_mode="circular"), "same": dict(padding="same")}[variant]
    padding = kwargs.pop("padding", 1)
    fused = FusedConvLeakyReLU(4, 6, 3, 1, padding, negative_slope=0.2, backend=backend, **kwargs).to(device)
    stock = nn.Sequential(nn.Conv2d(4, 6, 3, 1, padding, **kwargs), nn.LeakyReLU(0.2))
    stock[0].load_state_dict(fused.state_dict())
    stock = stock.to(device=device, dtype=torch.float64)
    x = torch.randn(2, 4, 7, 8, device=device)
    y_ref, theirs = run(stock, x.double(), grad := torch.randn(stock(x.double()).shape, device=device,
                                                                dtype=torch.float64))
    _, ours = run(fused, x, grad.float())
    for (what, actual), (_, expected) in zip(ours, theirs):
        assert rel_err(actual, expected) < fp32_tolerance(device), what


def test_strided_weight_and_bias(device_backend):
    """The bias as a stride-2 view and the weight as a slice along the output channels,
    read by their strides (the Triton kernel used to index the bias as if contiguous)."""
    device, backend = device_backend
    w_base = torch.randn(12, 4, 3, 3, device=device, requires_grad=True)
    b_base = torch.randn(12, device=device, requires_grad=True)
    x = torch.randn(2, 4, 9, 8, device=device)
    x_test, x_ref = x.clone().requires_grad_(), x.double().requires_grad_()
    w_ref, b_ref = w_base.detach()[::2].double().requires_grad_(), b_base.detach()[::2].double().requires_grad_()
    y = conv2d_leaky_relu(x_test, w_base[::2], b_base[::2], 1, 1, 1, 1, 0.2, backend=backend)
    y_ref = torch.nn.functional.leaky_relu(torch.nn.functional.conv2d(x_ref, w_ref, b_ref, 1, 1), 0.2)
    grad = torch.randn_like(y_ref)
    y.backward(grad.float())
    y_ref.backward(grad)
    for actual, expected in [(y, y_ref), (x_test.grad, x_ref.grad), (w_base.grad[::2], w_ref.grad),
                             (b_base.grad[::2], b_ref.grad)]:
        assert rel_err(actual, expected) < fp32_tolerance(device)


def test_gradient_penalty_double_backward(device_backend):
    """R1 / WGAN-GP: differentiate through the discriminator twice."""
    device, backend = device_backend
    torch.manual_seed(0)
    fused = nn.Sequential(FusedConvLeakyReLU(3, 8, 4, 2, 1, negative_slope=0.2, backend=backend),
                          FusedConvLeakyReLU(8, 4, 3, 1, 1, negative_slope=0.0, backend=backend)).to(device)
    stock = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 4, 3, 1, 1), nn.ReLU())
    stock[0].load_state_dict(fused[0].state_dict())
    stock[2].load_state_dict(fused[1].state_dict())
    stock = stock.to(device=device, dtype=torch.float64)
    x = torch.randn(2, 3, 8, 8, device=device)

    def penalty(model, x):
        x = x.detach().requires_grad_()
        (grad,) = torch.autograd.grad(model(x).square().sum(), x, create_graph=True)
        loss = grad.square().sum()
        loss.backward()
        return [loss] + [p.grad for p in model.parameters()]

    for actual, expected in zip(penalty(fused, x), penalty(stock, x.double())):
        assert rel_err(actual, expected) < fp32_tolerance(device)


def test_float64_gradcheck(device_backend):
    device, backend = device_backend
    x = torch.randn(2, 2, 5, 5, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, device=device, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b):
        return conv2d_leaky_relu(x, w, b, 2, 1, 1, 1, 0.2, backend=backend)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_is_a_conv2d_and_state_dict_exchange():
    fused = FusedConvLeakyReLU(3, 8, 4, 2, 1, negative_slope=0.2)
    assert isinstance(fused, nn.Conv2d)
    stock = nn.Conv2d(3, 8, 4, 2, 1)
    fused.load_state_dict(stock.state_dict())
    stock.load_state_dict(fused.state_dict())
    assert set(fused.state_dict()) == {"weight", "bias"}
    assert "negative_slope=0.2" in repr(fused)
    fusedgan.Conv2dLeakyReLUFunction  # exported  # noqa: B018


@pytest.mark.parametrize("backend", sorted({b for d, b in DEVICE_BACKENDS if d == "cpu"}))
def test_bad_inputs(backend):
    """The same messages from the C++ entry op's checks and from the Python ones."""
    def conv(*args, **kwargs):
        return conv2d_leaky_relu(*args, **kwargs, backend=backend)

    w = torch.randn(4, 3, 3, 3)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="weight expects 3 input channels"):
        conv(torch.randn(2, 5, 8, 8), w)
    with pytest.raises(ValueError, match=r"input must have shape \(N, C, H, W\)"):
        conv(torch.randn(3, 8, 8), w)
    with pytest.raises(ValueError, match=r"weight must be a 4D tensor"):
        conv(x, w[0])
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv(torch.randn(2, 3, 2, 2), w)
    with pytest.raises(TypeError, match="input must be float16, bfloat16, float32 or float64"):
        conv(torch.zeros(2, 3, 8, 8, dtype=torch.int64), w)
    with pytest.raises(TypeError, match="weight must have the input's dtype"):
        conv(x, w.double())
    with pytest.raises(ValueError, match="weight is on meta but input is on cpu"):
        conv(x, w.to("meta"))
    with pytest.raises(ValueError, match="negative_slope must be >= 0"):
        conv(x, w, negative_slope=-0.1)
    with pytest.raises(ValueError, match="negative_slope must be a finite number"):
        conv(x, w, negative_slope=float("inf"))
    with pytest.raises(ValueError, match="negative_slope must be >= 0"):
        FusedConvLeakyReLU(3, 4, 3, negative_slope=-1.0)
    with pytest.raises(ValueError, match="bias must have shape"):
        conv(x, w, torch.zeros(5))
    with pytest.raises(ValueError, match="groups must be a positive int dividing"):
        conv(x, w, groups=2)
    with pytest.raises(ValueError, match="stride and dilation must be >= 1 and padding >= 0"):
        conv(x, w, stride=0)
    # Each of stride, padding and dilation is named when it is neither an int nor two ints
    # (bools are not ints here, as in stock's conv2d).
    for name in ("stride", "padding", "dilation"):
        for value in (True, (1,), (1, 1, 1), (1.0, 2), (True, 1), "1"):
            with pytest.raises(ValueError, match=f"{name} must be an int or a pair of ints"):
                conv(x, w, **{name: value})
    with pytest.raises(ValueError, match="backend must be one of"):
        conv2d_leaky_relu(x, w, backend=["cpu"])  # unhashable: still the error that names the argument


@pytest.mark.parametrize("backend", sorted({b for d, b in DEVICE_BACKENDS if d == "cpu"}))
def test_module_attributes_set_by_hand(backend):
    """The module calls the entry op itself only with nn.Conv2d's own pairs: stride, padding,
    dilation and groups that a user sets to other forms take the functional, which accepts
    what it accepts (ints, lists) and names what it refuses, on every backend alike."""
    torch.manual_seed(0)
    layer = FusedConvLeakyReLU(3, 4, 3, padding=1, negative_slope=0.2, backend=backend)
    x = torch.randn(2, 3, 8, 8)
    expected = layer(x)
    for name, value in (("stride", 1), ("dilation", [1, 1]), ("padding", 1)):
        setattr(layer, name, value)
        assert torch.equal(layer(x), expected), name
    for name, value in (("stride", (1, 1, 1)), ("padding", (1,)), ("dilation", (1.0, 1))):
        setattr(layer, name, value)
        with pytest.raises(ValueError, match=f"{name} must be an int or a pair of ints"):
            layer(x)
        setattr(layer, name, (1, 1))
    layer.groups = 1.0
    with pytest.raises(ValueError, match="groups must be a positive int"):
        layer(x)


def test_autocast_matches_stock(device_backend):
    device, backend = device_backend
    dtype = torch.bfloat16
    fused, stock = make_pair((4, 6, 3, 1, 1, 1, 2, 8, 8, True), 0.2, backend, device, dtype=torch.float32)
    x = torch.randn(2, 4, 8, 8, device=device)
    with torch.autocast(device, dtype=dtype):
        y, y_ref = fused(x), stock(x)
    assert y.dtype == y_ref.dtype == dtype
    assert rel_err(y, y_ref) < 1e-2  # both bf16: a few bf16 roundings apart at most
    y.float().sum().backward()
    assert fused.weight.grad.dtype == torch.float32


def test_autocast_of_another_device_leaves_the_input_dtype(device_backend):
    """Autocast on for a device the input is not on: the call runs in the input's dtype, as
    stock's conv2d does (the eager fast path steps aside whenever any autocast is on, and the
    checked path asks about the input's own device)."""
    device, backend = device_backend
    other = "cuda" if torch.device(device).type == "cpu" else "cpu"
    x = torch.randn(2, 4, 8, 8, device=device)
    w, b = torch.randn(6, 4, 3, 3, device=device), torch.randn(6, device=device)
    previous = torch.is_autocast_enabled(other)
    torch.set_autocast_enabled(other, True)  # sets the flag even where that device is absent
    try:
        y = conv2d_leaky_relu(x, w, b, padding=1, negative_slope=0.2, backend=backend)
        y_ref = F.leaky_relu(F.conv2d(x, w, b, padding=1), 0.2)
    finally:
        torch.set_autocast_enabled(other, previous)
    assert y.dtype == y_ref.dtype == torch.float32
    assert rel_err(y, y_ref) < 1e-5
