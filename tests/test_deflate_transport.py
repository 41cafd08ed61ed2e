"""permessage-deflate on real connections: wse-fast's server and client, the websockets
library, Node.js ws and the mounted transports; zip bombs and the stranger's limit."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as websockets_connect
from wse_fast import Compression, ConnectionFailed, WseServer, codec
from wse_fast.sansio.deflate import RSV_COMPRESSED, SYNC_TAIL, Agreement

from tests.conftest import ClientFactory, EventLog, ServerFactory, url_of
from tests.hosts import mount

PROTOCOL = "wse-default-json"
HI = json.dumps(["~wse:hi", {"identity": "alice", "meta": {}}]).encode()


def hi(identity: str) -> bytes:
    return json.dumps(["~wse:hi", {"identity": identity, "meta": {}}]).encode()


ROWS = [{"id": i, "symbol": "MSFT", "price": 1.25 * i, "side": "buy"} for i in range(200)]
NODE_PEER = Path(__file__).parent / "node" / "deflate_peer.mjs"


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


class DeflatePeer:
    """A raw-socket WebSocket client that offers permessage-deflate and shows each frame's
    RSV bits and bytes as they crossed the wire."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        self.reader, self.writer, self.head = reader, writer, head

    @classmethod
    async def connect(
        cls, port: int, offer: str | None = "permessage-deflate; client_max_window_bits"
    ) -> DeflatePeer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        extension = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {PROTOCOL}\r\n"
                f"{extension}\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer, head.lower())

    def send(self, opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> None:
        self.writer.write(codec.build_frame(opcode, payload, fin=fin, mask=True, rsv=rsv))

    async def recv_raw(self) -> tuple[int, int, bytes, bytes]:
        """``(rsv, opcode, payload, the whole frame)``."""
        head = await asyncio.wait_for(self.reader.readexactly(2), 10)
        more = {126: 2, 127: 8}.get(head[1] & 0x7F, 0)
        head += await self.reader.readexactly(more)
        parsed = codec.parse_frame_header(head)
        assert parsed is not None
        fin, rsv, opcode, key, length, _ = parsed
        assert fin and key is None
        payload = await self.reader.readexactly(length)
        return rsv, opcode, payload, head + payload

    async def recv(self) -> tuple[int, Any]:
        """The next data message, inflated when RSV1 says so: ``(rsv, [type, payload])``."""
        rsv, opcode, payload, _ = await self.recv_raw()
        assert opcode == 0x1, (opcode, payload)
        if rsv == RSV_COMPRESSED:
            payload = zlib.decompressobj(-15).decompress(payload + SYNC_TAIL)
        return rsv, json.loads(payload)[:2]

    async def expect_close(self, code: int) -> None:
        while True:
            _, opcode, payload, _ = await self.recv_raw()
            if opcode == 0x8:
                assert struct.unpack("!H", payload[:2])[0] == code, payload
                return

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def peers() -> AsyncIterator[list[DeflatePeer]]:
    opened: list[DeflatePeer] = []
    yield opened
    for peer in opened:
        peer.close()


async def connect(peers: list[DeflatePeer], server: WseServer, offer: str | None = None) -> Any:
    peer = await DeflatePeer.connect(server.port, offer or "permessage-deflate")
    peers.append(peer)
    return peer


async def echo_server(make_server: ServerFactory, **options: Any) -> WseServer:
    server = await make_server(**options)
    server.channel.on("echo", lambda conn, payload: conn.send("echo", payload))
    return server


# ---- negotiation -------------------------------------------------------------------------------


async def test_compression_is_off_by_default(
    make_server: ServerFactory, peers: list[DeflatePeer]
) -> None:
    server = await echo_server(make_server)
    peer = await connect(peers, server)
    assert b"sec-websocket-extensions" not in peer.head  # the offer declined
    peer.send(0x1, HI)
    assert (await peer.recv())[1][0] == "~wse:welcome"
    peer.send(0x1, json.dumps(["echo", ROWS]).encode())
    assert await peer.recv() == (0, ["echo", ROWS])  # plain, however large
    # and RSV1 without the extension is a protocol error, as before
    peer.send(0x1, deflate(json.dumps(["echo", 1]).encode()), rsv=RSV_COMPRESSED)
    await peer.expect_close(1002)


async def test_each_offer_is_answered_with_its_own_agreement(make_server: ServerFactory) -> None:
    server = await echo_server(make_server, compression=Compression())
    first = await DeflatePeer.connect(server.port, "permessage-deflate")
    second = await DeflatePeer.connect(server.port, "permessage-deflate; client_max_window_bits")
    limited = await DeflatePeer.connect(server.port, "permessage-deflate; server_max_window_bits=9")
    try:
        answer = b"sec-websocket-extensions: permessage-deflate; server_no_context_takeover; "
        assert answer + b"client_no_context_takeover\r\n" in first.head
        assert answer + b"client_no_context_takeover\r\n" in second.head
        assert b"server_max_window_bits=9" in limited.head
    finally:
        for peer in (first, second, limited):
            peer.close()


# ---- the wire ----------------------------------------------------------------------------------


async def test_both_ways_compressed_small_messages_plain(
    make_server: ServerFactory, peers: list[DeflatePeer]
) -> None:
    server = await echo_server(make_server, compression=Compression(threshold=128))
    peer = await connect(peers, server)
    peer.send(0x1, deflate(HI), rsv=RSV_COMPRESSED)  # a compressed hi is understood
    rsv, welcome = await peer.recv()
    assert welcome[0] == "~wse:welcome" and rsv == 0  # shorter than the threshold: plain
    text = json.dumps(["echo", ROWS]).encode()
    peer.send(0x1, deflate(text), rsv=RSV_COMPRESSED)
    rsv, _, payload, _ = await peer.recv_raw()
    assert rsv == RSV_COMPRESSED and len(payload) < len(text) // 4
    assert json.loads(zlib.decompressobj(-15).decompress(payload + SYNC_TAIL))[:2] == ["echo", ROWS]
    # fragmented and compressed: RSV1 on the first frame only
    data = deflate(text)
    peer.send(0x1, data[:100], fin=False, rsv=RSV_COMPRESSED)
    peer.send(0x0, data[100:200], fin=False)
    peer.send(0x0, data[200:])
    assert (await peer.recv())[1] == ["echo", ROWS]


async def test_a_broadcast_is_compressed_once_for_every_compressed_connection(
    make_server: ServerFactory, peers: list[DeflatePeer], log: EventLog
) -> None:
    server = await make_server(compression=Compression())
    server.when.connected(log.hook("connected"))
    compressed = [await connect(peers, server) for _ in range(3)]
    plain = await connect(peers, server, offer="x-webkit-deflate-frame")
    for index, peer in enumerate([*compressed, plain]):
        peer.send(0x1, hi(f"user{index}"))  # one user each (conn_per_user is 1)
        assert (await peer.recv())[1][0] == "~wse:welcome"
    await log.wait("connected", 4)
    assert server.deflate is not None
    shared = server.deflate.compressor(Agreement(server_no_context_takeover=True), False)
    assert shared is not None
    before = shared.messages
    server.broadcast("feed", ROWS)
    frames = [await peer.recv_raw() for peer in compressed]
    assert shared.messages == before + 1  # compressed once for the three
    assert len({frame for _, _, _, frame in frames}) == 1  # the same bytes to each
    assert frames[0][0] == RSV_COMPRESSED
    assert await plain.recv() == (0, ["feed", ROWS])  # the plain frame to the other


async def test_takeover_where_asked_compresses_per_connection(
    make_server: ServerFactory, peers: list[DeflatePeer], log: EventLog
) -> None:
    server = await make_server(compression=Compression(takeover=True))
    server.when.connected(log.hook("connected"))
    peer = await connect(peers, server, "permessage-deflate; client_max_window_bits")
    assert b"server_max_window_bits=12; client_max_window_bits=12" in peer.head
    peer.send(0x1, HI)
    await peer.recv()
    await log.wait("connected")
    inflater = zlib.decompressobj(-12)
    sizes = []
    rows = ROWS[:40]  # about 2.4 KB: the next message reaches back to it in a 4 KiB window
    for _ in range(2):
        server.broadcast("feed", rows)
        rsv, _, payload, _ = await peer.recv_raw()
        assert rsv == RSV_COMPRESSED
        assert json.loads(inflater.decompress(payload + SYNC_TAIL))[:2] == ["feed", rows]
        sizes.append(len(payload))
    assert sizes[1] < sizes[0] // 4  # the second refers to the first: one context, kept


# ---- bounds ------------------------------------------------------------------------------------


async def test_a_zip_bomb_closes_1009_with_bounded_memory(
    make_server: ServerFactory, peers: list[DeflatePeer]
) -> None:
    server = await echo_server(make_server, compression=Compression(), max_message_size=1 << 20)
    peer = await connect(peers, server)
    peer.send(0x1, HI)
    await peer.recv()
    bomb = deflate(b"[" + b" " * (200 << 20) + b"]")  # 200 MiB of JSON whitespace, ~200 KiB
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        peer.send(0x1, bomb, rsv=RSV_COMPRESSED)
        await peer.expect_close(1009)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # the limit and buffers, nothing near 200 MiB


async def test_a_fragmented_zip_bomb_closes_1009_at_its_first_fragment(
    make_server: ServerFactory, peers: list[DeflatePeer]
) -> None:
    # The reader inflates each fragment as it arrives: the first one that inflates past the
    # limit closes the connection, without waiting for (or keeping) the message's last one.
    server = await echo_server(make_server, compression=Compression(), max_message_size=1 << 20)
    peer = await connect(peers, server)
    peer.send(0x1, HI)
    await peer.recv()
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = compressor.compress(b"[" + b" " * (2 << 20)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(first) < 16 * 1024
    peer.send(0x1, first, fin=False, rsv=RSV_COMPRESSED)  # the rest never comes
    await asyncio.wait_for(peer.expect_close(1009), 5)


async def test_a_fragmented_text_closes_1007_at_the_first_fragment_that_inflates_bad(
    make_server: ServerFactory, peers: list[DeflatePeer]
) -> None:
    # A compressed text's UTF-8 is checked as each fragment inflates (RFC 6455 §8.1, as for
    # a plain one): the close comes while the message's last fragment is still unsent.
    server = await echo_server(make_server, compression=Compression())
    peer = await connect(peers, server)
    peer.send(0x1, HI)
    await peer.recv()
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = compressor.compress(b'["echo", "ok \xff') + compressor.flush(zlib.Z_SYNC_FLUSH)
    # the last fragment is never sent: a server that checked the message whole would wait
    peer.send(0x1, first, fin=False, rsv=RSV_COMPRESSED)
    await asyncio.wait_for(peer.expect_close(1007), 5)


async def test_a_stranger_may_not_inflate_past_its_limit(
    make_server: ServerFactory, peers: list[DeflatePeer]
) -> None:
    server = await echo_server(
        make_server,
        compression=Compression(),
        auth_max_message_size=16 * 1024,
        max_message_size=8 << 20,
    )
    stranger = await connect(peers, server)
    # within max_message_size, far past the stranger's limit: inflating stops at the latter
    big_hi = json.dumps(["~wse:hi", {"identity": "x", "meta": {"pad": " " * (7 << 20)}}])
    compressed = deflate(big_hi.encode())
    del big_hi
    assert len(compressed) < 16 * 1024  # small on the wire
    tracemalloc.start()
    try:
        stranger.send(0x1, compressed, rsv=RSV_COMPRESSED)
        await stranger.expect_close(1009)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20  # not the 7 MiB it would have inflated to
    # once accepted, the connection's own limit applies to compressed messages too
    member = await connect(peers, server)
    member.send(0x1, HI)
    await member.recv()
    pad = "a" * 20000
    member.send(0x1, deflate(json.dumps(["echo", pad]).encode()), rsv=RSV_COMPRESSED)
    assert (await member.recv())[1] == ["echo", pad]


async def test_a_strangers_compressed_messages_inflate_no_further_in_all_than_it_may_send(
    make_server: ServerFactory, peers: list[DeflatePeer]
) -> None:
    # While identify runs, messages are dropped, but each compressed one is inflated first:
    # a few bytes on the wire make 15 KiB, message after message. What all of them inflate
    # to is bounded by what a stranger may send in all, as if it had sent it plain.
    pending: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def slow_identify(request: Any) -> None:
        await pending  # never accepted during the test

    server = await make_server(
        slow_identify, compression=Compression(), auth_max_message_size=16 * 1024, auth_timeout=60
    )
    stranger = await connect(peers, server)
    stranger.send(0x1, HI)
    filler = deflate(json.dumps(["x", " " * (15 * 1024)]).encode())
    assert len(filler) < 100
    sent = 0
    for _ in range(server.stranger_budget // (15 * 1024) + 2):
        stranger.send(0x1, filler, rsv=RSV_COMPRESSED)
        sent += len(filler)
    assert sent < server.stranger_budget // 10  # far within its budget on the wire
    # closed long before its authentication deadline
    await asyncio.wait_for(stranger.expect_close(1008), 5)
    pending.cancel()


# ---- independent peers -------------------------------------------------------------------------


async def test_websockets_client_with_its_default_compression(make_server: ServerFactory) -> None:
    server = await echo_server(make_server, compression=Compression())
    # websockets offers "permessage-deflate; client_max_window_bits" and compresses every
    # message it sends; it inflates ours
    async with websockets_connect(url_of(server), subprotocols=[PROTOCOL]) as ws:  # type: ignore[list-item]
        assert ws.response is not None
        extensions = ws.response.headers["Sec-WebSocket-Extensions"]
        assert extensions.startswith("permessage-deflate; server_no_context_takeover")
        await ws.send(HI.decode())
        assert json.loads(await ws.recv())[0] == "~wse:welcome"
        for _ in range(3):
            await ws.send(json.dumps(["echo", ROWS]))
            assert json.loads(await ws.recv())[:2] == ["echo", ROWS]


async def test_node_ws_with_per_message_deflate(make_server: ServerFactory) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is part of the test setup (make setup)"
    server = await echo_server(make_server, compression=Compression())
    proc = await asyncio.create_subprocess_exec(
        node, str(NODE_PEER), url_of(server), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, out
    seen = dict(json.loads(line) for line in out.decode().splitlines())
    assert seen["extensions"].startswith("permessage-deflate")
    assert seen["echo"] is True  # its compressed message inflated here, ours there
    # about 12 KB of JSON each way: far fewer bytes crossed the socket
    assert seen["bytesWritten"] < 4000 and seen["bytesRead"] < 4000, seen


async def test_wse_client_both_ways(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await echo_server(make_server, compression=Compression())
    client = make_client(server, compression=Compression())
    client.channel.on("echo", log.hook("echo"))
    await client.connect("alice")
    client.send("echo", ROWS)
    assert await log.wait("echo") == [(ROWS,)]
    link = client._link
    assert link is not None and link.compressor is not None
    assert link.compressor.messages >= 1  # the client's message went compressed


async def test_wse_client_and_server_with_takeover_both_ways(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    options = {"compression": Compression(takeover=True, window_bits=10)}
    server = await echo_server(make_server, **options)
    client = make_client(server, **options)
    client.channel.on("echo", log.hook("echo"))
    await client.connect("alice")
    link = client._link
    assert link is not None and link.compressor is not None
    assert not link.compressor.shared and link.compressor.window_bits == 10
    for index in range(5):  # each message refers to the ones before, on both sides
        client.send("echo", ROWS[index : index + 30])
    assert [args for (args,) in await log.wait("echo", 5)] == [
        ROWS[index : index + 30] for index in range(5)
    ]


async def test_wse_client_fails_on_an_answer_it_did_not_offer(
    make_client: ClientFactory,
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = (await reader.readuntil(b"\r\n\r\n")).decode()
        key = next(
            line.split(":", 1)[1].strip()
            for line in request.split("\r\n")
            if line.lower().startswith("sec-websocket-key")
        )
        accept = base64.b64encode(
            __import__("hashlib")
            .sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode())
            .digest()
        ).decode()
        writer.write(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {PROTOCOL}\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
            "client_max_window_bits=9\r\n\r\n".encode()
        )
        await reader.read()
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        client = make_client(f"ws://127.0.0.1:{port}", compression=Compression())
        with pytest.raises(ConnectionFailed) as failed:
            await client.connect("alice")
        assert "client_max_window_bits" in failed.value.details["error"]
    finally:
        listener.close()


# ---- mounts ------------------------------------------------------------------------------------


async def mounted_extensions(transport: str, **options: Any) -> str | None:
    server = WseServer(lambda req: req.accept("u"), **options)
    host = await mount(transport, {"/ws": server})
    try:
        async with websockets_connect(host.url("/ws"), subprotocols=[PROTOCOL]) as ws:  # type: ignore[list-item]
            assert ws.response is not None
            await ws.send(HI.decode())
            assert json.loads(await ws.recv())[0] == "~wse:welcome"
            return ws.response.headers.get("Sec-WebSocket-Extensions")
    finally:
        await server.close()
        await host.stop()


async def test_aiohttp_mount_follows_the_option() -> None:
    from wse_fast import ServerLimits

    assert await mounted_extensions("aiohttp") is None
    on = await mounted_extensions("aiohttp", limits=ServerLimits(compression=Compression()))
    assert on is not None and on.startswith("permessage-deflate")


async def test_uvicorn_negotiates_by_itself_whatever_the_option() -> None:
    # uvicorn's websockets implementation has --ws-per-message-deflate on by default: the
    # host decides, ASGI gives the application no say
    off = await mounted_extensions("asgi")
    assert off is not None and off.startswith("permessage-deflate")
