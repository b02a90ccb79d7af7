"""Per-call cost, fused against stock, timed in turn: the call-overhead cases of
benchmarks/test_bench_overhead.py (the same calls), each provider's calls alternating
round by round in one process, and the median of the per-round ratios fused / stock.

    python benchmarks/overhead_pairs.py [--rounds 40] [--calls 25] [--provider fused-torch]
        [--without-extension] [--markdown out.md]

--without-extension times fusedgan as it runs where its C++ extension was never built
("auto" is then the "torch" backend on a CPU, and the functional convolution a Python
function): the extension's import is blocked before fusedgan is imported.

On a shared machine the time of a microsecond call drifts by tens of percent between one
benchmark and the next, more than the difference being measured; timed in turn, both
providers see the same drift and the ratio holds still.
"""

import argparse
import sys
from pathlib import Path

if __name__ == "__main__" and "--without-extension" in sys.argv:
    sys.modules["fusedgan._C"] = None  # an import of it now raises ImportError, as when it is not built

import test_bench_overhead as cases  # noqa: E402 (after the block above: it imports fusedgan)
from conftest import DEVICE, time_in_turn  # noqa: E402


def median(values):
    return sorted(values)[len(values) // 2]


def measure(op, phase, interface, mode, provider, rounds, calls, warmup=50):
    """(stock us, fused us, median fused / stock ratio) of one case, the two timed in turn."""
    steps = {p: cases.call_step(op, phase, interface, p, mode)[0] for p in ("stock", provider)}
    times = time_in_turn(steps, rounds, calls, warmup)
    ratios = [f / s for f, s in zip(times[provider], times["stock"])]
    return median(times["stock"]), median(times[provider]), median(ratios)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=25, help="calls a round times together")
    parser.add_argument("--provider", default="fused-cpu" if DEVICE.type == "cpu" else "fused-cuda")
    parser.add_argument("--without-extension", action="store_true",
                        help="block fusedgan._C's import, as where it was never built")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    print(f"backends available: {', '.join(cases.fusedgan.available_backends())}", flush=True)
    lines = [f"| op | phase | call | mode | stock us | {args.provider} us | fused / stock |",
             "|---|---|---|---|---|---|---|"]
    for op, phase in cases.OPS:
        for interface in ("module", "functional"):
            for mode in ("fwd", "fwd+bwd"):
                stock, fused, ratio = measure(op, phase, interface, mode, args.provider, args.rounds, args.calls)
                lines.append(f"| {op} | {phase} | {interface} | {mode} | {stock:.1f} | {fused:.1f} | {ratio:.2f} |")
                print(lines[-1], flush=True)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
