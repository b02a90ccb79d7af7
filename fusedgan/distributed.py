"""Synchronized BatchNorm+activation: batch statistics over every rank of a process group.

The math of nn.SyncBatchNorm followed by the activation, with the fused kernels doing
the elementwise work:

forward   each rank's (count, mean, biased var) in fp32 (fp64 for fp64 inputs) is
          all-gathered and Chan-merged, so unequal and empty per-rank batches weigh
          right; the backend's eval-mode kernel then normalises with the global statistics
          and applies the activation in one pass.
backward  the backend's eval-mode backward gives dz * weight * invstd and this rank's
          sums of dz and dz * xhat; the sums are all-reduced and the mean terms of the
          training gradient, weight * invstd * (sum dz + xhat * sum dz*xhat) / total count,
          are subtracted. For fp16/bf16 inputs the kernel's dx is already rounded to the
          input dtype, and that rounding would not cancel where dz is nearly constant, so
          there dx is recomputed in fp32 from dz instead.

As in stock, weight and bias get this rank's gradient (DDP averages them), dx the
gradient of the sum of every rank's loss.
"""

import torch
import torch.distributed as dist

from fusedgan import reference
from fusedgan._backends import backend_module
from fusedgan._outputs import accumulation_dtype
from fusedgan.autograd import first_order_only


def sync_group_size(process_group):
    """The number of ranks statistics are shared across, or 1 when there is nothing to sync."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)


def _gather_stats(x, process_group):
    """(total count, mean, biased var) over every rank, as tensors on x's device."""
    acc = accumulation_dtype(x.dtype)
    C = x.shape[1]
    count = x.numel() // C
    local = torch.zeros(2 * C + 1, device=x.device, dtype=acc)
    local[0] = count
    if count > 0:
        var, mean = torch.var_mean(x.to(acc), dim=[0] + list(range(2, x.dim())), correction=0)
        local[1:C + 1], local[C + 1:] = mean, var
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(gathered, local, group=process_group)
    gathered = torch.stack(gathered)
    counts, means, variances = gathered[:, :1], gathered[:, 1:C + 1], gathered[:, C + 1:]
    total = counts.sum()
    mean = (counts * means).sum(0) / total
    var = (counts * (variances + (means - mean).square())).sum(0) / total
    return total, mean, var


class SyncBatchNormActFunction(torch.autograd.Function):
    """Arguments: (x, weight, bias, eps, act, slope, backend, process_group); returns
    (y, mean, var, total count), the statistics over every rank of process_group."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, act, slope, backend, process_group):
        total, mean, var = _gather_stats(x, process_group)
        ops = backend_module(backend if x.numel() else "torch")
        y, _, _ = ops.bn_act_forward(x, weight, bias, mean, var, False, eps, act, slope)
        ctx.save_for_backward(x, weight, bias, mean, var, total)
        ctx.config = (eps, act, slope, ops, process_group)
        ctx.mark_non_differentiable(mean, var, total)
        return y, mean, var, total

    @staticmethod
    @first_order_only("synchronized BatchNorm (sync=True) has no second-order gradients (create_graph=True, e.g. "
                      "a gradient penalty); use sync=False in a critic trained with one")
    def backward(ctx, dy, _dmean, _dvar, _dtotal):
        x, weight, bias, mean, var, total = ctx.saved_tensors
        eps, act, slope, ops, process_group = ctx.config
        dx, dweight, dbias = ops.bn_act_backward(dy, x, weight, bias, mean, var, False, eps, act, slope)
        acc = mean.dtype
        sums = torch.cat([dweight.to(acc), dbias.to(acc)])
        dist.all_reduce(sums, group=process_group)
        mean_dz_xhat, mean_dz = (sums / total).chunk(2)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        invstd = torch.rsqrt(var + eps)
        scale = (weight.to(acc) * invstd).view(shape)
        xhat = (x.to(acc) - mean.view(shape)) * invstd.view(shape)
        if x.dtype in (torch.float32, torch.float64):
            dx = dx - scale * (mean_dz.view(shape) + xhat * mean_dz_xhat.view(shape))
        else:
            z = xhat * weight.to(acc).view(shape) + bias.to(acc).view(shape)
            dz = reference.activation_grad(dy.to(acc), z, act, slope)
            dx = (scale * (dz - mean_dz.view(shape) - xhat * mean_dz_xhat.view(shape))).to(x.dtype)
        need = ctx.needs_input_grad
        return (dx if need[0] else None, dweight if need[1] else None, dbias if need[2] else None,
                None, None, None, None, None)

