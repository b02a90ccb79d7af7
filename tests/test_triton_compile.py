"""The offline GPU compile check: every Triton kernel variant the launchers produce
compiles for sm_80 and sm_90 with Triton and its ptxas, without register spills, with no GPU
(python -m fusedgan.triton.compile_check; see docs/triton.md). It runs in a process of its
own, without TRITON_INTERPRET, and takes several minutes on 2 cores; its table is printed."""

import os
import subprocess
import sys

import pytest

from fusedgan._backends import _import_triton_backend


def _ptxas():
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(90).path
    except Exception:  # no NVIDIA backend in this Triton build
        return None


@pytest.mark.skipif(_import_triton_backend()[1] is not None, reason="Triton cannot be imported")
@pytest.mark.skipif(_ptxas() is None, reason="Triton has no NVIDIA backend (ptxas) here")
def test_every_kernel_variant_compiles_without_spills(capsys):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "fusedgan.triton.compile_check"], capture_output=True, text=True,
                         env=env, timeout=1800)
    with capsys.disabled():
        print("\n" + run.stdout)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-8000:]
