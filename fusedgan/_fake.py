"""Fake (meta) implementations of the backend ops: output shapes, dtypes and layouts
without computing anything, so torch.compile can trace the C++ ops (fusedgan::*) and the
Triton custom ops (fusedgan_triton::*) alike."""

import torch


def _stats_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def bn_act_forward(x, weight, bias, mean, var, training, eps, act, slope):
    stats = x.new_empty(x.shape[1], dtype=_stats_dtype(x))
    return torch.empty_like(x), stats, torch.empty_like(stats)


def bn_act_backward(dy, x, weight, bias, mean, var, training, eps, act, slope):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)


def conv_leaky_relu_forward(x, weight, bias, stride, padding, dilation, groups, slope):
    return torch.nn.functional.conv2d(x, weight, None, stride, padding, dilation, groups)


def leaky_relu_grad_bias(dy, y, slope, has_bias):
    return torch.empty_like(y), y.new_empty(y.shape[1] if has_bias else 0, dtype=_stats_dtype(y))


def batch_norm_act(input, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps, act,
                   slope):
    # The entry op's output is bn_act_forward's y (its buffer updates are in place).
    return bn_act_forward(input, weight, bias, running_mean, running_var, training, eps, act, slope)[0]


def conv2d_leaky_relu(input, weight, bias, stride, padding, dilation, groups, slope):
    return conv_leaky_relu_forward(input, weight, bias, stride, padding, dilation, groups, slope)


def gn_act_forward(x, weight, bias, groups, eps, act, slope):
    stats = x.new_empty((x.shape[0], groups), dtype=_stats_dtype(x))
    return torch.empty_like(x), stats, torch.empty_like(stats)


def gn_act_backward(dy, x, weight, bias, mean, var, groups, eps, act, slope):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)
