"""RFC 6455 framing rules, with hand-built frames over a raw TCP socket."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from collections.abc import AsyncIterator

import pytest
from wse_fast import codec

from tests.conftest import EventLog, ServerFactory

HI = json.dumps(["~wse:hi", {"identity": "alice", "meta": {}}]).encode()


class RawPeer:
    """A WebSocket client made of a socket and the codec's frame helpers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, protocol: str = "wse-default-json") -> RawPeer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        assert f"sec-websocket-protocol: {protocol}".encode() in head.lower()
        return cls(reader, writer)

    def send(self, opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> None:
        self.writer.write(codec.build_frame(opcode, payload, fin=fin, mask=True, rsv=rsv))

    async def recv(self) -> tuple[int, bytes]:
        head = await self.reader.readexactly(2)
        more = {126: 2, 127: 8}.get(head[1] & 0x7F, 0)
        head += await self.reader.readexactly(more)
        parsed = codec.parse_frame_header(head)
        assert parsed is not None
        fin, rsv, opcode, key, length, _ = parsed
        assert fin and not rsv and key is None  # the server sends whole, unmasked frames
        return opcode, await self.reader.readexactly(length)

    async def expect_close(self, code: int) -> str:
        opcode, body = await asyncio.wait_for(self.recv(), 5)
        while opcode != 0x8:  # skip what was sent before the close
            opcode, body = await asyncio.wait_for(self.recv(), 5)
        assert struct.unpack("!H", body[:2])[0] == code, body
        return body[2:].decode()

    async def hello(self) -> None:
        self.send(0x1, HI)
        opcode, body = await self.recv()
        assert (opcode, json.loads(body)[0]) == (0x1, "~wse:welcome")


@pytest.fixture
async def peer(make_server: ServerFactory) -> AsyncIterator[RawPeer]:
    server = await make_server(max_message_size=1024)
    server.channel.on("echo", lambda conn, p: conn.send("echo", p))
    raw = await RawPeer.connect(server.port)
    yield raw
    raw.writer.close()  # a peer that never answers the close: the server waits no longer


async def test_fragmented_text_with_a_ping_between_fragments(peer: RawPeer) -> None:
    text = json.dumps(["~wse:hi", {"identity": "alice", "meta": {"note": "fragmented ✓"}}]).encode()
    cut1, cut2 = 5, len(text) - 3  # the second cut falls inside the 3-byte '✓'
    peer.send(0x1, text[:cut1], fin=False)
    peer.send(0x9, b"keepalive")  # control frames may come between fragments
    peer.send(0x0, text[cut1:cut2], fin=False)
    peer.send(0x0, text[cut2:], fin=True)
    assert await peer.recv() == (0xA, b"keepalive")
    opcode, body = await peer.recv()
    assert opcode == 0x1 and json.loads(body) == ["~wse:welcome", {"hey": "welcome data"}, None]


async def test_whole_and_fragmented_messages_alternate(peer: RawPeer) -> None:
    await peer.hello()
    for n in range(3):  # the assembler made for the first fragmented message serves again
        whole = json.dumps(["echo", f"whole {n}"]).encode()
        peer.send(0x1, whole)
        split = json.dumps(["echo", f"split {n}"]).encode()
        peer.send(0x1, split[:4], fin=False)
        peer.send(0x0, split[4:], fin=True)
        for expected in (f"whole {n}", f"split {n}"):
            opcode, body = await peer.recv()
            assert opcode == 0x1 and json.loads(body) == ["echo", expected, None]


async def test_multibyte_text_round_trip(peer: RawPeer) -> None:
    await peer.hello()
    peer.send(0x1, json.dumps(["echo", "é" * 10]).encode())
    opcode, body = await peer.recv()
    assert opcode == 0x1 and json.loads(body) == ["echo", "é" * 10, None]


async def test_invalid_utf8_in_one_frame_closes_1007(peer: RawPeer) -> None:
    peer.send(0x1, b'["~wse:hi",{"identity":"\xff"}]')
    await peer.expect_close(1007)


async def test_invalid_utf8_split_across_fragments_closes_1007(peer: RawPeer) -> None:
    await peer.hello()
    peer.send(0x1, b'["echo","\xe2\x82', fin=False)  # valid so far: an unfinished euro sign
    peer.send(0x0, b'\x28"]', fin=True)  # ... that does not continue
    await peer.expect_close(1007)


async def test_text_ending_inside_a_character_closes_1007(peer: RawPeer) -> None:
    await peer.hello()
    peer.send(0x1, b'["echo","a"]', fin=False)
    peer.send(0x0, b"\xe2\x82", fin=True)
    await peer.expect_close(1007)


@pytest.mark.parametrize("rsv", [1, 2, 4])
async def test_reserved_bits_close_1002(peer: RawPeer, rsv: int) -> None:
    peer.send(0x1, HI, rsv=rsv)
    await peer.expect_close(1002)


async def test_orphan_continuation_closes_1002(peer: RawPeer) -> None:
    peer.send(0x0, HI, fin=True)
    await peer.expect_close(1002)


async def test_new_message_inside_a_fragmented_one_closes_1002(peer: RawPeer) -> None:
    peer.send(0x1, HI[:4], fin=False)
    peer.send(0x1, HI, fin=True)
    await peer.expect_close(1002)


async def test_message_over_the_limit_across_fragments_closes_1009(peer: RawPeer) -> None:
    await peer.hello()
    peer.send(0x1, b'["echo","' + b"a" * 600, fin=False)
    peer.send(0x0, b"a" * 600 + b'"]', fin=True)
    await peer.expect_close(1009)


async def test_single_frame_over_the_limit_closes_1009(peer: RawPeer) -> None:
    await peer.hello()
    peer.send(0x1, b'["echo","' + b"a" * 2000 + b'"]')
    await peer.expect_close(1009)


async def test_close_handshake_is_answered_and_tcp_closed(peer: RawPeer) -> None:
    await peer.hello()
    peer.send(0x8, struct.pack("!H", 1000) + b"bye")
    assert await peer.expect_close(1000) == "bye"
    assert await asyncio.wait_for(peer.reader.read(), 5) == b""  # the server closed TCP


async def test_ping_is_answered_with_the_same_payload(peer: RawPeer) -> None:
    peer.send(0x9, b"are you there")
    assert await peer.recv() == (0xA, b"are you there")


async def test_unpackable_message_after_auth_closes_with_protocol_error(peer: RawPeer) -> None:
    await peer.hello()
    peer.send(0x1, b"this is not json")
    assert await peer.expect_close(1000) == "wse.protocol-error"


async def test_long_close_reason_is_cut_on_a_character_boundary(make_server: ServerFactory) -> None:
    server = await make_server()
    peer = await RawPeer.connect(server.port)
    await peer.hello()
    [conn] = server.connections.values()
    conn.drop("é" * 100)  # 200 bytes of UTF-8: more than a close frame may carry
    reason = await peer.expect_close(1000)  # decoding it would fail on a split character
    assert reason == "é" * 61  # 122 bytes: the 123rd would split a character
    peer.writer.close()


async def test_a_cut_close_reason_is_reported_as_it_was_sent(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await make_server()
    server.when.disconnected(log.hook("disconnected"))
    peer = await RawPeer.connect(server.port)
    await peer.hello()
    [conn] = server.connections.values()
    conn.drop("é" * 100)
    assert await peer.expect_close(1000) == "é" * 61
    peer.writer.close()  # no answer (the peer's Close would name the closure): just gone
    [(_, code, reason)] = await log.wait("disconnected")
    assert (code, reason) == (1000, "é" * 61)  # what the peer was told, not what was asked
