"""The WSE core of one connection, one class per side, without I/O.

Messages in, events and frames out: ``receive_data`` takes a received message (bytes, a view,
or text), applies the limits that hold in the session's state, decodes it with the wire
protocol and returns one small event; the authentication steps (``challenge``, ``accept``,
``hello``, ``answer``) return the frame to send. The I/O layer moves those bytes, runs the
timers (authentication and call deadlines) and calls the application; transitions happen here
and nowhere else. No sockets, no event loop, no transport: any transport can drive it.

Server side::

    STRANGER --hi--> VALIDATING --quest sent--> CHALLENGED --answer--> VALIDATING
    VALIDATING --accepted--> VALID;  any --closed--> CLOSED

Client side::

    GREETING --welcome--> READY;  GREETING --challenge--> GREETING (answered by the app)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any

from ..codec import CallAnswerer
from ..constants import CLOSE_NORMAL, CLOSE_TOO_BIG, WSE_REASON
from ..protocols import (
    FrameEncoder,
    InternalTypes,
    JsonProtocol,
    MessageDecoder,
    WireProtocol,
    builtin_format,
)


class ServerState(Enum):
    STRANGER = auto()
    VALIDATING = auto()
    CHALLENGED = auto()
    VALID = auto()
    CLOSED = auto()


class ClientState(Enum):
    GREETING = auto()
    READY = auto()
    CLOSED = auto()


# Enum members read through their class cost ~70 ns each on CPython 3.11; the per-message
# checks read these module-level names instead.
_VALID = ServerState.VALID
_READY = ClientState.READY


# ---- events -----------------------------------------------------------------------------
# Events are not to be changed once made. The four made per message once authenticated are
# plain slotted classes rather than frozen ones: a frozen dataclass's __init__ goes through
# object.__setattr__ for every field (about 0.6 µs against 0.25 µs per event).


@dataclass(frozen=True, slots=True)
class Hello:
    identity: Any
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChallengeAnswer:
    response: Any


@dataclass(frozen=True, slots=True)
class Quest:
    quest: Any


@dataclass(frozen=True, slots=True)
class Welcome:
    payload: Any


@dataclass(slots=True)
class Message:
    type: str
    payload: Any


@dataclass(slots=True)
class Call:
    name: str
    payload: Any
    stamp: str


@dataclass(slots=True)
class Response:
    stamp: str
    result: Any


@dataclass(slots=True)
class ResponseError:
    stamp: str
    error: Any


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer broke the WSE protocol; close with ``wse.protocol-error`` (see
    :meth:`ServerSession.close_for`)."""

    detail: str


@dataclass(frozen=True, slots=True)
class TooBig:
    """A stranger sent a message over the size allowed before authentication: close with
    1009 (see :meth:`ServerSession.close_for`); it was not decoded."""

    size: int


@dataclass(frozen=True, slots=True)
class Ignored:
    """Nothing to do: the message arrived in a state that does not take it."""

    type: str


Event = Hello | ChallengeAnswer | Quest | Welcome | Message | Call | Response | ResponseError


class IllegalTransition(RuntimeError):
    pass


class Wire:
    """What a session needs of the wire protocol: the internal types, the encoder of complete
    frames and the decoder of messages (codec calls, no I/O), and the size a message may
    have before authentication. One per server or client, shared by its sessions."""

    __slots__ = ("_builtin_format", "auth_max_message_size", "decode", "encode", "types")

    def __init__(
        self,
        protocol: WireProtocol | None = None,
        *,
        mask: bool = False,
        auth_max_message_size: int = 16 * 1024,
    ) -> None:
        protocol = protocol or JsonProtocol()
        self.types = InternalTypes.of(protocol.internal_types)
        self.encode = FrameEncoder(protocol, mask)
        self._builtin_format = builtin_format(protocol)
        self.decode: Callable[[bool, Any], tuple[str, Any, str | None]] = MessageDecoder(protocol)
        self.auth_max_message_size = auth_max_message_size

    def call_answerer(self, procedures: dict[str, Callable[..., Any]]) -> CallAnswerer | None:
        """A server's one-step answering of calls to ``procedures`` (its live registry), for
        an authenticated session's messages: :class:`~wse_fast.codec.CallAnswerer`. None for
        a custom protocol, whose own ``unpack`` and ``pack`` must be called."""
        if self._builtin_format is None:
            return None
        types = self.types
        return CallAnswerer(procedures, types.response, types.response_error, self._builtin_format)


def _valid_event(types: InternalTypes, type: str, payload: Any, stamp: str | None) -> Event:
    """What a message means once the session is authenticated, on either side."""
    if stamp is None:
        return Message(type, payload)
    if type == types.response:
        return Response(stamp, payload)
    if type == types.response_error:
        return ResponseError(stamp, payload)
    return Call(type, payload, stamp)


#: How deeply a stranger's identity and meta may nest (their size is bounded by the message
#: size limit before authentication). Meta is kept for the connection's life and handed to
#: application code, where deep nesting breaks recursive code (logging, serialisers).
HI_MAX_DEPTH = 16


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and dicts in ``value`` nest more than ``limit`` levels (iteratively, so
    that no input can exhaust the stack)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in item)
    return False


