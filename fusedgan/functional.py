"""Functional API: argument checks, running statistics, and the call into autograd."""

import inspect
import math
import numbers

import torch
import torch.nn.functional as F

from fusedgan._activation import ACTIVATIONS, IDENTITY, LEAKY_RELU, NAMES, RELU, activation_code
from fusedgan._backends import check_backend_name, eager_entry, resolve_backend
from fusedgan.autograd import (
    BatchNormActFunction,
    Conv2dLeakyReLUFunction,
    GroupNormActFunction,
    InPlaceBatchNormActFunction,
)
from fusedgan.distributed import SyncBatchNormActFunction, sync_group_size

__all__ = ["batch_norm_act", "conv2d_leaky_relu", "group_norm_act", "instance_norm_act"]

_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_input(input, name="input"):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() < 2:
        raise ValueError(f"{name} must have shape (N, C, *) with at least 2 dimensions, got {input.dim()}D input "
                         f"of shape {tuple(input.shape)}")
    if input.dtype not in _FLOATING:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {input.dtype}")


def _check_channel_tensor(tensor, name, input):
    """A per-channel (C,) tensor on input's device, in input's dtype or (for fp16/bf16 inputs) fp32."""
    if tensor is None:
        return
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(tensor).__name__}")
    C = input.shape[1]
    if tensor.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},), one value per channel of input {tuple(input.shape)}, "
                         f"got {tuple(tensor.shape)}")
    if tensor.device != input.device:
        raise ValueError(f"{name} is on {tensor.device} but input is on {input.device}; move both to one device")
    allowed = (input.dtype, torch.float32) if input.dtype in (torch.float16, torch.bfloat16) else (input.dtype,)
    if tensor.dtype not in allowed:
        raise TypeError(f"{name} must have dtype {' or '.join(map(str, allowed))} for a {input.dtype} input, "
                        f"got {tensor.dtype}")


