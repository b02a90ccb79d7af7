"""Where a DCGAN training step spends its time, stock against fused: the share of each kind
of op (convolutions, BatchNorm + activation, optimizer, the rest), from torch.profiler.

    python benchmarks/profile_step.py [--arch dcgan|seed] [--batch-size 64] [--device cpu]
                                      [--markdown out.md]

The step is examples/dcgan.py's own (one D step, one G step, Adam) on random images. The
fused layers can only speed up their own share: the step's speed-up is bounded by it
(Amdahl), which is what a user can expect of a whole training run.
"""

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from conftest import keep_freed_memory  # noqa: F401  (importing it applies the benchmarks' malloc settings)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import dcgan  # noqa: E402

# Op kinds by (lower-case) name fragments, first match wins; profiler self times are summed.
KINDS = [
    ("convolution", ("conv", "mkldnn_convolution")),
    ("BatchNorm + activation", ("batch_norm", "relu", "threshold", "fusedgan::")),
    ("optimizer (Adam)", ("_foreach", "adam", "optimizer")),
]


def kind_of(name):
    lowered = name.lower()
    for kind, fragments in KINDS:
        if any(f in lowered for f in fragments):
            return kind
    return "other (loss, noise, copies, autograd)"


def make_trainer(impl, args):
    """examples/dcgan.py's Trainer for one implementation, and a batch of its fake images."""
    train_args = dcgan.parse_args(["--arch", args.arch, "--batch-size", str(args.batch_size), "--data", "fake",
                                   "--device", args.device])
    data, _ = dcgan.load_data("fake", train_args.img_size, 0)
    trainer = dcgan.Trainer(train_args, data, data.shape[1], torch.device(args.device), impl)
    return trainer, data[:args.batch_size].to(args.device)


def timed_step(trainer, real):
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.step(real)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def paired_times(trainers, pairs, warmup=3):
    """{impl: step seconds} over `pairs` rounds that run one step of each implementation in
    turn, so that a slow stretch of a shared machine hits both alike."""
    for trainer, real in trainers.values():
        for _ in range(warmup):
            trainer.step(real)
    times = {impl: [] for impl in trainers}
    for _ in range(pairs):
        for impl, (trainer, real) in trainers.items():
            times[impl].append(timed_step(trainer, real))
    return times


def shares(trainer, real, device, steps=7):
    """{op kind: profiler self seconds per step} of one implementation."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                + ([torch.profiler.ProfilerActivity.CUDA] if device != "cpu" else [])) as prof:
        for _ in range(steps):
            trainer.step(real)
    result = defaultdict(float)
    for event in prof.key_averages():
        seconds = (event.self_device_time_total if device != "cpu" else event.self_cpu_time_total) / 1e6
        result[kind_of(event.key)] += seconds / steps
    return dict(result)


def median(values):
    return sorted(values)[len(values) // 2]


def table(results):
    kinds = [k for k, _ in KINDS] + ["other (loss, noise, copies, autograd)"]
    lines = ["| op kind | " + " | ".join(f"{impl}: ms per step (share)" for impl in results) + " |",
             "|---|" + "---|" * len(results)]
    for kind in kinds:
        cells = []
        for _, shares in results.values():
            total = sum(shares.values())
            cells.append(f"{shares.get(kind, 0.0) * 1e3:.1f} ({100 * shares.get(kind, 0.0) / total:.0f}%)")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines.append("| whole step (median of the paired steps, unprofiled) | " +
                 " | ".join(f"{median * 1e3:.1f}" for median, _ in results.values()) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["dcgan", "seed"], default="dcgan")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pairs", type=int, default=21, help="timed steps of each implementation, taken in turn")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    trainers = {impl: make_trainer(impl, args) for impl in ("stock", "fused")}
    times = paired_times(trainers, args.pairs)
    results = {impl: (median(times[impl]), shares(*trainers[impl], args.device)) for impl in trainers}
    text = table(results)
    ratios = [s / f for s, f in zip(times["stock"], times["fused"])]
    share = results["stock"][1].get("BatchNorm + activation", 0.0) / sum(results["stock"][1].values())
    text += (f"\n\n{args.arch}, batch {args.batch_size}, {args.device}: fused step {median(ratios):.2f}x stock "
             f"(median of {args.pairs} paired steps; quartiles {sorted(ratios)[len(ratios) // 4]:.2f}x-"
             f"{sorted(ratios)[3 * len(ratios) // 4]:.2f}x); BatchNorm + activation is {100 * share:.0f}% of "
             f"stock's step, so even infinitely fast layers would give at most {1 / (1 - share):.2f}x.")
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
