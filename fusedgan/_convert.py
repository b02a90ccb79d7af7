"""fusedgan.convert: fuse an existing model's layers without rewriting it.

Inside every nn.Sequential (nested ones too), a BatchNorm{1,2,3}d directly followed by
nn.ReLU / nn.LeakyReLU becomes FusedBNReLU / FusedBNLeakyReLU, and an nn.Conv2d directly
followed by nn.LeakyReLU / nn.ReLU becomes FusedConvLeakyReLU. The fused module takes the
first layer's place and the activation's slot becomes nn.Identity, so every state_dict key
stays the same: the converted model loads the original's checkpoints and vice versa.

What is shared and what is copied: the converted model holds the original's very
Parameter and buffer objects (as nn.SyncBatchNorm.convert_sync_batchnorm does), so an
optimizer, an EMA or anything else built on them before the call keeps working on the
converted model, and requires_grad, device and dtype carry over. The modules around them
are copied (the original model is left as it was, and the two share their parameters and
running statistics) unless inplace=True, which converts the given model itself. Convert
after the model's own weight initialisation: initialisers that find layers by class name
(e.g. `classname.find("BatchNorm")`) do not recognise the fused classes.

InstanceNorm{1,2,3}d and GroupNorm followed by nn.ReLU / nn.LeakyReLU become
FusedInstanceNorm{ReLU,LeakyReLU} (with the stock class's spatial_dims) and
FusedGroupNorm{ReLU,LeakyReLU}. Normalisation layers followed by an activation that have no
fused form yet (LayerNorm, the lazy forms) are listed in the report as left alone, with the
reason.

sync_batchnorm=True makes every fused BatchNorm synchronize its statistics across the
ranks of process_group (the fused form of nn.SyncBatchNorm.convert_sync_batchnorm), and
turns the BatchNorms no activation follows into FusedBatchNorm(sync=True), so that none is
left unsynchronized. An nn.SyncBatchNorm followed by an activation is fused with sync on
and its own process group.

memory_saving=True makes the fused BatchNorm+LeakyReLU (slope > 0) layers that directly
follow a convolution or linear layer in the same nn.Sequential write their output over
their input (inplace=True): the input is then a fresh tensor nothing else reads.
"""

import copy
import logging

from torch import nn

from fusedgan import modules as fused_layers
from fusedgan._backends import check_backend_name

__all__ = ["convert"]

logger = logging.getLogger("fusedgan.convert")

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)
_INSTANCE_NORMS = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}  # and their spatial dims
_FUSABLE = (*_BATCH_NORMS, *_INSTANCE_NORMS, nn.GroupNorm, nn.Conv2d)
_UNFUSED_NORMS = (nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)  # the others: no fused form yet


def _slope(activation):
    return 0.0 if isinstance(activation, nn.ReLU) else float(activation.negative_slope)


def _take_state(fused, original):
    """The fused module shares the original's parameters and buffers, and its mode."""
    fused._parameters = dict(original._parameters)
    fused._buffers = dict(original._buffers)
    fused.train(original.training)
    return fused


def _sync_args(layer, sync, process_group):
    if isinstance(layer, nn.SyncBatchNorm):
        return {"sync": True, "process_group": layer.process_group}
    return {"sync": sync, "process_group": process_group if sync else None}


_FRESH_OUTPUT = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                 nn.Linear)  # they save their input, not their output: it may be overwritten


def _fuse_pair(layer, activation, backend, sync=False, process_group=None, inplace=False):
    """(fused module, None) or (None, why the pair is left alone)."""
    if layer._forward_hooks or layer._forward_pre_hooks or activation._forward_hooks:
        return None, "has forward hooks, which fusing would bypass"
    leaky = not isinstance(activation, nn.ReLU)
    if type(layer) in _BATCH_NORMS:
        sync_args = _sync_args(layer, sync, process_group)
        if leaky:
            fused = fused_layers.FusedBNLeakyReLU(
                layer.num_features, _slope(activation), layer.eps, layer.momentum, layer.affine,
                layer.track_running_stats, backend=backend,
                inplace=inplace and _slope(activation) > 0 and not sync_args["sync"], **sync_args)
        else:
            fused = fused_layers.FusedBNReLU(layer.num_features, layer.eps, layer.momentum, layer.affine,
                                             layer.track_running_stats, backend=backend, **sync_args)
        return _take_state(fused, layer), None
    if type(layer) in _INSTANCE_NORMS:
        args = (layer.num_features, *((_slope(activation),) if leaky else ()), layer.eps, layer.momentum,
                layer.affine, layer.track_running_stats)
        cls = fused_layers.FusedInstanceNormLeakyReLU if leaky else fused_layers.FusedInstanceNormReLU
        return _take_state(cls(*args, device="meta", backend=backend, spatial_dims=_INSTANCE_NORMS[type(layer)]),
                           layer), None
    if type(layer) is nn.GroupNorm:
        args = (layer.num_groups, layer.num_channels, *((_slope(activation),) if leaky else ()), layer.eps,
                layer.affine)
        cls = fused_layers.FusedGroupNormLeakyReLU if leaky else fused_layers.FusedGroupNormReLU
        return _take_state(cls(*args, device="meta", backend=backend), layer), None
    if type(layer) is nn.Conv2d:
        if _slope(activation) < 0:
            return None, "LeakyReLU with a negative slope (the fused backward reads the mask off the output)"
        fused = fused_layers.FusedConvLeakyReLU(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
            layer.groups, layer.bias is not None, layer.padding_mode, negative_slope=_slope(activation),
            device="meta", backend=backend)
        return _take_state(fused, layer), None
    return None, f"{type(layer).__name__} has no fused form"


