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
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from wse_fast import WSE_ERROR, ClusterOptions, RpcError, WseError, WseServer
from wse_fast.cluster.local_nats import LocalNats
from wse_fast.sansio import session as WseEvents

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
    server.metrics.declare_error_codes("app.out-of-stock")  # a label of its own

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


async def test_error_codes_from_outside_share_one_label_and_the_page_stays_small(
    metrics_port: tuple[WseServer, int], make_client: ClientFactory
) -> None:
    # A procedure that relays a device's answer passes the device's error code on: 2 000
    # codes made 2 001 series (an 83 MB page) before codes were labelled only if declared.
    server, port = metrics_port
    server.metrics.declare_error_codes("app.device-busy")

    async def relay(conn: Any, n: int) -> Any:
        return await server.call("device", "work", n)

    server.register("relay", relay)
    device = make_client(server)

    def work(n: int) -> None:
        raise WseError("app.device-busy" if n < 0 else f"device.code-{n}")

    device.register("work", work)
    await device.connect("device")
    caller = make_client(server)
    await caller.connect("alice")
    for first in range(0, 2000, 250):
        answers = await asyncio.gather(
            *(caller.call("relay", n) for n in range(first, first + 250)), return_exceptions=True
        )
        codes = [answer.code for answer in answers if isinstance(answer, RpcError)]
        assert codes == [f"device.code-{n}" for n in range(first, first + 250)]
    with pytest.raises(RpcError) as declared:
        await caller.call("relay", -1)
    assert declared.value.code == "app.device-busy"
    with pytest.raises(RpcError) as builtin:
        await caller.call("no-such-procedure")
    assert builtin.value.code == WSE_ERROR.RP_NOT_REGISTERED
    status, _, body = await get(port, "/metrics")
    assert status == 200
    samples = await scrape(port)
    count = "wse_rpc_duration_seconds_count"
    labels = {dict(key[1])["code"] for key in samples if key[0] == count}
    # the declared code and the library's own keep their label; the device's share one
    assert labels == {"(other)", "app.device-busy", WSE_ERROR.RP_NOT_REGISTERED}
    assert value(samples, count, procedure="relay", code="(other)") == 2000
    assert value(samples, count, procedure="relay", code="app.device-busy") == 1
    assert len(body) < 32 * 1024, len(body)


async def test_every_label_has_a_bound(make_server: ServerFactory) -> None:
    from wse_fast.cluster.nats_cluster import CLUSTER_LOST, CLUSTER_UNAVAILABLE
    from wse_fast.metrics import (
        BUILTIN_ERROR_CODES,
        MAX_CALL_SERIES,
        MAX_ERROR_CODES,
        MAX_TYPES,
        OTHER,
    )

    assert {CLUSTER_LOST, CLUSTER_UNAVAILABLE, WSE_ERROR.RP_EXECUTION_FAILED} <= (
        BUILTIN_ERROR_CODES
    )
    server = await make_server()
    metrics = server.metrics
    # declared codes: MAX_ERROR_CODES at most, strings, not the labels of their own
    metrics.declare_error_codes(*(f"app.e{i}" for i in range(MAX_ERROR_CODES)))
    metrics.declare_error_codes("app.e0", WSE_ERROR.RP_NOT_REGISTERED)  # known already: no-op
    with pytest.raises(ValueError, match="at most"):
        metrics.declare_error_codes("app.one-too-many")
    for wrong in ("ok", OTHER, 42):
        with pytest.raises(ValueError, match="not an error code"):
            metrics.declare_error_codes(wrong)  # type: ignore[arg-type]
    # (procedure, code) histograms: MAX_CALL_SERIES at most, then (other)
    names = [f"p{i}" for i in range(MAX_TYPES + 10)]
    for name in names:
        server.register(name, lambda conn, payload: None)
    for i in range(MAX_CALL_SERIES + 100):
        stats = metrics.procedure(names[i % 7])  # 7 and 256: every pair differs
        metrics.count_error(stats, f"app.e{i % MAX_ERROR_CODES}", 0.001)
        metrics.count_error(stats, {"not": "a string"}, 0.001)
    series = {(name, code) for name, code, _ in metrics.calls()}
    assert len([s for s in series if s[1] != OTHER]) == MAX_CALL_SERIES
    assert sum(sum(h.counts) for _, _, h in metrics.calls()) == 2 * (MAX_CALL_SERIES + 100)
    # procedures, types received and types sent: MAX_TYPES each, then (other)
    for name in names:
        metrics.procedure(name)
    assert len(metrics.procedures) == MAX_TYPES + 1 and OTHER in metrics.procedures
    for i in range(MAX_TYPES + 10):
        server.channel.on(f"t{i}", lambda conn, payload: None)
        metrics.received_cell(f"t{i}", WseEvents.Message)[0] += 1
        metrics.sent_cell(f"t{i}")[0] += 1
    assert len(metrics.received) == MAX_TYPES + 1 and len(metrics.sent) == MAX_TYPES + 1
    assert metrics.sent[OTHER][0] == 10 + 1  # the response type came first


