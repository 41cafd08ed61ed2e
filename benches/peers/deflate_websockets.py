"""The websockets library with its default compression (permessage-deflate with context
takeover, 12-bit windows, memLevel 5) for the compression benchmark: ``bench`` broadcasts
``count`` distinct JSON messages with ``broadcast()``, one per loop turn."""

from __future__ import annotations

import asyncio
import json
import sys

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from deflate_payload import SIZES, envelope, payloads

WELCOME = json.dumps(["~wse:welcome", None, None], separators=(",", ":"))
clients: set[ServerConnection] = set()
tasks: set[asyncio.Future[None]] = set()
#: made before READY, not on the clock
MESSAGES = {size: [envelope(p).decode() for p in payloads(size)] for size in SIZES}


async def fanout(count: int, size: int) -> None:
    messages = MESSAGES[size]
    for index in range(count):
        broadcast(clients, messages[index % len(messages)])
        await asyncio.sleep(0)


async def handler(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            kind, payload, _ = json.loads(message)
            if kind == "~wse:hi":
                clients.add(ws)
                await ws.send(WELCOME)
            elif kind == "bench":
                tasks.add(asyncio.ensure_future(fanout(payload["count"], payload["size"])))
    finally:
        clients.discard(ws)


async def main(port: int) -> None:
    async with serve(
        handler,
        "127.0.0.1",
        port,
        subprotocols=["wse-default-json"],  # type: ignore[list-item]
        ping_interval=None,
        max_queue=None,
    ) as server:  # compression="deflate" is websockets' default
        print("READY", server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
