"""MkDocs hook: publishes the benchmark plots of benches/results/ under results/ in the site.

The plots stay where the benchmarks write them; a copy in docs/ would go stale the first time
`make bench` runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[1] / "benches" / "results"


def on_files(files: Files, config: Any) -> Files:
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
    return files


# The docstrings are written for Sphinx-style roles (:class:`~wse_fast.Limits`); Markdown turns
# the backticks into <code> and leaves the role's name in front. Shown as the code they name.
ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):<code>(~?)([^<]+)</code>")


def _role(found: re.Match[str]) -> str:
    name = found[2].rsplit(".", 1)[-1] if found[1] else found[2]
    return f"<code>{name}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    return ROLE.sub(_role, html)
