"""The torch.autograd.Function classes: each saves the fewest tensors and calls one backend."""

import functools

import torch

from fusedgan import reference
from fusedgan._activation import IDENTITY
from fusedgan._backends import backend_module, check_backend_name, resolve_backend
from fusedgan._outputs import accumulation_dtype


def first_order_only(reason):
    """For a backward whose gradients are not themselves differentiable: it runs without
    recording a graph, and under create_graph=True its gradients get a node that raises
    `reason` if a second backward reaches it. Unlike @once_differentiable, the saved
    tensors count too: a penalty whose dependence runs only through them (a sum over the
    layer's output, say) would otherwise get a silently wrong, partly missing gradient."""

    def decorate(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            with torch.no_grad():
                outputs = backward(ctx, *grads)
            inputs = [*grads, *ctx.saved_tensors]
            if not torch.is_grad_enabled() or not any(isinstance(t, torch.Tensor) and t.requires_grad
                                                      for t in inputs):
                return outputs
            error = torch._C._functions.DelayedError(f"fusedgan: {reason}".encode(), len(outputs))
            aliases = [None if t is None else t.detach().requires_grad_() for t in outputs]
            return error(*aliases)

        return wrapper

    return decorate


def _norm_act_forward(ctx, family, x, weight, bias, forward_args, backward_args, backend):
    """The forward of a normalization + activation Function: the backend's `family`_forward
    op; saves the input, the parameters and the statistics (never the pre-activation).
    backend is a backend name; "auto" is resolved for x's device, and a backend that cannot
    run raises BackendUnavailableError, as in the functional forms."""
    ops = backend_module(resolve_backend(check_backend_name(backend), x.device, family))
    y, mean, var = getattr(ops, f"{family}_forward")(x, weight, bias, *forward_args)
    ctx.save_for_backward(x, weight, bias, mean, var)
    ctx.config = (family, backward_args, ops)
    ctx.mark_non_differentiable(mean, var)
    return y, mean, var


def _norm_act_backward(ctx, dy):
    """(dx, dweight, dbias) from the backend's `family`_backward op. Under create_graph=True
    (gradient penalties) the gradients must be differentiable themselves: the reference
    formula in torch ops, which recomputes the statistics from x."""
    x, weight, bias, mean, var = ctx.saved_tensors
    family, args, ops = ctx.config
    if torch.is_grad_enabled():
        ops = reference
    dx, dweight, dbias = getattr(ops, f"{family}_backward")(dy, x, weight, bias, mean, var, *args)
    need = ctx.needs_input_grad
    return dx if need[0] else None, dweight if need[1] else None, dbias if need[2] else None


class BatchNormActFunction(torch.autograd.Function):
    """y = act(batch_norm(x)), with (y, mean, var) out and (dx, dweight, dbias) back.

    Saved for backward: the input, the parameters and the per-channel statistics; the
    pre-activation tensor is recomputed in backward, never stored. Under create_graph=True
    the backward is the reference formula in differentiable torch ops, so second-order
    gradients (WGAN-GP, R1 penalties) are stock's. Arguments:
    (x, weight, bias, mean, var, training, eps, act, slope, backend) with weight and bias
    (C,) tensors, mean/var the running statistics (ignored when training), act an
    activation code from fusedgan._activation and backend a resolved backend name.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, training, eps, act, slope, backend):
        return _norm_act_forward(ctx, "bn_act", x, weight, bias, (mean, var, training, eps, act, slope),
                                 (training, eps, act, slope), backend)

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        return _norm_act_backward(ctx, dy) + (None,) * 7


class InPlaceBatchNormActFunction(torch.autograd.Function):
    """BatchNormActFunction's memory-saving form (InPlace-ABN's idea): y = act(batch_norm(x))
    is written over x, and y is all that is saved, so a layer keeps one tensor for backward
    where the plain form keeps its input beside the output the next layer keeps.

    Backward inverts the activation (identity, or LeakyReLU with slope > 0: z = y, or y /
    slope where y < 0) and the affine map (xhat = (z - bias) / weight): weight keeps its
    standard meaning, so stock checkpoints load unchanged. Where a channel's weight is
    exactly 0, y holds nothing of x, so when weight needs a gradient forward keeps those
    channels' input (zeros elsewhere), and their dweight is exact too. That copy has x's
    size: choosing or sizing it by whether any weight is 0 would read a value back to the
    host, which no op may (CUDA graphs), and a channel's weight can become 0 at any step.
    The inversion costs precision where |bias / weight| is large: xhat's error grows like
    unit roundoff * |z| / |weight|. Arguments as BatchNormActFunction; returns (x, now
    holding y; mean; var).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, training, eps, act, slope, backend):
        ops = backend_module(resolve_backend(check_backend_name(backend), x.device, "bn_act"))
        y, mean, var = ops.bn_act_forward(x, weight, bias, mean, var, training, eps, act, slope)
        zero = (weight == 0).view((1, -1) + (1,) * (x.dim() - 2))
        zero_channels = torch.where(zero, x, 0) if ctx.needs_input_grad[1] else None
        x.copy_(y)
        del y
        ctx.mark_dirty(x)
        ctx.mark_non_differentiable(mean, var)
        ctx.save_for_backward(x, weight, bias, mean, var, zero, zero_channels)
        ctx.config = (training, eps, act, slope)
        return x, mean, var

    @staticmethod
    @first_order_only("the memory-saving mode (inplace=True) has no second-order gradients (create_graph=True, "
                      "e.g. a gradient penalty): its input was overwritten; use inplace=False in such a model")
    def backward(ctx, dy, _dmean, _dvar):
        y, weight, bias, mean, var, zero, zero_channels = ctx.saved_tensors
        training, eps, act, slope = ctx.config
        acc = accumulation_dtype(y.dtype)
        shape, dims = (1, -1) + (1,) * (y.dim() - 2), [0] + list(range(2, y.dim()))
        z = y.to(acc)
        if act != IDENTITY:
            z = torch.where(z < 0, z / slope, z)
        w, invstd = weight.to(acc), torch.rsqrt(var.to(acc) + eps)
        # A zero weight divides by 1 here; those channels' xhat comes from the saved input.
        xhat = (z - bias.to(acc).view(shape)) / torch.where(zero, 1.0, w.view(shape))
        if zero_channels is not None:
            xhat = torch.where(zero, (zero_channels.to(acc) - mean.to(acc).view(shape)) * invstd.view(shape), xhat)
        dz = reference.activation_grad(dy.to(acc), z, act, slope)
        sum_dz, sum_dz_xhat = dz.sum(dims), (dz * xhat).sum(dims)
        if training:
            count = y.numel() // y.shape[1]
            dz = dz - (sum_dz / count).view(shape) - xhat * (sum_dz_xhat / count).view(shape)
        dx = (dz * (w * invstd).view(shape)).to(y.dtype)
        need = ctx.needs_input_grad
        return (dx if need[0] else None, sum_dz_xhat.to(weight.dtype) if need[1] else None,
                sum_dz.to(bias.dtype) if need[2] else None, None, None, None, None, None, None, None)


