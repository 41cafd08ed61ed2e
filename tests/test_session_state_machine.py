"""The sans-I/O session state machines against their documented graph, by hypothesis.

The unit-test home of ``wse_fast.sansio.session``, with tests/test_sansio.py beside it (what
each step decodes, refuses and builds, example by example); no socket, no loop.

Hypothesis drives a ServerSession (and a ClientSession) with arbitrary messages, internal types
weighted in, and with the transitions the I/O layer calls; a model written from the module
docstring of wse_fast.sansio.session and from PROTOCOL.md ("Connection life cycle") says what
each step must do:

    STRANGER --hi--> VALIDATING --quest sent--> CHALLENGED --answer--> VALIDATING
    VALIDATING --accepted--> VALID;  any --closed--> CLOSED
    GREETING --welcome--> READY;  GREETING --challenge--> GREETING;  any --closed--> CLOSED
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from wse_fast.protocols import InternalTypes
from wse_fast.sansio.session import (
    HI_MAX_DEPTH,
    Call,
    ChallengeAnswer,
    ClientSession,
    ClientState,
    Hello,
    Ignored,
    IllegalTransition,
    Message,
    Quest,
    Response,
    ResponseError,
    ServerSession,
    ServerState,
    Violation,
    Welcome,
    Wire,
)

TYPES = InternalTypes()
WIRE = Wire()
S = ServerState
C = ClientState

#: The server's edges, as the module docstring draws them; staying put is always allowed.
SERVER_EDGES = {
    (S.STRANGER, S.VALIDATING),
    (S.VALIDATING, S.CHALLENGED),
    (S.CHALLENGED, S.VALIDATING),
    (S.VALIDATING, S.VALID),
} | {(state, S.CLOSED) for state in S}
CLIENT_EDGES = {(C.GREETING, C.READY)} | {(state, C.CLOSED) for state in C}

# ---- strategies ------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def nest(leaf: Any, shape: list[bool]) -> Any:
    """``leaf`` inside one dict (True) or list (False) per element of ``shape``."""
    for as_dict in shape:
        leaf = {"k": leaf} if as_dict else [leaf]
    return leaf


# Identity and meta either shallow or within two levels of the limit, where Hello turns to
# Violation (a scalar leaf keeps the count exact).
near_the_limit = st.integers(HI_MAX_DEPTH - 2, HI_MAX_DEPTH + 2).flatmap(
    lambda n: st.lists(st.booleans(), min_size=n, max_size=n)
)
around_the_limit = st.builds(nest, json_values, st.lists(st.booleans(), max_size=3)) | st.builds(
    nest, scalars, near_the_limit
)
hi_payloads = st.one_of(
    st.fixed_dictionaries(
        {}, optional={"identity": around_the_limit, "meta": around_the_limit, "x": json_values}
    ),
    json_values,  # not a dict: identity and meta are then missing
)
internal_types = st.sampled_from(
    [TYPES.hi, TYPES.challenge, TYPES.welcome, TYPES.call, TYPES.response, TYPES.response_error]
)
# Half internal types, half user types (some of them near misses of internal ones).
kinds = (
    internal_types | st.sampled_from(["chat", "~wse:HI", "~wse:hi ", "sum"]) | st.text(min_size=1)
)
payloads = json_values | hi_payloads
stamps = st.none() | st.text(max_size=12)


def levels(value: Any) -> int:
    """How many levels of dicts and lists nest in ``value`` (a scalar has none)."""
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        return 0
    return 1 + max((levels(child) for child in value), default=0)


def hi_fits(payload: Any) -> bool:
    """Whether a stranger's hi is acceptable: identity and meta nest at most HI_MAX_DEPTH."""
    hi = payload if isinstance(payload, dict) else {}
    return max(levels(hi.get("identity")), levels(hi.get("meta"))) <= HI_MAX_DEPTH


def expected_valid_event(kind: str, payload: Any, stamp: str | None) -> object:
    """What an authenticated side makes of a message (PROTOCOL.md, "Valid")."""
    if stamp is None:
        return Message(kind, payload)
    if kind == TYPES.response:
        return Response(stamp, payload)
    if kind == TYPES.response_error:
        return ResponseError(stamp, payload)
    return Call(kind, payload, stamp)


# ---- server ----------------------------------------------------------------------------------


class ServerSessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.session = ServerSession(WIRE)
        self.model = S.STRANGER
        # the last step: (state before, what was done, state after)
        self.step: tuple[ServerState, str, ServerState] = (S.STRANGER, "start", S.STRANGER)

    def _receive(self, kind: str, payload: Any, stamp: str | None) -> None:
        before = self.session.state
        event = self.session.receive(kind, payload, stamp)
        if before is S.STRANGER:
            assert type(event) in (Hello, Violation, Ignored), event
            if kind == TYPES.hi and hi_fits(payload):
                hi = payload if isinstance(payload, dict) else {}
                meta = hi.get("meta")
                assert type(event) is Hello
                assert event.identity is hi.get("identity")
                assert type(event.meta) is dict
                assert event.meta == (meta if isinstance(meta, dict) else {})
                assert levels(event.meta) <= HI_MAX_DEPTH
                self.model = S.VALIDATING
            else:
                assert type(event) is Violation
                assert isinstance(event.detail, str) and event.detail
        elif before is S.CHALLENGED and kind == TYPES.challenge:
            assert type(event) is ChallengeAnswer and event.response is payload
            self.model = S.VALIDATING
        elif before is S.VALID:
            assert event == expected_valid_event(kind, payload, stamp)
        else:  # validating, challenged with anything but the answer, or closed
            assert event == Ignored(kind)
        self.step = (before, f"receive {kind!r}", self.session.state)

    @rule(kind=kinds, payload=payloads, stamp=stamps)
    def receive(self, kind: str, payload: Any, stamp: str | None) -> None:
        self._receive(kind, payload, stamp)

    @rule(payload=hi_payloads, stamp=stamps)
    def receive_hi(self, payload: Any, stamp: str | None) -> None:
        self._receive(TYPES.hi, payload, stamp)

    @rule(payload=json_values)
    def receive_answer(self, payload: Any) -> None:
        self._receive(TYPES.challenge, payload, None)

    @rule(kind=internal_types, payload=json_values, stamp=st.text(max_size=12))
    def receive_stamped(self, kind: str, payload: Any, stamp: str) -> None:
        self._receive(kind, payload, stamp)

    def _transition(self, name: str, source: ServerState, target: ServerState) -> None:
        before = self.session.state
        if before is source:
            getattr(self.session, name)()
            self.model = target
        else:
            with pytest.raises(IllegalTransition):
                getattr(self.session, name)()
        self.step = (before, name, self.session.state)

    @rule()
    def quest_sent(self) -> None:
        self._transition("quest_sent", S.VALIDATING, S.CHALLENGED)

    @rule()
    def accepted(self) -> None:
        self._transition("accepted", S.VALIDATING, S.VALID)

    @rule()
    def closed(self) -> None:
        before = self.session.state
        self.session.closed()
        self.model = S.CLOSED
        self.step = (before, "closed", self.session.state)

    @invariant()
    def state_is_the_model_state(self) -> None:
        assert self.session.state is self.model, self.step

    @invariant()
    def state_moves_along_the_documented_graph(self) -> None:
        before, _, after = self.step
        assert before is after or (before, after) in SERVER_EDGES, self.step

    @invariant()
    def valid_is_reached_only_by_accepted_from_validating(self) -> None:
        before, done, after = self.step
        if after is S.VALID and before is not S.VALID:
            assert (before, done) == (S.VALIDATING, "accepted"), self.step

    @invariant()
    def awaits_message_except_while_validating_or_closed(self) -> None:
        state = self.session.state
        assert self.session.awaits_message is (state not in (S.VALIDATING, S.CLOSED))
        assert self.session.valid is (state is S.VALID)


# ---- client ----------------------------------------------------------------------------------


class ClientSessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.session = ClientSession(WIRE)
        self.model = C.GREETING
        self.step: tuple[ClientState, str, ClientState] = (C.GREETING, "start", C.GREETING)

    @rule(kind=kinds, payload=payloads, stamp=stamps)
    def receive(self, kind: str, payload: Any, stamp: str | None) -> None:
        before = self.session.state
        event = self.session.receive(kind, payload, stamp)
        if before is C.GREETING and kind == TYPES.welcome:
            assert type(event) is Welcome and event.payload is payload
            self.model = C.READY
        elif before is C.GREETING and kind == TYPES.challenge:
            assert type(event) is Quest and event.quest is payload
        elif before is C.READY:
            assert event == expected_valid_event(kind, payload, stamp)
        else:  # greeting with anything else, or closed
            assert event == Ignored(kind)
        self.step = (before, f"receive {kind!r}", self.session.state)

    @rule()
    def closed(self) -> None:
        before = self.session.state
        self.session.closed()
        self.model = C.CLOSED
        self.step = (before, "closed", self.session.state)

    @invariant()
    def state_is_the_model_state(self) -> None:
        assert self.session.state is self.model, self.step

    @invariant()
    def state_moves_along_the_documented_graph(self) -> None:
        before, _, after = self.step
        assert before is after or (before, after) in CLIENT_EDGES, self.step
        assert self.session.ready is (after is C.READY)


machine_settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestServerSession = ServerSessionMachine.TestCase
TestServerSession.settings = machine_settings
TestClientSession = ClientSessionMachine.TestCase
TestClientSession.settings = machine_settings


def test_hi_nested_exactly_to_the_limit_is_accepted_one_more_level_is_not() -> None:
    """The boundary the state machine crosses at random, pinned: HI_MAX_DEPTH levels pass."""
    for part in ("identity", "meta"):
        at_limit = nest(1, [True] * HI_MAX_DEPTH)
        assert type(ServerSession(WIRE).receive(TYPES.hi, {part: at_limit}, None)) is Hello
        over = nest(1, [False] * (HI_MAX_DEPTH + 1))
        assert type(ServerSession(WIRE).receive(TYPES.hi, {part: over}, None)) is Violation