async def test_a_scrape_is_written_off_the_event_loop_once_for_all_who_ask(
    metrics_port: tuple[WseServer, int],
) -> None:
    # A collector of the default registry (the application's metrics live there too) that
    # holds its thread until the test, on the event loop, lets it go.
    from prometheus_client import REGISTRY
    from prometheus_client.registry import Collector

    server, port = metrics_port
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    release = threading.Event()
    runs: list[tuple[int, bool]] = []

    class Held(Collector):
        def describe(self) -> Iterator[Any]:  # registered without a call to collect
            return iter(())

        def collect(self) -> Iterator[Any]:
            loop.call_soon_threadsafe(started.set)
            runs.append((threading.get_ident(), release.wait(timeout=5)))
            return iter(())

    held = Held()
    REGISTRY.register(held)
    try:
        scrape_over_http = asyncio.ensure_future(get(port, "/metrics"))
        await started.wait()  # the loop runs while the text is being written
        release.set()
        status, _, body = await scrape_over_http
        assert status == 200 and b"wse_connections " in body
        [(thread, released)] = runs  # not released: it held the loop, and the test with it
        assert released and thread != threading.get_ident()
        release.clear()
        started.clear()
        several = [asyncio.ensure_future(server.metrics.scrape()) for _ in range(3)]
        await started.wait()
        release.set()
        texts = await asyncio.gather(*several)
        assert texts[0] == texts[1] == texts[2]
    finally:
        REGISTRY.unregister(held)
    # written twice in all (three scrapes shared one), each time on another thread
    assert len(runs) == 2
    assert all(released and thread != threading.get_ident() for thread, released in runs)


async def test_counting_is_one_meter_call_per_event_and_nothing_else(
    metrics_port: tuple[WseServer, int], make_client: ClientFactory, log: EventLog
) -> None:
    # Each event is one call to the meter resolved for its label when the key was first
    # seen: the bounds of the labels (received_cell, procedure, sent_cell) are never paid
    # per message, and no other function of metrics.py runs.
    server, _ = metrics_port
    server.register("add", lambda conn, p: p + 1)  # answered within the codec

    async def later(conn: Any, p: Any) -> Any:
        return p

    server.register("later", later)  # answered from a task
    server.channel.on("chat", log.hook("chat"))
    client = make_client(server)
    await client.connect("alice")

    async def traffic(rounds: int) -> None:
        for i in range(rounds):
            client.send("chat", i)
            assert await client.call("add", i) == i + 1
            assert await client.call("later", i) == i

    await traffic(2)  # every key seen once
    import wse_fast.metrics

    into_metrics: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename == wse_fast.metrics.__file__:
            into_metrics.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        await traffic(50)
        await log.wait("chat", 52)
    finally:
        sys.setprofile(None)
    # per round: the chat message received; add read and answered in one codec call; later
    # received, answered from its task, and its answer sent
    assert Counter(into_metrics) == {
        "received": 50,
        "served": 50,
        "called": 50,
        "answered": 50,
        "sent": 50,
    }
    samples = server.metrics
    assert samples.received["chat"][0] == 52
    assert sum(samples.procedures["later"].ok.counts) == 52


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
        server.join_cluster(nats.url, ClusterOptions(node="health", node_ttl=2.0, max_outbox=64))
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
            client = WseClient(f"ws://127.0.0.1:{server.port}", reconnect=None)
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


async def test_wse_fast_serve_metrics_listen_on_loopback_whatever_host() -> None:
    # --host 0.0.0.0 without --metrics-host: the WebSocket port answers on every address,
    # the metrics port on 127.0.0.1 alone (127.0.0.2, also loopback, tells the two apart)
    served = await serve(
        "tests.cli_app:server", "--host", "0.0.0.0", "--port", "0", "--metrics-port", "0"
    )
    assert served.proc.stdout is not None
    async with asyncio.timeout(30):
        while True:
            line = (await served.proc.stdout.readline()).decode()
            assert line, served.output  # it exited before serving
            served.output.append(line)
            if serving := re.search(r"serving \S+ on ws://0\.0\.0\.0:(\d+)", line):
                break
    port = int(serving[1])
    found = METRICS_LINE.search("".join(served.output))
    assert found, served.output
    metrics_port = int(found[1])
    assert (await health(metrics_port))[0] == 200
    _, writer = await asyncio.open_connection("127.0.0.2", port)
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.2", metrics_port)
    status, output = await served.terminate()
    assert status == 0, output
