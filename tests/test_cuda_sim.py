"""The "cuda-sim" backend: the CUDA kernels and launchers run on CPU tensors through the SIMT
emulation (csrc/simt/). The equivalence suite, the property tests and opcheck run on it as on
every backend (tests/_helpers.py lists it); this file checks what only the emulation can:

- the suite's shapes reach every kernel instantiation and path (launch_log): one-pass and
  tiled with row splits, packs along rows and along channels and the one-element fallback,
  in all four dtypes, and the convolution's kernels;
- results do not depend on the order the emulation runs threads in (FUSEDGAN_SIMT_SEED): a
  missing barrier or a race on shared memory would change them (tests/test_simt.py shows
  the emulation catches such bugs);
- the int64-offset kernels (FUSEDGAN_SIMT_INT64=1) give the same bits as the int32 ones;
- an empty batch launches nothing;
- "auto" never picks it.
"""

import re

import pytest
import test_batch_norm_act as bn_suite
import test_conv_leaky_relu as conv_suite
import torch
from _helpers import random_input

from fusedgan._backends import resolve_backend, why_unusable

pytestmark = pytest.mark.skipif(why_unusable("cuda-sim", "cpu") is not None,
                                reason=f"cuda-sim: {why_unusable('cuda-sim', 'cpu')}")

# dtype -> (its C++ type, the accumulation type, elements of a pack along rows, along channels)
TYPES = {torch.float32: ("float", "float", 4, 4), torch.float64: ("double", "double", 2, 2),
         torch.float16: ("c10::Half", "float", 8, 4), torch.bfloat16: ("c10::BFloat16", "float", 8, 4)}


def _ops():
    return torch.ops.fusedgan_sim


def _launches(record):
    """{kernel instantiation: the largest grid y (row splits) it was launched with}."""
    grids = {}
    for line in _ops().launch_log(record):
        name, y = re.fullmatch(r"(.*) grid \(\d+, (\d+), \d+\)", line).groups()
        grids[name] = max(grids.get(name, 0), int(y))
    return grids


