"""The application the drain tests serve with ``wse-fast serve tests.drain_app:server``: a
procedure that is still running when the stop signal comes, and ends only once the server
has begun to close; and one that never ends."""

from __future__ import annotations

import asyncio
from typing import Any

from wse_fast import Connection, IdentifyRequest, WseServer


def identify(req: IdentifyRequest) -> None:
    req.accept(str(req.identity))


server = WseServer(identify)


@server.register("hold")
async def hold(conn: Connection, payload: Any) -> dict[str, Any]:
    """Tells its caller it has started, then runs until the server is closing (the server
    has no event for that: it is looked at, as a handler's own work would go on) and a
    moment more; answers with the grace the server closes with."""
    conn.send("started")
    while not server.closing:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # still working after the signal: the drain must wait for it
    return {"grace": server.grace, "closing": server.closing}


@server.register("stuck")
async def stuck(conn: Connection, payload: Any) -> None:
    """Tells its caller it has started, and again once the server is closing; then never
    ends (until cancelled)."""
    conn.send("started")
    while not server.closing:
        await asyncio.sleep(0.01)
    conn.send("closing")
    await asyncio.Event().wait()
