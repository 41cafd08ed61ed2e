"""Independent WebSocket implementations against the wse-fast server."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import msgpack
import websockets

from tests.conftest import EventLog, ServerFactory

NODE_PEER = Path(__file__).parent / "node" / "wse_peer.mjs"


async def test_node_ws_client(make_server: ServerFactory, log: EventLog) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is part of the test setup (make setup)"
    server = await make_server()
    server.when.joined(log.hook("joined"))
    server.when.disconnected(log.hook("disconnected"))
    server.register("add", lambda conn, p: p["a"] + p["b"])

    @server.channel.on("hello")
    async def hello(conn: Any, payload: Any) -> None:
        conn.send("from-server", payload)
        log.hook("rpc")(await conn.call("node-rp", {"q": 1}))
        conn.send("bye")

    proc = await asyncio.create_subprocess_exec(
        node, str(NODE_PEER), f"ws://127.0.0.1:{server.port}", stdout=asyncio.subprocess.PIPE
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
    [(_conn, code, reason)] = await log.wait("disconnected")
    assert (code, reason) == (1000, "wse.by-client")


async def test_websockets_client_speaking_msgpack(make_server: ServerFactory) -> None:
    from wse_fast import MsgpackProtocol

    server = await make_server(protocol=MsgpackProtocol())
    server.register("echo", lambda conn, p: p)
    async with websockets.connect(
        f"ws://127.0.0.1:{server.port}", subprotocols=["wse-msgpack"]
    ) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "wse-msgpack"
        await ws.send(msgpack.packb(["~wse:hi", {"identity": "bin", "meta": {}}, None]))
        welcome = await ws.recv()
        assert isinstance(welcome, bytes)  # binary frames
        assert msgpack.unpackb(welcome) == ["~wse:welcome", {"hey": "welcome data"}, None]
        value = {"bytes": b"\x00\x01", "n": [1, 2.5, None]}
        await ws.send(msgpack.packb(["echo", value, "STAMP00001"]))
        assert msgpack.unpackb(await ws.recv()) == ["~wse:response", value, "STAMP00001"]
