"""A WSE server as an aiohttp request handler: ``server.aiohttp_handler``.

``app.router.add_get("/ws", server.aiohttp_handler)``: the upgrade is admitted or refused by
the server (origins, stranger counts, ``on_upgrade``), then the connection runs on a
:class:`MessageEndpoint` over aiohttp's ``WebSocketResponse``. A plain HTTP request to the
route gets 426 Upgrade Required.

aiohttp does the framing and answers pings; its heartbeat is set from the server's
``ping_interval`` (a peer silent for that long is pinged, and dropped when no pong comes
within half of it), and its message size limit and close timeout from the server's. Its
permessage-deflate (``compress``) follows the server's ``compression`` option, and is then
aiohttp's own: it answers an offer with the client's parameters (context takeover unless the
client asks otherwise, a 15-bit window unless it names a smaller one), compresses every
message with a zlib context per connection (about 256 KiB each, made at its first message),
a broadcast once per connection, and inflates up to ``max_message_size`` before the WSE
layer sees a message (a stranger's too, which is then refused past
``auth_max_message_size``). The server's other compression options do not apply there.
The peer's Close is answered here, with its own code, after
what was queued before it. A Close is sent through aiohttp's ``close()``, which waits for
the peer's answer (up to ``close_timeout``) also for refused strangers. A slow consumer gets,
as on the own listener, a Close 1008 behind what aiohttp already buffered for it (what waited in the
endpoint is dropped), and its socket is aborted if the handshake is not over within
``close_timeout``; a refused upgrade closes its socket (no keep-alive).

On shutdown, aiohttp stops listening and then runs the application's ``on_shutdown`` before it
closes its connections: ``app.on_shutdown.append(lambda app: server.close())`` drains there
(see ``WseServer.close``). aiohttp's own ``shutdown_timeout`` (60 s by default) bounds what
follows ``on_shutdown``, not the drain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import WebSocketError, WSMsgType, hdrs, web
from multidict import CIMultiDict

from .messages import MessageEndpoint, Received
from .upgrade import UpgradeRequest, offered_subprotocols, serve_upgrade

if TYPE_CHECKING:
    from .host import UpgradeHost

_NOT_WEBSOCKET = "This URL serves WebSocket connections (WSE); HTTP requests are not taken.\n"
_TEXT, _BINARY = WSMsgType.TEXT, WSMsgType.BINARY
_ENDS = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


class AiohttpEndpoint(MessageEndpoint):
    __slots__ = ("_socket", "_ws")

    close_ends_connection = True  # aiohttp's close() waits for the peer's Close
    # aiohttp's own answer to a Close (autoclose) says 1000 whatever the peer said, and drops
    # what was queued before it
    echoes_close = True

    def __init__(
        self, ws: web.WebSocketResponse, socket: asyncio.Transport | None, **options: Any
    ) -> None:
        super().__init__(**options)
        self._ws = ws
        self._socket = socket

    async def send_message(self, binary: bool, payload: memoryview) -> None:
        await self._ws.send_frame(bytes(payload), _BINARY if binary else _TEXT)

    async def send_close(self, code: int, reason: str) -> None:
        await self._ws.close(code=code, message=reason.encode())

    async def receive_event(self) -> Received:
        msg = await self._ws.receive()
        kind = msg.type
        if kind is _TEXT:
            return False, msg.data
        if kind is _BINARY:
            return True, msg.data
        if kind is WSMsgType.CLOSE:
            return None, (int(msg.data), msg.extra or "")
        if kind is WSMsgType.CLOSING:
            # close() was called by this side and reads the peer's answer itself; the
            # connection ends when it returns
            await self.closed()
        if kind is WSMsgType.ERROR and isinstance(msg.data, WebSocketError):
            # aiohttp failed the connection itself (a message over max_msg_size, a framing
            # error) and sent a Close with this code and no reason: what the own listener's
            # endpoint reports for the failures it finds
            return None, (msg.data.code, "")
        return None, (self._ws.close_code or 1006, "")

    def drop_connection(self) -> None:
        if self._socket is not None:
            self._socket.abort()


async def handle(server: UpgradeHost, request: web.Request) -> web.StreamResponse:
    """Serves one request to the route as ``server``'s WebSocket endpoint."""
    ws = web.WebSocketResponse(
        # aiohttp's own choice reads the first Sec-WebSocket-Protocol line only; the 101
        # names what the flow agreed (_AiohttpUpgrade.accept)
        protocols=(server.protocol.name,),
        max_msg_size=server.limits.max_message_size,
        heartbeat=server.limits.ping_interval,
        timeout=server.limits.close_timeout,
        compress=server.limits.compression is not None,
        autoclose=False,
    )
    if not ws.can_prepare(request).ok:
        return web.Response(status=426, text=_NOT_WEBSOCKET, headers={"Upgrade": "websocket"})
    socket = request.transport
    peer = socket.get_extra_info("peername") if socket is not None else None
    peer = (peer[0], peer[1]) if isinstance(peer, tuple) else ("", 0)
    offered = offered_subprotocols(request.headers.getall("Sec-WebSocket-Protocol", ()))
    # the target as the client sent it (percent-encoded, with the query), as the own
    # listener reads it
    upgrade = UpgradeRequest(request.raw_path, request.headers, peer, peer[0], offered, request)
    mount = _AiohttpUpgrade(ws, request, socket)
    await serve_upgrade(server, upgrade, mount)
    return ws if mount.refusal is None else mount.refusal


class _AiohttpUpgrade:
    """One upgrade on aiohttp (see :class:`~.upgrade.Mount`); a refusal is the response the
    handler returns."""

    __slots__ = ("_request", "_socket", "_ws", "refusal")

    def __init__(
        self, ws: web.WebSocketResponse, request: web.Request, socket: asyncio.Transport | None
    ) -> None:
        self._ws, self._request, self._socket = ws, request, socket
        self.refusal: web.Response | None = None

    async def refuse(self, status: int, body: str, headers: Sequence[tuple[str, str]]) -> None:
        """The socket closes after the response, as on the own listener and uvicorn (a refused
        stranger keeps no idle keep-alive connection)."""
        response = web.Response(status=status, text=body, headers=CIMultiDict(headers))
        response.force_close()
        self.refusal = response

    async def accept(self, subprotocol: str | None, headers: Sequence[tuple[str, str]]) -> None:
        if subprotocol is not None:
            # also when only a later header line offered it, which aiohttp does not read;
            # where aiohttp found it too, it sets the same value over this one
            self._ws.headers[hdrs.SEC_WEBSOCKET_PROTOCOL] = subprotocol
        for name, value in headers:
            self._ws.headers.add(name, value)
        await self._ws.prepare(self._request)

    def endpoint(self, options: dict[str, Any]) -> AiohttpEndpoint:
        return AiohttpEndpoint(self._ws, self._socket, **options)
