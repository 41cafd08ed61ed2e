"""Metrics, health and logs: /metrics scraped over real HTTP as connections, messages, calls,
refusals and slow consumers happen; /health as the server serves, closes, and loses its
cluster; the log records about a connection, and picows's own kept out."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from wse_fast import WSE_ERROR, RpcError, WseError, WseServer
from wse_fast.cluster.local_nats import LocalNats

from tests.conftest import ClientFactory, EventLog, ServerFactory, accept_identity
from tests.hosts import serve_aiohttp, serve_asgi
from tests.test_cli import serve
from tests.test_framing import RawPeer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def get(port: int, path: str) -> tuple[int, str, bytes]:
    """``GET path`` over a socket of its own: status, content type and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    body = await reader.read()  # the server closes after the answer
    writer.close()
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    headers = {k.lower(): v for k, v in headers.items()}
    if "content-length" in headers:
        assert len(body) == int(headers["content-length"])
    return int(lines[0].split()[1]), headers.get("content-type", ""), body


async def scrape(port: int, path: str = "/metrics") -> Samples:
    """The samples of /metrics, read by prometheus_client's own parser."""
    status, content_type, body = await get(port, path)
    assert status == 200 and content_type.startswith("text/plain"), (status, body)
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def health(port: int, path: str = "/health") -> tuple[int, dict[str, Any]]:
    status, content_type, body = await get(port, path)
    assert content_type == "application/json"
    return status, json.loads(body)


@pytest.fixture
async def metrics_port(make_server: ServerFactory) -> AsyncIterator[tuple[WseServer, int]]:
    server = await make_server()
    listener = await server.metrics.listen("127.0.0.1", 0)
    yield server, listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()


async def test_connections_users_and_strangers_are_gauges_of_the_moment(
    metrics_port: tuple[WseServer, int], make_client: ClientFactory, log: EventLog
) -> None:
    server, port = metrics_port
    server.when.disconnected(log.hook("disconnected"))
    samples = await scrape(port)
    assert value(samples, "wse_connections") == 0 and value(samples, "wse_users") == 0
    alice = make_client(server)
    await alice.connect("alice")
    stranger = await RawPeer.connect(server.port)  # upgraded, never says hi
    samples = await scrape(port)
    assert value(samples, "wse_connections") == 1
    assert value(samples, "wse_connections_authenticating") == 1
    assert value(samples, "wse_users") == 1
    assert value(samples, "wse_connections_opened_total") == 2
    assert value(samples, "wse_connections_accepted_total") == 1
    await alice.close()
    await log.wait("disconnected")
    samples = await scrape(port)
    assert value(samples, "wse_connections") == 0 and value(samples, "wse_users") == 0
    assert value(samples, "process_cpu_seconds_total") > 0  # the process's own, after ours
    stranger.writer.close()


async def test_messages_and_bytes_by_type_in_and_out(
    metrics_port: tuple[WseServer, int], make_client: ClientFactory, log: EventLog
) -> None:
    server, port = metrics_port
    server.channel.on("chat", log.hook("chat"))
    server.when.ignored(log.hook("ignored"))
    peer = await RawPeer.connect(server.port)
    await peer.hello()
    chat = json.dumps(["chat", {"text": "hé"}], ensure_ascii=False).encode()
    unknown = json.dumps(["made-up-type-1", 1]).encode()
    for _ in range(3):
        peer.send(0x1, chat)
    peer.send(0x1, unknown)
    peer.send(0x1, json.dumps(["made-up-type-2", 2]).encode())
    await log.wait("chat", 3)
    await log.wait("ignored", 2)
    listener = make_client(server)
    listener.channel.on("news", log.hook("news"))
    await listener.connect("bob")
    frame = server.encode("news", {"n": 1}, None)
    server.broadcast("news", {"n": 1})  # two connections: counted twice, once per connection
    await log.wait("news")
    samples = await scrape(port)
    assert value(samples, "wse_messages_received_total", type="chat") == 3
    assert value(samples, "wse_received_bytes_total", type="chat") == 3 * len(chat)
    # types without a listener share one label: a client cannot add series
    assert value(samples, "wse_messages_received_total", type="(unhandled)") == 2
    assert not [key for key in samples if ("type", "made-up-type-1") in key[1]]
    assert value(samples, "wse_messages_received_total", type="~wse:hi") == 2
    assert value(samples, "wse_messages_sent_total", type="news") == 2
    assert value(samples, "wse_sent_bytes_total", type="news") == 2 * len(frame)
    # to one user, and to one connection: counted as they are queued
    server.send("bob", "direct", 1)
    server.clients["bob"].send("direct", 2)
    [conn] = server.clients["bob"].conns.values()
    conn.send("direct", 3)
    samples = await scrape(port)
    assert value(samples, "wse_messages_sent_total", type="direct") == 3
    peer.writer.close()


