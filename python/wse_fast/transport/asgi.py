"""A WSE server as an ASGI 3 application (Starlette, FastAPI, uvicorn, any ASGI server).

``server.asgi`` is an :class:`AsgiApp`. Mounted on a route (Starlette's ``WebSocketRoute``,
FastAPI's ``add_websocket_route``) or served alone (``uvicorn module:app``), it answers

- ``websocket`` scopes: the upgrade is admitted or refused by the server (origins, stranger
  counts, ``on_upgrade``), then the connection runs on a :class:`MessageEndpoint`;
- ``http`` scopes: 426 Upgrade Required, with a line saying what the URL is for;
- ``lifespan`` scopes (when it is the whole application): startup, and a shutdown that closes
  the server's connections.

The host server does the WebSocket framing, its own keepalive and its own size limit
(uvicorn: ``--ws-max-size``, ``--ws-ping-interval``); the server's ``max_message_size`` is
applied here as well, but only to what the host has already read, inflated and buffered.

Under uvicorn, :meth:`AsgiApp.uvicorn_options` are the options that make uvicorn apply the
server's rules (``uvicorn.run(app, **server.asgi.uvicorn_options())``): without them uvicorn

- takes the client's address from ``X-Forwarded-For`` (``--proxy-headers``, on by default,
  for peers in ``--forwarded-allow-ips``: 127.0.0.1 unless set), so a client chooses the
  address its strangers are counted under, whatever the server's ``trusted_proxies``;
- inflates compressed messages up to ``--ws-max-size`` (16 MiB) each, and every message of
  what it read at once before the application sees the first (1 MiB on the wire was 256 MiB
  with ``--ws-max-size`` at 1 MiB).

Where the address was visibly taken from ``X-Forwarded-For`` while the server trusts no
proxy, strangers are counted under one place (:data:`FORWARDED_UNTRUSTED`), and a warning
says so (once per application); a message over ``max_message_size`` from the host is warned
of once too.

Compression too is the host's: ASGI gives the application no say in the extensions, so the
server's ``compression`` options do not apply. uvicorn agrees to permessage-deflate by
default (``--ws-per-message-deflate``, on; both its websockets and wsproto implementations),
with a context per connection each way at zlib's defaults (15-bit windows: a few hundred KiB
per connection that compresses), every message, a broadcast too, compressed per connection,
and inflation bounded by ``--ws-max-size`` per message, not per read (see above).
``--ws-per-message-deflate false`` (in :meth:`AsgiApp.uvicorn_options`) turns it off.

What ASGI gives no way to do: drop a socket. A slow consumer is dropped by the server (its
queue freed, ``error`` reported, a Close 1008 sent after the message uvicorn is sending, and
``disconnected`` once the close handshake ends or ``close_timeout`` passes), but the host
server closes the socket gracefully once the application returns, so its own buffer (uvicorn:
about 64 KiB) stays until the peer reads it or goes; after a Close, uvicorn keeps the socket
until the peer answers or its own close timeout (10 s) passes, whatever the server's
``close_timeout``.

Draining (``WseServer.close``) needs the connections still open, and uvicorn's shutdown
(SIGINT, SIGTERM) first closes every WebSocket itself with 1012, then sends the lifespan's
shutdown: a server closed from the lifespan finds its handlers cancelled with their
connections. To drain under uvicorn, close the server before uvicorn's own shutdown, for
instance by running uvicorn with a subclass of its server::

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets=None):
            await wse.close()  # refuses upgrades (503), lets running handlers finish
            await super().shutdown(sockets)

    DrainingServer(uvicorn.Config(app, ...)).run()

Meanwhile uvicorn still accepts connections; the server refuses their upgrades with 503.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict, CIMultiDictProxy

from .messages import MessageEndpoint, Received
from .upgrade import UpgradeRequest, serve_upgrade

if TYPE_CHECKING:
    from .host import UpgradeHost

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_NOT_WEBSOCKET = b"This URL serves WebSocket connections (WSE); HTTP requests are not taken.\n"
#: Where strangers are counted whose address the host server took from ``X-Forwarded-For``
#: although the server trusts no proxy: all in one place, as behind one proxy on the own
#: listener
#: (not an IP address: no client's own address can be counted there).
FORWARDED_UNTRUSTED = "(x-forwarded-for)"
_log = logging.getLogger(__name__)


class AsgiEndpoint(MessageEndpoint):
    __slots__ = ("_app", "_receive", "_send")

    def __init__(self, app: AsgiApp, receive: Receive, send: Send, **options: Any) -> None:
        super().__init__(**options)
        self._app = app
        self._receive = receive
        self._send = send

    async def send_message(self, binary: bool, payload: memoryview) -> None:
        if binary:
            await self._send({"type": "websocket.send", "bytes": bytes(payload)})
        else:
            await self._send({"type": "websocket.send", "text": str(payload, "utf-8")})

    async def send_close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def receive_event(self) -> Received:
        while True:
            message = await self._receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                data = text if text is not None else message.get("bytes") or b""
                if len(data) > self.max_message_size:  # refused, but the host took it in
                    self._app.warn_once(
                        "size",
                        "the host server passed on a message of %d bytes (max_message_size: "
                        "%d): bound it there too (uvicorn: server.asgi.uvicorn_options())",
                        len(data),
                        self.max_message_size,
                    )
                return text is None, data
            if kind == "websocket.disconnect":
                return None, (message.get("code", 1005), message.get("reason") or "")


class AsgiApp:
    """The ASGI 3 application of one :class:`~wse_fast.WseServer` (``server.asgi``)."""

    __slots__ = ("_warned", "server")

    def __init__(self, server: UpgradeHost) -> None:
        self.server = server
        self._warned: set[str] = set()  # what was warned of (once each)

    def __repr__(self) -> str:
        return f"<AsgiApp of {self.server!r}>"

    def uvicorn_options(self) -> dict[str, Any]:
        """Keywords for ``uvicorn.run`` / ``uvicorn.Config`` that make uvicorn apply this
        server's rules (with the application's own next to them, such as ``host``, ``port``):

        - ``proxy_headers=False``: the client's address stays the socket's peer, and the
          server reads ``X-Forwarded-For`` itself, from its ``trusted_proxies`` alone;
        - ``ws_max_size``: the server's ``max_message_size``, so that uvicorn reads no larger
          message;
        - ``ws_per_message_deflate=False``: uvicorn would inflate every compressed message of
          a read before the application sees the first, each up to ``ws_max_size``;
        - ``ws``: ``"websockets-sansio"``, which reads no further while a message waits for
          the application (``"websockets"``, with ``ws_max_queue=1``, on a uvicorn without
          it); never wsproto, whose inflation has no bound of its own.
        """
        options: dict[str, Any] = {
            "proxy_headers": False,
            "ws_max_size": self.server.limits.max_message_size,
            "ws_per_message_deflate": False,
        }
        try:
            from uvicorn.config import WS_PROTOCOLS
        except ImportError:  # uvicorn checks the names itself, once it is there
            WS_PROTOCOLS = {"websockets-sansio": None}
        if "websockets-sansio" in WS_PROTOCOLS:
            options["ws"] = "websockets-sansio"
        else:
            options.update(ws="websockets", ws_max_queue=1)
        return options

    def warn_once(self, what: str, message: str, *args: Any) -> None:
        """Logs a warning about the host's configuration, the first time ``what`` is seen."""
        if what not in self._warned:
            self._warned.add(what)
            _log.warning(message, *args)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            await _respond(send, 426, _NOT_WEBSOCKET, [(b"upgrade", b"websocket")])
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.server.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.server
        if (await receive())["type"] != "websocket.connect":
            return
        headers = CIMultiDictProxy(
            CIMultiDict(
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in scope.get("headers", ())
            )
        )
        client = scope.get("client")
        peer = (client[0], client[1]) if client else ("", 0)
        counted = peer[0]
        if not server.trusted_proxies and _forwarded_by_host(scope, peer):
            counted = FORWARDED_UNTRUSTED
            self.warn_once(
                "forwarded",
                "the host server took the client's address %r from X-Forwarded-For, but "
                "trusted_proxies is empty: such strangers are counted under %r. Under uvicorn: "
                "server.asgi.uvicorn_options() (--no-proxy-headers), proxies in trusted_proxies",
                peer[0],
                FORWARDED_UNTRUSTED,
            )
        # ASGI servers list the offered subprotocols from every header line
        offered = list(scope.get("subprotocols") or ())
        request = UpgradeRequest(_target(scope), headers, peer, counted, offered, scope)
        await serve_upgrade(server, request, _AsgiUpgrade(self, scope, receive, send))


