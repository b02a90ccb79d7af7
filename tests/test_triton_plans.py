"""The Triton launchers' plans, checked without a GPU and without running a kernel.

The launchers plan their launches (outputs, grids, arguments, constexprs) before running
them; planned on meta tensors, nothing is allocated. So for shapes up to 2^34 elements
and past, in every layout, this checks what a GPU would be asked to do: every grid within
CUDA's limits (2^31 - 1 programs on axis 0, 65535 on axes 1 and 2), int32 offsets
exactly when every offset and index of a launch fits in them (int64 beyond), and an
index bound that covers every tensor the launch touches. Also the planning decisions the
interpreter cannot show: one program per channel block and row split for the conv's
dbias, channel tiles for (N, C) inputs, a conv tune key without the batch size, and
GroupNorm's one-pass and split plans.
The int64 specialisation itself runs under the interpreter here, on small tensors.
"""

import pytest
import torch
import triton.language as tl
from _helpers import rel_err

from fusedgan import reference
from fusedgan.triton import _launch
from fusedgan.triton import batch_norm_act as bn
from fusedgan.triton import conv_leaky_relu as conv
from fusedgan.triton import group_norm_act as gn

CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _meta(shape, dtype, layout):
    if layout == "channels_last":
        return torch.empty(shape, dtype=dtype, device="meta").to(memory_format=CHANNELS_LAST[len(shape)])
    if layout == "channel_slice":
        return torch.empty((shape[0], 2 * shape[1], *shape[2:]), dtype=dtype, device="meta")[:, ::2]
    if layout == "transposed":
        return torch.empty(shape, dtype=dtype, device="meta").transpose(-1, -2)
    return torch.empty(shape, dtype=dtype, device="meta")


# Up to 2^34 elements and a little past, with the size in N, in C, in the spatial
# dimensions, or spread; (33, 1, 8192, 8192) has 2^31 rows in one channel.
BN_SHAPES = [
    (64, 64, 256, 256), (33, 2, 8192, 4096), (33, 1, 8192, 8192), (1, 1, 2 ** 17, 2 ** 17 + 1),
    (2 ** 30, 16, 1, 1), (2 ** 26, 4, 8, 8), (2, 2 ** 33, 1, 1), (1, 2 ** 30, 4, 4), (3, 5, 2 ** 15, 2 ** 15 + 7),
    (2 ** 17, 2 ** 17), (2 ** 34, 1), (3, 2 ** 33 + 1), (2 ** 10, 2 ** 4, 2 ** 20), (5, 2 ** 31, 2),
    (4, 8, 2 ** 9, 2 ** 9, 2 ** 5), (4, 8, 2 ** 9, 2 ** 9, 2 ** 5 + 3),
]
LAYOUTS = ["contiguous", "channels_last", "channel_slice", "transposed", "expanded_dy"]


def _bn_cases():
    for shape in BN_SHAPES:
        for layout in LAYOUTS:
            if layout == "channels_last" and len(shape) not in CHANNELS_LAST or \
                    layout == "transposed" and len(shape) < 3:
                continue
            yield pytest.param(shape, layout, id=f"{'x'.join(map(str, shape))}-{layout}")


def check_launch(launch):
    assert 1 <= len(launch.grid) <= 3
    for programs, limit in zip(launch.grid, _launch.MAX_GRID):
        assert 1 <= programs <= limit, f"{launch.kernel.__name__}: grid {launch.grid}"
    tensors = [a for a in launch.args if isinstance(a, torch.Tensor)]
    assert max(_launch.span(t) for t in tensors) <= launch.index_bound < 2 ** 63, launch.kernel.__name__
    wide = launch.index_bound >= 2 ** 31
    assert launch.constexprs["IDX"] == (tl.int64 if wide else tl.int32), launch.kernel.__name__
    if not wide:  # int32 arithmetic: every integer argument fits too
        assert all(abs(a) < 2 ** 31 for a in launch.args if isinstance(a, int))