async def test_calls_are_timed_by_procedure_and_result_code(
    metrics_port: tuple[WseServer, int], make_client: ClientFactory
) -> None:
    server, port = metrics_port
    server.register("add", lambda conn, p: p["a"] + p["b"])

    def fail(conn: Any, payload: Any) -> None:
        raise WseError("app.out-of-stock")

    server.register("buy", fail)
    gate = asyncio.Event()

    async def slow(conn: Any, payload: Any) -> str:
        await gate.wait()
        return "done"

    server.register("slow", slow)
    client = make_client(server)
    await client.connect("alice")
    assert [await client.call("add", {"a": i, "b": 1}) for i in range(2)] == [1, 2]
    with pytest.raises(RpcError) as failed:
        await client.call("buy")
    assert failed.value.code == "app.out-of-stock"
    with pytest.raises(RpcError) as failed:
        await client.call("no-such-procedure")
    assert failed.value.code == WSE_ERROR.RP_NOT_REGISTERED
    # two coroutine calls waiting at once, and a plain one answered between them
    pending = [asyncio.ensure_future(client.call("slow")) for _ in range(2)]
    assert await client.call("add", {"a": 2, "b": 1}) == 3
    await asyncio.sleep(0.3)  # the time being measured, not a synchronisation
    gate.set()
    assert await asyncio.gather(*pending) == ["done", "done"]
    samples = await scrape(port)
    duration = "wse_rpc_duration_seconds"
    assert value(samples, f"{duration}_count", procedure="add", code="ok") == 3
    assert value(samples, f"{duration}_count", procedure="buy", code="app.out-of-stock") == 1
    unregistered = {"procedure": "(unregistered)", "code": WSE_ERROR.RP_NOT_REGISTERED}
    assert value(samples, f"{duration}_count", **unregistered) == 1
    assert value(samples, f"{duration}_count", procedure="slow", code="ok") == 2
    assert value(samples, f"{duration}_sum", procedure="slow", code="ok") > 2 * 0.25
    assert value(samples, f"{duration}_bucket", procedure="slow", code="ok", le="0.25") == 0
    assert value(samples, f"{duration}_bucket", procedure="slow", code="ok", le="+Inf") == 2
    assert value(samples, f"{duration}_bucket", procedure="add", code="ok", le="0.25") == 3
    assert value(samples, "wse_messages_received_total", type="add") == 3
    assert value(samples, "wse_messages_received_total", type="(unhandled)") == 1
    assert value(samples, "wse_messages_sent_total", type="~wse:response") == 5
    assert value(samples, "wse_messages_sent_total", type="~wse:response-err") == 2


async def test_refusals_by_reason_and_protocol_errors_by_code(
    metrics_port: tuple[WseServer, int], make_client: ClientFactory
) -> None:
    server, port = metrics_port
    refused = make_client(server)
    with pytest.raises(WseError):
        await refused.connect("bad-identity")
    garbage = await RawPeer.connect(server.port)
    garbage.send(0x1, b"not json")  # a stranger that breaks WSE: refused, protocol error
    await garbage.expect_close(1000)
    bad_text = await RawPeer.connect(server.port)
    await bad_text.hello()
    bad_text.send(0x1, b"\xff\xfe")  # not UTF-8 (RFC 6455 §8.1): 1007
    await bad_text.expect_close(1007)
    bad_text.writer.close()
    async with asyncio.timeout(5):
        while server.connections:
            await asyncio.sleep(0.01)
    samples = await scrape(port)
    assert value(samples, "wse_auth_refusals_total", reason="wse.not-authorized") == 1
    assert value(samples, "wse_auth_refusals_total", reason="wse.protocol-error") == 1
    assert value(samples, "wse_protocol_errors_total", code="1000") == 1
    assert value(samples, "wse_protocol_errors_total", code="1007") == 1
    assert value(samples, "wse_messages_received_total", type="(invalid)") == 1
    garbage.writer.close()


