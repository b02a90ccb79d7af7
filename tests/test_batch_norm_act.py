"""FusedBNReLU / FusedBNLeakyReLU against stock BatchNorm{1,2,3}d + ReLU/LeakyReLU.

Tolerances (docs/numerics.md): fp32 against a float64 reference, relative error (norm) under
1e-5; fp16/bf16 at most twice stock PyTorch's own error at that precision against the
same float64 reference (plus 1e-6 so a bit-exact stock result does not demand zero).

dweight and dbias are sums over N*H*W terms whose total can cancel to nearly zero
(C=1 makes that a single scalar), while the rounding error of any summation order is
bounded by eps * sum(|terms|). Their error is therefore measured relative to the
larger of the norm of the result and the norm of the per-channel sums of |terms|:
the condition-aware form of the same relative error. The input gradient and the output
get the same treatment (see run_steps): with batch statistics the input gradient is a
difference of terms that can cancel almost completely, and the output is x * scale minus
mean * scale, which cancels where a channel's values lie close to their mean; the running
mean is measured against the same blend of batch means of |x|. Where z is 0 up to float64
rounding the activation's derivative is a tie, and dy is set to 0 there.
"""

import copy

import pytest
import torch
from _helpers import DEVICE_BACKENDS, as_stock_copy, random_input, randomize_affine, rel_err, stock_bn_act

import fusedgan
from fusedgan import FusedBNLeakyReLU, FusedBNReLU
from fusedgan._backends import backend_module, why_unusable
from fusedgan.triton import batch_norm_act as triton_bn

FP32_TOL = 1e-5
TOLERANCE = {torch.float32: FP32_TOL, torch.float64: 1e-12}


def make_fused(C, activation, slope, backend, device, param_dtype=torch.float32, **kwargs):
    if activation == "relu":
        module = FusedBNReLU(C, backend=backend, **kwargs)
    else:
        module = FusedBNLeakyReLU(C, slope, backend=backend, **kwargs)
    return randomize_affine(module).to(device=device, dtype=param_dtype)


def _bn(module):
    return module[0] if isinstance(module, torch.nn.Sequential) else module


def random_steps(shape, device, steps):
    """Inputs (float64) and output gradients for `steps` training steps and one eval step."""
    xs = [torch.randn(shape, dtype=torch.float64, device=device) * 2 + 0.5 for _ in range(steps + 1)]
    return xs, [torch.randn(shape, dtype=torch.float64, device=device) for _ in xs]