def convert(module, *, backend="auto", inplace=False, return_report=False, sync_batchnorm=False, process_group=None,
            memory_saving=False):
    """Fuse BatchNorm+ReLU/LeakyReLU and Conv2d+LeakyReLU/ReLU pairs of `module`.

    Returns the converted model, or (model, report) with return_report=True, where report
    lists (qualified name, "fused" / "left alone", reason). Each decision is also logged to
    the "fusedgan.convert" logger at INFO level. The converted model shares the original's
    Parameter and buffer objects; its modules are a copy unless inplace=True (see the
    module docstring).
    """
    check_backend_name(backend)
    if process_group is not None and not sync_batchnorm:
        raise ValueError("process_group is only used with sync_batchnorm=True")
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    # A copy of the modules that keeps the Parameter and buffer objects themselves.
    shared = {id(t): t for t in (*module.parameters(), *module.buffers())}
    model = module if inplace else copy.deepcopy(module, memo=shared)
    report = []
    for prefix, container in list(model.named_modules()):
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules)
        for index, (name, next_name) in enumerate(zip(names, names[1:])):
            layer, activation = container._modules[name], container._modules[next_name]
            qualified = f"{prefix}.{name}" if prefix else name
            if type(layer) not in _FUSABLE:
                if isinstance(layer, _UNFUSED_NORMS) and isinstance(activation, _ACTIVATIONS):
                    report.append((qualified, "left alone", f"{type(layer).__name__} + {type(activation).__name__}: "
                                                            "not supported yet"))
                continue
            if not isinstance(activation, _ACTIVATIONS):
                report.append((qualified, "left alone", f"followed by {type(activation).__name__}, "
                                                        "not ReLU or LeakyReLU"))
                continue
            after_fresh = index > 0 and isinstance(container._modules[names[index - 1]], _FRESH_OUTPUT)
            fused, why = _fuse_pair(layer, activation, backend, sync_batchnorm, process_group,
                                    memory_saving and after_fresh)
            if fused is None:
                report.append((qualified, "left alone", why))
                continue
            container._modules[name] = fused
            container._modules[next_name] = nn.Identity()
            mode = " (inplace)" if getattr(fused, "inplace", False) else ""
            report.append((qualified, "fused", f"{type(layer).__name__} + {type(activation).__name__} -> "
                                              f"{type(fused).__name__}{mode}"))
    fused_types = tuple(getattr(fused_layers, name) for name in fused_layers.__all__)
    for name, child in list(model.named_modules()):
        if sync_batchnorm and isinstance(child, fused_layers._FusedBatchNormAct) and not child.sync:  # sync it now
            child.sync, child.process_group = True, process_group
        if not isinstance(child, (nn.modules.batchnorm._BatchNorm, nn.Conv2d, *_UNFUSED_NORMS)) or \
                isinstance(child, fused_types):
            continue
        if sync_batchnorm and type(child) in _BATCH_NORMS[:3] and not child._forward_hooks \
                and not child._forward_pre_hooks:
            parent, _, attr = name.rpartition(".")
            lone = fused_layers.FusedBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                               child.track_running_stats, backend=backend, sync=True,
                                               process_group=process_group)
            setattr(model.get_submodule(parent), attr, _take_state(lone, child))
            report = [r for r in report if r[0] != name]
            report.append((name, "fused", f"{type(child).__name__} -> FusedBatchNorm (sync_batchnorm=True)"))
        elif not any(r[0] == name for r in report):
            supported = type(child) in _FUSABLE
            why = "not followed by an activation inside an nn.Sequential" if supported else \
                f"{type(child).__name__} has no fused form"
            report.append((name, "left alone", why))
    for name, decision, why in report:
        logger.info("%s: %s (%s)", name, decision, why)
    return (model, report) if return_report else model
