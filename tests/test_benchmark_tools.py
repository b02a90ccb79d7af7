"""The benchmark tools: benchmarks/profile_step.py, the DCGAN step profile BENCHMARKS.md
quotes, on a tiny batch (every op kind, the fused layers' included, is found in both
implementations' profiles, and the paired timing reports its ratio); overhead_pairs.py and
layer_pairs.py (every row timed against stock); report.py's merge of several runs; and the
GPU benchmarks' clock, checked with stand-in CUDA events on the installed pytest-benchmark."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusedgan

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


@pytest.mark.parametrize("options", [[], ["--provider", "fused-torch", "--without-extension"]])
def test_overhead_pairs_times_every_case_against_stock(tmp_path, options):
    out = tmp_path / "pairs.md"
    run = subprocess.run([sys.executable, str(BENCHMARKS / "overhead_pairs.py"), "--rounds", "2", "--calls", "2",
                          "--markdown", str(out), *options], check=True, capture_output=True, text=True, timeout=300)
    backends = re.search(r"backends available: (.*)", run.stdout).group(1).split(", ")
    if "--without-extension" in options:
        assert "cpu" not in backends and "torch" in backends, backends
    else:
        assert backends == fusedgan.available_backends(), backends
    rows = out.read_text().splitlines()[2:]
    assert len(rows) == 20, rows  # 5 (op, phase) cases x module/functional x fwd/fwd+bwd
    for row in rows:
        stock, fused, ratio = (float(v) for v in row.strip("|").split("|")[4:])
        assert stock > 0 and fused > 0 and ratio > 0, row


def test_layer_pairs_times_each_dtype_and_layout_against_stock(tmp_path):
    out = tmp_path / "layers.md"
    subprocess.run([sys.executable, str(BENCHMARKS / "layer_pairs.py"), "--rounds", "3", "--calls", "1",
                    "--shapes", "1", "--markdown", str(out)], check=True, capture_output=True, timeout=300)
    rows = out.read_text().splitlines()[2:]
    assert len(rows) == 12, rows  # 3 dtypes x 2 layouts x fwd/fwd+bwd at one shape
    assert {tuple(row.split(" | ")[1:3]) for row in rows} == {
        (dtype, layout) for dtype in ("float32", "bfloat16", "float16") for layout in ("nchw", "channels_last")}
    for row in rows:
        cells = row.strip("| ").split(" | ")
        mid, low, high = (float(v) for v in re.fullmatch(r"([\d.]+)x \(([\d.]+)-([\d.]+)\)", cells[6]).groups())
        assert float(cells[4]) > 0 and float(cells[5]) > 0 and 0 < low <= mid <= high, row


def test_report_takes_each_cases_median_run(tmp_path):
    """report.py over several runs' files: each (case, provider) row is its median run (the
    middle one of three), and the speed-up divides the two providers' rows."""
    import json

    def bench(provider, seconds):
        return {"stats": {"median": seconds}, "extra_info": {
            "op": "bn+relu", "shape": [2, 3, 4, 4], "mode": "fwd", "dtype": "float32/nchw", "provider": provider,
            "gbps": 1.0, "roofline_gbps": 10.0, "device": "cpu"}}

    files = []
    for run, (stock, fused) in enumerate([(4e-3, 1e-3), (3e-3, 2e-3), (2e-3, 9e-3)]):
        files.append(tmp_path / f"run{run}.json")
        files[-1].write_text(json.dumps({"benchmarks": [bench("stock", stock), bench("fused-cpu", fused)]}))
    spec = importlib.util.spec_from_file_location("report", BENCHMARKS / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    rows = {r["provider"]: r for r in report.rows(report.load(files)[1])}
    assert rows["stock"]["ms"] == "3.000" and rows["fused-cpu"]["ms"] == "2.000", rows
    assert rows["fused-cpu"]["vs eager"] == "1.50x", rows


class StandInStream:
    """A CUDA stream as the clock sees it: launches queue device time, an event is reached
    once everything queued before it has run."""

    def __init__(self):
        self.device_ms = 0.0  # when the work queued so far ends, in device milliseconds

    def launch(self, ms):
        self.device_ms += ms

    def event_class(self):
        stream = self

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing
                self.at = None

            def record(self):
                self.at = stream.device_ms

            def synchronize(self):
                assert self.at is not None

            def elapsed_time(self, end):
                return end.at - self.at

        return Event


def test_cuda_event_clock_times_the_device_through_pytest_benchmark(benchmark, monkeypatch):
    """conftest.run_benchmark sets CudaEventClock as pytest-benchmark's (private) timer on a
    GPU. With stand-in events: a round of 5 launches of 2 device-ms each, which return at
    once on the host, is 10 ms, so the per-call time is 2 ms; host time would give ~0, and a
    clock in milliseconds 1000 times too much."""
    spec = importlib.util.spec_from_file_location("cuda_clock", BENCHMARKS / "cuda_clock.py")
    cuda_clock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cuda_clock)
    stream = StandInStream()
    monkeypatch.setattr(torch.cuda, "Event", stream.event_class())
    benchmark._timer = cuda_clock.CudaEventClock()
    benchmark.pedantic(lambda: stream.launch(2.0), rounds=3, iterations=5)
    assert benchmark.stats.stats.median == pytest.approx(2e-3)
    assert benchmark.stats.stats.rounds == 3
