"""Fake (meta) implementations of the backend ops: output shapes, dtypes and layouts
without computing anything, so torch.compile can trace the C++ ops (fusedgan::*) and the
Triton custom ops (fusedgan_triton::*). Each follows its backend's layout rule:

- the Triton kernels and the C++ CUDA kernels (also when emulated on CPU tensors) read an
  input in place when its spatial dimensions can be walked with one stride, else a
  contiguous copy of it, and allocate their outputs like that (channel_view);
- the C++ CPU kernels read an input in place when it is contiguous or channels_last, else
  a contiguous copy, and allocate their outputs like that;
- batch statistics, and the running statistics returned in eval, are fp32 (fp64 for fp64
  inputs) on every backend;
- the Triton convolution's output takes the input's layout (conv_output_format), the C++
  one torch's convolution's.
"""

import torch

from fusedgan._layout import channel_view
from fusedgan._outputs import accumulation_dtype

_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _stats_dtype(x):
    return accumulation_dtype(x.dtype)


def _as_triton_reads(t):
    return channel_view(t)[0]


def _as_cpp_reads(t):
    if t.device.type != "cpu":
        return channel_view(t)[0]
    channels_last = t.dim() in _CHANNELS_LAST and t.is_contiguous(memory_format=_CHANNELS_LAST[t.dim()])
    return t if t.is_contiguous() or channels_last else t.contiguous()


def _triton_conv(x, weight, bias, stride, padding, dilation, groups, slope):
    from fusedgan.triton.conv_leaky_relu import conv_output

    return conv_output(x, weight, stride, padding, dilation)


def _cpp_conv(x, weight, bias, stride, padding, dilation, groups, slope):
    return torch.nn.functional.conv2d(x, weight, None, stride, padding, dilation, groups)


def _check(condition, message):
    """The fakes check what the kernels check (csrc/op_checks.h), with the same messages, so a
    traced call fails where an eager one would."""
    if not condition:
        raise RuntimeError(f"fusedgan::{message}")


def _check_groups(x, groups):
    _check(x.dim() >= 2, f"gn_act: input must be (N, C, *), got {x.dim()}D")
    _check(groups >= 1 and x.shape[1] % groups == 0,
           f"gn_act: groups ({groups}) must divide the channels ({x.shape[1]})")


def fakes(backend):
    """{op name: fake implementation} for backend "triton", "cpp" (fusedgan::*, CPU or CUDA
    kernels by device) or "cuda-sim" (fusedgan_sim::*: the CUDA launchers on CPU tensors)."""
    as_read = _as_cpp_reads if backend == "cpp" else _as_triton_reads

    def bn_act_forward(x, weight, bias, mean, var, training, eps, act, slope):
        _check(x.dim() >= 2, f"bn_act_forward: input must be (N, C, *), got {x.dim()}D")
        _check(training or (mean is not None and var is not None),
               "bn_act_forward: running mean and var are required when not training")
        stats = x.new_empty(x.shape[1], dtype=_stats_dtype(x))
        return torch.empty_like(as_read(x)), stats, torch.empty_like(stats)

    def bn_act_backward(dy, x, weight, bias, mean, var, training, eps, act, slope):
        _check(dy.shape == x.shape, "bn_act_backward: grad and input shapes differ")
        return torch.empty_like(as_read(x)), torch.empty_like(weight), torch.empty_like(bias)

    def leaky_relu_grad_bias(dy, y, slope, has_bias):
        _check(dy.shape == y.shape, "leaky_relu_grad_bias: grad and output shapes differ")
        return torch.empty_like(as_read(y)), y.new_empty(y.shape[1] if has_bias else 0, dtype=_stats_dtype(y))

    def gn_act_forward(x, weight, bias, groups, eps, act, slope):
        _check_groups(x, groups)
        stats = x.new_empty((x.shape[0], groups), dtype=_stats_dtype(x))
        return torch.empty_like(as_read(x)), stats, torch.empty_like(stats)

    def gn_act_backward(dy, x, weight, bias, mean, var, groups, eps, act, slope):
        _check_groups(x, groups)
        _check(dy.shape == x.shape, "gn_act_backward: grad and input shapes differ")
        return torch.empty_like(as_read(x)), torch.empty_like(weight), torch.empty_like(bias)

    table = {"bn_act_forward": bn_act_forward, "bn_act_backward": bn_act_backward,
             "conv_leaky_relu_forward": _triton_conv if backend == "triton" else _cpp_conv,
             "leaky_relu_grad_bias": leaky_relu_grad_bias, "gn_act_forward": gn_act_forward,
             "gn_act_backward": gn_act_backward}
    if backend == "cpp":  # the eager entry ops (csrc/autograd/): the forward's output; buffers update in place

        def batch_norm_act(input, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum,
                           eps, act, slope):
            return bn_act_forward(input, weight, bias, running_mean, running_var, training, eps, act, slope)[0]

        table.update(batch_norm_act=batch_norm_act, conv2d_leaky_relu=_cpp_conv)
    return table