class _AsgiUpgrade:
    """One upgrade on an ASGI server (see :class:`~.upgrade.Mount`)."""

    __slots__ = ("_app", "_receive", "_scope", "_send")

    def __init__(self, app: AsgiApp, scope: Scope, receive: Receive, send: Send) -> None:
        self._app, self._scope, self._receive, self._send = app, scope, receive, send

    async def refuse(self, status: int, body: str, headers: Sequence[tuple[str, str]]) -> None:
        """With an HTTP status where the server can send one (the ASGI
        ``websocket.http.response`` extension); elsewhere the server answers 403 by itself."""
        send = self._send
        if "websocket.http.response" in self._scope.get("extensions", {}):
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        *_header_lines(headers),
                    ],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body.encode()})
        else:
            await send({"type": "websocket.close", "code": 1008})

    async def accept(self, subprotocol: str | None, headers: Sequence[tuple[str, str]]) -> None:
        accept: dict[str, Any] = {"type": "websocket.accept", "subprotocol": subprotocol}
        if headers:  # added headers in the 101: ASGI 2.1
            accept["headers"] = _header_lines(headers)
        await self._send(accept)

    def endpoint(self, options: dict[str, Any]) -> AsgiEndpoint:
        return AsgiEndpoint(self._app, self._receive, self._send, **options)


def _header_lines(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Headers as ASGI sends them: lowercase names, as bytes."""
    return [(name.lower().encode(), value.encode()) for name, value in headers]


def _forwarded_by_host(scope: Scope, peer: tuple[str, int]) -> bool:
    """Whether the host server took the client's address ``peer`` from ``X-Forwarded-For``
    (uvicorn's ``--proxy-headers``): it is one of the header's entries, with that entry's port,
    or with port 0 for an entry without one (a socket's own peer never has port 0)."""
    host, port = peer
    for name, value in scope.get("headers", ()):
        if name != b"x-forwarded-for":  # ASGI header names are lowercase
            continue
        for entry in value.decode("latin-1").split(","):
            entry = entry.strip()
            if entry.startswith("["):  # [IPv6]:port
                entry_host, _, rest = entry[1:].partition("]")
                entry_port = rest[1:]
            elif entry.count(":") == 1:  # IPv4:port
                entry_host, _, entry_port = entry.partition(":")
            else:
                entry_host, entry_port = entry, ""
            if (entry_host == host or entry == host) and (port == 0 or entry_port == str(port)):
                return True
    return False


def _target(scope: Scope) -> str:
    """The request target as the client sent it (percent-encoded, with the query), as the own
    listener reads it. ``raw_path`` and ``path`` are the whole path: a Starlette ``Mount`` and
    uvicorn's ``--root-path`` set ``root_path`` to the prefix without removing it from them."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope.get("path", "")
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
