"""wse-fast for the compression benchmark: ``deflate_wse_fast.py PORT on|off``; a ``bench``
message ``{"count", "size"}`` broadcasts that many distinct JSON messages, one per loop turn."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvloop
from wse_fast import Compression, ServerLimits, WseServer

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from deflate_payload import SIZES, payloads


async def main(port: int, compression: bool) -> None:
    server = WseServer(
        lambda req: req.accept(req.conn_id),
        port=port,
        limits=ServerLimits(
            ping_interval=None,
            auth_timeout=120,
            max_pending_bytes=None,
            compression=Compression() if compression else None,
        ),
    )

    @server.channel.on("bench")
    async def bench(conn: Any, cmd: dict[str, Any]) -> None:
        messages = payloads(cmd["size"])
        for index in range(cmd["count"]):
            server.broadcast("tick", messages[index % len(messages)])
            await asyncio.sleep(0)

    for size in SIZES:
        payloads(size)  # made now, not on the clock
    await server.start()
    print("READY", server.port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2] == "on"))