def _check_scalar(value, name, minimum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


_NUMBER = (float, int)


def _check_norm_arguments(input, running_mean, running_var, weight, bias, momentum, eps, activation, negative_slope,
                          backend, needs_running=None):
    """The checks the normalization functions share; returns the activation's code.
    needs_running names the argument that makes the running statistics required (e.g.
    "training=False") when it is given; momentum None is not checked (GroupNorm has none)."""
    _check_input(input)
    for tensor, name in ((running_mean, "running_mean"), (running_var, "running_var"),
                         (weight, "weight"), (bias, "bias")):
        _check_channel_tensor(tensor, name, input)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    if needs_running and running_mean is None:
        raise ValueError(f"running_mean and running_var are required when {needs_running}")
    act = activation_code(activation)
    _check_scalar(eps, "eps", minimum=0)
    _check_scalar(negative_slope, "negative_slope")
    if momentum is not None and not isinstance(momentum, torch.Tensor):
        _check_scalar(momentum, "momentum")
    check_backend_name(backend)
    return act


# What _entry_op reads on every eager call, bound once: each lookup through a module costs
# tens of nanoseconds, and a small layer's whole stock call is about 15 us.
_PLAIN_TYPES = frozenset((torch.Tensor, torch.nn.Parameter, type(None)))
_is_compiling = torch.compiler.is_compiling
_function_mode_on = torch._C._is_torch_function_mode_enabled
_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch_on = torch._C._are_functorch_transforms_active
# Any autocast on, for any device: one flag read. torch.is_autocast_enabled(device_type)
# parses its argument, and on the 2-core CPU that measured 3 us more per convolution call
# inside a training loop than its own 0.4 us (cold code between oneDNN calls). The rare
# call with autocast on for another device than the input's takes the checked Python path.
_any_autocast = torch._C._is_any_autocast_enabled
# What sends a C function's calls (_c_function) to its Python path, each a no-argument call
# that returns a true value when active: every call while torch.compile traces or a torch
# function mode is on (which only Python calls meet); a call on a C++ backend also for the
# rest of _cpp_entry's blockers, and for the convolution autocast (its Python path casts,
# as stock's conv2d).
_PYTHON_ONLY = (_is_compiling, _function_mode_on)
_EAGER_BLOCKERS = {"bn_act": (_dispatch_modes, _functorch_on),
                   "conv_act": (_dispatch_modes, _functorch_on, _any_autocast)}


def _entry_op(input, backend, family, *tensors):
    """The entry (fusedgan._backends.eager_entry) an eager call on `input` goes through, or None
    for the Python path, outside torch.compile (which traces the Python path): for the
    "torch" backend, its stock composition; for a C++ one, _cpp_entry's choice. (The
    functionals inline this: a Python frame costs about a microsecond there, cold.)"""
    if _is_compiling():
        return None
    try:
        # tensor.device builds a torch.device (0.5 us): the two common types are read as flags.
        ops = eager_entry(backend, family, "cpu" if input.is_cpu else "cuda" if input.is_cuda else input.device.type)
    except TypeError:  # an unhashable backend: the error that names the argument
        check_backend_name(backend)
        raise
    if ops is None:
        return None
    if ops[0] is ops[1]:  # "torch": stock's ops, which meet modes, subclasses and empty batches themselves
        return ops[1]
    return _cpp_entry(ops, input, tensors)


def _cpp_entry(ops, input, tensors):
    """Of a C++ backend's pair (dispatcher op, plain _C function), the one for this call: None
    (the Python path) for an empty input; the plain function when every tensor argument is a
    plain tensor (or Parameter) and no torch function or dispatch mode or functorch
    transform is active, so nothing needs the dispatcher to see the call; else the
    dispatcher op."""
    if not input.numel():
        return None
    if type(input) not in _PLAIN_TYPES or _function_mode_on() or _dispatch_modes() or _functorch_on():
        return ops[0]
    for tensor in tensors:
        if type(tensor) not in _PLAIN_TYPES:
            return ops[0]
    return ops[1]


def _stock_composition_fits(input, *channel_tensors):
    """Whether the "torch" backend's layer can be the stock composition itself: a non-empty
    input and contiguous (C,) tensors (stock's channels_last CPU backward reads a strided
    weight as if contiguous, a wrong input gradient in torch 2.14; those take the reference)."""
    return input.numel() > 0 and all(t is None or t.is_contiguous() for t in channel_tensors)


def _stock_activation(z, act, negative_slope):
    return F.relu(z) if act == RELU else F.leaky_relu(z, negative_slope) if act == LEAKY_RELU else z


def _affine(weight, bias, input, dtype):
    """(weight, bias), ones and zeros of `dtype` where None (dtype None: leave them None);
    the two must share a dtype."""
    C = input.shape[1]
    if dtype is not None:
        weight = torch.ones(C, device=input.device, dtype=dtype) if weight is None else weight
        bias = torch.zeros(C, device=input.device, dtype=weight.dtype) if bias is None else bias
    if weight is not None and bias is not None and weight.dtype != bias.dtype:
        raise TypeError(f"weight and bias must have one dtype, got {weight.dtype} and {bias.dtype}")
    return weight, bias


def _update_running_stats(running_mean, running_var, mean, var, count, momentum):
    # As stock: momentum * batch + (1 - momentum) * running, with the unbiased variance.
    # momentum may be a tensor (the cumulative average 1 / num_batches_tracked), so no
    # value is read back to the host. count is a tensor under sync=True: the total over
    # every rank, which may be 0 (every rank's batch empty: nothing to update).
    with torch.no_grad():
        unbiased = var * (count / (count - 1))
        if not torch.is_tensor(count) and not torch.is_tensor(momentum) and running_mean is not None and \
                running_mean.dtype == mean.dtype and running_var.dtype == var.dtype:
            # One foreach call for both buffers (the per-step cost of a small layer): lerp's
            # running + momentum * (batch - running) is stock's momentum * batch +
            # (1 - momentum) * running up to rounding.
            torch._foreach_lerp_([running_mean, running_var], [mean, unbiased], momentum)
            return
        for running, batch in ((running_mean, mean), (running_var, unbiased)):
            if running is not None:
                updated = momentum * batch + (1 - momentum) * running
                running.copy_(torch.where(count > 0, updated, running) if torch.is_tensor(count) else updated)


def batch_norm_act(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                   eps=1e-5, activation="relu", negative_slope=0.01, *, backend="auto", sync=False,
                   process_group=None, inplace=False):
    """act(batch_norm(input)) in one fused op; the arguments of torch.nn.functional.batch_norm.

    activation is "relu", "leaky_relu" (with negative_slope) or "identity". When training,
    the batch statistics normalise the input and update running_mean / running_var in
    place (if given), as stock does; otherwise the running statistics are used.
    sync=True (training under torch.distributed) takes the batch statistics over every rank
    of process_group (default: the whole world), as nn.SyncBatchNorm does.
    inplace=True (activation "identity", or "leaky_relu" with negative_slope > 0) writes the
    output over input and saves only it for backward (see InPlaceBatchNormActFunction);
    input must then be a tensor nothing else reads afterwards.
    """
    if not (sync or inplace or _is_compiling()):
        try:  # _entry_op, inlined
            ops = eager_entry(backend, "bn_act", "cpu" if input.is_cpu else "cuda" if input.is_cuda else
                              input.device.type)
            act = ACTIVATIONS[activation]
        except (AttributeError, KeyError, TypeError):  # not a tensor, no activation, unhashable: named below
            ops = None
        if ops is None:
            entry = None
        elif ops[0] is ops[1]:  # "torch": stock's ops, which check what they are given (_stock_batch_norm_act)
            entry = ops[1]
        elif type(momentum) in _NUMBER and type(eps) in _NUMBER and type(negative_slope) in _NUMBER:
            entry = _cpp_entry(ops, input, (weight, bias, running_mean, running_var))
        else:
            entry = None
        if entry is not None:
            # The C++ entry op checks every argument as below, with the same messages.
            return entry(input, weight, bias, running_mean, running_var, None, bool(training), momentum, eps, act,
                         negative_slope)
    return _checked_batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum, eps, activation,
                                   negative_slope, backend, sync, process_group, inplace)


