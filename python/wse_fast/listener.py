"""wse-fast's own listening socket (picows on uvloop), serving one or more servers by path.

``WseServer.start()`` makes a listener for its server alone, on every path. Several servers
share one port through a :class:`Listener` with a route for each::

    listener = Listener({"/chat": chat, "/admin": admin}, port=4200)
    await listener.start()
    ...
    await listener.close()  # stops listening and closes both servers

An upgrade to a path with no route gets HTTP 404. What is settled before the path is known
(when the TCP connection is accepted) is the listener's: TLS, the stranger counts, the
upgrade-request timeout and the accept queue (``listen_backlog``) come from the first server;
the per-frame size and the byte budget of a stranger are the largest of its servers' (each
server applies its own message limits once the path has chosen it).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from .transport import server_socket
from .transport.admission import ReadGuard, Vet
from .transport.picows_endpoint import Endpoint
from .transport.server_socket import ListenerOptions, kernel_backlog

#: Which protocol reads the listener's sockets: wse-fast's own (``"own"``, the default: the
#: upgrade and the frames read by :mod:`.transport.server_socket`) or, for comparison,
#: picows's (``"picows"``, the protocol before wse-fast read its own frames).
SOCKETS = os.environ.get("WSE_FAST_SERVER_SOCKETS", "own")

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
        #: picows's sockets (``WSE_FAST_SERVER_SOCKETS=picows``): the upgrades' answers, with
        #: the 101 responses they share; None on wse-fast's own sockets, which keep none
        self.picows_answers: Any = None

    async def start(self, sock: socket.socket | None = None) -> None:
        """Starts listening; ``self.port`` holds the bound port (useful with ``port=0``).
        ``sock``: an already bound socket to serve on instead."""
        servers = list(self.routes.values())
        first = servers[0]
        options = ListenerOptions(
            max_frame_size=max(s.limits.max_message_size for s in servers),
            handshake_timeout=first.limits.handshake_timeout,
            ping_interval=first.limits.ping_interval,
            ping_timeout=first.limits.ping_timeout,
            read_buffer_size=first.limits.read_buffer_size,
            auto_pong=False,  # the endpoint answers pings: none after a Close or a failure
            stranger_budget=max(s.stranger_budget for s in servers),
            backlog=first.limits.listen_backlog
            or max(kernel_backlog(), first.limits.max_unauthenticated),
        )
        # a server with an async on_upgrade: upgrade requests wait for it before picows
        vet: Vet | None = self._vet if any(s.upgrade_is_async for s in servers) else None
        if SOCKETS == "picows":
            # picows's private protocol class: imported only when asked for
            from .transport import picows_listener

            listen: Any = picows_listener.listen
            self.picows_answers = picows_listener.Answers(self._upgrade)
            upgrade: Any = self.picows_answers
        else:
            listen, upgrade = server_socket.listen, self._upgrade
        self._server = await listen(
            upgrade,
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
            return None  # nothing to wait for: picows reads the request at once
        return server.vet_upgrade(target, headers, guard, guard.peer)

    def _upgrade(
        self, target: str, headers: Any, guard: ReadGuard, native: Any = None
    ) -> tuple[int, str] | tuple[Endpoint, list[tuple[str, str]]]:
        server = self._route(target)
        if server is None:
            return HTTPStatus.NOT_FOUND, ""
        return server.upgrade(target, headers, guard, native)
