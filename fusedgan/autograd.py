"""The torch.autograd.Function classes: each saves the fewest tensors and calls one backend."""

import torch
from torch.autograd.function import once_differentiable

from fusedgan import reference
from fusedgan._activation import IDENTITY
from fusedgan._backends import backend_module


class BatchNormActFunction(torch.autograd.Function):
    """y = act(batch_norm(x)), with (y, mean, var) out and (dx, dweight, dbias) back.

    Saved for backward: the input, the parameters and the per-channel statistics; the
    pre-activation tensor is recomputed in backward, never stored. Arguments:
    (x, weight, bias, mean, var, training, eps, act, slope, backend) with weight and bias
    (C,) tensors, mean/var the running statistics (ignored when training), act an
    activation code from fusedgan._activation and backend a resolved backend name.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, training, eps, act, slope, backend):
        ops = backend_module(backend)
        y, mean, var = ops.bn_act_forward(x, weight, bias, mean, var, training, eps, act, slope)
        ctx.save_for_backward(x, weight, bias, mean, var)
        ctx.config = (training, eps, act, slope, ops)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, _dmean, _dvar):
        x, weight, bias, mean, var = ctx.saved_tensors
        training, eps, act, slope, ops = ctx.config
        dx, dweight, dbias = ops.bn_act_backward(dy, x, weight, bias, mean, var, training, eps, act, slope)
        need = ctx.needs_input_grad
        return (dx if need[0] else None, dweight if need[1] else None, dbias if need[2] else None,
                None, None, None, None, None, None, None)


class InPlaceBatchNormActFunction(torch.autograd.Function):
    """BatchNormActFunction's memory-saving form (InPlace-ABN's idea): y = act(batch_norm(x))
    is written over x, and y is all that is saved, so a layer keeps one tensor for backward
    where the plain form keeps its input beside the output the next layer keeps.

    Backward inverts the activation (identity, or LeakyReLU with slope > 0: z = y, or y /
    slope where y < 0) and the affine map (xhat = (z - bias) / weight): weight keeps its
    standard meaning, so stock checkpoints load unchanged. Where a channel's weight is
    exactly 0, y holds nothing of x, so forward keeps a copy of those channels' input (when
    weight needs a gradient: a host read of whether any weight is 0; nothing is copied when
    none is) and their dweight is exact too. The inversion costs precision where |bias / weight| is large:
    xhat's error grows like unit roundoff * |z| / |weight|. Arguments as
    BatchNormActFunction; returns (x, now holding y; mean; var).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, training, eps, act, slope, backend):
        ops = backend_module(backend)
        y, mean, var = ops.bn_act_forward(x, weight, bias, mean, var, training, eps, act, slope)
        zero = weight == 0
        zero_channels = x[:, zero].clone() if ctx.needs_input_grad[1] and bool(zero.any()) else None
        x.copy_(y)
        del y
        ctx.mark_dirty(x)
        ctx.mark_non_differentiable(mean, var)
        ctx.save_for_backward(x, weight, bias, mean, var, zero, zero_channels)
        ctx.config = (training, eps, act, slope)
        return x, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, _dmean, _dvar):
        y, weight, bias, mean, var, zero, zero_channels = ctx.saved_tensors
        training, eps, act, slope = ctx.config
        acc = torch.float64 if y.dtype == torch.float64 else torch.float32
        shape, dims = (1, -1) + (1,) * (y.dim() - 2), [0] + list(range(2, y.dim()))
        z = y.to(acc)
        if act != IDENTITY:
            z = torch.where(z < 0, z / slope, z)
        w, invstd = weight.to(acc), torch.rsqrt(var.to(acc) + eps)
        # A zero weight divides by 1 here; those channels' xhat comes from the saved input.
        xhat = (z - bias.to(acc).view(shape)) / torch.where(zero, 1.0, w).view(shape)
        if zero_channels is not None:
            xhat[:, zero] = (zero_channels.to(acc) - mean.to(acc)[zero].view(shape)) * invstd[zero].view(shape)
        dz = reference.activation_grad(dy.to(acc), z, act, slope)
        sum_dz, sum_dz_xhat = dz.sum(dims), (dz * xhat).sum(dims)
        if training:
            count = y.numel() // y.shape[1]
            dz = dz - (sum_dz / count).view(shape) - xhat * (sum_dz_xhat / count).view(shape)
        dx = (dz * (w * invstd).view(shape)).to(y.dtype)
        need = ctx.needs_input_grad
        return (dx if need[0] else None, sum_dz_xhat.to(weight.dtype) if need[1] else None,
                sum_dz.to(bias.dtype) if need[2] else None, None, None, None, None, None, None, None)


class Conv2dLeakyReLUFunction(torch.autograd.Function):
    """y = leaky_relu(conv2d(x, weight, bias), slope), slope >= 0 (0 is ReLU).

    Saved for backward: input, weight and output only, never the pre-activation; the
    activation's mask comes from the output (for slope >= 0, sign(y) = sign(z)). Backward
    runs the backend's fused dy -> dz (+ dbias) step, then torch's convolution backward.
    Under create_graph (gradient penalties) it runs the same math in differentiable torch
    ops, so second-order gradients flow. Arguments: (x, weight, bias, stride, padding,
    dilation, groups, slope, backend).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, slope, backend):
        ops = backend_module(backend)
        y = ops.conv_leaky_relu_forward(x, weight, bias, stride, padding, dilation, groups, slope)
        ctx.save_for_backward(x, weight, y)
        ctx.config = (stride, padding, dilation, groups, slope, ops, bias is not None)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, y = ctx.saved_tensors
        stride, padding, dilation, groups, slope, ops, has_bias = ctx.config
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: stay differentiable
            dz = torch.where(y > 0, dy, dy * slope)
            db = dz.sum((0, 2, 3)) if has_bias and need_b else None
        else:
            dz, db = ops.leaky_relu_grad_bias(dy, y, slope, has_bias and need_b)
        dx, dw, _ = torch.ops.aten.convolution_backward(
            dz, x, weight, None, stride, padding, dilation, False, [0, 0], groups, [need_x, need_w, False])
        if db is not None:
            db = db.to(weight.dtype)
        return dx, dw, db, None, None, None, None, None, None