def _checked_batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum, eps, activation,
                            negative_slope, backend, sync, process_group, inplace):
    """batch_norm_act's Python path: every check in Python, then the backend's autograd Function
    (or, for "torch", the stock composition)."""
    act = _check_norm_arguments(input, running_mean, running_var, weight, bias, momentum, eps, activation,
                                negative_slope, backend, None if training else "training=False")
    if process_group is not None and not sync:
        raise ValueError("process_group is only used with sync=True")
    sync = bool(sync) and training and sync_group_size(process_group) > 1
    if inplace:
        if act == RELU or (act == LEAKY_RELU and not negative_slope > 0):
            raise ValueError(f"inplace=True inverts the activation in backward: it needs activation 'identity' or "
                             f"'leaky_relu' with negative_slope > 0, got {activation!r} (negative_slope="
                             f"{negative_slope})")
        if sync:
            raise ValueError("inplace=True and sync=True cannot be combined")

    C = input.shape[1]
    count = input.numel() // C if C else 0
    if training and count == 1 and not sync:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    # An empty batch takes the reference path (the kernels launch over rows): as stock, an
    # empty output and unchanged running statistics.
    name = "torch" if input.numel() == 0 else resolve_backend(backend, input.device)
    if name == "torch" and not (sync or inplace or torch.is_tensor(momentum)) and \
            _stock_composition_fits(input, weight, bias, running_mean, running_var):
        # The reference backend's layer is the stock composition itself: stock's per-call cost,
        # stock's autograd (second order included) and stock's running-statistics update.
        _affine(weight, bias, input, None)
        return _stock_activation(F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps),
                                 act, negative_slope)
    slope = 1.0 if act == IDENTITY else float(negative_slope)
    weight, bias = _affine(weight, bias, input, running_mean.dtype if running_mean is not None else input.dtype)
    if sync:
        output, mean, var, count = SyncBatchNormActFunction.apply(
            input, weight, bias, float(eps), act, slope, name, process_group)
        if input.numel() <= C and int(count) == 1:  # a host read, only when this rank's batch is tiny
            raise ValueError(f"Expected more than 1 value per channel when training, got {int(count)} over all "
                             f"ranks (input size {input.size()} here)")
    else:
        function = InPlaceBatchNormActFunction if inplace else BatchNormActFunction
        output, mean, var = function.apply(
            input, weight, bias, running_mean, running_var, bool(training), float(eps), act, slope, name)
    if training and running_mean is not None and (sync or count > 0):
        _update_running_stats(running_mean, running_var, mean, var, count, momentum)
    return output


def _group_norm_act(input, groups, weight, bias, eps, act, negative_slope, backend):
    """(y, mean, var) of act(group_norm(input)) on the backend that runs it; the arguments
    already checked."""
    name = "torch" if input.numel() == 0 else resolve_backend(backend, input.device, "gn_act")
    dtype = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    weight, bias = _affine(weight, bias, input, dtype)
    slope = 1.0 if act == IDENTITY else float(negative_slope)
    return GroupNormActFunction.apply(input, weight, bias, groups, float(eps), act, slope, name)


