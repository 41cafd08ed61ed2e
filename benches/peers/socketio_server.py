"""python-socketio (on aiohttp), fanning out with emit() to everyone."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import socketio
import uvloop
from aiohttp import web

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
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    server = site._server
    assert server is not None
    print("READY", server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