def run_steps(module, stock, xs, grads, dtype, channels_last=False, make_input=None, training=True):
    """Run a step per (x, grad), in train or eval mode; yield (what, module's value, the
    float64 stock reference's value[, the size of its terms, for sums and differences])
    for outputs, gradients and buffers."""
    memory_format = torch.channels_last if xs[0].dim() == 4 else torch.channels_last_3d
    module.train(training)
    stock.train(training)
    # The running mean blends batch means, each a sum whose rounding is eps * mean(|x|): where
    # the batch means lie near 0 (or cancel across steps), their size says nothing of that.
    # So its error is measured against the same blend of mean(|x|) (the size of its terms).
    running_mean_terms = None if _bn(stock).running_mean is None else _bn(stock).running_mean.abs()
    for step, (x, grad) in enumerate(zip(xs, grads)):
        step = f"{'train' if training else 'eval'} {step}"
        if channels_last:
            x = x.to(memory_format=memory_format)
        x_test = x.to(dtype)
        if make_input is not None:  # a view with other strides (detach keeps them)
            x_test = make_input(x_test)
        x_test = x_test.detach().requires_grad_()
        x_ref = x_test.detach().double().requires_grad_()
        y = module(x_test)
        y_ref = stock(x_ref)
        assert y.dtype == dtype and y.shape == y_ref.shape
        if channels_last:
            assert y.is_contiguous(memory_format=memory_format)
        bn, bn_ref = _bn(module), _bn(stock)
        dims, shape = [0] + list(range(2, x.dim())), (1, -1) + (1,) * (x.dim() - 2)
        batch_stats = bn_ref.training or bn_ref.running_mean is None
        if bn_ref.training and running_mean_terms is not None:
            tracked = bn_ref.num_batches_tracked.item()
            momentum = bn_ref.momentum if bn_ref.momentum is not None else 1.0 / tracked
            running_mean_terms = (1 - momentum) * running_mean_terms + momentum * x_ref.detach().abs().mean(dims)
        if batch_stats:
            var, mean = torch.var_mean(x_ref.detach(), dims, correction=0)
        else:
            mean, var = bn_ref.running_mean, bn_ref.running_var
        invstd = torch.rsqrt(var + bn_ref.eps).view(shape)
        # xhat = (x - mean) * invstd is a difference too: where a channel's values lie close
        # to their mean (two close values per channel), the mean's rounding alone is
        # eps * |mean| * invstd. So every result is measured against the size of the terms it
        # is computed from, with |x| + |mean| in place of |x - mean|.
        xhat_terms = (x_ref.detach().abs() + mean.abs().view(shape)) * invstd
        weight = bn_ref.weight.detach().abs().view(shape) if bn_ref.weight is not None else 1.0
        bias = bn_ref.bias.detach().abs().view(shape) if bn_ref.bias is not None else 0.0
        z_terms = weight * xhat_terms + bias
        z_ref = (x_ref.detach() - mean.view(shape)) * invstd
        if bn_ref.weight is not None:
            z_ref = z_ref * bn_ref.weight.detach().view(shape) + bn_ref.bias.detach().view(shape)
        # Where z is 0 up to the float64 reference's own rounding (x equal to its mean, which
        # fp16 inputs and buffers make likely), the activation's derivative is a tie that
        # stock settles by rounding noise (it computes x * alpha + beta): dy is 0 there.
        grad = torch.where(z_ref.abs() <= 1e-12 * z_terms, 0.0, grad.to(dtype).double())
        y.backward(grad.to(dtype))  # the reference gets the dy the module gets, as it gets its x
        y_ref.backward(grad)
        yield f"step {step} output", y, y_ref, z_terms
        # dx = weight * invstd * (dz - mean(dz) - xhat * mean(dz * xhat)): with batch
        # statistics a difference that can cancel (two values per channel: to ~0), so its
        # error is measured against the size of its terms (|dz| <= |dy| for slopes <= 1).
        g = grad.abs()
        dx_terms = g if not batch_stats else \
            g + g.mean(dims, keepdim=True) + xhat_terms * (g * xhat_terms).mean(dims, keepdim=True)
        yield f"step {step} grad input", x_test.grad, x_ref.grad, weight * invstd * dx_terms
        if bn_ref.weight is not None:
            yield f"step {step} grad weight", bn.weight.grad, bn_ref.weight.grad, (g * xhat_terms).sum(dims)
            yield f"step {step} grad bias", bn.bias.grad, bn_ref.bias.grad, g.sum(dims)
            module.zero_grad()
            stock.zero_grad()
        if bn_ref.running_mean is not None:
            yield f"step {step} running_mean", bn.running_mean, bn_ref.running_mean, running_mean_terms
            yield f"step {step} running_var", bn.running_var, bn_ref.running_var
            assert bn.num_batches_tracked.item() == bn_ref.num_batches_tracked.item()


def assert_matches_fp64(fused, stock, shape, device, steps=2, channels_last=False, make_input=None,
                        dtype=torch.float32):
    xs, grads = random_steps(shape, device, steps)
    for training, begin, end in ((True, 0, steps), (False, steps, steps + 1)):
        results = run_steps(fused, stock, xs[begin:end], grads[begin:end], dtype, channels_last, make_input, training)
        for what, actual, expected, *terms in results:
            assert torch.isfinite(actual).all(), f"{what}: non-finite values (an unwritten element?)"
            err = rel_err(actual, expected, *terms)
            assert err < TOLERANCE[dtype], f"{what}: relative error {err:.2e}"


def within_one_ulp(actual, expected):
    ulp = torch.finfo(actual.dtype).eps * expected.double().abs()
    return bool(((actual.double() - expected.double()).abs() <= ulp).all())


