"""The fan-out engine: encode once, one write per connection per loop turn, bounded backlog."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

import pytest
from wse_fast import WSE_ERROR, WseServer, codec
from wse_fast.transport.endpoint import TRANSPORT_HIGH_WATER

from tests.conftest import ClientFactory, EventLog, RecordingTransport, ServerFactory
from tests.test_rfc6455 import open_peer


async def test_one_turn_one_write_in_order(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    writes: list[bytes] = []

    @server.channel.on("go")
    def go(conn: Any, payload: Any) -> None:
        endpoint = conn.endpoint
        endpoint.under = RecordingTransport(endpoint.under, writes)
        conn.send("m", 1)
        server.broadcast("m", 2)
        server.send(conn.cid, "m", 3)
        conn.client.send("m", 4)

    client = make_client(server)
    client.channel.on("m", log.hook("m"))
    await client.connect("alice")
    client.send("go")
    assert [args for (args,) in await log.wait("m", 4)] == [1, 2, 3, 4]
    assert len(writes) == 1  # four frames, one write
    assert writes[0].count(b'["m",') == 4


async def test_rpc_reply_keeps_its_place_among_messages(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()

    @server.register("work")
    def work(conn: Any, payload: Any) -> str:
        conn.send("before", 1)
        return "result"

    client = make_client(server)
    client.channel.on("before", log.hook("before"))
    await client.connect("alice")
    result = await client.call("work")
    assert result == "result" and log.of("before") == [(1,)]  # the message arrived first


async def test_broadcast_encodes_once(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    frames: list[bytes] = []
    encode = server.encode
    server.encode = lambda *a: frames.append(encode(*a)) or frames[-1]  # type: ignore[assignment,func-returns-value]
    clients = [make_client(server) for _ in range(5)]
    for i, c in enumerate(clients):
        c.channel.on("all", log.hook("all"))
        await c.connect(f"user{i}")
    frames.clear()
    server.broadcast("all", {"x": 1})
    await log.wait("all", 5)
    assert len(frames) == 1


SLOW_LIMIT = 256 * 1024  # max_pending_bytes of the slow-consumer tests


async def flood_until_overflow(server: WseServer, log: EventLog) -> int:
    """Broadcasts 1 KiB messages ``["flood", n]``, 64 a turn, until the server reports a
    slow consumer (its ``error`` logged under "error"); returns how many it broadcast."""
    chunk = "x" * 1024
    sent = 0
    for _ in range(1000):  # 64 MiB at most: far past any slow consumer's socket buffers
        for _ in range(64):
            server.broadcast("flood", [sent, chunk])
            sent += 1
        await asyncio.sleep(0)  # the end of the turn: one flush
        if log.of("error"):
            return sent
    raise AssertionError("no slow consumer was dropped")


def slow_consumer_reported(log: EventLog) -> None:
    [(error, _)] = log.of("error")
    assert error.code == WSE_ERROR.CONNECTION_ERROR
    assert error.details == {"reason": "wse.slow-consumer", "max_pending_bytes": SLOW_LIMIT}


async def test_slow_consumer_reads_a_close_1008_before_eof(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    # A peer that stops reading while a broadcast goes on: past max_pending_bytes it is
    # dropped, and when it reads again it finds whole frames, in order, then a Close 1008
    # (not a bare end of the socket), well before all that was broadcast; the others miss
    # nothing. Small send and receive buffers keep the kernel's share small.
    server = await make_server(max_pending_bytes=SLOW_LIMIT, ping_interval=None)
    server.when.disconnected(log.hook("disconnected"))
    server.when.error(log.hook("error"))
    others = [make_client(server) for _ in range(3)]
    for i, other in enumerate(others):
        other.channel.on("flood", log.hook(f"flood{i}"))
        await other.connect(f"other{i}")
    slow = await open_peer(server.port, rcvbuf=16384)
    await slow.hello()
    slow.writer.transport.pause_reading()  # from now on the peer takes nothing from its socket
    [conn] = server.clients["alice"].conns.values()
    assert conn.endpoint is not None
    conn.endpoint.under.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 16384
    )

    sent = await flood_until_overflow(server, log)
    slow_consumer_reported(log)
    slow.writer.transport.resume_reading()
    numbers = []
    opcode, body = await slow.recv()  # recv asserts whole, unmasked frames
    while opcode == 0x1:
        numbers.append(json.loads(body)[1][0])
        opcode, body = await slow.recv()
    assert opcode == 0x8
    assert (struct.unpack("!H", body[:2])[0], body[2:]) == (1008, b"wse.slow-consumer")
    assert numbers == list(range(len(numbers)))
    # what waited in wse-fast (up to the bound, 256 frames) was dropped, not sent ahead of
    # the Close: the peer got only what the transport (its high-water mark and one turn's
    # write past it) and the two small socket buffers held
    assert len(numbers) * 1024 < TRANSPORT_HIGH_WATER + 256 * 1024 < sent * 1024
    slow.send(0x8, body)  # the close handshake: the server then hangs up
    assert await slow.reader.read() == b""
    [(dropped, code, reason)] = await log.wait("disconnected")
    assert (dropped.cid, code, reason) == ("alice", 1008, "wse.slow-consumer")
    assert "alice" not in server.clients and dropped not in server.connections.values()
    for i in range(3):
        got = await log.wait(f"flood{i}", sent)
        assert [n for ((n, _),) in got] == list(range(sent))
    slow.writer.close()


async def test_a_dropped_slow_consumer_that_never_reads_is_gone_after_close_timeout(
    make_server: ServerFactory, log: EventLog
) -> None:
    # A hostile peer: dropped, it never reads its Close; the server waits for it no longer
    # than close_timeout, holding meanwhile only what its transport had taken.
    server = await make_server(max_pending_bytes=SLOW_LIMIT, ping_interval=None, close_timeout=0.3)
    server.when.disconnected(log.hook("disconnected"))
    server.when.error(log.hook("error"))
    peer = await open_peer(server.port, rcvbuf=16384)
    await peer.hello()
    peer.writer.transport.pause_reading()
    [conn] = server.clients["alice"].conns.values()
    assert conn.endpoint is not None
    under = conn.endpoint.under
    await flood_until_overflow(server, log)
    assert under.get_write_buffer_size() <= 2 * TRANSPORT_HIGH_WATER
    [(dropped, code, reason)] = await log.wait("disconnected", timeout=0.3 + 2)
    assert (dropped.cid, code, reason) == ("alice", 1008, "wse.slow-consumer")
    assert server.clients == {} and server.connections == {}
    peer.writer.close()


async def test_a_backlog_under_the_bound_waits_in_the_endpoint_and_arrives_in_order(
    make_server: ServerFactory, log: EventLog
) -> None:
    # A peer that pauses, with less than max_pending_bytes waiting for it: the transport
    # holds about its high-water mark and the rest waits in the endpoint (where a drop could
    # still discard it); when the peer reads again, everything comes, in order, and then a
    # close made meanwhile, after all of it.
    server = await make_server(max_pending_bytes=1 << 20, ping_interval=None)
    server.when.error(log.hook("error"))
    peer = await open_peer(server.port, rcvbuf=16384)
    await peer.hello()
    peer.writer.transport.pause_reading()
    [conn] = server.clients["alice"].conns.values()
    assert conn.endpoint is not None
    under = conn.endpoint.under
    under.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    chunk = "x" * 1024
    for turn in range(10):  # 640 KiB in all
        for n in range(64):
            conn.send("n", [turn * 64 + n, chunk])
        await asyncio.sleep(0)
        assert under.get_write_buffer_size() <= 2 * TRANSPORT_HIGH_WATER  # mark + a turn
    conn.drop("enough")
    peer.writer.transport.resume_reading()
    numbers = []
    opcode, body = await peer.recv()
    while opcode == 0x1:
        numbers.append(json.loads(body)[1][0])
        opcode, body = await peer.recv()
    assert numbers == list(range(640))
    assert (opcode, struct.unpack("!H", body[:2])[0], body[2:]) == (0x8, 1000, b"enough")
    assert not log.of("error")
    peer.writer.close()


async def test_nothing_held_in_the_endpoint_follows_a_close_picows_sent_by_itself(
    make_server: ServerFactory, log: EventLog
) -> None:
    # Frames wait in the endpoint for a slow peer; then the peer breaks the protocol (an
    # unmasked frame) and picows fails the connection with a Close 1002 of its own. When the
    # peer reads again, the transport asks for more: what waited must not go out after the
    # Close (the peer would see data after the end of the stream).
    server = await make_server(max_pending_bytes=1 << 20, ping_interval=None)
    peer = await open_peer(server.port, rcvbuf=16384)
    await peer.hello()
    peer.writer.transport.pause_reading()
    [conn] = server.clients["alice"].conns.values()
    assert conn.endpoint is not None
    conn.endpoint.under.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 16384
    )
    chunk = "x" * 1024
    for turn in range(6):  # 384 KiB: most of it waits in the endpoint
        for n in range(64):
            conn.send("n", [turn * 64 + n, chunk])
        await asyncio.sleep(0)
    peer.writer.write(codec.build_frame(0x1, b"unmasked", fin=True, mask=False))
    await asyncio.sleep(0.1)
    assert conn.endpoint.transport.is_close_frame_sent
    peer.writer.transport.resume_reading()
    opcode, body = await peer.recv()
    while opcode == 0x1:
        opcode, body = await peer.recv()
    assert (opcode, struct.unpack("!H", body[:2])[0]) == (0x8, 1002)
    try:
        after = await asyncio.wait_for(peer.recv(), 2)
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        after = None
    assert after is None, after[0]
    peer.writer.close()


async def test_slow_wse_client_is_told_1008(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    # The same with a WseClient whose socket is not read for a while: once it reads again,
    # it gets what reached its socket, then the server's Close, and reports 1008.
    server = await make_server(max_pending_bytes=SLOW_LIMIT, ping_interval=None)
    server.when.error(log.hook("error"))
    client = make_client(server)
    client.channel.on("flood", log.hook("flood"))
    client.when.closed(log.hook("closed"))
    await client.connect("alice")
    endpoint = client._link.endpoint  # type: ignore[union-attr]
    assert endpoint is not None
    endpoint.pause_reading()

    await flood_until_overflow(server, log)
    slow_consumer_reported(log)
    endpoint.resume_reading()
    assert await log.wait("closed") == [(1008, "wse.slow-consumer")]
    numbers = [n for ((n, _),) in log.of("flood")]
    assert numbers == list(range(len(numbers)))


async def small_send_buffers(
    server: WseServer, make_client: ClientFactory, log: EventLog, type: str
) -> None:
    """40 clients, users user0 .. user39, each logging messages of ``type`` under
    ``{type}{i}``, and the server's sockets to them with small kernel send buffers. 40: above
    the batch size that goes through io_uring (the run with WSE_FAST_IO_URING=0 covers the
    send() loop with the same tests)."""
    clients = [make_client(server, max_message_size=2 << 20) for _ in range(40)]
    for i, c in enumerate(clients):
        c.channel.on(type, log.hook(f"{type}{i}"))
        await c.connect(f"user{i}")
    for conn in server.connections.values():
        assert conn.endpoint is not None
        conn.endpoint.under.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 16384
        )


async def test_large_broadcasts_survive_short_sends(
    make_server: ServerFactory,
    make_client: ClientFactory,
    log: EventLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small kernel send buffers and large frames: the direct path sends part of each frame,
    # and the transport must carry the rest, in order, before anything queued later.
    server = await make_server()
    await small_send_buffers(server, make_client, log, "big")
    short_sends = []
    send_to_all = codec.send_to_all

    def recording(fds: list[int], frame: bytes) -> list[tuple[int, int]]:
        short = send_to_all(fds, frame)
        short_sends.extend(short)
        return short

    monkeypatch.setattr(codec, "send_to_all", recording)
    payloads = [chr(ord("a") + n) * (600 * 1024) for n in range(4)]
    for payload in payloads:
        server.broadcast("big", payload)
        await asyncio.sleep(0)  # one broadcast per turn: the paced path
    for i in range(40):
        got = await log.wait(f"big{i}", 4)
        assert [p for (p,) in got] == payloads
    assert short_sends  # the scenario happened: the kernel did take only part


async def test_a_turns_different_frames_go_out_in_one_batch_and_survive_short_sends(
    make_server: ServerFactory,
    make_client: ClientFactory,
    log: EventLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each of 40 connections is sent its own large frame in the same turn (as the answers to
    # a turn's calls are): one batch into the codec, frame i to socket i, and what the kernel
    # did not take goes through the transport, in order, before what is queued later.
    server = await make_server()
    await small_send_buffers(server, make_client, log, "own")
    batches: list[int] = []
    short_sends = []
    send_each = codec.send_each

    def recording(fds: list[int], frames: list[bytes]) -> list[tuple[int, int]]:
        batches.append(len(fds))
        short = send_each(fds, frames)
        short_sends.extend(short)
        return short

    monkeypatch.setattr(codec, "send_each", recording)
    for turn in range(3):
        for i in range(40):
            server.send(f"user{i}", "own", f"{i}:{turn}:" + "x" * (300 * 1024))
        await asyncio.sleep(0)  # the end of the turn: one flush
    # the first turn's 40 frames in one batch; later turns find data waiting in the
    # transports the kernel did not take, which keep their frames in order
    assert batches[0] == 40
    for i in range(40):
        got = await log.wait(f"own{i}", 3)
        assert [p.split(":")[:2] for (p,) in got] == [[str(i), str(t)] for t in range(3)]
    assert short_sends  # the scenario happened: the kernel did take only part


async def test_paced_broadcast_after_a_backlog_keeps_order(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    # One client has data waiting in its transport: it must not take the direct path, or the
    # next frame would overtake the backlog.
    server = await make_server()
    clients = [make_client(server, max_message_size=4 << 20) for _ in range(10)]
    for i, c in enumerate(clients):
        c.channel.on("n", log.hook(f"n{i}"))
        await c.connect(f"user{i}")
    [conn0] = server.clients["user0"].conns.values()
    assert conn0.endpoint is not None
    under = conn0.endpoint.under
    under.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    server.send("user0", "n", "x" * (3 << 20))  # a backlog for user0 only
    await asyncio.sleep(0)
    assert under.get_write_buffer_size() > 0  # the scenario: data waits in the transport
    for n in range(20):
        server.broadcast("n", n)
        await asyncio.sleep(0)
    got = await log.wait("n0", 21)
    assert [p for (p,) in got][1:] == list(range(20))
    for i in range(1, 10):
        assert [p for (p,) in await log.wait(f"n{i}", 20)] == list(range(20))


async def test_idle_connection_keeps_no_handshake_or_reassembly_state(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    # Idle connections are most of a large server's memory: the upgrade request's headers are
    # released once the handshake is done, and a message assembler is made only when the
    # peer first fragments a message.
    server = await make_server()
    server.register("echo", lambda conn, payload: payload)
    client = make_client(server)
    await client.connect("alice")
    assert await client.call("echo", {"n": 1}) == {"n": 1}  # whole messages went both ways
    [conn] = server.clients["alice"].conns.values()
    assert conn.endpoint is not None and conn.endpoint.transport is not None
    # the server's sockets keep no request, and no bytes once the frames are read
    assert conn.endpoint.transport.buffered == 0  # type: ignore[attr-defined]
    assert conn.endpoint._assembler is None
