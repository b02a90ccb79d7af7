"""The Triton backend: one file per op; here, the functions the backend layer calls.

Eager calls go straight to the kernel launchers. Under torch.compile they go through
custom ops (fusedgan_triton::*) whose fake implementations give the output shapes, so
Dynamo keeps each launch in the graph as one opaque call instead of tracing into
Triton's launcher (which breaks the graph); AOTAutograd and CUDA graphs see plain ops.
"""

from typing import Optional

import torch

from fusedgan import _fake
from fusedgan.triton import batch_norm_act as _bn
from fusedgan.triton import conv_leaky_relu as _conv
from fusedgan.triton import group_norm_act as _gn

__all__ = ["bn_act_forward", "bn_act_backward", "conv_leaky_relu_forward", "leaky_relu_grad_bias", "gn_act_forward",
           "gn_act_backward"]

Tensor = torch.Tensor


@torch.library.custom_op("fusedgan_triton::bn_act_forward", mutates_args=())
def _bn_act_forward_op(x: Tensor, weight: Tensor, bias: Tensor, mean: Optional[Tensor], var: Optional[Tensor],
                       training: bool, eps: float, act: int, slope: float) -> tuple[Tensor, Tensor, Tensor]:
    y, mean, var = _bn.bn_act_forward(x, weight, bias, mean, var, training, eps, act, slope)
    # A custom op's outputs may not alias its inputs: in eval, mean and var are the inputs.
    return (y, mean, var) if training else (y, mean.clone(), var.clone())


@torch.library.custom_op("fusedgan_triton::bn_act_backward", mutates_args=())
def _bn_act_backward_op(dy: Tensor, x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor,
                        training: bool, eps: float, act: int, slope: float) -> tuple[Tensor, Tensor, Tensor]:
    return _bn.bn_act_backward(dy, x, weight, bias, mean, var, training, eps, act, slope)


@torch.library.custom_op("fusedgan_triton::conv_leaky_relu_forward", mutates_args=())
def _conv_leaky_relu_forward_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int],
                                padding: list[int], dilation: list[int], groups: int, slope: float) -> Tensor:
    return _conv.conv_leaky_relu_forward(x, weight, bias, stride, padding, dilation, groups, slope)


@torch.library.custom_op("fusedgan_triton::leaky_relu_grad_bias", mutates_args=())
def _leaky_relu_grad_bias_op(dy: Tensor, y: Tensor, slope: float, has_bias: bool) -> tuple[Tensor, Tensor]:
    dz, db = _conv.leaky_relu_grad_bias(dy, y, slope, has_bias)
    return dz, (db if has_bias else y.new_empty(0, dtype=torch.float64 if y.dtype == torch.float64 else
                                                torch.float32))


@torch.library.custom_op("fusedgan_triton::gn_act_forward", mutates_args=())
def _gn_act_forward_op(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float, act: int,
                       slope: float) -> tuple[Tensor, Tensor, Tensor]:
    return _gn.gn_act_forward(x, weight, bias, groups, eps, act, slope)


@torch.library.custom_op("fusedgan_triton::gn_act_backward", mutates_args=())
def _gn_act_backward_op(dy: Tensor, x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor, groups: int,
                        eps: float, act: int, slope: float) -> tuple[Tensor, Tensor, Tensor]:
    return _gn.gn_act_backward(dy, x, weight, bias, mean, var, groups, eps, act, slope)


_FAKES = _fake.fakes("triton")
_bn_act_forward_op.register_fake(_FAKES["bn_act_forward"])
_bn_act_backward_op.register_fake(_FAKES["bn_act_backward"])
_conv_leaky_relu_forward_op.register_fake(_FAKES["conv_leaky_relu_forward"])
_leaky_relu_grad_bias_op.register_fake(_FAKES["leaky_relu_grad_bias"])
_gn_act_forward_op.register_fake(_FAKES["gn_act_forward"])
_gn_act_backward_op.register_fake(_FAKES["gn_act_backward"])


def bn_act_forward(x, weight, bias, mean, var, training, eps, act, slope):
    if torch.compiler.is_compiling():
        return _bn_act_forward_op(x, weight, bias, mean, var, training, eps, act, slope)
    return _bn.bn_act_forward(x, weight, bias, mean, var, training, eps, act, slope)


def bn_act_backward(dy, x, weight, bias, mean, var, training, eps, act, slope):
    if torch.compiler.is_compiling():
        return _bn_act_backward_op(dy, x, weight, bias, mean, var, training, eps, act, slope)
    return _bn.bn_act_backward(dy, x, weight, bias, mean, var, training, eps, act, slope)


def conv_leaky_relu_forward(x, weight, bias, stride, padding, dilation, groups, slope):
    if torch.compiler.is_compiling():
        return _conv_leaky_relu_forward_op(x, weight, bias, list(stride), list(padding), list(dilation), groups,
                                           slope)
    return _conv.conv_leaky_relu_forward(x, weight, bias, stride, padding, dilation, groups, slope)


def leaky_relu_grad_bias(dy, y, slope, has_bias):
    if torch.compiler.is_compiling():
        dz, db = _leaky_relu_grad_bias_op(dy, y, slope, has_bias)
        return dz, (db if has_bias else None)
    return _conv.leaky_relu_grad_bias(dy, y, slope, has_bias)


def gn_act_forward(x, weight, bias, groups, eps, act, slope):
    if torch.compiler.is_compiling():
        return _gn_act_forward_op(x, weight, bias, groups, eps, act, slope)
    return _gn.gn_act_forward(x, weight, bias, groups, eps, act, slope)


def gn_act_backward(dy, x, weight, bias, mean, var, groups, eps, act, slope):
    if torch.compiler.is_compiling():
        return _gn_act_backward_op(dy, x, weight, bias, mean, var, groups, eps, act, slope)
    return _gn.gn_act_backward(dy, x, weight, bias, mean, var, groups, eps, act, slope)
