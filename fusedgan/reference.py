"""The "torch" backend: every op as a composition of stock torch ops.

It is the oracle the fast backends are tested against and the fallback that runs
anywhere. It computes in fp32 (fp64 for fp64 inputs) and has the same signatures as
the kernel backends.
"""

import torch
import torch.nn.functional as F

from fusedgan._activation import LEAKY_RELU, RELU
from fusedgan._outputs import accumulation_dtype


def _acc_dtype(x):
    return accumulation_dtype(x.dtype)


def _channel_shape(x):
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


def _reduce_dims(x):
    return [0] + list(range(2, x.dim()))


def activation(z, act, slope):
    if act == RELU:
        return torch.relu(z)
    if act == LEAKY_RELU:
        return torch.where(z > 0, z, z * slope)
    return z


def activation_grad(dy, z, act, slope):
    # torch's own backward ops: the same masks, and (as in stock's graph) a zero derivative
    # with respect to z, so second-order gradients give zeros where stock does, not None.
    if act == RELU:
        return torch.ops.aten.threshold_backward(dy, z, 0)
    if act == LEAKY_RELU:
        return torch.ops.aten.leaky_relu_backward(dy, z, slope, False)
    return dy


def _pre_activation(xf, mean, var, weight, bias, eps):
    shape = _channel_shape(xf)
    scale = weight.to(xf.dtype) * torch.rsqrt(var.to(xf.dtype) + eps)
    return (xf - mean.to(xf.dtype).view(shape)) * scale.view(shape) + bias.to(xf.dtype).view(shape)


def _batch_stats(xf):
    """Batch mean and biased variance per channel (two passes)."""
    dims = _reduce_dims(xf)
    count = max(xf.numel() // max(xf.shape[1], 1), 1)
    mean = xf.sum(dims) / count
    return mean, (xf - mean.view(_channel_shape(xf))).square().sum(dims) / count


def bn_act_forward(x, weight, bias, mean, var, training, eps, act, slope):
    xf = x.to(_acc_dtype(x))
    if training:
        mean, var = _batch_stats(xf)
    y = activation(_pre_activation(xf, mean, var, weight, bias, eps), act, slope)
    return y.to(x.dtype), mean, var


def bn_act_backward(dy, x, weight, bias, mean, var, training, eps, act, slope):
    """Differentiable in every input: when training, the batch statistics are recomputed
    from x (equal to forward's up to rounding), so that their dependence on x is part of
    the graph and second-order gradients (create_graph=True) are exact."""
    xf = x.to(_acc_dtype(x))
    shape = _channel_shape(x)
    dims = _reduce_dims(x)
    if training:
        mean, var = _batch_stats(xf)
    invstd = torch.rsqrt(var.to(xf.dtype) + eps)
    xhat = (xf - mean.to(xf.dtype).view(shape)) * invstd.view(shape)
    dz = activation_grad(dy.to(xf.dtype), _pre_activation(xf, mean, var, weight, bias, eps), act, slope)
    sum_dz = dz.sum(dims)
    sum_dz_xhat = (dz * xhat).sum(dims)
    if training:
        count = max(x.numel() // max(x.shape[1], 1), 1)
        dz = dz - (sum_dz / count).view(shape) - xhat * (sum_dz_xhat / count).view(shape)
    dx = dz * (weight.to(xf.dtype) * invstd).view(shape)
    return dx.to(x.dtype), sum_dz_xhat.to(weight.dtype), sum_dz.to(bias.dtype)


def _group_stats(xf, groups):
    """Mean and biased variance of each (sample, group): (N, groups) each (two passes)."""
    grouped = xf.reshape(xf.shape[0], groups, -1)
    mean = grouped.mean(-1)
    return mean, (grouped - mean[..., None]).square().mean(-1)


def _per_channel(t, x, groups):
    """(N, groups) values spread to (N, C, 1, ...): each channel gets its group's value."""
    return t.repeat_interleave(x.shape[1] // groups, dim=1).view(x.shape[:2] + (1,) * (x.dim() - 2))


def gn_act_forward(x, weight, bias, groups, eps, act, slope):
    """y = act(group_norm(x)) with per-(sample, group) statistics; returns (y, mean, var),
    mean and biased variance of shape (N, groups). weight and bias are (C,) tensors."""
    xf = x.to(_acc_dtype(x))
    mean, var = _group_stats(xf, groups)
    xhat = (xf - _per_channel(mean, xf, groups)) * _per_channel(torch.rsqrt(var + eps), xf, groups)
    z = xhat * weight.to(xf.dtype).view(_channel_shape(x)) + bias.to(xf.dtype).view(_channel_shape(x))
    return activation(z, act, slope).to(x.dtype), mean, var


def gn_act_backward(dy, x, weight, bias, mean, var, groups, eps, act, slope):
    """(dx, dweight, dbias); differentiable in every input (the statistics are recomputed
    from x), so second-order gradients are exact."""
    xf = x.to(_acc_dtype(x))
    shape = _channel_shape(x)
    mean, var = _group_stats(xf, groups)
    rstd = _per_channel(torch.rsqrt(var + eps), xf, groups)
    xhat = (xf - _per_channel(mean, xf, groups)) * rstd
    w = weight.to(xf.dtype).view(shape)
    dz = activation_grad(dy.to(xf.dtype), xhat * w + bias.to(xf.dtype).view(shape), act, slope)
    dims = _reduce_dims(x)
    dweight, dbias = (dz * xhat).sum(dims), dz.sum(dims)
    # dx = rstd * (w dz - mean over the group of w dz - xhat * mean over the group of w dz xhat)
    wdz = dz * w
    grouped = lambda t: _per_channel(t.reshape(t.shape[0], groups, -1).mean(-1), t, groups)  # noqa: E731
    dx = rstd * (wdz - grouped(wdz) - xhat * grouped(wdz * xhat))
    return dx.to(x.dtype), dweight.to(weight.dtype), dbias.to(bias.dtype)


def conv_leaky_relu_forward(x, weight, bias, stride, padding, dilation, groups, slope):
    z = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return torch.where(z > 0, z, z * slope)


def leaky_relu_grad_bias(dy, y, slope, has_bias):
    dz = torch.ops.aten.leaky_relu_backward(dy, y, slope, True)  # the mask read off the output y
    return dz, (dz.sum((0, 2, 3), dtype=_acc_dtype(dz)) if has_bias else None)
