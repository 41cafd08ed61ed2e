"""python-socketio (on aiohttp), fanning out with emit() to everyone."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import socketio
import uvloop
from aiohttp import web

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from aiohttp_site import serve

# Pings would land between the counted ticks; the runs are far shorter than an hour.
sio = socketio.AsyncServer(async_mode="aiohttp", ping_interval=3600, ping_timeout=3600)


@sio.on("bench")
async def bench(sid: str, cmd: dict[str, Any]) -> None:
    payload = "x" * (cmd["size"] - 2)
    for _ in range(cmd["count"]):
        await sio.emit("tick", payload)
        if cmd["mode"] == "paced":
            await asyncio.sleep(0)


async def main(port: int) -> None:
    app = web.Application()
    sio.attach(app)
    await serve(app, port)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
