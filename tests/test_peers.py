"""Independent WebSocket implementations against the wse-fast server: on its own listener, and
mounted under uvicorn and aiohttp."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgpack
import pytest
import websockets
from wse_fast import IdentifyRequest

from tests.conftest import EventLog, ServerFactory, accept_identity, url_of
from tests.hosts import TRANSPORTS

NODE_PEER = Path(__file__).parent / "node" / "wse_peer.mjs"


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Each peer against picows's own listener, and mounted under uvicorn (Starlette's
    WebSocketRoute) and aiohttp."""
    return str(request.param)


async def test_node_ws_client(make_server: ServerFactory, log: EventLog) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is part of the test setup (make setup)"

    def identify(req: IdentifyRequest) -> None:
        log.hook("path")(req.request and req.request.path)
        accept_identity(req)

    server = await make_server(identify)
    server.when.joined(log.hook("joined"))
    server.when.disconnected(log.hook("disconnected"))
    server.register("add", lambda conn, p: p["a"] + p["b"])

    @server.channel.on("hello")
    async def hello(conn: Any, payload: Any) -> None:
        conn.send("from-server", payload)
        log.hook("rpc")(await conn.call("node-rp", {"q": 1}))
        conn.send("bye")

    proc = await asyncio.create_subprocess_exec(
        node, str(NODE_PEER), url_of(server), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, out
    seen = [json.loads(line) for line in out.decode().splitlines()]
    assert seen == [
        ["protocol", "wse-default-json"],
        ["welcome", {"hey": "welcome data"}],
        ["add", 42],
        ["missing", {"code": "wse.server.rp.not-registered"}],
        ["message", ["from-server", {"from": "node"}, False]],  # JSON travels in text frames
        ["message", ["bye", None, False]],
        ["close", [1000, "wse.by-client"]],  # the server echoed the client's close
    ]
    assert await log.wait("rpc") == [({"node": {"q": 1}},)]
    [(client, meta)] = log.of("joined")
    assert client.cid == "node-user" and meta == {"device": "node"}
    # the peer reached the server where it is served: a mounted one at its path
    assert log.of("path") == [(urlsplit(url_of(server)).path or "/",)]
    [(_conn, code, reason)] = await log.wait("disconnected")
    assert (code, reason) == (1000, "wse.by-client")


async def test_websockets_client_speaking_msgpack(make_server: ServerFactory) -> None:
    from wse_fast import MsgpackProtocol

    server = await make_server(protocol=MsgpackProtocol())
    server.register("echo", lambda conn, p: p)
    url = url_of(server)
    async with websockets.connect(url, subprotocols=["wse-msgpack"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "wse-msgpack"
        await ws.send(msgpack.packb(["~wse:hi", {"identity": "bin", "meta": {}}, None]))
        welcome = await ws.recv()
        assert isinstance(welcome, bytes)  # binary frames
        assert msgpack.unpackb(welcome) == ["~wse:welcome", {"hey": "welcome data"}, None]
        value = {"bytes": b"\x00\x01", "n": [1, 2.5, None]}
        await ws.send(msgpack.packb(["echo", value, "STAMP00001"]))
        assert msgpack.unpackb(await ws.recv()) == ["~wse:response", value, "STAMP00001"]
