"""wse-fast's own server sockets (transport/server_socket.py) over real TCP: what arrives
with the upgrade request is read, a connection keeps no read bytes when idle or after a
large message, every stranger of a loop reads into one buffer and an accepted socket into
uvloop's own (data_received), and a stranger may send its whole byte budget, not one byte
more."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from wse_fast import IdentifyRequest, codec
from wse_fast.constants import OP_PING, OP_PONG, OP_TEXT, OVER_BUDGET_REASON
from wse_fast.server import WseServer
from wse_fast.transport.admission import ReadGuard
from wse_fast.transport.server_socket import (
    LARGE_READ,
    give_large_blocks_back,
    heap_trim_for,
    shared_read_buffer,
)

from tests.conftest import ServerFactory
from tests.test_framing import HI, RawPeer


def upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wse-default-json\r\n\r\n"
    ).encode()


async def welcomed_with_the_request(port: int) -> RawPeer:
    """A peer whose upgrade request and hi leave in one write (one segment, one read)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_request(port) + codec.build_frame(OP_TEXT, HI, mask=True))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    peer = RawPeer(reader, writer)
    opcode, body = await asyncio.wait_for(peer.recv(), 5)
    assert (opcode, json.loads(body)[0]) == (OP_TEXT, "~wse:welcome")
    return peer


