"""Transport duties: TLS, keepalive, and what a silent peer costs."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from pathlib import Path

import pytest
from wse_fast import ServerLimits, codec

from tests.conftest import (
    ClientFactory,
    EventLog,
    RecordingTransport,
    ServerFactory,
    listen_backlogs,
    somaxconn,
)
from tests.test_framing import RawPeer


def make_certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_wss_end_to_end(
    make_server: ServerFactory, make_client: ClientFactory, tmp_path: Path
) -> None:
    cert, key = make_certificate(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    server = await make_server(ssl=server_ctx)
    server.register("secure?", lambda conn, p: "yes")
    client = make_client(f"wss://127.0.0.1:{server.port}", ssl=client_ctx)
    assert await client.connect("alice") == {"hey": "welcome data"}
    assert await client.call("secure?") == "yes"


async def test_idle_peer_that_never_answers_pings_is_dropped(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await make_server(ping_interval=0.1, ping_timeout=0.1)
    server.when.disconnected(log.hook("disconnected"))
    peer = await RawPeer.connect(server.port)
    await peer.hello()
    opcodes = []
    with pytest.raises(asyncio.IncompleteReadError):  # the server hangs up on the silent peer
        while True:
            opcode, _ = await asyncio.wait_for(peer.recv(), 5)
            opcodes.append(opcode)
    assert 0x9 in opcodes  # it was pinged first
    [(conn, code, reason)] = await log.wait("disconnected")
    assert (conn.cid, code, reason) == ("alice", 1006, "")  # no close frame: it was gone
    peer.writer.close()


async def test_client_answering_pings_stays(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(ping_interval=0.05, ping_timeout=0.05)
    server.when.disconnected(log.hook("disconnected"))
    server.register("still-there", lambda conn, p: True)
    client = make_client(server)
    await client.connect("alice")
    link = client._link
    assert link is not None and link.endpoint is not None
    writes: list[bytes] = []  # every frame the endpoint sends goes through its transport
    link.endpoint.under = RecordingTransport(link.endpoint.under, writes)
    # Keepalive is about time passing: stay idle for several ping intervals and timeouts.
    await asyncio.sleep(0.6)
    pongs = [frame for frame in writes if frame[0] == 0x8A]  # FIN + PONG, alone in a turn
    assert len(pongs) >= 3
    assert all(pong[1] & 0x80 for pong in pongs)  # masked, as a client must
    assert log.of("disconnected") == []
    assert await client.call("still-there") is True


async def test_keepalive_keeps_no_task_per_connection(make_server: ServerFactory) -> None:
    # Keepalive is one sweep per loop; picows's own is a task (about 1.8 KiB) per connection.
    server = await make_server()  # keepalive on, at the defaults
    assert server.limits.ping_interval is not None
    before = len(asyncio.all_tasks())
    peers = [await RawPeer.connect(server.port) for _ in range(20)]
    for peer in peers:
        await peer.hello()
    assert len(server.clients["alice"].conns) == 20
    assert len(asyncio.all_tasks()) == before
    for peer in peers:
        peer.writer.close()


async def test_busy_peer_is_not_pinged(make_server: ServerFactory) -> None:
    # A ping goes only to a connection quiet for ping_interval: any frame counts as life.
    server = await make_server(ping_interval=0.1, ping_timeout=0.1)
    server.channel.on("echo", lambda conn, p: conn.send("echo", p))
    peer = await RawPeer.connect(server.port)
    await peer.hello()
    loop = asyncio.get_running_loop()
    end = loop.time() + 0.5  # five ping intervals, each with several messages in it
    opcodes = set()
    while loop.time() < end:
        peer.send(0x1, b'["echo", {}]')
        opcode, _ = await peer.recv()
        opcodes.add(opcode)
        await asyncio.sleep(0.02)  # the pace of the client's messages, not synchronisation
    assert opcodes == {0x1}  # echoes only, never a ping
    peer.writer.close()


async def test_a_peer_still_sending_one_long_frame_is_kept(make_server: ServerFactory) -> None:
    # Its pong must wait behind the frame: the keepalive sees no whole frame for many ping
    # intervals and timeouts, but data keeps arriving, so the connection stays.
    server = await make_server(ping_interval=0.1, ping_timeout=0.1)
    server.channel.on("echo", lambda conn, p: conn.send("echo", p))
    peer = await RawPeer.connect(server.port)
    await peer.hello()
    text = "x" * 20000
    frame = codec.build_frame(0x1, json.dumps(["echo", text]).encode(), mask=True)
    pieces = 20
    for i in range(pieces):
        peer.writer.write(frame[i * len(frame) // pieces : (i + 1) * len(frame) // pieces])
        await peer.writer.drain()
        await asyncio.sleep(0.05)  # the pace of a slow link (1 s in all), not synchronisation
    opcode, body = await asyncio.wait_for(peer.recv(), 5)
    while opcode == 0x9:  # the pings sent meanwhile
        opcode, body = await asyncio.wait_for(peer.recv(), 5)
    assert (opcode, json.loads(body)[:2]) == (0x1, ["echo", text])
    peer.writer.close()


def test_ping_timeout_longer_than_the_interval_is_refused_up_front() -> None:
    from wse_fast import ServerLimits

    with pytest.raises(ValueError, match="ping_timeout"):
        ServerLimits(ping_interval=1, ping_timeout=2)


async def test_the_accept_queue_defaults_to_the_kernels_bound(make_server: ServerFactory) -> None:
    # uvloop's own default is 100: a restart's reconnect storm overflowed it (issue 17)
    server = await make_server()
    assert server.limits.listen_backlog is None
    # at least max_unauthenticated (2048) is asked for; the kernel caps it at somaxconn
    assert somaxconn() > 100  # (the kernels this runs on: 4096 since Linux 5.4)
    assert listen_backlogs(server.port) == [somaxconn()]


async def test_the_accept_queue_is_a_limit(make_server: ServerFactory) -> None:
    server = await make_server(listen_backlog=321)
    assert listen_backlogs(server.port) == [321]


def test_the_accept_queue_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="listen_backlog"):
        ServerLimits(listen_backlog=0)
