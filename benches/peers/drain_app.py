"""The server of the drain benchmark (benches/drain.py), served with ``wse-fast serve
drain_app:server`` from this directory: one procedure, ``work``, that takes as long as its
caller asks (the benchmark draws 0 to 2 s) and tells the caller it has started first, so that
the benchmark signals the process only once every call is running."""

from __future__ import annotations

import asyncio
from typing import Any

from wse_fast import Connection, IdentifyRequest, WseServer


def identify(req: IdentifyRequest) -> None:
    req.accept(str(req.identity))


server = WseServer(identify)


@server.register("work")
async def work(conn: Connection, seconds: Any) -> bool:
    """Works for ``seconds``; answers whether the server had begun to close by then."""
    conn.send("started")
    await asyncio.sleep(float(seconds))
    return server.closing
