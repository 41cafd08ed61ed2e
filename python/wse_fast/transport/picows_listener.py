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
from typing import Any

from picows import (
    WSAutoPingStrategy,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from picows.picows import WSProtocol  # type: ignore[attr-defined]  # not in picows's stub

from .admission import Admission, ReadGuard, Vet
from .picows_endpoint import Endpoint
from .server_socket import ListenerOptions, create_server


class PicowsLog(logging.LoggerAdapter[logging.Logger]):
    """What picows may log for the server's sockets: only what comes with an exception (a
    failure in code), unless the application sets a level on the ``picows`` (or
    ``picows.server``) logger itself, which then gets every record at that level or above.

    Everything else picows writes is one line or more per connection, of the peer's doing: a
    socket accepted, disconnected, a frame it could not parse, a pong that did not come, a
    write buffer past its limit. Those the server counts (:mod:`wse_fast.metrics`) and reports
    through its ``error`` event instead.

    An adapter rather than the Logger itself: picows gives every connection a child Logger
    of its own (about 600 bytes each) when handed a Logger.
    """

    def __init__(self) -> None:
        super().__init__(logging.getLogger("picows.server"))
        self._parent = logging.getLogger("picows")

    def _chosen_level(self) -> int:
        """The level the application set on picows's loggers (0: none)."""
        return self.logger.level or self._parent.level

    def isEnabledFor(self, level: int) -> bool:
        chosen = self._chosen_level()
        if chosen:
            return level >= chosen and self.logger.isEnabledFor(level)
        return level >= logging.ERROR and self.logger.isEnabledFor(level)

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self._chosen_level() or kwargs.get("exc_info"):
            super().log(level, msg, *args, **kwargs)


_PICOWS_LOG = PicowsLog()

Upgrade = Callable[[WSUpgradeRequest, ReadGuard], Any]
#: An upgrade decided by the node (``Listener`` routing to ``WseServer.upgrade``): the HTTP
#: status and body that refuse it, or the endpoint and the 101 response's own headers.
Verdict = tuple[int, str] | tuple[Endpoint, list[tuple[str, str]]]

#: How many distinct 101 responses a listener keeps to share (a handful in practice: one per
#: subprotocol and compression agreement); past it, each is made for its connection alone.
MAX_SHARED_RESPONSES = 16


class Answers:
    """The node's upgrades answered as picows's listener factory wants them (a listener, or a
    response with its listener): what keeps picows's classes out of the server.

    A 101 response is shared by every upgrade with the same headers: picows sets its
    Sec-WebSocket-Accept header and serialises it in the same call, so sharing it is safe, and
    saves each connection keeping a response object and header map of its own for its whole
    life.
    """

    __slots__ = ("_upgrade", "shared")

    def __init__(self, upgrade: Callable[[str, Any, ReadGuard, Any], Verdict]) -> None:
        self._upgrade = upgrade
        self.shared: dict[tuple[tuple[str, str], ...], WSUpgradeResponse] = {}

    def __call__(self, request: WSUpgradeRequest, guard: ReadGuard) -> Any:
        verdict = self._upgrade(request.path.decode("latin-1"), request.headers, guard, request)
        if isinstance(verdict[0], int):
            status, body = verdict
            response = WSUpgradeResponse.create_error_response(status, body.encode())  # type: ignore[union-attr]
            return WSUpgradeResponseWithListener(response, None)
        endpoint, headers = verdict
        if not headers:
            return endpoint  # picows's own 101 (no subprotocol for a client that offered none)
        key = tuple(headers)
        response = self.shared.get(key)
        if response is None:
            response = WSUpgradeResponse.create_101_response(extra_headers=headers)
            if len(self.shared) < MAX_SHARED_RESPONSES:
                self.shared[key] = response
        return WSUpgradeResponseWithListener(response, endpoint)


async def listen(
    upgrade: Upgrade,
    admission: Admission,
    options: ListenerOptions,
    *,
    host: str | None = None,
    port: int | None = None,
    sock: socket.socket | None = None,
    ssl: ssl_module.SSLContext | None = None,
    vet: Vet | None = None,
) -> asyncio.Server:
    """Serves WebSocket upgrades on ``host:port`` (or ``sock``); ``upgrade(request, guard)``
    answers each as picows's listener factory would. ``vet``: what may decide an upgrade
    before picows reads it, asynchronously (see :class:`ReadGuard`).

    Keepalive is the endpoints' sweep (:class:`Keepalive`), not picows's: picows's costs a
    task per connection.
    """
    keepalive = options.keepalive()

    def protocol() -> ReadGuard:
        def route(request: WSUpgradeRequest) -> Any:
            answer = upgrade(request, guard)
            endpoint = (
                answer.listener if isinstance(answer, WSUpgradeResponseWithListener) else answer
            )
            if isinstance(endpoint, Endpoint):
                endpoint.keepalive = keepalive
            return answer

        inner = WSProtocol(
            None,  # host and port: client side only
            None,  # path: client side only
            False,  # server side
            route,
            _PICOWS_LOG,
            True,  # disconnect when a listener callback raises
            # with a vet, the guard keeps the handshake timeout (picows's would close a socket
            # whose vet is running without an answer)
            options.handshake_timeout if vet is None else None,
            False,  # picows's keepalive: off (see Keepalive)
            20.0,
            20.0,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            options.auto_pong,
            options.max_frame_size,
            None,  # extra headers: client side only
            options.read_buffer_size,
        )
        guard = ReadGuard(inner, admission, options.stranger_budget, vet, options.handshake_timeout)
        return guard

    return await create_server(protocol, options, host=host, port=port, sock=sock, ssl=ssl)
