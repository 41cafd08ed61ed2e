"""A WSE server as an aiohttp request handler: ``server.aiohttp_handler``.

``app.router.add_get("/ws", server.aiohttp_handler)``: the upgrade is admitted or refused by
the server (origins, stranger counts, ``on_upgrade``), then the connection runs on a
:class:`MessageEndpoint` over aiohttp's ``WebSocketResponse``. A plain HTTP request to the
route gets 426 Upgrade Required.

aiohttp does the framing and answers pings; its heartbeat is set from the server's
``ping_interval`` (a peer silent for that long is pinged, and dropped when no pong comes
within half of it), and its message size limit and close timeout from the server's. Its
permessage-deflate is left off. The peer's Close is answered here, with its own code, after
what was queued before it. A Close is sent through aiohttp's ``close()``, which waits for
the peer's answer (up to ``close_timeout``) also for refused strangers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from .admission import StrangerTicket
from .messages import MessageEndpoint, Received

if TYPE_CHECKING:
    from ..server import WseServer

_NOT_WEBSOCKET = "This URL serves WebSocket connections (WSE); HTTP requests are not taken.\n"
_TEXT, _BINARY = WSMsgType.TEXT, WSMsgType.BINARY
_ENDS = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


class AiohttpEndpoint(MessageEndpoint):
    close_ends_connection = True  # aiohttp's close() waits for the peer's Close
    # aiohttp's own answer to a Close (autoclose) says 1000 whatever the peer said, and drops
    # what was queued before it
    echoes_close = True

    def __init__(self, ws: web.WebSocketResponse, **options: Any) -> None:
        super().__init__(**options)
        self._ws = ws

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
        return None, (self._ws.close_code or 1006, "")


async def handle(server: WseServer, request: web.Request) -> web.StreamResponse:
    """Serves one request to the route as ``server``'s WebSocket endpoint."""
    ws = web.WebSocketResponse(
        protocols=(server.protocol.name,),
        max_msg_size=server.max_message_size,
        heartbeat=server.ping_interval,
        timeout=server.close_timeout,
        compress=False,
        autoclose=False,
    )
    if not ws.can_prepare(request).ok:
        return web.Response(status=426, text=_NOT_WEBSOCKET, headers={"Upgrade": "websocket"})
    peer = request.transport.get_extra_info("peername") if request.transport else None
    peer = (peer[0], peer[1]) if isinstance(peer, tuple) else ("", 0)
    ticket = StrangerTicket.admit(server.admission, peer[0], server.stranger_budget)
    if isinstance(ticket, int):
        return web.Response(status=ticket, headers={"Retry-After": "1"})
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    verdict = server.admit(request.path_qs, request.headers, peer, ticket, offered, request)
    if isinstance(verdict, tuple):
        ticket.release()
        status, body = verdict
        return web.Response(status=status, text=body)
    try:
        await ws.prepare(request)
    except BaseException:
        ticket.release()
        raise
    endpoint = AiohttpEndpoint(ws, **server.endpoint_options(verdict, ticket, peer))
    await endpoint.serve()
    return ws
