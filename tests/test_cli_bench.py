"""``wse-fast bench URL``, the load tool, as a real process against a real wse-fast server on
127.0.0.1: what it counts is what the server did (the test's procedures count on the server
side), failed calls and refused connections are counted and fail the run, ``listen`` counts the
messages of its type that arrived inside the window, and SIGINT ends the window early."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from typing import Any

import pytest
from wse_fast import Connection, IdentifyRequest, MsgpackProtocol, WseError, WseServer

from tests.conftest import ServerFactory
from tests.test_cli_client import started, url_of, wse_fast

#: A short window: long enough for thousands of calls on 127.0.0.1, short for the suite.
SHORT = ["--conns", "3", "--duration", "0.5"]


class Answered:
    """What the server did: calls answered per connection, the most calls one connection
    had running at once, the identities it accepted (all but ``refused``)."""

    def __init__(self, refused: str = "refused") -> None:
        self.refused = refused
        self.calls: Counter[str] = Counter()
        self.running: Counter[str] = Counter()
        self.most_running: Counter[str] = Counter()
        self.identities: list[str] = []
        self.answered = asyncio.Event()

    def identify(self, req: IdentifyRequest) -> None:
        if req.identity == self.refused:
            req.refuse()
            return
        self.identities.append(req.identity)
        req.accept(req.identity)

    async def total_reaches(self, count: int) -> None:
        async with asyncio.timeout(20):
            while self.calls.total() < count:
                self.answered.clear()
                await self.answered.wait()

    async def add(self, conn: Connection, payload: Any) -> int:
        key = conn.conn_id
        self.calls[key] += 1
        self.answered.set()
        self.running[key] += 1
        self.most_running[key] = max(self.most_running[key], self.running[key])
        await asyncio.sleep(0)  # a call still running when the next one of its connection comes
        self.running[key] -= 1
        return int(payload["a"] + payload["b"])


async def counting_server(
    make_server: ServerFactory, refused: str = "refused", **options: Any
) -> tuple[WseServer, Answered]:
    answered = Answered(refused)
    server = await make_server(answered.identify, **options)
    server.register("add", answered.add)
    return server, answered


def report_of(status: int, out: str, err: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(out)
    assert set(report) == {
        "url",
        "workload",
        "protocol",
        "procedure",
        "in_flight",
        "type",
        "connections",
        "warmup_seconds",
        "seconds",
        "calls",
        "latency_ms",
        "messages",
        "errors",
        "client_cpu",
    }, err
    return report


@pytest.mark.parametrize("protocol", ["json", "msgpack"])
async def test_rpc_counts_every_call_the_server_answered(
    make_server: ServerFactory, protocol: str
) -> None:
    wire = {"protocol": MsgpackProtocol()} if protocol == "msgpack" else {}
    server, answered = await counting_server(make_server, **wire)
    status, out, err = await wse_fast(
        "bench",
        url_of(server),
        "--identity",
        "user-{i}",
        *SHORT,
        "--warmup",
        "0.2",
        "--in-flight",
        "2",
        "--protocol",
        protocol,
        "--json",
    )
    assert status == 0, err
    report = report_of(status, out, err)
    assert sorted(answered.identities) == ["user-0", "user-1", "user-2"]
    assert report["connections"] == {"asked": 3, "opened": 3, "failed": 0, "lost": 0}
    assert report["workload"] == "rpc" and report["procedure"] == "add"
    assert report["protocol"] == ("wse-msgpack" if protocol == "msgpack" else "wse-default-json")
    calls = report["calls"]
    assert calls["completed"] > 0 and calls["failed"] == 0 and report["errors"] == {}
    # every call the server answered was counted, in the window or in the warm-up before it
    assert calls["completed"] + calls["in_warmup"] == answered.calls.total()
    # the window: --duration (to the loop's millisecond timers), then the calls in flight
    assert report["seconds"] >= 0.49 and report["warmup_seconds"] == 0.2
    assert calls["per_second"] == pytest.approx(calls["completed"] / report["seconds"])
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert report["messages"] is None and 0 < report["client_cpu"]
    # --in-flight 2: each connection had two calls running at once, never more
    assert sorted(answered.most_running.values()) == [2, 2, 2]


async def test_failed_calls_are_counted_and_fail_the_run(make_server: ServerFactory) -> None:
    server, _ = await counting_server(make_server)
    refused = Counter[str]()

    @server.register("refuse")
    def refuse(conn: Connection, payload: Any) -> None:
        refused[conn.conn_id] += 1
        raise WseError("app.refused", {"got": payload})

    args = ["--identity", "u{i}", *SHORT, "--warmup", "0", "--procedure", "refuse"]
    status, out, err = await wse_fast("bench", url_of(server), *args, "--payload", "[1]", "--json")
    assert status == 1 and err.endswith("wse-fast bench: no call succeeded\n"), err
    report = report_of(status, out, err)
    calls = report["calls"]
    assert calls["failed"] == sum(refused.values()) > 0
    assert calls["completed"] == calls["in_warmup"] == 0
    assert report["errors"] == {"app.refused": calls["failed"]}
    assert report["latency_ms"] is None and calls["per_second"] == 0.0


async def test_refused_connections_fail_the_run_beyond_the_threshold(
    make_server: ServerFactory,
) -> None:
    server, _ = await counting_server(make_server, refused="u1")
    url = url_of(server)
    status, out, err = await wse_fast("bench", url, "--identity", "u1", "--conns", "1")
    assert status == 1 and err.endswith("wse-fast bench: no connection opened\n"), err
    rows = out.splitlines()
    assert "connections  0 opened, 1 failed, 0 lost" in rows  # and nothing measured
    assert "error        wse.not-authorized: 1" in rows

    # {i}: u0 is accepted, u1 refused
    args = ["--identity", "u{i}", "--conns", "2", "--duration", "0.2", "--warmup", "0", "--json"]
    for allowed, expected in ((0, 1), (1, 0)):
        status, out, err = await wse_fast("bench", url, *args, "--max-failed-conns", str(allowed))
        report = report_of(status, out, err)
        assert report["connections"] == {"asked": 2, "opened": 1, "failed": 1, "lost": 0}
        assert report["calls"]["completed"] > 0
        assert report["errors"] == {"wse.not-authorized": 1}
        assert status == expected, err
        if expected:
            assert "1 of 2 connections failed (more than --max-failed-conns 0)" in err


async def test_listen_counts_the_messages_of_its_type_inside_the_window(
    make_server: ServerFactory,
) -> None:
    server, _ = await counting_server(make_server)
    proc = await started(
        "bench",
        url_of(server),
        "--identity",
        "u{i}",
        "--workload",
        "listen",
        "--conns",
        "3",
        "--warmup",
        "0",
        "--duration",
        "2",
        "--json",
    )
    assert proc.stderr is not None and proc.stdout is not None
    async with asyncio.timeout(20):
        while not (await proc.stderr.readline()).startswith(b"measuring for"):
            pass
    for n in range(50):  # sent after the window opened; the window is seconds long
        server.broadcast("tick", n)
        server.broadcast("other", n)  # not --type: not counted
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    status = proc.returncode
    assert status == 0, err
    report = report_of(status, out.decode(), err.decode())
    assert report["workload"] == "listen" and report["type"] == "tick"
    assert report["messages"]["received"] == 3 * 50
    assert report["messages"]["per_second"] == pytest.approx(150 / report["seconds"])
    assert report["calls"] is None and report["latency_ms"] is None


async def test_sigint_ends_the_window_early_and_reports(make_server: ServerFactory) -> None:
    server, answered = await counting_server(make_server)
    proc = await started(
        "bench", url_of(server), "--identity", "u{i}", "--conns", "2", "--duration", "60"
    )
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        while not (await proc.stderr.readline()).startswith(b"measuring for"):
            pass
    await answered.total_reaches(answered.calls.total() + 10)  # calls inside the window
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err
    rows = {k: v.strip() for k, v in (line.split("  ", 1) for line in out.decode().splitlines())}
    assert rows["connections"] == "2 opened, 0 failed, 0 lost"
    seconds = float(rows["window"].split()[0])
    assert seconds < 30  # not --duration
    completed = int(rows["calls"].split()[0].replace(",", ""))
    assert 0 < completed <= answered.calls.total()
    for row in ("calls/s", "latency", "client CPU"):
        assert row in rows


async def test_the_report_shows_the_url_without_credentials_nor_query(
    make_server: ServerFactory,
) -> None:
    server, _answered = await counting_server(make_server)
    url = url_of(server).replace("ws://", "ws://someone:pa55word@") + "/?token=t0ken"
    status, out, err = await wse_fast(
        "bench", url, "--identity", "user-{i}", *SHORT, "--warmup", "0", "--json"
    )
    assert status == 0, err
    assert report_of(status, out, err)["url"] == url_of(server) + "/"
    for secret in ("pa55word", "t0ken", "someone"):
        assert secret not in out and secret not in err
