"""Serving an aiohttp application for the benchmark, as the aiohttp-based peers share it."""

from __future__ import annotations

import asyncio

from aiohttp import web


async def serve(app: web.Application, port: int, path: str | None = None) -> None:
    """Serves ``app`` on 127.0.0.1, announces ``READY <port> [<path>]`` (``path``: where the
    load generator connects, when not at the root of the peer's dialect) and runs until
    killed."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    server = site._server
    assert server is not None
    bound = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print("READY", bound, *([path] if path else []), flush=True)
    await asyncio.Event().wait()