async def test_frames_sent_with_the_upgrade_request_are_read(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    peer = await welcomed_with_the_request(server.port)
    peer.writer.close()


async def read_up_to_a_pong(peer: RawPeer) -> None:
    """Pings and reads until the pong: what was sent before the ping has been read."""
    peer.writer.write(codec.build_frame(OP_PING, b"", mask=True))
    while (await asyncio.wait_for(peer.recv(), 5))[0] != OP_PONG:
        pass


async def test_a_large_message_has_the_heap_trimmed_a_moment_later(
    make_server: ServerFactory,
) -> None:
    # Reads of a large message come partly from the heap, whose freed pages glibc keeps
    # (measured in benches/memory.py --message): a moment after one, the heap is trimmed,
    # once however many large reads came; small messages never ask for it, nor a stranger's
    # bytes, however many one read brings (a trim walks the whole heap).
    assert give_large_blocks_back(), "glibc, with the mmap threshold fixed (the default)"
    server = await make_server()
    trim = heap_trim_for(asyncio.get_running_loop())
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(upgrade_request(server.port) + bytes(4 * LARGE_READ))
    try:  # read up to the end: the server has read the stranger's bytes and dropped it
        while await asyncio.wait_for(reader.read(65536), 5):
            pass
    except ConnectionResetError:
        pass  # dropped with bytes unread: a reset
    writer.close()
    assert not trim.scheduled
    peer = await welcomed_with_the_request(server.port)
    small = json.dumps(["nobody-listens", "x" * 200, None]).encode()
    peer.writer.write(b"".join(codec.build_frame(OP_TEXT, small, mask=True) for _ in range(200)))
    await read_up_to_a_pong(peer)
    assert not trim.scheduled and trim.trims == 0
    large = json.dumps(["nobody-listens", "x" * (4 * LARGE_READ), None]).encode()
    peer.writer.write(codec.build_frame(OP_TEXT, large, mask=True) * 3)
    await read_up_to_a_pong(peer)
    assert trim.scheduled
    await asyncio.wait_for(trim.trimmed.wait(), 5)
    assert trim.trims == 1 and not trim.scheduled
    peer.writer.close()


async def test_frames_sent_with_a_request_an_async_hook_held_are_read(
    make_server: ServerFactory,
) -> None:
    decided = asyncio.Event()
    asked = asyncio.Event()

    async def on_upgrade(request: Any) -> None:
        asked.set()
        await decided.wait()

    server = await make_server(on_upgrade=on_upgrade)
    waiting = asyncio.ensure_future(welcomed_with_the_request(server.port))
    await asyncio.wait_for(asked.wait(), 5)  # the request (and the hi after it) is held
    decided.set()
    peer = await asyncio.wait_for(waiting, 5)
    peer.writer.close()


def socket_of(server: WseServer) -> Any:
    """The one connection's socket protocol (what its endpoint writes through)."""
    [conn] = server.connections.values()
    assert conn.endpoint is not None
    return conn.endpoint.transport


async def test_a_connection_keeps_no_read_bytes_idle_or_after_a_large_message(
    make_server: ServerFactory,
) -> None:
    server = await make_server(max_message_size=2 << 20)
    peer = await RawPeer.connect(server.port)
    await peer.hello()
    sock = socket_of(server)
    assert sock.buffered == 0  # idle
    # a 1 MiB message of a type nobody listens to, in many reads, then a ping: its pong
    # comes once everything before it was read
    message = json.dumps(["nobody-listens", "m" * (1 << 20)]).encode()
    frame = codec.build_frame(OP_TEXT, message, mask=True)
    for at in range(0, len(frame), 50_000):
        peer.writer.write(frame[at : at + 50_000])
        await peer.writer.drain()
    peer.send(OP_PING, b"after")
    assert await asyncio.wait_for(peer.recv(), 5) == (OP_PONG, b"after")
    assert sock.buffered == 0  # the megabyte is given back with the message
    peer.writer.close()


async def test_every_socket_of_a_loop_reads_into_one_buffer(make_server: ServerFactory) -> None:
    server = await make_server()
    first = await RawPeer.connect(server.port)
    second = await RawPeer.connect(server.port)
    sockets = [conn.endpoint.transport for conn in server.connections.values()]  # type: ignore[union-attr]
    assert len(sockets) == 2
    assert sockets[0].get_buffer(-1) is sockets[1].get_buffer(-1)
    # and what one leaves there is not another's: each still reads its own frames
    ping = codec.build_frame(OP_PING, b"one", mask=True)
    first.writer.write(ping[:4])  # unfinished: its connection keeps these bytes
    second.send(OP_PING, b"two")
    assert await asyncio.wait_for(second.recv(), 5) == (OP_PONG, b"two")
    first.writer.write(ping[4:])
    assert await asyncio.wait_for(first.recv(), 5) == (OP_PONG, b"one")
    first.writer.close()
    second.writer.close()


async def test_an_accepted_socket_reads_past_the_shared_buffer_from_the_accepting_read_on(
    make_server: ServerFactory,
) -> None:
    # The read that gets the connection accepted (its hi) turns the socket from the guard's
    # buffered reads into a plain protocol (data_received, uvloop's own buffer) in the middle
    # of that read: calls that arrived in the same segment as the hi are still answered, in
    # order; and from then on nothing read goes through the loop's shared buffer.
    server = await make_server()
    server.register("add", lambda conn, p: p["a"] + p["b"])

    def call(n: int) -> bytes:
        return codec.build_frame(
            OP_TEXT, json.dumps(["add", {"a": n, "b": 1}, f"s{n}"]).encode(), mask=True
        )

    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    hi = codec.build_frame(OP_TEXT, HI, mask=True)
    writer.write(upgrade_request(server.port) + hi + call(1) + call(2) + call(3))
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    peer = RawPeer(reader, writer)
    welcome = await asyncio.wait_for(peer.recv(), 5)
    assert json.loads(welcome[1])[0] == "~wse:welcome"
    answers = [json.loads((await asyncio.wait_for(peer.recv(), 5))[1]) for _ in range(3)]
    assert answers == [["~wse:response", n + 1, f"s{n}"] for n in (1, 2, 3)]

    shared = shared_read_buffer(asyncio.get_running_loop())
    shared[:] = b"\xee" * len(shared)  # any read into it would leave its bytes there
    writer.write(call(4))
    assert json.loads((await asyncio.wait_for(peer.recv(), 5))[1]) == ["~wse:response", 5, "s4"]
    assert shared.tobytes().count(b"\xee") == len(shared)
    writer.close()


async def test_an_accepted_socket_keeps_nothing_of_its_guard(make_server: ServerFactory) -> None:
    # uvloop keeps the read callbacks of the last buffered protocol it was given also once it
    # reads a plain one: an accepted socket must not keep its guard alive through them (a
    # few hundred bytes per idle connection).
    server = await make_server()
    peers = [await welcomed_with_the_request(server.port) for _ in range(3)]
    assert len(server.connections) == 3
    gc.collect()
    assert [o for o in gc.get_objects() if type(o) is ReadGuard] == []
    for peer in peers:
        peer.writer.close()


def test_a_process_that_only_serves_never_imports_picows() -> None:
    # picows is the client's: a server that accepts a connection, authenticates it and
    # answers a message, in a fresh interpreter, loads none of it (2.8 MiB of RSS per
    # process, picows and what it imports)
    program = textwrap.dedent(
        r"""
        import asyncio, base64, json, os, sys
        from wse_fast import WseServer, codec

        async def main():
            server = WseServer(lambda request: request.accept(request.identity), port=0)
            server.channel.on("ping", lambda conn, payload: conn.send("pong", payload))
            await server.start()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: wse-default-json\r\n\r\n".encode()
            )
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            hi = json.dumps(["~wse:hi", {"identity": "alice", "meta": {}}]).encode()
            ping = json.dumps(["ping", 7]).encode()
            writer.write(b"".join(codec.build_frame(1, m, mask=True) for m in (hi, ping)))
            received = b""
            while b'"pong"' not in received:
                received += await asyncio.wait_for(reader.read(65536), 10)
            assert b"~wse:welcome" in received
            writer.close()
            await server.close()

        asyncio.run(main())
        print(sorted(m for m in sys.modules if m == "picows" or m.startswith("picows.")))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


async def test_the_removed_picows_sockets_refuse_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # WSE_FAST_SERVER_SOCKETS=picows put picows's protocol under the server's sockets; that
    # path is gone. A deployment that set it learns so when the server starts, with what to
    # do, rather than being switched over silently; with it unset the same server starts.
    monkeypatch.setenv("WSE_FAST_SERVER_SOCKETS", "picows")
    server = WseServer(lambda req: req.accept(req.identity), port=0)
    try:
        with pytest.raises(RuntimeError, match="removed in this release") as refused:
            await server.start()
        assert "Unset WSE_FAST_SERVER_SOCKETS" in str(refused.value)
        # refused before the server starts its broker: a cluster node does not join (here
        # it would fail to reach NATS, on port 1, instead)
        node = WseServer(lambda req: req.accept(req.identity), port=0)
        node.join_cluster("nats://127.0.0.1:1")
        with pytest.raises(RuntimeError, match="removed in this release"):
            await asyncio.wait_for(node.start(), 5)
        await node.close()
        monkeypatch.delenv("WSE_FAST_SERVER_SOCKETS")
        await server.start()
        peer = await welcomed_with_the_request(server.port)
        peer.writer.close()
    finally:
        await server.close()


async def http_answer(port: int, request: bytes) -> bytes:
    """What the server answers ``request`` with, up to the end of its response head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()


async def test_requests_that_are_not_websocket_upgrades_are_refused(
    make_server: ServerFactory,
) -> None:
    server = await make_server()
    port = server.port
    good = upgrade_request(port)
    plain_get = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    assert (await http_answer(port, plain_get)).startswith(b"HTTP/1.1 426")
    old_version = good.replace(b"Version: 13", b"Version: 8")
    refused = await http_answer(port, old_version)
    assert refused.startswith(b"HTTP/1.1 426")
    # what to upgrade to, and the version spoken (RFC 9110 §15.5.22, RFC 6455 §4.2.2)
    assert b"\r\nUpgrade: websocket\r\n" in refused
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in refused
    no_connection = good.replace(b"Connection: Upgrade\r\n", b"")
    assert (await http_answer(port, no_connection)).startswith(b"HTTP/1.1 400")
    short_key = good.replace(b"Sec-WebSocket-Key: ", b"Sec-WebSocket-Key: AAAA")
    assert (await http_answer(port, short_key)).startswith(b"HTTP/1.1 400")
    post = good.replace(b"GET / ", b"POST / ")
    assert (await http_answer(port, post)).startswith(b"HTTP/1.1 400")
    huge = good.replace(b"\r\n\r\n", b"\r\nX-Big: " + b"x" * (20 << 10) + b"\r\n\r\n")
    assert (await http_answer(port, huge)).startswith(b"HTTP/1.1 431")
    # and the accept value is RFC 6455's (its section 1.3 example)
    key_example = b"dGhlIHNhbXBsZSBub25jZQ=="
    [original] = [line for line in good.split(b"\r\n") if line.startswith(b"Sec-WebSocket-Key")]
    head = await http_answer(port, good.replace(original, b"Sec-WebSocket-Key: " + key_example))
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head


async def test_upgrade_requests_that_could_be_read_two_ways_are_refused(
    make_server: ServerFactory,
) -> None:
    # what a proxy in front could read otherwise than the server: refused, not guessed at
    server = await make_server()
    port = server.port
    good = upgrade_request(port)
    host = f"Host: 127.0.0.1:{port}\r\n".encode()
    [key] = [line for line in good.split(b"\r\n") if line.startswith(b"Sec-WebSocket-Key")]
    ambiguous = {
        "no Host": good.replace(host, b""),
        "two Hosts": good.replace(host, host + b"Host: elsewhere\r\n"),
        "two keys": good.replace(key, key + b"\r\n" + key.replace(b": ", b": x")),
        "a bare LF": good.replace(host, host[:-2] + b"\nX-Forwarded-For: 10.0.0.1\r\n"),
        "a bare CR": good.replace(host, host[:-2] + b"\rX-Forwarded-For: 10.0.0.1\r\n"),
        "a NUL": good.replace(host, host[:-2] + b"\x00\r\n"),
        "a name that is not a token": good.replace(host, host + b"X Forwarded For: a\r\n"),
    }
    for what, request in ambiguous.items():
        answer = await http_answer(port, request)
        assert answer.startswith(b"HTTP/1.1 400"), (what, answer)
    # Connection is a list, in one field line or several
    split = good.replace(
        b"Connection: Upgrade\r\n", b"Connection: keep-alive\r\nConnection: Upgrade\r\n"
    )
    assert (await http_answer(port, split)).startswith(b"HTTP/1.1 101")


def mapped_blocks_while_a_second_large_block_lives(
    fix: bool, **environment: str
) -> tuple[bool, int]:
    """In a fresh interpreter (glibc) with ``environment`` added: whether
    give_large_blocks_back fixed the threshold (when ``fix``), and, a 1 MiB block allocated
    and freed, then another, how many more blocks glibc has mapped on their own while the
    second lives."""
    program = textwrap.dedent(
        f"""
        import ctypes
        from wse_fast.transport.server_socket import give_large_blocks_back

        class Info(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in (
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
            ).split()]

        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = Info
        fixed = give_large_blocks_back() if {fix} else False
        before = libc.mallinfo2().hblks
        first = bytearray(1 << 20)
        del first
        second = bytearray(1 << 20)
        print(fixed, libc.mallinfo2().hblks - before)
        """
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES", "WSE_FAST_MMAP_THRESHOLD")
    }
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, **environment},
    )
    assert done.returncode == 0, done.stderr
    fixed, mapped = done.stdout.split()
    return fixed == "True", int(mapped)


