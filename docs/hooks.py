"""MkDocs hook: publishes the benchmark plots of benches/results/ under results/ in the site.

The plots stay where the benchmarks write them; a copy in docs/ would go stale the first time
`make bench` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[1] / "benches" / "results"


def on_files(files: Files, config: Any) -> Files:
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
    return files
