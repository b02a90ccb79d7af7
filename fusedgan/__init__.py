"""fusedgan: fused BatchNorm+activation and Conv2d+LeakyReLU kernels for GAN training."""

__version__ = "0.1.0"

from fusedgan import _extension, functional  # noqa: F401  (_extension: load _C, warn once)
from fusedgan._backends import BackendUnavailableError, available_backends, backend_status
from fusedgan._convert import convert
from fusedgan.autograd import BatchNormActFunction, Conv2dLeakyReLUFunction, GroupNormActFunction
from fusedgan.distributed import SyncBatchNormActFunction
from fusedgan.modules import (
    FusedBatchNorm,
    FusedBNLeakyReLU,
    FusedBNReLU,
    FusedConvLeakyReLU,
    FusedGroupNormLeakyReLU,
    FusedGroupNormReLU,
    FusedInstanceNormLeakyReLU,
    FusedInstanceNormReLU,
)

__all__ = [
    "BackendUnavailableError",
    "BatchNormActFunction",
    "Conv2dLeakyReLUFunction",
    "FusedBatchNorm",
    "FusedBNLeakyReLU",
    "FusedBNReLU",
    "FusedConvLeakyReLU",
    "FusedGroupNormLeakyReLU",
    "FusedGroupNormReLU",
    "FusedInstanceNormLeakyReLU",
    "FusedInstanceNormReLU",
    "GroupNormActFunction",
    "available_backends",
    "convert",
    "backend_status",
    "SyncBatchNormActFunction",
    "functional",
]
