"""RFC 6455 conformance: the Autobahn fuzzing client against examples/echo_server.py.

Usage: .venv/bin/python tests/autobahn/run.py [--deflate] [CASE ...]   (default: the cases
in fuzzingclient.json, groups 1-7, 9 and 10; with ``--deflate``, the echo server agrees to
permessage-deflate and the default cases are groups 12 and 13, compressed messages)

The fuzzing client is Python 2.7 software. On first use it is installed, with the pinned
versions of requirements-py27.txt, into tests/autobahn/.env/ (git-ignored; remade when the
pins change) with a CPython 2.7 found as $AUTOBAHN_PYTHON2, pyenv's 2.7.18 or python2.7.
The echo server runs on 127.0.0.1 on a free port; the report goes to tests/autobahn/reports/.
A case fails unless its behaviour is OK, NON-STRICT or INFORMATIONAL and its close behaviour
OK or INFORMATIONAL. Exit status 0 only when no case failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ENV = HERE / ".env"
REPORTS = HERE / "reports"
PINS = HERE / "requirements-py27.txt"
#: virtualenv's last release line that still makes Python 2.7 environments and runs on 2.7.
VIRTUALENV = "virtualenv==20.15.1"
AGENT = "wse-fast"
GOOD = {"OK", "NON-STRICT", "INFORMATIONAL"}
GOOD_CLOSE = {"OK", "INFORMATIONAL"}


def python2() -> str:
    candidates = [
        os.environ.get("AUTOBAHN_PYTHON2", ""),
        str(Path.home() / ".pyenv/versions/2.7.18/bin/python"),
        shutil.which("python2.7") or "",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    sys.exit("no CPython 2.7 found: set AUTOBAHN_PYTHON2 to one")


def ensure_wstest() -> Path:
    """The fuzzing client's wstest, installed once per version of the pins."""
    wstest = ENV / "py27/bin/wstest"
    stamp = ENV / "installed.sha256"
    wanted = hashlib.sha256(PINS.read_bytes() + VIRTUALENV.encode()).hexdigest()
    if wstest.exists() and stamp.exists() and stamp.read_text() == wanted:
        return wstest
    shutil.rmtree(ENV, ignore_errors=True)
    py2 = python2()
    quiet = ["-q", "--disable-pip-version-check"]
    tool = ENV / "virtualenv"
    subprocess.run([py2, "-m", "pip", "install", *quiet, "--target", tool, VIRTUALENV], check=True)
    subprocess.run(
        [py2, "-m", "virtualenv", "-q", ENV / "py27"],
        check=True,
        env={**os.environ, "PYTHONPATH": str(tool)},
    )
    subprocess.run([ENV / "py27/bin/pip", "install", *quiet, "-r", PINS], check=True)
    stamp.write_text(wanted)
    return wstest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_echo_server(port: int, deflate: bool) -> subprocess.Popen[str]:
    log = (REPORTS / "echo_server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "examples/echo_server.py"),
            str(port),
            *(["--deflate"] if deflate else []),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()  # printed once the server listens
    if not line.startswith("echo server on"):
        server.kill()
        sys.exit(f"echo server did not start: {line!r}")
    return server


def judge(index: dict[str, dict[str, dict[str, object]]]) -> tuple[int, list[str]]:
    """How many cases the report holds, and a line for each failure."""
    cases = index[AGENT]
    bad = []
    for case_id, result in sorted(cases.items(), key=lambda kv: [int(p) for p in kv[0].split(".")]):
        behavior, close = result["behavior"], result["behaviorClose"]
        passed = behavior in GOOD and close in GOOD_CLOSE
        if not passed:
            bad.append(f"{case_id}: behavior {behavior}, close {close} ({result['reportfile']})")
    return len(cases), bad


def main() -> int:
    wstest = ensure_wstest()
    config = json.loads((HERE / "fuzzingclient.json").read_text())
    args = sys.argv[1:]
    deflate = "--deflate" in args
    cases = [arg for arg in args if arg != "--deflate"]
    if cases:
        config["cases"] = cases
    elif deflate:
        config["cases"] = ["12.*", "13.*"]
    port = free_port()
    shutil.rmtree(REPORTS, ignore_errors=True)
    REPORTS.mkdir()
    config["outdir"] = str(REPORTS)
    config["servers"] = [{"agent": AGENT, "url": f"ws://127.0.0.1:{port}"}]
    spec = REPORTS / "fuzzingclient.json"
    spec.write_text(json.dumps(config, indent=2))

    server = start_echo_server(port, deflate)
    started = time.monotonic()
    try:
        subprocess.run(
            [wstest, "-m", "fuzzingclient", "-s", spec],
            cwd=REPORTS,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    finally:
        server.terminate()
        server.wait(10)
    took = time.monotonic() - started

    total, bad = judge(json.loads((REPORTS / "index.json").read_text()))
    for line in bad:
        print("FAILED", line)
    print(f"Autobahn fuzzingclient: {total} cases in {took:.0f} s, report in {REPORTS}")
    print(f"{total - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