async def test_slow_consumer_drops_are_counted(make_server: ServerFactory, log: EventLog) -> None:
    server = await make_server(max_pending_bytes=256 * 1024)
    server.when.error(log.hook("error"))  # the drop (the close handshake comes after)
    listener = await server.metrics.listen("127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    peer = await RawPeer.connect(server.port)  # never reads after the welcome
    await peer.hello()
    chunk = "x" * 1024
    for _ in range(64):  # 64 turns of 1 MiB each: far more than the socket buffers take
        for _ in range(1024):
            server.broadcast("flood", chunk)
        await asyncio.sleep(0)
        if log.of("error"):
            break
    await log.wait("error")
    samples = await scrape(port)
    assert value(samples, "wse_slow_consumer_drops_total") == 1
    assert value(samples, "wse_messages_sent_total", type="flood") >= 1024
    listener.close()
    peer.writer.close()


async def test_health_is_200_while_serving_and_503_once_closing(
    metrics_port: tuple[WseServer, int],
) -> None:
    server, port = metrics_port
    status, report = await health(port)
    assert (status, report["status"]) == (200, "ok")
    await server.close()
    status, report = await health(port)
    assert (status, report["status"]) == (503, "closing")
    assert (await get(port, "/nothing"))[0] == 404


async def test_health_follows_the_cluster_link(make_client: ClientFactory, log: EventLog) -> None:
    async with LocalNats() as nats:
        server = WseServer(accept_identity, port=0)
        server.join_cluster(nats.url, node="health", node_ttl=2.0, max_outbox=64)
        server.when.cluster(log.hook("cluster"))
        listener = await server.metrics.listen("127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        try:
            await server.start()
            status, report = await health(port)
            assert status == 200 and report["cluster"] == {"node": "health", "healthy": True}
            samples = await scrape(port)
            assert value(samples, "wse_cluster_up") == 1
            server.broadcast("big", "x" * 100)  # over max_outbox: not handed to NATS, lost
            await nats.stop()
            await log.wait("cluster")
            assert ("disconnected",) in log.of("cluster")
            status, report = await health(port)
            assert (status, report["status"]) == (503, "cluster down")
            samples = await scrape(port)
            assert value(samples, "wse_cluster_up") == 0
            assert value(samples, "wse_cluster_lost_messages_total") == 1
        finally:
            await server.close()
            listener.close()


async def test_mounted_endpoints_under_starlette_and_aiohttp(make_client: ClientFactory) -> None:
    server = WseServer(accept_identity)
    app = Starlette(
        routes=[
            WebSocketRoute("/ws", server.asgi),
            Route("/ops/metrics", server.metrics.asgi),
            Route("/ops/health", server.metrics.asgi),
        ]
    )
    host = await serve_asgi(app)
    try:
        client = make_client(host.url("/ws"))
        await client.connect("alice")
        samples = await scrape(host.port, "/ops/metrics")
        assert value(samples, "wse_connections") == 1
        assert value(samples, "wse_messages_received_total", type="~wse:hi") == 1
        assert (await health(host.port, "/ops/health"))[0] == 200
        await client.close()
    finally:
        await server.close()
        await host.stop()

    other = WseServer(accept_identity)
    aio = web.Application()
    aio.router.add_get("/ws", other.aiohttp_handler)
    aio.router.add_get("/metrics", other.metrics.aiohttp_handler)
    aio.router.add_get("/health", other.metrics.aiohttp_handler)
    host = await serve_aiohttp(aio)
    try:
        client = make_client(host.url("/ws"))
        await client.connect("bob")
        samples = await scrape(host.port)
        assert value(samples, "wse_users") == 1
        assert (await health(host.port))[0] == 200
        await other.close()
        assert (await health(host.port))[0] == 503
    finally:
        await host.stop()


def test_without_prometheus_client_a_server_serves_counts_nothing_and_says_why() -> None:
    # prometheus_client made unimportable, as in an installation without the metrics extra
    script = textwrap.dedent(
        """
        import asyncio, sys
        sys.modules["prometheus_client"] = None
        from wse_fast import WseClient, WseServer

        async def get(port, path):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n".encode())
            answer = await reader.read()
            writer.close()
            return answer.split(b" ", 2)[1].decode(), answer.split(b"\\r\\n\\r\\n", 1)[1]

        async def main():
            server = WseServer(lambda req: req.accept(req.identity), port=0)
            server.register("add", lambda conn, p: p + 1)
            await server.start()
            listener = await server.metrics.listen("127.0.0.1", 0)
            port = listener.sockets[0].getsockname()[1]
            client = WseClient(f"ws://127.0.0.1:{server.port}", reconnect=False)
            await client.connect("alice")
            assert await client.call("add", 1) == 2
            metrics = server.metrics
            print(metrics.counting, metrics.received, metrics.sent, metrics.procedures)
            print(*await get(port, "/metrics"))
            print(*await get(port, "/health"))
            metrics.counting = True  # the application may count all the same
            assert await client.call("add", 2) == 3
            print(sum(metrics.procedure("add").ok.counts), metrics.sent["~wse:response"][0])
            await client.close()
            await server.close()

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    counters, metrics_line, health_line, calls = done.stdout.splitlines()
    assert counters == "False {} {} {}"
    assert metrics_line.startswith('501 b"/metrics needs prometheus-client')
    assert health_line.startswith("200 ")
    assert calls == "1 1"


async def test_records_about_a_connection_carry_its_ids_and_picows_stays_quiet(
    make_server: ServerFactory,
    make_client: ClientFactory,
    log: EventLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # everything, from every logger
    server = await make_server()
    server.when.disconnected(log.hook("disconnected"))

    def broken(conn: Any, payload: Any) -> None:
        raise RuntimeError("a bug")

    server.register("broken", broken)
    client = make_client(server)
    await client.connect("alice")
    with pytest.raises(RpcError):
        await client.call("broken")
    await client.close()
    await log.wait("disconnected")
    [failure] = [r for r in caplog.records if r.getMessage().startswith("procedure 'broken'")]
    conn_id = failure.conn_id  # type: ignore[attr-defined]
    assert (failure.levelno, failure.cid) == (logging.ERROR, "alice")  # type: ignore[attr-defined]
    about_conn = [r for r in caplog.records if r.name == "wse_fast.connection"]
    assert [r.getMessage().split(" ")[0] for r in about_conn] == ["opened", "accepted", "closed:"]
    assert all(r.levelno == logging.DEBUG and r.conn_id == conn_id for r in about_conn)  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.name.startswith("picows.server")]

    # picows's own lines come back when the application asks for them
    picows = logging.getLogger("picows")
    picows.setLevel(logging.INFO)
    try:
        again = make_client(server)
        await again.connect("bob")
        await again.close()
        await log.wait("disconnected", 2)
    finally:
        picows.setLevel(logging.NOTSET)
    accepted = [r for r in caplog.records if r.name == "picows.server"]
    assert any(r.getMessage().startswith("New connection accepted") for r in accepted)


def test_the_metrics_example_runs() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "metrics_app.py"
    done = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    for line in (
        "wse_connections 1.0",
        'wse_messages_received_total{type="chat"} 1.0',
        'wse_rpc_duration_seconds_count{code="ok",procedure="add"} 1.0',
        'health: 200 {"status": "ok", "connections": 1, "users": 1}',
        'health: 503 {"status": "closing"}',
    ):
        assert line in done.stdout, (line, done.stdout)


METRICS_LINE = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics and /health")


def two_free_ports() -> int:
    """A port P with P + 1 free too (as far as one can tell before using them), below the
    range the kernel hands out for port 0."""
    for port in random.sample(range(20000, 32000, 2), 50):
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two free ports in a row")


async def test_wse_fast_serve_metrics_port(make_client: ClientFactory) -> None:
    served = await serve(
        "tests.cli_app:server", "--port", "0", "--metrics-port", "0", "--log-level", "debug"
    )
    port = await served.serving()
    found = METRICS_LINE.search("".join(served.output))
    assert found, served.output
    metrics_port = int(found[1])
    client = make_client(f"ws://127.0.0.1:{port}")
    await client.connect("alice")
    assert value(await scrape(metrics_port), "wse_users") == 1
    assert (await health(metrics_port))[0] == 200
    await client.close()
    status, output = await served.terminate()
    assert status == 0, output
    # at debug level: the connection's lines, with its ids; none of picows's
    assert re.search(r"wse_fast.connection: accepted \[cid='alice' conn=\w+\]", output), output
    assert "picows" not in output


async def test_wse_fast_serve_workers_each_serve_metrics_on_a_port_of_their_own() -> None:
    first = two_free_ports()
    served = await serve(
        "tests.cli_app:server",
        *("--port", "0", "--workers", "2", "--no-cluster"),
        *("--metrics-port", str(first)),
    )
    await served.serving()
    for metrics_port in (first, first + 1):
        samples = await scrape(metrics_port)
        assert value(samples, "wse_connections") == 0
        assert (await health(metrics_port))[0] == 200
    status, output = await served.terminate()
    assert status == 0, output
    assert len(METRICS_LINE.findall(output + "".join(served.output))) >= 2
