"""The examples run (the tutorial, docs/tutorial.md, includes each file as it is)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {
    "quickstart.py": [
        "5 + 3 = 8",
        "announcement: {'text': 'to everyone'}",
        "left: user-123 1000 wse.by-client",
    ],
    "challenge.py": [
        "alice -> {'hello': 'alice'}",
        "alice -> refused: wse.not-authorized",
        "mallory -> refused",
    ],
    "multi_device.py": [
        "phone got {'unread': 3}",
        "desktop got {'unread': 3}",
        "now: ['desktop', 'tablet']",
    ],
    "custom_protocol.py": ["wse-msgpack -> {'raw': b'\\x00\\x01'}", "object-json -> [1, 2]"],
    "errors.py": [
        "10 / 4 = 2.5",
        "via the server: 70",
        "divide: app.division-by-zero",
        "slow: wse.client.rp.timeout",
    ],
    "demo.py": [
        "[desktop] received chat",
        "[server] battery of phone",
        "[stranger] refused: wse.not-authorized",
        "demo finished",
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for line in EXPECTED[name]:
        assert line in done.stdout, (line, done.stdout)
