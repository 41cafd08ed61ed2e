"""The hardening limits and the handshake hook on the mounted transports, under real uvicorn and
aiohttp servers: each test names what the native listener guarantees (tests/test_hardening.py)
and checks it holds when a host server does the TCP accept, the upgrade and the framing."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import socket
import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from aiohttp import web
from starlette.applications import Starlette
from starlette.routing import Mount, WebSocketRoute
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol
from wse_fast import (
    WSE_ERROR,
    WSE_REASON,
    ClusterOptions,
    IdentifyRequest,
    ServerLimits,
    WseServer,
    codec,
)
from wse_fast.constants import OP_TEXT
from wse_fast.handshake import HandshakeRequest
from wse_fast.sansio.deflate import RSV_COMPRESSED
from wse_fast.transport.asgi import FORWARDED_UNTRUSTED

from tests.conftest import ClientFactory, EventLog, ServerFactory, accept_identity, url_of
from tests.hosts import TRANSPORTS, serve_aiohttp, serve_asgi
from tests.test_framing import HI, RawPeer
from tests.test_hardening import closed_by_server, eventually, upgrade

MOUNTS = ("asgi", "aiohttp")
WSE_JSON = Subprotocol("wse-default-json")


@pytest.fixture(params=MOUNTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def raw_peer(server: WseServer, headers: dict[str, str] | None = None) -> RawPeer:
    """A raw-socket peer upgraded at the server's mounted path (``/ws``)."""
    reader, writer, head = await upgrade(server.port, headers, target="/ws")
    assert head.startswith(b"HTTP/1.1 101"), head
    return RawPeer(reader, writer)


@contextlib.asynccontextmanager
async def strangers(url: str, count: int) -> AsyncIterator[list[ClientConnection]]:
    """``count`` WebSocket clients that upgrade and never say hi: strangers held open."""
    held: list[ClientConnection] = []
    try:
        for _ in range(count):
            held.append(await websockets.connect(url, subprotocols=[WSE_JSON], open_timeout=5))
        yield held
    finally:
        for ws in held:
            await ws.close()


async def refused_with(url: str) -> int:
    """The HTTP status an upgrade to ``url`` is refused with, for a while (as on picows)."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url, subprotocols=[WSE_JSON], open_timeout=5)
    assert refused.value.response.headers.get("Retry-After") == "1"
    return refused.value.response.status_code


async def http_get(port: int, target: str) -> tuple[bytes, bytes]:
    """A plain HTTP GET (no upgrade): the response's head and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return head, body


# ---- HTTP and the lifespan -----------------------------------------------------------------


async def test_a_plain_http_request_gets_426_with_a_readable_body(transport: str) -> None:
    server = WseServer(accept_identity)
    if transport == "asgi":
        host = await serve_asgi(server.asgi)  # the ASGI application alone
    else:
        app = web.Application()
        app.router.add_get("/ws", server.aiohttp_handler)
        host = await serve_aiohttp(app)
    try:
        head, body = await http_get(host.port, "/ws")
        assert head.startswith(b"HTTP/1.1 426")
        assert b"upgrade: websocket" in head.lower()
        assert body.decode().startswith("This URL serves WebSocket connections")
    finally:
        await server.close()
        await host.stop()


async def test_the_asgi_app_alone_runs_the_lifespan_and_closes_with_the_host(
    make_client: ClientFactory, log: EventLog
) -> None:
    server = WseServer(accept_identity, conn_per_user=2)
    server.when.disconnected(log.hook("disconnected"))
    host = await serve_asgi(server.asgi, lifespan="on")  # as ``uvicorn module:app`` does
    # the same server also on aiohttp: uvicorn closes its own sockets when it stops, so the
    # lifespan's shutdown shows in the connections it does not know about
    app = web.Application()
    app.router.add_get("/ws", server.aiohttp_handler)
    other = await serve_aiohttp(app)
    try:
        alone, beside = make_client(host.url("/any/path")), make_client(other.url("/ws"))
        alone.when.closed(log.hook("alone closed"))
        beside.when.closed(log.hook("beside closed"))
        assert await alone.connect("alice") == {"hey": "welcome data"}
        assert await beside.connect("alice") == {"hey": "welcome data"}
        async with asyncio.timeout(10):  # shutdown waits for the lifespan's answer
            await host.stop()
        [(code, _)] = await log.wait("alone closed")
        assert code == 1012  # come back later
        assert await log.wait("beside closed") == [(1012, WSE_REASON.BY_SERVER)]
        await log.wait("disconnected", 2)
        assert server.connections == {} and server.clients == {}
    finally:
        await other.stop()


