"""The sans-I/O core on its own: messages in, events and frames out, no socket or loop.

The state graph is covered by hypothesis in test_session_state_machine.py; these tests pin
what the I/O layer relies on: which messages are decoded at all, the limits before
authentication, the frames each authentication step builds, the close each broken rule
gets, and the call table's stamps.
"""

from __future__ import annotations

from typing import Any

import pytest
from wse_fast import codec
from wse_fast.constants import CLOSE_NORMAL, CLOSE_TOO_BIG, OP_BINARY, OP_TEXT, WSE_REASON
from wse_fast.protocols import InternalTypes, MsgpackProtocol
from wse_fast.sansio.calls import CallTable
from wse_fast.sansio.framing import is_server_data_frame, unframe
from wse_fast.sansio.session import (
    Call,
    ChallengeAnswer,
    ClientSession,
    ClientState,
    Hello,
    Ignored,
    IllegalTransition,
    Message,
    Quest,
    ServerSession,
    ServerState,
    TooBig,
    Violation,
    Welcome,
    Wire,
)

T = InternalTypes()


def envelope(frame: bytes) -> tuple[str, Any, str | None]:
    """What a frame the core built says, decoded as the peer would."""
    binary, payload = unframe(frame)
    assert not binary
    return codec.unpack_json(bytes(payload))


def message(type: str, payload: Any = None, stamp: str | None = None) -> bytes:
    return codec.pack_json(type, payload, stamp)


def hello(session: ServerSession) -> None:
    event = session.receive_data(False, message(T.hi, {"identity": "alice", "meta": {"d": 1}}))
    assert event == Hello("alice", {"d": 1})


# ---- server: messages in ---------------------------------------------------------------------


def test_a_stranger_must_say_hi_first() -> None:
    session = ServerSession(Wire())
    event = session.receive_data(False, message("chat", 1))
    assert isinstance(event, Violation) and session.state is ServerState.STRANGER
    assert session.close_for(event) == (CLOSE_NORMAL, WSE_REASON.PROTOCOL_ERR)


def test_a_strangers_message_over_the_limit_is_refused_before_decoding() -> None:
    session = ServerSession(Wire(auth_max_message_size=64))
    too_big = b"not even json" * 10  # decoding it would be a Violation, not TooBig
    event = session.receive_data(False, too_big)
    assert event == TooBig(len(too_big))
    assert session.close_for(event) == (CLOSE_TOO_BIG, "message too big")
    hello(session)  # the limit alone did not move the state


def test_nothing_is_decoded_while_identify_runs() -> None:
    session = ServerSession(Wire())
    hello(session)
    assert session.state is ServerState.VALIDATING
    assert isinstance(session.receive_data(False, b"\xff garbage"), Ignored)


def test_undecodable_data_is_a_violation_in_every_state() -> None:
    session = ServerSession(Wire())
    assert isinstance(session.receive_data(False, b"{"), Violation)
    hello(session)
    session.accept(None)
    assert isinstance(session.receive_data(False, b"[1,2"), Violation)


def test_once_valid_messages_and_calls_are_classified_without_size_limit() -> None:
    session = ServerSession(Wire(auth_max_message_size=64))
    hello(session)
    session.accept(None)
    big = "x" * 1000
    assert session.receive_data(False, message("chat", big)) == Message("chat", big)
    assert session.receive_data(False, memoryview(message("sum", [1, 2], "s1"))) == Call(
        "sum", [1, 2], "s1"
    )


def test_text_from_message_level_transports_is_taken_as_str() -> None:
    session = ServerSession(Wire())
    text = message(T.hi, {"identity": "bob"}).decode()
    assert session.receive_data(False, text) == Hello("bob", {})


# ---- server: authentication steps --------------------------------------------------------------


def test_challenge_frame_once_then_the_answer_goes_to_identify() -> None:
    session = ServerSession(Wire())
    assert session.challenge({"q": 1}) is None  # not before the hi
    hello(session)
    frame = session.challenge({"q": 1})
    assert frame is not None and envelope(frame) == (T.challenge, {"q": 1}, None)
    assert session.challenge({"q": 2}) is None and session.quest == [{"q": 1}]
    assert session.state is ServerState.CHALLENGED
    assert session.receive_data(False, message("chat")) == Ignored("chat")
    assert session.receive_data(False, message(T.challenge, 2)) == ChallengeAnswer(2)
    assert session.state is ServerState.VALIDATING


def test_accept_builds_the_welcome_and_moves_to_valid() -> None:
    session = ServerSession(Wire())
    with pytest.raises(IllegalTransition):
        session.accept("too early")
    hello(session)
    assert envelope(session.accept({"hey": 1})) == (T.welcome, {"hey": 1}, None)
    assert session.valid


