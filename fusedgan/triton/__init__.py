"""The Triton backend: one file per op."""

from fusedgan.triton.batch_norm_act import bn_act_backward, bn_act_forward

__all__ = ["bn_act_forward", "bn_act_backward"]
