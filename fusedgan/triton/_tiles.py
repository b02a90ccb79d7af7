"""How the per-channel kernels (BatchNorm, the conv's dbias) walk an (N, C, *) tensor, and
the kernels that merge split reductions in split order (GroupNorm's too).

A tensor is read in place as N batch entries by S spatial positions (S = the product of
the spatial sizes) by C channels, through three strides (n, s, c) (see
fusedgan._layout.channel_view). When every tensor of a launch allows it (stride_n ==
S * stride_s, or N == 1, or S == 1: channels_last, (N, C), an expanded gradient), n and s
merge into one row axis of N * S rows.

A program works on tiles of BLOCK_C channels by BLOCK_N x BLOCK_S rows (n, s). An
element's offset is n * stride_n + s * stride_s + c * stride_c, with no division: a
program divides once per tile to find the tile's (n, s) block, and BLOCK_S is a power of
two, so the rest are shifts and masks. Offsets are int32 while every offset and index of
the launch fits (the IDX specialisation), int64 beyond.

Reductions over rows run on a (channel blocks, row splits) grid: each program reduces its
split's tiles, and a second small kernel merges the splits in split order (bitwise
repeatable, no atomics). Elementwise kernels run on one grid axis of (row tile, channel
block) pairs. Both stay within CUDA's grid limits for any tensor size.
"""

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fusedgan.triton._launch import Launch, index_dtype

# Elements per program on the tiled path.
TILE_ELEMENTS = 4096
# Warps per program at most (512 threads: 128 registers a thread).
MAX_WARPS = 16
# Elements a thread holds on tiles (one-pass programs hold more: their caller says how many).
TILE_PER_THREAD = 8


@triton.jit
def _scalar(value, ACC: tl.constexpr):
    """A float argument (declared tl.float64, so fp64 inputs keep every bit) in the
    accumulation dtype. tl.full, not tl.cast: the interpreter passes a Python float, which
    tl.cast would round to fp32 first."""
    return tl.full([], value, ACC)


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
def _channels(block, C, IDX: tl.constexpr, BLOCK_C: tl.constexpr):
    """Channel indices of channel block `block`, and their mask."""
    c = block.to(IDX) * BLOCK_C + tl.arange(0, BLOCK_C)
    return c, c < C