class GroupNormActFunction(torch.autograd.Function):
    """y = act(group_norm(x, groups)), statistics per (sample, group); InstanceNorm is
    groups = C. Saved for backward: the input, the parameters and the (N, groups)
    statistics, never the pre-activation. Under create_graph=True the backward is the
    reference formula in differentiable torch ops. Arguments: (x, weight, bias, groups, eps,
    act, slope, backend) with weight and bias (C,) tensors; returns (y, mean, var)."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps, act, slope, backend):
        return _norm_act_forward(ctx, "gn_act", x, weight, bias, (groups, eps, act, slope), (groups, eps, act, slope),
                                 backend)

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        return _norm_act_backward(ctx, dy) + (None,) * 5


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
        ops = backend_module(resolve_backend(check_backend_name(backend), x.device, "conv_act"))
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
            dz = torch.ops.aten.leaky_relu_backward(dy, y, slope, True)  # d/dy of it: 0, as in stock's graph
            db = dz.sum((0, 2, 3)) if has_bias and need_b else None
        else:
            dz, db = ops.leaky_relu_grad_bias(dy, y, slope, has_bias and need_b)
        dx, dw, _ = torch.ops.aten.convolution_backward(
            dz, x, weight, None, stride, padding, dilation, False, [0, 0], groups, [need_x, need_w, False])
        if db is not None:
            db = db.to(weight.dtype)
        return dx, dw, db, None, None, None, None, None, None
