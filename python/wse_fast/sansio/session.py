"""The WSE message state machines, one per side of a connection.

``receive`` classifies an incoming envelope according to the session's state and returns
one small event; the I/O layer acts on it. Transitions happen here and nowhere else.

Server side::

    STRANGER --hi--> VALIDATING --quest sent--> CHALLENGED --answer--> VALIDATING
    VALIDATING --accepted--> VALID;  any --closed--> CLOSED

Client side::

    GREETING --welcome--> READY;  GREETING --challenge--> GREETING (answered by the app)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto
from typing import Any

from ..protocols import InternalTypes


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


@dataclass(frozen=True, slots=True)
class Message:
    type: str
    payload: Any


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    payload: Any
    stamp: str


@dataclass(frozen=True, slots=True)
class Response:
    stamp: str
    result: Any


@dataclass(frozen=True, slots=True)
class ResponseError:
    stamp: str
    error: Any


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer broke the WSE protocol; close with ``wse.protocol-error``."""

    detail: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """Nothing to do: the message arrived in a state that does not take it."""

    type: str


Event = Hello | ChallengeAnswer | Quest | Welcome | Message | Call | Response | ResponseError


class IllegalTransition(RuntimeError):
    pass


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
    __slots__ = ("state", "types")

    def __init__(self, types: InternalTypes) -> None:
        self.types = types
        self.state = ServerState.STRANGER

    def receive(self, type: str, payload: Any, stamp: str | None) -> Event | Violation | Ignored:
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
    __slots__ = ("state", "types")

    def __init__(self, types: InternalTypes) -> None:
        self.types = types
        self.state = ClientState.GREETING

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
