"""GroupNorm / InstanceNorm + activation in Triton: kernels, then launch planning, then launchers.

Statistics are taken per (sample, group) of C / groups channels; InstanceNorm is groups = C.
Tensors are read in place through their (n, s, c) strides (fusedgan._layout.channel_view):
NCHW, channels_last, (N, C), (N, C, L) and the expanded gradient torch hands to backward,
with no layout copy except of a tensor whose spatial dimensions cannot be walked with one
stride (e.g. x.transpose(2, 3)), which is copied to contiguous first (y and dx are then
contiguous).

A program works on a tile of BLOCK_N samples by BLOCK_G groups (the tile's "pairs") by
BLOCK_CG of each group's channels by BLOCK_S positions, held as a 3-D block (pairs,
channels, positions). Every block size is a power of two, so an element's (n, g, c, s)
comes from shifts and masks; a program divides only to find its block. Channels are
c = g * Cg + j, so when channels are the unit-stride axis (channels_last, (N, C)) the
groups of a tile lie side by side and a warp reads consecutive addresses.

Bytes (N = elements of x): when a tile holds whole (sample, group) slices (the one-pass
path: the slice fits in registers), forward reads x once and writes y (2N) and backward
reads x and dy once and writes dx (3N). Otherwise the split path reads x twice in forward
(3N) and x and dy twice in backward (5N): each program reduces one split of its block's
position tiles to per-pair partial results, which a second small kernel merges in split
order, so results are bitwise repeatable (no atomics). dweight and dbias, sums over
samples, are reduced the same way: per-(sample, channel) partial sums, added by a small
kernel in sample order (when there is one sample and one split the first kernel writes
them itself).

Accumulation is in fp32 (fp64 for fp64 inputs), eps and slope included. Statistics are
per-tile centred sums merged with Chan's formula, never E[x^2] - E[x]^2. The per-element
math (pre-activation, activation, its mask, the gradient terms) is BatchNorm's
(fusedgan/triton/_common.py).
"""

from typing import NamedTuple

import triton
import triton.language as tl

from fusedgan import _outputs as outputs
from fusedgan._layout import channel_view
from fusedgan.triton._common import _activation, _chan_merge, _grad_terms, _inv_std, _pre_activation
from fusedgan.triton._launch import Launch, acc_dtype, index_dtype, plan_and_run
from fusedgan.triton._tiles import (
    MAX_WARPS,
    TILE_ELEMENTS,
    TILE_PER_THREAD,
    _channels,
    _merge_stats_kernel,
    _num_warps,
    _scalar,
    _spatial_block,
    _store,
    _sum_splits_kernel,
    merge_launch,
    target_programs,
)

# What a one-pass program may hold its slices in, by backward: elements a thread and warps
# (512 threads get 128 registers a thread). Backward holds x and dy. fp64 takes the split
# path: its division and square root call a slow-path subroutine, around which a slice held
# in registers is saved to local memory. Every variant compiles without spills (compile_check).
ONE_PASS_BUDGET = {False: (32, MAX_WARPS), True: (16, MAX_WARPS)}
# Channels a tile spans at least when channels are the unit-stride axis: whole 32-byte
# sectors on the one-pass path; BatchNorm's 64 on the split path.
ONE_PASS_SPAN, SPLIT_SPAN = 8, 64
# Split-path tiles: 8 elements a thread, as BatchNorm's, but of 8 warps (256 threads, up to
# 255 registers a thread): a (pairs, channels, positions) tile keeps per-slot values
# (statistics, parameters, sums) beside its elements, and with 16 warps' 128 registers the
# backward sums kernel spills in fp64.
SPLIT_TILE, SPLIT_WARPS = 2048, 8


# ---------------------------------------------------------------------------------------
# Tiles
# ---------------------------------------------------------------------------------------


@triton.jit
def _block_and_index(count):
    """This program's block and its index within the block (a split, or a position tile):
    grid axis 0 runs over blocks by `count`, the index fastest."""
    pid = tl.program_id(0)
    block = pid // count
    return block, pid - block * count


