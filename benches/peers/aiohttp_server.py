"""aiohttp's WebSocket server, fanning out with send_str() to each connection."""

from __future__ import annotations

import sys

import uvloop
from aiohttp import WSMsgType, web

sys.path.insert(0, __file__.rsplit("/", 2)[0])
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from aiohttp_site import serve
from wire import PROTOCOL
from wse_slice import Audience

audience = Audience(web.WebSocketResponse.send_str)


async def handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(
        protocols=(PROTOCOL,), autoping=True, heartbeat=None, max_msg_size=1 << 20
    )
    await ws.prepare(request)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await audience.on_text(ws, msg.data)
    finally:
        audience.leave(ws)
    return ws


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_get("/", handler)
    await serve(app, port)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
