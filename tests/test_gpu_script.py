"""benchmarks/gpu_run.py, the one GPU run, checked without a GPU: its plan resolves (every
selected test and benchmark exists, the budgets fit the lease), a plan with a missing
selection fails, and on a machine whose GPU backends cannot run it stops with FAIL at once."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_run  # noqa: E402


def test_dry_run_resolves_every_step():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_run.py"), "--dry"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS plan total" in run.stdout
    assert {line.split()[2] for line in run.stdout.splitlines() if line.startswith("PASS plan ")} >= \
        {"build", "backends", "smoke", "gpu-tests", "sanitizers", "equivalence", "benchmarks", "report"}


def test_dry_run_fails_on_a_missing_selection(capsys):
    missing = gpu_run.Step("gone", 10, ["true"], "a renamed test", tests=["tests/test_renamed_away.py"])
    assert gpu_run.dry([missing]) == 1
    assert "FAIL plan gone" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run on a machine whose GPU backends cannot run")
def test_run_without_usable_gpu_backends_stops_with_fail_within_a_minute(tmp_path):
    start = time.monotonic()
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_run.py"), "--skip-build"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "OUT": str(tmp_path)})
    assert run.returncode == 1
    assert "FAIL backends" in run.stdout and "FAIL run: stopped after backends" in run.stdout
    assert "no CUDA GPU" in run.stdout
    assert time.monotonic() - start < 60
