"""Conv2d + bias + LeakyReLU in Triton: an implicit-GEMM forward with the bias and the
activation in the epilogue, and the fused backward step dy -> dz (+ dbias).

Forward as a GEMM: M = N*OH*OW output pixels, N = Cout, K = Cin*KH*KW. The reduction
index k runs over input channels, kernel rows and kernel columns together (k = ci*KH*KW +
kh*KW + kw, the order of a contiguous weight), so Cin = 3 wastes no lanes. Addresses split
into a row part (the output pixel's (n, oh, ow), divided out once per program) and a
column part (k's (ci, kh, kw), divided by constants once per k step): the loop adds the
two, with no division per element. Input and output are addressed through their strides
(NCHW or channels_last, in place); the output takes the input's layout. Offsets are int32
while they fit, int64 beyond. The accumulator is fp32; the epilogue adds the bias and
applies LeakyReLU before the one store, so the pre-activation never reaches memory.

The tile config is benchmarked once per (device, dtype, channels, image size, kernel,
stride, padding, dilation, layout): the batch size is not part of the key, and inside a
CUDA graph capture an untuned key takes the first config rather than benchmark there.
groups > 1 and fp64 take the reference path (torch's convolution): an fp64 tl.dot tile
large enough to be worth it does not fit in registers. So do images with a padded side of
2^31 or more, whose row and column indices the kernel keeps in int32.

Backward: dz = dy * (y > 0 ? 1 : slope) taken from the saved output (for slope >= 0,
sign(y) = sign(z)), with dbias reduced per output channel over a split of the rows and
the splits merged in a fixed order (no atomics); dx and dweight then come from torch's
convolution backward (cuDNN on GPU).
"""

import os

import torch
import triton
import triton.language as tl

from fusedgan import _outputs as outputs
from fusedgan import reference
from fusedgan._layout import channel_view, conv_output_format
from fusedgan.triton import _tiles as tiles
from fusedgan.triton._launch import INT32_LIMIT, Launch, acc_dtype, device_of, index_dtype, run

# Tile configs by how the products run: on tensor cores (fp16, bf16, and fp32 as TF32), or
# as FMAs (fp32 with TF32 off), whose operands take more registers a thread. Each compiles
# without register spills for sm_80 and sm_90 (python -m fusedgan.triton.compile_check).
# num_warps <= 4: Inductor's Triton conv template miscomputed 4x4 convolutions with
# num_warps=8 (pytorch issue 173068).
CONFIGS = {
    "mma": [dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
            dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, num_warps=4, num_stages=3)],
    "fma": [dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=2),
            dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=2)],
}
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# Output tiles along M grouped by GROUP_M, so programs running together share inputs in L2.
GROUP_M = 8


@triton.jit
def _conv_leaky_relu_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    M, COUT, K, H, W, OHW, OW,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_yn, stride_yc, stride_yh, stride_yw,
    slope: tl.float64,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    HAS_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr, IDX: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # One grid axis of output tiles, in groups of GROUP_M tiles along M.
    pid = tl.program_id(0)
    m_tiles = tl.cdiv(M, BLOCK_M)
    n_tiles = tl.cdiv(COUT, BLOCK_N)
    group = pid // (GROUP_M * n_tiles)
    first_m = group * GROUP_M
    group_m = tl.minimum(m_tiles - first_m, GROUP_M)
    pid_m = first_m + (pid - group * GROUP_M * n_tiles) % group_m
    pid_n = (pid - group * GROUP_M * n_tiles) // group_m
    # Rows: output pixels m = (n, oh, ow), divided out once.
    m = pid_m.to(IDX) * BLOCK_M + tl.arange(0, BLOCK_M)
    co = pid_n.to(IDX) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = m < M
    co_mask = co < COUT
    n = m // OHW
    oh = ((m - n * OHW) // OW).to(tl.int32)
    ow = (m - n * OHW - oh * OW).to(tl.int32)
    ih0 = oh * STRIDE_H - PAD_H
    iw0 = ow * STRIDE_W - PAD_W
    x_row = n * stride_xn + ih0.to(IDX) * stride_xh + iw0.to(IDX) * stride_xw
    w_col = co * K
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        # Columns: k = (ci, kh, kw), divided by constants once per step.
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K
        ci = k // (KH * KW)
        kh = (k - ci * (KH * KW)) // KW
        kw = k - ci * (KH * KW) - kh * KW
        ih = ih0[:, None] + (kh * DIL_H)[None, :]
        iw = iw0[:, None] + (kw * DIL_W)[None, :]
        x_col = ci.to(IDX) * stride_xc + (kh * DIL_H).to(IDX) * stride_xh + (kw * DIL_W).to(IDX) * stride_xw
        # One unsigned compare per bound pair: a negative index wraps past H or W.
        a_mask = m_mask[:, None] & k_mask[None, :] & (ih.to(tl.uint32) < H) & (iw.to(tl.uint32) < W)
        a = tl.load(x_ptr + (x_row[:, None] + x_col[None, :]), mask=a_mask, other=0.0)
        # Weight as a (K, COUT) tile of the contiguous (COUT, K) matrix.
        b = tl.load(w_ptr + (w_col[None, :] + k[:, None]), mask=k_mask[:, None] & co_mask[None, :], other=0.0)
        if DOT_FP32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=co_mask, other=0.0).to(tl.float32)[None, :]
    y = tl.where(acc > 0, acc, acc * tiles._scalar(slope, tl.float32))
    y_row = n * stride_yn + oh.to(IDX) * stride_yh + ow.to(IDX) * stride_yw
    tiles._store(y_ptr + (y_row[:, None] + co[None, :] * stride_yc), y, mask=m_mask[:, None] & co_mask[None, :])


