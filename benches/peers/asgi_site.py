"""Serving an ASGI application for the benchmark: uvicorn as a user runs it, on uvloop.

uvicorn picks its WebSocket implementation by what is installed ("auto"): with the
``websockets`` package present, uvicorn 0.54 takes ``websockets-sansio`` (the websockets
library's sans-I/O protocol under uvicorn's own transport code), and its HTTP parser is
httptools when installed, h11 otherwise (which only the upgrade request goes through).
Its keepalive pings are off, as every peer's are: they would land between counted ticks.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn


async def serve(app: Any, port: int, path: str | None = None) -> None:
    """Serves ``app`` on 127.0.0.1 in the running loop, announces ``READY <port> [<path>]``
    (``path``: where the load generator connects, when not at the root of the peer's
    dialect) and runs until killed."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="none",  # already on uvloop
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=4096,
        ws_ping_interval=None,
    )
    config.load()
    server = uvicorn.Server(config)
    # Server.serve's steps, short of its signal handlers: the suite stops peers with SIGKILL
    server.lifespan = config.lifespan_class(config)
    await server.startup()
    bound = server.servers[0].sockets[0].getsockname()[1]
    print("READY", bound, *([path] if path else []), flush=True)
    await asyncio.Event().wait()
