"""The documentation cannot rot: the site builds strictly, every public name has its reference
entry, and every complete program on its pages runs.

A complete program is a Python code block titled with a bare file name, as in
````` ```python title="hello.py" `````. Its text is on the page (README.md, docs/**/*.md) and
runs here as a script; a block whose body only includes a file of examples/ (a
`--8<--` line) shows that file, which tests/test_examples.py and the mount tests run.
Programs that start a server bind 127.0.0.1 and port 0, and end by themselves.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import wse_fast

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# ```python title="name.py" ... ``` at any indentation; the title a file name without spaces
FENCE = re.compile(
    r'^(?P<indent>[ \t]*)```python title="(?P<title>[^"]+)"[^\n]*\n(?P<body>.*?)^(?P=indent)```',
    re.S | re.M,
)
PROGRAM_TITLE = re.compile(r"[\w./-]+\.py")
SNIPPET = re.compile(r'--8<-- "(?P<path>[^"]+)"')


def titled_blocks() -> list[tuple[Path, str, str]]:
    """(page, title, body) of every Python block whose title is a file name."""
    blocks = []
    for page in PAGES:
        for found in FENCE.finditer(page.read_text()):
            if PROGRAM_TITLE.fullmatch(found["title"]):
                indent = found["indent"]
                body = "".join(
                    line.removeprefix(indent) for line in found["body"].splitlines(keepends=True)
                )
                blocks.append((page, found["title"], body))
    return blocks


BLOCKS = titled_blocks()
PROGRAMS = [block for block in BLOCKS if not SNIPPET.fullmatch(block[2].strip())]
INCLUDED = [block for block in BLOCKS if SNIPPET.fullmatch(block[2].strip())]


def block_id(block: tuple[Path, str, str]) -> str:
    return f"{block[0].relative_to(ROOT)}:{block[1]}"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """mkdocs --strict: a broken link, a missing anchor or page, an unresolved API reference
    or a snippet file that does not exist fails the build."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "reference" / "server" / "index.html").exists()


def test_every_public_name_has_a_reference_entry() -> None:
    reference = "".join(path.read_text() for path in (ROOT / "docs" / "reference").glob("*.md"))
    entries = set(re.findall(r"^::: wse_fast\.(\w+)$", reference, re.M))
    assert entries == set(wse_fast.__all__)


def test_the_pages_have_programs_to_run() -> None:
    """The collection below found the README's quickstart and the getting-started program."""
    pages = {page.relative_to(ROOT).as_posix() for page, _, _ in PROGRAMS}
    assert {"README.md", "docs/getting-started.md"} <= pages


@pytest.mark.parametrize("block", PROGRAMS, ids=block_id)
def test_program_on_a_page_runs(block: tuple[Path, str, str], tmp_path: Path) -> None:
    _, title, body = block
    if "WseServer(" in body:
        assert "port=0" in body, f"{title}: a program's server takes a free port (port=0)"
        assert "0.0.0.0" not in body, f"{title}: a program's server stays on 127.0.0.1"
    script = tmp_path / Path(title).name
    script.write_text(body)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{block_id(block)} failed:\n{done.stderr}"


@pytest.mark.parametrize("block", INCLUDED, ids=block_id)
def test_included_program_is_an_example_the_suite_runs(block: tuple[Path, str, str]) -> None:
    _, title, body = block
    found = SNIPPET.fullmatch(body.strip())
    assert found is not None
    path = found["path"]
    assert path == title and path.startswith("examples/") and (ROOT / path).is_file()
    name = Path(path).name
    assert any(name in test.read_text() for test in (ROOT / "tests").glob("test_*.py"))


def test_the_tutorial_shows_every_example() -> None:
    tutorial = (ROOT / "docs" / "tutorial.md").read_text()
    shown = set(re.findall(r'--8<-- "examples/(\w+\.py)"', tutorial))
    assert shown == {path.name for path in (ROOT / "examples").glob("*.py")} - {"echo_server.py"}


def test_the_readme_is_a_front_page() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_the_kubernetes_sketch_lets_only_the_servers_reach_nats() -> None:
    # NATS access is server access (every send, every client's byte stream, every device's
    # procedures): the sketch a team copies must not leave it open to every pod
    import yaml

    documents = list(yaml.safe_load_all((ROOT / "docs/deploy/kubernetes.yaml").read_text()))
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    guarding = [p for p in policies if p["spec"]["podSelector"]["matchLabels"] == {"app": "nats"}]
    assert guarding, "no NetworkPolicy in front of NATS"
    sources = [s for rule in guarding[0]["spec"]["ingress"] for s in rule["from"]]
    assert sources == [{"podSelector": {"matchLabels": {"app": "wse-fast"}}}]
