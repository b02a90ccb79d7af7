"""BatchNorm + activation in Triton: kernels, then launchers.

Every input of shape (N, C, *) is seen as a matrix of R = N*S rows (S = the product of
the spatial sizes) by C channels, addressed in place through three strides
(n, s, c): contiguous NCHW has stride_s == 1, channels_last has stride_c == 1, and
the gradient torch hands to backward (often an expanded scalar, all strides 0) is read
as it comes. No layout copy is made.

Bytes (N = elements of x): the one-pass path, taken when a program can hold its
channels' whole slice in registers, reads x once and writes y once in forward (2N),
and reads x, dy once and writes dx once in backward (3N). The tiled path reads x
twice in forward (3N) and x, dy twice in backward (5N); its per-channel reductions go
through a fixed split of the rows into partial results merged in a fixed order by a
second small kernel, so results are bitwise repeatable (no atomics).

Accumulation is in fp32 (fp64 for fp64 inputs). Statistics use per-tile centred sums
merged with Chan's formula, never E[x^2] - E[x]^2.
"""

import functools

import torch
import triton
import triton.language as tl

from fusedgan._layout import channel_view

# Largest channel slice (elements per program) the one-pass path keeps in registers.
ONE_PASS_MAX_ELEMENTS = 16384
# Elements per tile on the tiled path.
TILE_ELEMENTS = 4096


