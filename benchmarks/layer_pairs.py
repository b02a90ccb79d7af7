"""BatchNorm + ReLU layers, fused against stock, timed in turn: the module FusedBNReLU against
BatchNorm2d + ReLU in training mode, at DCGAN generator shapes, in each dtype and layout;
each round times `--calls` calls of each provider in turn, and a row gives the median of
the rounds' speed-ups (stock time / fused time) with its quartiles.

    python benchmarks/layer_pairs.py [--rounds 40] [--calls 10] [--provider fused-cpu] [--markdown out.md]

On a shared machine one case's time moves by 20-30% between two benchmark runs minutes
apart; timed in turn, stock and fused see the same drift, so ratios near 1.0x hold still.
"""

import argparse
from pathlib import Path

import torch
from conftest import DEVICE, layer_step, time_in_turn
from test_bench_bn_act import build

SHAPES = [(64, 512, 4, 4), (64, 256, 8, 8), (64, 128, 16, 16)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LAYOUTS = ["nchw", "channels_last"]


def quartiles(values):
    values = sorted(values)
    return tuple(values[min(len(values) - 1, int(q * len(values)))] for q in (0.25, 0.5, 0.75))


def measure(shape, dtype, layout, mode, provider, rounds, calls, warmup=3):
    """(stock us, fused us, quartiles of the per-round speed-ups stock / fused)."""
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, device=DEVICE).to(dtype).contiguous(memory_format=memory_format)
    x.requires_grad_(mode != "fwd")
    grad = torch.randn_like(x)
    steps = {p: layer_step(build(p, shape[1], "relu", 0.0).to(DEVICE), x, grad, mode) for p in ("stock", provider)}
    times = time_in_turn(steps, rounds, calls, warmup)
    speedups = [s / f for s, f in zip(times["stock"], times[provider])]
    return quartiles(times["stock"])[1], quartiles(times[provider])[1], quartiles(speedups)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=10, help="calls a round times together")
    parser.add_argument("--provider", default="fused-cpu" if DEVICE.type == "cpu" else "fused-cuda")
    parser.add_argument("--shapes", type=int, default=len(SHAPES), help="the first this many shapes (for a quick run)")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    lines = [f"| shape | dtype | layout | mode | stock us | {args.provider} us | stock / fused (quartiles) |",
             "|---|---|---|---|---|---|---|"]
    for shape in SHAPES[:args.shapes]:
        for dtype in DTYPES:
            for layout in LAYOUTS:
                for mode in ("fwd", "fwd+bwd"):
                    stock, fused, (low, mid, high) = measure(shape, dtype, layout, mode, args.provider, args.rounds,
                                                             args.calls)
                    name = "x".join(map(str, shape))
                    lines.append(f"| {name} | {str(dtype).replace('torch.', '')} | {layout} | {mode} | {stock:.0f} | "
                                 f"{fused:.0f} | {mid:.2f}x ({low:.2f}-{high:.2f}) |")
                    print(lines[-1], flush=True)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
