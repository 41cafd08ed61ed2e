"""Turns pytest-benchmark JSON from bench_codec.py into a markdown table and a PNG plot."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

src, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
runs = json.loads(src.read_text())["benchmarks"]
rows = []
for b in runs:
    median = b["stats"]["median"]
    size = b["extra_info"].get("bytes")
    rate = f"{size / median / 1e9:.2f} GB/s" if size else ""
    rows.append((b["group"], b["param"] if "param" in b else b["name"], median, rate))

lines = [
    f"Machine: {platform.machine()}, {platform.python_implementation()} "
    f"{platform.python_version()}; median of pytest-benchmark rounds.",
    "",
    "| group | implementation | median | throughput |",
    "| --- | --- | --- | --- |",
]
for group, name, median, rate in sorted(rows):
    impl = name.split("[", 1)[-1].rstrip("]").split("-" + group.split()[-1])[0]
    lines.append(f"| {group} | {impl} | {median * 1e9:,.0f} ns | {rate} |")
out_dir.mkdir(parents=True, exist_ok=True)
(out_dir / "codec.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

groups = sorted({r[0] for r in rows})
fig, axes = plt.subplots(len(groups), 1, figsize=(8, 1.6 * len(groups)))
for ax, group in zip(axes, groups, strict=True):
    sel = sorted((r for r in rows if r[0] == group), key=lambda r: r[2])
    labels = [r[1].split("[", 1)[-1].rstrip("]") for r in sel]
    ax.barh(labels, [r[2] * 1e6 for r in sel])
    ax.set_title(group, fontsize=9)
    ax.set_xscale("log")
    ax.tick_params(labelsize=7)
axes[-1].set_xlabel("median time per call, µs (log scale, lower is better)")
fig.tight_layout()
fig.savefig(out_dir / "codec.png", dpi=110)