@pytest.mark.parametrize("shape,layout", list(_bn_cases()))
def test_batch_norm_launches_within_limits(shape, layout):
    for dtype in (torch.bfloat16, torch.float32, torch.float64):
        x = _meta(shape, dtype, "contiguous" if layout == "expanded_dy" else layout)
        C = x.shape[1]
        params = [torch.empty(C, device="meta", dtype=torch.float64 if dtype == torch.float64 else torch.float32)
                  for _ in range(4)]
        dy = torch.empty((), device="meta", dtype=dtype).expand(x.shape) if layout == "expanded_dy" else \
            torch.empty_like(x)
        for training in (True, False):
            for launch in bn.plan_forward(x, *params, training, 1e-5, 2, 0.2)[1] + \
                    bn.plan_backward(dy, x, *params, training, 1e-5, 2, 0.2)[1]:
                check_launch(launch)
        _, launches = conv.plan_grad_bias(dy, x, 0.2, True)
        for launch in launches:
            check_launch(launch)


def _groups(C):
    """LayerNorm-like (one group), InstanceNorm (a channel a group), and groups of 2 and of
    3 channels where C allows."""
    return sorted({1, C} | {C // k for k in (2, 3) if C % k == 0})


@pytest.mark.parametrize("shape,layout", list(_bn_cases()))
def test_group_norm_launches_within_limits(shape, layout):
    for dtype in (torch.bfloat16, torch.float64):
        x = _meta(shape, dtype, "contiguous" if layout == "expanded_dy" else layout)
        C = x.shape[1]
        param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        w, b = (torch.empty(C, device="meta", dtype=param_dtype) for _ in range(2))
        dy = torch.empty((), device="meta", dtype=dtype).expand(x.shape) if layout == "expanded_dy" else \
            torch.empty_like(x)
        for groups in _groups(C):
            (_, mean, var), launches = gn.plan_forward(x, w, b, groups, 1e-5, 2, 0.2)
            for launch in launches + gn.plan_backward(dy, x, w, b, mean, var, groups, 1e-5, 2, 0.2)[1]:
                check_launch(launch)


def test_group_norm_plans():
    """One pass while a tile holds whole (sample, group) slices (forward up to 16384
    elements, backward 8192; fp64 never), else the split path filling an H200 (up to 4
    programs an SM); channels_last tiles span at least 8 channels, the split path's 64 (groups side
    by side); small slices share a program between groups and samples."""
    def plans(shape, groups, dtype=torch.float32, layout="contiguous"):
        x = _meta(shape, dtype, layout)
        params = [torch.empty(shape[1], device="meta") for _ in range(2)]
        (_, mean, var), forward = gn.plan_forward(x, *params, groups, 1e-5, 2, 0.2)
        return forward, gn.plan_backward(torch.empty_like(x), x, *params, mean, var, groups, 1e-5, 2, 0.2)[1]

    forward, backward = plans((1, 64, 128, 128), 64)  # InstanceNorm, batch 1: 16384 a slice
    assert [launch.kernel for launch in forward] == [gn._gn_stats_kernel] and forward[0].constexprs["ONE_PASS"]
    assert forward[0].grid == (64,) and forward[0].constexprs["num_warps"] == 16
    assert not backward[0].constexprs["ONE_PASS"] and backward[0].grid[0] == 64 * 8  # a program a tile of 2048
    assert [launch.kernel for launch in backward] == [gn._gn_grad_sums_kernel, gn._gn_param_grads_kernel,
                                                      gn._sum_splits_kernel, gn._gn_grad_input_kernel]
    forward, backward = plans((1, 64, 64, 128), 64)  # 8192 a slice: one pass both ways, one sample: one launch
    assert [launch.kernel for launch in forward + backward] == [gn._gn_stats_kernel, gn._gn_grad_sums_kernel]
    assert backward[0].constexprs["ONE_PASS"] and backward[0].constexprs["FINAL"]
    forward, backward = plans((2, 64, 8, 8), 64, layout="channels_last")
    assert forward[0].constexprs["ONE_PASS"] and forward[0].constexprs["BLOCK_G"] >= 8
    forward, backward = plans((2, 64, 128, 128), 32, layout="channels_last")
    config = forward[0].constexprs
    assert not config["ONE_PASS"] and config["BLOCK_G"] * config["BLOCK_CG"] == 64
    forward, backward = plans((4096, 96), 3)  # (N, C): many samples a program
    assert forward[0].constexprs["ONE_PASS"] and forward[0].constexprs["BLOCK_N"] > 1
    assert forward[0].grid[0] * forward[0].constexprs["BLOCK_N"] >= 4096
    forward, backward = plans((2, 32, 8, 8), 8, torch.float64)
    assert not forward[0].constexprs["ONE_PASS"] and not backward[0].constexprs["ONE_PASS"]


def test_big_tensors_index_in_int64_and_the_rest_in_int32():
    """(33, 1, 8192, 8192): a channel of 2^31 rows, so int64 offsets (the old kernels'
    pid * rows_per_split wrapped in int32); (64, 64, 256, 256) channels_last: 2^28
    elements, int32 offsets, and more than 65535 tiles (the old grid's axis 1)."""
    x = _meta((33, 1, 8192, 8192), torch.bfloat16, "contiguous")
    params = [torch.empty(1, device="meta") for _ in range(4)]
    launches = bn.plan_forward(x, *params, True, 1e-5, 2, 0.2)[1] + \
        bn.plan_backward(torch.empty_like(x), x, *params, True, 1e-5, 2, 0.2)[1]
    on_x = [launch for launch in launches if any(a is x for a in launch.args)]
    assert on_x and all(launch.constexprs["IDX"] == tl.int64 for launch in on_x)
    x = _meta((64, 64, 256, 256), torch.float32, "channels_last")
    params = [torch.empty(64, device="meta") for _ in range(4)]
    for training in (True, False):
        launches = bn.plan_forward(x, *params, training, 1e-5, 2, 0.2)[1] + \
            bn.plan_backward(torch.empty_like(x), x, *params, training, 1e-5, 2, 0.2)[1]
        assert all(launch.constexprs["IDX"] == tl.int32 for launch in launches)
        assert max(launch.grid[0] for launch in launches) > 65535


# (x shape, weight shape, stride, padding): batch, image, channels and output channels
# taking the size in turn, up to 2^34 elements of input or output.
CONV_SHAPES = [
    ((64, 64, 256, 256), (64, 64, 3, 3), 1, 1), ((2 ** 14, 64, 128, 128), (128, 64, 4, 4), 2, 1),
    ((1, 1, 2 ** 17, 2 ** 17), (1, 1, 3, 3), 1, 1), ((2 ** 20, 3, 64, 64), (64, 3, 4, 4), 2, 1),
    ((1, 1, 1, 1), (2 ** 31, 1, 1, 1), 1, 0), ((1, 2 ** 20, 128, 128), (4, 2 ** 20, 1, 1), 1, 0),
]


@pytest.mark.parametrize("x_shape,w_shape,stride,padding", CONV_SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_conv_launches_within_limits(x_shape, w_shape, stride, padding, layout):
    for dtype in (torch.float16, torch.float32):
        x, w = _meta(x_shape, dtype, layout), _meta(w_shape, dtype, "contiguous")
        assert conv.kernel_applies(x, 1, padding)
        y = conv.conv_output(x, w, stride, padding, 1)
        assert y.is_contiguous(memory_format=conv.conv_output_format(x))
        for config in conv.CONFIGS["mma"] + conv.CONFIGS["fma"]:
            check_launch(conv.plan_forward(x, w, torch.empty(w_shape[0], device="meta", dtype=dtype), y, stride,
                                           padding, 1, 0.2, config))
        for launch in conv.plan_grad_bias(torch.empty_like(y), y, 0.2, True)[1]:
            check_launch(launch)


def test_grad_bias_splits_rows_over_the_gpu():
    """leaky_relu_grad_bias used to run one program per 16 channels (4 for C = 64), each
    over every row: now a (channel block, row split) grid that fills an H200's 132 SMs,
    merged by a second kernel in split order."""
    y = _meta((64, 64, 16, 16), torch.float32, "contiguous")
    launches = conv.plan_grad_bias(torch.empty_like(y), y, 0.2, True)[1]
    assert launches[0].grid[0] * launches[0].grid[1] >= 132 and launches[0].grid[1] > 1
    assert [launch.kernel for launch in launches] == [conv._leaky_relu_grad_bias_kernel, conv.tiles._sum_splits_kernel]


def test_nc_inputs_take_channel_tiles():
    """(N, C) inputs (BatchNorm1d) have unit-stride channels: tiles span 64 of them, so a
    warp reads whole sectors (it used to read one channel at stride C)."""
    x = _meta((65536, 64), torch.float32, "contiguous")
    params = [torch.empty(64, device="meta") for _ in range(4)]
    for launch in bn.plan_forward(x, *params, True, 1e-5, 2, 0.2)[1]:
        if "BLOCK_N" in launch.constexprs:
            assert launch.constexprs["BLOCK_C"] == 64


def test_conv_tune_key_leaves_out_the_batch_size():
    w = torch.empty(8, 3, 4, 4, device="meta")
    keys = {conv.tune_key(torch.empty(n, 3, 32, 32, device="meta"), w, None, 2, 1, 1) for n in (1, 16, 64, 65)}
    assert len(keys) == 1


def test_conv_does_not_tune_inside_a_cuda_graph_capture(monkeypatch):
    """Benchmarking synchronises, which a CUDA graph capture forbids: an untuned key takes
    the first config there and is tuned at the next eager call."""
    monkeypatch.setattr(conv, "_TUNED", {})
    timings = iter([3.0, 1.0])
    candidates = conv.CONFIGS["mma"]
    monkeypatch.setattr(conv.triton.testing, "do_bench", lambda fn, **kwargs: next(timings))
    monkeypatch.setattr(conv, "run", lambda launches: None)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert conv.tuned_config("key", candidates, lambda config: None) is candidates[0]
    assert "key" not in conv._TUNED
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert conv.tuned_config("key", candidates, lambda config: None) is candidates[1]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert conv.tuned_config("key", candidates, lambda config: None) is candidates[1]


@pytest.mark.parametrize("shape,channels_last", [((4, 3, 5, 7), False), ((3, 2, 90, 80), False),
                                                 ((6, 16, 5, 7), True), ((300, 6), False)], ids=str)
def test_int64_offsets_give_the_int32_results(monkeypatch, shape, channels_last):
    """The int64 specialisation, run on small tensors by lowering the int32 limit: bit for
    bit the results of int32 offsets, as the arithmetic is the same (BatchNorm, the conv's
    dbias, GroupNorm and InstanceNorm, the conv)."""
    x = torch.randn(shape, dtype=torch.float64).float()
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    C = shape[1]
    w, b, rm, rv = torch.rand(C) + 0.5, torch.randn(C), torch.randn(C), torch.rand(C) + 0.5
    dy = torch.randn_like(x)
    conv_w, conv_b = torch.randn(4, C, 3, 3), torch.randn(4)

    def run_all():
        results = []
        for training in (True, False):
            y, mean, var = bn.bn_act_forward(x, w, b, rm, rv, training, 1e-5, 2, 0.2)
            results += [y, mean, var, *bn.bn_act_backward(dy, x, w, b, mean, var, training, 1e-5, 2, 0.2)]
        results += conv.leaky_relu_grad_bias(dy, x, 0.2, True)
        for groups in (1, C):
            y, mean, var = gn.gn_act_forward(x, w, b, groups, 1e-5, 2, 0.2)
            results += [y, mean, var, *gn.gn_act_backward(dy, x, w, b, mean, var, groups, 1e-5, 2, 0.2)]
        if x.dim() == 4 and x.numel() < 10000:  # (the interpreter is slow)
            results.append(conv.conv_leaky_relu_forward(x, conv_w, conv_b, 1, 1, 1, 1, 0.2))
        return results

    narrow = run_all()
    monkeypatch.setattr(_launch, "INT32_LIMIT", 1)
    wide = run_all()
    for a, b_ in zip(narrow, wide):
        assert torch.equal(a, b_)
    y_ref = reference.bn_act_forward(x.double(), w, b, rm, rv, True, 1e-5, 2, 0.2)[0]
    assert rel_err(wide[0], y_ref) < 1e-5
