"""The op families: which backend ops each fused layer needs.

A backend can run a layer on a device when it has every op of the layer's family there,
so availability is answered per (family, backend, device): a backend that has BatchNorm
kernels but no GroupNorm kernels yet still runs the BatchNorm layers.
"""

FAMILIES = {
    "bn_act": ("bn_act_forward", "bn_act_backward"),  # BatchNorm + activation
    "conv_act": ("conv_leaky_relu_forward", "leaky_relu_grad_bias"),  # Conv2d + LeakyReLU
    "gn_act": ("gn_act_forward", "gn_act_backward"),  # GroupNorm / InstanceNorm + activation
}
OPS = tuple(op for ops in FAMILIES.values() for op in ops)
LAYERS = {"bn_act": "BatchNorm + activation", "conv_act": "Conv2d + LeakyReLU",
          "gn_act": "GroupNorm/InstanceNorm + activation"}