def _bn_step(x, dy=None, training=True):
    """One forward and backward of the emulated ops; returns every output."""
    C = x.shape[1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w, b = torch.rand(C, dtype=acc) + 0.5, torch.randn(C, dtype=acc)
    running = (torch.randn(C, dtype=acc), torch.rand(C, dtype=acc) + 0.5)
    y, mean, var = _ops().bn_act_forward(x, w, b, *((None, None) if training else running), training, 1e-5, 2, 0.2)
    dy = torch.randn_like(x) if dy is None else dy
    return (y, mean, var, *_ops().bn_act_backward(dy, x, w, b, mean, var, training, 1e-5, 2, 0.2))


def _bn_suite_cases():
    """(dtype, shape, channels_last, make_input) of the BatchNorm equivalence tests."""
    for shape in bn_suite.SHAPES:
        yield torch.float32, shape, False, None
    for shape in bn_suite.CHANNELS_LAST_SHAPES:
        yield torch.float32, shape, True, None
    for dtype in (torch.float32, torch.float64):
        for case in bn_suite.PATH_CASES.values():
            yield (dtype, *case)
    for dtype in (torch.float16, torch.bfloat16):
        for shape in bn_suite.LOW_PRECISION_SHAPES:
            for channels_last in (False, True):
                yield dtype, shape, channels_last, None


def test_the_suites_shapes_reach_every_kernel():
    _launches(True)
    for dtype, shape, channels_last, make_input in _bn_suite_cases():
        x = random_input(shape, dtype, "cpu", channels_last)
        x = make_input(x) if make_input else x
        for training in (True, False):
            _bn_step(x, training=training)
    for channels_last in (False, True):  # test_expanded_grad's tiled case
        x = random_input((2, 3, 50, 50), torch.float32, "cpu", channels_last)
        _bn_step(x, dy=torch.ones(1, 1, 1, 1).expand_as(x))
    bn = _launches(False)
    missing = []
    for dtype, (t, a, row_pack, channel_pack) in TYPES.items():
        for one_pass in ("true", "false"):
            for kernel in ("bn_stats_kernel", "bn_grad_sums_kernel"):
                missing += [f"{kernel}<{t}, {a}, int, {one_pass}>"]
        for vec, pack_rows in ((1, "false"), (row_pack, "true"), (channel_pack, "false")):
            missing += [f"{k}<{t}, {a}, int, {vec}, {pack_rows}>" for k in ("bn_apply_kernel", "bn_grad_input_kernel")]
        missing += [f"bn_stats_merge_kernel<{t}, {a}>", f"sum_splits_kernel<{a}>"]
        split = [k for k, y in bn.items() if k.startswith(f"bn_stats_kernel<{t}, {a}, int, false") and y > 1]
        assert split, f"no BatchNorm shape of the suite splits rows in {dtype}"
    missing = sorted(set(missing) - set(bn))
    assert not missing, f"kernels no shape of the BatchNorm suite reaches: {missing}"

    _launches(True)
    for dtype, shape, channels_last in _conv_suite_cases():
        _conv_step(shape, dtype, channels_last)
    conv = _launches(False)
    for vec, pack_rows in ((1, "false"), (4, "true"), (4, "false")):
        assert any(re.fullmatch(rf"bias_leaky_relu_kernel<.*, int, {vec}, {pack_rows}>", k) for k in conv), (vec, conv)
    assert [k for k, y in conv.items() if k.startswith("leaky_relu_grad_bias_kernel<float") and y > 1], conv
    assert "sum_splits_kernel<float>" in conv


def _conv_suite_cases():
    """(dtype, (cin, cout, kernel, stride, padding, dilation, N, H, W, bias), channels_last)
    of the convolution's equivalence tests."""
    for shape in conv_suite.DCGAN_SHAPES + conv_suite.ODD_SHAPES:
        yield torch.float32, shape, False
    yield torch.float32, (5, 7, 3, 2, 1, 1, 3, 12, 10, True), True  # test_channels_last_fp32
    for dtype in (torch.float16, torch.bfloat16):
        for channels_last in (False, True):
            yield dtype, (16, 32, 4, 2, 1, 1, 4, 16, 16, True), channels_last  # test_low_precision


def _pair(v):
    return list(v) if isinstance(v, tuple) else [v, v]


def _conv_step(shape, dtype, channels_last):
    cin, cout, k, s, p, d, n, h, w, bias = shape
    x = random_input((n, cin, h, w), dtype, "cpu", channels_last)
    weight = torch.randn(cout, cin, *_pair(k), dtype=dtype)
    y = _ops().conv_leaky_relu_forward(x, weight, torch.randn(cout, dtype=dtype) if bias else None, _pair(s), _pair(p),
                                       _pair(d), 1, 0.2)
    return (y, *_ops().leaky_relu_grad_bias(torch.randn_like(y), y, 0.2, bias))


# (shape, channels_last): one-pass, tiled NCHW with 16-byte packs, tiled channels_last, (N, C) tiled.
SCHEDULE_CASES = [((4, 3, 5, 6), False), ((3, 2, 90, 80), False), ((5, 16, 17, 16), True), ((2000, 8), False)]


@pytest.mark.parametrize("shape,channels_last", SCHEDULE_CASES, ids=str)
def test_results_do_not_depend_on_the_schedule(monkeypatch, shape, channels_last):
    x = random_input(shape, torch.float32, "cpu", channels_last)
    dy = torch.randn_like(x)
    results = []
    for seed in ("1", "2", "3"):
        monkeypatch.setenv("FUSEDGAN_SIMT_SEED", seed)
        torch.manual_seed(0)  # the same parameters each time
        results.append(_bn_step(x, dy) + _conv_step((shape[1], 4, 3, 1, 1, 1, 2, 40, 40, True), torch.float32,
                                                   channels_last))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("shape,channels_last", SCHEDULE_CASES, ids=str)
def test_int64_offsets_give_the_same_bits(monkeypatch, shape, channels_last):
    x = random_input(shape, torch.float32, "cpu", channels_last)
    dy = torch.randn_like(x)
    _assert_int64_offsets_give_the_same_bits(monkeypatch, lambda: _bn_step(x, dy))


def _assert_int64_offsets_give_the_same_bits(monkeypatch, step):
    """step() (which seeds what it draws) with int32 and with int64 offsets: the same bits,
    each time from the kernels of that index type (the merges take no index type)."""
    results = []
    for wide in ("0", "1"):
        monkeypatch.setenv("FUSEDGAN_SIMT_INT64", wide)
        torch.manual_seed(0)
        _launches(True)
        results.append(step())
        kernels = _launches(False)
        assert all(bool(re.search(r", long int[,>]", k)) == (wide == "1")
                   for k in kernels if "merge" not in k and "sum_splits" not in k)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (0, 5), (4, 0, 3)], ids=str)
