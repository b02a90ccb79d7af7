"""Drop-in nn.Modules: the parameters, buffers and state_dict keys of the stock layers."""

import warnings

import torch.nn.functional as F
from torch import Tensor, nn

from fusedgan._activation import activation_code
from fusedgan._backends import check_backend_name
from fusedgan.functional import (
    _NUMBER,
    _any_autocast,
    _entry_op,
    batch_norm_act,
    conv2d_leaky_relu,
    group_norm_act,
    instance_norm_act,
)

__all__ = ["FusedBatchNorm", "FusedBNReLU", "FusedBNLeakyReLU", "FusedConvLeakyReLU", "FusedGroupNormReLU",
           "FusedGroupNormLeakyReLU", "FusedInstanceNormReLU", "FusedInstanceNormLeakyReLU"]


class _Leaky:
    """The LeakyReLU forms of the fused layers: negative_slope kept and shown as stock's."""

    activation = "leaky_relu"
    _act = activation_code(activation)

    def _negative_slope(self):
        return self.negative_slope

    def extra_repr(self):
        return f"{super().extra_repr()}, negative_slope={self.negative_slope}"


class _FusedBatchNormAct(nn.modules.batchnorm._BatchNorm):
    """BatchNorm{1,2,3}d followed by an activation, for inputs (N, C, *) of rank 2 to 5.

    A subclass of nn.modules.batchnorm._BatchNorm: weight, bias, running_mean,
    running_var and num_batches_tracked are the stock ones, so stock state_dicts load
    and code that finds BatchNorm layers with isinstance finds these.

    sync=True: in training under torch.distributed, the batch statistics (and the
    backward's reductions) are taken over every rank of process_group (default: the whole
    world), as nn.SyncBatchNorm does; without an initialised process group, or with one
    rank, it is the ordinary layer.

    inplace=True (FusedBatchNorm, and FusedBNLeakyReLU with negative_slope > 0): the output
    is written over the input and is all the layer keeps for backward (InPlace-ABN's
    memory saving, with the standard meaning of weight). Use it where nothing else reads
    the input afterwards, e.g. right after a convolution.
    """

    activation = "relu"
    _act = activation_code(activation)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None, *, backend="auto", sync=False, process_group=None, inplace=False):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        if process_group is not None and not sync:
            raise ValueError("process_group is only used with sync=True")
        if inplace and self.activation == "relu":
            raise ValueError("inplace=True needs an invertible activation (FusedBatchNorm, or FusedBNLeakyReLU with "
                             "negative_slope > 0); ReLU's output does not determine its input")
        if inplace and sync:
            raise ValueError("inplace=True and sync=True cannot be combined")
        self.inplace = bool(inplace)
        self.backend = check_backend_name(backend)
        self.sync = bool(sync)
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected 2D to 5D input (N, C, *), got {input.dim()}D input")

    def _negative_slope(self):
        return 0.0

    def forward(self, input):
        self._check_input_dim(input)
        # As nn.modules.batchnorm._BatchNorm.forward, except that momentum=None's
        # cumulative average stays a tensor (no host synchronisation).
        counted = self.training and self.track_running_stats and self.num_batches_tracked is not None
        # The parameter and buffer dicts are read directly: nn.Module's attribute lookup costs
        # about a microsecond a name, a visible part of a small layer's call.
        params, buffers, keep = self._parameters, self._buffers, not self.training or self.track_running_stats
        weight, bias = params["weight"], params["bias"]
        mean, var = (buffers["running_mean"], buffers["running_var"]) if keep else (None, None)
        if not (self.sync or self.inplace) and (entry := _entry_op(input, self.backend, "bn_act", weight, bias, mean,
                                                                  var)):
            # One call (C++, or the "torch" backend's stock ops), which also counts the batch and
            # updates the running statistics.
            return entry(input, weight, bias, mean, var, buffers["num_batches_tracked"] if counted else None,
                         self.training or buffers["running_mean"] is None,
                         self.momentum if counted else (self.momentum or 0.0), self.eps, self._act,
                         self._negative_slope())
        momentum = 0.0 if self.momentum is None else self.momentum
        if counted:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / self.num_batches_tracked
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return batch_norm_act(
            input, self.running_mean if track else None, self.running_var if track else None,
            self.weight, self.bias, use_batch_stats, momentum, self.eps,
            activation=self.activation, negative_slope=self._negative_slope(), backend=self.backend,
            sync=self.sync, process_group=self.process_group, inplace=self.inplace)

    def extra_repr(self):
        flags = "".join(f", {name}=True" for name in ("sync", "inplace") if getattr(self, name))
        return f"{super().extra_repr()}, backend={self.backend!r}{flags}"