SHAPES = [
    (5, 1, 7, 3),          # C=1
    (4, 3, 5, 5),          # C=3, the RGB case
    (3, 7, 11, 13),        # primes
    (6, 12, 10, 6),        # non-powers of two
    (9, 5, 1, 1),          # H*W = 1 with N > 1
    (1, 4, 9, 7),          # N = 1 with H*W > 1
    (2, 300, 3, 3),        # a large C
    (3, 2, 90, 80),        # slice of 21600 > one-pass limit: the tiled two-stage path
    (8, 6),                # BatchNorm1d (N, C)
    (4, 5, 17),            # BatchNorm1d (N, C, L)
    (2, 3, 4, 5, 3),       # BatchNorm3d
]
ACTIVATIONS = [("relu", 0.0), ("leaky_relu", 0.01), ("leaky_relu", 0.2), ("leaky_relu", 0.0)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation,slope", ACTIVATIONS, ids=lambda a: str(a))
def test_matches_stock_fp32(device_backend, shape, activation, slope):
    device, backend = device_backend
    fused = make_fused(shape[1], activation, slope, backend, device)
    stock = as_stock_copy(fused, len(shape), activation, slope)
    assert_matches_fp64(fused, stock, shape, device)


def test_tiled_path_is_taken_by_the_large_shape():
    for backward in (False, True):
        _, launches = (triton_bn.plan_backward if backward else triton_bn.plan_forward)(
            *([torch.empty(3, 2, 90, 80, device="meta")] * (1 + backward)),
            *[torch.empty(2, device="meta")] * 4, True, 1e-5, 1, 0.0)
        assert not launches[0].constexprs["ONE_PASS"] and launches[0].grid[1] > 1
        _, launches = (triton_bn.plan_backward if backward else triton_bn.plan_forward)(
            *([torch.empty(4, 3, 5, 5, device="meta")] * (1 + backward)),
            *[torch.empty(3, device="meta")] * 4, True, 1e-5, 1, 0.0)
        assert launches[0].constexprs["ONE_PASS"] and len(launches) == 1


CHANNELS_LAST_SHAPES = [(4, 6, 5, 7), (3, 2, 90, 80), (2, 3, 4, 5, 3)]


@pytest.mark.parametrize("shape", CHANNELS_LAST_SHAPES, ids=str)
def test_channels_last(device_backend, shape):
    device, backend = device_backend
    fused = make_fused(shape[1], "leaky_relu", 0.2, backend, device)
    stock = as_stock_copy(fused, len(shape), "leaky_relu", 0.2)
    assert_matches_fp64(fused, stock, shape, device, channels_last=True)


@pytest.mark.parametrize("view", ["channel_slice", "spatial_slice", "transposed", "batch_slice"])
def test_non_contiguous_views(device_backend, view):
    device, backend = device_backend
    make_view = {
        "channel_slice": lambda x: torch.stack([x, x], 2).flatten(1, 2)[:, ::2],
        "spatial_slice": lambda x: torch.stack([x, x], 4).flatten(3, 4)[..., 1::2],
        "transposed": lambda x: x.transpose(2, 3).contiguous().transpose(2, 3),
        "batch_slice": lambda x: torch.stack([x, x], 1).flatten(0, 1)[::2],
    }[view]
    fused = make_fused(5, "relu", 0.0, backend, device)
    stock = as_stock_copy(fused, 4, "relu", 0.0)

    def make_input(x):
        view_of_x = make_view(x)
        assert not view_of_x.is_contiguous() and torch.equal(view_of_x, x)
        return view_of_x

    assert_matches_fp64(fused, stock, (4, 5, 6, 7), device, make_input=make_input)


def _every_other(values, gap=1e3):
    """values as a stride-2 view: every other element of a longer tensor, the others `gap`."""
    base = torch.full((2 * values.numel(),), gap, dtype=values.dtype, device=values.device)
    base[::2] = values
    return base[::2]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_strided_parameters_and_buffers(device_backend, channels_last):
    """weight, bias, running_mean and running_var as stride-2 views, read by their strides
    (the Triton kernels used to index them as if contiguous: errors of 2 to 4)."""
    device, backend = device_backend
    C = 5
    x = random_input((4, C, 6, 7), torch.float32, device, channels_last)
    w_base = _every_other(torch.rand(C, device=device) + 0.5)._base.requires_grad_()
    b_base = _every_other(torch.randn(C, device=device))._base.requires_grad_()
    running = [_every_other(torch.randn(C, device=device)), _every_other(torch.rand(C, device=device) + 0.5)]
    running_ref = [r.double().clone() for r in running]
    w_ref, b_ref = (t.detach()[::2].double().requires_grad_() for t in (w_base, b_base))
    for training in (True, False):
        x_test, x_ref = x.clone().requires_grad_(), x.double().requires_grad_()
        y = fusedgan.functional.batch_norm_act(x_test, *running, w_base[::2], b_base[::2], training, 0.1, 1e-5,
                                               "leaky_relu", 0.2, backend=backend)
        y_ref = torch.nn.functional.leaky_relu(torch.nn.functional.batch_norm(
            x_ref, *running_ref, w_ref, b_ref, training, 0.1, 1e-5), 0.2)
        grad = torch.randn_like(y_ref)
        y.backward(grad.float())
        y_ref.backward(grad)
        for actual, expected in [(y, y_ref), (x_test.grad, x_ref.grad), (w_base.grad[::2], w_ref.grad),
                                 (b_base.grad[::2], b_ref.grad), *zip(running, running_ref)]:
            assert rel_err(actual, expected) < FP32_TOL
        assert torch.equal(w_base.grad[1::2], torch.zeros(C, device=device))
        for t in (w_base, b_base, w_ref, b_ref):
            t.grad = None


def _offset_by_one(x):
    """x as a view starting one element into its storage: no aligned 16-byte packs."""
    base = x.new_empty(x.numel() + 1)
    base[1:] = x.flatten()
    return base[1:].view(x.shape)


# With the shapes above, these take every path of the kernels: one-pass and tiled with row
# splits, vector packs along rows or channels and their one-element fallbacks
# (tests/test_cuda_sim.py checks that they reach every CUDA kernel).
PATH_CASES = {  # name -> (shape, channels_last, make_input)
    "one-pass": ((4, 3, 5, 6), False, None),                      # a channel's slice in registers
    "odd-spatial": ((3, 2, 91, 81), False, None),                 # tiled, H*W odd: one element per access
    "channel-packs": ((5, 16, 17, 16), True, None),               # channels_last tiled: packs along channels
    "n-c": ((2000, 8), False, None),                              # (N, C) tiled: packs along channels
    "n-c-l": ((8, 3, 1000), False, None),                         # (N, C, L) tiled: packs along rows
    "storage-offset": ((3, 2, 90, 80), False, _offset_by_one),    # misaligned: one element per access
}


@pytest.mark.parametrize("case", list(PATH_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_kernel_paths(device_backend, case, dtype):
    device, backend = device_backend
    shape, channels_last, make_input = PATH_CASES[case]
    fused = make_fused(shape[1], "leaky_relu", 0.2, backend, device, param_dtype=dtype)
    stock = as_stock_copy(fused, len(shape), "leaky_relu", 0.2)
    assert_matches_fp64(fused, stock, shape, device, channels_last=channels_last, make_input=make_input, dtype=dtype)


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 3, 50, 50)], ids=str)  # one-pass; tiled
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_expanded_grad(device_backend, shape, channels_last):
    """y.sum().backward() hands the layer an expanded gradient (every stride 0)."""
    device, backend = device_backend
    fused = make_fused(shape[1], "leaky_relu", 0.2, backend, device)
    stock = as_stock_copy(fused, 4, "leaky_relu", 0.2)
    x = random_input(shape, torch.float32, device, channels_last).requires_grad_()
    x_ref = x.detach().double().requires_grad_()
    fused(x).sum().backward()
    stock(x_ref).sum().backward()
    # dx = scale * (dz - mean(dz) - xhat * mean(dz * xhat)) cancels: measured against the
    # size of its terms (docs/numerics.md), as are the sums dweight and dbias.
    dims = [0, 2, 3]
    var, mean = torch.var_mean(x_ref.detach(), dims, correction=0, keepdim=True)
    xhat_terms = (x_ref.detach().abs() + mean.abs()) * torch.rsqrt(var + 1e-5)
    scale = stock[0].weight.detach().abs().view(1, -1, 1, 1) * torch.rsqrt(var + 1e-5)
    dx_terms = scale * (2 + xhat_terms * xhat_terms.mean(dims, keepdim=True))
    assert rel_err(x.grad, x_ref.grad, dx_terms) < FP32_TOL
    assert rel_err(fused.weight.grad, stock[0].weight.grad, xhat_terms.sum(dims)) < FP32_TOL
    assert rel_err(fused.bias.grad, stock[0].bias.grad, torch.full_like(fused.bias.grad, x[:, 0].numel())) < FP32_TOL


