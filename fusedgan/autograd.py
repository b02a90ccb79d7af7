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
