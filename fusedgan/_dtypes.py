"""The accumulation rule every backend follows: sums, statistics and per-element math in
fp64 for fp64 tensors and in fp32 otherwise (fp16, bf16, fp32), rounded once when stored.
Batch statistics and per-channel sums come back in this dtype."""

import torch


def accumulation_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32
