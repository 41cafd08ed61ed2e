"""The slice of WSE the load generator needs, for a framework's own WebSocket handler that
sends text through a coroutine: ``hi`` is answered with the welcome, ``bench`` starts a
fan-out that awaits one send per connection per message."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from wire import WELCOME, tick_body

Conn = TypeVar("Conn")


class Audience(Generic[Conn]):
    """The greeted connections of one server, and the fan-outs sent to them."""

    def __init__(self, send_text: Callable[[Conn, str], Awaitable[None]]) -> None:
        self.send_text = send_text
        self.clients: set[Conn] = set()
        self.tasks: set[asyncio.Future[None]] = set()  # keeps running fan-outs referenced

    async def on_text(self, conn: Conn, text: str) -> None:
        kind, payload, _ = json.loads(text)
        if kind == "~wse:hi":
            self.clients.add(conn)
            await self.send_text(conn, WELCOME.decode())
        elif kind == "bench":
            fanout = self.fanout(payload["mode"], payload["count"], payload["size"])
            self.tasks.add(asyncio.ensure_future(fanout))

    def leave(self, conn: Conn) -> None:
        self.clients.discard(conn)

    async def fanout(self, mode: str, count: int, size: int) -> None:
        message = tick_body(size).decode()
        send = self.send_text
        for _ in range(count):
            for conn in list(self.clients):
                await send(conn, message)
            if mode == "paced":
                await asyncio.sleep(0)