@triton.jit
def _offsets(r, c, S, stride_n, stride_s, stride_c):
    """int64 element offsets of channels c and rows r (flattened n*S + s): a (channels, rows)
    tile. Rows are the reduced axis and come last, so the interpreter (numpy) reduces
    them pairwise, as the GPU's tree reduction does, rather than one by one."""
    r64 = r.to(tl.int64)
    row = (r64 // S) * stride_n + (r64 % S) * stride_s
    return c.to(tl.int64)[:, None] * stride_c + row[None, :]


@triton.jit
def _store(ptr, value, mask):
    """tl.store, narrowing to bf16 by round-to-nearest-even. Compiled Triton rounds so
    already; the interpreter truncates, so round explicitly and both agree bit for bit."""
    if ptr.dtype.element_ty == tl.bfloat16:
        bits = value.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
        value = tl.where(value != value, value, rounded)  # NaN payloads could carry over
    tl.store(ptr, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _activation(z, slope, ACT: tl.constexpr):
    # ReLU keeps NaN and maps -inf to 0, as torch.relu does; LeakyReLU is torch's
    # `z > 0 ? z : z * slope`, NaN included.
    if ACT == 1:
        z = tl.where(z < 0, 0.0, z)
    elif ACT == 2:
        z = tl.where(z > 0, z, z * slope)
    return z


@triton.jit
def _activation_grad(dy, z, slope, ACT: tl.constexpr):
    # The masks of torch's threshold_backward and leaky_relu_backward.
    if ACT == 1:
        dy = tl.where(z > 0, dy, 0.0)
    elif ACT == 2:
        dy = tl.where(z > 0, dy, dy * slope)
    return dy


@triton.jit
def _channel_params(mean_ptr, var_ptr, w_ptr, b_ptr, c, c_mask, eps, ACC: tl.constexpr):
    """Per-channel mean, invstd, scale = weight * invstd and bias."""
    mean = tl.load(mean_ptr + c, mask=c_mask, other=0.0).to(ACC)
    var = tl.load(var_ptr + c, mask=c_mask, other=1.0).to(ACC)
    w = tl.load(w_ptr + c, mask=c_mask, other=1.0).to(ACC)
    b = tl.load(b_ptr + c, mask=c_mask, other=0.0).to(ACC)
    invstd = 1.0 / tl.sqrt(var + eps)
    return mean, invstd, w * invstd, b


@triton.jit
def _pre_activation(x, mean, scale, b):
    # One formula in every kernel, so backward's recomputed z has forward's sign exactly.
    return (x - mean[:, None]) * scale[:, None] + b[:, None]


@triton.jit
def _bn_stats_kernel(
    x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, var_ptr, part_ptr,
    R, C, S, stride_xn, stride_xs, stride_xc, stride_yn, stride_ys, stride_yc,
    rows_per_split, n_splits, eps, slope,
    ACT: tl.constexpr, ACC: tl.constexpr, ONE_PASS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Batch statistics of BLOCK_C channels over one split of the rows.

    Each tile's (n, mean, M2) is merged into the running ones with Chan's formula.
    ONE_PASS (one split, R <= BLOCK_R, so the loop runs once): the slice is still in
    registers, so write mean, biased var and y = act(z) straight away. Otherwise write
    the split's (count, mean, M2) to part_ptr[3, n_splits, C] for _bn_stats_merge_kernel.
    """
    pid_c = tl.program_id(0)
    pid_s = tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    count = tl.zeros([BLOCK_C], dtype=ACC)
    mean = tl.zeros([BLOCK_C], dtype=ACC)
    m2 = tl.zeros([BLOCK_C], dtype=ACC)
    r_begin = pid_s * rows_per_split
    r_end = tl.minimum(r_begin + rows_per_split, R)
    for r0 in range(r_begin, r_end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_mask = r < r_end
        mask = r_mask[None, :] & c_mask[:, None]
        x = tl.load(x_ptr + _offsets(r, c, S, stride_xn, stride_xs, stride_xc), mask=mask, other=0.0).to(ACC)
        n_tile = tl.sum(r_mask.to(ACC), axis=0)
        mean_tile = tl.sum(x, axis=1) / n_tile
        d = tl.where(mask, x - mean_tile[:, None], 0.0)
        delta = mean_tile - mean
        total = count + n_tile
        mean += delta * (n_tile / total)
        m2 += tl.sum(d * d, axis=1) + delta * delta * (count * n_tile / total)
        count = total
        if ONE_PASS:
            var = m2 / count
            _store(mean_ptr + c, mean, mask=c_mask)
            _store(var_ptr + c, var, mask=c_mask)
            w = tl.load(w_ptr + c, mask=c_mask, other=1.0).to(ACC)
            b = tl.load(b_ptr + c, mask=c_mask, other=0.0).to(ACC)
            y = _activation(_pre_activation(x, mean, w / tl.sqrt(var + eps), b), slope, ACT)
            _store(y_ptr + _offsets(r, c, S, stride_yn, stride_ys, stride_yc), y, mask=mask)
    if not ONE_PASS:
        part = part_ptr + pid_s * C + c
        _store(part, count, mask=c_mask)
        _store(part + n_splits * C, mean, mask=c_mask)
        _store(part + 2 * n_splits * C, m2, mask=c_mask)


@triton.jit
def _bn_stats_merge_kernel(part_ptr, mean_ptr, var_ptr, C, n_splits, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """Merge the splits' (count, mean, M2) in split order: batch mean and biased variance."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    count = tl.zeros([BLOCK_C], dtype=ACC)
    mean = tl.zeros([BLOCK_C], dtype=ACC)
    m2 = tl.zeros([BLOCK_C], dtype=ACC)
    for i in range(n_splits):
        part = part_ptr + i * C + c
        n_i = tl.load(part, mask=c_mask, other=0.0)
        mean_i = tl.load(part + n_splits * C, mask=c_mask, other=0.0)
        m2_i = tl.load(part + 2 * n_splits * C, mask=c_mask, other=0.0)
        total = count + n_i
        frac = tl.where(total > 0, n_i / tl.maximum(total, 1.0), 0.0)
        delta = mean_i - mean
        mean += delta * frac
        m2 += m2_i + delta * delta * count * frac
        count = total
    _store(mean_ptr + c, mean, mask=c_mask)
    _store(var_ptr + c, m2 / count, mask=c_mask)


@triton.jit
def _bn_act_apply_kernel(
    x_ptr, y_ptr, mean_ptr, var_ptr, w_ptr, b_ptr,
    R, C, S, stride_xn, stride_xs, stride_xc, stride_yn, stride_ys, stride_yc, eps, slope,
    ACT: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """y = act(z) on one (BLOCK_C, BLOCK_R) tile: the tiled path, and eval with running statistics."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    c_mask = c < C
    mask = (r < R)[None, :] & c_mask[:, None]
    mean, _, scale, b = _channel_params(mean_ptr, var_ptr, w_ptr, b_ptr, c, c_mask, eps, ACC)
    x = tl.load(x_ptr + _offsets(r, c, S, stride_xn, stride_xs, stride_xc), mask=mask, other=0.0).to(ACC)
    y = _activation(_pre_activation(x, mean, scale, b), slope, ACT)
    _store(y_ptr + _offsets(r, c, S, stride_yn, stride_ys, stride_yc), y, mask=mask)


@triton.jit
def _bn_act_grad_input(dz, xhat, scale, sum_dz, sum_dz_xhat, R, TRAINING: tl.constexpr):
    # Training: the batch statistics depend on x, which adds the two mean terms.
    if TRAINING:
        dz = dz - (sum_dz / R)[:, None] - xhat * (sum_dz_xhat / R)[:, None]
    return dz * scale[:, None]


@triton.jit
def _bn_act_grad_sums_kernel(
    dy_ptr, x_ptr, dx_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, dw_ptr, db_ptr, part_ptr,
    R, C, S, stride_dyn, stride_dys, stride_dyc, stride_xn, stride_xs, stride_xc,
    stride_dxn, stride_dxs, stride_dxc, rows_per_split, n_splits, eps, slope,
    ACT: tl.constexpr, ACC: tl.constexpr, ONE_PASS: tl.constexpr, TRAINING: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Per-channel sums of dz and dz * xhat (= dbias and dweight) over one split of the rows.

    dz = dy * act'(z) with z recomputed from the saved x. ONE_PASS: x and dy stay in
    registers; write dweight, dbias and dx. Otherwise write the split's two sums to
    part_ptr[2, n_splits, C] for _bn_grad_sums_merge_kernel.
    """
    pid_c = tl.program_id(0)
    pid_s = tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    mean, invstd, scale, b = _channel_params(mean_ptr, var_ptr, w_ptr, b_ptr, c, c_mask, eps, ACC)
    sum_dz = tl.zeros([BLOCK_C], dtype=ACC)
    sum_dz_xhat = tl.zeros([BLOCK_C], dtype=ACC)
    r_begin = pid_s * rows_per_split
    r_end = tl.minimum(r_begin + rows_per_split, R)
    for r0 in range(r_begin, r_end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        mask = (r < r_end)[None, :] & c_mask[:, None]
        x = tl.load(x_ptr + _offsets(r, c, S, stride_xn, stride_xs, stride_xc), mask=mask, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + _offsets(r, c, S, stride_dyn, stride_dys, stride_dyc), mask=mask, other=0.0).to(ACC)
        xhat = (x - mean[:, None]) * invstd[:, None]
        dz = _activation_grad(dy, _pre_activation(x, mean, scale, b), slope, ACT)
        sum_dz += tl.sum(dz, axis=1)
        sum_dz_xhat += tl.sum(dz * xhat, axis=1)
        if ONE_PASS:
            # The loop ran once (R <= BLOCK_R): finish dx from the tile still in registers.
            dx = _bn_act_grad_input(dz, xhat, scale, sum_dz, sum_dz_xhat, R, TRAINING)
            _store(dx_ptr + _offsets(r, c, S, stride_dxn, stride_dxs, stride_dxc), dx, mask=mask)
    if ONE_PASS:
        _store(dw_ptr + c, sum_dz_xhat, mask=c_mask)
        _store(db_ptr + c, sum_dz, mask=c_mask)
    else:
        part = part_ptr + pid_s * C + c
        _store(part, sum_dz, mask=c_mask)
        _store(part + n_splits * C, sum_dz_xhat, mask=c_mask)


@triton.jit
def _bn_grad_sums_merge_kernel(part_ptr, dw_ptr, db_ptr, C, n_splits, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """Add the splits' sums in split order: dbias = sum dz, dweight = sum dz * xhat."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    sum_dz = tl.zeros([BLOCK_C], dtype=ACC)
    sum_dz_xhat = tl.zeros([BLOCK_C], dtype=ACC)
    for i in range(n_splits):
        part = part_ptr + i * C + c
        sum_dz += tl.load(part, mask=c_mask, other=0.0)
        sum_dz_xhat += tl.load(part + n_splits * C, mask=c_mask, other=0.0)
    _store(dw_ptr + c, sum_dz_xhat, mask=c_mask)
    _store(db_ptr + c, sum_dz, mask=c_mask)


@triton.jit
def _bn_act_grad_input_kernel(
    dy_ptr, x_ptr, dx_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, sum_dz_xhat_ptr, sum_dz_ptr, dw_ptr, db_ptr,
    R, C, S, stride_dyn, stride_dys, stride_dyc, stride_xn, stride_xs, stride_xc,
    stride_dxn, stride_dxs, stride_dxc, eps, slope,
    ACT: tl.constexpr, ACC: tl.constexpr, TRAINING: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx on one (BLOCK_C, BLOCK_R) tile from the merged sums: the tiled path. The first
    row of programs also writes dweight and dbias in the parameters' dtype."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    c_mask = c < C
    mask = (r < R)[None, :] & c_mask[:, None]
    mean, invstd, scale, b = _channel_params(mean_ptr, var_ptr, w_ptr, b_ptr, c, c_mask, eps, ACC)
    sum_dz = tl.load(sum_dz_ptr + c, mask=c_mask, other=0.0)
    sum_dz_xhat = tl.load(sum_dz_xhat_ptr + c, mask=c_mask, other=0.0)
    if tl.program_id(1) == 0:
        _store(dw_ptr + c, sum_dz_xhat, mask=c_mask)
        _store(db_ptr + c, sum_dz, mask=c_mask)
    x = tl.load(x_ptr + _offsets(r, c, S, stride_xn, stride_xs, stride_xc), mask=mask, other=0.0).to(ACC)
    dy = tl.load(dy_ptr + _offsets(r, c, S, stride_dyn, stride_dys, stride_dyc), mask=mask, other=0.0).to(ACC)
    xhat = (x - mean[:, None]) * invstd[:, None]
    dz = _activation_grad(dy, _pre_activation(x, mean, scale, b), slope, ACT)
    dx = _bn_act_grad_input(dz, xhat, scale, sum_dz, sum_dz_xhat, R, TRAINING)
    _store(dx_ptr + _offsets(r, c, S, stride_dxn, stride_dxs, stride_dxc), dx, mask=mask)


# ---------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------


@functools.cache
def _target_programs(device):
    # Enough programs to fill the GPU a few times over; the interpreter runs programs one
    # after another, so on the CPU a handful (still more than one split) is best.
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 8


class _Plan:
    """Tile shape, one-pass or tiled, and the row split of one (R, C) problem."""

    def __init__(self, R, C, strides, device):
        _, stride_s, stride_c = strides
        # When channels are the fast axis (channels_last, (N, C) inputs), a tile spans at
        # least 8 channels so that a warp reads whole 32-byte sectors.
        channels_fast = abs(stride_c) == 1 and stride_s != 1
        min_block_c = min(triton.next_power_of_2(C), 8) if channels_fast else 1
        rows_pow2 = triton.next_power_of_2(max(R, 1))
        self.one_pass = rows_pow2 * min_block_c <= ONE_PASS_MAX_ELEMENTS
        if self.one_pass:
            # Short slices (small N*H*W) share a program between channels.
            self.block_r = rows_pow2
            self.block_c = min(triton.next_power_of_2(C), 64, max(min_block_c, ONE_PASS_MAX_ELEMENTS // rows_pow2))
            self.n_splits, self.rows_per_split = 1, R
        else:
            self.block_c = min(triton.next_power_of_2(C), 64) if channels_fast else 1
            self.block_r = TILE_ELEMENTS // self.block_c
            c_blocks = triton.cdiv(C, self.block_c)
            max_splits = triton.cdiv(R, self.block_r)
            n_splits = min(max(triton.cdiv(_target_programs(device), c_blocks), 1), max_splits)
            self.rows_per_split = triton.cdiv(triton.cdiv(R, n_splits), self.block_r) * self.block_r
            self.n_splits = triton.cdiv(R, self.rows_per_split)
        self.c_blocks = triton.cdiv(C, self.block_c)
        elements = self.block_r * self.block_c
        self.num_warps = 16 if elements >= 16384 else (8 if elements >= 4096 else 4)


def _acc_dtype(x):
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def bn_act_forward(x, weight, bias, mean, var, training, eps, act, slope):
    """y = act(batch_norm(x)); returns (y, mean, var): the batch mean and biased variance
    when training, else the given running ones. weight and bias are (C,) tensors."""
    x, (N, C, S), x_strides = channel_view(x)
    R = N * S
    y = torch.empty_like(x)
    _, _, y_strides = channel_view(y)
    plan = _Plan(R, C, x_strides, x.device)
    acc = _acc_dtype(x)
    acc_torch = torch.float64 if acc == tl.float64 else torch.float32
    common = dict(ACT=act, ACC=acc, BLOCK_R=plan.block_r, BLOCK_C=plan.block_c, num_warps=plan.num_warps)
    if training:
        mean = torch.empty(C, device=x.device, dtype=acc_torch)
        var = torch.empty_like(mean)
        part = torch.empty((3, plan.n_splits, C), device=x.device, dtype=acc_torch)
        _bn_stats_kernel[(plan.c_blocks, plan.n_splits)](
            x, y, weight, bias, mean, var, part, R, C, S, *x_strides, *y_strides,
            plan.rows_per_split, plan.n_splits, eps, slope, ONE_PASS=plan.one_pass, **common)
        if plan.one_pass:
            return y, mean, var
        merge_block = min(triton.next_power_of_2(C), 1024)
        _bn_stats_merge_kernel[(triton.cdiv(C, merge_block),)](
            part, mean, var, C, plan.n_splits, ACC=acc, BLOCK_C=merge_block)
    apply_block_r = TILE_ELEMENTS // plan.block_c
    _bn_act_apply_kernel[(plan.c_blocks, triton.cdiv(R, apply_block_r))](
        x, y, mean, var, weight, bias, R, C, S, *x_strides, *y_strides, eps, slope,
        **{**common, "BLOCK_R": apply_block_r})
    return y, mean, var


def bn_act_backward(dy, x, weight, bias, mean, var, training, eps, act, slope):
    """(dx, dweight, dbias) of y = act(batch_norm(x)) with the statistics forward used."""
    x, (N, C, S), x_strides = channel_view(x)
    dy, _, dy_strides = channel_view(dy)
    R = N * S
    dx = torch.empty_like(x)
    _, _, dx_strides = channel_view(dx)
    dweight = torch.empty_like(weight)
    dbias = torch.empty_like(bias)
    plan = _Plan(R, C, x_strides, x.device)
    acc = _acc_dtype(x)
    acc_torch = torch.float64 if acc == tl.float64 else torch.float32
    common = dict(ACT=act, ACC=acc, TRAINING=training, BLOCK_C=plan.block_c, num_warps=plan.num_warps)
    part = torch.empty((2, plan.n_splits, C), device=x.device, dtype=acc_torch)
    _bn_act_grad_sums_kernel[(plan.c_blocks, plan.n_splits)](
        dy, x, dx, mean, var, weight, bias, dweight, dbias, part, R, C, S,
        *dy_strides, *x_strides, *dx_strides, plan.rows_per_split, plan.n_splits, eps, slope,
        ONE_PASS=plan.one_pass, BLOCK_R=plan.block_r, **common)
    if plan.one_pass:
        return dx, dweight, dbias
    # dx needs the sums at full precision (not rounded to the weight's dtype).
    sums = torch.empty((2, C), device=x.device, dtype=acc_torch)
    merge_block = min(triton.next_power_of_2(C), 1024)
    _bn_grad_sums_merge_kernel[(triton.cdiv(C, merge_block),)](
        part, sums[0], sums[1], C, plan.n_splits, ACC=acc, BLOCK_C=merge_block)
    _bn_act_grad_input_kernel[(plan.c_blocks, triton.cdiv(R, plan.block_r))](
        dy, x, dx, mean, var, weight, bias, sums[0], sums[1], dweight, dbias, R, C, S,
        *dy_strides, *x_strides, *dx_strides, eps, slope, BLOCK_R=plan.block_r, **common)
    return dx, dweight, dbias
