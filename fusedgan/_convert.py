"""fusedgan.convert: fuse an existing model's layers without rewriting it.

Inside every nn.Sequential (nested ones too), a BatchNorm{1,2,3}d directly followed by
nn.ReLU / nn.LeakyReLU becomes FusedBNReLU / FusedBNLeakyReLU, and an nn.Conv2d directly
followed by nn.LeakyReLU / nn.ReLU becomes FusedConvLeakyReLU. The fused module takes the
first layer's place and the activation's slot becomes nn.Identity, so every state_dict key
stays the same: the converted model loads the original's checkpoints and vice versa. The
fused modules take over the very Parameter and buffer objects (so requires_grad, device,
dtype and an optimizer built on them carry over) and the train/eval mode.
"""

import copy
import logging

from torch import nn

from fusedgan._backends import check_backend_name
from fusedgan.modules import FusedBNLeakyReLU, FusedBNReLU, FusedConvLeakyReLU

__all__ = ["convert"]

logger = logging.getLogger("fusedgan.convert")

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)


def _slope(activation):
    return 0.0 if isinstance(activation, nn.ReLU) else float(activation.negative_slope)


def _take_state(fused, original):
    """The fused module shares the original's parameters and buffers, and its mode."""
    fused._parameters = dict(original._parameters)
    fused._buffers = dict(original._buffers)
    fused.train(original.training)
    return fused


def _fuse_pair(layer, activation, backend):
    """(fused module, None) or (None, why the pair is left alone)."""
    if type(layer) in _BATCH_NORMS:
        if layer._forward_hooks or layer._forward_pre_hooks or activation._forward_hooks:
            return None, "has forward hooks, which fusing would bypass"
        if isinstance(activation, nn.ReLU):
            fused = FusedBNReLU(layer.num_features, layer.eps, layer.momentum, layer.affine,
                                layer.track_running_stats, backend=backend)
        else:
            fused = FusedBNLeakyReLU(layer.num_features, _slope(activation), layer.eps, layer.momentum, layer.affine,
                                     layer.track_running_stats, backend=backend)
        return _take_state(fused, layer), None
    if type(layer) is nn.Conv2d:
        if layer._forward_hooks or layer._forward_pre_hooks or activation._forward_hooks:
            return None, "has forward hooks, which fusing would bypass"
        if _slope(activation) < 0:
            return None, "LeakyReLU with a negative slope (the fused backward reads the mask off the output)"
        fused = FusedConvLeakyReLU(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                   layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                                   layer.padding_mode, negative_slope=_slope(activation), device="meta",
                                   backend=backend)
        return _take_state(fused, layer), None
    return None, f"{type(layer).__name__} has no fused form"


def convert(module, *, backend="auto", inplace=False, return_report=False):
    """Fuse BatchNorm+ReLU/LeakyReLU and Conv2d+LeakyReLU/ReLU pairs of `module`.

    Returns the converted model (a deep copy unless inplace=True), or (model, report) with
    return_report=True, where report lists (qualified name, "fused" / "left alone", reason).
    Each decision is also logged to the "fusedgan.convert" logger at INFO level.
    """
    check_backend_name(backend)
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    model = module if inplace else copy.deepcopy(module)
    report = []
    for prefix, container in list(model.named_modules()):
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules)
        for name, next_name in zip(names, names[1:]):
            layer, activation = container._modules[name], container._modules[next_name]
            qualified = f"{prefix}.{name}" if prefix else name
            if not (type(layer) in _BATCH_NORMS or type(layer) is nn.Conv2d):
                continue
            if not isinstance(activation, _ACTIVATIONS):
                report.append((qualified, "left alone", f"followed by {type(activation).__name__}, "
                                                        "not ReLU or LeakyReLU"))
                continue
            fused, why = _fuse_pair(layer, activation, backend)
            if fused is None:
                report.append((qualified, "left alone", why))
                continue
            container._modules[name] = fused
            container._modules[next_name] = nn.Identity()
            report.append((qualified, "fused", f"{type(layer).__name__} + {type(activation).__name__} -> "
                                              f"{type(fused).__name__}"))
    fused_types = (FusedBNReLU, FusedBNLeakyReLU, FusedConvLeakyReLU)
    for name, child in model.named_modules():
        if not isinstance(child, (nn.modules.batchnorm._BatchNorm, nn.Conv2d)) or isinstance(child, fused_types):
            continue
        if not any(r[0] == name for r in report):
            supported = type(child) in _BATCH_NORMS or type(child) is nn.Conv2d
            why = "not followed by an activation inside an nn.Sequential" if supported else \
                f"{type(child).__name__} has no fused form"
            report.append((name, "left alone", why))
    for name, decision, why in report:
        logger.info("%s: %s (%s)", name, decision, why)
    return (model, report) if return_report else model
