"""Static gates on the sm_90 (H200) build of the CUDA kernels, without a GPU
(tools/cuda_static_check.py): ptxas -v reports no spills for any kernel instantiation, no
kernel calls the 64-bit integer division routine, and every global load of a kernel that
does not update a tensor in place takes the read-only path (ld.global.nc). CI builds the CUDA kernels (torch's
CUDA wheel and nvcc are there); a build without them (FUSEDGAN_BUILD_CUDA=0, a CPU-only
torch) skips. The tool itself is checked on tests/cuda_static/flagged.cu, built here with
nvcc: it must flag a division, a spill and plain loads, and pass a clean kernel.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import cuda_static_check  # noqa: E402

CUDA_BUILD = torch.version.cuda is not None and os.environ.get("FUSEDGAN_BUILD_CUDA") != "0"
needs_cuda_build = pytest.mark.skipif(not CUDA_BUILD, reason="fusedgan._C is built without CUDA kernels here")


@needs_cuda_build
def test_no_spills_and_no_64_bit_division():
    binary = importlib.util.find_spec("fusedgan._C").origin
    kernels = cuda_static_check.check(binary, "sm_90")
    names = {k.name.split("<")[0] for k in kernels}
    assert {"bn_stats_kernel", "bn_apply_kernel", "bn_grad_sums_kernel", "bn_grad_input_kernel",
            "bias_leaky_relu_kernel", "leaky_relu_grad_bias_kernel", "sum_splits_kernel", "gn_channel_stats_kernel",
            "gn_stats_merge_kernel", "gn_apply_kernel", "gn_grad_sums_kernel", "gn_grad_merge_kernel",
            "gn_grad_input_kernel"} <= names, names
    assert not cuda_static_check.failures(kernels)


@needs_cuda_build
def test_the_gates_flag_a_division_a_spill_and_plain_loads(tmp_path):
    nvcc = cuda_static_check.find_tool("nvcc")
    assert nvcc, "nvcc not found"
    binary = tmp_path / "flagged.o"
    subprocess.run([nvcc, "-c", "-O3", "-gencode=arch=compute_90,code=sm_90",
                    "-gencode=arch=compute_90,code=compute_90", str(ROOT / "tests" / "cuda_static" / "flagged.cu"),
                    "-o", str(binary)], check=True)
    kernels = {k.name: k for k in cuda_static_check.check(binary, "sm_90")}
    assert kernels["divides"].division_sites == 2 and not kernels["divides"].spill_stores
    assert kernels["spills"].spill_stores > 0 and kernels["spills"].spill_loads > 0
    assert kernels["packed"].plain_loads > 0 and not kernels["packed"].division_sites
    assert not kernels["clean"].plain_loads and not cuda_static_check.failures([kernels["clean"]])
    assert len(cuda_static_check.failures(kernels.values())) == 3
