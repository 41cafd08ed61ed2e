"""The WebSocket close handshake of one connection, without I/O (RFC 6455 §5.5.1, §7).

Every transport's endpoint (:class:`~wse_fast.transport.endpoint.Endpoint` on the
server's own sockets and the client's picows,
:class:`~wse_fast.transport.messages.MessageEndpoint` on ASGI and aiohttp) tells its
:class:`CloseHandshake` what happened (a close asked for, a protocol failure, the peer's Close,
a slow consumer, the transport closing) and carries out the :class:`CloseStep` it gets back:
stop writing data, drop what waits, write this Close, hang up, arm the close deadline. The
rules live here once:

- one Close per connection, and no data frame after it (§5.5.1);
- the peer's Close is answered once, with its own code and reason, as the reference (Node.js
  ``ws``) does (how a Close without a status code is answered is the frame writer's: a
  server says 1000, a client no code);
- once both Closes are out, the server closes TCP first (§7.1.1), the client waits for it;
- a failure (§7.1.7) takes nothing more from the peer and sends a Close; a Close frame that
  is itself broken is answered and TCP closed at once (the peer is closing anyway);
- a slow consumer's waiting frames are dropped and it gets a Close 1008
  ``wse.slow-consumer`` (never after a Close);
- every way into the handshake arms the close deadline, once: the transport aborts the
  socket when it expires;
- nothing is sent once the transport is gone or has sent a Close of its own.

States (from the two Closes; see :attr:`CloseHandshake.state`)::

    OPEN --close, fail, overflow, transport's Close--> CLOSE_SENT --peer's Close--> CLOSED
    OPEN --peer's Close, answered--> CLOSED
    OPEN --peer's Close, answered by the host--> CLOSE_RECEIVED --close--> CLOSED

An endpoint makes its handshake at the first step towards the end, not with the connection:
an open connection holds none (idle connections are many).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

from ..constants import CLOSE_ABNORMAL, CLOSE_POLICY_VIOLATION, SLOW_CONSUMER

#: The most a Close frame's reason may take: 125 bytes of payload less the 2-byte code
#: (RFC 6455 §5.5).
MAX_CLOSE_REASON = 123


class CloseState(Enum):
    OPEN = auto()  # no Close either way
    CLOSE_SENT = auto()  # ours is out (or the transport's), the peer's awaited
    CLOSE_RECEIVED = auto()  # the peer's came, ours is not out (the host answers it)
    CLOSED = auto()  # both: the connection ends


@dataclass(frozen=True, slots=True)
class CloseStep:
    """What the endpoint does now, in this order (each field: this step's action only)."""

    #: No data frame may be written from now on (a Close is out, or is about to be).
    stop_data: bool = False
    #: Throw away the frames that wait in the endpoint and have not begun to leave.
    drop_pending: bool = False
    #: Tell the handler that the peer was dropped for reading too slowly.
    report_overflow: bool = False
    #: Write this Close ``(code, reason)`` after what is queued before it (the reason is cut
    #: to :data:`MAX_CLOSE_REASON` bytes already).
    send_close: tuple[int, str] | None = None
    #: Close TCP once the Close is out (or now, if it is out already).
    hang_up: bool = False
    #: Arm the close deadline: abort the socket after this many seconds.
    deadline: float | None = None


#: The step that does nothing.
NOTHING = CloseStep()

#: How a connection without a close handshake ends (RFC 6455 §7.1.5: no Close received).
ABNORMAL_CLOSURE = (CLOSE_ABNORMAL, "")


def cut_reason(reason: str) -> str:
    """``reason`` cut to what a Close frame carries, on a character boundary (RFC 6455 §5.5)."""
    return reason.encode()[:MAX_CLOSE_REASON].decode("utf-8", "ignore")


class CloseHandshake:
    """The close handshake of one connection: fed what happened, returns what to do.

    ``close_timeout``: the close deadline's length (seconds). ``client_side``: the client
    waits for the server to close TCP (RFC 6455 §7.1.1). ``answers_close``: whether the
    endpoint answers the peer's Close itself (False where the host does, as ASGI servers do).
    """

    __slots__ = (
        "answers_close",
        "client_side",
        "close_received",
        "close_sent",
        "close_timeout",
        "deadline_armed",
        "failed",
        "hangs_up",
        "sending_over",
    )

    def __init__(
        self, close_timeout: float, *, client_side: bool = False, answers_close: bool = True
    ) -> None:
        self.close_timeout = close_timeout
        self.client_side = client_side
        self.answers_close = answers_close
        #: Our Close ``(code, reason as sent)``; None until one is sent.
        self.close_sent: tuple[int, str] | None = None
        #: The peer's valid Close ``(code, reason)``; None until it comes.
        self.close_received: tuple[int, str] | None = None
        #: The peer broke the protocol: nothing more is taken from it.
        self.failed = False
        #: TCP is to close as soon as our Close is out (a transport that answers later reads it).
        self.hangs_up = False
        #: Nothing more can be sent: the transport is gone, or it sent a Close of its own.
        self.sending_over = False
        self.deadline_armed = False

    # ---- what the endpoint asks --------------------------------------------------------------

    @property
    def state(self) -> CloseState:
        sent = self.close_sent is not None or self.sending_over
        if self.close_received is None:
            return CloseState.CLOSE_SENT if sent else CloseState.OPEN
        return CloseState.CLOSED if sent else CloseState.CLOSE_RECEIVED

    @property
    def takes_data(self) -> bool:
        """Whether a data message from the peer is still delivered: until its Close, and not
        after a failure (data sent before the peer saw our Close is delivered)."""
        return self.close_received is None and not self.failed

    @property
    def outcome(self) -> tuple[int, str]:
        """The code and reason the connection is closed with: the peer's Close, else ours,
        else 1006 (abnormal closure)."""
        return self.close_received or self.close_sent or ABNORMAL_CLOSURE

    # ---- what happened -------------------------------------------------------------------------

    def close(self, code: int, reason: str = "", *, wait: bool = True) -> CloseStep:
        """A Close is asked for: sent once, after what is queued; ``wait=False`` ends TCP as
        soon as it is out, without waiting for the peer's answer (as does a server that has
        the peer's already). Asked again, it sends nothing more, and hangs up with
        ``wait=False``."""
        if self.sending_over:
            return NOTHING
        send = None
        if self.close_sent is None:
            send = self.close_sent = (code, cut_reason(reason))
        hang_up = not wait or (self.close_received is not None and not self.client_side)
        if hang_up:
            self.hangs_up = True
        return CloseStep(
            stop_data=send is not None, send_close=send, hang_up=hang_up, deadline=self._deadline()
        )

    def fail(self, code: int, reason: str) -> CloseStep:
        """The peer broke the protocol (RFC 6455 §7.1.7): nothing more is taken from it, and
        it gets a Close with ``code``; the server reads on until the peer's Close comes (a
        socket closed with unread input is reset, and the reset can destroy the Close before
        it is read), bounded by the deadline."""
        self.failed = True
        return self.close(code, reason)

    def fail_in_close(self, code: int, reason: str) -> CloseStep:
        """The peer's Close frame is itself broken: it is closing anyway, so it is answered
        with ``code`` and TCP is closed at once."""
        self.failed = True
        return self.close(code, reason, wait=False)

    def receive_close(self, code: int, reason: str) -> CloseStep:
        """The peer's valid Close: answered with its own code and reason unless ours is out;
        then the server closes TCP (RFC 6455 §7.1.1), bounded by the deadline."""
        self.close_received = (code, reason)
        if self.sending_over:
            return NOTHING
        send = None
        if self.close_sent is None and self.answers_close:
            send = self.close_sent = (code, cut_reason(reason))
        hang_up = not self.client_side
        if hang_up:
            self.hangs_up = True
        return CloseStep(
            stop_data=send is not None, send_close=send, hang_up=hang_up, deadline=self._deadline()
        )

    def overflow(self) -> CloseStep:
        """The peer reads slower than it is written to, past the pending-bytes limit: what
        waits for it is dropped (none of it has begun to leave, so it sees whole frames
        only), the handler is told, and a Close 1008 ``wse.slow-consumer`` goes behind what
        the transport holds already, as for a failure. Nothing after a Close."""
        if self.sending_over or self.close_sent is not None:
            return NOTHING
        step = self.fail(CLOSE_POLICY_VIOLATION, SLOW_CONSUMER)
        return CloseStep(
            stop_data=True,
            drop_pending=True,
            report_overflow=True,
            send_close=step.send_close,
            deadline=step.deadline,
        )

    def transport_sent_close(self) -> CloseStep:
        """The transport sent a Close of its own (the client's picows, for a framing error it
        found or an unanswered keepalive ping) and closes TCP by itself once the peer has read
        what it holds: nothing more is written, what waits is dropped, the deadline bounds the
        rest."""
        self.sending_over = True
        return CloseStep(stop_data=True, drop_pending=True, deadline=self._deadline())

    def transport_gone(self) -> None:
        """The transport is closing or closed (hung up, aborted, or lost): nothing more is
        sent. A failure or the peer's Close is still recorded (what is taken, what the
        connection is reported closed with)."""
        self.sending_over = True

    def _deadline(self) -> float | None:
        if self.deadline_armed:
            return None
        self.deadline_armed = True
        return self.close_timeout
