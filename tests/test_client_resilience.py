"""The client's keepalive and reconnect backoff, against scripted servers on 127.0.0.1.

The servers here are asyncio streams plus the codec's frame helpers, so that each test
decides exactly what the server answers: pings, Close frames, or nothing at all.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import random
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from wse_fast import (
    WSE_ERROR,
    WSE_STATUS,
    Limits,
    MsgpackProtocol,
    Reconnect,
    WseClient,
    WseError,
    codec,
)
from wse_fast.client import PING_TIMEOUT_REASON
from wse_fast.options import backoff_delay

from tests.conftest import ClientFactory, EventLog

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA
WELCOME = json.dumps(["~wse:welcome", {"hey": "scripted"}, None]).encode()


class ScriptedConn:
    """One accepted TCP connection of a :class:`ScriptedServer`, after the request head."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, at: float
    ) -> None:
        self.reader, self.writer = reader, writer
        self.path = head.split(b" ", 2)[1].decode()
        self.at = at  # loop time at which the request head had arrived
        self._key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )

    def upgrade(self) -> None:
        accept = base64.b64encode(hashlib.sha1(self._key + GUID).digest()).decode()
        self.writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n"
                "Sec-WebSocket-Protocol: wse-default-json\r\n\r\n"
            ).encode()
        )

    async def recv(self) -> tuple[int, bytes, bytes | None]:
        """One whole frame from the client: opcode, unmasked payload, masking key."""
        head = await self.reader.readexactly(2)
        more = {126: 2, 127: 8}.get(head[1] & 0x7F, 0) + (4 if head[1] & 0x80 else 0)
        head += await self.reader.readexactly(more)
        parsed = codec.parse_frame_header(head)
        assert parsed is not None
        fin, _, opcode, key, length, _ = parsed
        assert fin
        body = await self.reader.readexactly(length)
        return opcode, (body if key is None else codec.mask(body, key)), key

    def send(self, opcode: int, payload: bytes) -> None:
        self.writer.write(codec.build_frame(opcode, payload))

    async def welcome(self) -> None:
        opcode, body, _ = await self.recv()
        assert opcode == OP_TEXT and json.loads(body)[0] == "~wse:hi", body
        self.send(OP_TEXT, WELCOME)

    async def restart(self) -> None:
        """Leaves as a restarting WseServer does: Close 1012, then the client's answer."""
        self.send(OP_CLOSE, struct.pack("!H", 1012) + b"wse.by-server")
        while (await self.recv())[0] != OP_CLOSE:
            pass

    async def serve(self, on_frame: Callable[[int, bytes, bytes | None], None]) -> None:
        """Answers pings and echoes a Close, until the client closes; ``on_frame`` sees all."""
        while True:
            opcode, body, key = await self.recv()
            on_frame(opcode, body, key)
            if opcode == OP_PING:
                self.send(OP_PONG, body)
            elif opcode == OP_CLOSE:
                self.send(OP_CLOSE, body)
                return


Script = Callable[[ScriptedConn, int], Awaitable[None]]