def test_large_blocks_go_back_to_the_os_once_the_listener_runs() -> None:
    # glibc's own threshold rises when the first block is freed: the second comes from the
    # heap, which keeps it when freed; fixed, the second is mapped (and unmapped) too
    assert mapped_blocks_while_a_second_large_block_lives(fix=False) == (False, 0)
    assert mapped_blocks_while_a_second_large_block_lives(fix=True) == (True, 1)


def test_the_threshold_is_left_alone_where_the_operator_chose_one() -> None:
    # glibc's tunable (here 4 MiB: a 1 MiB block comes from the heap) stays as chosen
    tunable = "glibc.malloc.mmap_threshold=4194304"
    assert mapped_blocks_while_a_second_large_block_lives(True, GLIBC_TUNABLES=tunable) == (
        False,
        0,
    )
    # off: glibc's dynamic threshold, as without the listener
    assert mapped_blocks_while_a_second_large_block_lives(True, WSE_FAST_MMAP_THRESHOLD="off") == (
        False,
        0,
    )
    # a threshold of the operator's own
    assert mapped_blocks_while_a_second_large_block_lives(
        True, WSE_FAST_MMAP_THRESHOLD=str(2 << 20)
    ) == (True, 0)


def virtual_memory() -> int:
    """This process's virtual size (VmSize), in bytes: what is reserved, touched or not."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


async def test_strangers_declaring_large_frames_reserve_only_what_they_sent(
    make_server: ServerFactory,
) -> None:
    # Each stranger declares a 1 MB frame and sends 1 KiB of it: the server may keep that
    # KiB, not room for the megabyte (2 048 strangers would reserve 2 GiB, which an address
    # space limit or strict overcommit turns into an allocation failure, and Rust aborts).
    strangers = 128
    server = await make_server()
    peers = [await RawPeer.connect(server.port) for _ in range(strangers)]
    before = virtual_memory()
    declared = codec.build_frame(OP_TEXT, b"x" * 1_000_000, mask=True)
    for peer in peers:
        peer.writer.write(declared[:1024])
    sockets = [conn.endpoint.transport for conn in server.connections.values()]  # type: ignore[union-attr]
    async with asyncio.timeout(5):  # every socket has read its KiB
        while sum(sock.buffered for sock in sockets) < strangers * 1024:
            await asyncio.sleep(0.005)
    growth = virtual_memory() - before
    assert growth < strangers * 64 * 1024, f"{growth >> 20} MiB reserved for {strangers} KiB"
    for peer in peers:
        peer.writer.close()


# ---- a stranger's byte budget ------------------------------------------------------------------


def pings_of(total: int) -> list[bytes]:
    """Client pings (at most 125-byte payloads) that make exactly ``total`` bytes (>= 6)."""
    frames = []
    while total:
        size = min(total, 6 + 125)
        if 0 < total - size < 6:
            size = total - 6  # leave room for a last, empty ping
        frames.append(codec.build_frame(OP_PING, b"p" * (size - 6), mask=True))
        total -= size
    return frames


@pytest.mark.parametrize("past", [0, 1], ids=["whole-budget", "one-byte-more"])
async def test_a_stranger_may_send_its_whole_budget_and_not_one_byte_more(
    make_server: ServerFactory, past: int
) -> None:
    decided = asyncio.Event()

    async def identify(req: IdentifyRequest) -> None:
        await decided.wait()  # once every byte has been read
        req.accept(req.identity)

    server = await make_server(identify, auth_max_message_size=1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    request, hi = upgrade_request(server.port), codec.build_frame(OP_TEXT, HI, mask=True)
    pings = pings_of(server.stranger_budget - len(request) - len(hi))
    writer.write(request + hi + b"".join(pings) + b"\x89" * past)  # the budget, and past it
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    peer = RawPeer(reader, writer)
    for ping in pings:  # every ping was read, and answered
        assert await asyncio.wait_for(peer.recv(), 5) == (OP_PONG, b"p" * (len(ping) - 6))
    if past:
        assert await peer.expect_close(1008) == OVER_BUDGET_REASON
    else:
        decided.set()
        opcode, body = await asyncio.wait_for(peer.recv(), 5)
        assert (opcode, json.loads(body)[0]) == (OP_TEXT, "~wse:welcome")
    writer.close()


async def test_a_stranger_accepted_by_the_read_that_ran_past_its_budget_reads_on(
    make_server: ServerFactory,
) -> None:
    # The hi and a message far past the budget arrive in one read: the reader stops at the
    # budget, the hi (before it) gets the connection accepted at once, which lifts the
    # budget, and the rest of that read is read as an accepted connection's.
    server = await make_server(auth_max_message_size=1024)
    large = codec.build_frame(
        OP_TEXT, json.dumps(["nobody-listens", "m" * 60_000]).encode(), mask=True
    )
    ping = codec.build_frame(OP_PING, b"after", mask=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    request, hi = upgrade_request(server.port), codec.build_frame(OP_TEXT, HI, mask=True)
    assert len(request + hi + large) > server.stranger_budget
    writer.write(request + hi + large + ping)
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    peer = RawPeer(reader, writer)
    opcode, body = await asyncio.wait_for(peer.recv(), 5)
    assert (opcode, json.loads(body)[0]) == (OP_TEXT, "~wse:welcome")
    assert await asyncio.wait_for(peer.recv(), 5) == (OP_PONG, b"after")
    assert len(server.clients) == 1
    writer.close()