@triton.jit
def _gn_slots(block, N, G, Cg, blocks_per_n, cg_blocks, IDX: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr):
    """The slots of program block `block` (sample blocks outermost, then group blocks, then
    blocks of a group's channels). Per pair p (BLOCK_N samples by BLOCK_G groups): its
    sample n, its index n * G + g in the (N, G) statistics and its mask; per slot (p, j):
    its channel c and mask; and the block's channel block within its groups."""
    nb = block // blocks_per_n
    rest = block - nb * blocks_per_n
    gb = rest // cg_blocks
    cgb = rest - gb * cg_blocks
    p = tl.arange(0, BLOCK_N * BLOCK_G)
    n = nb.to(IDX) * BLOCK_N + p // BLOCK_G
    g = gb.to(IDX) * BLOCK_G + p % BLOCK_G
    j = cgb.to(IDX) * BLOCK_CG + tl.arange(0, BLOCK_CG)
    pair_mask = (n < N) & (g < G)
    c = g[:, None] * Cg + j[None, :]
    return n, n * G + g, pair_mask, c, pair_mask[:, None] & (j < Cg)[None, :], cgb


@triton.jit
def _gn_positions(t, S, slot_mask, IDX: tl.constexpr, BLOCK_S: tl.constexpr):
    """Positions of position tile t, and the (pairs, channels, positions) mask of the tile."""
    s = tl.cast(t, IDX) * BLOCK_S + tl.arange(0, BLOCK_S)
    return s, slot_mask[:, :, None] & (s < S)[None, None, :]


@triton.jit
def _gn_offsets(n, c, s, stride_n, stride_s, stride_c):
    """Element offsets of a (pairs, channels, positions) tile; positions, the reduced axis,
    last (so the interpreter reduces them pairwise, as the GPU's tree does)."""
    return (n * stride_n)[:, None, None] + (c * stride_c)[:, :, None] + (s * stride_s)[None, None, :]


@triton.jit
def _gn_affine(w_ptr, b_ptr, c, slot_mask, ACC: tl.constexpr):
    """Each slot's weight and bias."""
    w = tl.load(w_ptr + c, mask=slot_mask, other=1.0).to(ACC)
    return w, tl.load(b_ptr + c, mask=slot_mask, other=0.0).to(ACC)


@triton.jit
def _gn_params(mean_ptr, var_ptr, w_ptr, b_ptr, pair, pair_mask, c, slot_mask, eps, ACC: tl.constexpr):
    """Per pair: mean and invstd; per slot: weight, scale = weight * invstd, and bias."""
    mean = tl.load(mean_ptr + pair, mask=pair_mask, other=0.0).to(ACC)
    invstd = _inv_std(tl.load(var_ptr + pair, mask=pair_mask, other=1.0).to(ACC), eps)
    w, b = _gn_affine(w_ptr, b_ptr, c, slot_mask, ACC)
    return mean, invstd, w, w * invstd[:, None], b


@triton.jit
def _gn_forward_values(x, mean, scale, b, slope, ACT: tl.constexpr):
    """y = act(z) of a tile from per-pair means and per-slot scales and biases."""
    return _activation(_pre_activation(x, mean[:, None, None], scale[:, :, None], b[:, :, None]), slope, ACT)


@triton.jit
def _gn_grad_terms(dy_ptr, x_ptr, n, c, s, mask, stride_dyn, stride_dys, stride_dyc, stride_xn, stride_xs,
                   stride_xc, mean, invstd, scale, b, slope, ACT: tl.constexpr, ACC: tl.constexpr):
    """dz = dy * act'(z), with z recomputed from x, and xhat, on one tile."""
    x = tl.load(x_ptr + _gn_offsets(n, c, s, stride_xn, stride_xs, stride_xc), mask=mask, other=0.0).to(ACC)
    dy = tl.load(dy_ptr + _gn_offsets(n, c, s, stride_dyn, stride_dys, stride_dyc), mask=mask, other=0.0).to(ACC)
    return _grad_terms(x, dy, mean[:, None, None], invstd[:, None, None], scale[:, :, None], b[:, :, None], slope,
                       ACT)


