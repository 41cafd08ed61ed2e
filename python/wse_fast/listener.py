"""wse-fast's own listening socket (on uvloop), serving one or more servers by path.

``WseServer.start()`` makes a listener for its server alone, on every path. Several servers
share one port through a :class:`Listener` with a route for each::

    listener = Listener({"/chat": chat, "/admin": admin}, port=4200)
    await listener.start()
    ...
    await listener.close()  # stops listening and closes both servers

An upgrade to a path with no route gets HTTP 404. What is settled before the path is known
(when the TCP connection is accepted) is the listener's: TLS, the stranger counts, the
upgrade-request timeout and the accept queue (``listen_backlog``) come from the first server;
the byte budget of a stranger is the largest of its servers' (each server applies its own
message limits once the path has chosen it).

Every accepted socket is read by wse-fast itself (:mod:`.transport.server_socket`); picows is
the client's alone. ``WSE_FAST_SERVER_SOCKETS=picows``, which put picows's protocol back under
the server's sockets, is refused at :meth:`Listener.start` (see :data:`REMOVED_SOCKETS`)
rather than ignored: a deployment that relied on it learns so at once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from .transport.admission import ReadGuard, Vet
from .transport.endpoint import Endpoint
from .transport.server_socket import ListenerOptions, kernel_backlog, listen

#: The environment variable that once chose picows's protocol for the server's sockets.
SOCKETS_ENV = "WSE_FAST_SERVER_SOCKETS"
#: Why a listener refuses to start with ``WSE_FAST_SERVER_SOCKETS=picows``.
REMOVED_SOCKETS = (
    "WSE_FAST_SERVER_SOCKETS=picows: the server's picows sockets were removed in this release "
    "(the server reads its own sockets; picows stays for the client). Unset "
    "WSE_FAST_SERVER_SOCKETS to start."
)


def refuse_removed_sockets() -> None:
    """Raises RuntimeError with ``WSE_FAST_SERVER_SOCKETS=picows`` (:data:`REMOVED_SOCKETS`):
    checked before a server starts anything (its broker, its socket)."""
    if os.environ.get(SOCKETS_ENV, "").strip().lower() == "picows":
        raise RuntimeError(REMOVED_SOCKETS)


if TYPE_CHECKING:
    from .transport.host import ListenerHost


class Listener:
    """Serves ``routes`` (path to server; the path ``None`` takes every path) on one port."""

    def __init__(
        self,
        routes: Mapping[str | None, ListenerHost],
        *,
        host: str = "127.0.0.1",
        port: int = 4200,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        if not routes:
            raise ValueError("a listener needs at least one server")
        self.routes = dict(routes)
        self.host = host
        self.port = port
        self.ssl = ssl
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket | None = None) -> None:
        """Starts listening; ``self.port`` holds the bound port (useful with ``port=0``).
        ``sock``: an already bound socket to serve on instead. Raises RuntimeError with
        ``WSE_FAST_SERVER_SOCKETS=picows`` (:data:`REMOVED_SOCKETS`)."""
        refuse_removed_sockets()
        servers = list(self.routes.values())
        first = servers[0]
        options = ListenerOptions(
            handshake_timeout=first.limits.handshake_timeout,
            ping_interval=first.limits.ping_interval,
            ping_timeout=first.limits.ping_timeout,
            stranger_budget=max(s.stranger_budget for s in servers),
            backlog=first.limits.listen_backlog
            or max(kernel_backlog(), first.limits.max_unauthenticated),
        )
        # a server with an async on_upgrade: upgrade requests wait for it before they are answered
        vet: Vet | None = self._vet if any(s.upgrade_is_async for s in servers) else None
        self._server = await listen(
            self._upgrade,
            first.admission,
            options,
            host=self.host,
            port=self.port,
            sock=sock,
            ssl=self.ssl,
            vet=vet,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def stop_listening(self) -> None:
        """Accepts no more connections; open ones stay."""
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """Stops listening and closes every server's connections (see ``WseServer.close``)."""
        self.stop_listening()
        await asyncio.gather(*(server.close() for server in self.routes.values()))
        await self.wait_closed()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _route(self, target: str) -> ListenerHost | None:
        """The server of the request target ``target`` (None: no route)."""
        server = self.routes.get(None)
        if len(self.routes) > 1 or server is None:
            server = self.routes.get(target.partition("?")[0], server)
        return server

    def _vet(self, target: str, headers: Any, guard: ReadGuard) -> Awaitable[Any] | None:
        server = self._route(target)
        if server is None or not server.upgrade_is_async:
            return None  # nothing to wait for: the request is answered at once
        return server.vet_upgrade(target, headers, guard, guard.peer)

    def _upgrade(
        self, target: str, headers: Any, guard: ReadGuard
    ) -> tuple[int, str] | tuple[Endpoint, list[tuple[str, str]]]:
        server = self._route(target)
        if server is None:
            return HTTPStatus.NOT_FOUND, ""
        return server.upgrade(target, headers, guard)