# (6, 10, 2, 3): short runs (S < 16); (3, 5, 8, 8): the longest runs of the lane-sum statistics
# (S = 64); (2, 37, 3, 5): in channels_last, 16-channel vectors and a tail.
LOW_PRECISION_SHAPES = [(4, 6, 5, 7), (3, 2, 90, 80), (5, 16, 17, 16), (6, 10, 2, 3), (3, 5, 8, 8), (2, 37, 3, 5)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("param_dtype", ["fp32", "same"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", LOW_PRECISION_SHAPES, ids=str)
def test_low_precision_within_twice_stock_error(device_backend, dtype, param_dtype, channels_last, shape):
    device, backend = device_backend
    param_dtype = torch.float32 if param_dtype == "fp32" else dtype
    fused = make_fused(shape[1], "leaky_relu", 0.2, backend, device, param_dtype=param_dtype)
    stock_low = as_stock_copy(fused, len(shape), "leaky_relu", 0.2, dtype=param_dtype)
    references = [as_stock_copy(fused, len(shape), "leaky_relu", 0.2) for _ in range(2)]
    xs, grads = random_steps(shape, device, 2)

    def compare(xs, grads, training):
        ours = list(run_steps(fused, references[0], xs, grads, dtype, channels_last, training=training))
        stocks = list(run_steps(stock_low, references[1], xs, grads, dtype, channels_last, training=training))
        for (what, actual, expected, *terms), (_, stock_value, stock_expected, *_) in zip(ours, stocks):
            assert torch.equal(expected, stock_expected)
            err, stock_err = rel_err(actual, expected, *terms), rel_err(stock_value, expected, *terms)
            if "running" in what and within_one_ulp(actual, expected):
                # C values, each rounded once to the buffer's dtype: within one ulp of the
                # exact value is all rounding allows, however stock's happened to land.
                continue
            assert err <= 2 * stock_err + 1e-6, f"{what}: error {err:.2e}, stock's {stock_err:.2e}"

    compare(xs[:2], grads[:2], training=True)
    # Eval from one set of running statistics: rounding them to the buffers' dtype made
    # ours and stock's differ in the last bit, which eval would amplify into noise.
    for module in [fused, *references]:
        _bn(module).load_state_dict(_bn(stock_low).state_dict())
    compare(xs[2:], grads[2:], training=False)


@pytest.mark.parametrize("momentum", [None, 0.3])
def test_momentum(device_backend, momentum):
    device, backend = device_backend
    fused = make_fused(3, "leaky_relu", 0.2, backend, device, momentum=momentum)
    stock = as_stock_copy(fused, 4, "leaky_relu", 0.2, momentum=momentum)
    assert_matches_fp64(fused, stock, (4, 3, 5, 6), device, steps=4)


def test_affine_false(device_backend):
    device, backend = device_backend
    fused = make_fused(4, "relu", 0.0, backend, device, affine=False)
    assert fused.weight is None and fused.bias is None
    stock = as_stock_copy(fused, 4, "relu", 0.0, affine=False)
    assert_matches_fp64(fused, stock, (3, 4, 5, 6), device)


def test_no_running_stats_uses_batch_stats_in_eval(device_backend):
    device, backend = device_backend
    fused = make_fused(4, "leaky_relu", 0.2, backend, device, track_running_stats=False)
    assert fused.running_mean is None
    stock = as_stock_copy(fused, 4, "leaky_relu", 0.2, track_running_stats=False)
    assert_matches_fp64(fused, stock, (3, 4, 5, 6), device)


def test_identity_activation_matches_batch_norm(device_backend):
    device, backend = device_backend
    x = torch.randn(4, 3, 5, 6, device=device, dtype=torch.float64).float()
    w, b = torch.rand(3, device=device) + 0.5, torch.randn(3, device=device)
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    rm_ref, rv_ref = rm.double(), rv.double()
    y = fusedgan.functional.batch_norm_act(x, rm, rv, w, b, True, 0.1, 1e-5, activation="identity", backend=backend)
    y_ref = torch.nn.functional.batch_norm(x.double(), rm_ref, rv_ref, w.double(), b.double(), True, 0.1, 1e-5)
    assert rel_err(y, y_ref) < FP32_TOL
    assert rel_err(rm, rm_ref) < FP32_TOL and rel_err(rv, rv_ref) < FP32_TOL


def test_float64_gradcheck(device_backend):
    device, backend = device_backend
    x = torch.randn(3, 2, 3, 2, device=device, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(2, device=device, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(2, device=device, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b):
        return fusedgan.functional.batch_norm_act(x, None, None, w, b, True, activation="leaky_relu",
                                                  negative_slope=0.2, backend=backend)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    rm = torch.randn(2, device=device, dtype=torch.float64)
    rv = torch.rand(2, device=device, dtype=torch.float64) + 0.5

    def fn_eval(x, w, b):
        return fusedgan.functional.batch_norm_act(x, rm, rv, w, b, False, activation="relu", backend=backend)

    assert torch.autograd.gradcheck(fn_eval, (x, w, b))


def test_bitwise_repeatable(device_backend):
    device, backend = device_backend
    x = torch.randn(3, 2, 90, 80, device=device, requires_grad=True)
    fused = make_fused(2, "leaky_relu", 0.2, backend, device)
    grad = torch.randn_like(x)
    results = []
    for _ in range(2):
        x.grad = None
        fused.zero_grad()
        y = fused(x)
        y.backward(grad)
        results.append((y, x.grad, fused.weight.grad, fused.bias.grad))
    for first, second in zip(*results):
        assert torch.equal(first, second)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_cpu_kernels_do_not_depend_on_the_thread_count(channels_last):
    # The C++ CPU kernels group channels by the thread count (NCHW) and cut rows into fixed
    # blocks (channels_last); every channel's sums must come out the same either way.
    if why_unusable("cpu", "cpu") is not None:
        pytest.skip(why_unusable("cpu", "cpu"))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(5, 67, 6, 7) * 3 + 1).contiguous(memory_format=memory_format)
    grad = torch.randn_like(x)
    module = make_fused(67, "leaky_relu", 0.2, "cpu", torch.device("cpu"))
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3, 8):
            torch.set_num_threads(count)
            fused = copy.deepcopy(module)
            xr = x.clone().requires_grad_()
            y = fused(xr)
            y.backward(grad)
            results.append((y, xr.grad, fused.weight.grad, fused.bias.grad, fused.running_var))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for first, second in zip(results[0], other):
            assert torch.equal(first, second)


def test_cpu_large_outputs_stream_out():
    # fp32 outputs of 8 MiB and more (kStreamBytes) take the streaming-store path of the CPU
    # kernels; odd H*W puts the runs' starts off the 32-byte alignment those stores need.
    if why_unusable("cpu", "cpu") is not None:
        pytest.skip(why_unusable("cpu", "cpu"))
    shape = (2, 3, 601, 587)
    assert torch.Size(shape).numel() * 4 >= 8 << 20
    fused = make_fused(3, "leaky_relu", 0.2, "cpu", torch.device("cpu"))
    stock = as_stock_copy(fused, 4, "leaky_relu", 0.2)
    assert_matches_fp64(fused, stock, shape, torch.device("cpu"), steps=1)


def test_nan_and_inf_propagate_as_stock(device_backend):
    device, backend = device_backend
    for activation, slope in [("relu", 0.0), ("leaky_relu", 0.2)]:
        fused = make_fused(3, activation, slope, backend, device)
        stock = as_stock_copy(fused, 4, activation, slope, dtype=torch.float32)
        x = torch.randn(4, 3, 5, 5, device=device)
        x[0, 0, 0, 0] = float("nan")
        x[1, 1, 2, 2] = float("inf")
        y, y_ref = fused(x), stock(x)
        assert torch.equal(torch.isnan(y), torch.isnan(y_ref))
        finite = torch.isfinite(y_ref)
        assert torch.allclose(y[finite], y_ref[finite], rtol=1e-5, atol=1e-6)
        fused.eval()
        stock.eval()
        x_eval = torch.randn(4, 3, 5, 5, device=device)
        x_eval[0, 2, 1, 1] = -float("inf")
        x_eval[2, 0, 3, 3] = float("inf")
        assert torch.allclose(fused(x_eval), stock(x_eval), rtol=1e-5, atol=1e-6, equal_nan=True)


def test_empty_batch_as_stock(device_backend):
    device, backend = device_backend
    fused = make_fused(3, "relu", 0.0, backend, device)
    stock = as_stock_copy(fused, 4, "relu", 0.0, dtype=torch.float32)
    x = torch.randn(0, 3, 4, 4, device=device, requires_grad=True)
    y, y_ref = fused(x), stock(x)
    assert y.shape == y_ref.shape == (0, 3, 4, 4)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(fused.weight.grad, torch.zeros_like(fused.weight))
    assert torch.equal(fused.running_mean, stock[0].running_mean)
    assert torch.equal(fused.running_var, stock[0].running_var)
    assert fused.num_batches_tracked.item() == stock[0].num_batches_tracked.item() == 1


def test_state_dict_exchange_with_batchnorm2d():
    stock = stock_bn_act(4, 6)
    randomize_affine(stock[0])
    stock.train()
    stock(torch.randn(4, 6, 3, 3))  # non-trivial running statistics
    fused = FusedBNLeakyReLU(6, 0.2)
    assert set(fused.state_dict()) == set(stock[0].state_dict())
    fused.load_state_dict(stock[0].state_dict())
    for key, value in stock[0].state_dict().items():
        assert torch.equal(fused.state_dict()[key], value)
    back = torch.nn.BatchNorm2d(6)
    back.load_state_dict(fused.state_dict())
    for key, value in fused.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)


def test_is_a_batchnorm_and_drops_into_sequential():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), FusedBNReLU(8), torch.nn.Conv2d(8, 4, 3), FusedBNLeakyReLU(4))
    found = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(found) == 2
    assert model(torch.randn(2, 3, 9, 9)).shape == (2, 4, 5, 5)
    assert "negative_slope=0.01" in repr(model[3]) and "backend='auto'" in repr(model[1])