class FusedBatchNorm(_FusedBatchNormAct):
    """Drop-in for nn.BatchNorm1d/2d/3d (no activation): the fused kernels' BatchNorm, for
    synchronized statistics (sync=True) on any device."""

    activation = "identity"
    _act = activation_code(activation)


class FusedBNReLU(_FusedBatchNormAct):
    """Drop-in for nn.Sequential(nn.BatchNorm2d(C), nn.ReLU()) (and the 1d/3d forms)."""


class FusedBNLeakyReLU(_Leaky, _FusedBatchNormAct):
    """Drop-in for nn.Sequential(nn.BatchNorm2d(C), nn.LeakyReLU(negative_slope))."""

    def __init__(self, num_features, negative_slope=0.01, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, backend="auto", sync=False, process_group=None,
                 inplace=False):
        if inplace and not negative_slope > 0:
            raise ValueError(f"inplace=True inverts the activation: it needs negative_slope > 0, got {negative_slope}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, backend=backend,
                         sync=sync, process_group=process_group, inplace=inplace)
        self.negative_slope = negative_slope


class _FusedGroupNormAct(nn.GroupNorm):
    """nn.GroupNorm followed by an activation: the same weight, bias and state_dict keys, and
    an isinstance of nn.GroupNorm."""

    activation = "relu"

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None, *, backend="auto"):
        super().__init__(num_groups, num_channels, eps, affine, device, dtype)
        self.backend = check_backend_name(backend)

    def _negative_slope(self):
        return 0.0

    def forward(self, input):
        return group_norm_act(input, self.num_groups, self.weight, self.bias, self.eps, self.activation,
                              self._negative_slope(), backend=self.backend)

    def extra_repr(self):
        return f"{super().extra_repr()}, backend={self.backend!r}"


class FusedGroupNormReLU(_FusedGroupNormAct):
    """Drop-in for nn.Sequential(nn.GroupNorm(G, C), nn.ReLU())."""


class FusedGroupNormLeakyReLU(_Leaky, _FusedGroupNormAct):
    """Drop-in for nn.Sequential(nn.GroupNorm(G, C), nn.LeakyReLU(negative_slope))."""

    def __init__(self, num_groups, num_channels, negative_slope=0.01, eps=1e-5, affine=True, device=None,
                 dtype=None, *, backend="auto"):
        super().__init__(num_groups, num_channels, eps, affine, device, dtype, backend=backend)
        self.negative_slope = negative_slope


class _FusedInstanceNormAct(nn.modules.instancenorm._InstanceNorm):
    """nn.InstanceNorm{1,2,3}d followed by an activation: the same parameters, buffers and
    state_dict keys (affine and track_running_stats both off by default, as stock), and an
    isinstance of nn.modules.instancenorm._InstanceNorm.

    Takes batched inputs (N, C, *) of rank 3 to 5. spatial_dims=1, 2 or 3 makes it the
    fused form of InstanceNorm1d/2d/3d exactly, unbatched inputs (C, *) included
    (fusedgan.convert sets it).
    """

    activation = "relu"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False, device=None,
                 dtype=None, *, backend="auto", spatial_dims=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        if spatial_dims not in (None, 1, 2, 3):
            raise ValueError(f"spatial_dims must be None, 1, 2 or 3, got {spatial_dims!r}")
        self.backend = check_backend_name(backend)
        self.spatial_dims = spatial_dims

    def _negative_slope(self):
        return 0.0

    def _get_no_batch_dim(self):
        return self.spatial_dims + 1

    def _check_input_dim(self, input):
        if self.spatial_dims is not None and input.dim() not in (self.spatial_dims + 1, self.spatial_dims + 2):
            raise ValueError(f"expected {self.spatial_dims + 1}D or {self.spatial_dims + 2}D input "
                             f"(got {input.dim()}D input)")

    def forward(self, input):
        if self.spatial_dims is not None:
            return super().forward(input)  # stock's handling of unbatched inputs, then _apply_instance_norm
        if input.dim() not in (3, 4, 5):
            raise ValueError(f"expected 3D to 5D input (N, C, *), got {input.dim()}D input")
        if input.shape[1] != self.num_features:  # as stock: an error with affine parameters, else a warning
            message = f"expected input's size at dim=1 to match num_features ({self.num_features}), " \
                      f"but got: {input.shape[1]}."
            if self.affine:
                raise ValueError(message)
            warnings.warn(f"{message} Its affine parameters are off, so num_features is not used.", stacklevel=2)
        return self._apply_instance_norm(input)

    def _apply_instance_norm(self, input):
        return instance_norm_act(input, self.running_mean, self.running_var, self.weight, self.bias,
                                 self.training or not self.track_running_stats,
                                 self.momentum if self.momentum is not None else 0.0, self.eps, self.activation,
                                 self._negative_slope(), backend=self.backend)

    def extra_repr(self):
        dims = "" if self.spatial_dims is None else f", spatial_dims={self.spatial_dims}"
        return f"{super().extra_repr()}, backend={self.backend!r}{dims}"