def test_empty_inputs_launch_nothing(shape):
    x = torch.randn(shape)
    _launches(True)
    y, mean, var, dx, dweight, dbias = _bn_step(x)
    assert not _launches(False)
    assert y.shape == dx.shape == x.shape and mean.shape == var.shape == dweight.shape == (shape[1],)
    assert torch.equal(dweight, torch.zeros_like(dweight)) and torch.equal(dbias, torch.zeros_like(dbias))
    if len(shape) == 4:
        _launches(True)
        y, dz, db = _conv_step((3, 4, 3, 1, 1, 1, 0, 4, 4, True), torch.float32, False)
        assert not _launches(False) and y.shape == dz.shape == (0, 4, 4, 4) and torch.equal(db, torch.zeros(4))


def test_auto_never_picks_the_emulation():
    assert resolve_backend("auto", torch.device("cpu")) != "cuda-sim"
    assert why_unusable("cuda-sim", "cuda") is not None and "cpu tensors" in why_unusable("cuda-sim", "cuda")


# GroupNorm / InstanceNorm: (dtype, shape, groups, channels_last). The equivalence suite's
# shapes (tests/test_group_norm_act.py) are small and mostly one-pass; these add, in every
# dtype, tiled paths: sample splits and 16-byte packs along rows (NCHW, S = 2304), channel
# packs with splits (channels_last, S = 576), odd S with groups of 3 channels (never
# one-pass); and one-pass paths: groups of 2 channels in 4-channel NCHW blocks, InstanceNorm
# in channels_last (6 of a block's 8 channel lanes active), (N, C) inputs.
GN_PATH_CASES = [(dtype, *case) for dtype in TYPES for case in (
    ((2, 4, 48, 48), 2, False), ((2, 8, 24, 24), 4, True), ((3, 6, 5, 7), 2, False), ((3, 6, 5, 7), 3, False),
    ((2, 6, 9, 7), 6, True), ((5, 6), 3, False))]


