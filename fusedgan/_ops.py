"""The op table: the backend ops, their schemas, and which ops each fused layer needs.

A backend can run a layer on a device when it has every op of the layer's family there,
so availability is answered per (family, backend, device): a backend that has BatchNorm
kernels but no GroupNorm kernels yet still runs the BatchNorm layers.

Each op's schema is written here once: the Triton custom ops (fusedgan/triton/__init__.py)
are defined from it, and the C++ op namespaces (csrc/fusedgan_ops.cpp, which C++ cannot
import from here) are checked against it by tests/test_extension.py. Fakes are in
fusedgan/_fake.py (`fakes(backend)`, keyed by these names), the reference implementations
in fusedgan/reference.py (same names and arguments).
"""

FAMILIES = {
    "bn_act": ("bn_act_forward", "bn_act_backward"),  # BatchNorm + activation
    "conv_act": ("conv_leaky_relu_forward", "leaky_relu_grad_bias"),  # Conv2d + LeakyReLU
    "gn_act": ("gn_act_forward", "gn_act_backward"),  # GroupNorm / InstanceNorm + activation
}
OPS = tuple(op for ops in FAMILIES.values() for op in ops)
SCHEMAS = {
    # y = act(batch_norm(x)); returns (y, mean, var): the batch statistics when training, else the given ones.
    "bn_act_forward": "(Tensor x, Tensor weight, Tensor bias, Tensor? mean, Tensor? var, bool training, float eps, "
                      "int act, float slope) -> (Tensor, Tensor, Tensor)",
    # (dx, dweight, dbias) of the above.
    "bn_act_backward": "(Tensor dy, Tensor x, Tensor weight, Tensor bias, Tensor mean, Tensor var, bool training, "
                       "float eps, int act, float slope) -> (Tensor, Tensor, Tensor)",
    # leaky_relu(conv2d(x, weight) + bias, slope).
    "conv_leaky_relu_forward": "(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation, "
                               "int groups, float slope) -> Tensor",
    # (dz, dbias) from the saved output y; dbias is empty when has_bias is false.
    "leaky_relu_grad_bias": "(Tensor dy, Tensor y, float slope, bool has_bias) -> (Tensor, Tensor)",
    # y = act(group_norm(x, groups)); returns (y, mean, var) of shape (N, groups).
    "gn_act_forward": "(Tensor x, Tensor weight, Tensor bias, int groups, float eps, int act, float slope) "
                      "-> (Tensor, Tensor, Tensor)",
    # (dx, dweight, dbias) of the above.
    "gn_act_backward": "(Tensor dy, Tensor x, Tensor weight, Tensor bias, Tensor mean, Tensor var, int groups, "
                       "float eps, int act, float slope) -> (Tensor, Tensor, Tensor)",
}
LAYERS = {"bn_act": "BatchNorm + activation", "conv_act": "Conv2d + LeakyReLU",
          "gn_act": "GroupNorm/InstanceNorm + activation"}
