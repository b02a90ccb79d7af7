"""The per-element math of the normalization + activation kernels, written once for all of
them (BatchNorm, GroupNorm / InstanceNorm): the inverse standard deviation, the
pre-activation, the activation and its mask, the gradient terms, and Chan's merge of
partial statistics. The C++ kernels share the same math through csrc/kernel_math.h.

Operands come broadcast to the tile's shape by the caller (a BatchNorm tile is channels by
rows, a GroupNorm tile (sample, group) pairs by a group's channels by positions), so one
formula serves every tile shape: backward's recomputed pre-activation has forward's sign
bit for bit, and the activation's mask in backward is the one forward applied.
"""

import triton
import triton.language as tl


@triton.jit
def _inv_std(var, eps):
    """1 / sqrt(var + eps): one formula in forward and backward, so both see one scale."""
    return 1.0 / tl.sqrt(var + eps)


@triton.jit
def _pre_activation(x, mean, scale, b):
    """z = (x - mean) * scale + b with scale = weight * invstd."""
    return (x - mean) * scale + b


@triton.jit
def _activation(z, slope, ACT: tl.constexpr):
    # ReLU keeps NaN and maps -inf to 0, as torch.relu does; LeakyReLU is torch's
    # `z > 0 ? z : z * slope`, NaN included.
    if ACT == 1:
        z = tl.where(z < 0, 0.0, z)
    elif ACT == 2:
        z = tl.where(z > 0, z, z * slope)
    return z


@triton.jit
def _activation_grad(dy, z, slope, ACT: tl.constexpr):
    # The masks of torch's threshold_backward and leaky_relu_backward.
    if ACT == 1:
        dy = tl.where(z > 0, dy, 0.0)
    elif ACT == 2:
        dy = tl.where(z > 0, dy, dy * slope)
    return dy


@triton.jit
def _grad_terms(x, dy, mean, invstd, scale, b, slope, ACT: tl.constexpr):
    """dz = dy * act'(z), with z recomputed from x, and xhat = (x - mean) * invstd."""
    return _activation_grad(dy, _pre_activation(x, mean, scale, b), slope, ACT), (x - mean) * invstd


@triton.jit
def _chan_merge(count, mean, m2, n_b, mean_b, m2_b):
    """Chan et al.: the running (count, mean, M2) merged with a part's (n_b > 0, mean_b, M2_b)."""
    total = count + n_b
    delta = mean_b - mean
    mean += delta * (n_b / total)
    m2 += m2_b + delta * delta * (count * n_b / total)
    return total, mean, m2