class ServerSession:
    """The server side of one connection: authentication, then messages and calls.

    ``quest`` is the challenge sent, once asked (``[quest]``, so that any value, None too,
    can be one).
    """

    __slots__ = ("quest", "state", "types", "wire")

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.types = wire.types
        self.state = ServerState.STRANGER
        self.quest: list[Any] | None = None

    # ---- messages in -----------------------------------------------------------------------

    def receive_data(self, binary: bool, data: Any) -> Event | Violation | Ignored | TooBig:
        """A received message, whole: what it means now. ``data`` may be a view valid only
        during the call."""
        state = self.state
        if state is _VALID:
            try:
                type, payload, stamp = self.wire.decode(binary, data)
            except Exception as exc:
                return self.undecodable(exc)
            return _valid_event(self.types, type, payload, stamp)
        if state is ServerState.VALIDATING or state is ServerState.CLOSED:
            # identify (or the challenge generator) is running: ignored, as in the reference,
            # and never decoded
            return Ignored("")
        size = len(data.encode()) if isinstance(data, str) else len(data)  # bytes, not chars
        if size > self.wire.auth_max_message_size:
            return TooBig(size)
        try:
            type, payload, stamp = self.wire.decode(binary, data)
        except Exception as exc:
            return Violation(f"cannot unpack message: {exc}")
        return self.receive(type, payload, stamp)

    def undecodable(self, error: Exception) -> Violation:
        """What a message that could not be decoded (``error``) means: a violation."""
        return Violation(f"cannot unpack message: {error}")

    def receive(self, type: str, payload: Any, stamp: str | None) -> Event | Violation | Ignored:
        """A decoded envelope: what it means now."""
        state = self.state
        if state is _VALID:
            return _valid_event(self.types, type, payload, stamp)
        if state is ServerState.STRANGER:
            if type != self.types.hi:
                return Violation(f"first message must be {self.types.hi}, got {type!r}")
            hi = payload if isinstance(payload, dict) else {}
            identity, meta = hi.get("identity"), hi.get("meta")
            if nested_deeper_than([identity, meta], HI_MAX_DEPTH + 1):  # +1: the list
                return Violation(f"identity or meta nested deeper than {HI_MAX_DEPTH} levels")
            self.state = ServerState.VALIDATING
            return Hello(identity, dict(meta) if isinstance(meta, dict) else {})
        if state is ServerState.CHALLENGED and type == self.types.challenge:
            self.state = ServerState.VALIDATING
            return ChallengeAnswer(payload)
        return Ignored(type)  # validating, waiting for an answer, or closed

    # ---- authentication steps --------------------------------------------------------------

    def challenge(self, quest: Any) -> bytes | None:
        """The frame that asks the client ``quest``; None when one was asked already or the
        session no longer authenticates."""
        if self.quest is not None or self.state is not ServerState.VALIDATING:
            return None
        frame = self.wire.encode(self.types.challenge, quest, None)
        self.quest = [quest]
        self.state = ServerState.CHALLENGED
        return frame

    def accept(self, welcome: Any) -> bytes:
        """Admits the connection: the welcome frame to send. The welcome is encoded before
        anything changes, so one that cannot be encoded (it raises) admits nobody."""
        if self.state is not ServerState.VALIDATING:
            raise IllegalTransition(f"{self.state.name} -> VALID")
        frame = self.wire.encode(self.types.welcome, welcome, None)
        self.state = _VALID
        return frame

    def close_for(self, event: Violation | TooBig) -> tuple[int, str]:
        """The close code and reason that answer a broken rule."""
        if isinstance(event, TooBig):
            return CLOSE_TOO_BIG, "message too big"
        return CLOSE_NORMAL, WSE_REASON.PROTOCOL_ERR

    # ---- state -----------------------------------------------------------------------------

    @property
    def awaits_message(self) -> bool:
        """Whether a message now means anything: not while identify (or the challenge
        generator) runs, when the reference ignores what arrives, so it need not be decoded."""
        return self.state is not ServerState.VALIDATING and self.state is not ServerState.CLOSED

    def quest_sent(self) -> None:
        self._move(ServerState.VALIDATING, ServerState.CHALLENGED)

    def accepted(self) -> None:
        self._move(ServerState.VALIDATING, ServerState.VALID)

    def closed(self) -> None:
        self.state = ServerState.CLOSED

    @property
    def valid(self) -> bool:
        return self.state is _VALID

    def _move(self, source: ServerState, target: ServerState) -> None:
        if self.state is not source:
            raise IllegalTransition(f"{self.state.name} -> {target.name}")
        self.state = target


class ClientSession:
    """The client side of one connection: the hello, an optional challenge, the welcome,
    then messages and calls."""

    __slots__ = ("state", "types", "wire")

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.types = wire.types
        self.state = ClientState.GREETING

    def hello(self, identity: Any, meta: dict[str, Any]) -> bytes:
        """The first frame of a connection."""
        return self.wire.encode(self.types.hi, {"identity": identity, "meta": meta}, None)

    def answer(self, response: Any) -> bytes | None:
        """The frame that answers the server's challenge; None once the session is past it."""
        if self.state is not ClientState.GREETING:
            return None
        return self.wire.encode(self.types.challenge, response, None)

    def receive_data(self, binary: bool, data: Any) -> Event | Violation | Ignored:
        try:
            type, payload, stamp = self.wire.decode(binary, data)
        except Exception as exc:
            return Violation(f"cannot unpack message: {exc}")
        return self.receive(type, payload, stamp)

    def receive(self, type: str, payload: Any, stamp: str | None) -> Event | Ignored:
        if self.state is _READY:
            return _valid_event(self.types, type, payload, stamp)
        if self.state is ClientState.GREETING:
            if type == self.types.welcome:
                self.state = ClientState.READY
                return Welcome(payload)
            if type == self.types.challenge:
                return Quest(payload)
        return Ignored(type)

    def closed(self) -> None:
        self.state = ClientState.CLOSED

    @property
    def ready(self) -> bool:
        return self.state is _READY
