"""How the kernels see an (N, C, *) tensor: N*S rows by C channels, through three strides."""

import math

import torch


def channel_view(t):
    """Return (t, (N, C, S), (stride_n, stride_s, stride_c)).

    S is the product of the spatial sizes. The spatial dimensions must be addressable with
    one stride (true for contiguous, channels_last and expanded tensors, and for slices
    along N or C); a tensor whose spatial dimensions are not is copied to contiguous first.
    """
    N, C = t.shape[0], t.shape[1]
    S = math.prod(t.shape[2:])
    stride_s = _merged_stride(t.shape[2:], t.stride()[2:])
    if stride_s is None:
        t = t.contiguous()
        stride_s = 1
    return t, (N, C, S), (t.stride(0), stride_s, t.stride(1))


def _merged_stride(sizes, strides):
    """The one stride that walks the spatial dimensions in order, or None if there is none."""
    dims = [(size, stride) for size, stride in zip(sizes, strides) if size != 1]
    for (_, outer), (size, inner) in zip(dims, dims[1:]):
        if outer != inner * size:
            return None
    return dims[-1][1] if dims else 1


def conv_output_format(x):
    """The Triton convolution's output layout: channels_last when the input is (and is not
    also contiguous, as a 1x1 image is), else contiguous."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format
