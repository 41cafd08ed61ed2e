"""Starlette's own WebSocket handler under uvicorn, fanning out with send_text() to each
connection: what wse-fast mounted in the same application is measured against."""

from __future__ import annotations

import sys

import uvloop
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

sys.path.insert(0, __file__.rsplit("/", 2)[0])
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from asgi_site import serve
from wire import PROTOCOL
from wse_slice import Audience

PATH = "/ws"
audience = Audience(WebSocket.send_text)


async def handler(ws: WebSocket) -> None:
    await ws.accept(subprotocol=PROTOCOL)
    try:
        while True:
            await audience.on_text(ws, await ws.receive_text())
    except WebSocketDisconnect:
        pass
    finally:
        audience.leave(ws)


async def main(port: int) -> None:
    await serve(Starlette(routes=[WebSocketRoute(PATH, handler)]), port, PATH)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