class ScriptedServer:
    """A TCP listener that runs ``script(conn, n)`` for its n-th connection (from 0).

    The script may refuse (return before ``upgrade``: the socket closes after the request
    head) or play a WSE server. Failures inside a script are kept and re-raised by ``check``.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        self.conns: list[ScriptedConn] = []
        self.failures: list[BaseException] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            conn = ScriptedConn(reader, writer, head, asyncio.get_running_loop().time())
            self.conns.append(conn)
            await self.script(conn, len(self.conns) - 1)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away: what the script waits for is the test's to check
        except Exception as exc:
            self.failures.append(exc)
        finally:
            writer.close()

    def check(self) -> None:
        if self.failures:
            raise self.failures[0]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[ScriptedServer]]]:
    servers: list[ScriptedServer] = []

    async def make(script: Script) -> ScriptedServer:
        server = ScriptedServer(script)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()
        server.check()


ScriptedFactory = Callable[[Script], Awaitable[ScriptedServer]]


def watch(client: WseClient, log: EventLog) -> None:
    client.when.updated(log.hook("updated"))
    client.when.closed(log.hook("closed"))
    client.when.ready(log.hook("ready"))


# ---- keepalive -----------------------------------------------------------------------------


async def test_a_server_that_answers_nothing_is_left_after_the_ping_timeout_and_reconnected(
    scripted: ScriptedFactory, make_client: ClientFactory, log: EventLog
) -> None:
    async def script(conn: ScriptedConn, n: int) -> None:
        conn.upgrade()
        await conn.welcome()
        if n == 0:  # then silent, as a dead host or a cut path: read, never answer
            while True:
                log.hook("silent_got")(*await conn.recv())
        await conn.serve(lambda *frame: None)

    server = await scripted(script)
    interval, timeout = 0.1, 0.1
    client = make_client(
        server.url(),
        reconnect=Reconnect(delay=0.0, jitter=0.01),
        ping_interval=interval,
        ping_timeout=timeout,
    )
    watch(client, log)
    await client.connect("alice")
    ready_at = asyncio.get_running_loop().time()  # the welcome was the last frame received
    [(code, reason)] = await log.wait("closed")
    elapsed = asyncio.get_running_loop().time() - ready_at
    assert (code, reason) == (1006, PING_TIMEOUT_REASON)
    assert interval + timeout - 0.02 <= elapsed <= interval + timeout + 0.25
    assert [s for (s,) in log.of("updated")] == ["CONNECTING", "READY", "RE_CONNECTING"]
    # picows's ping carries no payload, so its rand() masking key exposes nothing
    opcode, body, key = log.of("silent_got")[0]
    assert (opcode, body) == (OP_PING, b"") and key is not None
    await log.wait("ready", 2)
    assert client.status == WSE_STATUS.READY and len(server.conns) == 2


async def test_a_server_that_answers_the_close_but_not_pings_still_counts_as_lost(
    scripted: ScriptedFactory, make_client: ClientFactory, log: EventLog
) -> None:
    async def script(conn: ScriptedConn, n: int) -> None:
        conn.upgrade()
        await conn.welcome()
        if n == 0:  # a stalled server that catches up on its Close frames only
            while True:
                opcode, body, _ = await conn.recv()
                if opcode == OP_CLOSE:
                    conn.send(OP_CLOSE, body)
                    log.hook("echoed")(struct.unpack("!H", body[:2])[0])
                    return
        await conn.serve(lambda *frame: None)

    server = await scripted(script)
    client = make_client(
        server.url(),
        reconnect=Reconnect(delay=0.0, jitter=0.01),
        ping_interval=0.05,
        ping_timeout=0.05,
    )
    watch(client, log)
    await client.connect("alice")
    # picows closes with 1001 on the missing pong; the server's echo of it is not a reason to
    # stay offline: the client reports the lost server and reconnects
    assert await log.wait("echoed") == [(1001,)]
    assert await log.wait("closed") == [(1006, PING_TIMEOUT_REASON)]
    await log.wait("ready", 2)
    assert client.status == WSE_STATUS.READY


async def test_answered_pings_keep_an_idle_connection_and_none_are_sent_when_off(
    scripted: ScriptedFactory, make_client: ClientFactory, log: EventLog
) -> None:
    async def script(conn: ScriptedConn, n: int) -> None:
        conn.upgrade()
        await conn.welcome()
        await conn.serve(log.hook(conn.path))

    server = await scripted(script)
    pinging = make_client(server.url("/on"), ping_interval=0.05, ping_timeout=0.05)
    quiet = make_client(server.url("/off"), ping_interval=None, ping_timeout=0.05)
    watch(pinging, log)
    watch(quiet, log)
    await pinging.connect("alice")
    await quiet.connect("bob")
    # The third ping leaves after two full ping_timeouts: each pong was consumed by picows as
    # the answer, so no timeout fired.
    pings = await log.wait("/on", 3)
    assert all(op == OP_PING and body == b"" and key is not None for op, body, key in pings)
    assert log.of("closed") == []
    assert pinging.status == WSE_STATUS.READY
    assert log.of("/off") == []  # idle for as long, with a ping_timeout that would have fired


async def test_a_deliberate_close_outlasting_the_ping_timeout_is_reported_as_such(
    scripted: ScriptedFactory, make_client: ClientFactory, log: EventLog
) -> None:
    async def script(conn: ScriptedConn, n: int) -> None:
        conn.upgrade()
        await conn.welcome()
        while True:  # the server does not answer the client's Close (nor its pings)
            await conn.recv()

    server = await scripted(script)
    interval, timeout = 0.05, 0.05
    client = make_client(
        server.url(),
        reconnect=Reconnect(),
        ping_interval=interval,
        ping_timeout=timeout,
        close_timeout=0.5,
    )
    watch(client, log)
    await client.connect("alice")
    started = asyncio.get_running_loop().time()
    await client.close()
    # long enough for the keepalive to give up on the server while the client was leaving
    assert asyncio.get_running_loop().time() - started >= interval + timeout
    assert log.of("closed") == [(1000, "wse.by-client")]
    assert client.status == WSE_STATUS.OFFLINE and len(server.conns) == 1


def test_ping_timeout_beyond_ping_interval_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="ping_timeout"):
        WseClient("ws://127.0.0.1:9", limits=Limits(ping_interval=5, ping_timeout=10))


# ---- backoff schedule ----------------------------------------------------------------------


def schedule(
    n: int, rand: Callable[[], float], base: float = 1.0, jitter: float = 1.0
) -> list[float]:
    return [
        backoff_delay(i, base=base, jitter=jitter, factor=2.0, cap=30.0, rand=rand)
        for i in range(n)
    ]


def test_backoff_windows_grow_by_the_factor_up_to_the_cap() -> None:
    # the first window is the JavaScript client's 1 s + up to 1 s; it then doubles, and once
    # its top would pass the cap it keeps its proportions under the cap
    assert schedule(7, lambda: 0.0) == [1, 2, 4, 8, 15, 15, 15]
    assert schedule(7, lambda: 1.0) == [2, 4, 8, 16, 30, 30, 30]


def test_backoff_is_jittered_within_each_window_even_at_the_cap() -> None:
    rng = random.Random(1)
    for attempt, (low, high) in enumerate([(1, 2), (2, 4), (4, 8), (8, 16), (15, 30)]):
        draws = [
            backoff_delay(attempt, base=1, jitter=1, factor=2, cap=30, rand=rng.random)
            for _ in range(500)
        ]
        assert low <= min(draws) < low + 0.1 * (high - low)
        assert high - 0.1 * (high - low) < max(draws) <= high
        assert len(set(draws)) == len(draws)


def test_backoff_with_no_base_is_full_jitter() -> None:
    assert schedule(6, lambda: 1.0, base=0.0) == [1, 2, 4, 8, 16, 30]
    assert schedule(6, lambda: 0.0, base=0.0) == [0] * 6


def test_backoff_stays_capped_after_very_many_attempts() -> None:
    # factor ** attempt alone would overflow a float here
    assert backoff_delay(5000, base=1, jitter=1, factor=2, cap=30, rand=lambda: 1.0) == 30


async def test_reconnect_attempts_against_a_refusing_server_are_spaced_out(
    scripted: ScriptedFactory, make_client: ClientFactory, log: EventLog
) -> None:
    async def script(conn: ScriptedConn, n: int) -> None:
        if n == 0:
            conn.upgrade()
            await conn.welcome()
            await conn.restart()
            log.hook("restarted")(asyncio.get_running_loop().time())
        else:
            log.hook("attempt")(conn.at)  # refused: the socket closes before the upgrade

    server = await scripted(script)
    options = dict(base=0.02, jitter=0.02, factor=2.0, cap=0.2)
    client = make_client(
        server.url(),
        reconnect=Reconnect(
            delay=0.02, jitter=0.02, factor=2.0, max_delay=0.2, random=random.Random(5).random
        ),
    )
    expected_rng = random.Random(5)  # the same draws, in the same order, as the client's
    expected = [backoff_delay(i, **options, rand=expected_rng.random) for i in range(7)]
    await client.connect("alice")
    [(restarted,)] = await log.wait("restarted")
    attempts = [at for (at,) in await log.wait("attempt", 7, timeout=5)]
    gaps = [b - a for a, b in zip([restarted, *attempts], attempts, strict=False)]
    for gap, wait in zip(gaps, expected, strict=True):
        assert wait - 0.002 <= gap <= wait + 0.15, (gaps, expected)
    assert gaps[3] > 2 * (0.02 + 0.02)  # the fourth wait is beyond the first window
    assert client.status == WSE_STATUS.RE_CONNECTING


async def test_a_successful_reconnect_starts_the_next_backoff_from_the_first_window(
    scripted: ScriptedFactory, make_client: ClientFactory, log: EventLog
) -> None:
    async def script(conn: ScriptedConn, n: int) -> None:
        log.hook("request")(n, conn.at)
        if n in (0, 2):  # welcome, then restart; attempt 1 is refused; 3 is served
            conn.upgrade()
            await conn.welcome()
            await conn.restart()
            log.hook("restarted")(n, asyncio.get_running_loop().time())
        elif n == 3:
            conn.upgrade()
            await conn.welcome()
            await conn.serve(lambda *frame: None)

    server = await scripted(script)
    client = make_client(
        server.url(),
        reconnect=Reconnect(delay=0.02, jitter=0.0, factor=10.0, max_delay=5.0),
    )
    watch(client, log)
    await client.connect("alice")
    await log.wait("ready", 3)  # the first connection, and two reconnects
    at = dict(log.of("request"))
    restarted = dict(log.of("restarted"))
    assert at[2] - at[1] >= 0.2  # the second attempt of a loss waits 10 times longer
    assert 0.02 - 0.002 <= at[3] - restarted[2] < 0.2  # a new loss: the first window again


async def test_a_server_that_hangs_up_during_the_upgrade_fails_connect_cleanly(
    scripted: ScriptedFactory, make_client: ClientFactory
) -> None:
    async def script(conn: ScriptedConn, n: int) -> None:
        pass  # the socket closes after the request head, with no response

    server = await scripted(script)
    client = make_client(server.url())
    with pytest.raises(WseError) as err:
        await client.connect("alice")
    assert err.value.code == WSE_ERROR.WS_CLIENT_ERROR
    assert client.status == WSE_STATUS.OFFLINE


async def test_a_link_given_up_before_its_welcome_leaves_no_unretrieved_exception(
    scripted: ScriptedFactory,
) -> None:
    """connect fails on a subprotocol the client did not ask for; the server then echoes
    the client's Close, which used to set an exception on a welcome nobody awaited any more
    (asyncio logs "Future exception was never retrieved" when it is collected)."""

    async def script(conn: ScriptedConn, n: int) -> None:
        conn.upgrade()  # answers wse-default-json to a client that asked for wse-msgpack
        await conn.serve(lambda *frame: None)

    server = await scripted(script)
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    try:
        client = WseClient(server.url(), protocol=MsgpackProtocol(), reconnect=None)
        closed = asyncio.ensure_future(client.when.wait("closed"))
        with pytest.raises(WseError) as refused:
            await client.connect("alice")
        assert "server chose subprotocol" in refused.value.details["error"]
        assert (await closed)[0] == 1000  # the server echoed the Close: the link has closed
        await client.close()
        del client, closed, refused
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert [c["message"] for c in unhandled] == []


# ---- many clients after a restart ----------------------------------------------------------


async def test_clients_dropped_by_a_restart_come_back_spread_over_time(
    scripted: ScriptedFactory, make_client: ClientFactory, log: EventLog
) -> None:
    clients = 50
    restart = asyncio.Event()
    attempts: dict[str, list[float]] = {}

    async def script(conn: ScriptedConn, n: int) -> None:
        if n < clients:  # each client's first connection: serve until the restart
            conn.upgrade()
            await conn.welcome()
            await restart.wait()
            await conn.restart()
        else:  # the server is still down: refuse
            mine = attempts.setdefault(conn.path, [])
            mine.append(conn.at)
            log.hook(f"attempt{len(mine)}")(conn.path)

    server = await scripted(script)
    rng = random.Random(2024)  # one seeded source for all: a reproducible spread
    fleet = [
        make_client(
            server.url(f"/{i}"),
            reconnect=Reconnect(delay=0.05, jitter=0.5, random=rng.random),
        )
        for i in range(clients)
    ]
    for client in fleet:
        await client.connect(f"user{client.url.rsplit('/', 1)[1]}")
    restarted_at = asyncio.get_running_loop().time()
    restart.set()
    await log.wait("attempt1", clients)
    firsts = sorted(mine[0] - restarted_at for mine in attempts.values())
    assert firsts[0] >= 0.05 - 0.002  # nobody knocks while the server is still going down
    assert firsts[-1] - firsts[0] > 0.1  # not all in the same 100 ms ...
    busiest = max(sum(1 for t in firsts if start <= t < start + 0.1) for start in firsts)
    assert busiest <= clients * 0.4  # ... nor most of them
    # Refused once, each waits from a window twice as long and as wide: 0.1 s + up to 1 s.
    await log.wait("attempt2", clients)
    seconds = [mine[1] - mine[0] for mine in attempts.values()]
    assert min(seconds) >= 2 * 0.05 - 0.002
    assert max(seconds) - min(seconds) > firsts[-1] - firsts[0]
