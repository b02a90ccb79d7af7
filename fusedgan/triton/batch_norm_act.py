"""BatchNorm + activation in Triton: kernels, then launch planning, then launchers.

Tensors are read in place as rows (n, s) by channels (see _tiles.py); the gradient torch
hands to backward (often an expanded scalar, all strides 0) is read as it comes. No
layout copy is made, except of a tensor whose spatial dimensions cannot be walked with one
stride (e.g. x.transpose(2, 3)), which is copied to contiguous first: y and dx are then
contiguous.

Bytes (N = elements of x): the one-pass path, taken when a program can hold its
channels' whole slice in registers, reads x once and writes y once in forward (2N),
and reads x, dy once and writes dx once in backward (3N). The tiled path reads x
twice in forward (3N) and x, dy twice in backward (5N); its per-channel reductions go
through a fixed split of the rows into partial results merged in a fixed order by a
second small kernel, so results are bitwise repeatable (no atomics).

Accumulation is in fp32 (fp64 for fp64 inputs), eps and slope included. Statistics use
per-tile centred sums merged with Chan's formula, never E[x^2] - E[x]^2.
"""

import triton
import triton.language as tl

from fusedgan import _outputs as outputs
from fusedgan._layout import channel_view
from fusedgan.triton._common import _activation, _chan_merge, _grad_terms, _inv_std, _pre_activation
from fusedgan.triton._launch import Launch, acc_dtype, plan_and_run
from fusedgan.triton._tiles import (
    Plan,
    _channels,
    _merge_stats_kernel,
    _offsets,
    _scalar,
    _split,
    _store,
    _sum_splits_kernel,
    _tile_rows,
    merge_launch,
    merge_rows,
)

# What a one-pass program may hold its slice in, by backward: elements a thread and warps
# (512 threads get 128 registers a thread). Backward holds x and dy. fp64 takes the tiled
# path: its division and square root call a slow-path subroutine, around which a slice held
# in registers is saved to local memory. Every variant compiles without spills (compile_check).
ONE_PASS_BUDGET = {False: (32, 16), True: (16, 16)}


@triton.jit
def _channel_params(mean_ptr, var_ptr, w_ptr, b_ptr, c, c_mask, eps, ACC: tl.constexpr):
    """Per-channel mean, invstd, scale = weight * invstd and bias."""
    mean = tl.load(mean_ptr + c, mask=c_mask, other=0.0).to(ACC)
    var = tl.load(var_ptr + c, mask=c_mask, other=1.0).to(ACC)
    w = tl.load(w_ptr + c, mask=c_mask, other=1.0).to(ACC)
    b = tl.load(b_ptr + c, mask=c_mask, other=0.0).to(ACC)
    invstd = _inv_std(var, eps)
    return mean, invstd, w * invstd, b


