"""The websockets library, fanning out with its broadcast()."""

from __future__ import annotations

import asyncio
import json
import sys

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from wire import WELCOME, tick_body

clients: set[ServerConnection] = set()

tasks: set[asyncio.Future[None]] = set()  # keeps running fan-outs referenced


async def fanout(mode: str, count: int, size: int) -> None:
    message = tick_body(size).decode()
    for _ in range(count):
        broadcast(clients, message)
        if mode == "paced":
            await asyncio.sleep(0)


async def handler(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            kind, payload, _ = json.loads(message)
            if kind == "~wse:hi":
                clients.add(ws)
                await ws.send(WELCOME.decode())
            elif kind == "bench":
                tasks.add(
                    asyncio.ensure_future(
                        fanout(payload["mode"], payload["count"], payload["size"])
                    )
                )
    finally:
        clients.discard(ws)


async def main(port: int) -> None:
    async with serve(
        handler,
        "127.0.0.1",
        port,
        subprotocols=["wse-default-json"],
        ping_interval=None,
        max_queue=None,
    ) as server:  # type: ignore[list-item]
        print("READY", server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
