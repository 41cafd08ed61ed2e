"""A minimal picows server: one prebuilt frame written per delivery, nothing else; and the
``add`` procedure answered with orjson (parse, add, encode, send), as a bare server would."""

from __future__ import annotations

import asyncio
import sys

import orjson
import uvloop
from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from wire import PROTOCOL, WELCOME, server_frame, tick_body

WELCOME_FRAME = server_frame(WELCOME)
clients: list[WSTransport] = []

tasks: set[asyncio.Future[None]] = set()  # keeps running fan-outs referenced


async def fanout(mode: str, count: int, size: int) -> None:
    frame = server_frame(tick_body(size))
    writers = [t.underlying_transport.write for t in clients]
    for _ in range(count):
        for write in writers:
            write(frame)
        if mode == "paced":
            await asyncio.sleep(0)


class Listener(WSListener):  # type: ignore[misc]
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        kind, payload, stamp = orjson.loads(frame.get_payload_as_memoryview())
        if kind == "add":
            answer = orjson.dumps(["~wse:response", payload["a"] + payload["b"], stamp])
            transport.send(WSMsgType.TEXT, answer)
        elif kind == "~wse:hi":
            clients.append(transport)
            transport.underlying_transport.write(WELCOME_FRAME)
        elif kind == "bench":
            tasks.add(
                asyncio.ensure_future(fanout(payload["mode"], payload["count"], payload["size"]))
            )

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if transport in clients:
            clients.remove(transport)


def upgrade(request: object) -> WSUpgradeResponseWithListener:
    response = WSUpgradeResponse.create_101_response(
        extra_headers={"Sec-WebSocket-Protocol": PROTOCOL}
    )
    return WSUpgradeResponseWithListener(response, Listener())


async def main(port: int) -> None:
    server = await ws_create_server(upgrade, "127.0.0.1", port, use_aiofastnet=False)
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