@triton.jit
def _bn_stats_kernel(
    x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, var_ptr, part_ptr,
    N, S, C, s_tiles, row_tiles, tiles_per_split, n_splits,
    stride_xn, stride_xs, stride_xc, stride_yn, stride_ys, stride_yc, eps: tl.float64, slope: tl.float64,
    ACT: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr, ONE_PASS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Batch statistics of BLOCK_C channels over one split of the row tiles.

    Each tile's (n, mean, M2) is merged into the running ones with Chan's formula.
    ONE_PASS (one split of one tile): the slice is still in registers, so write mean,
    biased var and y = act(z) straight away. Otherwise write the split's (count, mean, M2)
    to part_ptr[3, n_splits, C] for _merge_stats_kernel.
    """
    c, c_mask = _channels(tl.program_id(0), C, IDX, BLOCK_C)
    count = tl.zeros([BLOCK_C], dtype=ACC)
    mean = tl.zeros([BLOCK_C], dtype=ACC)
    m2 = tl.zeros([BLOCK_C], dtype=ACC)
    t_begin, t_end = _split(tiles_per_split, row_tiles)
    for t in range(t_begin, t_end):
        n, s, r_mask = _tile_rows(t, N, S, s_tiles, IDX, BLOCK_N, BLOCK_S)
        mask = r_mask[None, :] & c_mask[:, None]
        x = tl.load(x_ptr + _offsets(n, s, c, stride_xn, stride_xs, stride_xc), mask=mask, other=0.0).to(ACC)
        n_tile = tl.sum(r_mask.to(ACC), axis=0)
        mean_tile = tl.sum(x, axis=1) / n_tile
        d = tl.where(mask, x - mean_tile[:, None], 0.0)
        count, mean, m2 = _chan_merge(count, mean, m2, n_tile, mean_tile, tl.sum(d * d, axis=1))
        if ONE_PASS:
            var = m2 / count
            _store(mean_ptr + c, mean, mask=c_mask)
            _store(var_ptr + c, var, mask=c_mask)
            w = tl.load(w_ptr + c, mask=c_mask, other=1.0).to(ACC)
            b = tl.load(b_ptr + c, mask=c_mask, other=0.0).to(ACC)
            scale = w / tl.sqrt(var + _scalar(eps, ACC))
            y = _activation(_pre_activation(x, mean[:, None], scale[:, None], b[:, None]), _scalar(slope, ACC), ACT)
            _store(y_ptr + _offsets(n, s, c, stride_yn, stride_ys, stride_yc), y, mask=mask)
    if not ONE_PASS:
        plane = tl.cast(n_splits, IDX) * C
        part = part_ptr + tl.program_id(1).to(IDX) * C + c
        _store(part, count, mask=c_mask)
        _store(part + plane, mean, mask=c_mask)
        _store(part + 2 * plane, m2, mask=c_mask)


@triton.jit
def _elementwise_tile(N, S, C, s_tiles, c_blocks, IDX: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """The tile of an elementwise program (grid axis 0: row tiles by channel blocks, channel
    blocks fastest): its row tile, channels and rows, and the tile's mask."""
    pid = tl.program_id(0)
    t = pid // c_blocks
    c, c_mask = _channels(pid - t * c_blocks, C, IDX, BLOCK_C)
    n, s, r_mask = _tile_rows(t, N, S, s_tiles, IDX, BLOCK_N, BLOCK_S)
    return t, c, c_mask, n, s, r_mask[None, :] & c_mask[:, None]


@triton.jit
def _bn_act_apply_kernel(
    x_ptr, y_ptr, mean_ptr, var_ptr, w_ptr, b_ptr,
    N, S, C, s_tiles, c_blocks, stride_xn, stride_xs, stride_xc, stride_yn, stride_ys, stride_yc,
    eps: tl.float64, slope: tl.float64,
    ACT: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """y = act(z) on one tile: the tiled path, and eval with running statistics."""
    _, c, c_mask, n, s, mask = _elementwise_tile(N, S, C, s_tiles, c_blocks, IDX, BLOCK_N, BLOCK_S, BLOCK_C)
    mean, _, scale, b = _channel_params(mean_ptr, var_ptr, w_ptr, b_ptr, c, c_mask, _scalar(eps, ACC), ACC)
    x = tl.load(x_ptr + _offsets(n, s, c, stride_xn, stride_xs, stride_xc), mask=mask, other=0.0).to(ACC)
    y = _activation(_pre_activation(x, mean[:, None], scale[:, None], b[:, None]), _scalar(slope, ACC), ACT)
    _store(y_ptr + _offsets(n, s, c, stride_yn, stride_ys, stride_yc), y, mask=mask)


@triton.jit
def _bn_act_grad_input(dz, xhat, scale, sum_dz, sum_dz_xhat, inv_count, TRAINING: tl.constexpr):
    # Training: the batch statistics depend on x, which adds the two mean terms. (1 / count
    # comes from the host: an fp64 division is a subroutine call, around which the tile in
    # registers would be saved to local memory.)
    if TRAINING:
        dz = dz - (sum_dz * inv_count)[:, None] - xhat * (sum_dz_xhat * inv_count)[:, None]
    return dz * scale[:, None]


@triton.jit
def _bn_act_dz(dy_ptr, x_ptr, n, s, c, mask, stride_dyn, stride_dys, stride_dyc, stride_xn, stride_xs, stride_xc,
               mean, invstd, scale, b, slope, ACT: tl.constexpr, ACC: tl.constexpr):
    """dz = dy * act'(z), with z recomputed from x, and xhat, on one tile."""
    x = tl.load(x_ptr + _offsets(n, s, c, stride_xn, stride_xs, stride_xc), mask=mask, other=0.0).to(ACC)
    dy = tl.load(dy_ptr + _offsets(n, s, c, stride_dyn, stride_dys, stride_dyc), mask=mask, other=0.0).to(ACC)
    return _grad_terms(x, dy, mean[:, None], invstd[:, None], scale[:, None], b[:, None], slope, ACT)


@triton.jit
def _bn_act_grad_sums_kernel(
    dy_ptr, x_ptr, dx_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, dw_ptr, db_ptr, part_ptr,
    N, S, C, s_tiles, row_tiles, tiles_per_split, n_splits, inv_count: tl.float64,
    stride_dyn, stride_dys, stride_dyc, stride_xn, stride_xs, stride_xc, stride_dxn, stride_dxs, stride_dxc,
    eps: tl.float64, slope: tl.float64,
    ACT: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr, ONE_PASS: tl.constexpr, TRAINING: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Per-channel sums of dz and dz * xhat (= dbias and dweight) over one split of the row tiles.

    ONE_PASS (one split of one tile): x and dy stay in registers; write dweight, dbias and
    dx. Otherwise write the split's two sums to part_ptr[2, n_splits, C].
    """
    c, c_mask = _channels(tl.program_id(0), C, IDX, BLOCK_C)
    mean, invstd, scale, b = _channel_params(mean_ptr, var_ptr, w_ptr, b_ptr, c, c_mask, _scalar(eps, ACC), ACC)
    slope = _scalar(slope, ACC)
    sum_dz = tl.zeros([BLOCK_C], dtype=ACC)
    sum_dz_xhat = tl.zeros([BLOCK_C], dtype=ACC)
    t_begin, t_end = _split(tiles_per_split, row_tiles)
    for t in range(t_begin, t_end):
        n, s, r_mask = _tile_rows(t, N, S, s_tiles, IDX, BLOCK_N, BLOCK_S)
        mask = r_mask[None, :] & c_mask[:, None]
        dz, xhat = _bn_act_dz(dy_ptr, x_ptr, n, s, c, mask, stride_dyn, stride_dys, stride_dyc,
                              stride_xn, stride_xs, stride_xc, mean, invstd, scale, b, slope, ACT, ACC)
        sum_dz += tl.sum(dz, axis=1)
        sum_dz_xhat += tl.sum(dz * xhat, axis=1)
        if ONE_PASS:
            # The loop ran once: finish dx from the tile still in registers.
            dx = _bn_act_grad_input(dz, xhat, scale, sum_dz, sum_dz_xhat, _scalar(inv_count, ACC), TRAINING)
            _store(dx_ptr + _offsets(n, s, c, stride_dxn, stride_dxs, stride_dxc), dx, mask=mask)
    if ONE_PASS:
        _store(dw_ptr + c, sum_dz_xhat, mask=c_mask)
        _store(db_ptr + c, sum_dz, mask=c_mask)
    else:
        part = part_ptr + tl.program_id(1).to(IDX) * C + c
        _store(part, sum_dz, mask=c_mask)
        _store(part + tl.cast(n_splits, IDX) * C, sum_dz_xhat, mask=c_mask)


@triton.jit
def _bn_act_grad_input_kernel(
    dy_ptr, x_ptr, dx_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, sums_ptr, dw_ptr, db_ptr,
    N, S, C, s_tiles, c_blocks, inv_count: tl.float64,
    stride_dyn, stride_dys, stride_dyc, stride_xn, stride_xs, stride_xc, stride_dxn, stride_dxs, stride_dxc,
    eps: tl.float64, slope: tl.float64,
    ACT: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr, TRAINING: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx on one tile from the merged sums (sums_ptr[2, C]: dbias, dweight): the tiled path.
    The programs of the first row tile also write dweight and dbias in the parameters' dtype."""
    t, c, c_mask, n, s, mask = _elementwise_tile(N, S, C, s_tiles, c_blocks, IDX, BLOCK_N, BLOCK_S, BLOCK_C)
    mean, invstd, scale, b = _channel_params(mean_ptr, var_ptr, w_ptr, b_ptr, c, c_mask, _scalar(eps, ACC), ACC)
    sum_dz = tl.load(sums_ptr + c, mask=c_mask, other=0.0)
    sum_dz_xhat = tl.load(sums_ptr + C + c, mask=c_mask, other=0.0)
    if t == 0:
        _store(dw_ptr + c, sum_dz_xhat, mask=c_mask)
        _store(db_ptr + c, sum_dz, mask=c_mask)
    dz, xhat = _bn_act_dz(dy_ptr, x_ptr, n, s, c, mask, stride_dyn, stride_dys, stride_dyc,
                          stride_xn, stride_xs, stride_xc, mean, invstd, scale, b, _scalar(slope, ACC), ACT, ACC)
    dx = _bn_act_grad_input(dz, xhat, scale, sum_dz, sum_dz_xhat, _scalar(inv_count, ACC), TRAINING)
    _store(dx_ptr + _offsets(n, s, c, stride_dxn, stride_dxs, stride_dxc), dx, mask=mask)


# ---------------------------------------------------------------------------------------
# Planning: outputs and launches, on real tensors or on meta tensors (the offline checks)
# ---------------------------------------------------------------------------------------


def _plan(rows, S, C, strides, backward, acc, device):
    """The reduction plan of a forward or backward launch."""
    return Plan.reduction(rows, S, C, C > 1 and abs(strides[0][2]) == 1, device,
                          None if acc == tl.float64 else ONE_PASS_BUDGET[backward])


def plan_forward(x, weight, bias, mean, var, training, eps, act, slope):
    """((y, mean, var), launches) of bn_act_forward, nothing run."""
    x, (N, C, S), x_strides = channel_view(x)
    y = outputs.empty_like(x)
    rows, S, strides = merge_rows(N, S, [x_strides, channel_view(y)[2]])
    acc, acc_torch = acc_dtype(x.dtype)
    plan = _plan(rows, S, C, strides, False, acc, x.device)
    weight, bias = weight.contiguous(), bias.contiguous()
    scalars = (*strides[0], *strides[1], float(eps), float(slope))
    launches = []
    if training:
        mean = outputs.empty(C, device=x.device, dtype=acc_torch)
        var = outputs.empty_like(mean)
        part = mean if plan.one_pass else outputs.empty((3, plan.n_splits, C), device=x.device, dtype=acc_torch)
        bound = plan.bound(strides, part.numel())
        launches.append(Launch(_bn_stats_kernel, (plan.c_blocks, plan.n_splits),
                               (x, y, weight, bias, mean, var, part, *plan.split_args, *scalars),
                               dict(ACT=act, ACC=acc, ONE_PASS=plan.one_pass, **plan.constexprs(bound)), bound))
        if plan.one_pass:
            return (y, mean, var), launches
        launches.append(merge_launch(_merge_stats_kernel, part, (mean, var), acc))
    else:
        # Running statistics in any dtype and stride: returned, as batch statistics are, in the
        # accumulation dtype, and read contiguous.
        mean, var = mean.to(acc_torch).contiguous(), var.to(acc_torch).contiguous()
    elementwise = plan.elementwise()
    sizes, grid = elementwise.elementwise_args
    bound = elementwise.bound(strides)
    launches.append(Launch(_bn_act_apply_kernel, grid, (x, y, mean, var, weight, bias, *sizes, *scalars),
                           dict(ACT=act, ACC=acc, **elementwise.constexprs(bound)), bound))
    return (y, mean, var), launches


def plan_backward(dy, x, weight, bias, mean, var, training, eps, act, slope):
    """((dx, dweight, dbias), launches) of bn_act_backward, nothing run."""
    x, (N, C, S), x_strides = channel_view(x)
    dy, _, dy_strides = channel_view(dy)
    dx = outputs.empty_like(x)
    rows, S, strides = merge_rows(N, S, [x_strides, dy_strides, channel_view(dx)[2]])
    acc, acc_torch = acc_dtype(x.dtype)
    plan = _plan(rows, S, C, strides, True, acc, x.device)
    weight, bias, mean, var = (t.contiguous() for t in (weight, bias, mean, var))
    dweight, dbias = outputs.empty_like(weight), outputs.empty_like(bias)
    xs, dys, dxs = strides
    scalars = (1.0 / max(rows * S, 1), *dys, *xs, *dxs, float(eps), float(slope))
    part = dweight if plan.one_pass else outputs.empty((2, plan.n_splits, C), device=x.device, dtype=acc_torch)
    bound = plan.bound(strides, part.numel())
    launches = [Launch(_bn_act_grad_sums_kernel, (plan.c_blocks, plan.n_splits),
                       (dy, x, dx, mean, var, weight, bias, dweight, dbias, part, *plan.split_args, *scalars),
                       dict(ACT=act, ACC=acc, ONE_PASS=plan.one_pass, TRAINING=training, **plan.constexprs(bound)),
                       bound)]
    if plan.one_pass:
        return (dx, dweight, dbias), launches
    # dx needs the sums at full precision (not rounded to the weight's dtype).
    if plan.n_splits == 1:
        sums = part.view(2, C)
    else:
        sums = outputs.empty((2, C), device=x.device, dtype=acc_torch)
        launches.append(merge_launch(_sum_splits_kernel, part, (sums,), acc, grid_y=2))
    elementwise = plan.elementwise()
    sizes, grid = elementwise.elementwise_args
    bound = elementwise.bound(strides, sums.numel())
    launches.append(Launch(_bn_act_grad_input_kernel, grid,
                           (dy, x, dx, mean, var, weight, bias, sums, dweight, dbias, *sizes, *scalars),
                           dict(ACT=act, ACC=acc, TRAINING=training, **elementwise.constexprs(bound)), bound))
    return (dx, dweight, dbias), launches


# ---------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------


def bn_act_forward(x, weight, bias, mean, var, training, eps, act, slope):
    """y = act(batch_norm(x)); returns (y, mean, var): the batch mean and biased variance
    when training, else the given running ones, in the accumulation dtype. weight and bias
    are (C,) tensors."""
    return plan_and_run(plan_forward, x, x, weight, bias, mean, var, training, eps, act, slope)


def bn_act_backward(dy, x, weight, bias, mean, var, training, eps, act, slope):
    """(dx, dweight, dbias) of y = act(batch_norm(x)) with the statistics forward used."""
    return plan_and_run(plan_backward, x, dy, x, weight, bias, mean, var, training, eps, act, slope)