def test_a_welcome_that_cannot_be_encoded_changes_nothing() -> None:
    session = ServerSession(Wire())
    hello(session)
    with pytest.raises(TypeError):
        session.accept(object())
    assert session.state is ServerState.VALIDATING


def test_the_wire_protocol_decides_the_frames() -> None:
    session = ServerSession(Wire(MsgpackProtocol()))
    session.receive_data(True, codec.pack_msgpack(T.hi, {"identity": "a"}, None))
    frame = session.accept("w")
    binary, payload = unframe(frame)
    assert binary and codec.unpack_msgpack(payload) == (T.welcome, "w", None)


# ---- client --------------------------------------------------------------------------------


def test_client_hello_answer_and_welcome() -> None:
    session = ClientSession(Wire(mask=True))
    hi = session.hello("alice", {"d": 1})
    assert hi[0] & 0x0F == OP_TEXT and hi[1] & 0x80  # a masked text frame (RFC 6455 §5.3)
    assert session.receive_data(False, message(T.challenge, 5)) == Quest(5)
    answer = session.answer(6)
    assert answer is not None and answer[1] & 0x80
    assert session.receive_data(False, message(T.welcome, "w")) == Welcome("w")
    assert session.state is ClientState.READY
    assert session.answer(7) is None  # past the challenge
    assert isinstance(session.receive_data(False, b"]"), Violation)


# ---- calls and frames --------------------------------------------------------------------------


def test_call_table_stamps_are_unique_and_settle_once() -> None:
    table: CallTable[int] = CallTable()
    stamps = [table.open(n) for n in range(500)]
    assert len(set(stamps)) == 500 and len(table) == 500
    assert all(len(s) == 10 and s.isalnum() for s in stamps)
    assert table.settle(stamps[7]) == 7 and table.settle(stamps[7]) is None
    assert table.settle("made-up") is None
    assert sorted(table) == sorted(stamps[:7] + stamps[8:])


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_unframe_reads_every_length_encoding(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for opcode, binary in ((OP_TEXT, False), (OP_BINARY, True)):
        got_binary, got = unframe(codec.build_frame(opcode, payload))
        assert got_binary is binary and bytes(got) == payload


# ---- frames from elsewhere (a cluster node, through NATS) ------------------------------------


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_a_whole_server_data_frame_of_any_length_class_passes(opcode: int, length: int) -> None:
    assert is_server_data_frame(codec.build_frame(opcode, b"a" * length))


def _long_header(opcode: int, payload: bytes, width: int) -> bytes:
    """A frame whose length takes ``width`` bytes (2 or 8) whatever it is."""
    flag = 126 if width == 2 else 127
    return bytes([0x80 | opcode, flag]) + len(payload).to_bytes(width, "big") + payload


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x81", id="half a header"),
        pytest.param(codec.build_frame(0x8, b"\x03\xe8bye"), id="close"),
        pytest.param(codec.build_frame(0x9, b"ping"), id="ping"),
        pytest.param(codec.build_frame(0xA, b"pong"), id="pong"),
        pytest.param(codec.build_frame(0x0, b"rest"), id="continuation"),
        pytest.param(codec.build_frame(0x3, b"x"), id="reserved opcode"),
        pytest.param(codec.build_frame(OP_TEXT, b"part", fin=False), id="no FIN"),
        pytest.param(codec.build_frame(OP_TEXT, b"x", rsv=4), id="RSV1"),
        pytest.param(codec.build_frame(OP_BINARY, b"x", rsv=1), id="RSV3"),
        pytest.param(codec.build_frame(OP_TEXT, b"hi", mask=True), id="masked"),
        pytest.param(codec.build_frame(OP_TEXT, b"hello")[:-1], id="payload cut short"),
        pytest.param(codec.build_frame(OP_TEXT, b"hi") + b"\x88\x00", id="a close after it"),
        pytest.param(b"\x81\x7f" + (1 << 63).to_bytes(8, "big"), id="64-bit length, top bit"),
        pytest.param(_long_header(OP_TEXT, b"short", 2), id="16-bit length under 126"),
        pytest.param(_long_header(OP_BINARY, b"x" * 200, 8), id="64-bit length under 65536"),
        pytest.param(codec.build_frame(OP_TEXT, b"\xff\xfe"), id="text not UTF-8"),
    ],
)
def test_anything_but_one_whole_server_data_frame_is_refused(frame: bytes) -> None:
    assert not is_server_data_frame(frame)