# ---- subprotocols --------------------------------------------------------------------------


async def test_a_client_not_offering_the_subprotocol_is_closed_with_a_reason(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await make_server()
    server.when.error(log.hook("error"))
    # upgraded, as on picows, so that a WSE client reads a reason it knows
    async with websockets.connect(url_of(server), subprotocols=[Subprotocol("chat")]) as ws:
        assert ws.subprotocol is None
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, WSE_REASON.PROTOCOL_ERR)
    [(error, _)] = await log.wait("error")
    assert error.code == WSE_ERROR.PROTOCOL_VIOLATION
    await eventually(lambda: not server.connections and server.admission.total == 0)


async def test_the_subprotocol_is_echoed_when_offered(make_server: ServerFactory) -> None:
    server = await make_server()
    _, writer, head = await upgrade(
        server.port, {"Sec-WebSocket-Protocol": "chat"}, target="/ws"
    )  # two header lines: "wse-default-json" and "chat"
    assert head.startswith(b"HTTP/1.1 101")
    assert b"\r\nsec-websocket-protocol: wse-default-json\r\n" in head.lower()
    writer.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_subprotocol_offered_on_a_later_header_line_is_named(
    make_server: ServerFactory,
) -> None:
    # RFC 9110 §5.3: a list may come in several lines; every transport reads them all, and
    # the 101 names what the server agreed to (aiohttp alone reads only the first line)
    server = await make_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n"
            "Sec-WebSocket-Protocol: wse-default-json\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    assert b"\r\nsec-websocket-protocol: wse-default-json\r\n" in head.lower()
    writer.write(codec.build_frame(OP_TEXT, HI, mask=True))
    opcode, body = await asyncio.wait_for(RawPeer(reader, writer).recv(), 5)
    assert (opcode, json.loads(body)[0]) == (OP_TEXT, "~wse:welcome")
    writer.close()


# ---- the upgrade request -------------------------------------------------------------------


async def test_origins_not_listed_are_forbidden(make_server: ServerFactory) -> None:
    server = await make_server(origins=["https://app.example"])
    _, writer, head = await upgrade(server.port, {"Origin": "https://evil.example"}, "/ws")
    assert head.startswith(b"HTTP/1.1 403")
    writer.close()
    _, writer, head = await upgrade(server.port, {"Origin": "https://app.example"}, "/ws")
    assert head.startswith(b"HTTP/1.1 101")
    writer.close()
    await eventually(lambda: server.admission.total == 0)


async def test_the_upgrade_hook_refuses_with_its_status_and_body(
    make_server: ServerFactory,
) -> None:
    def on_upgrade(request: HandshakeRequest) -> tuple[int, str] | None:
        if request.cookies.get("session") != "s3cret":
            return 401, "log in first"
        return None

    server = await make_server(on_upgrade=on_upgrade)
    reader, writer, head = await upgrade(server.port, target="/ws")
    assert head.startswith(b"HTTP/1.1 401")
    assert b"log in first" in await asyncio.wait_for(reader.read(), 5)
    writer.close()
    _, writer, head = await upgrade(server.port, {"Cookie": "session=s3cret"}, "/ws")
    assert head.startswith(b"HTTP/1.1 101")
    writer.close()
    await eventually(lambda: server.admission.total == 0)


async def test_a_hook_answering_nonsense_refuses_with_500_and_frees_the_place(
    make_server: ServerFactory,
) -> None:
    server = await make_server(on_upgrade=lambda request: "403")  # a str, not a status
    for _ in range(3):
        _, writer, head = await upgrade(server.port, target="/ws")
        assert head.startswith(b"HTTP/1.1 500")
        writer.close()
    await eventually(lambda: server.admission.total == 0)


