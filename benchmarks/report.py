"""Turn a pytest-benchmark JSON into BENCHMARKS.md tables and PNG plots.

    python benchmarks/report.py bench.json [more.json ...]      # the table, to stdout
    python benchmarks/report.py bench.json --markdown out.md --plot docs/speedup.png
    python benchmarks/report.py run1/*.json run2/*.json run3/*.json   # each case's median run

Per op, shape, mode and dtype: each provider's median time, achieved GB/s (the minimal
bytes of docs/performance.md over the time), the fraction of the copy roofline measured on the same
device in the same run, and the speed-up over stock eager and over torch.compile. The PNG
is one heat map of the speed-up over stock eager: a row per op and shape, a column per
provider, mode and dtype/layout, the number in each cell.
"""

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw


def load(paths):
    benches = []
    for path in paths:
        with open(path) as f:
            benches += json.load(f)["benchmarks"]
    runs = defaultdict(list)
    for bench in benches:
        info = bench["extra_info"]
        key = (info["op"], "x".join(map(str, info["shape"])), info["mode"], info["dtype"])
        runs[key, info["provider"]].append({"median": bench["stats"]["median"], "gbps": info.get("gbps"),
                                            "roofline": info.get("roofline_gbps"),
                                            "images_per_s": info.get("images_per_s")})
    # A case measured in several runs (files): its median run, so one slow run on a shared
    # machine does not make the row.
    cases = defaultdict(dict)
    for (key, provider), records in runs.items():
        cases[key][provider] = sorted(records, key=lambda r: r["median"])[(len(records) - 1) // 2]
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


def _color(speedup):
    """Red below 1x, white at 1x, green above, saturating at 4x either way (log scale)."""
    t = max(-1.0, min(1.0, math.log(speedup, 4))) if speedup > 0 else -1.0
    full = (46, 160, 67) if t > 0 else (214, 39, 40)
    return tuple(round(255 + (c - 255) * abs(t)) for c in full)


def plot(cases, path):
    """One heat map: a row per (op, shape), a column per (provider, mode, dtype/layout), each
    cell the provider's speed-up over stock eager, written in the cell and coloured by it."""
    rows_, columns = set(), set()
    cells = {}
    for (op, shape, mode, dtype), providers in cases.items():
        eager = providers.get("stock", {}).get("median")
        if not eager:
            continue
        for provider, r in providers.items():
            if provider != "stock":
                rows_.add((op, shape))
                columns.add((provider, mode, dtype))
                cells[(op, shape), (provider, mode, dtype)] = eager / r["median"]
    rows_, columns = sorted(rows_), sorted(columns)
    parts = max([len(dtype.split("/")) for _, _, dtype in columns] + [1])
    cell_w, cell_h, label_w, header_h = 64, 20, 230, 22 + 11 * (2 + parts)
    picture = Image.new("RGB", (label_w + cell_w * max(len(columns), 1) + 10,
                                header_h + cell_h * max(len(rows_), 1) + 30), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((5, 5), "speed-up over stock eager (median time); green faster, red slower", fill="black")
    for j, (provider, mode, dtype) in enumerate(columns):
        x = label_w + j * cell_w
        for k, line in enumerate((provider, mode, *dtype.split("/"))):
            draw.text((x + 2, 18 + 11 * k), line[:11], fill="black")
    for i, (op, shape) in enumerate(rows_):
        y = header_h + i * cell_h
        draw.text((5, y + 5), f"{op} {shape}"[:38], fill="black")
        for j, column in enumerate(columns):
            x = label_w + j * cell_w
            value = cells.get(((op, shape), column))
            draw.rectangle((x, y, x + cell_w - 2, y + cell_h - 2), fill=_color(value) if value else (235, 235, 235))
            if value:
                draw.text((x + 12, y + 5), f"{value:.2f}x", fill="black")
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
