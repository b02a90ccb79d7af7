"""Turn a pytest-benchmark JSON into BENCHMARKS.md tables and PNG plots.

    python benchmarks/report.py bench.json [more.json ...]      # the table, to stdout
    python benchmarks/report.py bench.json --markdown out.md --plot docs/speedup.png

Per op, shape, mode and dtype: each provider's median time, achieved GB/s (the minimal
bytes of docs/performance.md over the time), the fraction of the copy roofline measured on the same
device in the same run, and the speed-up over stock eager and over torch.compile. The PNG
plots the speed-up over stock eager by shape and provider, a panel per op, mode and dtype.
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def load(paths):
    benches = []
    for path in paths:
        with open(path) as f:
            benches += json.load(f)["benchmarks"]
    cases = defaultdict(dict)
    for bench in benches:
        info = bench["extra_info"]
        key = (info["op"], "x".join(map(str, info["shape"])), info["mode"], info["dtype"])
        cases[key][info["provider"]] = {"median": bench["stats"]["median"], "gbps": info.get("gbps"),
                                        "roofline": info.get("roofline_gbps"),
                                        "images_per_s": info.get("images_per_s")}
    return (benches[0]["extra_info"] if benches else {}), cases


def rows(cases):
    for key in sorted(cases):
        providers = cases[key]
        eager = providers.get("stock", {}).get("median")
        compiled = providers.get("compile", {}).get("median")
        for provider, r in sorted(providers.items()):
            gbps, roofline = r["gbps"], r["roofline"]
            yield {
                "op": key[0], "shape": key[1], "mode": key[2], "dtype": key[3], "provider": provider,
                "ms": f"{r['median'] * 1e3:.3f}",
                "GB/s": f"{gbps:.1f}" if gbps else (f"{r['images_per_s']:.0f} img/s" if r["images_per_s"] else "-"),
                "% roofline": f"{100 * gbps / roofline:.1f}%" if gbps and roofline else "-",
                "vs eager": f"{eager / r['median']:.2f}x" if eager else "-",
                "vs compile": f"{compiled / r['median']:.2f}x" if compiled else "-",
            }


COLUMNS = ["op", "shape", "mode", "dtype", "provider", "ms", "GB/s", "% roofline", "vs eager", "vs compile"]


def markdown(info, cases):
    lines = [f"Device {info.get('device', '?')}, torch {info.get('torch', '?')}, triton {info.get('triton', '?')}, "
             f"copy roofline {info.get('roofline_gbps') or 0:.0f} GB/s (read + write, measured in the run).", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in rows(cases)]
    return "\n".join(lines) + "\n"


def text(info, cases):
    widths = {"op": 16, "shape": 16, "mode": 10, "dtype": 18, "provider": 13, "ms": 10, "GB/s": 12,
              "% roofline": 10, "vs eager": 9, "vs compile": 10}
    out = [f"device {info.get('device', '?')}, torch {info.get('torch', '?')}, triton {info.get('triton', '?')}",
           " ".join(c.ljust(widths[c]) for c in COLUMNS)]
    out += [" ".join(r[c].ljust(widths[c]) for c in COLUMNS) for r in rows(cases)]
    return "\n".join(out)


def plot(cases, path):
    """One PNG, a panel per (op, mode, dtype): speed-up over stock eager by shape and provider."""
    groups = defaultdict(dict)
    for (op, shape, mode, dtype), providers in cases.items():
        eager = providers.get("stock", {}).get("median")
        if eager:
            groups[(op, mode, dtype)][shape] = {p: eager / r["median"] for p, r in providers.items() if p != "stock"}
    panel_height, left = 200, 50
    width = 120 + 130 * max([len(s) for s in groups.values()] + [1])
    picture = Image.new("RGB", (width, panel_height * max(len(groups), 1)), "white")
    draw = ImageDraw.Draw(picture)
    for k, ((op, mode, dtype), shapes) in enumerate(sorted(groups.items())):
        top, bottom = k * panel_height + 35, k * panel_height + panel_height - 40
        providers = sorted({p for s in shapes.values() for p in s})
        top_value = max([v for s in shapes.values() for v in s.values()] + [1.0]) * 1.1
        y_of = lambda v, top=top, bottom=bottom, t=top_value: bottom - (bottom - top) * v / t  # noqa: E731
        draw.text((left, top - 30), f"{op} {mode} {dtype}: speed-up over stock eager", fill="black")
        draw.line((left, y_of(1.0), width - 10, y_of(1.0)), fill=(150, 150, 150))
        draw.text((5, y_of(1.0) - 6), "1.0x", fill="black")
        bar = 100 // max(len(providers), 1)
        for i, (shape, speedups) in enumerate(sorted(shapes.items())):
            x0 = left + 10 + 130 * i
            for j, provider in enumerate(providers):
                if provider in speedups:
                    x = x0 + j * bar
                    draw.rectangle((x, y_of(speedups[provider]), x + bar - 2, bottom), fill=COLORS[j % len(COLORS)])
            draw.text((x0, bottom + 5), shape, fill="black")
        for j, provider in enumerate(providers):
            draw.text((left + 330 + 110 * j, top - 30), provider, fill=COLORS[j % len(COLORS)])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON files (merged)")
    parser.add_argument("--markdown", help="write the tables as Markdown to this file")
    parser.add_argument("--plot", help="write the speed-up plot to this PNG file")
    args = parser.parse_args()
    info, cases = load(args.json)
    if args.markdown:
        Path(args.markdown).write_text(markdown(info, cases))
    if args.plot:
        print(f"wrote {plot(cases, args.plot)}")
    print(text(info, cases))


if __name__ == "__main__":
    main()
