"""The SIMT emulation that runs the CUDA kernels on the CPU (csrc/simt/, backend "cuda-sim").

tests/simt/selftest.cpp is built here with the host compiler, without torch (a few seconds),
and must catch each deliberately broken kernel it holds: a missing barrier (a wrong result
under some schedule), shared memory read before it is written (NaN), out-of-bounds and
misaligned accesses, barriers and shuffles that not every thread reaches. It also checks
the shuffles' semantics and the device helpers every kernel uses (the fast divider, the
row cursor, the block reduction). Built twice: with the x86-64 fiber switch the backend
uses, and with the portable ucontext one used elsewhere.
"""

import os
import platform
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SWITCHES = {"fibers": [], "ucontext": ["-DFUSEDGAN_SIMT_UCONTEXT"]}
if platform.machine() not in ("x86_64", "AMD64"):
    SWITCHES = {"ucontext": []}  # the only switch there


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_selftest_catches_broken_kernels(tmp_path, switch):
    binary = tmp_path / "selftest"
    compiler = os.environ.get("CXX", "c++")
    subprocess.run([compiler, "-std=c++17", "-O1", "-fopenmp", "-DFUSEDGAN_SIMT", *SWITCHES[switch],
                    str(ROOT / "csrc" / "simt" / "simt.cpp"), str(ROOT / "tests" / "simt" / "selftest.cpp"),
                    "-o", str(binary)], check=True, capture_output=True, text=True)
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "2"})
    lines = run.stdout.splitlines()
    failed = [line for line in lines if not line.startswith("ok ")]
    assert run.returncode == 0 and not failed, "\n".join(failed) + run.stderr
    assert len(lines) == 24, run.stdout  # every check ran
