"""Conv2d + bias + LeakyReLU in Triton: an implicit-GEMM forward with the bias and the
activation in the epilogue, and the fused backward step dy -> dz (+ dbias).

Forward as a GEMM: M = N*OH*OW output pixels, N = Cout, K = Cin*KH*KW. The reduction
index k runs over input channels, kernel rows and kernel columns together (k = ci*KH*KW +
kh*KW + kw, the order of a contiguous weight), so Cin = 3 wastes no lanes. Input and
output are addressed through their strides (NCHW or channels_last, in place); offsets are
int64. The accumulator is fp32; the epilogue adds the bias and applies LeakyReLU before
the one store, so the pre-activation never reaches memory.

Backward: dz = dy * (y > 0 ? 1 : slope) taken from the saved output (for slope >= 0,
sign(y) = sign(z)), with dbias reduced per output channel in the same pass; dx and
dweight then come from torch's convolution backward (cuDNN on GPU).
"""

import os

import torch
import triton
import triton.language as tl

from fusedgan._layout import channel_view
from fusedgan.triton.batch_norm_act import _acc_dtype, _offsets, _store

# num_warps <= 4 for non-1x1 kernels: Inductor's Triton conv template miscomputed 4x4
# convolutions with num_warps=8 (GUIDE §5, pytorch issue 173068).
_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
]
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if _INTERPRETED:
    # The interpreter would run every configuration to "tune": one is enough to test.
    _CONFIGS = _CONFIGS[:1]


@triton.autotune(configs=_CONFIGS, key=["M", "COUT", "K", "KH", "KW", "STRIDE_H", "STRIDE_W"])
@triton.jit
def _conv_leaky_relu_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    M, COUT, K, CIN, H, W, OH, OW,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_yn, stride_yc, stride_yh, stride_yw,
    slope,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    HAS_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr, ACC: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = m < M
    co_mask = co < COUT
    m64 = m.to(tl.int64)
    n = m64 // (OH * OW)
    oh = (m64 // OW) % OH
    ow = m64 % OW
    ih0 = oh * STRIDE_H - PAD_H
    iw0 = ow * STRIDE_W - PAD_W
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K
        ci = k // (KH * KW)
        kh = (k // KW) % KH
        kw = k % KW
        ih = ih0[:, None] + (kh * DIL_H)[None, :]
        iw = iw0[:, None] + (kw * DIL_W)[None, :]
        a_mask = m_mask[:, None] & k_mask[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a_off = n[:, None] * stride_xn + ci.to(tl.int64)[None, :] * stride_xc + ih * stride_xh + iw * stride_xw
        a = tl.load(x_ptr + a_off, mask=a_mask, other=0.0)
        # Weight as a (K, COUT) tile of the contiguous (COUT, K) matrix.
        b_off = co.to(tl.int64)[None, :] * K + k[:, None]
        b = tl.load(w_ptr + b_off, mask=k_mask[:, None] & co_mask[None, :], other=0.0)
        if DOT_FP32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=co_mask, other=0.0).to(ACC)[None, :]
    y = tl.where(acc > 0, acc, acc * slope)
    y_off = n[:, None] * stride_yn + co.to(tl.int64)[None, :] * stride_yc + (oh * stride_yh + ow * stride_yw)[:, None]
    _store(y_ptr + y_off, y, mask=m_mask[:, None] & co_mask[None, :])


@triton.jit
def _leaky_relu_grad_bias_kernel(
    dy_ptr, y_ptr, dz_ptr, db_ptr, R, C, S,
    stride_dyn, stride_dys, stride_dyc, stride_yn, stride_ys, stride_yc, stride_dzn, stride_dzs, stride_dzc,
    slope, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dz = dy * (y > 0 ? 1 : slope) for BLOCK_C channels over all rows, and dbias = sum dz."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    total = tl.zeros([BLOCK_C], dtype=ACC)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        mask = c_mask[:, None] & (r < R)[None, :]
        dy = tl.load(dy_ptr + _offsets(r, c, S, stride_dyn, stride_dys, stride_dyc), mask=mask, other=0.0)
        y = tl.load(y_ptr + _offsets(r, c, S, stride_yn, stride_ys, stride_yc), mask=mask, other=0.0)
        dz = tl.where(y > 0, dy.to(ACC), dy.to(ACC) * slope)
        _store(dz_ptr + _offsets(r, c, S, stride_dzn, stride_dzs, stride_dzc), dz, mask=mask)
        total += tl.sum(dz, axis=1)
    if HAS_BIAS:
        _store(db_ptr + c, total, mask=c_mask)


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def conv_leaky_relu_forward(x, weight, bias, stride, padding, dilation, groups, slope):
    """leaky_relu(conv2d(x, weight, bias)), zero padding; groups > 1 takes the reference path."""
    if groups != 1:
        from fusedgan import reference

        return reference.conv_leaky_relu_forward(x, weight, bias, stride, padding, dilation, groups, slope)
    N, CIN, H, W = x.shape
    COUT, _, KH, KW = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    OH = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    memory_format = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not \
        x.is_contiguous() else torch.contiguous_format
    y = torch.empty((N, COUT, OH, OW), device=x.device, dtype=x.dtype, memory_format=memory_format)
    M, K = N * OH * OW, CIN * KH * KW
    if y.numel() == 0:
        return y
    w2 = weight.reshape(COUT, K).contiguous()
    # fp32 follows cudnn.allow_tf32, as torch's convolution does; fp16/bf16 inputs are exact.
    precision = "tf32" if x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and x.is_cuda else "ieee"
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(COUT, meta["BLOCK_N"]))  # noqa: E731
    _conv_leaky_relu_kernel[grid](
        x, w2, bias if bias is not None else w2, y, M, COUT, K, CIN, H, W, OH, OW,
        *x.stride(), *y.stride(), float(slope),
        KH=KH, KW=KW, STRIDE_H=sh, STRIDE_W=sw, PAD_H=ph, PAD_W=pw, DIL_H=dh, DIL_W=dw,
        HAS_BIAS=bias is not None, INPUT_PRECISION=precision, ACC=_acc_dtype(x),
        # The interpreter's tl.dot multiplies bf16 as raw 16-bit integers (numpy has no
        # bf16); fp32 products of bf16 values are exact, as on the GPU's bf16 MMA.
        DOT_FP32=_INTERPRETED and x.dtype == torch.bfloat16)
    return y


def leaky_relu_grad_bias(dy, y, slope, has_bias):
    """(dz, dbias or None): the activation's backward from the saved output, with dbias fused."""
    y, (N, C, S), y_strides = channel_view(y)
    dy, _, dy_strides = channel_view(dy)
    dz = torch.empty_like(y)
    _, _, dz_strides = channel_view(dz)
    acc = torch.float64 if y.dtype == torch.float64 else torch.float32
    db = torch.empty(C, device=y.device, dtype=acc) if has_bias else dz
    block_c = min(triton.next_power_of_2(C), 16)
    _leaky_relu_grad_bias_kernel[(triton.cdiv(C, block_c),)](
        dy, y, dz, db, N * S, C, S, *dy_strides, *y_strides, *dz_strides, float(slope),
        HAS_BIAS=has_bias, ACC=_acc_dtype(y), BLOCK_R=max(4096 // block_c, 16), BLOCK_C=block_c)
    return dz, (db if has_bias else None)
