"""The decorator forms keep the registered function's type: tests/typing_cases.py, checked by
mypy --strict (the project's configuration), has exactly the errors its ``# E:`` comments
name."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(__file__).resolve().parent / "typing_cases.py"
MARK = re.compile(r"#\s*E:\s*([\w-]+)\s*$")
ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[\w-]+)\]$")


def expected_errors() -> set[tuple[int, str]]:
    lines = CASES.read_text().splitlines()
    return {(n, m.group(1)) for n, line in enumerate(lines, 1) if (m := MARK.search(line))}


def test_registrations_keep_the_function_type_and_check_its_signature() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", str(CASES.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stderr == "", done.stderr
    found = {
        (int(m["line"]), m["code"]) for line in done.stdout.splitlines() if (m := ERROR.match(line))
    }
    unparsed = [
        line
        for line in done.stdout.splitlines()
        if not ERROR.match(line) and ": note: " not in line
    ]
    assert not unparsed, unparsed
    assert found == expected_errors(), done.stdout
    assert len(expected_errors()) == 18  # the cases of bad handlers and options are all there
    assert CASES.read_text().count("assert_type(") >= 28  # and the cases of kept types
