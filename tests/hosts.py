"""Real host servers for mounted WSE servers, started in the test's own event loop: uvicorn
with a Starlette application, and aiohttp, each on a socket of its own on 127.0.0.1."""

from __future__ import annotations

import socket
import weakref
from collections.abc import Mapping
from typing import Any

import uvicorn
from aiohttp import web
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from wse_fast import WseServer

TRANSPORTS = ("picows", "asgi", "aiohttp")
#: Where each test server listens (its own listener, or the host it is mounted on).
URLS: weakref.WeakKeyDictionary[WseServer, str] = weakref.WeakKeyDictionary()


def bound_socket(port: int = 0) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


class Host:
    """A running host server; ``port`` is where it listens."""

    def __init__(self, port: int, stop: Any) -> None:
        self.port = port
        self._stop = stop

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        await self._stop()


async def serve_asgi(app: Any, port: int = 0, lifespan: str = "off", **config: Any) -> Host:
    """uvicorn serving ``app`` (its default WebSocket implementation, websockets)."""
    sock = bound_socket(port)
    settings = uvicorn.Config(app, lifespan=lifespan, log_level="warning", loop="none", **config)
    settings.load()
    server = uvicorn.Server(settings)
    # Server.serve's steps without its signal handlers (pytest keeps its own)
    server.lifespan = settings.lifespan_class(settings)
    await server.startup(sockets=[sock])
    assert not server.should_exit, "the lifespan startup failed"

    async def stop() -> None:
        server.should_exit = True
        await server.shutdown()
        sock.close()

    return Host(sock.getsockname()[1], stop)


async def serve_aiohttp(app: web.Application, port: int = 0) -> Host:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    sock = bound_socket(port)
    site = web.SockSite(runner, sock)
    await site.start()
    return Host(sock.getsockname()[1], runner.cleanup)


async def mount(transport: str, routes: Mapping[str, WseServer], port: int = 0) -> Host:
    """Serves each server at its path on one port: Starlette's ``WebSocketRoute`` under
    uvicorn for ``asgi``, ``router.add_get`` for ``aiohttp``."""
    if transport == "asgi":
        app = Starlette(routes=[WebSocketRoute(path, s.asgi) for path, s in routes.items()])
        return await serve_asgi(app, port)
    if transport == "aiohttp":
        aio = web.Application()
        for path, server in routes.items():
            aio.router.add_get(path, server.aiohttp_handler)
        return await serve_aiohttp(aio, port)
    raise ValueError(transport)
