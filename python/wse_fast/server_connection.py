"""The machinery of one server connection: transport events in, the session's events to the
server's authentication flow, handlers and pending calls; flow control of handler tasks."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

from . import rpc
from .codec import EnvelopeError
from .connection import Connection
from .constants import (
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    OVER_BUDGET_REASON,
    SLOW_CONSUMER,
    WSE_ERROR,
    WSE_REASON,
    Cid,
)
from .errors import ProtocolViolation, WseError
from .metrics import PROTOCOL_CLOSE_CODES
from .ports import ConnectionHost
from .sansio import session as ev
from .sansio.session import ServerSession, ServerState

_CLOSED = ServerState.CLOSED
_VALID = ServerState.VALID
_MESSAGE = ev.Message
_CALL = ev.Call
#: Per-connection records (opened, accepted, closed) at DEBUG: none by default.
log = logging.getLogger("wse_fast.connection")

if TYPE_CHECKING:
    from .handshake import HandshakeRequest
    from .metrics import ProcedureMeter

    #: a call waiting for its answer: its stamp, its procedure's meter, when it came
    Timing = tuple[str, ProcedureMeter, float]
    from collections.abc import Callable

    from .errors import WseError
    from .events import ErrorSink
    from .metrics import ServerMetrics
    from .options import ServerLimits
    from .protocols import InternalTypes, WireProtocol
    from .sansio.session import Wire
    from .transport.admission import StrangerHold
    from .transport.base import Transport


class AuthenticationFlow(Protocol):
    """The node's authentication of a stranger (``authentication.Authentication``)."""

    def opened(self, conn: ServerConnection) -> asyncio.TimerHandle: ...

    def hello(self, conn: ServerConnection) -> None: ...

    def identify(self, conn: ServerConnection, response: Any) -> None: ...


class SessionHost(ConnectionHost, Protocol):
    """What a :class:`ServerConnection` needs from its node (the server): its protocol and
    limits, where it reports, and the node-wide bookkeeping of connections and handler tasks.
    Read per message where marked: plain attributes on the server."""

    @property
    def metrics(self) -> ServerMetrics: ...

    @property
    def authentication(self) -> AuthenticationFlow: ...

    @property
    def limits(self) -> ServerLimits: ...

    @property
    def protocol(self) -> WireProtocol: ...

    @property
    def protocol_types(self) -> InternalTypes: ...

    @property
    def wire(self) -> Wire: ...

    @property
    def answering(self) -> rpc.Answering: ...

    @property
    def answer_calls(self) -> Callable[..., Any] | None: ...

    @property
    def max_in_flight(self) -> int: ...

    @property
    def max_tasks(self) -> int: ...

    @property
    def tasks_running(self) -> int: ...

    @property
    def saturated(self) -> bool: ...

    @property
    def closing(self) -> bool: ...

    def connection_opened(self, conn: ServerConnection) -> None: ...

    def connection_closed(
        self, conn: ServerConnection, was_valid: bool, code: int, reason: str
    ) -> None: ...

    def report(self, error: WseError, conn: ServerConnection) -> None: ...

    def refuse(self, conn: ServerConnection, code: int, reason: str) -> None: ...

    def task_started(self) -> None: ...

    def task_finished(self) -> None: ...

    def wait_for_tasks(self, conn: ServerConnection) -> None: ...

    def route(
        self,
        event: object,
        origin: tuple[Any, ...],
        reply: rpc.Reply,
        pending: rpc.PendingCalls | None,
        on_error: ErrorSink,
        track: rpc.Track = ...,
    ) -> bool: ...


