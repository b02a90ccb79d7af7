"""One rank of tests/test_distributed.py: python _sync_worker.py INIT_FILE RANK WORLD CASES OUT.

Reads the cases the test wrote (full batches, the rows this rank takes, parameters),
runs each through the fused layers with sync=True on its rows, and saves what it got.
"""

import copy
import sys

import torch
import torch.distributed as dist
from torch import nn

import fusedgan


def run_case(case, rank):
    rows = case["rows"][rank]
    x = case["x"][rows[0]:rows[1]].clone().requires_grad_(True)
    if case["channels_last"]:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    dy = case["dy"][rows[0]:rows[1]]
    cls = {"relu": fusedgan.FusedBNReLU, "leaky_relu": fusedgan.FusedBNLeakyReLU,
           "identity": fusedgan.FusedBatchNorm}[case["activation"]]
    layer = cls(case["x"].shape[1], backend=case["backend"], sync=True, momentum=case["momentum"])
    layer.load_state_dict(case["state"])
    steps = []
    for _ in range(2):  # two steps: the running statistics' momentum applies twice
        x.grad = None
        layer.zero_grad()
        y = layer(x)
        (y.float() * dy).sum().backward()
        steps.append({"y": y.detach(), "dx": x.grad, "dweight": layer.weight.grad.clone(),
                      "dbias": layer.bias.grad.clone()})
    return {"steps": steps, "running_mean": layer.running_mean, "running_var": layer.running_var}


def run_ddp(spec, rank):
    """One DDP step of a converted model (sync_batchnorm=True) on this rank's rows."""
    torch.manual_seed(0)
    # A copy per backend: convert shares the model's parameters, and every spec holds the same model.
    model = fusedgan.convert(copy.deepcopy(spec["model"]), sync_batchnorm=True, backend=spec["backend"])
    ddp = nn.parallel.DistributedDataParallel(model)
    rows = spec["rows"][rank]
    out = ddp(spec["x"][rows[0]:rows[1]])
    (out * spec["dy"][rows[0]:rows[1]]).sum().backward()
    return {name: p.grad for name, p in model.named_parameters()}


def main():
    init_file, rank, world, cases_path, out_path = sys.argv[1:]
    rank, world = int(rank), int(world)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    cases = torch.load(cases_path, weights_only=False)
    results = {"cases": [run_case(case, rank) for case in cases["cases"]],
               "ddp": [run_ddp(spec, rank) for spec in cases["ddp"]]}
    torch.save(results, out_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
