"""wse-fast itself, as the benchmark sees it: each connection its own user."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import uvloop
from wse_fast import WseServer


async def main(port: int) -> None:
    server = WseServer(
        lambda req: req.accept(req.conn_id),
        port=port,
        ping_interval=None,
        auth_timeout=120,
        max_pending_bytes=None,  # the load generator reads as fast as it can
    )
    server.register("add", lambda conn, p: p["a"] + p["b"])

    @server.channel.on("bench")
    async def bench(conn: Any, cmd: dict[str, Any]) -> None:
        mode, count, size = cmd["mode"], cmd["count"], cmd["size"]
        payload = "x" * (size - 2)
        broadcast = server.broadcast
        if mode == "burst":
            for _ in range(count):
                broadcast("tick", payload)
        elif mode == "paced":
            for _ in range(count):
                broadcast("tick", payload)
                await asyncio.sleep(0)
        elif mode == "rate":  # fixed schedule; the payload starts with the send time
            loop = asyncio.get_running_loop()
            interval, due = 1.0 / cmd["rate"], loop.time()
            filler = "x" * (size - 2 - 19)
            for _ in range(count):
                broadcast("tick", f"{time.monotonic_ns():019d}{filler}")
                due += interval
                await asyncio.sleep(max(0.0, due - loop.time()))

    await server.start()
    print("READY", server.port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