class ServerConnection(Connection):
    """A :class:`Connection` and the transport's handler of its events.

    Flow control: the tasks its messages and calls start (coroutine handlers) are counted; at
    the server's ``max_in_flight`` per connection, or its ``max_tasks`` in all, the connection
    stops reading its socket. Messages already read wait, copied, in order, and run as tasks
    finish; the peer's TCP window then holds the rest. Every task still running when the
    connection closes is cancelled.

    Metrics (:mod:`wse_fast.metrics`): what it receives is counted as it is decoded, and its
    calls are timed from then until their answer is handed to :meth:`_reply`; each event is
    one call to the meter of its type or procedure (none while the server is not counting).
    """

    __slots__ = (
        "_auth_timer",
        "_backlog",
        "_tasks",
        "_timing",
        "handshake",
        "offered_protocols",
        "stranger",
    )

    _server: SessionHost  # (the slot is Connection's)

    def __init__(self, server: SessionHost, conn_id: str) -> None:
        super().__init__(server, conn_id, ServerSession(server.wire))
        self._auth_timer: asyncio.TimerHandle | None = None
        self.offered_protocols: str | None = None  # set when the client did not offer ours
        self.stranger: StrangerHold | None = None  # until accepted: counts and bounds it
        self.handshake: HandshakeRequest | None = None  # the upgrade request, until accepted
        self._tasks: set[asyncio.Future[Any]] | None = None  # running handler tasks
        self._backlog: deque[tuple[bool, Any]] | None = None  # read while paused
        # calls not answered yet, with their procedure's meter and when they came, while the
        # server counts: one (stamp, meter, time), or several by stamp (see _time_several)
        self._timing: Timing | dict[str, Timing] | None = None

    def log_fields(self) -> dict[str, Any]:
        """What every log record about this connection carries (``extra=``): ``cid`` (None
        until accepted) and ``conn_id``."""
        return {"cid": self.cid, "conn_id": self.conn_id}

    @property
    def tasks_running(self) -> int:
        """How many tasks this connection's messages and calls have running."""
        return len(self._tasks) if self._tasks is not None else 0

    # ---- transport events ------------------------------------------------------------------

    def on_open(self, endpoint: Transport) -> None:
        self.endpoint = endpoint
        if self.stranger is not None:
            self.stranger.on_exhausted = self._budget_spent
        server = self._server
        server.connection_opened(self)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("opened from %s", endpoint.remote_addr, extra=self.log_fields())
        if self.offered_protocols is not None:
            name, offered = server.protocol.name, self.offered_protocols
            detail = f"subprotocol {name!r} not offered (got {offered!r})"
            server.report(ProtocolViolation({"detail": detail}), self)
            server.metrics.count_protocol_error(CLOSE_NORMAL)
            server.refuse(self, CLOSE_NORMAL, WSE_REASON.PROTOCOL_ERR)
            return
        self._auth_timer = server.authentication.opened(self)

    def on_message(self, binary: bool, data: Any) -> None:
        server = self._server
        if self._backlog is not None or server.saturated:
            if server.closing:  # (closing keeps the server saturated)
                self._read_while_draining(binary, data)
                return
            if self._backlog is None:
                self._pause()
            # reading is paused: what was read already waits, copied, in order
            self._backlog.append((binary, data if isinstance(data, str) else bytes(data)))  # type: ignore[union-attr]
            return
        answer = server.answer_calls
        if answer is not None and self.session.state is _VALID:
            # Authenticated, on a built-in protocol: decoded, and a call to a procedure
            # answered, in one codec call (see codec.CallAnswerer). What it decoded without
            # calling anything is given its meaning by the session, as any message is.
            counting = server.metrics.counting
            start = perf_counter() if counting else 0.0
            try:
                outcome = answer(data, self)
            except EnvelopeError as exc:
                event: Any = self.session.undecodable(exc)
            else:
                if len(outcome) == 2:  # (name, response frame): answered
                    frame = outcome[1]
                    endpoint = self.endpoint
                    if endpoint is not None:
                        endpoint.write(frame)
                    if counting:
                        elapsed = perf_counter() - start  # the codec call, decode to encode
                        metrics = server.metrics
                        name = outcome[0]
                        meter = metrics.procedures.get(name) or metrics.procedure(name)
                        meter.served(data, elapsed, len(frame))
                    return
                if len(outcome) > 3:  # called: its result or exception is answered below
                    self._called(outcome, data, counting, start)
                    return
                event = self.session.receive(*outcome)
        else:
            event = self.session.receive_data(binary, data)
        metrics = server.metrics
        if metrics.counting:  # once per message whatever its type: one call to its meter
            cls = event.__class__
            if cls is _CALL:
                # timed from now until its answer reaches _reply, whenever that is
                name = event.name  # type: ignore[union-attr]
                meter = metrics.procedures.get(name) or metrics.procedure(name)
                meter.called(data)
                timing = self._timing
                if timing is None:  # the common case: no other call waits for its answer
                    self._timing = (event.stamp, meter, perf_counter())  # type: ignore[union-attr]
                else:
                    self._time_several(timing, event.stamp, meter)  # type: ignore[union-attr]
            else:
                key: object = event.type if cls is _MESSAGE else cls  # type: ignore[union-attr]
                (metrics.received.get(key) or metrics.received_cell(key, cls)).received(data)
        if not server.route(
            event, (self,), self._reply, self._pending, self._handler_failed, self.track
        ):
            self._authentication_event(event)

    def on_overflow(self) -> None:
        self._server.metrics.slow_consumers += 1
        limit = self._server.limits.max_pending_bytes
        err = WseError(
            WSE_ERROR.CONNECTION_ERROR, {"reason": SLOW_CONSUMER, "max_pending_bytes": limit}
        )
        self._server.report(err, self)

    def on_close(self, code: int, reason: str) -> None:
        was_valid = self.session.valid
        if code in PROTOCOL_CLOSE_CODES:
            self._server.metrics.count_protocol_error(code)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("closed: %d %s", code, reason, extra=self.log_fields())
        self._timing = None
        self.session.closed()
        self.cancel_auth_timer()
        self.handshake = None
        self._backlog = None
        if self.stranger is not None:
            self.stranger.release()
            self.stranger = None
        if self._tasks:
            for task in list(self._tasks):
                task.cancel()
        if self._pending is not None:
            self._pending.reject_all(WSE_ERROR.RP_DISCONNECT, {"code": code, "reason": reason})
        self._server.connection_closed(self, was_valid, code, reason)

    # ---- before authentication -------------------------------------------------------------

    def _authentication_event(self, event: object) -> None:
        """What the session made of a message that is not a message or a call."""
        if isinstance(event, ev.Hello):
            self.identity = event.identity
            self.meta.update(event.meta)
            self._server.authentication.hello(self)
        elif isinstance(event, ev.ChallengeAnswer):
            self._server.authentication.identify(self, event.response)
        elif isinstance(event, ev.Violation):
            self._violation(event.detail)
        elif isinstance(event, ev.TooBig):  # counted as a protocol error by on_close (1009)
            detail = {"detail": "message too big before authentication", "size": event.size}
            self._server.report(ProtocolViolation(detail), self)
            self._server.refuse(self, *self.session.close_for(event))

    def _budget_spent(self) -> None:
        """The stranger sent every byte it may before authentication."""
        err = ProtocolViolation({"detail": OVER_BUDGET_REASON})
        self._server.report(err, self)
        self._server.refuse(self, CLOSE_POLICY_VIOLATION, OVER_BUDGET_REASON)

    def accepted(self, cid: Cid) -> None:
        """identify accepted the connection as user ``cid``: what held it as a stranger goes."""
        self.cancel_auth_timer()
        self.handshake = None
        if self.stranger is not None:
            self.stranger.release()
            self.stranger = None
        self.cid = cid
        self._server.metrics.accepted += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("accepted", extra=self.log_fields())

    def forget_stranger(self) -> None:
        """Refused: what it sent goes at once."""
        self.cancel_auth_timer()
        self.handshake = None
        self.identity = None
        self.meta = {}

    def cancel_auth_timer(self) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None

    # ---- flow control ----------------------------------------------------------------------

    def track(self, task: asyncio.Future[Any]) -> None:
        """Takes charge of a task a handler of this connection started."""
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
        if backlog is None or self._server.closing:
            return
        self._backlog = None
        while backlog:
            binary, data = backlog.popleft()
            self.on_message(binary, data)
            if self.session.state is _CLOSED:
                return
            if self._backlog is not None:  # paused again by that message's task
                self._backlog.extendleft(reversed(backlog))
                return
        if self.endpoint is not None and self.session.state is not _CLOSED:
            self.endpoint.resume_reading()

    # ---- the server's drain (see WseServer.close) --------------------------------------------

    def stop_reading(self) -> None:
        """The server is closing: nothing read from now on starts a handler, and what was read
        but not started is dropped (never run, so never answered). Reading pauses, unless a
        call to the client waits for its answer (a handler still running may need it)."""
        self._backlog = None
        endpoint = self.endpoint
        if endpoint is None:
            return
        if self._pending:
            endpoint.resume_reading()  # perhaps paused by flow control
        else:
            endpoint.pause_reading()

    def _read_while_draining(self, binary: bool, data: Any) -> None:
        """A message read while the server closes: the answer to a call to the client goes
        to its caller; anything else is not run. Reading pauses again once no call waits."""
        event = self.session.receive_data(binary, data)
        if isinstance(event, (ev.Response, ev.ResponseError)):
            pending = self._pending
            self._server.route(event, (self,), self._reply, pending, self._handler_failed)
            if not pending and self.endpoint is not None:
                self.endpoint.pause_reading()

    async def call(self, rp: str, payload: Any = None, timeout: float | None = None) -> Any:
        """As :meth:`Connection.call`; while the server closes, the connection reads again
        until the answer has come."""
        if self._server.closing and self.endpoint is not None:
            # a handler finishing during the drain calls the client: its answer must be read
            self.endpoint.resume_reading()
        return await super().call(rp, payload, timeout)

    def cancel_tasks(self) -> list[asyncio.Future[Any]]:
        """Cancels this connection's running handler tasks (the drain's grace is over):
        those cancelled, to await their answers."""
        tasks = list(self._tasks) if self._tasks else []
        for task in tasks:
            task.cancel()
        return tasks

    # ---- helpers ---------------------------------------------------------------------------

    def _time_several(self, timing: Any, stamp: str, meter: ProcedureMeter) -> None:
        """A call came while others wait for their answer (coroutine procedures)."""
        if timing.__class__ is tuple:
            timing = self._timing = {timing[0]: timing}
        timing[stamp] = (stamp, meter, perf_counter())

    def _called(self, outcome: tuple[Any, ...], data: Any, counting: bool, start: float) -> None:
        """A call the codec made whose answer it left to Python: a result that is not plain
        data (an awaitable, say), or an exception; answered as :meth:`rpc.Answering.run`
        would."""
        name, payload, stamp, result = outcome[:4]
        if counting:
            metrics = self._server.metrics
            meter = metrics.procedures.get(name) or metrics.procedure(name)
            meter.called(data)
            timing = self._timing
            if timing is None:
                self._timing = (stamp, meter, start)
            else:
                self._time_several(timing, stamp, meter)
        answering, args = self._server.answering, (self, payload)
        if len(outcome) == 5:
            answering.answer_error(outcome[4], args, name, stamp, self._reply)
        else:
            answering.answer(result, args, name, stamp, self._reply, self.track)

    def _reply(self, type: str, payload: Any, stamp: str) -> None:
        """Sends the answer to call ``stamp`` (``type``: a response, or an error), and counts
        the call by its result code."""
        server = self._server
        timing = self._timing  # None unless the server is counting
        if timing is not None:
            if timing.__class__ is tuple:
                timed = timing if timing[0] == stamp else None  # type: ignore[index]
                if timed is not None:
                    self._timing = None
            else:
                timed = timing.pop(stamp, None)  # type: ignore[union-attr]
                if not timing:
                    self._timing = None
            if timed is not None:
                _, meter, start = timed  # type: ignore[misc]
                elapsed = perf_counter() - start
                if type == server.protocol_types.response:
                    meter.answered(elapsed)
                else:  # the code may be a device's, relayed: labelled only if declared
                    meter.failed(
                        payload.get("code") if isinstance(payload, dict) else None, elapsed
                    )
        if self.endpoint is not None:
            frame = server.encode(type, payload, stamp)
            self.endpoint.write(frame)
            metrics = server.metrics
            if metrics.counting:
                (metrics.sent.get(type) or metrics.sent_cell(type)).sent(len(frame))

    def _violation(self, detail: str) -> None:
        self._server.report(ProtocolViolation({"detail": detail, "conn_id": self.conn_id}), self)
        self._server.metrics.count_protocol_error(CLOSE_NORMAL)
        if self.session.valid:
            self.drop(WSE_REASON.PROTOCOL_ERR)
        else:
            self._server.refuse(self, CLOSE_NORMAL, WSE_REASON.PROTOCOL_ERR)

    def _handler_failed(self, exc: BaseException) -> None:
        err = WseError(WSE_ERROR.MESSAGE_PROCESSING_ERROR, {"error": repr(exc)})
        err.__cause__ = exc
        self._server.report(err, self)
