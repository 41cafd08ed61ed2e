"""The comparative benchmark suite of the checkout, ``python benches/run.py`` (what ``make
bench`` runs): a part's results follow its header on stdout, with a progress bar on stderr
(on a terminal) counted to the results the part prints, and its tables are written to --out.
The RPC part alone, wse-fast alone, one run: a few seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_cli import ROOT

RUN_PY = ROOT / "benches" / "run.py"


def with_terminal_stderr(
    args: list[str], timeout: float = 120
) -> tuple[subprocess.CompletedProcess[str], str]:
    """``run.py ARGS`` with stderr on a terminal (so that progress bars are drawn): the
    result (stdout captured) and what was drawn on the terminal."""
    bars, terminal = os.openpty()
    try:
        result = subprocess.run(
            [sys.executable, str(RUN_PY), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            timeout=timeout,
            check=False,
        )
        os.close(terminal)
        drawn = b""
        while True:
            try:
                chunk = os.read(bars, 4096)
            except OSError:  # EIO: the terminal's other end is closed and all is read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(bars)
    return result, drawn.decode(errors="replace")


def test_run_py_draws_a_bar_per_part_and_writes_its_tables(tmp_path: Path) -> None:
    out = ["--out", str(tmp_path), "--name", "suite"]
    result, drawn = with_terminal_stderr(
        ["--parts", "rpc", "--runs", "1", "--peers", "wse-fast", *out]
    )
    assert result.returncode == 0, drawn
    lines = result.stdout.splitlines()
    assert lines[0] == "rpc:"
    assert all(line.startswith("  rpc ") and "calls/s" in line for line in lines[1:4])
    assert lines[4].startswith(f"wrote {tmp_path / 'suite'}.md")
    assert "0/3" in drawn and "3/3" in drawn  # the bar counted the part's three results
    assert "### RPC, pipelined" in (tmp_path / "suite.md").read_text()
    assert len(json.loads((tmp_path / "suite.json").read_text())["rpc"]) == 3


def test_run_py_refuses_unknown_parts_and_peers(tmp_path: Path) -> None:
    for option, value in (("--parts", "speed"), ("--peers", "nginx")):
        result = subprocess.run(
            # --out: a run.py that took the option would not write over benches/results
            [sys.executable, str(RUN_PY), option, value, "--out", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert f"invalid choice: '{value}'" in result.stderr
