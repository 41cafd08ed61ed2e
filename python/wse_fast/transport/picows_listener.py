"""The listening socket: picows protocols, each behind a read guard until it is accepted.

picows's ``ws_create_server`` makes the protocol for each accepted socket itself, which leaves
no place for the guard (:mod:`.admission`) and hands the upgrade hook no remote address; so the
server is made here with the same protocol class and arguments (picows 2.3's constructor, pinned
in the project's dependencies).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as ssl_module
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from picows import WSAutoPingStrategy, WSUpgradeRequest
from picows.picows import WSProtocol  # type: ignore[attr-defined]  # not in picows's stub

from .admission import Admission, ReadGuard

#: picows gives every connection its own child ``logging.Logger`` (about 600 bytes each) when
#: handed a Logger; an adapter over the same logger keeps its records and costs nothing per
#: connection.
_PICOWS_LOG = logging.LoggerAdapter(logging.getLogger("picows.server"))

Upgrade = Callable[[WSUpgradeRequest, ReadGuard], Any]


@dataclass(frozen=True, slots=True)
class ListenerOptions:
    max_frame_size: int
    handshake_timeout: float | None
    ping_interval: float | None
    ping_timeout: float
    read_buffer_size: int
    auto_pong: bool  # picows answers pings itself (else the endpoint does)
    stranger_budget: int  # bytes a socket may send before it is accepted


async def listen(
    upgrade: Upgrade,
    admission: Admission,
    options: ListenerOptions,
    *,
    host: str | None = None,
    port: int | None = None,
    sock: socket.socket | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> asyncio.Server:
    """Serves WebSocket upgrades on ``host:port`` (or ``sock``); ``upgrade(request, guard)``
    answers each as picows's listener factory would."""
    loop = asyncio.get_running_loop()

    def protocol() -> ReadGuard:
        def route(request: WSUpgradeRequest) -> Any:
            return upgrade(request, guard)

        inner = WSProtocol(
            None,  # host and port: client side only
            None,  # path: client side only
            False,  # server side
            route,
            _PICOWS_LOG,
            True,  # disconnect when a listener callback raises
            options.handshake_timeout,
            options.ping_interval is not None,
            options.ping_interval or 20.0,
            options.ping_timeout,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            options.auto_pong,
            options.max_frame_size,
            None,  # extra headers: client side only
            options.read_buffer_size,
        )
        guard = ReadGuard(inner, admission, options.stranger_budget)
        return guard

    where: dict[str, Any] = {"sock": sock} if sock is not None else {"host": host, "port": port}
    if ssl is not None and options.handshake_timeout is not None:
        # uvloop reports a TLS socket only once its TLS handshake is done: bound that too
        where["ssl_handshake_timeout"] = options.handshake_timeout
    return await loop.create_server(protocol, ssl=ssl, **where)