class FusedInstanceNormReLU(_FusedInstanceNormAct):
    """Drop-in for nn.Sequential(nn.InstanceNorm2d(C), nn.ReLU()) (and the 1d/3d forms)."""


class FusedInstanceNormLeakyReLU(_Leaky, _FusedInstanceNormAct):
    """Drop-in for nn.Sequential(nn.InstanceNorm2d(C), nn.LeakyReLU(negative_slope))."""

    def __init__(self, num_features, negative_slope=0.01, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, device=None, dtype=None, *, backend="auto", spatial_dims=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, backend=backend,
                         spatial_dims=spatial_dims)
        self.negative_slope = negative_slope


class FusedConvLeakyReLU(nn.Conv2d):
    """Drop-in for nn.Sequential(nn.Conv2d(...), nn.LeakyReLU(negative_slope)); negative_slope=0
    gives Conv2d + ReLU. A subclass of nn.Conv2d: same weight, bias and state_dict keys."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", negative_slope=0.01, device=None, dtype=None, *, backend="auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        if negative_slope < 0:
            raise ValueError(f"negative_slope must be >= 0 (the backward reads the mask off the output), "
                             f"got {negative_slope}")
        self.negative_slope = negative_slope
        self.backend = check_backend_name(backend)

    def forward(self, input):
        params, padding, stride, dilation = self._parameters, self.padding, self.stride, self.dilation
        weight, bias = params["weight"], params["bias"]
        if (type(padding) is type(stride) is type(dilation) is tuple
                and len(padding) == len(stride) == len(dilation) == 2 and type(self.groups) is int
                and self.padding_mode == "zeros" and type(self.negative_slope) in _NUMBER
                and isinstance(input, Tensor) and not _any_autocast()
                and (entry := _entry_op(input, self.backend, "conv_act", weight, bias))):
            # The functional's plain call, without its argument parsing: nn.Conv2d keeps stride,
            # padding and dilation as pairs of ints (anything else a user sets takes the
            # functional, which names what it refuses).
            try:
                return entry(input, weight, bias, stride, padding, dilation, self.groups, self.negative_slope)
            except TypeError:  # e.g. a float in a pair, which the C++ entry's binding cannot take
                pass
        if self.padding_mode != "zeros":  # as nn.Conv2d: pad explicitly, then convolve unpadded
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        elif isinstance(padding, str):  # "same" / "valid": the explicit amounts nn.Conv2d computed
            padding = self._reversed_padding_repeated_twice[::2][::-1] if padding == "same" else 0
            if padding != 0 and any(a != b for a, b in zip(self._reversed_padding_repeated_twice[::2],
                                                           self._reversed_padding_repeated_twice[1::2])):
                input = F.pad(input, self._reversed_padding_repeated_twice)
                padding = 0
        return conv2d_leaky_relu(input, weight, bias, self.stride, padding, self.dilation, self.groups,
                                 self.negative_slope, backend=self.backend)

    def extra_repr(self):
        return f"{super().extra_repr()}, negative_slope={self.negative_slope}, backend={self.backend!r}"