def group_norm_act(input, num_groups, weight=None, bias=None, eps=1e-5, activation="relu", negative_slope=0.01, *,
                   backend="auto"):
    """act(group_norm(input, num_groups, weight, bias, eps)) in one fused op; the arguments
    of torch.nn.functional.group_norm. Statistics per (sample, group of C / num_groups
    channels); activation is "relu", "leaky_relu" (with negative_slope) or "identity"."""
    act = _check_norm_arguments(input, None, None, weight, bias, None, eps, activation, negative_slope, backend)
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or \
            input.shape[1] % num_groups:
        raise ValueError(f"num_groups must be a positive int dividing the channels of input {tuple(input.shape)}, "
                         f"got {num_groups!r}")
    if input.shape[0] * input.shape[1] // num_groups * math.prod(input.shape[2:]) == 1:  # as stock
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    if resolve_backend(backend, input.device, "gn_act") == "torch" and _stock_composition_fits(input, weight, bias):
        # The reference backend's layer is the stock composition itself, as for BatchNorm.
        return _stock_activation(F.group_norm(input, num_groups, weight, bias, eps), act, negative_slope)
    return _group_norm_act(input, num_groups, weight, bias, eps, act, negative_slope, backend)[0]


def instance_norm_act(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                      momentum=0.1, eps=1e-5, activation="relu", negative_slope=0.01, *, backend="auto"):
    """act(instance_norm(input, ...)) in one fused op; the arguments of
    torch.nn.functional.instance_norm. With use_input_stats each (sample, channel) is
    normalised by its own statistics (GroupNorm with one channel a group) and the running
    statistics, if given, move towards their average over the batch, as stock's do;
    otherwise the running statistics normalise (the BatchNorm eval kernels)."""
    act = _check_norm_arguments(input, running_mean, running_var, weight, bias, momentum, eps, activation,
                                negative_slope, backend, None if use_input_stats else "use_input_stats=False")
    if input.dim() < 3:
        raise ValueError(f"input must have shape (N, C, *) with at least one spatial dimension, got {input.dim()}D "
                         f"input of shape {tuple(input.shape)}")
    if not use_input_stats:
        return batch_norm_act(input, running_mean, running_var, weight, bias, False, momentum, eps, activation,
                              negative_slope, backend=backend)
    S = math.prod(input.shape[2:])
    if S == 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {input.size()}")
    if resolve_backend(backend, input.device, "gn_act") == "torch" and not isinstance(momentum, torch.Tensor) and \
            _stock_composition_fits(input, weight, bias, running_mean, running_var):
        return _stock_activation(F.instance_norm(input, running_mean, running_var, weight, bias, True, momentum, eps),
                                 act, negative_slope)
    y, mean, var = _group_norm_act(input, input.shape[1], weight, bias, eps, act, negative_slope, backend)
    if running_mean is not None and input.numel():
        # Stock averages the instances' updates: the running value moves towards the batch
        # average of the instances' means and unbiased variances.
        _update_running_stats(running_mean, running_var, mean.mean(0), var.mean(0), S, momentum)
    return y


def _pair(value, name):
    # Plain ints first, without a generator: this runs three times on every call.
    if type(value) is int:
        return value, value
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) == 2 and type(pair[0]) is int and type(pair[1]) is int:
        return pair
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def conv2d_leaky_relu(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, negative_slope=0.01, *,
                      backend="auto"):
    """leaky_relu(conv2d(input, weight, bias), negative_slope) in one op (negative_slope=0 is
    ReLU); the arguments of torch.nn.functional.conv2d, with zero padding."""
    # This is the Python path; with _C loaded, the module's conv2d_leaky_relu is the C
    # function made over it at the end of this file (as is batch_norm_act).
    if not _is_compiling():
        try:  # _entry_op, inlined
            ops = eager_entry(backend, "conv_act", "cpu" if input.is_cpu else "cuda" if input.is_cuda else
                              input.device.type)
        except (AttributeError, TypeError):  # not a tensor, an unhashable backend: named below
            ops = None
        entry = None
        if ops is None or type(negative_slope) not in _NUMBER:
            pass
        elif ops[0] is ops[1]:  # "torch": stock's ops, which check the rest (_stock_conv2d_leaky_relu)
            entry = ops[1]
            if type(stride) is type(padding) is type(dilation) is int:  # stock's conv2d takes them as they are
                return entry(input, weight, bias, stride, padding, dilation, groups, negative_slope)
        elif isinstance(weight, torch.Tensor) and type(groups) is int and not _any_autocast():
            entry = _cpp_entry(ops, input, (weight, bias))
        if entry is not None:
            # The C++ entry op checks every argument as below, with the same messages.
            return entry(input, weight, bias, _pair(stride, "stride"), _pair(padding, "padding"),
                         _pair(dilation, "dilation"), groups, negative_slope)
    return _checked_conv2d_leaky_relu(input, weight, bias, stride, padding, dilation, groups, negative_slope, backend)


