"""RFC 6455 duties the server does itself, checked byte by byte from a raw socket.

Pings are answered by the endpoint, never after a Close or a failure; Close frames are checked
(status code, length, UTF-8) and answered once; control frames with RSV bits fail the
connection; every way a connection ends is bounded by ``close_timeout``, including the closes
picows starts by itself; no frame follows a Close, whatever event handlers do meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from wse_fast import WseServer, codec
from wse_fast.transport.endpoint import CLOSE_WATCH_INTERVAL

from tests.conftest import ClientFactory, EventLog, ServerFactory
from tests.test_framing import RawPeer

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
SMALL_BUFFER = 8192  # socket buffers this small leave a large message waiting in user space


async def open_peer(port: int, rcvbuf: int | None = None) -> RawPeer:
    """A RawPeer whose socket may have a small receive buffer (set before the handshake)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wse-default-json\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return RawPeer(reader, writer)


async def frames_until_eof(peer: RawPeer, answer_close: bool = True) -> list[tuple[int, bytes]]:
    """Every frame the server sends until it hangs up (a reset counts as hanging up)."""
    frames = []
    try:
        while True:
            opcode, body = await asyncio.wait_for(peer.recv(), 5)
            frames.append((opcode, body))
            if opcode == OP_CLOSE and answer_close:
                peer.send(OP_CLOSE, body[:2])
    except (asyncio.IncompleteReadError, ConnectionResetError):
        pass
    return frames


def close_code(body: bytes) -> int:
    code: int = struct.unpack("!H", body[:2])[0]
    return code


def opcodes(frames: list[tuple[int, bytes]]) -> list[int]:
    return [opcode for opcode, _ in frames]


@pytest.fixture
async def peer(make_server: ServerFactory) -> AsyncIterator[RawPeer]:
    server = await make_server(max_message_size=1024)
    raw = await RawPeer.connect(server.port)
    await raw.hello()
    yield raw
    raw.writer.close()


def only_connection(server: WseServer) -> Any:
    [conn] = server.connections.values()
    return conn


# ---- pings: answered here, and never after a Close or a failure ----------------------------


async def test_ping_is_answered_unmasked_with_its_payload(peer: RawPeer) -> None:
    peer.send(OP_PING, b"\x00\xffbinary")
    assert await peer.recv() == (OP_PONG, b"\x00\xffbinary")  # recv asserts no mask


async def test_no_pong_after_a_framing_failure(peer: RawPeer) -> None:
    # one write: the ping arrives in the same read as the frame that fails the connection
    peer.writer.write(
        codec.build_frame(OP_TEXT, b"x", mask=True, rsv=2)
        + codec.build_frame(OP_PING, b"late", mask=True)
    )
    frames = await frames_until_eof(peer)
    assert opcodes(frames) == [OP_CLOSE] and close_code(frames[0][1]) == 1002


async def test_no_pong_after_the_peers_close(peer: RawPeer) -> None:
    peer.writer.write(
        codec.build_frame(OP_CLOSE, struct.pack("!H", 1000), mask=True)
        + codec.build_frame(OP_PING, b"late", mask=True)
    )
    frames = await frames_until_eof(peer, answer_close=False)
    assert opcodes(frames) == [OP_CLOSE] and close_code(frames[0][1]) == 1000


# ---- control frames: RSV bits, fragmentation, size -----------------------------------------


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
@pytest.mark.parametrize("rsv", [1, 2, 4])
async def test_control_frame_with_reserved_bits_fails_1002(
    peer: RawPeer, opcode: int, rsv: int
) -> None:
    body = struct.pack("!H", 1000) if opcode == OP_CLOSE else b"rsv"
    peer.send(opcode, body, rsv=rsv)
    frames = await frames_until_eof(peer)
    assert opcodes(frames) == [OP_CLOSE] and close_code(frames[0][1]) == 1002


async def test_fragmented_ping_fails_1002(peer: RawPeer) -> None:
    peer.send(OP_PING, b"part", fin=False)
    frames = await frames_until_eof(peer)
    assert opcodes(frames) == [OP_CLOSE] and close_code(frames[0][1]) == 1002


async def test_ping_over_125_bytes_fails_1002(peer: RawPeer) -> None:
    peer.send(OP_PING, b"p" * 126)
    frames = await frames_until_eof(peer)
    assert opcodes(frames) == [OP_CLOSE] and close_code(frames[0][1]) == 1002


# ---- close frames: which codes, how long, what text ----------------------------------------


