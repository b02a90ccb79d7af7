"""The byte model of docs/performance.md: the least memory traffic each fused op can have.

BatchNorm+activation over N elements of `itemsize` bytes (per-channel vectors ignored):
forward reads x and writes y (2N); backward reads x and dy and writes dx (3N). Stock eager
(BatchNorm, then the activation) moves 5N forward and 8N backward.

Conv2d+LeakyReLU: forward reads x and the weight and writes y; backward reads dy, y, x and
the weight and writes dx and dweight.
"""


def bn_act_bytes(numel, itemsize, mode):
    elements = 2 * numel if mode == "fwd" else 5 * numel
    return elements * itemsize


def conv_act_bytes(x_numel, weight_numel, y_numel, itemsize, mode):
    elements = x_numel + weight_numel + y_numel
    if mode != "fwd":
        elements += 2 * y_numel + 2 * x_numel + 2 * weight_numel
    return elements * itemsize
