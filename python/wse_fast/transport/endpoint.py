"""One WebSocket connection, either side: frames in, messages and a close out.

On the server's sockets (:mod:`.server_socket`) each read arrives as one batch of events
from :class:`wse_fast.codec.FrameReader`, which has applied every framing rule
(:meth:`Endpoint.on_events`); on the client, whose socket is picows's, frames arrive one by
one (:meth:`Endpoint.on_ws_frame`, from the client's ``WSListener``, which hands picows's
callbacks on), and the endpoint does the rest of RFC 6455 that picows leaves to its user:
reassembly and validation (through the sans-I/O assembler) and checking close frames. This
module imports no picows (a frame is read through the attributes it uses), so a process that
only serves never loads it. Either way it answers
pings, runs the close handshake with ``close_timeout`` on every way a connection ends and, on
the client side, masks with keys from the OS CSPRNG (picows's own client masking draws keys
from an unseeded ``rand()``, so every frame the client endpoint sends is written here).

Invariants: one Close frame per connection, and nothing written after it (no data, no pong):
the close handshake's rules are :class:`~wse_fast.sansio.closing.CloseHandshake`'s, which the
endpoint feeds and obeys; no user code runs while frames are being written (a handler called
from inside a flush could otherwise close or write to connections the flush is about to write
to).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

from .. import codec
from ..constants import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_NO_STATUS,
    CLOSE_PROTOCOL_ERROR,
    EVENT_FAIL,
    EVENT_FAIL_IN_CLOSE,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
)
from ..sansio.closing import ABNORMAL_CLOSURE, CloseHandshake, CloseStep
from ..sansio.deflate import RSV_COMPRESSED, Compressor, Inflater
from ..sansio.framing import (
    FrameViolation,
    InflatingAssembler,
    MessageAssembler,
    parse_close,
    whole_message,
)
from .base import EndpointHandler
from .flush import flusher_for
from .per_loop import per_loop

#: From this size on, queued frames are handed over as they are instead of joined.
LARGE_FRAME = 8 * 1024
#: With ``max_pending_bytes`` set, what uvloop's transport may buffer for a peer before frames
#: wait in the endpoint instead (its high-water mark; it asks for more below a quarter of
#: it). Bytes handed to the transport can only leave, in order, before anything else; frames
#: still held here can be thrown away, so a slow consumer's Close 1008 leaves right behind
#: at most this much (and what the kernel holds), not behind ``max_pending_bytes``. uvloop's
#: own default high-water mark.
TRANSPORT_HIGH_WATER = 64 * 1024
#: How often (seconds) open connections are looked at for a Close that picows sent by itself;
#: such a connection then gets its ``close_timeout``, so it ends at most this much later than
#: one closed here. Keepalive with short intervals makes the look more frequent.
CLOSE_WATCH_INTERVAL = 1.0
#: Sent by the keepalive sweep: a server's ping, unmasked, with no payload.
_PING_FRAME = codec.build_frame(OP_PING, b"", mask=False)
_log = logging.getLogger(__name__)


class SocketTransport(Protocol):
    """What an endpoint uses of the transport under it: picows's ``WSTransport`` (clients),
    or the server's own sockets (:class:`~.server_socket.ServerSocket`)."""

    @property
    def underlying_transport(self) -> Any: ...

    @property
    def is_close_frame_sent(self) -> bool: ...

    @property
    def is_disconnected(self) -> bool: ...

    def send_close(self, close_code: Any = ..., close_message: Any = None) -> None: ...

    def disconnect(self, graceful: bool = True) -> None: ...


class Keepalive:
    """Keepalive for a listener's connections, kept by one sweep per event loop instead of a
    timer or task per connection (picows's own keepalive is a task per connection, about
    1.8 KiB each; here it is three slots).

    A connection from which no frame at all has arrived for ``interval`` seconds is pinged;
    when still nothing arrives within ``timeout`` seconds of the ping, it is dropped without a
    Close frame (it is presumed gone; picows's own keepalive sent a Close 1001 first, which
    such a peer would not read). A frame counts once it has fully arrived; before dropping a
    connection the sweep asks the kernel when data last arrived on it (Linux's TCP_INFO), so
    that a peer still sending one long frame, behind which its pong waits, is kept. The
    sweep looks every
    ``min(tick, CLOSE_WATCH_INTERVAL)`` seconds (one look period, every second at the
    defaults), so the silence before a ping is between ``interval`` and ``interval`` plus two
    look periods, and the wait for the answer between ``timeout`` and ``timeout`` plus one.
    """

    __slots__ = ("interval", "tick", "timeout")

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.tick = min(interval, timeout) / 4


