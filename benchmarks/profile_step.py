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


def profile(impl, args, steps=7, warmup=3):
    """(median step seconds, {kind: seconds per step}) of one implementation."""
    train_args = dcgan.parse_args(["--arch", args.arch, "--batch-size", str(args.batch_size), "--data", "fake",
                                   "--device", args.device])
    data, _ = dcgan.load_data("fake", train_args.img_size, 0)
    trainer = dcgan.Trainer(train_args, data, data.shape[1], torch.device(args.device), impl)
    real = data[:args.batch_size].to(args.device)
    for _ in range(warmup):
        trainer.step(real)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.step(real)
        times.append(time.perf_counter() - start)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                + ([torch.profiler.ProfilerActivity.CUDA] if args.device != "cpu" else [])) as prof:
        for _ in range(steps):
            trainer.step(real)
    shares = defaultdict(float)
    for event in prof.key_averages():
        seconds = (event.self_device_time_total if args.device != "cpu" else event.self_cpu_time_total) / 1e6
        shares[kind_of(event.key)] += seconds / steps
    return sorted(times)[len(times) // 2], dict(shares)


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
    lines.append("| whole step (median, unprofiled) | " +
                 " | ".join(f"{median * 1e3:.1f}" for median, _ in results.values()) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["dcgan", "seed"], default="dcgan")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    results = {impl: profile(impl, args) for impl in ("stock", "fused")}
    text = table(results)
    stock, fused = results["stock"][0], results["fused"][0]
    share = results["stock"][1].get("BatchNorm + activation", 0.0) / sum(results["stock"][1].values())
    text += (f"\n\n{args.arch}, batch {args.batch_size}, {args.device}: fused step {stock / fused:.2f}x stock; "
             f"BatchNorm + activation is {100 * share:.0f}% of stock's step, so even infinitely fast layers "
             f"would give at most {1 / (1 - share):.2f}x.")
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