def _checked_conv2d_leaky_relu(input, weight, bias, stride, padding, dilation, groups, negative_slope, backend):
    """conv2d_leaky_relu's Python path: every check in Python, then the autograd Function."""
    _check_input(input)
    if isinstance(weight, torch.Tensor) and torch.is_autocast_enabled(input.device.type):
        # As torch's conv2d under autocast: run in the autocast dtype (casts are differentiable).
        dtype = torch.get_autocast_dtype(input.device.type)
        input, weight = input.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if isinstance(bias, torch.Tensor) else bias
    if input.dim() != 4:
        raise ValueError(f"input must have shape (N, C, H, W), got {input.dim()}D input of shape {tuple(input.shape)}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError(f"weight must be a 4D tensor (C_out, C_in / groups, kH, kW), got "
                         f"{getattr(weight, 'shape', type(weight).__name__)}")
    if not isinstance(groups, int) or groups < 1 or input.shape[1] % groups or weight.shape[0] % groups:
        raise ValueError(f"groups must be a positive int dividing the input channels ({input.shape[1]}) and the "
                         f"output channels ({weight.shape[0]}), got {groups!r}")
    if weight.shape[1] * groups != input.shape[1]:
        raise ValueError(f"weight expects {weight.shape[1] * groups} input channels (weight {tuple(weight.shape)}, "
                         f"groups={groups}) but input has {input.shape[1]} channels")
    for tensor, name in ((weight, "weight"), (bias, "bias")):
        if tensor is None:
            continue
        if tensor.device != input.device:
            raise ValueError(f"{name} is on {tensor.device} but input is on {input.device}; move both to one device")
        if tensor.dtype != input.dtype:
            raise TypeError(f"{name} must have the input's dtype {input.dtype}, got {tensor.dtype}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    padding = _pair(padding, "padding")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"stride and dilation must be >= 1 and padding >= 0, got stride={stride}, "
                         f"padding={padding}, dilation={dilation}")
    for axis, (size, k, p, d) in enumerate(zip(input.shape[2:], weight.shape[2:], padding, dilation)):
        if d * (k - 1) + 1 > size + 2 * p:
            raise ValueError(f"kernel size {tuple(weight.shape[2:])} (dilation {dilation}) is larger than the padded "
                             f"input {tuple(s + 2 * q for s, q in zip(input.shape[2:], padding))} along dim {axis + 2}")
    _check_scalar(negative_slope, "negative_slope", minimum=0)
    check_backend_name(backend)
    name = "torch" if input.numel() == 0 else resolve_backend(backend, input.device, "conv_act")
    return Conv2dLeakyReLUFunction.apply(input, weight, bias, stride, padding, dilation, groups, float(negative_slope),
                                         name)


# The "torch" backend's eager calls (_entry_op): stock's own ops, so stock's autograd (second
# order included), running statistics and bits, at about stock's cost per call. The Python
# path's checks cost microseconds against a small layer's ~20, so here they run only where
# a call fails in stock's ops (the Python path then raises the error every backend gives)
# or would pass where the fused layer does not (stock takes any eps, slope and momentum,
# unbatched convolution inputs and meta weights). Stock's C functions are called directly,
# without F's Python wrappers.
_INF = math.inf
_cudnn_enabled = torch._C._get_cudnn_enabled  # what F.batch_norm passes
_leaky_relu = torch._C._nn.leaky_relu


def _stock_batch_norm_act(input, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum,
                          eps, act, negative_slope):
    """The "torch" backend's entry, in the C++ entry op's arguments (csrc/autograd/batch_norm_act.cpp)."""
    if num_batches_tracked is not None:  # a module's training call, counted as stock counts it
        num_batches_tracked.add_(1)
        if momentum is None:
            momentum = 1.0 / float(num_batches_tracked)
    z = None
    try:
        # F.batch_norm's own check of the batch size is repeated: this calls its C function.
        if 0.0 <= eps < _INF and -_INF < negative_slope < _INF and -_INF < momentum < _INF and input.dim() >= 2 \
                and not (training and input.numel() == input.shape[1]) \
                and (input.is_contiguous() or _stock_composition_fits(input, weight, bias, running_mean, running_var)):
            z = torch.batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps,
                                 _cudnn_enabled())
    except Exception:  # stock's error, or a momentum that is not a number: the Python path names it
        pass
    if z is None:
        return _torch_checked_batch_norm_act(input, weight, bias, running_mean, running_var, training, momentum, eps,
                                             act, negative_slope)
    # _stock_activation's choice, inlined with the C functions: a Python call costs about a
    # microsecond here, between ATen calls.
    return torch.relu(z) if act == RELU else _leaky_relu(z, negative_slope) if act == LEAKY_RELU else z


