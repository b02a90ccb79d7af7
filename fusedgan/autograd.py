"""The torch.autograd.Function classes: each saves the fewest tensors and calls one backend."""

import torch
from torch.autograd.function import once_differentiable

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
