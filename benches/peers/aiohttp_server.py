"""aiohttp's WebSocket server, fanning out with send_str() to each connection."""

from __future__ import annotations

import asyncio
import json
import sys

import uvloop
from aiohttp import WSMsgType, web

sys.path.insert(0, __file__.rsplit("/", 2)[0])
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from aiohttp_site import serve
from wire import PROTOCOL, WELCOME, tick_body

clients: set[web.WebSocketResponse] = set()
tasks: set[asyncio.Future[None]] = set()  # keeps running fan-outs referenced


async def fanout(mode: str, count: int, size: int) -> None:
    message = tick_body(size).decode()
    for _ in range(count):
        for ws in list(clients):
            await ws.send_str(message)
        if mode == "paced":
            await asyncio.sleep(0)


async def handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(
        protocols=(PROTOCOL,), autoping=True, heartbeat=None, max_msg_size=1 << 20
    )
    await ws.prepare(request)
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            kind, payload, _ = json.loads(msg.data)
            if kind == "~wse:hi":
                clients.add(ws)
                await ws.send_str(WELCOME.decode())
            elif kind == "bench":
                tasks.add(
                    asyncio.ensure_future(
                        fanout(payload["mode"], payload["count"], payload["size"])
                    )
                )
    finally:
        clients.discard(ws)
    return ws


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_get("/", handler)
    await serve(app, port)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
