"""Under FUSEDGAN_POISON_OUTPUTS=1 (tests/conftest.py sets it, as the GPU run does) every
launcher hands its kernels NaN-filled outputs and workspaces, so an element a kernel
forgets to write fails the comparisons of the equivalence suite. Here: the Triton
launchers' plans (outputs allocated, nothing launched yet) and the allocation helpers.
The C++ and CUDA launchers do the same (csrc/outputs.h, csrc/cuda/runtime.cuh); the
emulated CUDA build poisons always (csrc/simt/runtime.h)."""

import pytest
import torch

from fusedgan import _outputs
from fusedgan._backends import why_unusable


def test_poisoning_is_on_in_the_test_suite():
    assert _outputs.POISON
    assert _outputs.empty(3, 4).isnan().all() and _outputs.empty_like(torch.zeros(5)).isnan().all()
    assert _outputs.empty(3, dtype=torch.int64).shape == (3,)  # integers are left as allocated


@pytest.mark.skipif(why_unusable("triton", "cpu") is not None, reason="Triton cannot run here")
@pytest.mark.parametrize("shape", [(4, 6, 5, 7), (3, 2, 90, 80)], ids=str)  # one-pass; split
def test_triton_plans_hand_out_nan_outputs(shape):
    from fusedgan.triton import batch_norm_act as bn
    from fusedgan.triton import conv_leaky_relu as conv
    from fusedgan.triton import group_norm_act as gn

    x = torch.randn(shape)
    C = shape[1]
    w, b = torch.rand(C) + 0.5, torch.randn(C)
    mean, var = torch.zeros(C), torch.ones(C)
    planned = [bn.plan_forward(x, w, b, None, None, True, 1e-5, 1, 0.0), bn.plan_forward(x, w, b, mean, var, False,
                                                                                        1e-5, 1, 0.0),
               bn.plan_backward(x, x, w, b, mean, var, True, 1e-5, 1, 0.0),
               gn.plan_forward(x, w, b, C // 2, 1e-5, 2, 0.2),
               gn.plan_backward(x, x, w, b, torch.zeros(shape[0], C // 2), torch.ones(shape[0], C // 2), C // 2, 1e-5,
                                2, 0.2),
               conv.plan_grad_bias(x, x, 0.2, True)]
    for outputs, launches in planned:
        assert launches
        written = [t for t in outputs if t is not None and t.is_floating_point() and t.numel()
                   and t.data_ptr() not in (mean.data_ptr(), var.data_ptr())]  # eval hands back the running ones
        assert written and all(t.isnan().all() for t in written)