async def test_the_first_connection_gets_503_while_the_cluster_link_cannot_start(
    make_server: ServerFactory,
) -> None:
    with socket.socket() as probe:  # a port where no NATS listens
        probe.bind(("127.0.0.1", 0))
        nats_url = f"nats://127.0.0.1:{probe.getsockname()[1]}"
    server = await make_server()
    server.join_cluster(nats_url, ClusterOptions(node="mounted", connect_timeout=0.2))
    _, writer, head = await upgrade(server.port, target="/ws")
    assert head.startswith(b"HTTP/1.1 503")
    writer.close()
    await eventually(lambda: server.admission.total == 0)


async def test_the_hook_and_identify_see_the_frameworks_request(
    make_server: ServerFactory, transport: str, log: EventLog
) -> None:
    def on_upgrade(request: HandshakeRequest) -> None:
        log.hook("upgrade")(request)

    def identify(req: IdentifyRequest) -> None:
        log.hook("identify")(req.request)
        assert req.request is not None
        req.accept(req.request.cookies["user"])

    server = await make_server(identify, on_upgrade=on_upgrade)
    server.when.connected(log.hook("connected"))
    reader, writer, head = await upgrade(
        server.port, {"Cookie": "theme=dark; user=carol"}, target="/ws?room=7&room=8"
    )
    assert head.startswith(b"HTTP/1.1 101")
    RawPeer(reader, writer).send(0x1, HI)
    [(conn,)] = await log.wait("connected")
    [(seen,)] = log.of("upgrade")
    [(request,)] = log.of("identify")
    assert request is seen
    assert conn.cid == "carol"
    assert (request.path, request.params) == ("/ws", {"room": ["7", "8"]})
    assert request.cookies == {"theme": "dark", "user": "carol"}
    assert request.remote_addr[0] == request.peer_addr[0] == "127.0.0.1"
    if transport == "asgi":
        assert isinstance(request.native, dict)
        assert request.native["type"] == "websocket"
        assert request.native["query_string"] == b"room=7&room=8"
    else:
        assert isinstance(request.native, web.Request)
        assert request.native.query.getall("room") == ["7", "8"]
        assert request.native.cookies["user"] == "carol"
    writer.close()


async def test_the_path_under_a_mounted_asgi_prefix_is_the_whole_path(log: EventLog) -> None:
    server = WseServer(accept_identity, on_upgrade=lambda request: log.hook("upgrade")(request))
    app = Starlette(routes=[Mount("/api", routes=[WebSocketRoute("/ws", server.asgi)])])
    host = await serve_asgi(app)
    try:
        _, writer, head = await upgrade(host.port, target="/api/ws?x=1")
        assert head.startswith(b"HTTP/1.1 101")
        [(request,)] = await log.wait("upgrade")
        assert (request.path, request.query) == ("/api/ws", "x=1")
        writer.close()
    finally:
        await server.close()
        await host.stop()


# ---- strangers: how many -------------------------------------------------------------------


async def test_strangers_past_the_total_get_503_and_places_are_freed(
    make_server: ServerFactory,
) -> None:
    server = await make_server(max_unauthenticated=2)
    url = url_of(server)
    async with strangers(url, 2) as held:
        assert server.admission.total == 2
        assert await refused_with(url) == 503
        await held.pop().close()  # a stranger leaves: its place is free again
        await eventually(lambda: server.admission.total == 1)
        async with strangers(url, 1):
            assert server.admission.total == 2
    await eventually(lambda: server.admission.total == 0)


