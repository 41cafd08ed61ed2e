"""The wse-fast server every wse-fast peer runs, whatever carries it: each connection its own
user, an ``add`` procedure for the RPC part and a ``bench`` command for the fan-out part."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from wse_fast import ServerLimits, WseServer


def bench_server(identify: Callable[[Any], Any] | None = None, **transport: Any) -> WseServer:
    """The benchmarked server; ``transport`` holds what only its own listener needs (port).
    ``identify``: by default, each connection is a user of its own named by its conn_id."""
    server = WseServer(
        identify or (lambda req: req.accept(req.conn_id)),
        # the load generator reads as fast as it can, and authenticates thousands at once
        limits=ServerLimits(ping_interval=None, auth_timeout=120, max_pending_bytes=None),
        **transport,
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

    return server