def _stock_conv2d_leaky_relu(input, weight, bias, stride, padding, dilation, groups, negative_slope):
    """The "torch" backend's entry, in the C++ entry op's arguments (csrc/autograd/conv_leaky_relu.cpp)."""
    z = None
    try:
        # (Stock convolves a cpu input with meta weights, into a cpu output.)
        meta = input.is_meta
        if input.dim() == 4 and 0.0 <= negative_slope < _INF and weight.is_meta is meta and \
                (bias is None or bias.is_meta is meta):
            z = torch.conv2d(input, weight, bias, stride, padding, dilation, groups)
    except Exception:  # stock's error, or an argument that is not a tensor: the Python path names it
        pass
    if z is None:
        return _torch_checked_conv2d_leaky_relu(input, weight, bias, stride, padding, dilation, groups,
                                                negative_slope)
    return _leaky_relu(z, negative_slope)


def _torch_checked_batch_norm_act(input, weight, bias, running_mean, running_var, training, momentum, eps, act,
                                  negative_slope):
    """A "torch" entry's call that stock's ops refused or that the fused layers must check
    first: the checked Python path, which raises every backend's error (or runs the
    reference where stock's op cannot)."""
    return _checked_batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum, eps,
                                   NAMES[act], negative_slope, "torch", False, None, False)


def _torch_checked_conv2d_leaky_relu(input, weight, bias, stride, padding, dilation, groups, negative_slope):
    """As _torch_checked_batch_norm_act, for the convolution."""
    return _checked_conv2d_leaky_relu(input, weight, bias, stride, padding, dilation, groups, negative_slope, "torch")


STOCK_ENTRIES = {"bn_act": _stock_batch_norm_act, "conv_act": _stock_conv2d_leaky_relu}
TORCH_CHECKED = {"bn_act": _torch_checked_batch_norm_act, "conv_act": _torch_checked_conv2d_leaky_relu}


def _make_c_function(python_path, family, torch_checked=None):
    """The C function (csrc/python_entries.cpp) for op `family`'s functional over its Python
    path: a plain eager call it calls the fused op (or the "torch" backend's stock ops)
    itself, as stock's functionals are C calls; every other call it passes, unchanged, to
    python_path. It has python_path's signature (checked by the tests) and docstring, and
    sends the "torch" calls its stock entry would check to `torch_checked` (default
    TORCH_CHECKED[family])."""
    from fusedgan import _extension

    defaults = tuple(p.default for p in inspect.signature(python_path).parameters.values()
                     if p.default is not inspect.Parameter.empty)
    return _extension._C.make_entry(family, python_path, _PYTHON_ONLY, eager_entry, _EAGER_BLOCKERS[family],
                                    torch_checked or TORCH_CHECKED[family], torch.nn.Parameter, ACTIVATIONS,
                                    defaults, __name__, python_path.__doc__ or "")


def _c_function(python_path, family):
    """The functional of op `family`: with _C loaded, _make_c_function's C function, which
    torch.compile traces as python_path; without _C, python_path."""
    from fusedgan import _extension

    if _extension.ENTRY_OPS is None:
        return python_path
    function = _make_c_function(python_path, family)
    try:
        torch.compiler.substitute_in_graph(function)(python_path)
    except (AttributeError, TypeError, ValueError):
        # A torch that cannot substitute a C function under torch.compile: the Python path
        # for every call (slower per call, never wrong, and traceable).
        return python_path
    return function


# The functionals' Python paths, by op family; with _C loaded the module's functionals are
# C functions over them.
PYTHON_PATHS = {"bn_act": batch_norm_act, "conv_act": conv2d_leaky_relu}
batch_norm_act = _c_function(PYTHON_PATHS["bn_act"], "bn_act")
conv2d_leaky_relu = _c_function(PYTHON_PATHS["conv_act"], "conv_act")
