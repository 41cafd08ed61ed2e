"""``on_upgrade`` as ws's ``verifyClient`` and ``headers`` event are in JavaScript WSE (whose
server is a ws ``WebSocketServer``): a hook that may be asynchronous, bounded so that a
stranger cannot hold upgrades open, and headers the application adds to the 101 response.
Every test runs on the own listener and on both mounts."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from typing import Any
from urllib.parse import urlsplit

import pytest
from wse_fast import Compression, Listener, ServerLimits, WseServer, codec
from wse_fast.handshake import HandshakeRequest

from tests.conftest import ClientFactory, EventLog, ServerFactory, accept_identity, url_of
from tests.hosts import TRANSPORTS
from tests.test_framing import HI, RawPeer
from tests.test_hardening import eventually, upgrade
from tests.test_server_socket import upgrade_request


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def upgrade_to(
    server: WseServer, headers: dict[str, str] | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A raw upgrade request to ``server`` (its own listener, or where it is mounted)."""
    return await upgrade(server.port, headers, urlsplit(url_of(server)).path or "/")


def header_lines(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [
        (name.lower(), value.strip()) for name, _, value in (x.partition(":") for x in lines if x)
    ]


# ---- an async hook ------------------------------------------------------------------------


async def test_an_async_hook_is_awaited_and_its_answer_decides(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    answers: list[asyncio.Future[Any]] = []

    async def on_upgrade(request: HandshakeRequest) -> Any:
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        answers.append(answer)
        log.hook("asked")(request.headers.get("Authorization"))
        return await answer  # decided by the test, after the hook started waiting

    server = await make_server(on_upgrade=on_upgrade)
    refused = asyncio.ensure_future(upgrade_to(server, {"Authorization": "Bearer no"}))
    await log.wait("asked")
    assert not refused.done()
    answers[0].set_result((401, "token expired"))
    reader, writer, head = await refused
    assert head.startswith(b"HTTP/1.1 401")
    assert b"token expired" in await asyncio.wait_for(reader.read(), 5)
    writer.close()

    client = make_client(server, headers={"Authorization": "Bearer ok"})
    connecting = asyncio.ensure_future(client.connect("alice"))
    await log.wait("asked", 2)
    answers[1].set_result(None)
    assert await connecting == {"hey": "welcome data"}
    assert log.of("asked") == [("Bearer no",), ("Bearer ok",)]
    await eventually(lambda: server.admission.total == 0)


async def test_a_failing_async_hook_refuses_with_500(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async def on_upgrade(request: HandshakeRequest) -> None:
        await asyncio.sleep(0)  # fails after a real suspension, not on the first step
        raise RuntimeError("directory down")

    server = await make_server(on_upgrade=on_upgrade)
    _, writer, head = await upgrade_to(server)
    assert head.startswith(b"HTTP/1.1 500")
    writer.close()
    assert "on_upgrade failed" in caplog.text
    await eventually(lambda: server.admission.total == 0)


async def test_an_async_hook_past_the_handshake_timeout_gets_503_and_is_cancelled(
    make_server: ServerFactory, log: EventLog
) -> None:
    async def on_upgrade(request: HandshakeRequest) -> None:
        log.hook("asked")()
        try:
            await asyncio.Event().wait()  # never answers
        finally:
            log.hook("stopped")()

    server = await make_server(on_upgrade=on_upgrade, handshake_timeout=0.3)
    _, writer, head = await upgrade_to(server)
    assert head.startswith(b"HTTP/1.1 503")
    writer.close()
    await log.wait("stopped")
    await eventually(lambda: server.admission.total == 0)


async def test_pending_async_hooks_count_as_strangers(
    make_server: ServerFactory, log: EventLog
) -> None:
    release = asyncio.Event()

    async def on_upgrade(request: HandshakeRequest) -> None:
        log.hook("asked")()
        await release.wait()

    server = await make_server(on_upgrade=on_upgrade, max_unauthenticated=2)
    waiting = [asyncio.ensure_future(upgrade_to(server)) for _ in range(2)]
    await log.wait("asked", 2)
    _, writer, head = await upgrade_to(server)  # no place left: refused before the hook
    assert head.startswith(b"HTTP/1.1 503")
    writer.close()
    assert len(log.of("asked")) == 2
    release.set()
    for pending in waiting:
        _, writer, head = await pending
        assert head.startswith(b"HTTP/1.1 101")
        writer.close()
    await eventually(lambda: server.admission.total == 0)


# ---- headers of the 101 response -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_the_hook_adds_headers_to_the_101_response(
    make_server: ServerFactory, make_client: ClientFactory, kind: str
) -> None:
    def add(request: HandshakeRequest) -> None:
        request.add_response_header("Set-Cookie", "sid=abc; HttpOnly")
        request.add_response_header("Set-Cookie", "theme=dark")
        request.add_response_header("X-Served-By", "node-1")

    async def add_later(request: HandshakeRequest) -> None:
        await asyncio.sleep(0)
        add(request)

    server = await make_server(on_upgrade=add if kind == "sync" else add_later)
    _, writer, head = await upgrade_to(server)
    assert head.startswith(b"HTTP/1.1 101")
    lines = header_lines(head)
    assert [v for n, v in lines if n == "set-cookie"] == ["sid=abc; HttpOnly", "theme=dark"]
    assert ("x-served-by", "node-1") in lines
    assert ("sec-websocket-protocol", "wse-default-json") in lines
    writer.close()
    # the connection they come with works
    assert await make_client(server).connect("alice") == {"hey": "welcome data"}


async def test_added_headers_come_with_the_compression_agreement(
    make_server: ServerFactory,
) -> None:
    def on_upgrade(request: HandshakeRequest) -> None:
        request.add_response_header("X-Served-By", "node-1")

    server = await make_server(on_upgrade=on_upgrade, compression=Compression())
    _, writer, head = await upgrade_to(
        server, {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    )
    assert head.startswith(b"HTTP/1.1 101")
    lines = dict(header_lines(head))
    assert lines["x-served-by"] == "node-1"
    assert lines["sec-websocket-extensions"].startswith("permessage-deflate")
    writer.close()


async def test_added_headers_name_no_subprotocol_the_client_did_not_offer(
    make_server: ServerFactory,
) -> None:
    def on_upgrade(request: HandshakeRequest) -> None:
        request.add_response_header("X-Served-By", "node-1")

    server = await make_server(on_upgrade=on_upgrade)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {urlsplit(url_of(server)).path or '/'} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"  # no Sec-WebSocket-Protocol
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    names = [name for name, _ in header_lines(head)]
    assert "x-served-by" in names and "sec-websocket-protocol" not in names
    # then closed with the reason a WSE client knows, as without added headers
    assert await RawPeer(reader, writer).expect_close(1000) == "wse.protocol-error"
    writer.close()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Set-Cookie", "a=1\r\nX-Injected: 1"),  # would end the line
        ("Sec-WebSocket-Accept", "forged"),  # the handshake's own
        ("Bad Name", "x"),
    ],
)
async def test_a_header_that_would_break_the_response_refuses_with_500(
    make_server: ServerFactory, name: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    def on_upgrade(request: HandshakeRequest) -> None:
        request.add_response_header(name, value)

    server = await make_server(on_upgrade=on_upgrade)
    _, writer, head = await upgrade_to(server)
    assert head.startswith(b"HTTP/1.1 500")
    assert b"X-Injected" not in head and b"forged" not in head
    writer.close()
    assert "ValueError" in caplog.text


async def test_bytes_after_the_request_head_are_held_with_it_on_the_own_listener(
    log: EventLog,
) -> None:
    # A client must wait for the 101 before it sends a frame (RFC 6455 §4.1), but one read
    # may bring more than the head: the own listener holds it with the head and hands both
    # to picows. (uvicorn and aiohttp read the head themselves.)
    release = asyncio.Event()

    async def on_upgrade(request: HandshakeRequest) -> None:
        log.hook("asked")()
        await release.wait()

    server = WseServer(accept_identity, port=0, on_upgrade=on_upgrade)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    request = upgrade_request(server.port)
    # the request and the first frame in one write: what follows the head is held with it
    writer.write(request + codec.build_frame(0x1, HI, fin=True, mask=True))
    await log.wait("asked")
    release.set()
    peer = RawPeer(reader, writer)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    opcode, body = await asyncio.wait_for(peer.recv(), 5)
    assert (opcode, json.loads(body)[0]) == (0x1, "~wse:welcome")
    peer.send(0x8, struct.pack("!H", 1000))
    await peer.expect_close(1000)
    writer.close()
    await server.close()


async def test_one_listener_awaits_only_the_routes_with_an_async_hook(log: EventLog) -> None:
    async def on_upgrade(request: HandshakeRequest) -> tuple[int, str]:
        log.hook("asked")(request.path)
        await asyncio.sleep(0)
        return 403, "not here"

    guarded = WseServer(accept_identity, on_upgrade=on_upgrade)
    plain = WseServer(accept_identity)
    listener = Listener({"/guarded": guarded, "/plain": plain}, port=0)
    await listener.start()
    try:
        _, writer, head = await upgrade(listener.port, target="/guarded")
        assert head.startswith(b"HTTP/1.1 403")
        writer.close()
        _, writer, head = await upgrade(listener.port, target="/plain")
        assert head.startswith(b"HTTP/1.1 101")
        writer.close()
        assert log.of("asked") == [("/guarded",)]
    finally:
        await listener.close()


async def test_an_awaitable_from_a_plain_function_is_refused_on_the_own_listener(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def check(request: HandshakeRequest) -> None:
        return None

    # not a coroutine function, so the listener does not hold requests for it: it cannot
    # wait, and says how to declare the hook (the mounts, which can, await it)
    server = WseServer(accept_identity, port=0, on_upgrade=lambda request: check(request))
    await server.start()
    try:
        _, writer, head = await upgrade(server.port)
        assert head.startswith(b"HTTP/1.1 500")
        writer.close()
        assert "declare it with async def" in caplog.text
    finally:
        await server.close()


async def test_an_upgrade_whose_hook_answers_while_the_server_closes_gets_503(
    make_server: ServerFactory,
) -> None:
    """close() looks at the connections once, when it begins: one that the hook let in after
    that would outlive the close (open, not drained, never dropped)."""
    asked, release = asyncio.Event(), asyncio.Event()

    async def on_upgrade(request: HandshakeRequest) -> Any:
        asked.set()
        await release.wait()

    server = await make_server(on_upgrade=on_upgrade)
    upgrading = asyncio.ensure_future(upgrade_to(server))
    async with asyncio.timeout(5):
        await asked.wait()
    closing = asyncio.ensure_future(server.close(grace=10))
    await asyncio.sleep(0.05)
    release.set()
    async with asyncio.timeout(5):
        _, writer, head = await upgrading
        await closing
    writer.close()
    assert head.startswith(b"HTTP/1.1 503"), head
    assert server.connections == {}


async def test_everything_held_after_the_head_reaches_picows_when_its_first_frame_accepts(
    log: EventLog,
) -> None:
    # A synchronous identify accepts the connection while picows reads the held bytes, and
    # the guard steps aside then: the call held after the identify (more than picows reads
    # at once) still reaches the server, whole.
    async def on_upgrade(request: HandshakeRequest) -> None:
        log.hook("asked")()
        await asyncio.sleep(0)

    server = WseServer(accept_identity, port=0, on_upgrade=on_upgrade)
    server.register("size", lambda conn, payload: len(payload))
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        request = upgrade_request(server.port)
        call = json.dumps(["size", "x" * 10_000, "1"]).encode()
        hi = codec.build_frame(0x1, HI, fin=True, mask=True)
        writer.write(request + hi + codec.build_frame(0x1, call, fin=True, mask=True))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        peer = RawPeer(reader, writer)
        _, welcome = await asyncio.wait_for(peer.recv(), 5)
        assert json.loads(welcome)[0] == "~wse:welcome"
        _, answer = await asyncio.wait_for(peer.recv(), 5)
        assert json.loads(answer) == ["~wse:response", 10_000, "1"]
        assert log.of("asked") == [()]
        writer.close()
    finally:
        await server.close()


async def test_flow_control_paused_by_what_was_held_stays_paused(log: EventLog) -> None:
    # The held bytes bring the identify and more calls than max_in_flight: the connection
    # pauses reading while picows reads them. The guard, which paused reading for the hook,
    # must not resume it after: the client would then be read without bound (each message
    # kept, copied, until a handler ends).
    async def on_upgrade(request: HandshakeRequest) -> None:
        await asyncio.sleep(0)

    server = WseServer(
        accept_identity, port=0, on_upgrade=on_upgrade, limits=ServerLimits(max_in_flight=2)
    )
    never = asyncio.Event()

    @server.register("hold")
    async def hold(conn: Any, payload: Any) -> None:
        await never.wait()

    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        request = upgrade_request(server.port)

        def call(n: int) -> bytes:
            body = json.dumps(["hold", n, str(n)]).encode()
            return codec.build_frame(0x1, body, fin=True, mask=True)

        hi = codec.build_frame(0x1, HI, fin=True, mask=True)
        writer.write(request + hi + b"".join(call(n) for n in range(3)))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        await eventually(lambda: server.tasks_running == 2)
        (conn,) = server.connections.values()
        for n in range(3, 2003):  # while the two calls run, none of this is read
            writer.write(call(n))
        await writer.drain()
        await asyncio.sleep(0.3)
        assert len(conn._backlog or ()) <= 1
        writer.close()
    finally:
        await server.close(grace=0)


async def test_a_hook_cancelled_from_within_ends_its_socket_without_a_handshake_timeout() -> None:
    # (a hook awaiting something that was cancelled): with no handshake timeout, nothing
    # else would ever end the socket, paused and counted as a stranger
    async def on_upgrade(request: HandshakeRequest) -> None:
        raise asyncio.CancelledError

    limits = ServerLimits(handshake_timeout=None)
    server = WseServer(accept_identity, port=0, on_upgrade=on_upgrade, limits=limits)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert await asyncio.wait_for(reader.read(), 5) == b""  # ended, not held for ever
        writer.close()
        await eventually(lambda: server.admission.total == 0)
    finally:
        await server.close()
