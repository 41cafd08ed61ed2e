"""A server-side connection: one device of one user, driven by the server session."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from .constants import (
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TOO_BIG,
    SLOW_CONSUMER,
    WSE_ERROR,
    WSE_REASON,
)
from .errors import ConnectionNotReady, ProtocolViolation, WseError
from .rpc import PendingCalls
from .sansio import session as ev
from .sansio.session import ServerSession, ServerState

_VALID = ServerState.VALID  # read per message: a module name is cheaper than the enum's

if TYPE_CHECKING:
    from .handshake import HandshakeRequest
    from .server import Client, WseServer
    from .transport.admission import StrangerHold
    from .transport.base import Transport


class Connection:
    """One WebSocket of a user (``conn.client``); also the endpoint's event handler.

    Flow control: the tasks its messages and calls start (coroutine handlers) are counted; at
    the server's ``max_in_flight`` per connection, or its ``max_tasks`` in all, the connection
    stops reading its socket. Messages already read wait, copied, in order, and run as tasks
    finish; the peer's TCP window then holds the rest. Every task still running when the
    connection closes is cancelled.
    """

    __slots__ = (
        "_auth_timer",
        "_backlog",
        "_pending",
        "_server",
        "_tasks",
        "cid",
        "client",
        "conn_id",
        "endpoint",
        "forwarded_addr",
        "handshake",
        "identity",
        "meta",
        "offered_protocols",
        "quest",
        "session",
        "stranger",
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
        self.endpoint: Transport | None = None
        self._auth_timer: asyncio.TimerHandle | None = None
        self.quest: list[Any] | None = None  # [the challenge sent], once asked
        self.offered_protocols: str | None = None  # set when the client did not offer ours
        self.stranger: StrangerHold | None = None  # until accepted: counts and bounds it
        self.handshake: HandshakeRequest | None = None  # the upgrade request, until accepted
        self.forwarded_addr: tuple[str, int] | None = None  # the client, as a trusted proxy says
        self._tasks: set[asyncio.Future[Any]] | None = None  # running handler tasks
        self._backlog: deque[tuple[bool, bytes]] | None = None  # read while paused

    @property
    def pending(self) -> PendingCalls:
        if self._pending is None:
            self._pending = PendingCalls(asyncio.get_running_loop())
        return self._pending

    @property
    def remote_addr(self) -> Any:
        """The client's address: as a trusted proxy forwarded it, else the socket's peer (None
        once closed)."""
        if self.forwarded_addr is not None:
            return self.forwarded_addr
        return None if self.endpoint is None else self.endpoint.remote_addr

    @property
    def tasks_running(self) -> int:
        """How many tasks this connection's messages and calls have running."""
        return len(self._tasks) if self._tasks is not None else 0

    def __repr__(self) -> str:
        return f"<Connection {self.conn_id} cid={self.cid!r} {self.session.state.name}>"

    # ---- public API ------------------------------------------------------------------------

    def send(self, type: str, payload: Any = None) -> None:
        """Sends a message to this device."""
        if self.endpoint is not None:
            self.endpoint.write(self._server.encode(type, payload, None))

    async def call(self, rp: str, payload: Any = None, timeout: float | None = None) -> Any:
        """Calls procedure ``rp`` on this device and returns its result; raises ``RpcError``,
        ``RpcTimeout``, ``RpcDisconnected`` or ``ConnectionNotReady``."""
        if not self.session.valid or self.endpoint is None or not self.endpoint.open:
            raise ConnectionNotReady({"rpc": rp})
        stamp, future = self.pending.open(self._server.timeout if timeout is None else timeout)
        self.endpoint.write(self._server.encode(rp, payload, stamp))
        return await future

    def drop(self, reason: str = WSE_REASON.BY_SERVER, code: int = CLOSE_NORMAL) -> None:
        """Closes this connection with ``code`` and ``reason``."""
        if self.endpoint is not None:
            self.endpoint.close(code, reason)

    # ---- endpoint events -------------------------------------------------------------------

    def on_open(self, endpoint: Transport) -> None:
        self.endpoint = endpoint
        if self.stranger is not None:
            self.stranger.on_exhausted = self._budget_spent
        self._server._opened(self)

    def on_message(self, binary: bool, data: Any) -> None:
        server = self._server
        if self._backlog is not None or server.saturated:
            if self._backlog is None:
                self._pause()
            # reading is paused: what was read already waits, copied, in order
            self._backlog.append((binary, bytes(data)))  # type: ignore[union-attr]
            return
        if self.session.state is not _VALID:
            self._stranger_message(binary, data)
            return
        try:
            type, payload, stamp = server.decode(binary, data)
        except Exception as exc:
            self._violation(f"cannot unpack message: {exc}")
            return
        server.route(
            self.session.receive(type, payload, stamp),
            (self,),
            self._reply,
            self._pending,
            self._handler_failed,
            self._track,
        )

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
        self.handshake = None
        self._backlog = None
        if self._tasks:
            for task in list(self._tasks):
                task.cancel()
        if self._pending is not None:
            self._pending.reject_all(WSE_ERROR.RP_DISCONNECT, {"code": code, "reason": reason})
        self._server._closed(self, was_valid, code, reason)

    # ---- before authentication -------------------------------------------------------------

    def _stranger_message(self, binary: bool, data: Any) -> None:
        session = self.session
        if not session.awaits_message:
            return  # identify is running: ignored, as in the reference, and never decoded
        server = self._server
        if len(data) > server.auth_max_message_size:
            self._server.when.emit(
                "error",
                ProtocolViolation(
                    {"detail": "message too big before authentication", "size": len(data)}
                ),
                self,
            )
            server.refuse(self, CLOSE_TOO_BIG, "message too big")
            return
        try:
            type, payload, stamp = server.decode(binary, data)
        except Exception as exc:
            self._violation(f"cannot unpack message: {exc}")
            return
        event = session.receive(type, payload, stamp)
        if isinstance(event, ev.Hello):
            self.identity = event.identity
            self.meta.update(event.meta)
            server._authenticate(self)
        elif isinstance(event, ev.ChallengeAnswer):
            server._identify(self, event.response)
        elif isinstance(event, ev.Violation):
            self._violation(event.detail)

    def _budget_spent(self) -> None:
        """The stranger sent every byte it may before authentication."""
        err = ProtocolViolation({"detail": "too much data before authentication"})
        self._server.when.emit("error", err, self)
        self._server.refuse(self, CLOSE_POLICY_VIOLATION, "too much data before authentication")

    # ---- flow control ----------------------------------------------------------------------

    def _track(self, task: asyncio.Future[Any]) -> None:
        tasks = self._tasks
        if tasks is None:
            tasks = self._tasks = set()
        tasks.add(task)
        self._server.task_started()
        task.add_done_callback(self._task_done)
        if self._backlog is None and not self._may_start_tasks():
            self._pause()

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        tasks = self._tasks
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                self._tasks = None  # idle connections are many: keep no empty set
        server = self._server
        server.task_finished()
        if self._backlog is not None:
            if self._may_start_tasks():
                self.resume()
            elif self.tasks_running < server.max_in_flight:
                # its own tasks are done, but the server is at max_tasks: wait with the rest
                server.wait_for_tasks(self)

    def _may_start_tasks(self) -> bool:
        server = self._server
        return self.tasks_running < server.max_in_flight and server.tasks_running < server.max_tasks

    def _pause(self) -> None:
        self._backlog = deque()
        if self.endpoint is not None:
            self.endpoint.pause_reading()
        if self.tasks_running < self._server.max_in_flight:
            self._server.wait_for_tasks(self)  # the server-wide cap: woken by any task's end

    def resume(self) -> None:
        """Runs what was read while paused, and reads again once there is room."""
        backlog = self._backlog
        if backlog is None:
            return
        self._backlog = None
        while backlog:
            binary, data = backlog.popleft()
            self.on_message(binary, data)
            if self.session.state is ServerState.CLOSED:
                return
            if self._backlog is not None:  # paused again by that message's task
                self._backlog.extendleft(reversed(backlog))
                return
        if self.endpoint is not None and self.session.state is not ServerState.CLOSED:
            self.endpoint.resume_reading()

    # ---- helpers ---------------------------------------------------------------------------

    def _reply(self, type: str, payload: Any, stamp: str) -> None:
        if self.endpoint is not None:
            self.endpoint.write(self._server.encode(type, payload, stamp))

    def _violation(self, detail: str) -> None:
        err = ProtocolViolation({"detail": detail, "conn_id": self.conn_id})
        self._server.when.emit("error", err, self)
        if self.session.valid:
            self.drop(WSE_REASON.PROTOCOL_ERR)
        else:
            self._server.refuse(self, CLOSE_NORMAL, WSE_REASON.PROTOCOL_ERR)

    def _handler_failed(self, exc: BaseException) -> None:
        err = WseError(WSE_ERROR.MESSAGE_PROCESSING_ERROR, {"error": repr(exc)})
        err.__cause__ = exc
        self._server.when.emit("error", err, self)

    def cancel_auth_timer(self) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