async def test_strangers_past_the_per_address_limit_get_429_and_are_freed_when_accepted(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server(max_unauthenticated_per_ip=2)
    url = url_of(server)
    async with strangers(url, 2) as held:
        assert server.admission.strangers_from("127.0.0.1") == 2
        assert await refused_with(url) == 429
        await held[0].send(HI.decode())  # accepted: no longer a stranger
        assert json.loads(await asyncio.wait_for(held[0].recv(), 5))[0] == "~wse:welcome"
        assert server.admission.strangers_from("127.0.0.1") == 1
        assert await make_client(server).connect("bob") == {"hey": "welcome data"}
        async with strangers(url, 1):
            assert await refused_with(url) == 429
    await eventually(lambda: server.admission.total == 0)
    assert server.admission.strangers_from("127.0.0.1") == 0


# ---- strangers: bytes ----------------------------------------------------------------------


async def test_a_large_hello_is_refused_with_1009(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await make_server(auth_max_message_size=1024)
    server.when.error(log.hook("error"))
    peer = await raw_peer(server)
    peer.send(0x1, json.dumps(["~wse:hi", {"identity": "alice", "pad": "x" * 2000}]).encode())
    assert await peer.expect_close(1009) == "message too big"
    [(err, _)] = await log.wait("error")
    assert err.details["detail"] == "message too big before authentication"
    peer.writer.close()
    await eventually(lambda: not server.connections and server.admission.total == 0)


async def test_a_stranger_sending_past_its_budget_is_refused_with_1008(
    make_server: ServerFactory, log: EventLog
) -> None:
    entered = asyncio.Event()

    async def identify(req: IdentifyRequest) -> None:
        entered.set()
        await asyncio.Event().wait()  # never answers: what follows the hi is ignored

    server = await make_server(identify, auth_max_message_size=1024)
    server.when.error(log.hook("error"))
    peer = await raw_peer(server)
    peer.send(0x1, HI)
    await entered.wait()
    note = json.dumps(["note", "x" * 900]).encode()
    for _ in range(server.stranger_budget // len(note) + 1):  # each one small, all too much
        peer.send(0x1, note)
    assert await peer.expect_close(1008) == "too much data before authentication"
    [(err, _)] = await log.wait("error")
    assert err.details["detail"] == "too much data before authentication"
    peer.writer.close()
    await eventually(lambda: not server.connections and server.admission.total == 0)


async def test_a_message_over_the_size_limit_after_authentication_closes_1009(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await make_server(max_message_size=4096, auth_max_message_size=1024)
    server.when.disconnected(log.hook("disconnected"))
    peer = await raw_peer(server)
    await peer.hello()
    peer.send(0x1, json.dumps(["note", "x" * 3000]).encode())  # fine once authenticated
    peer.send(0x1, json.dumps(["note", "x" * 5000]).encode())
    await peer.expect_close(1009)
    [(conn, code, _)] = await log.wait("disconnected")
    assert (conn.cid, code) == ("alice", 1009)
    peer.writer.close()


# ---- a peer that stops reading -------------------------------------------------------------


async def test_a_slow_consumer_is_dropped_with_1008(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await make_server(max_pending_bytes=256 * 1024, ping_interval=None)
    server.when.disconnected(log.hook("disconnected"))
    server.when.error(log.hook("error"))
    peer = await raw_peer(server)
    await peer.hello()
    peer.writer.transport.pause_reading()  # from now on the peer takes nothing from its socket
    [conn] = server.clients["alice"].conns.values()
    chunk = "x" * 1024
    # 32 KiB a turn (each turn's writes are below the limit: what piles up is what the host
    # cannot send), up to 128 MiB: far more than the socket buffers take
    sent = 0
    for _ in range(4096):
        for _ in range(32):
            conn.send("flood", [sent, chunk])
            sent += 1
        await asyncio.sleep(0)  # the host sends in its own tasks
        if log.of("error"):
            break
    [(error, _)] = log.of("error")
    assert error.code == WSE_ERROR.CONNECTION_ERROR
    assert error.details == {"reason": "wse.slow-consumer", "max_pending_bytes": 256 * 1024}
    # once the peer reads again: whole messages, in order, then the Close 1008, not a bare
    # end of the stream; what waited in wse-fast (256 KiB) was dropped, not sent before it
    peer.writer.transport.resume_reading()
    numbers = []
    opcode, body = await peer.recv()
    while opcode == 0x1:
        numbers.append(json.loads(body)[1][0])
        opcode, body = await peer.recv()
    assert (opcode, struct.unpack("!H", body[:2])[0], body[2:]) == (0x8, 1008, b"wse.slow-consumer")
    assert numbers == list(range(len(numbers))) and len(numbers) < sent - 200
    peer.send(0x8, body)  # the close handshake: the server then hangs up
    [(dropped, code, reason)] = await log.wait("disconnected")
    assert (dropped.cid, code, reason) == ("alice", 1008, "wse.slow-consumer")
    assert server.clients == {} and server.connections == {}
    peer.writer.close()


# ---- flow control --------------------------------------------------------------------------


async def test_a_connection_at_max_in_flight_handles_nothing_more_until_a_task_ends(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(max_in_flight=1)
    gates: dict[int, asyncio.Event] = {}

    @server.channel.on("hold")
    async def hold(conn: Any, n: int) -> None:
        log.hook("started")(n)
        await gates.setdefault(n, asyncio.Event()).wait()
        conn.send("done", n)

    server.register("ping", lambda conn, p: "pong")
    client = make_client(server)
    client.channel.on("done", log.hook("done"))
    await client.connect("alice")
    for n in range(4):
        client.send("hold", n)
    await log.wait("started")
    # Another connection's round trip: time for the held connection's messages to arrive.
    other = make_client(server)
    await other.connect("bob")
    assert await other.call("ping") == "pong"
    assert log.of("started") == [(0,)]
    for n in range(4):
        gates.setdefault(n, asyncio.Event()).set()
        await log.wait("done", n + 1)
        assert log.of("started")[: n + 1] == [(i,) for i in range(n + 1)]
    assert log.of("done") == [(n,) for n in range(4)]  # in order


# ---- closing -------------------------------------------------------------------------------


async def test_server_close_sends_1012_and_returns_though_a_peer_never_answers(
    make_server: ServerFactory, transport: str, log: EventLog
) -> None:
    server = await make_server(close_timeout=0.5)
    server.when.disconnected(log.hook("disconnected"))
    peer = await raw_peer(server)
    await peer.hello()
    async with asyncio.timeout(5):
        await server.close()
    assert server.connections == {} and server.clients == {}
    [(_, code, reason)] = log.of("disconnected")
    assert (code, reason) == (1012, WSE_REASON.BY_SERVER)
    assert await peer.expect_close(1012) == WSE_REASON.BY_SERVER
    if transport == "aiohttp":  # uvicorn keeps the socket for its own 10 s close timeout
        await closed_by_server(peer.reader)
    peer.writer.close()


async def test_a_peers_close_whose_answer_cannot_leave_ends_after_close_timeout(
    make_server: ServerFactory, log: EventLog
) -> None:
    # no pending-bytes limit: nothing but close_timeout can end the wait for the answer
    server = await make_server(close_timeout=0.5, max_pending_bytes=None, ping_interval=None)
    server.when.disconnected(log.hook("disconnected"))
    peer = await raw_peer(server)
    await peer.hello()
    peer.writer.transport.pause_reading()  # the peer takes nothing from its socket any more
    [conn] = server.clients["alice"].conns.values()
    chunk = "x" * (64 * 1024)
    for n in range(1024):  # 64 MiB: more than both sides' socket buffers take
        conn.send("flood", [n, chunk])
        if n % 16 == 15:
            await asyncio.sleep(0)  # the host sends in its own tasks, until it has to wait
    # The peer's Close: its answer waits behind the flood (what was queued before it leaves
    # before it) that the peer never reads, so close_timeout ends the connection.
    peer.send(0x8, struct.pack("!H", 1000) + b"bye")
    [(_, code, reason)] = await log.wait("disconnected", timeout=5)
    assert (code, reason) == (1000, "bye")
    assert server.clients == {} and server.connections == {}
    peer.writer.close()


# ---- an ASGI host with middleware around send ---------------------------------------------

_request_id: contextvars.ContextVar[int] = contextvars.ContextVar("request_id")


class TimedSend:
    """ASGI middleware that gives each connection a context variable of its own and sends
    under ``asyncio.timeout``, which needs a task (as anyio-based middleware does)."""

    def __init__(self, app: Any) -> None:
        self.app, self.count, self.seen = app, 0, []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.count += 1
        own = self.count
        _request_id.set(own)

        async def send_in_time(message: Any) -> None:
            self.seen.append(_request_id.get() == own)
            async with asyncio.timeout(5):
                await send(message)

        await self.app(scope, receive, send_in_time)


async def test_sends_run_in_a_task_and_in_their_connections_context_when_the_host_asks(
    make_client: ClientFactory, log: EventLog
) -> None:
    server = WseServer(accept_identity, conn_per_user=2)
    middleware = TimedSend(server.asgi)
    host = await serve_asgi(Starlette(routes=[WebSocketRoute("/ws", middleware)]))
    try:
        clients = [make_client(host.url("/ws")) for _ in range(3)]
        for i, client in enumerate(clients):
            client.channel.on("tick", log.hook(f"tick {i}"))
            await client.connect(f"u{i}")
        for n in range(3):
            server.broadcast("tick", n)
        for i in range(3):
            assert await log.wait(f"tick {i}", 3) == [(0,), (1,), (2,)]
        assert middleware.seen and all(middleware.seen)  # each send in its own context
    finally:
        await server.close()
        await host.stop()


# ---- under uvicorn: X-Forwarded-For and compressed messages --------------------------------


def test_uvicorn_options_are_the_servers_limits_and_what_the_examples_pass_as_flags() -> None:
    server = WseServer(accept_identity, limits=ServerLimits(max_message_size=4096))
    assert server.asgi.uvicorn_options() == {
        "proxy_headers": False,  # --no-proxy-headers
        "ws": "websockets-sansio",  # --ws websockets-sansio
        "ws_max_size": 4096,  # --ws-max-size 4096
        "ws_per_message_deflate": False,  # --ws-per-message-deflate false
    }


def forwarded_app(server: WseServer, taken: list[int] | None = None) -> Any:
    """``server`` at ``/ws`` in Starlette; ``taken`` gets the size of each message the host
    passed on (what uvicorn read, and inflated, before the server saw it)."""
    routes = Starlette(routes=[WebSocketRoute("/ws", server.asgi)])
    if taken is None:
        return routes

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def counted() -> Any:
            message = await receive()
            if message["type"] == "websocket.receive":
                taken.append(len(message.get("bytes") or message.get("text") or ""))
            return message

        await routes(scope, counted, send)

    return app


async def spoofing_strangers(
    port: int, count: int, held: list[asyncio.StreamWriter]
) -> list[bytes]:
    """The status of ``count`` upgrades from 127.0.0.1, each naming a client of its own in
    ``X-Forwarded-For``; their sockets are kept in ``held`` (the upgraded: strangers)."""
    statuses = []
    for i in range(count):
        _, writer, head = await upgrade(port, {"X-Forwarded-For": f"198.51.100.{i + 1}"}, "/ws")
        held.append(writer)
        statuses.append(head.split(b" ")[1])
    return statuses


async def test_with_its_uvicorn_options_a_spoofed_forward_names_no_client(
    log: EventLog,
) -> None:
    server = WseServer(
        accept_identity,
        limits=ServerLimits(max_unauthenticated_per_ip=2),
        on_upgrade=lambda request: log.hook("upgrade")(request),
    )
    host = await serve_asgi(forwarded_app(server), **server.asgi.uvicorn_options())
    held: list[asyncio.StreamWriter] = []
    try:
        # counted under the socket's peer, as the server sees it: the third is one too many
        assert await spoofing_strangers(host.port, 3, held) == [b"101", b"101", b"429"]
        assert server.admission.strangers_from("127.0.0.1") == 2
        seen = [request.remote_addr for (request,) in log.of("upgrade")]
        assert [host for host, _ in seen] == ["127.0.0.1", "127.0.0.1"]
    finally:
        for writer in held:
            writer.close()
        await server.close()
        await host.stop()


async def test_with_its_uvicorn_options_a_trusted_proxy_names_the_client(
    log: EventLog,
) -> None:
    # the server reads X-Forwarded-For itself, from the proxies it trusts
    server = WseServer(
        accept_identity,
        limits=ServerLimits(max_unauthenticated_per_ip=2),
        on_upgrade=lambda request: log.hook("upgrade")(request),
        trusted_proxies=["127.0.0.1"],
    )
    host = await serve_asgi(forwarded_app(server), **server.asgi.uvicorn_options())
    held: list[asyncio.StreamWriter] = []
    try:
        assert await spoofing_strangers(host.port, 3, held) == [b"101"] * 3
        seen = [(r.remote_addr[0], r.peer_addr[0]) for (r,) in log.of("upgrade")]
        assert seen == [(f"198.51.100.{i}", "127.0.0.1") for i in (1, 2, 3)]
        assert server.admission.strangers_from("198.51.100.1") == 1
    finally:
        for writer in held:
            writer.close()
        await server.close()
        await host.stop()


async def test_under_uvicorns_defaults_an_address_it_took_from_a_header_is_not_believed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # uvicorn's --proxy-headers (on, for peers at 127.0.0.1) makes each spoofed address the
    # client's; a server that trusts no proxy counts all such strangers in one place
    server = WseServer(accept_identity, limits=ServerLimits(max_unauthenticated_per_ip=2))
    host = await serve_asgi(forwarded_app(server))
    held: list[asyncio.StreamWriter] = []
    try:
        assert await spoofing_strangers(host.port, 3, held) == [b"101", b"101", b"429"]
        assert server.admission.strangers_from(FORWARDED_UNTRUSTED) == 2
        # a client that names no one is counted under its own address, as ever
        _, writer, head = await upgrade(host.port, target="/ws")
        held.append(writer)
        assert head.startswith(b"HTTP/1.1 101")
        assert server.admission.strangers_from("127.0.0.1") == 1
        [warning] = [r for r in caplog.records if "X-Forwarded-For" in r.getMessage()]
        assert warning.levelno == logging.WARNING and "uvicorn_options" in warning.getMessage()
    finally:
        for writer in held:
            writer.close()
        await server.close()
        await host.stop()


def deflated_frames(size: int, count: int) -> bytes:
    """``count`` masked binary frames, each ``size`` zero bytes deflated (RFC 7692, no context
    takeover): about size / 1000 bytes each on the wire."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = (compressor.compress(bytes(size)) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    frame = codec.build_frame(0x2, payload, mask=True, rsv=RSV_COMPRESSED)
    return frame * count


async def test_with_its_uvicorn_options_a_compressed_bomb_is_never_inflated() -> None:
    server = WseServer(accept_identity)  # max_message_size: 1 MiB
    taken: list[int] = []
    host = await serve_asgi(forwarded_app(server, taken), **server.asgi.uvicorn_options())
    offer = {"Sec-WebSocket-Extensions": "permessage-deflate; client_no_context_takeover"}
    try:
        reader, writer, head = await upgrade(host.port, offer, "/ws")
        assert head.startswith(b"HTTP/1.1 101") and b"permessage-deflate" not in head.lower()
        burst = deflated_frames(1 << 20, 256)  # 256 MiB inflated, 270 KB on the wire
        tracemalloc.start()
        try:
            writer.write(burst)
            # a compressed frame it did not agree to: closed (1002), the rest unread (a reset)
            with contextlib.suppress(ConnectionResetError):
                await closed_by_server(reader)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert taken == []
        assert peak < len(burst) + (1 << 20), peak  # what was read, nothing inflated
        # a plain message over max_message_size is not read whole either
        reader, writer, _ = await upgrade(host.port, target="/ws")
        writer.write(codec.build_frame(0x2, bytes((1 << 20) + 1), mask=True))
        with contextlib.suppress(ConnectionResetError):
            await closed_by_server(reader)
        assert taken == []
    finally:
        await server.close()
        await host.stop()


async def test_under_uvicorns_defaults_a_bomb_is_inflated_and_the_server_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What the options prevent: uvicorn agrees to permessage-deflate and inflates a message
    # up to its own 16 MiB before the server's 1 MiB limit applies.
    server = WseServer(accept_identity)
    taken: list[int] = []
    host = await serve_asgi(forwarded_app(server, taken))
    offer = {"Sec-WebSocket-Extensions": "permessage-deflate; client_no_context_takeover"}
    try:
        reader, writer, head = await upgrade(host.port, offer, "/ws")
        assert b"permessage-deflate" in head.lower()
        writer.write(deflated_frames(4 << 20, 1))  # 4 KB on the wire
        peer = RawPeer(reader, writer)
        await peer.expect_close(1009)
        assert taken == [4 << 20]
        [warning] = [r for r in caplog.records if "passed on a message" in r.getMessage()]
        assert f"of {4 << 20} bytes" in warning.getMessage()
    finally:
        await server.close()
        await host.stop()
