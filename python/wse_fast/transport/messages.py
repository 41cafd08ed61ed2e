"""One connection on a host server that does the WebSocket framing itself (ASGI, aiohttp).

Such servers take and give whole messages, each through a coroutine; this endpoint gives the
WSE layer the same synchronous :class:`~wse_fast.transport.base.Transport` as the own
listener's: frames written in one loop turn queue up and one drain task sends them in order, a
Close after them. What it adds to the host's own rules: the message size limit, the
pending-bytes limit (the host's ``send`` hides its buffer, so what waits here is counted),
pausing reads for flow control, ``close_timeout`` on every way out, and the stranger's byte
budget. The close handshake's rules are :class:`~wse_fast.sansio.closing.CloseHandshake`'s, as
on the own listener's endpoint: this one feeds it and carries out its steps.

Subclasses say how a message, a close and the next event cross the host's interface.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Coroutine, Generator
from typing import Any

from ..constants import CLOSE_INTERNAL_ERROR, CLOSE_TOO_BIG
from ..sansio.closing import ABNORMAL_CLOSURE, CloseHandshake, CloseStep
from ..sansio.framing import unframe
from .admission import StrangerTicket
from .base import EndpointHandler
from .per_loop import per_loop

_log = logging.getLogger(__name__)

#: What :meth:`MessageEndpoint.receive_event` returns: a message ``(binary, data)``, or the
#: end of the connection ``(code, reason)`` as ``None, (code, reason)``.
Received = tuple[bool, Any] | tuple[None, tuple[int, str]]


class MessageEndpoint:
    """The WSE side of one connection on a message-level host server.

    The host's coroutine for the connection calls :meth:`serve`, which returns once the
    connection is over (the host then closes the socket if it is still open).
    """

    __slots__ = (
        "_close_written",
        "_context",
        "_done",
        "_drain",
        "_eager",
        "_loop",
        "_marked",
        "_out",
        "_out_bytes",
        "_remote_addr",
        "_resume",
        "_timer",
        "close_timeout",
        "closing",
        "data_stopped",
        "handler",
        "max_message_size",
        "max_pending_bytes",
        "ticket",
    )

    #: Whether :meth:`send_close` returns only once the close handshake is over (the host
    #: waits for the peer's Close itself), so that the connection ends with it.
    close_ends_connection = False
    #: Whether the peer's Close is answered here (after what is queued), not by the host.
    echoes_close = False

    def __init__(
        self,
        handler: EndpointHandler,
        *,
        max_message_size: int,
        max_pending_bytes: int | None,
        close_timeout: float,
        remote_addr: Any,
        ticket: StrangerTicket | None,
    ) -> None:
        self.handler = handler
        self.max_message_size = max_message_size
        self.max_pending_bytes = max_pending_bytes
        self.close_timeout = close_timeout
        self.ticket = ticket
        self._remote_addr = remote_addr
        self._loop = asyncio.get_running_loop()
        # frames waiting for the host, oldest first; None while there are none (an empty
        # deque costs 760 bytes, and idle connections are many)
        self._out: deque[bytes] | None = None
        self._out_bytes = 0
        self._drain: asyncio.Task[None] | None = None
        # the close handshake, made at the first step towards the end (None while open)
        self.closing: CloseHandshake | None = None
        # no data frame is queued any more (a Close is on its way): set by its steps
        self.data_stopped = False
        self._close_written = False  # the host was given our Close
        self._resume: asyncio.Event | None = None  # set while reading is paused
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._marked = False  # waits for the end of the loop turn to send what was written
        self._eager = True  # the host's send may be started outside a task (see _start_drain)
        # the host's context for this connection (made in its coroutine for it: the request's
        # context variables): every send runs in it, also those started at a loop turn's end
        self._context = contextvars.copy_context()

    # ---- the host's side (subclasses) ------------------------------------------------------

    async def send_message(self, binary: bool, payload: memoryview) -> None:
        raise NotImplementedError

    async def send_close(self, code: int, reason: str) -> None:
        raise NotImplementedError

    async def receive_event(self) -> Received:
        raise NotImplementedError

    def drop_connection(self) -> None:
        """Drops the socket now, without a Close and without sending what the host still
        buffers, where the host lets the endpoint reach its socket (a peer that stopped
        reading would otherwise keep that buffer, and the host's task, until it reads)."""

    # ---- running ---------------------------------------------------------------------------

    async def serve(self) -> None:
        """Runs the connection from its accepted upgrade to its end."""
        try:
            self.handler.on_open(self)
        except Exception:
            _log.exception("endpoint handler failed in on_open")
            self._fail(CLOSE_INTERNAL_ERROR, "")
        reader = self._loop.create_task(self._read())
        try:
            await self._done
        finally:
            reader.cancel()
            if self._drain is not None:
                self._drain.cancel()
            if self._timer is not None:
                self._timer.cancel()
            self._out = None
            closing = self.closing
            code, reason = ABNORMAL_CLOSURE if closing is None else closing.outcome
            if self.ticket is not None:
                self.ticket.release()
            self.handler.on_close(code, reason)

    async def _read(self) -> None:
        try:
            while True:
                while self._resume is not None:  # paused again before this task woke
                    await self._resume.wait()
                binary, data = await self.receive_event()
                if binary is None:
                    self._carry_out(self._before_close().receive_close(*data))
                    if self.echoes_close:
                        # the answer leaves after what was queued before it, through the drain
                        while self._drain is not None and not self._done.done():
                            await asyncio.shield(self._drain)
                    self._finish()
                    return
                closing = self.closing
                if closing is not None and not closing.takes_data:
                    continue
                size = len(data)
                ticket = self.ticket
                if isinstance(data, str) and (
                    size * 4 > self.max_message_size or (ticket is not None and ticket.held)
                ):
                    size = len(data.encode())  # text from the host is str: limits count bytes
                if size > self.max_message_size:
                    self._fail(CLOSE_TOO_BIG, "message too big")
                    continue
                if ticket is not None and ticket.held:
                    ticket.spend(size)  # past the budget: the connection is closed
                    closing = self.closing
                    if closing is not None and (closing.failed or self.data_stopped):
                        continue
                self.handler.on_message(binary, data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the host lost the connection in a way of its own
            _log.debug("connection lost: %r", exc)
            self._finish()

    async def closed(self) -> None:
        """Returns once the connection is over."""
        await asyncio.shield(self._done)

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    # ---- Transport -------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return not self.data_stopped and not self._done.done()

    @property
    def remote_addr(self) -> Any:
        return None if self._done.done() else self._remote_addr

    def write(self, frame: bytes) -> None:
        if self.data_stopped or self._done.done():
            return
        out = self._out
        if out is None:
            out = self._out = deque()
        out.append(frame)
        self._out_bytes += len(frame)
        limit = self.max_pending_bytes
        if limit is not None and self._out_bytes > limit:
            self._overflow()
            return
        if self._drain is None and not self._marked:
            # sent at the end of this loop turn, with whatever else is written to it by then
            self._marked = True
            _turn_end(self._loop).mark(self)

    def close(self, code: int, reason: str = "", *, wait: bool = True) -> None:
        self._carry_out(self._before_close().close(code, reason, wait=wait))

    def abort(self) -> None:
        self._out = None
        self._finish()
        self.drop_connection()

    def pause_reading(self) -> None:
        if self._resume is None:
            self._resume = asyncio.Event()

    def resume_reading(self) -> None:
        resume, self._resume = self._resume, None
        if resume is not None:
            resume.set()

    # ---- internals -------------------------------------------------------------------------

    def turn_ended(self) -> None:
        """The loop turn in which frames were written to it is over: send them."""
        self._marked = False
        if self._drain is None and self._out:
            self._start_drain()

    def _start_drain(self) -> None:
        """Sends what is queued now, in this call, as far as the host takes it without
        waiting; only a send that has to wait (the host's buffer is full) continues in a task.

        A task for every write would cost more than the send itself in a paced fan-out, where
        each broadcast finds every connection's queue empty.
        """
        context = self._context
        if not self._eager:  # the host's send needs a task of its own
            self._drain = self._loop.create_task(self._drain_out(), context=context)
            return
        drain = self._drain_out()
        try:
            waiting = context.run(drain.send, None)
        except StopIteration:
            if self._out and not self._eager:  # it found out just now: the rest in a task
                self._drain = self._loop.create_task(self._drain_out(), context=context)
            return
        self._drain = self._loop.create_task(_carry_on(drain, waiting), context=context)

    async def _drain_out(self) -> None:
        try:
            while out := self._out:  # read again after each send: an overflow drops it
                frame = out.popleft()
                self._out_bytes -= len(frame)
                binary, payload = unframe(frame)
                try:
                    await self.send_message(binary, payload)
                except RuntimeError:
                    if asyncio.current_task() is not None:
                        raise
                    # A send that needs a task (asyncio.timeout in the host or a middleware):
                    # this one, and every later one, goes in a task.
                    out.appendleft(frame)
                    self._out_bytes += len(frame)
                    self._eager = False
                    return
            self._out = None
            closing = self.closing
            if closing is not None and closing.close_sent is not None and not self._close_written:
                self._close_written = True
                await self.send_close(*closing.close_sent)
                if closing.hangs_up or self.close_ends_connection:
                    self._finish()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the peer is gone: the reader learns it too
            level = logging.DEBUG if isinstance(exc, OSError) else logging.WARNING
            _log.log(level, "send failed: %r", exc)
            self._out = None
            self._finish()
        finally:
            self._drain = None

    def _overflow(self) -> None:
        """The peer reads slower than it is written to: as on the own listener's endpoint, what
        waits here is dropped and a Close 1008 ``wse.slow-consumer`` follows the message the
        host is sending (the drain sends it once that send returns, that is once the host's own
        buffer has room), so a peer that catches up reads the 1008; ``close_timeout`` bounds
        the whole, as for a protocol failure (nothing more is taken from the peer)."""
        self._carry_out(self._before_close().overflow())

    def _fail(self, code: int, reason: str) -> None:
        self._carry_out(self._before_close().fail(code, reason))

    def _before_close(self) -> CloseHandshake:
        """The connection's close handshake, told first whether the connection is over
        (nothing more is sent then)."""
        closing = self.closing
        if closing is None:
            closing = self.closing = CloseHandshake(
                self.close_timeout, answers_close=self.echoes_close
            )
        if self._done.done():
            closing.transport_gone()
        return closing

    def _carry_out(self, step: CloseStep) -> None:
        """Does what the close handshake decided, in its order."""
        if step.stop_data:
            self.data_stopped = True
        if step.drop_pending:
            # the drain sends nothing more of it: it reads _out after each send
            self._out = None
            self._out_bytes = 0
        if step.report_overflow:
            self._loop.call_soon(self.handler.on_overflow)
        if step.hang_up and self._close_written:
            self._finish()  # our Close is out already: the connection ends now
            return
        if step.send_close is not None and self._drain is None:
            self._start_drain()  # what is queued, then the Close (once hung up: the end)
        if step.deadline is not None:
            self._timer = self._loop.call_later(step.deadline, self.abort)


async def _carry_on(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    await _Continued(coro, waiting)


class _Continued:
    """A coroutine started by hand and suspended on ``waiting``, as an awaitable a task can
    carry on: it hands the task what the coroutine waits for, and the coroutine what the task
    sends back (a result, or an exception such as a cancellation), until it returns."""

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting

    def __await__(self) -> Generator[Any, Any, None]:
        coro, waiting = self._coro, self._waiting
        while True:
            try:
                sent = yield waiting
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # thrown in by the task: the coroutine handles it
                try:
                    waiting = coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                waiting = coro.send(sent)
            except StopIteration:
                return


class _TurnEnd:
    """The endpoints written to in this loop turn, sent to in one callback at its end (as
    :mod:`.flush` does for the own listener): a burst's frames to one connection leave
    together, and a paced broadcast costs one callback, not a task for every connection."""

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[MessageEndpoint] = []
        self._scheduled = False

    def mark(self, endpoint: MessageEndpoint) -> None:
        self._dirty.append(endpoint)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        for endpoint in dirty:
            try:
                endpoint.turn_ended()
            except Exception:  # the host failed in a way of its own: that connection ends
                _log.exception("sending to a connection failed")
                endpoint.abort()


@per_loop
def _turn_end(loop: asyncio.AbstractEventLoop) -> _TurnEnd:
    """The turn end of ``loop``, shared by every message-level endpoint on it."""
    return _TurnEnd(loop)