@triton.jit
def _tile_rows(t, N, S, s_tiles, IDX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    """Indices n and s of row tile t (tiles run over s blocks within n blocks), and their mask."""
    nb = t // s_tiles
    sb = t - nb * s_tiles
    i = tl.arange(0, BLOCK_N * BLOCK_S)
    n = nb.to(IDX) * BLOCK_N + i // BLOCK_S
    s = sb.to(IDX) * BLOCK_S + i % BLOCK_S
    return n, s, (n < N) & (s < S)


@triton.jit
def _offsets(n, s, c, stride_n, stride_s, stride_c):
    """Element offsets of a (channels, rows) tile. Rows are the reduced axis and come last,
    so the interpreter (numpy) reduces them pairwise, as the GPU's tree reduction does,
    rather than one by one."""
    return c[:, None] * stride_c + (n * stride_n + s * stride_s)[None, :]


@triton.jit
def _split(tiles_per_split, row_tiles):
    """The row tiles [begin, end) of this program's split (grid axis 1)."""
    begin = tl.program_id(1) * tiles_per_split
    return begin, tl.minimum(begin + tiles_per_split, row_tiles)


@triton.jit
def _sum_splits_kernel(part_ptr, out_ptr, C, n_splits, ACC: tl.constexpr, IDX: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[k, c] = the sum over splits i of part[k, i, c], added in split order."""
    k = tl.program_id(1).to(IDX)
    c, c_mask = _channels(tl.program_id(0), C, IDX, BLOCK_C)
    part = part_ptr + k * tl.cast(n_splits, IDX) * C + c
    total = tl.zeros([BLOCK_C], dtype=ACC)
    for _ in range(n_splits):
        total += tl.load(part, mask=c_mask, other=0.0)
        part += C
    _store(out_ptr + k * C + c, total, mask=c_mask)


@triton.jit
def _merge_stats_kernel(part_ptr, mean_ptr, var_ptr, C, n_splits, ACC: tl.constexpr, IDX: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    """Merge the splits' (count, mean, M2) of part[3, n_splits, C] in split order: the mean
    and biased variance of each of C slices (channels; GroupNorm's (sample, group) pairs)."""
    c, c_mask = _channels(tl.program_id(0), C, IDX, BLOCK_C)
    plane = tl.cast(n_splits, IDX) * C
    part = part_ptr + c
    count = tl.zeros([BLOCK_C], dtype=ACC)
    mean = tl.zeros([BLOCK_C], dtype=ACC)
    m2 = tl.zeros([BLOCK_C], dtype=ACC)
    for _ in range(n_splits):
        n_i = tl.load(part, mask=c_mask, other=0.0)
        mean_i = tl.load(part + plane, mask=c_mask, other=0.0)
        m2_i = tl.load(part + 2 * plane, mask=c_mask, other=0.0)
        total = count + n_i
        frac = tl.where(total > 0, n_i / tl.maximum(total, 1.0), 0.0)
        delta = mean_i - mean
        mean += delta * frac
        m2 += m2_i + delta * delta * count * frac
        count = total
        part += C
    _store(mean_ptr + c, mean, mask=c_mask)
    _store(var_ptr + c, m2 / tl.maximum(count, 1.0), mask=c_mask)  # (masked channels: count 0)


# ---------------------------------------------------------------------------------------
# Planning (host side)
# ---------------------------------------------------------------------------------------


def merge_rows(N, S, strides):
    """(rows, S, strides): n and s merged into one row axis (S = 1, the row stride in the
    n slot) when every tensor's (stride_n, stride_s, stride_c) allows it, else unchanged."""
    if all(S == 1 or N == 1 or sn == S * ss for sn, ss, _ in strides):
        return N * S, 1, [(ss if S > 1 else sn, 0, sc) for sn, ss, sc in strides]
    return N, S, list(strides)


def _spatial_block(S, block_r, n_pow2):
    """BLOCK_S: the power of two that leaves the fewest masked lanes over S (ties: the
    larger), at least 16 (whole 32-byte sectors) unless S is smaller, and at least
    block_r / n_pow2 so that BLOCK_N does not outgrow N."""
    hi = min(triton.next_power_of_2(S), block_r)
    lo = min(max(min(16, hi), block_r // n_pow2), hi)
    sizes = [1 << k for k in range(lo.bit_length() - 1, hi.bit_length())]
    return min(sizes, key=lambda p: (triton.cdiv(S, p) * p, -p))


def target_programs(device):
    """Programs that fill the GPU a few times over. The interpreter runs programs one after
    another, so on the CPU a handful (still more than one split) is best; plans on meta
    tensors (the offline checks) are for an H200's 132 SMs."""
    if device.type == "cuda":
        return 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4 * 132 if device.type == "meta" else 8


@functools.cache
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def _num_warps(elements, per_thread, max_warps=MAX_WARPS):
    return min(max_warps, max(4, elements // (32 * per_thread)))


class Plan(NamedTuple):
    """Tiles and row split of one launch over N x S rows by C channels."""
    N: int
    S: int
    C: int
    one_pass: bool          # one tile holds a channel block's whole slice (one split of one tile)
    block_n: int
    block_s: int
    block_c: int
    n_splits: int
    tiles_per_split: int
    num_warps: int

    @property
    def s_tiles(self):
        return triton.cdiv(self.S, self.block_s)

    @property
    def row_tiles(self):
        return triton.cdiv(self.N, self.block_n) * self.s_tiles

    @property
    def c_blocks(self):
        return triton.cdiv(self.C, self.block_c)

    @staticmethod
    def reduction(N, S, C, channels_fast, device, one_pass_budget=None):
        """A reduction over rows. channels_fast: channels are the unit-stride axis, so a tile
        spans at least 8 of them (whole 32-byte sectors). one_pass_budget: (elements a
        thread, warps) a one-pass program may hold its slice in without spilling, or None."""
        n_pow2, s_pow2, c_pow2 = (triton.next_power_of_2(v) for v in (N, S, C))
        min_block_c = min(c_pow2, 8) if channels_fast else 1
        per_thread, max_warps = one_pass_budget or (0, 0)
        one_pass_max = 32 * max_warps * per_thread
        one_pass = n_pow2 * s_pow2 * min_block_c <= one_pass_max
        if one_pass:
            # Short slices (small N*S) share a program between channels.
            block_c = min(c_pow2, 64, max(min_block_c, one_pass_max // (n_pow2 * s_pow2)))
            block_n, block_s = n_pow2, s_pow2
            num_warps = _num_warps(block_n * block_s * block_c, per_thread, max_warps)
        else:
            # Rows too few to fill a tile spread it over channels, which also keeps the
            # channel blocks of a huge C within the grid.
            block_c = min(c_pow2, 64 if channels_fast else min(64, max(1, TILE_ELEMENTS // (n_pow2 * s_pow2))))
            block_n, block_s = _tile_rows_shape(N, S, TILE_ELEMENTS // block_c)
            num_warps = _num_warps(block_n * block_s * block_c, TILE_PER_THREAD)
        plan = Plan(N, S, C, one_pass, block_n, block_s, block_c, 1, 1, num_warps)
        n_splits = min(max(triton.cdiv(target_programs(device), plan.c_blocks), 1), plan.row_tiles)
        tiles_per_split = triton.cdiv(plan.row_tiles, n_splits)
        return plan._replace(n_splits=triton.cdiv(plan.row_tiles, tiles_per_split), tiles_per_split=tiles_per_split)

    def elementwise(self):
        """An elementwise launch with this plan's channel blocks: tiles of about TILE_ELEMENTS."""
        block_n, block_s = _tile_rows_shape(self.N, self.S, TILE_ELEMENTS // self.block_c)
        return self._replace(one_pass=False, block_n=block_n, block_s=block_s, n_splits=1, tiles_per_split=1,
                             num_warps=_num_warps(block_n * block_s * self.block_c, TILE_PER_THREAD))

    @property
    def split_args(self):
        """The size arguments of a reduction kernel."""
        return self.N, self.S, self.C, self.s_tiles, self.row_tiles, self.tiles_per_split, self.n_splits

    @property
    def elementwise_args(self):
        """The size arguments of an elementwise kernel, and its grid."""
        return (self.N, self.S, self.C, self.s_tiles, self.c_blocks), (self.row_tiles * self.c_blocks,)

    def bound(self, strides, *extra):
        """An upper bound on the offsets (through each tensor's (n, s, c) strides) and the
        indices this plan's tiles form, masked lanes included, and on the `extra` sizes."""
        n, s, c = (triton.cdiv(size, block) * block
                   for size, block in zip((self.N, self.S, self.C), (self.block_n, self.block_s, self.block_c)))
        offsets = [n * abs(sn) + s * abs(ss) + c * abs(sc) for sn, ss, sc in strides]
        return max([n, s, c, *extra, *offsets])

    def constexprs(self, bound):
        """The tile constexprs, the index width for `bound`, and num_warps."""
        return dict(IDX=index_dtype(bound), BLOCK_N=self.block_n, BLOCK_S=self.block_s, BLOCK_C=self.block_c,
                    num_warps=self.num_warps)


def merge_launch(kernel, part, outputs, acc, grid_y=1):
    """The launch of a kernel that merges part[k, n_splits, C] over splits into `outputs`."""
    n_splits, C = part.shape[1:]
    block_c = min(triton.next_power_of_2(C), 1024)
    bound = part.numel() + block_c
    return Launch(kernel, (triton.cdiv(C, block_c), grid_y), (part, *outputs, C, n_splits),
                  dict(ACC=acc, IDX=index_dtype(bound), BLOCK_C=block_c), bound)


def _tile_rows_shape(N, S, block_r):
    """(BLOCK_N, BLOCK_S) of a tile of about block_r rows."""
    n_pow2 = triton.next_power_of_2(N)
    block_s = _spatial_block(S, block_r, n_pow2)
    return min(max(block_r // block_s, 1), n_pow2), block_s