@triton.jit
def _leaky_relu_grad_bias_kernel(
    dy_ptr, y_ptr, dz_ptr, part_ptr, N, S, C, s_tiles, row_tiles, tiles_per_split, n_splits,
    stride_dyn, stride_dys, stride_dyc, stride_yn, stride_ys, stride_yc, stride_dzn, stride_dzs, stride_dzc,
    slope: tl.float64, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dz = dy * (y > 0 ? 1 : slope) for BLOCK_C channels over one split of the row tiles;
    with HAS_BIAS, the split's sums of dz go to part_ptr[n_splits, C]."""
    c, c_mask = tiles._channels(tl.program_id(0), C, IDX, BLOCK_C)
    slope = tiles._scalar(slope, ACC)
    total = tl.zeros([BLOCK_C], dtype=ACC)
    t_begin, t_end = tiles._split(tiles_per_split, row_tiles)
    for t in range(t_begin, t_end):
        n, s, r_mask = tiles._tile_rows(t, N, S, s_tiles, IDX, BLOCK_N, BLOCK_S)
        mask = r_mask[None, :] & c_mask[:, None]
        dy = tl.load(dy_ptr + tiles._offsets(n, s, c, stride_dyn, stride_dys, stride_dyc), mask=mask, other=0.0).to(ACC)
        y = tl.load(y_ptr + tiles._offsets(n, s, c, stride_yn, stride_ys, stride_yc), mask=mask, other=0.0)
        dz = tl.where(y > 0, dy, dy * slope)
        tiles._store(dz_ptr + tiles._offsets(n, s, c, stride_dzn, stride_dzs, stride_dzc), dz, mask=mask)
        total += tl.sum(dz, axis=1)
    if HAS_BIAS:
        tiles._store(part_ptr + tl.program_id(1).to(IDX) * C + c, total, mask=c_mask)


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def conv_output(x, weight, stride, padding, dilation):
    """The (empty) output of conv_leaky_relu_forward: (N, COUT, OH, OW) in conv_output_format(x)."""
    N, _, H, W = x.shape
    COUT, _, KH, KW = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    OH = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    return torch.empty((N, COUT, OH, OW), device=x.device, dtype=x.dtype, memory_format=conv_output_format(x))


def _extent(indices, strides):
    return sum(index * abs(stride) for index, stride in zip(indices, strides))


def plan_forward(x, weight, bias, y, stride, padding, dilation, slope, config):
    """The launch that writes leaky_relu(conv2d(x, weight, bias)) into y with one tile
    config (groups 1, fp16/bf16/fp32), nothing run."""
    N, CIN, H, W = x.shape
    COUT, _, KH, KW = weight.shape
    OH, OW = y.shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    M, K = N * OH * OW, CIN * KH * KW
    w2 = weight.reshape(COUT, K).contiguous()
    block_m, block_n, block_k = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
    m_pad, co_pad, k_pad = (triton.cdiv(v, b) * b for v, b in ((M, block_m), (COUT, block_n), (K, block_k)))
    # Masked lanes too: rows past M, columns past K, and pixels in the padding.
    bound = max(m_pad, co_pad * K + k_pad,
                _extent((m_pad // (OH * OW) + 1, k_pad // (KH * KW) + 1, H + KH * dh + ph, W + KW * dw + pw),
                        x.stride()),
                _extent((m_pad // (OH * OW) + 1, co_pad, OH, OW), y.stride()))
    grid = (triton.cdiv(M, block_m) * triton.cdiv(COUT, block_n),)
    return Launch(_conv_leaky_relu_kernel, grid,
                  (x, w2, bias.contiguous() if bias is not None else w2, y, M, COUT, K, H, W, OH * OW, OW,
                   *x.stride(), *y.stride(), float(slope)),
                  dict(KH=KH, KW=KW, STRIDE_H=sh, STRIDE_W=sw, PAD_H=ph, PAD_W=pw, DIL_H=dh, DIL_W=dw,
                       HAS_BIAS=bias is not None, INPUT_PRECISION=_precision(x),
                       IDX=index_dtype(bound),
                       # The interpreter's tl.dot multiplies bf16 as raw 16-bit integers (numpy has
                       # no bf16); fp32 products of bf16 values are exact, as on the GPU's bf16 MMA.
                       DOT_FP32=_INTERPRETED and x.dtype == torch.bfloat16, GROUP_M=GROUP_M, **config),
                  bound)


def _precision(x):
    # fp32 follows cudnn.allow_tf32, as torch's convolution does; fp16/bf16 products are exact.
    return "tf32" if x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not _INTERPRETED else "ieee"


def configs(x):
    """The tile configs the tuner picks from for input x. The interpreter runs one: the
    largest tile, which takes the fewest (serial) programs and steps."""
    if _INTERPRETED:
        return CONFIGS["mma"][:1]
    return CONFIGS["fma" if x.dtype == torch.float32 and _precision(x) == "ieee" else "mma"]


_TUNED = {}


def tune_key(x, weight, bias, stride, padding, dilation):
    """What the tile config is tuned for: everything but the batch size."""
    return (x.device, x.dtype, torch.backends.cudnn.allow_tf32, x.shape[1:], weight.shape, _pair(stride),
            _pair(padding), _pair(dilation), bias is not None, conv_output_format(x))


def tuned_config(key, candidates, launch_for):
    """The config of `key`: the fastest candidate, benchmarked on the first call with that
    key. Inside a CUDA graph capture an untuned key takes the first candidate without
    benchmarking (which would synchronise) and stays untuned."""
    if len(candidates) == 1:
        return candidates[0]
    if key not in _TUNED:
        if torch.cuda.is_current_stream_capturing():
            return candidates[0]
        times = [triton.testing.do_bench(lambda c=c: run([launch_for(c)]), warmup=5, rep=20) for c in candidates]
        _TUNED[key] = candidates[times.index(min(times))]
    return _TUNED[key]


def kernel_applies(x, groups, padding):
    """Whether the kernel computes the convolution: groups 1, fp16/bf16/fp32, and padded
    image sides that int32 row and column indices reach."""
    (ph, pw) = _pair(padding)
    return groups == 1 and x.dtype != torch.float64 and max(x.shape[2] + 2 * ph, x.shape[3] + 2 * pw) < INT32_LIMIT


def conv_leaky_relu_forward(x, weight, bias, stride, padding, dilation, groups, slope):
    """leaky_relu(conv2d(x, weight, bias)), zero padding; where the kernel does not apply,
    the reference path computes it (in the same output layout)."""
    y = outputs.poison(conv_output(x, weight, stride, padding, dilation))
    if not kernel_applies(x, groups, padding) or y.numel() == 0:
        if y.numel():
            y.copy_(reference.conv_leaky_relu_forward(x, weight, bias, stride, padding, dilation, groups, slope))
        return y
    with device_of(x):
        def launch_for(config):
            return plan_forward(x, weight, bias, y, stride, padding, dilation, slope, config)

        key = tune_key(x, weight, bias, stride, padding, dilation)
        run([launch_for(tuned_config(key, configs(x), launch_for))])
    return y


def plan_grad_bias(dy, y, slope, has_bias):
    """((dz, dbias or None), launches) of leaky_relu_grad_bias, nothing run."""
    y, (N, C, S), y_strides = channel_view(y)
    dy, _, dy_strides = channel_view(dy)
    dz = outputs.empty_like(y)
    rows, S, strides = tiles.merge_rows(N, S, [y_strides, dy_strides, channel_view(dz)[2]])
    acc, acc_torch = acc_dtype(y.dtype)
    plan = tiles.Plan.reduction(rows, S, C, C > 1 and abs(strides[0][2]) == 1, y.device)
    part = outputs.empty((1, plan.n_splits, C), device=y.device, dtype=acc_torch) if has_bias else dz
    bound = plan.bound(strides, part.numel())
    ys, dys, dzs = strides
    launches = [Launch(_leaky_relu_grad_bias_kernel, (plan.c_blocks, plan.n_splits),
                       (dy, y, dz, part, *plan.split_args, *dys, *ys, *dzs, float(slope)),
                       dict(HAS_BIAS=has_bias, ACC=acc, **plan.constexprs(bound)), bound)]
    if not has_bias:
        return (dz, None), launches
    if plan.n_splits == 1:
        return (dz, part.view(C)), launches
    db = outputs.empty(C, device=y.device, dtype=acc_torch)
    launches.append(tiles.merge_launch(tiles._sum_splits_kernel, part, (db,), acc))
    return (dz, db), launches


def leaky_relu_grad_bias(dy, y, slope, has_bias):
    """(dz, dbias or None): the activation's backward from the saved output, with dbias fused."""
    with device_of(y):
        outputs, launches = plan_grad_bias(dy, y, slope, has_bias)
        run(launches)
    return outputs