@pytest.mark.parametrize(
    "code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999]
)
async def test_close_with_a_sendable_code_is_echoed(peer: RawPeer, code: int) -> None:
    peer.send(OP_CLOSE, struct.pack("!H", code) + "bye ✓".encode())
    frames = await frames_until_eof(peer, answer_close=False)
    assert frames == [(OP_CLOSE, struct.pack("!H", code) + "bye ✓".encode())]


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
)
async def test_close_with_a_code_that_may_not_be_sent_fails_1002(peer: RawPeer, code: int) -> None:
    peer.send(OP_CLOSE, struct.pack("!H", code))
    frames = await frames_until_eof(peer, answer_close=False)
    assert opcodes(frames) == [OP_CLOSE] and close_code(frames[0][1]) == 1002


async def test_close_with_a_one_byte_payload_fails_1002(peer: RawPeer) -> None:
    peer.send(OP_CLOSE, b"\x03")
    frames = await frames_until_eof(peer, answer_close=False)
    assert opcodes(frames) == [OP_CLOSE] and close_code(frames[0][1]) == 1002


async def test_close_with_a_reason_that_is_not_utf8_fails_1007(peer: RawPeer) -> None:
    peer.send(OP_CLOSE, struct.pack("!H", 1000) + b"\xce\xba\xe1\xbd\xb9\xed\xa0\x80")
    frames = await frames_until_eof(peer, answer_close=False)
    assert opcodes(frames) == [OP_CLOSE] and close_code(frames[0][1]) == 1007


async def test_close_without_a_status_is_answered_with_1000(peer: RawPeer) -> None:
    peer.send(OP_CLOSE, b"")
    frames = await frames_until_eof(peer, answer_close=False)
    assert frames == [(OP_CLOSE, struct.pack("!H", 1000))]


# ---- one Close frame, nothing after it ------------------------------------------------------


