"""Print a short table from a pytest-benchmark JSON: each case's median time, GB/s, and the
speed-up of every provider over stock eager and over torch.compile.

    python benchmarks/summary.py bench.json
"""

import json
import sys
from collections import defaultdict


def main(path):
    with open(path) as f:
        benches = json.load(f)["benchmarks"]
    cases = defaultdict(dict)
    for bench in benches:
        info = bench["extra_info"]
        key = (info["op"], "x".join(map(str, info["shape"])), info["mode"], info["dtype"])
        cases[key][info["provider"]] = (bench["stats"]["median"], info.get("gbps"))
    if benches:
        info = benches[0]["extra_info"]
        print(f"device {info['device']}, torch {info['torch']}, triton {info['triton']}")
    print(f"{'op':14s} {'shape':16s} {'mode':8s} {'provider':14s} {'ms':>9s} {'GB/s':>8s} "
          f"{'vs eager':>9s} {'vs compile':>10s}")
    for key in sorted(cases):
        providers = cases[key]
        eager = providers.get("stock", (None,))[0]
        compiled = providers.get("compile", (None,))[0]
        for provider, (mean, gbps) in sorted(providers.items()):
            vs_eager = f"{eager / mean:.2f}x" if eager else "-"
            vs_compile = f"{compiled / mean:.2f}x" if compiled else "-"
            gbps = f"{gbps:.1f}" if gbps else "-"
            print(f"{key[0]:14s} {key[1]:16s} {key[2]:8s} {provider:14s} {mean * 1e3:9.3f} {gbps:>8s} "
                  f"{vs_eager:>9s} {vs_compile:>10s}")


if __name__ == "__main__":
    main(sys.argv[1])
