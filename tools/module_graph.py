"""Draws the package's module graph as a PNG, one row per layer of ``tests/test_structure.py``.

    python tools/module_graph.py --out docs/images/module-graph.png
    python tools/module_graph.py --package OTHER/python/wse_fast --out before.png

The graph, the layers, the circles and the back arrows are those the structure test reads
(nothing of ``wse_fast`` is imported: its source is parsed). Grey arrows run down or within a
layer; red ones run up a layer; orange ones are inside an import circle. A module no layer
names (an older tree's) goes in a row of its own at the top.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent.parent


def structure() -> ModuleType:
    """tests/test_structure.py, loaded as a module (it is not in a package)."""
    path = HERE / "tests" / "test_structure.py"
    spec = importlib.util.spec_from_file_location("wse_fast_structure", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def short(name: str) -> str:
    return name.removeprefix("wse_fast.")


def rows_of(edges: dict[str, set[str]], layer_of: object, layers: int) -> list[list[str]]:
    """Modules by row (layer), ordered in each row by the mean position of what they import
    and what imports them, a few sweeps up and down, to cross fewer arrows."""
    place = layer_of  # a callable: module -> layer index or None
    rows: list[list[str]] = [[] for _ in range(layers + 1)]
    for module in sorted(edges):
        index = place(module)  # type: ignore[operator]
        rows[layers if index is None else index].append(module)
    neighbours: dict[str, set[str]] = {m: set(t) for m, t in edges.items()}
    for module, targets in edges.items():
        for target in targets:
            neighbours.setdefault(target, set()).add(module)
    position = {m: i / max(1, len(row) - 1) for row in rows for i, m in enumerate(row)}
    for _sweep in range(8):
        for row in rows:

            def mean(module: str) -> float:
                near = [position[n] for n in neighbours.get(module, ()) if n in position]
                return sum(near) / len(near) if near else position[module]

            row.sort(key=mean)
            for i, module in enumerate(row):
                position[module] = i / max(1, len(row) - 1)
    return [row for row in rows if row]


def draw(package: Path, out: Path, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    s = structure()
    edges: dict[str, set[str]] = s.graph(package)
    circle_members = {m for circle in s.circles(edges) for m in circle}
    circle_of = {m: c for c in s.circles(edges) for m in c}
    back = s.back_arrows(edges)
    layers = len(s.LAYERS)
    rows = rows_of(edges, s.layer_of, layers)
    xy: dict[str, tuple[float, float]] = {}
    widest = max(len(row) for row in rows)
    for level, row in enumerate(rows):
        for i, module in enumerate(row):
            x = (i + 0.5) * widest / len(row)
            xy[module] = (x, level * 2.2 + (0.55 if i % 2 else 0.0))
    fig, ax = plt.subplots(figsize=(max(16, widest * 1.5), len(rows) * 2.4 + 1.5))
    arrows = 0
    for importer, targets in sorted(edges.items()):
        for target in sorted(targets):
            arrows += 1
            in_circle = importer in circle_of and circle_of[importer] == circle_of.get(target)
            upward = (importer, target) in back
            colour = "#d62728" if upward else "#ff7f0e" if in_circle else "#9a9a9a"
            same_row = abs(xy[importer][1] - xy[target][1]) < 1.0
            ax.add_patch(
                FancyArrowPatch(
                    xy[importer],
                    xy[target],
                    arrowstyle="-|>",
                    mutation_scale=9,
                    linewidth=1.6 if (upward or in_circle) else 0.6,
                    color=colour,
                    alpha=0.9 if (upward or in_circle) else 0.45,
                    connectionstyle="arc3,rad=0.25" if same_row else "arc3,rad=0.04",
                    shrinkA=14,
                    shrinkB=14,
                    zorder=1 if colour == "#9a9a9a" else 2,
                )
            )
    for module, (x, y) in xy.items():
        face = "#ffe2c6" if module in circle_members else "#e8eef7"
        ax.text(
            x,
            y,
            short(module),
            ha="center",
            va="center",
            fontsize=8,
            zorder=3,
            bbox={"boxstyle": "round,pad=0.3", "fc": face, "ec": "#4a5a70", "lw": 0.6},
        )
    for level, row in enumerate(rows):
        index = s.layer_of(row[0])
        name = "not in any layer" if index is None else s.LAYERS[index][0]
        ax.text(-0.4, level * 2.2 + 0.27, name, ha="right", va="center", fontsize=8, style="italic")
    summary = (
        f"{len(edges)} modules, {arrows} imports, {len(s.circles(edges))} import circle(s) "
        f"({len(circle_members)} modules, orange), {len(back)} import(s) up a layer (red)"
    )
    ax.set_title(f"{title}\n{summary}", fontsize=11)
    ax.set_xlim(-widest * 0.35, widest + 0.3)
    ax.set_ylim(-1.0, (len(rows) - 1) * 2.2 + 1.4)
    ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--package",
        type=Path,
        default=HERE / "python" / "wse_fast",
        help="the wse_fast folder to read (default: this checkout's)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", default="wse_fast: module graph by layer")
    args = parser.parse_args()
    print(draw(args.package, args.out, args.title))


if __name__ == "__main__":
    main()
