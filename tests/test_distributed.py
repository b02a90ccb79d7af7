"""Synchronized statistics (sync=True) across 2 CPU processes over gloo, against stock.

Stock nn.SyncBatchNorm runs only on GPUs, but what it computes is BatchNorm over the
concatenation of every rank's batch: that (in float64, one process) is the reference.
Each rank takes its own rows (unequal, and one rank empty in one case), runs two
training steps, and the test checks the outputs and input gradients row by row, the
weight and bias gradients summed over ranks, and the running statistics on every rank.
A DDP step of a model converted with sync_batchnorm=True is checked the same way.
"""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _helpers import DEVICE_BACKENDS, rel_err, stock_bn_act
from torch import nn

import fusedgan

WORKER = Path(__file__).with_name("_sync_worker.py")
WORLD = 2
FP32_TOL = 1e-5
# bf16 results are rounded once to bf16 (unit roundoff 2^-8) from a float32 computation on
# the same bf16 inputs the reference gets: twice the unit roundoff bounds the norm-wise error.
BF16_TOL = 2 ** -7
CPU_BACKENDS = [b for d, b in DEVICE_BACKENDS if d == "cpu"]

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

# (activation, shape, dtype, channels_last, rows of rank 0 and rank 1)
CONFIGS = [
    ("relu", (7, 5, 6, 4), torch.float32, False, [(0, 3), (3, 7)]),
    ("leaky_relu", (6, 4, 5, 5), torch.float32, True, [(0, 0), (0, 6)]),  # rank 0's batch is empty
    ("identity", (9, 6), torch.float32, False, [(0, 5), (5, 9)]),
    ("leaky_relu", (5, 3, 4, 4), torch.bfloat16, False, [(0, 1), (1, 5)]),
]


def _state(C):
    bn = nn.BatchNorm1d(C)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn.state_dict()


def _make_cases():
    cases = []
    for backend in CPU_BACKENDS:
        for activation, shape, dtype, channels_last, rows in CONFIGS:
            x = (torch.randn(shape, dtype=torch.float64) * 2 + 0.5).to(dtype)
            cases.append({"backend": backend, "activation": activation, "x": x, "dy": torch.randn(shape),
                          "channels_last": channels_last, "rows": rows, "state": _state(shape[1]), "momentum": 0.3})
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
                          nn.Conv2d(8, 4, 3, bias=False),  # (a bias before BatchNorm has gradient 0)
                          nn.BatchNorm2d(4))
    ddp = [{"backend": backend, "model": model, "x": torch.randn(6, 3, 8, 8), "dy": torch.randn(6, 4, 6, 6),
            "rows": [(0, 2), (2, 6)]} for backend in CPU_BACKENDS]
    return {"cases": cases, "ddp": ddp}


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory):
    """Runs both ranks once for every case; returns (cases, [rank 0 results, rank 1 results])."""
    tmp = tmp_path_factory.mktemp("sync")
    torch.manual_seed(7)
    cases = _make_cases()
    torch.save(cases, tmp / "cases.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(tmp / "init"), str(rank), str(WORLD),
                               str(tmp / "cases.pt"), str(tmp / f"rank{rank}.pt")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(WORLD)]
    for rank, proc in enumerate(procs):
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"rank {rank} failed:\n{output}"
    return cases, [torch.load(tmp / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def _stock_steps(case):
    """Two training steps of stock BatchNorm + activation on the whole batch, in float64."""
    x = case["x"].double().requires_grad_(True)
    stock = stock_bn_act(x.dim(), x.shape[1], case["activation"], 0.01, momentum=case["momentum"]).double()
    stock[0].load_state_dict(case["state"])
    steps = []
    for _ in range(2):
        x.grad = None
        stock.zero_grad()
        y = stock(x)
        (y * case["dy"].to(case["x"].dtype).double()).sum().backward()  # the module's dy is rounded to x's dtype
        steps.append({"y": y.detach(), "dx": x.grad.clone(), "dweight": stock[0].weight.grad.clone(),
                      "dbias": stock[0].bias.grad.clone()})
    return steps, stock[0]


@pytest.mark.parametrize("index", range(len(CPU_BACKENDS) * len(CONFIGS)),
                         ids=[f"{b}-{c[0]}-{str(c[2])[6:]}{'-cl' if c[3] else ''}-rows{c[4]}"
                              for b in CPU_BACKENDS for c in CONFIGS])
def test_sync_matches_stock_on_the_whole_batch(distributed_run, index):
    cases, results = distributed_run
    case = cases["cases"][index]
    tol = FP32_TOL if case["x"].dtype == torch.float32 else BF16_TOL
    expected_steps, stock = _stock_steps(case)
    for step, expected in enumerate(expected_steps):
        got = [results[rank]["cases"][index]["steps"][step] for rank in range(WORLD)]
        for key in ("y", "dx"):
            assert all(g[key].dtype == case["x"].dtype for g in got)
            assert rel_err(torch.cat([g[key] for g in got]), expected[key]) < tol, (step, key)
        for key in ("dweight", "dbias"):  # each rank's own gradient, as stock SyncBatchNorm (DDP sums)
            assert rel_err(sum(g[key] for g in got), expected[key]) < FP32_TOL, (step, key)
    for rank in range(WORLD):
        got = results[rank]["cases"][index]
        assert rel_err(got["running_mean"], stock.running_mean) < FP32_TOL
        assert rel_err(got["running_var"], stock.running_var) < FP32_TOL


@pytest.mark.parametrize("index", range(len(CPU_BACKENDS)), ids=CPU_BACKENDS)
def test_ddp_step_of_a_converted_model(distributed_run, index):
    cases, results = distributed_run
    spec = cases["ddp"][index]
    model = copy.deepcopy(spec["model"]).double()
    (model(spec["x"].double()) * spec["dy"].double()).sum().backward()
    for name, param in model.named_parameters():
        # DDP averages the ranks' gradients: the whole batch's gradient / WORLD.
        for rank in range(WORLD):
            assert rel_err(results[rank]["ddp"][index][name] * WORLD, param.grad) < FP32_TOL, (name, rank)


def test_sync_is_off_without_a_process_group():
    """Without torch.distributed initialised, sync=True is the ordinary layer (as stock)."""
    layer = fusedgan.FusedBNReLU(3, sync=True)
    plain = fusedgan.FusedBNReLU(3)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(layer(x), plain(x), rtol=0, atol=0)
    assert "sync=True" in repr(layer)


def test_sync_argument_errors():
    with pytest.raises(ValueError, match="process_group is only used with sync=True"):
        fusedgan.FusedBNReLU(3, process_group=object())
    with pytest.raises(ValueError, match="process_group is only used with sync_batchnorm=True"):
        fusedgan.convert(nn.Sequential(nn.BatchNorm2d(3), nn.ReLU()), process_group=object())


def test_convert_sync_batchnorm_leaves_no_batchnorm_unsynchronized():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4),
                          nn.Sequential(fusedgan.FusedBNLeakyReLU(4)))
    converted, report = fusedgan.convert(model, sync_batchnorm=True, return_report=True)
    assert isinstance(converted[1], fusedgan.FusedBNReLU) and converted[1].sync
    assert type(converted[4]) is fusedgan.FusedBatchNorm and converted[4].sync
    assert converted[5][0].sync  # fused before: switched to sync
    assert ("4", "fused", "BatchNorm2d -> FusedBatchNorm (sync_batchnorm=True)") in report
    assert converted.state_dict().keys() == model.state_dict().keys()
    assert not fusedgan.convert(model)[1].sync
