"""A server-side connection: one device of one user, driven by the server session."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .constants import CLOSE_NORMAL, SLOW_CONSUMER, WSE_ERROR, WSE_REASON
from .errors import WseError
from .rpc import PendingCalls
from .sansio import session as ev
from .sansio.session import ServerSession

if TYPE_CHECKING:
    from .server import Client, WseServer
    from .transport.picows_endpoint import Endpoint


class Connection:
    """One WebSocket of a user (``conn.client``); also the endpoint's event handler."""

    __slots__ = (
        "_auth_timer",
        "_pending",
        "_server",
        "cid",
        "client",
        "conn_id",
        "endpoint",
        "identity",
        "meta",
        "offered_protocols",
        "quest",
        "session",
    )

    def __init__(self, server: WseServer, conn_id: str) -> None:
        self._server = server
        self.conn_id = conn_id
        self.cid: str | None = None
        self.identity: Any = None
        self.meta: dict[str, Any] = {}
        self.client: Client | None = None
        self.session = ServerSession(server.protocol_types)
        self._pending: PendingCalls | None = None  # made by the first server-to-client call
        self.endpoint: Endpoint | None = None
        self._auth_timer: asyncio.TimerHandle | None = None
        self.quest: list[Any] | None = None  # [the challenge sent], once asked
        self.offered_protocols: str | None = None  # set when the client did not offer ours

    @property
    def pending(self) -> PendingCalls:
        if self._pending is None:
            self._pending = PendingCalls(asyncio.get_running_loop())
        return self._pending

    @property
    def remote_addr(self) -> Any:
        """The peer's address, as the socket reports it (None once closed)."""
        if self.endpoint is None or self.endpoint.transport is None:
            return None
        return self.endpoint.transport.underlying_transport.get_extra_info("peername")

    def __repr__(self) -> str:
        return f"<Connection {self.conn_id} cid={self.cid!r} {self.session.state.name}>"

    # ---- public API ------------------------------------------------------------------------

    def send(self, type: str, payload: Any = None) -> None:
        """Sends a message to this device."""
        if self.endpoint is not None:
            self.endpoint.write(self._server.encode(type, payload, None))

    async def call(self, rp: str, payload: Any = None, timeout: float | None = None) -> Any:
        """Calls procedure ``rp`` on this device and returns its result (or raises WseError)."""
        if not self.session.valid or self.endpoint is None or not self.endpoint.open:
            raise WseError(WSE_ERROR.CONNECTION_NOT_READY, {"rpc": rp})
        stamp, future = self.pending.open(self._server.timeout if timeout is None else timeout)
        self.endpoint.write(self._server.encode(rp, payload, stamp))
        return await future

    def drop(self, reason: str = WSE_REASON.BY_SERVER, code: int = CLOSE_NORMAL) -> None:
        """Closes this connection with ``code`` and ``reason``."""
        if self.endpoint is not None:
            self.endpoint.close(code, reason)

    # ---- endpoint events -------------------------------------------------------------------

    def on_open(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._server._opened(self)

    def on_message(self, binary: bool, data: Any) -> None:
        server = self._server
        try:
            type, payload, stamp = server.decode(binary, data)
        except Exception as exc:
            self._violation(f"cannot unpack message: {exc}")
            return
        event = self.session.receive(type, payload, stamp)
        if server.route(event, (self,), self._reply, self._pending, self._handler_failed):
            return
        if isinstance(event, ev.Hello):
            self.identity = event.identity
            self.meta.update(event.meta)
            server._authenticate(self)
        elif isinstance(event, ev.ChallengeAnswer):
            server._identify(self, event.response)
        elif isinstance(event, ev.Violation):
            self._violation(event.detail)

    def on_overflow(self) -> None:
        limit = self._server.max_pending_bytes
        err = WseError(
            WSE_ERROR.CONNECTION_ERROR, {"reason": SLOW_CONSUMER, "max_pending_bytes": limit}
        )
        self._server.when.emit("error", err, self)

    def on_close(self, code: int, reason: str) -> None:
        was_valid = self.session.valid
        self.session.closed()
        self.cancel_auth_timer()
        if self._pending is not None:
            self._pending.reject_all(WSE_ERROR.RP_DISCONNECT, {"code": code, "reason": reason})
        self._server._closed(self, was_valid, code, reason)

    # ---- helpers ---------------------------------------------------------------------------

    def _reply(self, type: str, payload: Any, stamp: str) -> None:
        if self.endpoint is not None:
            self.endpoint.write(self._server.encode(type, payload, stamp))

    def _violation(self, detail: str) -> None:
        err = WseError(WSE_ERROR.PROTOCOL_VIOLATION, {"detail": detail, "conn_id": self.conn_id})
        self._server.when.emit("error", err, self)
        self.drop(WSE_REASON.PROTOCOL_ERR)

    def _handler_failed(self, exc: BaseException) -> None:
        err = WseError(WSE_ERROR.MESSAGE_PROCESSING_ERROR, {"error": repr(exc)})
        err.__cause__ = exc
        self._server.when.emit("error", err, self)

    def cancel_auth_timer(self) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
