"""The Triton backend: one file per op."""

from fusedgan.triton.batch_norm_act import bn_act_backward, bn_act_forward
from fusedgan.triton.conv_leaky_relu import conv_leaky_relu_forward, leaky_relu_grad_bias

__all__ = ["bn_act_forward", "bn_act_backward", "conv_leaky_relu_forward", "leaky_relu_grad_bias"]
