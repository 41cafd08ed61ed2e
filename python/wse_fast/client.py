"""The WSE client: connect with an identity, send, call, answer calls, reconnect."""

from __future__ import annotations

import asyncio
import random
import ssl as ssl_module
from collections.abc import Callable
from typing import Any

from picows import WSError, ws_connect

from .constants import (
    CLOSE_JUMP,
    CLOSE_NORMAL,
    JUMP_REASON,
    RECONNECT_CODES,
    SLOW_CONSUMER,
    WSE_ERROR,
    WSE_REASON,
    WSE_STATUS,
)
from .errors import WseError
from .events import ClientEvents, run_handler
from .peer import Peer
from .protocols import WireProtocol
from .rpc import PendingCalls
from .sansio import session as ev
from .sansio.session import ClientSession
from .transport.picows_endpoint import Endpoint


class _Link:
    """One WebSocket of the client: the session on it, its pending calls and its outcome."""

    def __init__(self, client: WseClient) -> None:
        self.client = client
        self.session = ClientSession(client.protocol_types)
        self.pending = PendingCalls(asyncio.get_running_loop())
        self.endpoint: Endpoint | None = None
        self.welcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()

    def on_open(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def on_message(self, binary: bool, data: Any) -> None:
        client = self.client
        try:
            type, payload, stamp = client.decode(binary, data)
        except Exception as exc:
            client.when.emit("error", WseError(WSE_ERROR.PROTOCOL_VIOLATION, {"detail": str(exc)}))
            return
        event = self.session.receive(type, payload, stamp)
        if client.route(event, (), self.reply, self.pending, client._handler_failed):
            return
        if isinstance(event, ev.Welcome):
            if not self.welcome.done():
                self.welcome.set_result(event.payload)
        elif isinstance(event, ev.Quest):
            client._solve(self, event.quest)

    def on_overflow(self) -> None:
        self.client.when.emit(
            "error", WseError(WSE_ERROR.CONNECTION_ERROR, {"reason": SLOW_CONSUMER})
        )

    def on_close(self, code: int, reason: str) -> None:
        self.session.closed()
        self.pending.reject_all(WSE_ERROR.RP_DISCONNECT, {"code": code, "reason": reason})
        if not self.welcome.done():
            self.welcome.set_exception(
                WseError(reason or WSE_ERROR.WS_CLIENT_ERROR, {"code": code, "reason": reason})
            )
        if not self.closed.done():
            self.closed.set_result((code, reason))
        self.client._link_closed(self, code, reason)

    def send(self, type: str, payload: Any, stamp: str | None) -> None:
        assert self.endpoint is not None
        self.endpoint.write(self.client.encode(type, payload, stamp))

    def reply(self, type: str, payload: Any, stamp: str) -> None:
        if self.endpoint is not None:
            self.endpoint.write(self.client.encode(type, payload, stamp))


class WseClient(Peer):
    """A WSE client on picows.

    ``timeout`` bounds each RPC call and each connection attempt (seconds). With
    ``reconnect=True`` a connection lost with one of the reference's reconnect codes is
    re-established after ``reconnect_delay`` plus up to ``reconnect_jitter`` seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        protocol: WireProtocol | None = None,
        timeout: float = 20.0,
        reconnect: bool = True,
        reconnect_delay: float = 1.0,
        reconnect_jitter: float = 1.0,
        ssl: ssl_module.SSLContext | None = None,
        max_message_size: int = 1 << 20,
        close_timeout: float = 5.0,
        max_pending_bytes: int | None = 4 << 20,
    ) -> None:
        super().__init__(protocol, mask=True)
        self.url = url
        self.max_pending_bytes = max_pending_bytes
        self.timeout = timeout
        self.reconnect = reconnect
        self.reconnect_delay = reconnect_delay
        self.reconnect_jitter = reconnect_jitter
        self.ssl = ssl
        self.max_message_size = max_message_size
        self.close_timeout = close_timeout

        self.when = ClientEvents()
        self.status = WSE_STATUS.IDLE
        self.identity: Any = None
        self.meta: dict[str, Any] = {}

        self._solver: Callable[..., Any] | None = None
        self._link: _Link | None = None
        self._closing = False  # close() was asked: no reconnect
        self._jumping = False
        self._reconnector: asyncio.Task[None] | None = None

    # ---- configuration ---------------------------------------------------------------------

    def challenge(self, solver: Callable[..., Any]) -> None:
        """``solver(quest, solve)``: answer the server's challenge with ``solve(answer)``."""
        if not callable(solver):
            raise WseError(WSE_ERROR.INVALID_CRA_HANDLER)
        self._solver = solver

    # ---- life cycle ------------------------------------------------------------------------

    async def connect(self, identity: Any = None, meta: dict[str, Any] | None = None) -> Any:
        """Connects and authenticates; returns the server's welcome payload.

        Raises :class:`WseError`: ``wse.not-authorized`` when refused, the close reason when
        the server closes first, ``wse.client.ws-error`` when the socket cannot be opened.
        """
        if self.status in (WSE_STATUS.READY, WSE_STATUS.CONNECTING):
            raise WseError(WSE_ERROR.CLIENT_ALREADY_CONNECTED)
        self.identity = identity
        self.meta = dict(meta or {})
        self._closing = False
        self._set_status(WSE_STATUS.CONNECTING)
        try:
            return await self._attempt()
        except BaseException:
            self._set_status(WSE_STATUS.OFFLINE)
            raise

    async def close(self, reason: str = WSE_REASON.BY_CLIENT) -> None:
        """Closes with code 1000 and ``reason``, and stops reconnecting."""
        self._closing = True
        if self._reconnector is not None:
            self._reconnector.cancel()
            self._reconnector = None
        link = self._link
        if link is not None and link.endpoint is not None:
            link.endpoint.close(CLOSE_NORMAL, reason)
            await asyncio.shield(link.closed)
        self._set_status(WSE_STATUS.OFFLINE)

    async def jump(self, url: str, identity: Any = None, meta: dict[str, Any] | None = None) -> Any:
        """Leaves the current server (close 4000 ``jump``) and connects to ``url``."""
        link = self._link
        self._jumping = True
        try:
            if link is not None and link.endpoint is not None:
                link.endpoint.close(CLOSE_JUMP, JUMP_REASON)
                await asyncio.shield(link.closed)
        finally:
            self._jumping = False
        self.url = url
        self._set_status(WSE_STATUS.OFFLINE)
        return await self.connect(
            self.identity if identity is None else identity, self.meta if meta is None else meta
        )

    # ---- messages and calls ----------------------------------------------------------------

    def send(self, type: str, payload: Any = None) -> None:
        """Sends a message; raises ``wse.client.not-ready`` before the welcome."""
        self._ready_link().send(type, payload, None)

    async def call(self, rp: str, payload: Any = None, timeout: float | None = None) -> Any:
        """Calls server procedure ``rp``; returns its result or raises :class:`WseError`."""
        link = self._ready_link()
        stamp, future = link.pending.open(self.timeout if timeout is None else timeout)
        link.send(rp, payload, stamp)
        return await future

    # ---- internals -------------------------------------------------------------------------

    def _ready_link(self) -> _Link:
        link = self._link
        if (
            link is None
            or not link.session.ready
            or link.endpoint is None
            or not link.endpoint.open
        ):
            raise WseError(WSE_ERROR.CONNECTION_NOT_READY)
        return link

    async def _attempt(self) -> Any:
        link = _Link(self)

        def listener() -> Endpoint:
            return Endpoint(
                link, self.max_message_size, True, self.close_timeout, self.max_pending_bytes
            )

        try:
            transport, _ = await ws_connect(
                listener,
                self.url,
                ssl_context=self.ssl,
                extra_headers={"Sec-WebSocket-Protocol": self.protocol.name},
                websocket_handshake_timeout=self.timeout,
                enable_auto_pong=False,  # pongs are masked with CSPRNG keys by the endpoint
                max_frame_size=self.max_message_size,
                use_aiofastnet=False,
            )
        except (TimeoutError, OSError, WSError) as exc:
            raise WseError(WSE_ERROR.WS_CLIENT_ERROR, {"error": repr(exc)}) from exc
        self._link = link
        agreed = transport.response.headers.get("Sec-WebSocket-Protocol")
        if agreed != self.protocol.name:
            assert link.endpoint is not None
            link.endpoint.close(CLOSE_NORMAL, WSE_REASON.PROTOCOL_ERR)
            raise WseError(
                WSE_ERROR.WS_CLIENT_ERROR, {"error": f"server chose subprotocol {agreed!r}"}
            )
        self.when.emit("connected")
        link.send(self.protocol_types.hi, {"identity": self.identity, "meta": self.meta}, None)
        try:
            welcome = await asyncio.wait_for(asyncio.shield(link.welcome), self.timeout)
        except TimeoutError:
            assert link.endpoint is not None
            link.endpoint.close(CLOSE_NORMAL, WSE_REASON.BY_CLIENT)
            raise WseError(WSE_ERROR.WS_CLIENT_ERROR, {"error": "no welcome in time"}) from None
        self._set_status(WSE_STATUS.READY)
        self.when.emit("ready", welcome)
        return welcome

    def _solve(self, link: _Link, quest: Any) -> None:
        if self._solver is None:
            self.when.emit("error", WseError(WSE_ERROR.INVALID_CRA_HANDLER, {"quest": quest}))
            if link.endpoint is not None:
                link.endpoint.close(CLOSE_NORMAL, WSE_REASON.BY_CLIENT)
            return

        def solve(answer: Any) -> None:
            if link.endpoint is not None and link.endpoint.open:
                link.send(self.protocol_types.challenge, answer, None)

        run_handler(self._solver, (quest, solve), self._handler_failed)

    def _handler_failed(self, exc: BaseException) -> None:
        err = WseError(WSE_ERROR.MESSAGE_PROCESSING_ERROR, {"error": repr(exc)})
        err.__cause__ = exc
        self.when.emit("error", err)

    def _link_closed(self, link: _Link, code: int, reason: str) -> None:
        if link is not self._link:
            return
        was_ready = self.status == WSE_STATUS.READY
        self.when.emit("closed", code, reason)
        if self._closing or self._jumping:
            return
        if was_ready and self.reconnect and code in RECONNECT_CODES:
            self._set_status(WSE_STATUS.RE_CONNECTING)
            self._reconnector = asyncio.ensure_future(self._reconnect_loop())
        elif was_ready:
            self._set_status(WSE_STATUS.OFFLINE)

    async def _reconnect_loop(self) -> None:
        try:
            while not self._closing:
                await asyncio.sleep(self.reconnect_delay + random.random() * self.reconnect_jitter)
                try:
                    await self._attempt()
                    return
                except WseError as err:
                    code = err.details.get("code")
                    if err.code == WSE_ERROR.WS_CLIENT_ERROR or code in RECONNECT_CODES:
                        continue  # server still away: try again
                    self._set_status(WSE_STATUS.OFFLINE)  # refused: trying again cannot help
                    self.when.emit("error", err)
                    return
        finally:
            if self._reconnector is asyncio.current_task():
                self._reconnector = None

    def _set_status(self, status: str) -> None:
        if status != self.status:
            self.status = status
            self.when.emit("updated", status)
