"""Property-based tests (hypothesis): drawn shapes, dtypes, layouts, strided views,
momentum, eps, slopes and modes, every usable backend against stock.

Each drawn case runs two training steps and one eval step through every backend and
through stock BatchNorm{1,2,3}d + activation (float64 for the reference; the input's
dtype for stock's own error) and holds the results to test_batch_norm_act.py's rules:
fp32 within 1e-5 of float64 (docs/numerics.md), fp64 within 1e-12, fp16/bf16 within twice
stock's own error or one rounding to the dtype, with reductions and differences measured
against the size of their terms. 300 cases for BatchNorm and 100 each for Conv2d+LeakyReLU
and GroupNorm/InstanceNorm (FUSEDGAN_HYPOTHESIS_EXAMPLES sets the first, a third of it the others:
benchmarks/run_gpu.sh uses fewer, as every new shape compiles Triton kernels there). The
default run draws the same cases every time (hypothesis's derandomize: a test suite, and
CI, that passes or fails the same way run after run); FUSEDGAN_HYPOTHESIS_FRESH=1 draws
new ones on every run, to search for failures (run it with more examples after a change to
a kernel or a tolerance). A failure prints the case to reproduce it.
"""

import copy
import math
import os

import pytest
import torch
from _helpers import DEVICE_BACKENDS, GN_BACKENDS, rel_err, stock_bn_act
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_batch_norm_act import _bn, run_steps

import fusedgan

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}
SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=os.environ.get("FUSEDGAN_HYPOTHESIS_FRESH") != "1")
EXAMPLES = int(os.environ.get("FUSEDGAN_HYPOTHESIS_EXAMPLES", "300"))

VIEWS = {  # name -> (ranks it applies to, x -> a view of equal values with other strides)
    "contiguous": ((2, 3, 4, 5), lambda x: x),
    "channels_last": ((4, 5), lambda x: x.contiguous(
        memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)),
    "channel_slice": ((2, 3, 4, 5), lambda x: torch.stack([x, x], 2).flatten(1, 2)[:, ::2]),
    "last_dim_slice": ((3, 4, 5), lambda x: torch.stack([x, x], -1).flatten(-2)[..., 1::2]),
    "transposed": ((4, 5), lambda x: x.transpose(-1, -2).contiguous().transpose(-1, -2)),
    "batch_slice": ((2, 3, 4, 5), lambda x: torch.stack([x, x], 1).flatten(0, 1)[::2]),
}