class Endpoint:
    """One connection: a server socket's (:class:`~.server_socket.ServerSocket`), or the
    client's on picows (whose ``WSListener``, in :mod:`wse_fast.client`, hands picows's
    callbacks on to it); ``handler`` gets its events.

    Pings are answered here, where a Close already sent or a failed connection is known (the
    client's picows is told not to answer them itself, ``enable_auto_pong=False``).

    ``receive_buffer`` (bytes), when set, is the socket's SO_RCVBUF: what the kernel holds
    unread for the connection. It also turns the kernel's receive autotuning off for the
    socket, so it caps what one connection can receive per round trip (about this many
    bytes).

    ``keepalive``, when set before the connection opens (by the listener), has the loop's
    sweep ping it when idle; client endpoints use picows's own keepalive instead.

    ``max_pending_bytes``, when set, bounds what waits for a peer that reads slower than it
    is written to: frames wait in the transport up to :data:`TRANSPORT_HIGH_WATER`, then in
    the endpoint; past the bound, the frames waiting in the endpoint are dropped and the peer
    gets a Close 1008 ``wse.slow-consumer`` right behind what the transport and the kernel
    already hold (whole frames only: nothing the endpoint holds has begun to leave). The
    close handshake then takes at most ``close_timeout``. (The kernel's buffers, both sides'
    together several MiB on a fast link, are not counted: nothing can be taken back from
    them.)

    Shared with the loop's flusher (:mod:`.flush`), :func:`write_all` and the sweep, which
    read and write them in place on their hot paths (no call per endpoint): ``queue_head``
    and ``queue_tail`` (what waits for this turn's flush), ``data_stopped``, ``close_timer``,
    ``quiet_since`` and ``pinged_at`` (keepalive), ``flusher``, and ``closed_by_picows()``.

    ``closing``: the connection's :class:`~wse_fast.sansio.closing.CloseHandshake`, made at
    its first step towards the end (None while open); the endpoint carries out each
    :class:`~wse_fast.sansio.closing.CloseStep` it returns (:meth:`_carry_out`).
    """

    __slots__ = (
        "_assembler",
        "_close_timeout",
        "_held",
        "_held_bytes",
        "client_side",
        "close_timer",
        "closing",
        "data_stopped",
        "direct_fd",
        "flusher",
        "handler",
        "keepalive",
        "max_message_size",
        "max_pending_bytes",
        "pinged_at",
        "queue_head",
        "queue_tail",
        "quiet_since",
        "receive_buffer",
        "transport",
        "under",
    )

    def __init__(
        self,
        handler: EndpointHandler,
        max_message_size: int,
        client_side: bool,
        close_timeout: float,
        max_pending_bytes: int | None = None,
        receive_buffer: int | None = None,
    ) -> None:
        self.handler = handler
        self.max_pending_bytes = max_pending_bytes
        self.receive_buffer = receive_buffer
        # Frames queued in this loop turn: the first, and a list of any after it. The common
        # case, one broadcast frame per turn, then allocates nothing per delivery (fewer
        # garbage collections in paced fan-out), and an idle connection keeps no list.
        self.queue_head: bytes | None = None
        self.queue_tail: list[bytes] | None = None
        # While the transport is over its high-water mark (paused writing): the frames that
        # wait here for it, in order, and their size. None when frames go straight on.
        self._held: deque[bytes] | None = None
        self._held_bytes = 0
        self.flusher = flusher_for(asyncio.get_running_loop())
        self.direct_fd = -1
        self.client_side = client_side
        self.max_message_size = max_message_size
        self._assembler: MessageAssembler | None = None  # made when the peer first fragments
        self._close_timeout = close_timeout
        self.closing: CloseHandshake | None = None
        # No data frame goes out any more (a Close is out): the one test on the write path,
        # set by the handshake's steps (CloseStep.stop_data).
        self.data_stopped = False
        self.close_timer: asyncio.TimerHandle | None = None  # aborts the socket at close_timeout
        self.transport: SocketTransport | None = None
        self.under: Any = None  # the uvloop transport under the socket, once connected
        self.keepalive: Keepalive | None = None
        # Keepalive state, kept by the sweep: None in quiet_since means a frame arrived since
        # the last look (every frame stores it: one store, the cheapest record of activity);
        # else the loop time of the look that first found the connection quiet.
        self.quiet_since: float | None = None
        self.pinged_at: float | None = None

    # ---- the socket's callbacks (ServerSocket's, and picows's through the client's listener) -

    def on_ws_connected(self, transport: SocketTransport) -> None:
        self.transport = transport
        underlying = transport.underlying_transport
        self.under = underlying
        sock = underlying.get_extra_info("socket")
        if sock is not None:
            if underlying.get_extra_info("sslcontext") is None:
                self.direct_fd = sock.fileno()  # plain TCP: frames may go straight to it
            if self.receive_buffer is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        if self.max_pending_bytes is not None:
            # pause_writing (below) fires past this, resume_writing below a quarter of it
            underlying.set_write_buffer_limits(
                high=min(TRANSPORT_HIGH_WATER, self.max_pending_bytes)
            )
        _sweep(asyncio.get_running_loop()).add(self)
        try:
            self.handler.on_open(self)
        except Exception:
            _log.exception("endpoint handler failed in on_open")
            self._fail(CLOSE_INTERNAL_ERROR, "")

    def pause_writing(self) -> None:
        """The transport holds more than its high-water mark: frames wait here from now on.

        Called by uvloop from inside a write, possibly in the middle of a flush of many
        connections. One write can take the transport past ``max_pending_bytes`` by itself
        (a turn's worth of frames, or one large frame); that peer is dropped at the end of
        this loop turn's callbacks, outside the write.
        """
        limit = self.max_pending_bytes
        if limit is None or self.data_stopped or self.under is None:
            # No limit; or nothing more is written after a Close (close_timeout bounds the
            # wait); or the upgrade's own answer, before the connection is the endpoint's.
            return
        if self._held is None:
            self._held = deque()
        if self.under.get_write_buffer_size() > limit:
            asyncio.get_running_loop().call_soon(self._check_pending)

    def resume_writing(self) -> None:
        """The transport is below a quarter of its high-water mark: hand it the held frames,
        until it is full again."""
        held = self._held
        if held is None:
            return
        transport = self.transport
        if transport is None or transport.is_disconnected:
            self._held, self._held_bytes = None, 0
            return
        if transport.is_close_frame_sent:
            # picows failed the connection by itself meanwhile: nothing after its Close
            self.closed_by_picows()
            return
        self._held = None  # writes go straight to the transport again...
        while held:
            # about one high-water mark's worth per write: one system call for many frames
            batch = [held.popleft()]
            size = len(batch[0])
            while held and size < TRANSPORT_HIGH_WATER:
                frame = held.popleft()
                batch.append(frame)
                size += len(frame)
            self._held_bytes -= size
            self.under.writelines(batch)
            if self._held is not None:  # ... until a write takes it past the mark again
                self._held = held  # (pause_writing made an empty one: nothing came between)
                return
        self._held_bytes = 0

    def _hold(self, head: bytes, tail: list[bytes] | None) -> None:
        """Keeps this turn's frames until the transport asks for more; drops the peer when
        what waits for it is past ``max_pending_bytes``."""
        held = self._held
        assert held is not None and self.max_pending_bytes is not None
        held.append(head)
        size = len(head)
        if tail is not None:
            held.extend(tail)
            for frame in tail:
                size += len(frame)
        self._held_bytes += size
        self._check_pending()

    def _check_pending(self) -> None:
        limit = self.max_pending_bytes
        transport = self.transport
        if self.data_stopped or limit is None or transport is None or transport.is_disconnected:
            return
        if self._held_bytes + self.under.get_write_buffer_size() > limit:
            self._drop_slow_consumer()

    def _drop_slow_consumer(self) -> None:
        """Past ``max_pending_bytes``: what is held here is dropped (none of it has left, so
        the peer sees only whole frames), and the Close 1008 goes behind what the transport
        has already taken. The handshake is as for a protocol failure: nothing more is taken
        from the peer, the server keeps reading until its Close comes (a socket closed with
        unread input would be reset, and the reset can destroy the Close before it is read),
        and the socket is aborted after ``close_timeout``."""
        # what is queued is dropped, not flushed: nothing of it has begun to leave
        self._carry_out(self._before_close(flush=False).overflow())

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        """One frame picows read (``frame`` a ``picows.WSFrame``): the client's way in."""
        self.quiet_since = None  # heard from the peer (see Keepalive)
        # picows's WSMsgType is an IntEnum (its stub says Enum): compared as the opcode itself
        # (``op.value`` is a property, and slow)
        op: int = frame.msg_type
        if op == OP_CLOSE:
            self._on_close_frame(frame)
            return
        if op in (OP_PING, OP_PONG):
            self._on_ping_or_pong(frame)
            return
        # Data sent before the peer saw our close is still delivered; nothing after theirs,
        # and nothing after a protocol violation.
        closing = self.closing
        if closing is not None and not closing.takes_data:
            return
        if (
            op == OP_TEXT
            and frame.fin
            and self._assembler is None
            and not (frame.rsv1 or frame.rsv2 or frame.rsv3)
        ):
            # The common case, a whole text message in one frame, checked here as
            # whole_message would (its size, then its UTF-8, RFC 6455 §8.1); anything it
            # refuses goes on below, to be refused with the right code.
            payload = frame.get_payload_as_memoryview()
            if len(payload) <= self.max_message_size and codec.validate_utf8(payload):
                try:
                    self.handler.on_message(False, payload)
                except Exception:
                    _log.exception("endpoint handler failed in on_message")
                    self._fail(CLOSE_INTERNAL_ERROR, "")
                return
        rsv = (frame.rsv1 << 2) | (frame.rsv2 << 1) | frame.rsv3
        try:
            # A memoryview into picows's read buffer: valid during this call, which is where
            # a single-frame message is decoded; fragments are copied by the assembler.
            payload = frame.get_payload_as_memoryview()
            message: tuple[bool, bytes | memoryview] | None
            assembler = self._assembler
            if assembler is None:
                if frame.fin:
                    message = whole_message(op, rsv, payload, self.max_message_size)
                else:
                    assembler = self._assembler = MessageAssembler(self.max_message_size)
                    message = assembler.feed(op, False, rsv, payload)
            else:
                message = assembler.feed(op, frame.fin, rsv, payload)
        except FrameViolation as violation:
            self._fail(violation.code, violation.reason)
            return
        if message is not None:
            try:
                self.handler.on_message(*message)
            except Exception:
                # Handled here, not by picows: its own close would arm no close_timeout.
                _log.exception("endpoint handler failed in on_message")
                self._fail(CLOSE_INTERNAL_ERROR, "")

    def on_ws_disconnected(self, transport: SocketTransport) -> None:
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        _sweep(asyncio.get_running_loop()).discard(self)
        self.queue_head = self.queue_tail = self._held = None
        self._held_bytes = 0
        # no handshake: the socket ended without a Close either way (1006)
        closing = self.closing
        code, reason = ABNORMAL_CLOSURE if closing is None else closing.outcome
        self.handler.on_close(code, reason)

    # ---- output ----------------------------------------------------------------------------

    @property
    def remote_addr(self) -> Any:
        under = self.under
        return None if under is None else under.get_extra_info("peername")

    @property
    def open(self) -> bool:
        """True until a Close is sent (here or by picows) or the socket is gone."""
        transport = self.transport
        return (
            not self.data_stopped
            and transport is not None
            and not transport.is_close_frame_sent
            and not transport.is_disconnected
        )

    def write(self, frame: bytes) -> None:
        """Queues one complete frame (built by the codec) for this loop turn's flush."""
        # write_all inlines these lines (a call per delivery would cost more than the
        # queueing itself): change both together.
        if not self.data_stopped:
            if self.queue_head is None:
                self.queue_head = frame
                self.flusher.mark(self)
            else:
                tail = self.queue_tail
                if tail is None:
                    self.queue_tail = [frame]
                else:
                    tail.append(frame)

    def write_through(self, data: bytes) -> None:
        self.under.write(data)

    def flush(self) -> None:
        head, tail = self.queue_head, self.queue_tail
        if head is None:
            return
        self.queue_head = self.queue_tail = None
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return
        if transport.is_close_frame_sent:  # picows closed by itself: nothing after its Close
            self.closed_by_picows()
            return
        if self._held is not None:  # the transport is full: after what waits already
            self._hold(head, tail)
        elif tail is None:
            self.under.write(head)
        elif len(head) < LARGE_FRAME:
            self.under.write(b"".join((head, *tail)))  # small frames: one copy, one write
        else:
            self.under.writelines((head, *tail))  # large frames: no joined copy of megabytes

    def close(self, code: int, reason: str = "", *, wait: bool = True) -> None:
        """Sends a Close frame (after what is queued) and ends the connection.

        ``wait=True``: the close handshake; TCP is closed when the peer answers (a server
        closes it at once then, RFC 6455 §7.1.1), or aborted after ``close_timeout``.
        ``wait=False``: for a stranger to be rid of fast: TCP is closed as soon as the Close
        frame has been written out, without waiting for the peer's answer, and aborted after
        ``close_timeout`` if the peer does not read it. (A peer that is still sending then
        may get a reset, which can make it lose the Close frame: it sees a dropped socket.)
        Calling it again with ``wait=False`` on a connection already closing closes TCP now.
        """
        if self.transport is None:
            return  # not connected (yet): nothing to close
        self._carry_out(self._before_close().close(code, reason, wait=wait))

    def abort(self) -> None:
        """Drops the socket now: no Close frame, nothing more written."""
        if self.transport is not None:
            self.transport.disconnect(graceful=False)

    def pause_reading(self) -> None:
        """Stops reading from the peer until :meth:`resume_reading`; idempotent.

        For flow control: while paused, nothing arrives (no messages, no pings, no Close),
        and the peer's sends back up into TCP. picows's keepalive counts only what it reads,
        so a connection paused for longer than ``ping_interval + ping_timeout`` is dropped
        as unresponsive. A closing connection stays as it is.
        """
        under = self.under
        if under is not None and not under.is_closing() and under.is_reading():
            under.pause_reading()

    def resume_reading(self) -> None:
        """Reads from the peer again after :meth:`pause_reading`; idempotent."""
        under = self.under
        if under is not None and not under.is_closing() and not under.is_reading():
            under.resume_reading()

    # ---- close handshake -------------------------------------------------------------------

    def _handshake(self) -> CloseHandshake:
        closing = self.closing
        if closing is None:
            closing = self.closing = CloseHandshake(
                self._close_timeout, client_side=self.client_side
            )
        return closing

    def _before_close(self, *, flush: bool = True) -> CloseHandshake:
        """The connection's close handshake, told first what only the endpoint sees: that the
        transport is gone (nothing more is sent); what is queued, flushed now (``flush``), as
        it leaves before any Close (the flush can drop a slow consumer, whose Close then goes
        first); and a Close picows sent by itself."""
        closing = self._handshake()
        transport = self.transport
        if transport is None or transport.is_disconnected:
            closing.transport_gone()
        elif not self.data_stopped:
            if flush:
                self.flush()
            if not self.data_stopped and transport.is_close_frame_sent:
                self.closed_by_picows()
        return closing

    def _carry_out(self, step: CloseStep) -> None:
        """Does what the close handshake decided, in its order."""
        if step.stop_data:
            self.data_stopped = True  # from here on pause_writing holds nothing back either
        if step.drop_pending:
            self.queue_head = self.queue_tail = self._held = None
            self._held_bytes = 0
        if step.report_overflow:
            asyncio.get_running_loop().call_soon(self.handler.on_overflow)
        if step.send_close is not None:
            self._write_close(*step.send_close)
        if step.hang_up:
            assert self.transport is not None
            self.transport.disconnect()  # gracefully: once the Close has left
        if step.deadline is not None:
            loop = asyncio.get_running_loop()
            self.close_timer = loop.call_later(step.deadline, self.abort)

    def _fail(self, code: int, reason: str) -> None:
        """The peer broke the protocol (RFC 6455 §7.1.7): Close with ``code``, take no more."""
        self._carry_out(self._before_close().fail(code, reason))

    def _fail_in_close(self, code: int, reason: str) -> None:
        """The peer's Close frame is broken: the peer is closing anyway, answer and hang up."""
        self._carry_out(self._before_close().fail_in_close(code, reason))

    def _write_close(self, code: int, reason: str) -> None:
        """Writes the one Close frame, after the frames held for a paused transport."""
        transport = self.transport
        assert transport is not None
        held = self._held
        if held is not None:
            # What waits here leaves before the Close: at most max_pending_bytes, and the
            # socket is aborted after close_timeout whatever the peer reads.
            self._held = None
            self._held_bytes = 0
            self.under.writelines(held)
        text = reason.encode()  # cut to what a Close carries by the handshake
        if self.client_side:
            body = struct.pack("!H", code) + text if code != CLOSE_NO_STATUS else b""
            self.under.write(codec.build_frame(OP_CLOSE, body, mask=True))
        else:
            # Through the server's socket, which always sends a status code: a Close without
            # one is answered with 1000.
            transport.send_close(code, text)

    def _on_close_frame(self, frame: Any) -> None:
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self._fail_in_close(CLOSE_PROTOCOL_ERROR, "reserved bits set on a control frame")
            return
        try:
            code, reason = parse_close(frame.get_payload_as_bytes())
        except FrameViolation as violation:
            self._fail_in_close(violation.code, violation.reason)
            return
        self._on_close(code, reason)

    def _on_close(self, code: int, reason: str) -> None:
        """The peer's valid Close frame: answered, then TCP closed (a server's side)."""
        self._carry_out(self._before_close().receive_close(code, reason))

    def on_events(self, events: list[tuple[int, Any, Any]]) -> None:
        """What one read of the socket completed (see :class:`wse_fast.codec.FrameReader`,
        which has applied every framing rule): messages reach the handler in order, pings
        are answered, a Close is answered, a failure closes the connection."""
        self.quiet_since = None  # heard from the peer (see Keepalive)
        handler = self.handler
        for kind, first, second in events:
            if kind in (OP_TEXT, OP_BINARY):
                # data sent before the peer saw our Close is still delivered; nothing after
                # a failure (the reader stops after the peer's Close by itself)
                closing = self.closing
                if closing is not None and closing.failed:
                    continue
                if second:  # compressed (RSV1), only where permessage-deflate was agreed
                    first = self._inflated(kind, first)
                    if first is None:
                        continue
                try:
                    handler.on_message(kind == OP_BINARY, first)
                except Exception:
                    _log.exception("endpoint handler failed in on_message")
                    self._fail(CLOSE_INTERNAL_ERROR, "")
            elif kind == OP_PING:
                if not self._has_failed():  # write() takes nothing once a Close is sent
                    self.write(codec.build_frame(OP_PONG, first, mask=self.client_side))
            elif kind == OP_CLOSE:
                self._on_close(first, second)
            elif kind == EVENT_FAIL_IN_CLOSE:
                self._fail_in_close(first, second)
            elif kind == EVENT_FAIL:
                self._fail(first, second)
            # EVENT_OVER_BUDGET (a stranger's bytes ran out, always last) is passed over:
            # its socket hands it to what holds the stranger (see ServerSocket._dispatch)

    def _inflated(self, kind: int, payload: bytes) -> bytes | None:
        """A compressed message inflated; None after failing the connection (only a
        :class:`DeflateEndpoint` agrees to compression)."""
        self._fail(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
        return None

    def _on_ping_or_pong(self, frame: Any) -> None:
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self._fail(CLOSE_PROTOCOL_ERROR, "reserved bits set on a control frame")
        elif frame.msg_type == OP_PING and not self._has_failed():
            # write() takes nothing once a Close is sent; flush() nothing after picows's own.
            payload = frame.get_payload_as_bytes()
            self.write(codec.build_frame(OP_PONG, payload, mask=self.client_side))

    def _has_failed(self) -> bool:
        closing = self.closing
        return closing is not None and closing.failed

    def closed_by_picows(self) -> None:
        """picows has sent a Close of its own: drop what is queued, end within close_timeout.

        picows fails a connection by itself for what it finds while parsing (an unknown
        opcode, a fragmented or oversized control frame, an unmasked client frame, a frame
        over ``max_frame_size``, a close frame it rejects), and for a keepalive ping left
        unanswered. It then closes TCP gracefully, that is only once the peer has read what
        is queued, and tells its listener nothing. (Also called once our own Close is out,
        which the transport reports the same way: then only what is queued is dropped.)
        """
        self._carry_out(self._handshake().transport_sent_close())


class DeflateEndpoint(Endpoint):
    """An endpoint whose connection agreed to permessage-deflate (RFC 7692).

    Received messages with RSV1 are inflated, at most to ``inflate_limit`` bytes (close 1009
    past it) each and ``inflate_budget`` bytes in all until :meth:`accepted` (close 1008 past
    it): on a socket that reads frames with :class:`wse_fast.codec.FrameReader`, by that
    reader (see :meth:`inflate_in`); through picows, by an assembler made with the endpoint.
    Plain messages pass as on :class:`Endpoint`, whose frame path is the same. Frames
    written one by one are compressed by ``compressor`` (None: sent plain); a broadcast
    reaches endpoints that share one compressor already compressed, through
    :func:`write_all`.
    """

    __slots__ = ("_inflater", "_reader", "compressor")

    def __init__(
        self,
        handler: EndpointHandler,
        max_message_size: int,
        client_side: bool,
        close_timeout: float,
        max_pending_bytes: int | None = None,
        receive_buffer: int | None = None,
        *,
        compressor: Compressor | None,
        inflater: Inflater,
        inflate_limit: int,
        inflate_budget: int | None = None,
    ) -> None:
        super().__init__(
            handler, max_message_size, client_side, close_timeout, max_pending_bytes, receive_buffer
        )
        self.compressor = compressor
        self._inflater = inflater
        self._reader: codec.FrameReader | None = None  # the one that inflates (inflate_in)
        # made now, not when the peer first fragments: it is what sees RSV1 through picows
        self._assembler = InflatingAssembler(
            max_message_size, inflater, inflate_limit, inflate_budget
        )

    def inflate_in(self, reader: codec.FrameReader) -> None:
        """``reader`` (a :class:`wse_fast.codec.FrameReader` made for this endpoint's socket)
        inflates the compressed messages from now on, with this endpoint's window, context
        takeover, limit and budget; :meth:`accepted` lifts them there too. The messages then
        reach :meth:`on_events` inflated, and the assembler stays unused."""
        assembler = self._assembler
        assert isinstance(assembler, InflatingAssembler)
        inflater = self._inflater
        reader.inflate_messages(
            inflater.window_bits,
            inflater.takeover,
            assembler.inflate_limit,
            assembler.inflate_budget,
        )
        self._reader = reader

    @property
    def inflate_limit(self) -> int:
        """The largest size a compressed message may inflate to."""
        assert isinstance(self._assembler, InflatingAssembler)
        return self._assembler.inflate_limit

    @inflate_limit.setter
    def inflate_limit(self, limit: int) -> None:
        assert isinstance(self._assembler, InflatingAssembler)
        self._assembler.inflate_limit = limit
        if self._reader is not None:
            self._reader.inflate_limit = limit

    def accepted(self, max_message_size: int) -> None:
        """The connection is accepted: a compressed message may inflate as far as a plain
        one may be large, and no budget bounds them together any more."""
        assert isinstance(self._assembler, InflatingAssembler)
        self._assembler.inflate_limit = max_message_size
        self._assembler.inflate_budget = None
        reader = self._reader
        if reader is not None:
            reader.inflate_limit = max_message_size
            reader.inflate_budget = None

    def _inflated(self, kind: int, payload: bytes) -> bytes | None:
        assert isinstance(self._assembler, InflatingAssembler)
        try:
            message = self._assembler.feed(kind, True, RSV_COMPRESSED, payload)
        except FrameViolation as violation:
            self._fail(violation.code, violation.reason)
            return None
        assert message is not None  # a whole message
        return bytes(message[1])

    def write(self, frame: bytes) -> None:
        """Queues one complete unmasked frame, compressed when it is a data frame over the
        compressor's threshold."""
        compressor = self.compressor
        if compressor is not None and not self.data_stopped:
            frame = compressor.compress_frame(frame)
        super().write(frame)


def write_all(endpoints: Iterable[Endpoint], frame: bytes) -> None:
    """Queues one frame for every endpoint in ``endpoints`` (a broadcast: encoded once)."""
    # Endpoint.write, inlined (keep the two alike): this loop runs once per delivery.
    newly_dirty = []
    for endpoint in endpoints:
        if not endpoint.data_stopped:
            if endpoint.queue_head is None:
                endpoint.queue_head = frame
                newly_dirty.append(endpoint)
            else:
                tail = endpoint.queue_tail
                if tail is None:
                    endpoint.queue_tail = [frame]
                else:
                    tail.append(frame)
    if newly_dirty:
        newly_dirty[0].flusher.mark_all(newly_dirty)


class _Sweep:
    """The open endpoints of one event loop, looked at every few moments for two things.

    A connection that picows closes by itself (see :meth:`Endpoint.closed_by_picows`) shows
    it only in its transport's ``is_close_frame_sent``; without a look, a peer that stops
    reading would keep its socket and backlog for as long as it likes. And a connection
    with a :class:`Keepalive` that has been quiet too long is pinged, then dropped.

    The look comes every ``CLOSE_WATCH_INTERVAL`` seconds, or every keepalive ``tick`` when
    that is shorter (the shortest seen on this loop). It costs about 100 ns per open
    connection: 20 000 connections take 2 ms per second of one core at the defaults.
    """

    __slots__ = ("_endpoints", "_handle", "_loop", "_period")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._endpoints: set[Endpoint] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._period = CLOSE_WATCH_INTERVAL

    def add(self, endpoint: Endpoint) -> None:
        self._endpoints.add(endpoint)
        keepalive = endpoint.keepalive
        if keepalive is not None and keepalive.tick < self._period:
            self._period = keepalive.tick
            if self._handle is not None:  # due later than the new period allows
                self._handle.cancel()
                self._handle = None
        if self._handle is None:
            self._handle = self._loop.call_later(self._period, self._look)

    def discard(self, endpoint: Endpoint) -> None:
        self._endpoints.discard(endpoint)

    def _look(self) -> None:
        self._handle = None
        try:
            self._look_at_each()
        finally:  # one endpoint's failure must not end the looks for every other
            if self._endpoints and self._handle is None:
                self._handle = self._loop.call_later(self._period, self._look)

    def _look_at_each(self) -> None:
        now = self._loop.time()  # one float shared by every endpoint marked in this look
        closed_by_picows: list[Endpoint] = []
        to_ping: list[Endpoint] = []
        gone: list[Endpoint] = []
        for endpoint in self._endpoints:
            # close_timer first: endpoints closing here have their close_timeout armed already,
            # and it is the cheaper read
            if endpoint.close_timer is None and endpoint.transport.is_close_frame_sent:  # type: ignore[union-attr]
                closed_by_picows.append(endpoint)
                continue
            # Keepalive goes on while closing (a peer silent that long is gone: no need to
            # wait for close_timeout); write() sends no ping after our Close.
            keepalive = endpoint.keepalive
            if keepalive is None:
                continue
            quiet_since = endpoint.quiet_since
            if quiet_since is None:  # heard from since the last look
                endpoint.quiet_since = now
                endpoint.pinged_at = None
                continue
            pinged_at = endpoint.pinged_at
            if pinged_at is None:
                if now - quiet_since >= keepalive.interval:
                    to_ping.append(endpoint)
            elif now - pinged_at >= keepalive.timeout:
                since = _seconds_since_data_received(endpoint)
                if since is not None and since < now - pinged_at:
                    # bytes came after the ping: a frame still on its way, which its pong
                    # must wait behind; alive, so quiet from now
                    endpoint.quiet_since = now
                    endpoint.pinged_at = None
                else:
                    gone.append(endpoint)
        for endpoint in closed_by_picows:
            endpoint.closed_by_picows()
        for endpoint in to_ping:
            endpoint.pinged_at = now
            endpoint.write(_PING_FRAME)
        for endpoint in gone:
            _log.debug("no answer to a keepalive ping: dropping the connection")
            endpoint.abort()


#: Where Linux's ``struct tcp_info`` keeps ``tcpi_last_data_recv`` (milliseconds since data
#: last arrived on the socket): after 8 one-byte fields and 10 four-byte ones.
_TCP_INFO_LAST_DATA_RECV = 52
_TCP_INFO = getattr(socket, "TCP_INFO", None)


def _seconds_since_data_received(endpoint: Endpoint) -> float | None:
    """How long ago the kernel last received data on ``endpoint``'s socket, or None where
    that cannot be told (not Linux, no socket). Asked only before a keepalive drop."""
    if _TCP_INFO is None or endpoint.under is None:
        return None
    sock = endpoint.under.get_extra_info("socket")
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 104)
    except OSError:
        return None
    if len(info) < _TCP_INFO_LAST_DATA_RECV + 4:
        return None
    milliseconds: int = struct.unpack_from("=I", info, _TCP_INFO_LAST_DATA_RECV)[0]
    return milliseconds / 1000


@per_loop
def _sweep(loop: asyncio.AbstractEventLoop) -> _Sweep:
    """The keepalive sweep of ``loop``, shared by every endpoint on it."""
    return _Sweep(loop)
