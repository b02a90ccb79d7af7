"""The "torch" backend: every op as a composition of stock torch ops.

It is the oracle the fast backends are tested against and the fallback that runs
anywhere. It computes in fp32 (fp64 for fp64 inputs) and has the same signatures as
the kernel backends.
"""

import torch
import torch.nn.functional as F

from fusedgan._activation import LEAKY_RELU, RELU


def _acc_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


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
    if act == RELU:
        return torch.where(z > 0, dy, torch.zeros_like(dy))
    if act == LEAKY_RELU:
        return torch.where(z > 0, dy, dy * slope)
    return dy


def _pre_activation(xf, mean, var, weight, bias, eps):
    shape = _channel_shape(xf)
    scale = weight.to(xf.dtype) * torch.rsqrt(var.to(xf.dtype) + eps)
    return (xf - mean.to(xf.dtype).view(shape)) * scale.view(shape) + bias.to(xf.dtype).view(shape)


def bn_act_forward(x, weight, bias, mean, var, training, eps, act, slope):
    xf = x.to(_acc_dtype(x))
    if training:
        dims = _reduce_dims(x)
        count = max(x.numel() // max(x.shape[1], 1), 1)
        mean = xf.sum(dims) / count
        var = (xf - mean.view(_channel_shape(x))).square().sum(dims) / count
    y = activation(_pre_activation(xf, mean, var, weight, bias, eps), act, slope)
    return y.to(x.dtype), mean, var


def bn_act_backward(dy, x, weight, bias, mean, var, training, eps, act, slope):
    xf = x.to(_acc_dtype(x))
    shape = _channel_shape(x)
    dims = _reduce_dims(x)
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


def conv_leaky_relu_forward(x, weight, bias, stride, padding, dilation, groups, slope):
    z = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return torch.where(z > 0, z, z * slope)


def leaky_relu_grad_bias(dy, y, slope, has_bias):
    dz = torch.where(y > 0, dy, dy * slope)
    return dz, (dz.sum((0, 2, 3), dtype=_acc_dtype(dz)) if has_bias else None)
