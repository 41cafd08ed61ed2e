"""What hostile or careless peers cannot make the server hold or do, over raw sockets.

Each test names a limit and checks it with real sockets on 127.0.0.1: strangers (sockets not yet
accepted by identify) are bounded in count, bytes, message size and time; handler tasks are
bounded per connection and in all, and end with their connection; internal errors stay on the
server; the upgrade request is checked (origins, a hook, proxies) before anything is kept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import msgpack
import pytest
from wse_fast import (
    WSE_ERROR,
    WSE_REASON,
    IdentifyRequest,
    MsgpackProtocol,
    NotAuthorized,
    WseError,
)
from wse_fast.handshake import HandshakeRequest

from tests.conftest import ClientFactory, EventLog, ServerFactory
from tests.test_framing import HI, RawPeer

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


async def upgrade(
    port: int, headers: dict[str, str] | None = None, target: str = "/"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Sends an upgrade request with ``headers`` added; returns the response head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    writer.write(
        (
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: wse-default-json\r\n{extra}\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer, head


async def eventually(predicate: Any) -> None:
    """Waits for a server-side count that has no event of its own to reach a value."""
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0.002)


async def closed_by_server(reader: asyncio.StreamReader) -> None:
    """Reads until the server closes the TCP connection."""
    async with asyncio.timeout(5):
        while await reader.read(65536):
            pass


# ---- strangers: bytes and messages ---------------------------------------------------------


async def test_strangers_sending_huge_messages_cost_little_memory(
    make_server: ServerFactory, log: EventLog
) -> None:
    # 1 MiB of empty MessagePack arrays decodes to a million lists (~64 MiB): before the
    # stranger limits, a few such hellos grew the server by hundreds of MiB.
    server = await make_server(protocol=MsgpackProtocol(), max_message_size=2 << 20)
    server.when.error(log.hook("error"))
    bomb = msgpack.packb(["~wse:hi", {"identity": "x", "meta": {"a": [[]] * (1 << 20)}}])
    before = rss()
    peers = [await RawPeer.connect(server.port, "wse-msgpack") for _ in range(10)]
    for peer in peers:
        peer.send(0x2, bomb)
    for peer in peers:
        # The server stops reading at the budget and hangs up, so the kernel may answer the
        # unread rest with a reset before the Close frame is read.
        with contextlib.suppress(ConnectionResetError):
            await closed_by_server(peer.reader)
    errors = await log.wait("error", 10)
    growth = rss() - before
    assert {err.details["detail"] for err, _ in errors} == {"too much data before authentication"}
    assert growth < 24 << 20, f"server grew by {growth >> 20} MiB for 10 strangers"
    await eventually(lambda: server.admission.total == 0)


async def test_a_large_hello_is_refused_before_it_is_decoded(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await make_server(auth_max_message_size=1024)
    server.when.error(log.hook("error"))
    peer = await RawPeer.connect(server.port)
    peer.send(0x1, json.dumps(["~wse:hi", {"identity": "alice", "pad": "x" * 2000}]).encode())
    assert await peer.expect_close(1009) == "message too big"
    await closed_by_server(peer.reader)
    [(err, _)] = await log.wait("error")
    assert err.details["detail"] == "message too big before authentication"


async def test_large_messages_are_fine_once_authenticated(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server(auth_max_message_size=1024)
    server.register("echo", lambda conn, p: p)
    client = make_client(server)
    await client.connect("alice")
    assert await client.call("echo", "y" * 100_000) == "y" * 100_000


async def test_deeply_nested_meta_is_a_protocol_error(make_server: ServerFactory) -> None:
    server = await make_server()
    meta: Any = {}
    for _ in range(40):
        meta = {"a": meta}
    peer = await RawPeer.connect(server.port)
    peer.send(0x1, json.dumps(["~wse:hi", {"identity": "alice", "meta": meta}]).encode())
    assert await peer.expect_close(1000) == WSE_REASON.PROTOCOL_ERR
    assert not server.clients


class CountingProtocol:
    """JSON on the wire, counting what it is asked to unpack (a custom protocol)."""

    name = "wse-default-json"
    internal_types: dict[str, str] = {}  # noqa: RUF012

    def __init__(self) -> None:
        self.unpacked: list[Any] = []

    def pack(self, type: str, payload: Any = None, stamp: str | None = None) -> str:
        return json.dumps([type, payload, stamp])

    def unpack(self, data: bytes | str) -> tuple[str, Any, str | None]:
        self.unpacked.append(data)
        message = json.loads(data)
        return message[0], message[1] if len(message) > 1 else None, None


async def test_messages_during_identify_are_never_decoded(make_server: ServerFactory) -> None:
    protocol = CountingProtocol()
    release = asyncio.Event()

    async def identify(req: IdentifyRequest) -> None:
        await release.wait()
        req.accept(req.identity)

    server = await make_server(identify, protocol=protocol)
    peer = await RawPeer.connect(server.port)
    peer.send(0x1, HI)
    for i in range(5):
        peer.send(0x1, json.dumps(["chat", "x" * 1000, None, i]).encode())
    peer.send(0x9, b"sync")  # the pong tells us the five messages were read
    assert await asyncio.wait_for(peer.recv(), 5) == (0xA, b"sync")
    assert len(protocol.unpacked) == 1  # the hello alone
    release.set()
    _, body = await asyncio.wait_for(peer.recv(), 5)
    assert json.loads(body)[0] == "~wse:welcome"


async def test_a_refused_stranger_is_cut_off_at_once(make_server: ServerFactory) -> None:
    server = await make_server(close_timeout=60)  # the peer below never answers the close
    peer = await RawPeer.connect(server.port)
    peer.send(0x1, json.dumps(["~wse:hi", {"identity": "bad-guy"}]).encode())
    assert await peer.expect_close(1000) == WSE_REASON.NOT_AUTHORIZED
    await closed_by_server(peer.reader)  # long before close_timeout
    assert not server.connections


# ---- strangers: how many, and how long -----------------------------------------------------


async def test_strangers_are_counted_from_the_tcp_accept(make_server: ServerFactory) -> None:
    server = await make_server(max_unauthenticated=2)
    silent = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 503")
    await closed_by_server(reader)
    for _, w in silent:
        w.close()
    writer.close()


async def test_strangers_per_address(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def identify(req: IdentifyRequest) -> None:
        entered.set()
        await release.wait()
        req.accept(req.identity, "welcome")

    server = await make_server(identify, max_unauthenticated_per_ip=1)
    first = make_client(server)
    connecting = asyncio.ensure_future(first.connect("alice"))
    await entered.wait()  # alice is a stranger from 127.0.0.1 until identify answers
    assert server.admission.strangers_from("127.0.0.1") == 1
    _, writer, head = await upgrade(server.port)
    assert head.startswith(b"HTTP/1.1 429")
    writer.close()
    release.set()
    await connecting  # accepted: no longer a stranger, so the address may try again
    assert server.admission.strangers_from("127.0.0.1") == 0
    assert await make_client(server).connect("bob") == "welcome"


async def test_one_host_cannot_hold_every_strangers_place(make_server: ServerFactory) -> None:
    server = await make_server(max_unauthenticated_per_ip=2)
    silent = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # sent nothing yet
    assert head.startswith(b"HTTP/1.1 429")
    for _, w in [*silent, (reader, writer)]:
        w.close()


async def test_a_trusted_proxy_is_counted_per_client(make_server: ServerFactory) -> None:
    entered = asyncio.Event()

    async def identify(req: IdentifyRequest) -> None:
        entered.set()
        await asyncio.Event().wait()  # everyone stays a stranger

    server = await make_server(
        identify, max_unauthenticated_per_ip=1, trusted_proxies=["127.0.0.1"]
    )
    held = []
    for client in ("203.0.113.1", "203.0.113.2"):  # two clients behind one proxy: both fine
        reader, writer, head = await upgrade(server.port, {"X-Forwarded-For": client})
        assert head.startswith(b"HTTP/1.1 101")
        RawPeer(reader, writer).send(0x1, HI)
        held.append(writer)
    await entered.wait()
    _, writer, head = await upgrade(server.port, {"X-Forwarded-For": "203.0.113.1"})
    assert head.startswith(b"HTTP/1.1 429")  # the same client again
    for w in [*held, writer]:
        w.close()


async def test_an_upgrade_that_never_comes_times_out(make_server: ServerFactory) -> None:
    server = await make_server(handshake_timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\n")  # and nothing more
    await closed_by_server(reader)
    writer.close()
    assert server.admission.total == 0


# ---- the upgrade request -------------------------------------------------------------------


async def test_origins_not_listed_are_forbidden(make_server: ServerFactory) -> None:
    server = await make_server(origins=["https://app.example"])
    _, writer, head = await upgrade(server.port, {"Origin": "https://evil.example"})
    assert head.startswith(b"HTTP/1.1 403")
    writer.close()
    _, writer, head = await upgrade(server.port)  # no Origin at all: not a listed one either
    assert head.startswith(b"HTTP/1.1 403")
    writer.close()
    _, writer, head = await upgrade(server.port, {"Origin": "https://app.example"})
    assert head.startswith(b"HTTP/1.1 101")
    writer.close()


async def test_the_upgrade_hook_sees_the_request_and_may_refuse(
    make_server: ServerFactory,
) -> None:
    seen: list[HandshakeRequest] = []

    def on_upgrade(request: HandshakeRequest) -> int | tuple[int, str] | None:
        seen.append(request)
        if request.cookies.get("session") != "s3cret":
            return 401, "log in first"
        return None

    server = await make_server(on_upgrade=on_upgrade)
    reader, writer, head = await upgrade(server.port, target="/ws?room=7&room=8")
    assert head.startswith(b"HTTP/1.1 401")
    assert b"log in first" in await reader.read()
    writer.close()
    _, writer, head = await upgrade(
        server.port, {"Cookie": "theme=dark; session=s3cret"}, target="/ws?room=7"
    )
    assert head.startswith(b"HTTP/1.1 101")
    writer.close()
    request = seen[0]
    assert (request.path, request.params) == ("/ws", {"room": ["7", "8"]})
    assert request.remote_addr[0] == "127.0.0.1"
    assert seen[1].cookies == {"theme": "dark", "session": "s3cret"}


async def test_a_failing_upgrade_hook_refuses_with_500(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    def on_upgrade(request: HandshakeRequest) -> None:
        raise RuntimeError("hook bug")

    server = await make_server(on_upgrade=on_upgrade)
    _, writer, head = await upgrade(server.port)
    assert head.startswith(b"HTTP/1.1 500")
    assert b"hook bug" not in head
    writer.close()
    assert "on_upgrade failed" in caplog.text


async def test_identify_sees_the_request_only_while_authenticating(
    make_server: ServerFactory, log: EventLog
) -> None:
    def identify(req: IdentifyRequest) -> None:
        assert req.request is not None
        log.hook("request")(req.request.cookies, req.conn)
        req.accept(req.request.cookies["user"])

    server = await make_server(identify)
    server.when.connected(log.hook("connected"))
    reader, writer, _ = await upgrade(server.port, {"Cookie": "user=carol"})
    peer = RawPeer(reader, writer)
    peer.send(0x1, HI)
    [(cookies, conn)] = await log.wait("request")
    assert cookies == {"user": "carol"}
    await log.wait("connected")
    assert conn.cid == "carol"
    assert conn.handshake is None  # released once accepted: idle connections are many
    writer.close()


@pytest.mark.parametrize(
    ("trusted", "headers", "expected"),
    [
        ((), {"X-Forwarded-For": "203.0.113.7"}, "127.0.0.1"),  # nothing trusted by default
        (("127.0.0.1",), {"X-Forwarded-For": "203.0.113.7"}, "203.0.113.7"),
        (("127.0.0.0/8",), {"X-Forwarded-For": "1.2.3.4, 203.0.113.7"}, "203.0.113.7"),
        (("127.0.0.1", "10.0.0.0/8"), {"X-Forwarded-For": "203.0.113.7, 10.1.1.1"}, "203.0.113.7"),
        (("127.0.0.1",), {"Forwarded": "for=198.51.100.1"}, "127.0.0.1"),  # never believed
        (("127.0.0.1",), {"X-Forwarded-For": "2001:DB8:0::1"}, "2001:db8::1"),
        (("127.0.0.1",), {"X-Forwarded-For": "not-an-address"}, "127.0.0.1"),
    ],
)
async def test_trusted_proxies_name_the_client(
    make_server: ServerFactory,
    log: EventLog,
    trusted: tuple[str, ...],
    headers: dict[str, str],
    expected: str,
) -> None:
    server = await make_server(trusted_proxies=trusted)
    server.when.connected(log.hook("connected"))
    reader, writer, _ = await upgrade(server.port, headers)
    peer = RawPeer(reader, writer)
    await peer.hello()
    [(conn,)] = await log.wait("connected")
    assert conn.remote_addr[0] == expected
    writer.close()


# ---- handler tasks -------------------------------------------------------------------------


class Gate:
    """A slow procedure: counts how many run at once, and lets them end on demand."""

    def __init__(self) -> None:
        self.running = self.most = self.cancelled = 0
        self.open = asyncio.Event()
        self._changed = asyncio.Condition()

    async def until(self, predicate: Any) -> None:
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(predicate)

    async def _count(self, change: int) -> None:
        async with self._changed:
            self.running += change
            self.most = max(self.most, self.running)
            self._changed.notify_all()

    async def __call__(self, conn: Any, payload: Any) -> Any:
        await self._count(1)
        try:
            await self.open.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        return payload


async def test_calls_in_flight_are_bounded_per_connection(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server(max_in_flight=8)
    gate = Gate()
    server.register("slow", gate)
    client = make_client(server)
    await client.connect("alice")
    calls = [asyncio.ensure_future(client.call("slow", i)) for i in range(200)]
    await gate.until(lambda: gate.running == 8)
    assert server.tasks_running == 8
    gate.open.set()
    assert await asyncio.gather(*calls) == list(range(200))  # every call answered, in order
    assert gate.most == 8


async def test_tasks_are_bounded_across_the_server(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server(max_in_flight=64, max_tasks=5)
    gate = Gate()
    server.register("slow", gate)
    clients = [make_client(server) for _ in range(3)]
    for i, client in enumerate(clients):
        await client.connect(f"user{i}")
    calls = [asyncio.ensure_future(c.call("slow", n)) for c in clients for n in range(20)]
    await gate.until(lambda: gate.running == 5)
    gate.open.set()
    assert sorted(await asyncio.gather(*calls)) == sorted(list(range(20)) * 3)
    assert gate.most == 5


async def test_a_paused_connection_resumes_when_the_server_frees_a_task(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    # A is paused by its own limit; its task ends just as C, waiting for the server-wide cap,
    # takes the freed place. A must then wait for the next free place, not for ever.
    server = await make_server(max_in_flight=1, max_tasks=2)
    gates: dict[str, asyncio.Event] = {}

    @server.register("hold")
    async def hold(conn: Any, name: str) -> str:
        log.hook("started")(name)
        await gates.setdefault(name, asyncio.Event()).wait()
        return name

    a, b, c = (make_client(server) for _ in range(3))
    for i, client in enumerate((a, b, c)):
        await client.connect(f"user{i}")
    a1 = asyncio.ensure_future(a.call("hold", "a1"))
    a2 = asyncio.ensure_future(a.call("hold", "a2"))  # waits: a is at max_in_flight
    await log.wait("started")
    b1 = asyncio.ensure_future(b.call("hold", "b1"))
    await log.wait("started", 2)  # a1 and b1: the server is at its cap
    c1 = asyncio.ensure_future(c.call("hold", "c1"))
    await eventually(lambda: len(server._waiting_for_tasks) == 1)  # c waits for a place
    gates.setdefault("a1", asyncio.Event()).set()  # c1 takes a1's place
    assert await a1 == "a1"
    await log.wait("started", 3)
    gates.setdefault("b1", asyncio.Event()).set()  # a2 takes b1's place
    assert await b1 == "b1"
    await log.wait("started", 4)
    assert [args[0] for args in log.of("started")] == ["a1", "b1", "c1", "a2"]
    for name in ("a2", "c1"):
        gates.setdefault(name, asyncio.Event()).set()
    assert (await a2, await c1) == ("a2", "c1")


async def test_a_connections_tasks_end_with_it(make_server: ServerFactory, log: EventLog) -> None:
    server = await make_server()
    gate = Gate()
    server.register("slow", gate)
    server.channel.on("slow-message", lambda conn, p: gate(conn, p))
    server.when.disconnected(log.hook("disconnected"))
    peer = await RawPeer.connect(server.port)
    await peer.hello()
    for i in range(30):
        peer.send(0x1, json.dumps(["slow", i, f"stamp{i:05}"]).encode())
        peer.send(0x1, json.dumps(["slow-message", i]).encode())
    await gate.until(lambda: gate.running == 60)
    peer.writer.transport.abort()  # the client vanishes
    await log.wait("disconnected")
    await eventually(lambda: server.tasks_running == 0)  # cancellations land in later turns
    assert (gate.cancelled, gate.running) == (60, 0)


# ---- errors --------------------------------------------------------------------------------


async def test_internal_error_text_stays_on_the_server(
    make_server: ServerFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server()

    @server.register("read")
    def read(conn: Any, payload: Any) -> Any:
        return Path("/srv/secret/customers.db").read_text()

    client = make_client(server)
    await client.connect("alice")
    with caplog.at_level(logging.ERROR, logger="wse_fast"), pytest.raises(WseError) as err:
        await client.call("read", {"q": 1})
    assert err.value.code == WSE_ERROR.RP_EXECUTION_FAILED
    assert "secret" not in json.dumps(err.value.details) + str(err.value.message)
    error_id = err.value.details["error_id"]
    [record] = [r for r in caplog.records if error_id in r.getMessage()]
    assert record.exc_info is not None and "/srv/secret" in str(record.exc_info[1])


async def test_an_error_that_cannot_be_encoded_still_answers(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server()

    @server.register("odd")
    def odd(conn: Any, payload: Any) -> Any:
        raise WseError("app.odd", {"thing": object()})

    server.register("ok", lambda conn, p: "fine")
    client = make_client(server)
    await client.connect("alice")
    with pytest.raises(WseError) as err:
        await client.call("odd")
    assert (err.value.code, err.value.message) == ("app.odd", "the error could not be encoded")
    assert await client.call("ok") == "fine"  # the connection lives on


async def test_a_welcome_that_cannot_be_encoded_accepts_nobody(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(lambda req: req.accept("alice", object()))
    server.when.error(log.hook("error"))
    server.when.connected(log.hook("connected"))
    client = make_client(server)
    with pytest.raises(NotAuthorized) as err:
        await client.connect("alice")
    assert err.value.code == WSE_ERROR.NOT_AUTHORIZED
    [(error, _)] = await log.wait("error")
    assert error.details["stage"] == "auth"
    assert not server.clients and not log.of("connected")


# ---- custom protocols own what they unpack -------------------------------------------------


class KeepingProtocol:
    """A binary protocol whose unpack keeps a zero-copy slice of what it is given."""

    name = "keeping"
    internal_types: dict[str, str] = {}  # noqa: RUF012

    def __init__(self) -> None:
        self.kept: list[Any] = []

    def pack(self, type: str, payload: Any = None, stamp: str | None = None) -> bytes:
        return msgpack.packb([type, payload, stamp])

    def unpack(self, data: bytes | str) -> tuple[str, Any, str | None]:
        assert isinstance(data, bytes)
        self.kept.append(memoryview(data)[:])  # safe only if data is the protocol's own
        type, payload, stamp = msgpack.unpackb(data)
        return type, payload, stamp


async def test_a_custom_protocol_gets_bytes_it_may_keep(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    protocol = KeepingProtocol()
    server = await make_server(protocol=protocol)
    server.channel.on("note", lambda conn, p: None)
    client = make_client(server, protocol=KeepingProtocol())
    await client.connect("alice")
    for i in range(50):
        client.send("note", "n" * (i * 37))
    with pytest.raises(WseError):  # answered after the notes: all of them were read
        await client.call("missing-rp")
    assert msgpack.unpackb(bytes(protocol.kept[0]))[0] == "~wse:hi"
    notes = protocol.kept[1:51]
    for i, kept in enumerate(notes):  # what was kept still reads as it was
        assert msgpack.unpackb(bytes(kept)) == ["note", "n" * (i * 37), None]


def test_sockets_without_an_address_count_in_all_only() -> None:
    """A Unix socket behind a proxy has no address: one per-address count for all of them
    would turn the per-address limit into a global one."""
    from wse_fast.transport.admission import Admission

    admission = Admission(3, 1, lambda host: False)
    assert [admission.admit("") for _ in range(3)] == [(True, None)] * 3
    assert admission.admit("") == (False, None)  # the total still holds
    assert admission.strangers_from("") == 0