@pytest.mark.parametrize("device, backend", DEVICE_BACKENDS, ids=[f"{d}-{b}" for d, b in DEVICE_BACKENDS])
@pytest.mark.parametrize("shape, channels_last", [((8, 3, 2, 2), False), ((8, 3, 4, 4), False),
                                                   ((8, 3, 8, 8), False), ((8, 3, 16, 16), False),
                                                   ((4, 2, 40, 40), False),
                                                   ((8, 3, 16, 16), True), ((640, 3), False)])
def test_batch_statistics_when_the_mean_dwarfs_the_spread(device, backend, shape, channels_last):
    """x = 1e4 + N(0, 1) in fp32 (exact inputs): batch mean and variance within the fp32 rule
    (1e-5) of float64's. Merging partial means rounded at the scale of the mean instead of
    the spread gave 1e-5 to 3.5e-4 here (docs/numerics.md, "Statistics"). The shapes take
    every statistics path: runs under 16 values, lane sums (runs of 16 and 64 values), chunks,
    the CUDA kernels' tiled splits (6400 rows a channel), channels_last rows and 2D input."""
    torch.manual_seed(0)
    ops = backend_module(backend)
    x = random_input(shape, torch.float32, device, channels_last, scale=1.0, shift=1e4)
    C = shape[1]
    ones, zeros = torch.ones(C, device=device), torch.zeros(C, device=device)
    _, mean, var = ops.bn_act_forward(x, ones, zeros, None, None, True, 1e-5, 0, 0.0)
    dims = [d for d in range(x.dim()) if d != 1]
    ref_var, ref_mean = torch.var_mean(x.double(), dim=dims, correction=0)
    assert rel_err(mean, ref_mean) < FP32_TOL
    assert ((var.double() - ref_var).abs() / ref_var).max().item() < FP32_TOL