@st.composite
def bn_cases(draw):
    rank = draw(st.integers(2, 5))
    shape = (draw(st.integers(2, 5)), draw(st.integers(1, 6))) + tuple(draw(st.integers(1, 5))
                                                                     for _ in range(rank - 2))
    view = draw(st.sampled_from([name for name, (ranks, _) in VIEWS.items() if rank in ranks]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    half = dtype in (torch.float16, torch.bfloat16)
    activation = draw(st.sampled_from(["relu", "leaky_relu", "identity"]))
    return {
        "shape": shape, "view": view, "dtype": dtype, "activation": activation,
        "slope": draw(st.floats(0.0, 0.5)) if activation == "leaky_relu" else 0.0,
        # (below ~1e-3 momentum * batch statistic underflows in fp16 buffers: nothing to test)
        "momentum": draw(st.one_of(st.none(), st.just(0.0), st.just(1.0), st.floats(1e-3, 1.0))),
        "eps": draw(st.floats(1e-6, 1e-1)),
        "affine": draw(st.booleans()),
        "track_running_stats": draw(st.booleans()),
        "param_dtype": draw(st.sampled_from([torch.float32, dtype])) if half else dtype,
        "scale": draw(st.floats(0.1, 10.0)), "shift": draw(st.floats(-3.0, 3.0)),
        "seed": draw(st.integers(0, 2 ** 31 - 1)),  # the data's: a printed case reproduces exactly
    }


def _fused(case, backend, device):
    kwargs = dict(eps=case["eps"], momentum=case["momentum"], affine=case["affine"],
                  track_running_stats=case["track_running_stats"], backend=backend)
    C = case["shape"][1]
    if case["activation"] == "relu":
        module = fusedgan.FusedBNReLU(C, **kwargs)
    elif case["activation"] == "leaky_relu":
        module = fusedgan.FusedBNLeakyReLU(C, case["slope"], **kwargs)
    else:
        module = fusedgan.FusedBatchNorm(C, **kwargs)
    if case["affine"]:
        with torch.no_grad():
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.5, 0.5)
    return module.to(device=device, dtype=case["param_dtype"])


def _stock(fused, case, dtype):
    stock = stock_bn_act(len(case["shape"]), case["shape"][1], case["activation"], case["slope"], eps=case["eps"],
                         momentum=case["momentum"], affine=case["affine"],
                         track_running_stats=case["track_running_stats"])
    stock[0].load_state_dict(copy.deepcopy(fused.state_dict()))
    return stock.to(device=next(iter(fused.state_dict().values()), torch.empty(0)).device, dtype=dtype)


@settings(max_examples=EXAMPLES, **SETTINGS)
@given(case=bn_cases())
def test_batch_norm_act_against_stock(case):
    torch.manual_seed(case["seed"])
    shape, dtype = case["shape"], case["dtype"]
    _, make_view = VIEWS[case["view"]]
    for device, backend in DEVICE_BACKENDS:
        xs = [torch.randn(shape, dtype=torch.float64, device=device) * case["scale"] + case["shift"]
              for _ in range(3)]
        grads = [torch.randn(shape, dtype=torch.float64, device=device) for _ in xs]
        fused = _fused(case, backend, device)
        reference = _stock(fused, case, torch.float64)
        low = dtype in (torch.float16, torch.bfloat16)
        history = {}  # running statistic -> sum over steps of |its reference value|
        if low:  # stock in the same dtype, against the same float64 reference
            stock_low, reference_low = _stock(fused, case, case["param_dtype"]), _stock(fused, case, torch.float64)
        for training, begin, end in ((True, 0, 2), (False, 2, 3)):
            if not training and not case["track_running_stats"]:
                continue  # eval then normalises with batch statistics: the same as training
            ours = run_steps(fused, reference, xs[begin:end], grads[begin:end], dtype, make_input=make_view,
                             training=training)
            if not low:
                for what, actual, expected, *terms in ours:
                    err = rel_err(actual, expected, *terms)
                    assert err < TOLERANCE[dtype], f"{backend}: {what}: relative error {err:.2e}"
                if training:  # eval from the module's own running statistics (x - mean can cancel,
                    # and the buffers' rounding is not the kernel's error)
                    _bn(reference).load_state_dict(_bn(fused).state_dict())
                continue
            stocks = run_steps(stock_low, reference_low, xs[begin:end], grads[begin:end], dtype,
                               make_input=make_view, training=training)
            for (what, actual, expected, *terms), (_, stock_value, _, *_) in zip(ours, stocks):
                if "running" in what and actual.dtype in (torch.float16, torch.bfloat16):
                    # A low-precision buffer is rounded once per step, so after steps 1..k its
                    # error is bounded by unit roundoff * sum of |running value after step j|;
                    # finfo.eps (2 units) covers the batch statistics' own rounding too.
                    key = what.split()[-1]
                    history[key] = history.get(key, 0) + expected.double().abs()
                    bound = torch.finfo(actual.dtype).eps * history[key] + torch.finfo(actual.dtype).tiny
                    assert ((actual.double() - expected).abs() <= bound).all(), f"{backend}: {what}"
                    continue
                # Twice stock's error, or (as tiny cases can leave stock's error near 0 by luck)
                # no more than one rounding to the dtype: unit roundoff = finfo.eps / 2.
                err, stock_err = rel_err(actual, expected, *terms), rel_err(stock_value, expected, *terms)
                allowed = max(2 * stock_err + 1e-6, torch.finfo(dtype).eps / 2)
                assert err <= allowed, f"{backend}: {what}: error {err:.2e}, stock's {stock_err:.2e}"
            if training:  # eval from one set of running statistics, as test_batch_norm_act.py does
                for module in (fused, reference, reference_low):
                    _bn(module).load_state_dict(stock_low[0].state_dict())


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2]))
    cin, cout = groups * draw(st.integers(1, 4)), groups * draw(st.integers(1, 4))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride, padding, dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2))), \
        (draw(st.integers(0, 2)), draw(st.integers(0, 2))), (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    size = [max(draw(st.integers(1, 9)), d * (k - 1) + 1 - 2 * p) for k, p, d in zip(kernel, padding, dilation)]
    return {"shape": (draw(st.integers(1, 3)), cin, *size), "cout": cout, "kernel": kernel, "stride": stride,
            "padding": padding, "dilation": dilation, "groups": groups, "bias": draw(st.booleans()),
            "slope": draw(st.sampled_from([0.0, 0.01, 0.2, draw(st.floats(0.0, 1.0))])),
            "channels_last": draw(st.booleans()), "seed": draw(st.integers(0, 2 ** 31 - 1))}


@settings(max_examples=max(EXAMPLES // 3, 1), **SETTINGS)
@given(case=conv_cases())
def test_conv_leaky_relu_against_stock(case):
    torch.manual_seed(case["seed"])
    for device, backend in DEVICE_BACKENDS:
        layer = fusedgan.FusedConvLeakyReLU(case["shape"][1], case["cout"], case["kernel"], case["stride"],
                                            case["padding"], case["dilation"], case["groups"], case["bias"],
                                            negative_slope=case["slope"], backend=backend).to(device)
        stock = torch.nn.Sequential(torch.nn.Conv2d(case["shape"][1], case["cout"], case["kernel"], case["stride"],
                                                    case["padding"], case["dilation"], case["groups"], case["bias"]),
                                    torch.nn.LeakyReLU(case["slope"]))
        stock[0].load_state_dict(layer.state_dict())
        stock = stock.double().to(device)
        x = torch.randn(case["shape"], device=device)
        if case["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        x_ref = x.detach().double().requires_grad_(True)
        y, y_ref = layer(x), stock(x_ref)
        grad = torch.randn_like(y_ref)
        y.backward(grad.float())
        y_ref.backward(grad)
        # Sums of |terms| bound what rounding can do to each result (a convolution and its
        # gradients are sums too, and can cancel): the same convolution on |x|, |weight|,
        # |bias| and |dy| gives them, as test_batch_norm_act.py measures reductions.
        magnitude = copy.deepcopy(stock[0])
        with torch.no_grad():
            for p in magnitude.parameters():
                p.abs_()
        x_abs = x_ref.detach().abs().requires_grad_(True)
        magnitude(x_abs).backward(grad.abs())
        checks = [("output", y, y_ref, magnitude(x_abs.detach())), ("grad input", x.grad, x_ref.grad, x_abs.grad),
                  ("grad weight", layer.weight.grad, stock[0].weight.grad, magnitude.weight.grad)]
        if case["bias"]:
            checks.append(("grad bias", layer.bias.grad, stock[0].bias.grad, magnitude.bias.grad))
        for what, actual, expected, terms in checks:
            # TF32 is off (the fixture below), so fp32 is held to the 1e-5 of docs/numerics.md.
            assert rel_err(actual, expected, terms) < 1e-5, f"{backend}: {what}"


@st.composite
def gn_cases(draw):
    kind = draw(st.sampled_from(["group", "instance"]))
    rank = draw(st.integers(3 if kind == "instance" else 2, 5))
    C = draw(st.integers(1, 8))
    spatial = [draw(st.integers(1, 5)) for _ in range(rank - 2)]
    if kind == "instance" and all(s == 1 for s in spatial):
        spatial[-1] = 2  # stock InstanceNorm needs more than one value per instance
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    activation = draw(st.sampled_from(["relu", "leaky_relu"]))
    groups = draw(st.sampled_from([g for g in range(1, C + 1) if C % g == 0]))
    N = draw(st.integers(1, 4))
    if N * C // groups * math.prod(spatial) == 1:
        N = 2  # one value per group: stock refuses it (tested in test_group_norm_act.py)
    return {
        "kind": kind, "shape": (N, C, *spatial), "dtype": dtype, "activation": activation, "groups": groups,
        "view": draw(st.sampled_from([name for name, (ranks, _) in VIEWS.items() if rank in ranks])),
        "slope": draw(st.floats(0.0, 0.5)) if activation == "leaky_relu" else 0.0,
        "eps": draw(st.floats(1e-6, 1e-1)), "affine": draw(st.booleans()), "track": draw(st.booleans()),
        "momentum": draw(st.floats(1e-3, 1.0)), "scale": draw(st.floats(0.1, 10.0)),
        "shift": draw(st.floats(-3.0, 3.0)), "seed": draw(st.integers(0, 2 ** 31 - 1)),
    }


def _gn_pair(case, backend, device):
    """(fused layer, stock layer + activation) with the same random parameters, fp32 or fp64."""
    C, rank, slope = case["shape"][1], len(case["shape"]), case["slope"]
    act = torch.nn.ReLU() if case["activation"] == "relu" else torch.nn.LeakyReLU(slope)
    leaky = (slope,) if case["activation"] == "leaky_relu" else ()
    if case["kind"] == "group":
        cls = fusedgan.FusedGroupNormLeakyReLU if leaky else fusedgan.FusedGroupNormReLU
        fused = cls(case["groups"], C, *leaky, eps=case["eps"], affine=case["affine"], backend=backend)
        stock = torch.nn.GroupNorm(case["groups"], C, case["eps"], case["affine"])
    else:
        cls = fusedgan.FusedInstanceNormLeakyReLU if leaky else fusedgan.FusedInstanceNormReLU
        kwargs = dict(eps=case["eps"], momentum=case["momentum"], affine=case["affine"],
                      track_running_stats=case["track"])
        fused = cls(C, *leaky, **kwargs, backend=backend)
        stock = {3: torch.nn.InstanceNorm1d, 4: torch.nn.InstanceNorm2d, 5: torch.nn.InstanceNorm3d}[rank](C, **kwargs)
    with torch.no_grad():
        if case["affine"]:
            fused.weight.uniform_(0.5, 1.5), fused.bias.uniform_(-0.5, 0.5)
    stock.load_state_dict(fused.state_dict())
    param_dtype = torch.float64 if case["dtype"] == torch.float64 else torch.float32
    return fused.to(device, param_dtype), torch.nn.Sequential(stock, act).to(device, param_dtype)


def _gn_terms(norm, x, dy, groups):
    """For a float64 GroupNorm/InstanceNorm layer on x: its pre-activation z, and the sizes
    of the terms the output, dx, dweight and dbias are computed from (docs/numerics.md:
    results that cancel are measured against these, as test_batch_norm_act.py does)."""
    N, C = x.shape[:2]
    shape, dims = (N, C) + (1,) * (x.dim() - 2), [0] + list(range(2, x.dim()))
    running = getattr(norm, "running_mean", None)
    batch_stats = running is None or norm.training
    if batch_stats:
        var, mean = torch.var_mean(x.reshape(N, groups, -1), -1, correction=0)
        mean, var = mean.repeat_interleave(C // groups, 1), var.repeat_interleave(C // groups, 1)
    else:
        mean, var = running.view(1, C).expand(N, C), norm.running_var.view(1, C).expand(N, C)
    invstd = torch.rsqrt(var + norm.eps).view(shape)
    w = norm.weight.detach().view(shape[1:]) if norm.weight is not None else torch.ones(shape[1:], dtype=x.dtype)
    b = norm.bias.detach().view(shape[1:]) if norm.bias is not None else torch.zeros(shape[1:], dtype=x.dtype)
    z = (x - mean.view(shape)) * invstd * w + b
    xhat = (x.abs() + mean.abs().view(shape)) * invstd  # |x - mean| bounded by its terms
    z_terms = xhat * w.abs() + b.abs()
    g = dy.abs() * w.abs()
    group_mean = lambda t: t.reshape(N, groups, -1).mean(-1).repeat_interleave(C // groups, 1).view(shape)  # noqa
    dx_terms = invstd * (g + group_mean(g) + xhat * group_mean(g * xhat)) if batch_stats else invstd * g
    return z.detach(), z_terms.detach(), [z_terms, dx_terms, (dy.abs() * xhat).sum(dims), dy.abs().sum(dims)]


@settings(max_examples=max(EXAMPLES // 3, 1), **SETTINGS)
@given(case=gn_cases())
def test_group_and_instance_norm_against_stock(case):
    """Two training steps and (InstanceNorm with running statistics) one eval step; each
    result within twice stock's own error at the dtype, or the dtype's floor (docs/numerics.md)."""
    torch.manual_seed(case["seed"])
    shape, dtype = case["shape"], case["dtype"]
    _, make_view = VIEWS[case["view"]]
    floor = {torch.float32: 1e-5, torch.float64: 1e-12}.get(dtype, torch.finfo(dtype).eps / 2)
    for device, backend in GN_BACKENDS:
        fused, stock = _gn_pair(case, backend, device)
        reference = copy.deepcopy(stock).double()
        for training in (True, True, False):
            for module in (fused, stock, reference):
                module.train(training)
            x = (torch.randn(shape, dtype=torch.float64, device=device) * case["scale"] + case["shift"]).to(dtype)
            dy = torch.randn(shape, dtype=torch.float64, device=device)
            # Ties: where z is 0 up to the fp32 rounding of its terms ((|x| + |mean|) * invstd *
            # |weight| + |bias|), the activation's derivative is decided by rounding, and two
            # stock compositions disagree there too: dy is 0 there (as test_batch_norm_act.py does).
            groups = case["groups"] if case["kind"] == "group" else shape[1]
            z, z_terms, _ = _gn_terms(reference[0], x.double(), dy, groups)
            dy = torch.where(z.abs() <= 1e-5 * z_terms, 0.0, dy).to(dtype)
            terms = _gn_terms(reference[0], x.double(), dy.double(), groups)[2]
            results = []
            for module, x_in in ((fused, make_view(x)), (stock, make_view(x)), (reference, x.double())):
                x_in = x_in.detach().requires_grad_()
                y = module(x_in)
                results.append([y, *torch.autograd.grad(y, [x_in, *module.parameters()], dy.to(y.dtype))])
            for name, ours, theirs, expected, size in zip(["output", "grad input", "grad weight", "grad bias"],
                                                          *results, terms):
                err, stock_err = rel_err(ours, expected, size), rel_err(theirs, expected, size)
                assert err <= max(2 * stock_err + 1e-6, floor), f"{backend}: {name}: {err:.2e}, stock {stock_err:.2e}"
        for (name, ours), theirs, expected in zip(fused.named_buffers(), stock.buffers(), reference.buffers()):
            if ours.is_floating_point():  # running statistics: within twice stock's own error too
                err, stock_err = rel_err(ours, expected), rel_err(theirs, expected)
                assert err <= max(2 * stock_err + 1e-6, floor, 1e-5), f"{backend}: {name}: {err:.2e}"


@pytest.fixture(autouse=True)
def _no_tf32():
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = previous