def _gn_step(x, groups, dy=None, ops=None):
    """One forward and backward of GroupNorm + LeakyReLU (the emulated ops by default);
    returns every output."""
    ops = ops or _ops()
    C = x.shape[1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    gen = torch.Generator().manual_seed(C)
    w, b = torch.rand(C, dtype=acc, generator=gen) + 0.5, torch.randn(C, dtype=acc, generator=gen)
    y, mean, var = ops.gn_act_forward(x, w, b, groups, 1e-5, 2, 0.2)
    dy = torch.empty_like(x).copy_(torch.randn(x.shape, generator=gen)) if dy is None else dy  # x's layout
    return (y, mean, var, *ops.gn_act_backward(dy, x, w, b, mean, var, groups, 1e-5, 2, 0.2))


def test_group_norm_paths_reach_every_kernel_and_match_the_cpu_kernels():
    _launches(True)
    for dtype, shape, groups, channels_last in GN_PATH_CASES:
        x = random_input(shape, dtype, "cpu", channels_last)
        ours, cpu = _gn_step(x, groups), _gn_step(x, groups, ops=torch.ops.fusedgan)
        if channels_last:
            assert ours[0].is_contiguous(memory_format=torch.channels_last) and ours[3].is_contiguous(
                memory_format=torch.channels_last)
        tol = {torch.float64: 1e-10, torch.float32: 1e-4}.get(dtype, 2e-2)
        for name, a, e in zip(("y", "mean", "var", "dx", "dweight", "dbias"), ours, cpu):
            assert a.dtype == e.dtype and a.shape == e.shape, name
            torch.testing.assert_close(a, e, rtol=tol, atol=tol, msg=f"{name} {dtype} {shape}")
    for channels_last in (False, True):  # an expanded dy, split
        x = random_input((2, 8, 24, 24), torch.float32, "cpu", channels_last)
        dy = torch.ones(1, 1, 1, 1).expand_as(x)
        for a, e in zip(_gn_step(x, 2, dy), _gn_step(x, 2, dy, ops=torch.ops.fusedgan)):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)
    gn = _launches(False)
    missing = []
    for dtype, (t, a, row_pack, channel_pack) in TYPES.items():
        missing += [f"{k}<{t}, {a}, int, {one_pass}>" for k in ("gn_channel_stats_kernel", "gn_grad_sums_kernel")
                    for one_pass in ("true", "false")]
        for vec, pack_rows in ((1, "false"), (row_pack, "true"), (channel_pack, "false")):
            missing += [f"{k}<{t}, {a}, int, {vec}, {pack_rows}>" for k in ("gn_apply_kernel", "gn_grad_input_kernel")]
        missing += [f"gn_stats_merge_kernel<{t}, {a}>", f"gn_grad_merge_kernel<{a}>", f"sum_splits_kernel<{a}>"]
        assert gn[f"gn_channel_stats_kernel<{t}, {a}, int, false>"] > 1, f"no GroupNorm case splits samples in {dtype}"
    missing = sorted(set(missing) - set(gn))
    assert not missing, f"kernels no GroupNorm case reaches: {missing}"


# (shape, groups, channels_last): tiled NCHW and channels_last with splits; one-pass InstanceNorm
# with odd S, one-pass (N, C) with groups of 4 channel lanes.
GN_SCHEDULE_CASES = [((2, 4, 48, 48), 2, False), ((2, 8, 24, 24), 4, True), ((3, 6, 5, 7), 6, False),
                     ((40, 8), 2, False)]


@pytest.mark.parametrize("shape,groups,channels_last", GN_SCHEDULE_CASES, ids=str)
def test_group_norm_results_do_not_depend_on_the_schedule(monkeypatch, shape, groups, channels_last):
    x = random_input(shape, torch.float32, "cpu", channels_last)
    results = []
    for seed in ("1", "2", "3"):
        monkeypatch.setenv("FUSEDGAN_SIMT_SEED", seed)
        results.append(_gn_step(x, groups))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("shape,groups,channels_last", GN_SCHEDULE_CASES, ids=str)
def test_group_norm_int64_offsets_give_the_same_bits(monkeypatch, shape, groups, channels_last):
    x = random_input(shape, torch.float32, "cpu", channels_last)
    _assert_int64_offsets_give_the_same_bits(monkeypatch, lambda: _gn_step(x, groups))


@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (0, 6), (3, 4, 0)], ids=str)
def test_group_norm_empty_inputs_launch_nothing(shape):
    x = torch.randn(shape)
    _launches(True)
    y, mean, var, dx, dweight, dbias = _gn_step(x, 2)
    assert not _launches(False)
    assert y.shape == dx.shape == x.shape and mean.shape == var.shape == (shape[0], 2)
    for t in (mean, var, dweight, dbias):
        assert torch.equal(t, torch.zeros_like(t))
