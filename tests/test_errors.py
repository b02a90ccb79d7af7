"""Bad input gets a clear error naming the argument and what was expected.

Every check runs on each CPU backend: the C++ ones check in the entry op (csrc/op_checks.h),
the others in Python (fusedgan/functional.py), with the same messages.
"""

import pytest
import torch
from _helpers import DEVICE_BACKENDS

from fusedgan import FusedBNLeakyReLU, FusedBNReLU
from fusedgan.functional import batch_norm_act

_CPU_BACKENDS = [b for d, b in DEVICE_BACKENDS if d == "cpu"]


@pytest.fixture(params=_CPU_BACKENDS, autouse=True)
def backend(request):
    return request.param


@pytest.fixture
def call(backend):
    def call(x, C=3, **kwargs):
        args = dict(running_mean=torch.zeros(C), running_var=torch.ones(C), weight=torch.ones(C),
                    bias=torch.zeros(C), training=True, backend=backend)
        args.update(kwargs)
        return batch_norm_act(x, **args)

    return call


def test_wrong_rank_for_module(call, backend):
    with pytest.raises(ValueError, match="expected 2D to 5D input"):
        FusedBNReLU(3, backend=backend)(torch.randn(3))
    with pytest.raises(ValueError, match="expected 2D to 5D input"):
        FusedBNReLU(3, backend=backend)(torch.randn(2, 3, 2, 2, 2, 2))


def test_wrong_rank_for_functional(call, backend):
    with pytest.raises(ValueError, match=r"input must have shape \(N, C, \*\)"):
        call(torch.randn(3))


def test_channel_mismatch_names_the_argument(call, backend):
    with pytest.raises(ValueError, match=r"running_mean must have shape \(4,\)"):
        FusedBNReLU(3, backend=backend)(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        call(torch.randn(2, 3, 2, 2), weight=torch.ones(4))


def test_one_value_per_channel_in_training(call, backend):
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        FusedBNReLU(3, backend=backend)(torch.randn(1, 3))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        FusedBNLeakyReLU(3, backend=backend)(torch.randn(1, 3, 1, 1))
    FusedBNReLU(3, backend=backend).eval()(torch.randn(1, 3, 1, 1))  # eval takes a single value, as stock does


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_floating_input(dtype, backend):
    with pytest.raises(TypeError, match="input must be float16, bfloat16, float32 or float64"):
        FusedBNReLU(3, backend=backend)(torch.zeros(2, 3, 2, 2, dtype=dtype))


def test_mismatched_parameter_dtype(call, backend):
    with pytest.raises(TypeError, match="weight must have dtype torch.float32"):
        call(torch.randn(2, 3, 2, 2), weight=torch.ones(3, dtype=torch.float16))
    with pytest.raises(TypeError, match="running_var must have dtype torch.float64"):
        call(torch.randn(2, 3, 2, 2, dtype=torch.float64), running_mean=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="weight and bias must have one dtype"):
        call(torch.randn(2, 3, 2, 2).half(), weight=torch.ones(3).half(), bias=torch.zeros(3),
             running_mean=None, running_var=None)


def test_tensors_on_different_devices(call, backend):
    meta = torch.zeros(3, device="meta")
    with pytest.raises(ValueError, match="weight is on meta but input is on cpu"):
        call(torch.randn(2, 3, 2, 2), weight=meta)


def test_bad_arguments(call, backend):
    x = torch.randn(2, 3, 2, 2)
    with pytest.raises(ValueError, match="activation must be one of"):
        call(x, activation="gelu")
    with pytest.raises(ValueError, match="negative_slope must be a finite number"):
        call(x, activation="leaky_relu", negative_slope=float("nan"))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        call(x, eps=-1.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        call(x, backend="tpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        FusedBNReLU(3, backend="gpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        call(x, backend=["cpu"])  # unhashable: the cached backend lookup must not leak a TypeError
    with pytest.raises(ValueError, match="running_mean and running_var are required when training=False"):
        call(x, running_mean=None, running_var=None, training=False)
    with pytest.raises(ValueError, match="must be given together"):
        call(x, running_var=None)
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        call([[1.0, 2.0]])
