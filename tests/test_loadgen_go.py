"""The benchmark's second load generator (benches/loadgen_go, Go) against a real wse-fast
server: every call it counts was made and answered, and a wrong answer fails its run."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from wse_fast import IdentifyRequest, WseServer

from tests.conftest import ServerFactory

SOURCE = Path(__file__).parent.parent / "benches" / "loadgen_go"


@pytest.fixture(scope="module")
def loadgen_go(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The load generator built from this checkout's source (Go caches the build: ~1 s)."""
    go = shutil.which("go")
    assert go is not None, "Go builds the benchmark's load generator (make setup)"
    binary = tmp_path_factory.mktemp("loadgen_go") / "loadgen_go"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=SOURCE, check=True, timeout=120)
    return binary


def each_its_own_user(req: IdentifyRequest) -> None:
    """As the bench app identifies: the welcome carries no payload, each connection a user."""
    req.accept(req.conn_id)


async def run_loadgen(
    binary: Path, server: WseServer, conns: int, depth: int, seconds: float, *options: str
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(binary),
        *("-port", str(server.port), "-conns", str(conns), "-depth", str(depth)),
        *("-seconds", str(seconds), "-server-pids", str(os.getpid()), *options),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("writes", ["one per call", "pipelined"])
async def test_every_call_counted_was_made_and_answered(
    make_server: ServerFactory, loadgen_go: Path, writes: str
) -> None:
    server = await make_server(each_its_own_user)
    calls: Counter[str] = Counter()

    def add(conn: Any, p: dict[str, int]) -> int:
        calls[conn.conn_id] += 1
        return p["a"] + p["b"]

    server.register("add", add)
    options = ["-pipelined"] if writes == "pipelined" else []
    code, out, err = await run_loadgen(loadgen_go, server, 10, 4, 0.5, *options)
    assert code == 0, err
    result = json.loads(out)
    assert (result["loadgen"], result["conns"], result["depth"]) == ("go", 10, 4)
    # answers counted by the receivers are exactly the calls the server ran, on 10 connections
    assert result["deliveries"] == sum(calls.values()) > 10 * 4
    assert len(calls) == 10
    # the server (this process) worked over the window, the load generator too
    assert result["cpu"] > 0 and result["loadgen_cpu"] > 0
    assert result["wall"] >= 0.5
    assert 0 < result["p50_ms"] <= result["p99_ms"]


@pytest.mark.parametrize("writes", ["one per call", "pipelined"])
async def test_a_wrong_answer_fails_the_run(
    make_server: ServerFactory, loadgen_go: Path, writes: str
) -> None:
    server = await make_server(each_its_own_user)
    server.register("add", lambda conn, p: p["a"] + p["b"] + 1)
    options = ["-pipelined"] if writes == "pipelined" else []
    code, out, err = await run_loadgen(loadgen_go, server, 2, 2, 0.2, *options)
    assert code == 1 and out == ""
    assert "unexpected answer" in err and '"~wse:response\\",4,' in err


async def test_hold_mode_counts_one_broadcast_on_every_connection(
    make_server: ServerFactory, loadgen_go: Path
) -> None:
    """benches/scale.py's mode: 50 connections from two source addresses, authenticated, then
    one broadcast (asked for by the load generator's trigger) received once on each, timed
    from the time the server wrote into the tick."""
    sources: Counter[str] = Counter()

    def identify(req: IdentifyRequest) -> None:
        sources[req.conn.remote_addr[0]] += 1
        req.accept(req.conn_id)

    server = await make_server(identify)

    @server.channel.on("broadcast")
    async def broadcast(conn: Any, _: Any) -> None:
        server.broadcast("tick", f"{time.monotonic_ns():019d}")
        server.broadcast("other", "not a tick: not counted")

    proc = await asyncio.create_subprocess_exec(
        str(loadgen_go),
        *("-hold", "-port", str(server.port), "-conns", "50", "-parallel", "8"),
        *("-sources", "127.3.250.1,127.3.250.2"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None

    async def answer() -> dict[str, Any]:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert line, "the load generator ended"
        return dict(json.loads(line))

    try:
        opened = await answer()
        assert (opened["connected"], opened["failed"], opened["lost"]) == (50, 0, 0)
        assert opened["first_error"] == ""
        assert opened["connect_wall"] > 0
        # each connection from the address its index picks, bound before the connect
        assert sources == {"127.3.250.1": 25, "127.3.250.2": 25}

        proc.stdin.write(b"arm\n")
        assert await answer() == {"armed": True}
        sent_at = time.monotonic_ns()
        proc.stdin.write(b'trigger ["broadcast",null,null]\nreport 5\n')
        report = await answer()
        elapsed_ms = (time.monotonic_ns() - sent_at) / 1e6
        assert (report["receipts"], report["receivers"], report["lost"]) == (50, 50, 0)
        # the delays are read on the server's clock: after the broadcast, before this moment
        assert 0 < report["first_ms"] <= report["p50_ms"] <= report["last_ms"] < elapsed_ms
        assert len(report["quantiles_ms"]) == 101
        assert report["quantiles_ms"][0] == report["first_ms"]
        assert report["quantiles_ms"][-1] == report["last_ms"]

        # armed again, nothing broadcast: nothing is counted, the wait ends at its timeout
        proc.stdin.write(b"arm\nreport 0.2\n")
        assert await answer() == {"armed": True}
        again = await answer()
        assert (again["receipts"], again["receivers"], again["lost"]) == (0, 0, 0)
    finally:
        proc.stdin.close()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