@triton.jit
def _gn_grad_input(dz, xhat, w, invstd, mean_wdz, mean_wdz_xhat):
    """dx = invstd * (weight * dz - mean_g(weight * dz) - xhat * mean_g(weight * dz * xhat)),
    the means over each (sample, group) (csrc/kernel_math.h group_grad_input)."""
    return (w[:, :, None] * dz - mean_wdz[:, None, None] - xhat * mean_wdz_xhat[:, None, None]) * invstd[:, None, None]


# ---------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------


@triton.jit
def _gn_stats_kernel(
    x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, var_ptr, part_ptr,
    N, G, Cg, S, blocks_per_n, cg_blocks, s_tiles, tiles_per_split, n_splits,
    stride_xn, stride_xs, stride_xc, stride_yn, stride_ys, stride_yc, eps: tl.float64, slope: tl.float64,
    ACT: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr, ONE_PASS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Statistics of a block's pairs over one split of its position tiles.

    Each tile's (n, mean, M2) per pair is merged into the running ones with Chan's formula.
    ONE_PASS (the tile holds whole slices): write mean, biased var and y = act(z) straight
    from registers. Otherwise write the split's (count, mean, M2) per pair to
    part_ptr[3, cg_blocks * n_splits, N * G] for _merge_stats_kernel.
    """
    block, split = _block_and_index(n_splits)
    n, pair, pair_mask, c, slot_mask, cgb = _gn_slots(block, N, G, Cg, blocks_per_n, cg_blocks, IDX, BLOCK_N,
                                                       BLOCK_G, BLOCK_CG)
    channels = tl.minimum(Cg - cgb * BLOCK_CG, BLOCK_CG)  # of this block, in every group
    count = tl.zeros([BLOCK_N * BLOCK_G], dtype=ACC)
    mean = tl.zeros([BLOCK_N * BLOCK_G], dtype=ACC)
    m2 = tl.zeros([BLOCK_N * BLOCK_G], dtype=ACC)
    t_begin = split * tiles_per_split
    for t in range(t_begin, tl.minimum(t_begin + tiles_per_split, s_tiles)):
        s, mask = _gn_positions(t, S, slot_mask, IDX, BLOCK_S)
        x = tl.load(x_ptr + _gn_offsets(n, c, s, stride_xn, stride_xs, stride_xc), mask=mask, other=0.0).to(ACC)
        n_tile = (channels * tl.minimum(S - tl.cast(t, IDX) * BLOCK_S, BLOCK_S)).to(ACC)
        mean_tile = tl.sum(tl.sum(x, axis=2), axis=1) / n_tile
        d = tl.where(mask, x - mean_tile[:, None, None], 0.0)
        m2_tile = tl.sum(tl.sum(d * d, axis=2), axis=1)
        if ONE_PASS:
            var = m2_tile / n_tile
            _store(mean_ptr + pair, mean_tile, mask=pair_mask)
            _store(var_ptr + pair, var, mask=pair_mask)
            w, b = _gn_affine(w_ptr, b_ptr, c, slot_mask, ACC)
            y = _gn_forward_values(x, mean_tile, w * _inv_std(var, _scalar(eps, ACC))[:, None], b,
                                   _scalar(slope, ACC), ACT)
            _store(y_ptr + _gn_offsets(n, c, s, stride_yn, stride_ys, stride_yc), y, mask=mask)
        else:
            count, mean, m2 = _chan_merge(count, mean, m2, n_tile, mean_tile, m2_tile)
    if not ONE_PASS:
        pairs = tl.cast(N, IDX) * G
        plane = tl.cast(cg_blocks * n_splits, IDX) * pairs
        part = part_ptr + (cgb * n_splits + split).to(IDX) * pairs + pair
        _store(part, count, mask=pair_mask)
        _store(part + plane, mean, mask=pair_mask)
        _store(part + 2 * plane, m2, mask=pair_mask)


@triton.jit
def _gn_act_apply_kernel(
    x_ptr, y_ptr, mean_ptr, var_ptr, w_ptr, b_ptr,
    N, G, Cg, S, blocks_per_n, cg_blocks, s_tiles,
    stride_xn, stride_xs, stride_xc, stride_yn, stride_ys, stride_yc, eps: tl.float64, slope: tl.float64,
    ACT: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """y = act(z) on one tile from the merged statistics: the split path."""
    block, t = _block_and_index(s_tiles)
    n, pair, pair_mask, c, slot_mask, _ = _gn_slots(block, N, G, Cg, blocks_per_n, cg_blocks, IDX, BLOCK_N, BLOCK_G,
                                                    BLOCK_CG)
    mean, _, _, scale, b = _gn_params(mean_ptr, var_ptr, w_ptr, b_ptr, pair, pair_mask, c, slot_mask,
                                      _scalar(eps, ACC), ACC)
    s, mask = _gn_positions(t, S, slot_mask, IDX, BLOCK_S)
    x = tl.load(x_ptr + _gn_offsets(n, c, s, stride_xn, stride_xs, stride_xc), mask=mask, other=0.0).to(ACC)
    y = _gn_forward_values(x, mean, scale, b, _scalar(slope, ACC), ACT)
    _store(y_ptr + _gn_offsets(n, c, s, stride_yn, stride_ys, stride_yc), y, mask=mask)


@triton.jit
def _gn_grad_sums_kernel(
    dy_ptr, x_ptr, dx_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, dw_ptr, db_ptr, wpart_ptr, cpart_ptr,
    N, G, Cg, S, blocks_per_n, cg_blocks, s_tiles, tiles_per_split, n_splits, inv_count: tl.float64,
    stride_dyn, stride_dys, stride_dyc, stride_xn, stride_xs, stride_xc, stride_dxn, stride_dxs, stride_dxc,
    eps: tl.float64, slope: tl.float64,
    ACT: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr, ONE_PASS: tl.constexpr, FINAL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Per-(sample, channel) sums of dz and dz * xhat over one split of a block's position tiles.

    They go to cpart_ptr[2, N * n_splits, C] (row n * n_splits + split), whose sums over rows
    are dbias and dweight; FINAL (one sample, one split): they are, and are written to
    dw_ptr and db_ptr. ONE_PASS (the tile holds whole slices): x and dy are still in
    registers, so finish dx with the group means of weight * dz and weight * dz * xhat.
    Otherwise write those sums per pair to wpart_ptr[2, cg_blocks * n_splits, N * G].
    """
    block, split = _block_and_index(n_splits)
    n, pair, pair_mask, c, slot_mask, cgb = _gn_slots(block, N, G, Cg, blocks_per_n, cg_blocks, IDX, BLOCK_N,
                                                       BLOCK_G, BLOCK_CG)
    mean, invstd, w, scale, b = _gn_params(mean_ptr, var_ptr, w_ptr, b_ptr, pair, pair_mask, c, slot_mask,
                                           _scalar(eps, ACC), ACC)
    slope = _scalar(slope, ACC)
    sum_dz = tl.zeros([BLOCK_N * BLOCK_G, BLOCK_CG], dtype=ACC)
    sum_dz_xhat = tl.zeros([BLOCK_N * BLOCK_G, BLOCK_CG], dtype=ACC)
    t_begin = split * tiles_per_split
    for t in range(t_begin, tl.minimum(t_begin + tiles_per_split, s_tiles)):
        s, mask = _gn_positions(t, S, slot_mask, IDX, BLOCK_S)
        dz, xhat = _gn_grad_terms(dy_ptr, x_ptr, n, c, s, mask, stride_dyn, stride_dys, stride_dyc, stride_xn,
                                  stride_xs, stride_xc, mean, invstd, scale, b, slope, ACT, ACC)
        sum_dz += tl.sum(dz, axis=2)
        sum_dz_xhat += tl.sum(dz * xhat, axis=2)
        if ONE_PASS:
            # The loop ran once: finish dx from the tile still in registers.
            mean_wdz = tl.sum(w * sum_dz, axis=1) * _scalar(inv_count, ACC)
            mean_wdz_xhat = tl.sum(w * sum_dz_xhat, axis=1) * _scalar(inv_count, ACC)
            dx = _gn_grad_input(dz, xhat, w, invstd, mean_wdz, mean_wdz_xhat)
            _store(dx_ptr + _gn_offsets(n, c, s, stride_dxn, stride_dxs, stride_dxc), dx, mask=mask)
    if FINAL:
        _store(dw_ptr + c, sum_dz_xhat, mask=slot_mask)
        _store(db_ptr + c, sum_dz, mask=slot_mask)
    else:
        C = tl.cast(G, IDX) * Cg
        row = n * n_splits + split
        cpart = cpart_ptr + (row * C)[:, None] + c
        _store(cpart, sum_dz, mask=slot_mask)
        _store(cpart + tl.cast(N, IDX) * n_splits * C, sum_dz_xhat, mask=slot_mask)
    if not ONE_PASS:
        pairs = tl.cast(N, IDX) * G
        wpart = wpart_ptr + (cgb * n_splits + split).to(IDX) * pairs + pair
        _store(wpart, tl.sum(w * sum_dz, axis=1), mask=pair_mask)
        _store(wpart + tl.cast(cg_blocks * n_splits, IDX) * pairs, tl.sum(w * sum_dz_xhat, axis=1), mask=pair_mask)


@triton.jit
def _gn_grad_input_kernel(
    dy_ptr, x_ptr, dx_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, sums_ptr,
    N, G, Cg, S, blocks_per_n, cg_blocks, s_tiles, inv_count: tl.float64,
    stride_dyn, stride_dys, stride_dyc, stride_xn, stride_xs, stride_xc, stride_dxn, stride_dxs, stride_dxc,
    eps: tl.float64, slope: tl.float64,
    ACT: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """dx on one tile from the merged per-pair sums of weight * dz and weight * dz * xhat
    (sums_ptr[2, N * G]): the split path."""
    block, t = _block_and_index(s_tiles)
    n, pair, pair_mask, c, slot_mask, _ = _gn_slots(block, N, G, Cg, blocks_per_n, cg_blocks, IDX, BLOCK_N, BLOCK_G,
                                                    BLOCK_CG)
    mean, invstd, w, scale, b = _gn_params(mean_ptr, var_ptr, w_ptr, b_ptr, pair, pair_mask, c, slot_mask,
                                           _scalar(eps, ACC), ACC)
    inv_count = _scalar(inv_count, ACC)
    mean_wdz = tl.load(sums_ptr + pair, mask=pair_mask, other=0.0) * inv_count
    mean_wdz_xhat = tl.load(sums_ptr + tl.cast(N, IDX) * G + pair, mask=pair_mask, other=0.0) * inv_count
    s, mask = _gn_positions(t, S, slot_mask, IDX, BLOCK_S)
    dz, xhat = _gn_grad_terms(dy_ptr, x_ptr, n, c, s, mask, stride_dyn, stride_dys, stride_dyc, stride_xn, stride_xs,
                              stride_xc, mean, invstd, scale, b, _scalar(slope, ACC), ACT, ACC)
    dx = _gn_grad_input(dz, xhat, w, invstd, mean_wdz, mean_wdz_xhat)
    _store(dx_ptr + _gn_offsets(n, c, s, stride_dxn, stride_dxs, stride_dxc), dx, mask=mask)


@triton.jit
def _gn_param_grads_kernel(part_ptr, dw_ptr, db_ptr, C, rows, ACC: tl.constexpr, IDX: tl.constexpr,
                           BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """dbias (grid axis 1 = 0) and dweight (1): part[k, rows, C] summed over rows, BLOCK_R
    rows at a time in row order."""
    k = tl.program_id(1)
    c, c_mask = _channels(tl.program_id(0), C, IDX, BLOCK_C)
    r = tl.arange(0, BLOCK_R)
    part = part_ptr + k.to(IDX) * tl.cast(rows, IDX) * C + (r.to(IDX) * C)[:, None] + c[None, :]
    total = tl.zeros([BLOCK_C], dtype=ACC)
    for r0 in range(0, rows, BLOCK_R):
        total += tl.sum(tl.load(part, mask=((r0 + r) < rows)[:, None] & c_mask[None, :], other=0.0), axis=0)
        part += tl.cast(C, IDX) * BLOCK_R
    if k == 0:
        _store(db_ptr + c, total, mask=c_mask)
    else:
        _store(dw_ptr + c, total, mask=c_mask)


# ---------------------------------------------------------------------------------------
# Planning: outputs and launches, on real tensors or on meta tensors (the offline checks)
# ---------------------------------------------------------------------------------------


def _grow(block, size_pow2, elements, others):
    """`block` grown (by powers of two) towards size_pow2 while the tile keeps within
    `elements` (others: the product of the other block sizes)."""
    return min(size_pow2, max(block, elements // others))


class GroupPlan(NamedTuple):
    """Tiles and split of one launch over N samples by G groups of Cg channels by S positions."""
    N: int
    G: int
    Cg: int
    S: int
    one_pass: bool          # a tile holds whole slices: one split of one tile per block
    block_n: int
    block_g: int
    block_cg: int
    block_s: int
    n_splits: int           # splits of a block's position tiles
    tiles_per_split: int
    num_warps: int

    @property
    def cg_blocks(self):
        return triton.cdiv(self.Cg, self.block_cg)

    @property
    def s_tiles(self):
        return triton.cdiv(self.S, self.block_s)

    @property
    def blocks(self):
        return triton.cdiv(self.N, self.block_n) * triton.cdiv(self.G, self.block_g) * self.cg_blocks

    @property
    def n_parts(self):
        """Partial results per pair: one per channel block and split."""
        return self.cg_blocks * self.n_splits

    @property
    def sizes(self):
        """The size arguments every kernel takes."""
        blocks_per_n = triton.cdiv(self.G, self.block_g) * self.cg_blocks
        return self.N, self.G, self.Cg, self.S, blocks_per_n, self.cg_blocks, self.s_tiles

    @property
    def padded(self):
        """(n, pairs, c, s): one past the largest sample, pair index, channel and position a
        tile forms, masked lanes included."""
        n, g, j, s = (triton.cdiv(size, block) * block for size, block in
                      zip((self.N, self.G, self.Cg, self.S), (self.block_n, self.block_g, self.block_cg, self.block_s)))
        return n, n * self.G + g, g * self.Cg + j, s

    @staticmethod
    def make(N, G, Cg, S, channels_fast, device, one_pass_budget=None):
        """The plan of a reduction over each (sample, group). channels_fast: channels are the
        unit-stride axis, so a tile spans several of them (the groups of a sample side by
        side). one_pass_budget: (elements a thread, warps) a one-pass program may hold its
        slices in without spilling, or None."""
        n2, g2, cg2, s2 = (triton.next_power_of_2(v) for v in (N, G, Cg, S))
        per_thread, max_warps = one_pass_budget or (0, 0)
        block_g = min(g2, max(1, (ONE_PASS_SPAN if channels_fast else 1) // cg2))
        one_pass = cg2 * s2 * block_g <= 32 * max_warps * per_thread
        if one_pass:
            block_cg, block_s, elements = cg2, s2, max(TILE_ELEMENTS, cg2 * s2 * block_g)
        else:
            span = min(cg2 * g2, SPLIT_SPAN) if channels_fast else 1
            block_cg, elements = min(cg2, span), SPLIT_TILE
            block_g = min(g2, max(1, span // block_cg))
            block_s = _spatial_block(S, max(1, elements // (block_cg * block_g)),
                                     n2 * (cg2 // block_cg) * (g2 // block_g))
        # Fill the tile: a group's channels, then more groups, then more samples.
        block_cg = _grow(block_cg, cg2, elements, block_s * block_g)
        block_g = _grow(block_g, g2, elements, block_s * block_cg)
        block_n = _grow(1, n2, elements, block_s * block_cg * block_g)
        tile = block_n * block_g * block_cg * block_s
        num_warps = _num_warps(tile, per_thread, max_warps) if one_pass else \
            _num_warps(tile, TILE_PER_THREAD, SPLIT_WARPS)
        plan = GroupPlan(N, G, Cg, S, one_pass, block_n, block_g, block_cg, block_s, 1, 1, num_warps)
        if one_pass:
            return plan
        n_splits = min(max(triton.cdiv(target_programs(device), plan.blocks), 1), plan.s_tiles)
        tiles_per_split = triton.cdiv(plan.s_tiles, n_splits)
        return plan._replace(n_splits=triton.cdiv(plan.s_tiles, tiles_per_split), tiles_per_split=tiles_per_split)

    def bound(self, strides, *extra):
        """An upper bound on the offsets (through each tensor's (n, s, c) strides) and the
        indices this plan's tiles form, masked lanes included, and on the `extra` sizes."""
        n, pairs, c, s = self.padded
        offsets = [n * abs(sn) + s * abs(ss) + c * abs(sc) for sn, ss, sc in strides]
        return max([n, pairs, c, s, *extra, *offsets])

    def constexprs(self, bound):
        """The tile constexprs, the index width for `bound`, and num_warps."""
        return dict(IDX=index_dtype(bound), BLOCK_N=self.block_n, BLOCK_G=self.block_g, BLOCK_CG=self.block_cg,
                    BLOCK_S=self.block_s, num_warps=self.num_warps)


def _view(x, groups):
    """(x as read, (N, C, S), strides) with groups checked."""
    x, (N, C, S), strides = channel_view(x)
    if isinstance(groups, bool) or groups < 1 or C % groups:
        raise ValueError(f"groups must be a positive int dividing the channels ({C}), got {groups!r}")
    return x, (N, C, S), strides


def _plan(N, C, S, groups, x_strides, backward, acc, device):
    """The plan of a forward or backward launch."""
    return GroupPlan.make(N, groups, C // groups, S, C > 1 and abs(x_strides[2]) == 1, device,
                          None if acc == tl.float64 else ONE_PASS_BUDGET[backward])


def _param_grads_launch(cpart, dweight, dbias, acc):
    """The launch that sums cpart[2, rows, C] over rows into dbias and dweight."""
    rows, C = cpart.shape[1:]
    block_c = min(triton.next_power_of_2(C), 128)
    block_r = min(triton.next_power_of_2(rows), max(1, 2048 // block_c))
    bound = 2 * triton.cdiv(rows, block_r) * block_r * C + triton.cdiv(C, block_c) * block_c
    return Launch(_gn_param_grads_kernel, (triton.cdiv(C, block_c), 2), (cpart, dweight, dbias, C, rows),
                  dict(ACC=acc, IDX=index_dtype(bound), BLOCK_R=block_r, BLOCK_C=block_c), bound)


def plan_forward(x, weight, bias, groups, eps, act, slope):
    """((y, mean, var), launches) of gn_act_forward, nothing run."""
    x, (N, C, S), x_strides = _view(x, groups)
    y = outputs.empty_like(x)
    acc, acc_torch = acc_dtype(x.dtype)
    mean = outputs.empty((N, groups), device=x.device, dtype=acc_torch)
    var = outputs.empty_like(mean)
    if x.numel() == 0:  # the statistics of no values, as stock's
        return (y, mean.fill_(float("nan")), var.fill_(float("nan"))), []
    plan = _plan(N, C, S, groups, x_strides, False, acc, x.device)
    weight, bias = weight.contiguous(), bias.contiguous()
    strides = [x_strides, channel_view(y)[2]]
    scalars = (*strides[0], *strides[1], float(eps), float(slope))
    part = mean if plan.one_pass else outputs.empty((3, plan.n_parts, N * groups), device=x.device, dtype=acc_torch)
    bound = plan.bound(strides, part.numel() + plan.padded[1])
    launches = [Launch(_gn_stats_kernel, (plan.blocks * plan.n_splits,),
                       (x, y, weight, bias, mean, var, part, *plan.sizes, plan.tiles_per_split, plan.n_splits,
                        *scalars),
                       dict(ACT=act, ACC=acc, ONE_PASS=plan.one_pass, **plan.constexprs(bound)), bound)]
    if plan.one_pass:
        return (y, mean, var), launches
    launches.append(merge_launch(_merge_stats_kernel, part, (mean, var), acc))
    bound = plan.bound(strides)
    launches.append(Launch(_gn_act_apply_kernel, (plan.blocks * plan.s_tiles,),
                           (x, y, mean, var, weight, bias, *plan.sizes, *scalars),
                           dict(ACT=act, ACC=acc, **plan.constexprs(bound)), bound))
    return (y, mean, var), launches


def plan_backward(dy, x, weight, bias, mean, var, groups, eps, act, slope):
    """((dx, dweight, dbias), launches) of gn_act_backward, nothing run."""
    x, (N, C, S), x_strides = _view(x, groups)
    dy, _, dy_strides = channel_view(dy)
    dx = outputs.empty_like(x)
    acc, acc_torch = acc_dtype(x.dtype)
    weight, bias = weight.contiguous(), bias.contiguous()
    dweight, dbias = outputs.empty_like(weight), outputs.empty_like(bias)
    if x.numel() == 0:
        return (dx, dweight.zero_(), dbias.zero_()), []
    mean, var = (t.to(acc_torch).contiguous() for t in (mean, var))
    plan = _plan(N, C, S, groups, x_strides, True, acc, x.device)
    strides = [dy_strides, x_strides, channel_view(dx)[2]]
    scalars = (1.0 / (C // groups * S), *dy_strides, *x_strides, *strides[2], float(eps), float(slope))
    final = N == 1 and plan.n_splits == 1
    n, pairs, c, _ = plan.padded
    cpart = dweight if final else outputs.empty((2, N * plan.n_splits, C), device=x.device, dtype=acc_torch)
    wpart = dweight if plan.one_pass else \
        outputs.empty((2, plan.n_parts, N * groups), device=x.device, dtype=acc_torch)
    bound = plan.bound(strides, 2 * n * plan.n_splits * C + c, wpart.numel() + pairs)
    launches = [Launch(_gn_grad_sums_kernel, (plan.blocks * plan.n_splits,),
                       (dy, x, dx, mean, var, weight, bias, dweight, dbias, wpart, cpart, *plan.sizes,
                        plan.tiles_per_split, plan.n_splits, *scalars),
                       dict(ACT=act, ACC=acc, ONE_PASS=plan.one_pass, FINAL=final, **plan.constexprs(bound)), bound)]
    if not final:
        launches.append(_param_grads_launch(cpart, dweight, dbias, acc))
    if plan.one_pass:
        return (dx, dweight, dbias), launches
    if plan.n_parts == 1:
        sums = wpart.view(2, N * groups)
    else:
        sums = outputs.empty((2, N * groups), device=x.device, dtype=acc_torch)
        launches.append(merge_launch(_sum_splits_kernel, wpart, (sums,), acc, grid_y=2))
    bound = plan.bound(strides, sums.numel() + pairs)
    launches.append(Launch(_gn_grad_input_kernel, (plan.blocks * plan.s_tiles,),
                           (dy, x, dx, mean, var, weight, bias, sums, *plan.sizes, *scalars),
                           dict(ACT=act, ACC=acc, **plan.constexprs(bound)), bound))
    return (dx, dweight, dbias), launches


# ---------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------


def gn_act_forward(x, weight, bias, groups, eps, act, slope):
    """y = act(group_norm(x, groups)); returns (y, mean, var), the mean and biased variance
    of each (sample, group), of shape (N, groups), in the accumulation dtype. weight and
    bias are (C,) tensors."""
    return plan_and_run(plan_forward, x, x, weight, bias, groups, eps, act, slope)


def gn_act_backward(dy, x, weight, bias, mean, var, groups, eps, act, slope):
    """(dx, dweight, dbias) of y = act(group_norm(x, groups)) with forward's statistics."""
    return plan_and_run(plan_backward, x, dy, x, weight, bias, mean, var, groups, eps, act, slope)