async def test_nothing_after_picows_own_close_when_many_connections_flush_together(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    # With eight connections or more, a flush hands frames straight to the sockets. picows
    # disconnects a moment after the Close it sends for a frame it cannot parse; a broadcast
    # in that moment must not reach the socket after that Close.
    server = await make_server()
    for i in range(9):
        await make_client(server).connect(f"user{i}")
    peer = await RawPeer.connect(server.port)
    await peer.hello()
    peer.writer.write(codec.build_frame(0x3, b"", mask=True))  # an unknown opcode
    opcode, body = await asyncio.wait_for(peer.recv(), 5)
    assert opcode == OP_CLOSE and close_code(body) == 1002  # picows's own Close
    server.broadcast("late", 1)  # picows has not disconnected yet: 10 ms after its Close
    assert await frames_until_eof(peer, answer_close=False) == []
    peer.writer.close()


async def test_one_close_frame_when_picows_finds_an_error_after_ours(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    peer = await RawPeer.connect(server.port)
    await peer.hello()
    only_connection(server).drop("bye")
    assert await peer.expect_close(1000) == "bye"
    # a frame with an unknown opcode: picows fails the connection by itself, and would send
    # a Close of its own if it did not know of ours
    peer.writer.write(codec.build_frame(0x3, b"", mask=True))
    assert await frames_until_eof(peer, answer_close=False) == []
    peer.writer.close()


async def test_nothing_after_our_close_when_keepalive_gives_up(
    make_server: ServerFactory,
) -> None:
    server = await make_server(ping_interval=0.1, ping_timeout=0.1, close_timeout=5)
    peer = await RawPeer.connect(server.port)
    await peer.hello()
    only_connection(server).drop("bye")
    # the peer answers nothing: picows's keepalive neither pings after our Close nor sends a
    # Close 1001 of its own when it gives up and drops the socket
    frames = await frames_until_eof(peer, answer_close=False)
    assert opcodes(frames) == [OP_CLOSE] and close_code(frames[0][1]) == 1000
    peer.writer.close()


# ---- every close bounded by close_timeout ---------------------------------------------------

CLOSE_TIMEOUT = 0.3


async def stalled_peer(
    make_server: ServerFactory, log: EventLog, **options: Any
) -> tuple[WseServer, RawPeer]:
    """A peer with a large backlog waiting for it in the server, which it will never read."""
    options.setdefault("ping_interval", None)  # no keepalive to end it instead
    server = await make_server(close_timeout=CLOSE_TIMEOUT, max_pending_bytes=None, **options)
    server.when.disconnected(log.hook("disconnected"))
    peer = await open_peer(server.port, rcvbuf=SMALL_BUFFER)
    await peer.hello()
    peer.writer.transport.pause_reading()  # from now on the peer takes nothing from its socket
    conn = only_connection(server)
    assert conn.endpoint is not None
    server_sock = conn.endpoint.under.get_extra_info("socket")
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    conn.send("blob", "x" * (1 << 20))
    conn.endpoint.flush()  # most of it stays in the server's write buffer
    assert conn.endpoint.under.get_write_buffer_size() > 1 << 19
    return server, peer


async def test_peer_that_closes_and_stops_reading_is_dropped_after_close_timeout(
    make_server: ServerFactory, log: EventLog
) -> None:
    _, peer = await stalled_peer(make_server, log)
    peer.send(OP_CLOSE, struct.pack("!H", 1000))
    [(_, code, _)] = await log.wait("disconnected", timeout=CLOSE_TIMEOUT + 2)
    assert code == 1000
    peer.writer.close()


async def test_protocol_error_found_by_picows_is_bounded_by_close_timeout(
    make_server: ServerFactory, log: EventLog
) -> None:
    _, peer = await stalled_peer(make_server, log)
    peer.writer.write(codec.build_frame(0x3, b"", mask=True))  # unknown opcode
    await log.wait("disconnected", timeout=CLOSE_TIMEOUT + CLOSE_WATCH_INTERVAL + 2)
    peer.writer.close()


async def test_frame_over_max_frame_size_is_bounded_by_close_timeout(
    make_server: ServerFactory, log: EventLog
) -> None:
    _, peer = await stalled_peer(make_server, log, max_message_size=1024)
    # only the header: picows refuses the frame as soon as it reads its length
    peer.writer.write(codec.build_frame(OP_BINARY, b"b" * 2048, mask=True)[:8])
    await log.wait("disconnected", timeout=CLOSE_TIMEOUT + CLOSE_WATCH_INTERVAL + 2)
    peer.writer.close()


async def test_our_failure_of_a_stalled_peer_is_bounded_by_close_timeout(
    make_server: ServerFactory, log: EventLog
) -> None:
    _, peer = await stalled_peer(make_server, log)
    peer.send(OP_TEXT, json.dumps(["echo", "x"]).encode(), rsv=4)
    [(_, code, _)] = await log.wait("disconnected", timeout=CLOSE_TIMEOUT + 2)
    assert code == 1002
    peer.writer.close()


# ---- handlers do not run inside a flush -----------------------------------------------------


async def test_error_handler_dropping_others_during_a_flush_writes_nothing_after_close(
    make_server: ServerFactory, log: EventLog
) -> None:
    """A slow consumer overflows inside the flush of a broadcast; the error handler drops
    every other connection. Those were about to get the broadcast straight to their sockets,
    in the same flush: it must reach them before their Close, or not at all."""
    limit = 64 * 1024
    server = await make_server(max_pending_bytes=limit, ping_interval=None)

    def drop_the_others(err: Any, conn: Any) -> None:
        log.hook("error")(err)
        for other in list(server.connections.values()):
            if other is not conn:
                other.drop("cleanup")

    server.when.error(drop_the_others)
    readers = []
    for n in range(9):  # enough for the flush's batched path (DIRECT_MIN)
        reader = await RawPeer.connect(server.port)
        reader.send(
            OP_TEXT, json.dumps(["~wse:hi", {"identity": f"reader{n}", "meta": {}}]).encode()
        )
        assert (await reader.recv())[0] == OP_TEXT
        readers.append(reader)
    slow = await open_peer(server.port, rcvbuf=SMALL_BUFFER)  # accepted last: flushed last
    await slow.hello()
    slow.writer.transport.pause_reading()
    slow_conn = server.connections[max(server.connections, key=lambda c: int(c, 16))]
    assert slow_conn.endpoint is not None
    slow_sock = slow_conn.endpoint.under.get_extra_info("socket")
    slow_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    slow_conn.send("fill", "x" * (limit // 2))  # a backlog under the limit
    readers[0].send(OP_PING, b"turn")  # answered once the loop turn that flushed it is over
    assert await readers[0].recv() == (OP_PONG, b"turn")
    assert 0 < slow_conn.endpoint.under.get_write_buffer_size() < limit
    server.broadcast("news", "y" * limit)  # pushes the slow one over, mid-flush

    await log.wait("error")
    for reader in readers:
        frames = await frames_until_eof(reader)
        assert opcodes(frames)[-1] == OP_CLOSE and OP_CLOSE not in opcodes(frames)[:-1]
        reader.writer.close()
    slow.writer.close()
