"""benchmarks/profile_step.py, the DCGAN step profile BENCHMARKS.md quotes, on a tiny batch:
every op kind, the fused layers' included, is found in both implementations' profiles, and
the paired timing reports its ratio."""

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_profile_step_finds_each_op_kind_in_stock_and_fused(tmp_path):
    out = tmp_path / "profile.md"
    subprocess.run([sys.executable, str(BENCHMARKS / "profile_step.py"), "--arch", "seed", "--batch-size", "2",
                    "--pairs", "3", "--device", "cpu", "--markdown", str(out)], check=True, capture_output=True,
                   timeout=300)
    text = out.read_text()
    for kind in ("convolution", "BatchNorm + activation", "optimizer (Adam)"):
        stock, fused = re.search(rf"\| {re.escape(kind)} \| ([\d.]+) \(\d+%\) \| ([\d.]+) \(\d+%\) \|", text).groups()
        assert float(stock) > 0 and float(fused) > 0, (kind, text)
    assert re.search(r"fused step [\d.]+x stock \(median of 3 paired steps", text), text


def test_overhead_pairs_times_every_case_against_stock(tmp_path):
    out = tmp_path / "pairs.md"
    subprocess.run([sys.executable, str(BENCHMARKS / "overhead_pairs.py"), "--rounds", "2", "--calls", "2",
                    "--markdown", str(out)], check=True, capture_output=True, timeout=300)
    rows = out.read_text().splitlines()[2:]
    assert len(rows) == 20, rows  # 5 (op, phase) cases x module/functional x fwd/fwd+bwd
    for row in rows:
        stock, fused, ratio = (float(v) for v in row.strip("|").split("|")[4:])
        assert stock > 0 and fused > 0 and ratio > 0, row
