"""The Triton backend: one file per op; here, the functions the backend layer calls.

Eager calls go straight to the kernel launchers. Under torch.compile they go through
custom ops (fusedgan_triton::*) whose fake implementations give the output shapes, so
Dynamo keeps each launch in the graph as one opaque call instead of tracing into
Triton's launcher (which breaks the graph); AOTAutograd and CUDA graphs see plain ops.
The custom ops are defined from the op table (fusedgan/_ops.py: names and schemas) and
the fakes of fusedgan/_fake.py; only how each launcher's results become an op's outputs
is written here.
"""

import torch

from fusedgan import _fake
from fusedgan._ops import OPS, SCHEMAS
from fusedgan.triton import batch_norm_act as _bn
from fusedgan.triton import conv_leaky_relu as _conv
from fusedgan.triton import group_norm_act as _gn

__all__ = list(OPS)

LAUNCHERS = {"bn_act_forward": _bn.bn_act_forward, "bn_act_backward": _bn.bn_act_backward,
             "conv_leaky_relu_forward": _conv.conv_leaky_relu_forward,
             "leaky_relu_grad_bias": _conv.leaky_relu_grad_bias,
             "gn_act_forward": _gn.gn_act_forward, "gn_act_backward": _gn.gn_act_backward}


def _bn_forward_outputs(x, weight, bias, mean, var, training, eps, act, slope):
    y, mean, var = _bn.bn_act_forward(x, weight, bias, mean, var, training, eps, act, slope)
    # An op's outputs may not alias its inputs: in eval, mean and var are the inputs.
    return (y, mean, var) if training else (y, mean.clone(), var.clone())


def _grad_bias_outputs(dy, y, slope, has_bias):
    dz, db = _conv.leaky_relu_grad_bias(dy, y, slope, has_bias)
    # An op returns a tensor where the launcher returns None: an empty one.
    return dz, (db if has_bias else y.new_empty(0, dtype=torch.float64 if y.dtype == torch.float64 else
                                                torch.float32))


# The op implementations: the launchers, except where their results need the changes above.
_OP_IMPLS = {**LAUNCHERS, "bn_act_forward": _bn_forward_outputs, "leaky_relu_grad_bias": _grad_bias_outputs}

_LIBRARY = torch.library.Library("fusedgan_triton", "DEF")
_FAKES = _fake.fakes("triton")
for _op in OPS:
    _LIBRARY.define(_op + SCHEMAS[_op])
    # Triton launches on CUDA tensors, and on CPU ones under its interpreter (tests).
    _LIBRARY.impl(_op, _OP_IMPLS[_op], "CompositeExplicitAutograd")
    torch.library.register_fake(f"fusedgan_triton::{_op}", _FAKES[_op], lib=_LIBRARY)


def _backend_function(op):
    """The backend layer's function for `op`: the launcher when eager, the custom op under
    torch.compile (its list arguments as lists, and None back where the launcher gives it)."""
    launcher, custom_op = LAUNCHERS[op], getattr(torch.ops.fusedgan_triton, op).default

    def call(*args):
        if not torch.compiler.is_compiling():
            return launcher(*args)
        outputs = custom_op(*(list(a) if isinstance(a, tuple) else a for a in args))
        if op == "leaky_relu_grad_bias" and not args[-1]:  # has_bias false
            return outputs[0], None
        return outputs

    call.__name__ = call.__qualname__ = op
    return call


globals().update({op: _backend_function(op) for op in OPS})
