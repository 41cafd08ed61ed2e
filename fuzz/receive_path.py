"""Fuzz harness of the receive path: bytes -> frames -> messages -> envelopes -> sessions.

The input's first byte configures the run (see ``Config``); the rest is either a byte stream
read as WebSocket frames with the codec's ``parse_frame_header``, or (``structured``) a recipe
from which ``FuzzedDataProvider`` builds such a stream of mostly valid WSE messages, some of
their frames broken. Either way the stream goes through what the I/O layer does with frames:
``whole_message`` and ``MessageAssembler`` (as ``transport/endpoint.py`` drives them),
both wire protocols' ``unpack``, and a ``ServerSession`` and a ``ClientSession`` per protocol
(driven as ``connection.py`` and ``client.py`` drive them).

Allowed outcomes are the documented ones: ``FrameViolation`` where a reference model of RFC
6455's rules says a frame breaks one (and with that rule's close code), ``codec.EnvelopeError``
from ``unpack``, and session events that match the state they arrive in. Anything else
raises: an unexpected exception, a Rust panic (pyo3's ``PanicException``), or a wrong answer.

Run: ``python fuzz/receive_path.py [CORPUS_DIR] [libFuzzer flags]``; see fuzz/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atheris_main import instrumented_imports, main
from oracles import nesting_levels, same_value, utf8_completable, valid_utf8

with instrumented_imports(__name__):
    import atheris  # type: ignore[import-untyped]
    from wse_fast import codec
    from wse_fast.constants import CLOSE_INVALID_TEXT, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG
    from wse_fast.protocols import InternalTypes, JsonProtocol, MsgpackProtocol, WireProtocol
    from wse_fast.sansio.framing import FrameViolation, MessageAssembler, whole_message
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
PROTOCOLS: tuple[WireProtocol, ...] = (JsonProtocol(), MsgpackProtocol())
MAX_SIZES = (32, 256, 4096, 1 << 16)
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_PING = 0x0, 0x1, 0x2, 0x9


@dataclass(frozen=True)
class Config:
    """The first input byte: bit 0 structured input, bits 1-2 the message size limit, bits
    3-4 how many challenges the server sends before accepting, bit 5 identify answers only
    when the next message has arrived (which then lands in VALIDATING)."""

    structured: bool
    max_size: int
    challenges: int
    slow_identify: bool

    @classmethod
    def of(cls, byte: int) -> Config:
        return cls(bool(byte & 1), MAX_SIZES[byte >> 1 & 3], byte >> 3 & 3, bool(byte & 32))

    def byte(self) -> int:
        size = MAX_SIZES.index(self.max_size)
        return self.structured | size << 1 | self.challenges << 3 | self.slow_identify << 5


class Finding(AssertionError):
    """The code under test did something its documentation does not allow."""


# ---- frames to messages ----------------------------------------------------------------------


class FrameModel:
    """RFC 6455's rules for data frames (§5.2, §5.4, §8.1) with the endpoint's size limit:
    which close codes a frame may be failed with, and what message it completes."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.pending: bytes | None = None  # the fragmented message so far
        self.pending_binary = False

    def broken_rules(self, opcode: int, fin: bool, rsv: int, payload: bytes) -> set[int]:
        codes = set()
        if rsv:
            codes.add(CLOSE_PROTOCOL_ERROR)  # no extension is negotiated
        if opcode == OP_CONTINUATION:
            if self.pending is None:
                return codes | {CLOSE_PROTOCOL_ERROR}
            message, binary = self.pending + payload, self.pending_binary
        elif opcode in (OP_TEXT, OP_BINARY):
            if self.pending is not None:
                codes.add(CLOSE_PROTOCOL_ERROR)
            message, binary = payload, opcode == OP_BINARY
        else:
            return codes | {CLOSE_PROTOCOL_ERROR}  # reserved data opcodes
        if len(message) > self.max_size:
            codes.add(CLOSE_TOO_BIG)
        if not binary and not (valid_utf8(message) if fin else utf8_completable(message)):
            codes.add(CLOSE_INVALID_TEXT)
        return codes

    def accept(self, opcode: int, fin: bool, payload: bytes) -> tuple[bool, bytes] | None:
        """Takes a frame that breaks no rule; the message it completes, if any."""
        if opcode != OP_CONTINUATION:
            self.pending, self.pending_binary = b"", opcode == OP_BINARY
        assert self.pending is not None
        self.pending += payload
        if not fin:
            return None
        message, self.pending = self.pending, None
        return self.pending_binary, message


class Reassembly:
    """What the endpoint does with data frames: ``whole_message`` until the peer fragments,
    then a ``MessageAssembler``; checked frame by frame against ``FrameModel``."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.assembler: MessageAssembler | None = None
        self.model = FrameModel(max_size)

    def frame(
        self, opcode: int, fin: bool, rsv: int, payload: bytes
    ) -> tuple[bool, bytes | memoryview] | None:
        """The message this frame completes, if any; raises FrameViolation when the
        connection must be failed (after checking that it must)."""
        broken = self.model.broken_rules(opcode, fin, rsv, payload)
        view = memoryview(payload)  # picows hands over a view into its read buffer
        message: tuple[bool, bytes | memoryview] | None
        try:
            if self.assembler is None and fin:
                message = whole_message(opcode, rsv, view, self.max_size)
            else:
                if self.assembler is None:
                    self.assembler = MessageAssembler(self.max_size)
                message = self.assembler.feed(opcode, fin, rsv, view)
        except FrameViolation as violation:
            if violation.code not in broken:
                raise Finding(
                    f"FrameViolation {violation.code} {violation.reason!r} for frame "
                    f"op={opcode} fin={fin} rsv={rsv} len={len(payload)}; rules broken: {broken}"
                ) from violation
            if not isinstance(violation.reason, str):
                raise Finding("FrameViolation.reason is not a str") from violation
            raise
        if broken:
            raise Finding(f"frame op={opcode} fin={fin} rsv={rsv} accepted; breaks {broken}")
        expected = self.model.accept(opcode, fin, payload)
        if expected is None:
            if message is not None:
                raise Finding("a message completed before its final fragment")
            return None
        if message is None:
            raise Finding("the final fragment completed no message")
        binary, data = message
        if binary is not expected[0]:
            raise Finding(f"message binary={binary}, its first frame says otherwise")
        if bytes(data) != expected[1]:
            raise Finding("message bytes differ from its fragments joined")
        if len(data) > self.max_size:
            raise Finding("a message over the size limit was delivered")
        return message


def frames(stream: bytes) -> list[tuple[bool, int, int, bytes]]:
    """The complete frames at the start of ``stream``, unmasked: ``(fin, rsv, opcode,
    payload)``; an incomplete last frame is left out, as a reader would wait for the rest."""
    out: list[tuple[bool, int, int, bytes]] = []
    at = 0
    while True:
        try:
            head = codec.parse_frame_header(memoryview(stream)[at:])
        except ValueError:
            # documented: a 64-bit length with its top bit set (RFC 6455 §5.2)
            if not (
                len(stream) >= at + 10
                and stream[at + 1] & 0x7F == 127
                and stream[at + 2] & 0x80 != 0
            ):
                raise Finding(
                    f"parse_frame_header raised ValueError on {stream[at : at + 14].hex()}"
                ) from None
            return out
        if head is None:
            return out
        fin, rsv, opcode, key, length, header_size = head
        if not (2 <= header_size <= 14 and at + header_size <= len(stream)):
            raise Finding("bad header size")
        if not (0 <= rsv <= 7 and 0 <= opcode <= 15 and length >= 0):
            raise Finding("header fields out of range")
        if not (key is None or len(key) == 4):
            raise Finding("masking key is not 4 bytes")
        end = at + header_size + length
        if end > len(stream):
            return out
        payload = stream[at + header_size : end]
        out.append((fin, rsv, opcode, codec.mask(payload, key) if key is not None else payload))
        at = end


# ---- envelopes to sessions -------------------------------------------------------------------


def unpack(protocol: WireProtocol, data: bytes | memoryview) -> tuple[str, Any, str | None] | None:
    """The envelope, or None for one ``unpack`` refuses with the documented EnvelopeError."""
    try:
        triple = protocol.unpack(data)  # type: ignore[arg-type]  # built-ins take any buffer
    except codec.EnvelopeError:
        return None
    if not (type(triple) is tuple and len(triple) == 3):
        raise Finding(f"{protocol.name} unpack: {triple!r}")
    kind, _, stamp = triple
    if not (type(kind) is str and kind != ""):
        raise Finding(f"{protocol.name}: message type {kind!r}")
    if not (stamp is None or type(stamp) is str):
        raise Finding(f"{protocol.name}: stamp {stamp!r}")
    return triple


def check_valid_event(event: object, kind: str, payload: Any, stamp: str | None) -> None:
    """What an authenticated side makes of a message (PROTOCOL.md): the very objects decoded."""
    if stamp is None:
        ok = type(event) is Message and event.type == kind and event.payload is payload
    elif kind == TYPES.response:
        ok = type(event) is Response and event.stamp == stamp and event.result is payload
    elif kind == TYPES.response_error:
        ok = type(event) is ResponseError and event.stamp == stamp and event.error is payload
    else:
        ok = (
            type(event) is Call
            and event.name == kind
            and event.payload is payload
            and event.stamp == stamp
        )
    if not ok:
        raise Finding(f"authenticated side made {event!r} of {(kind, stamp)!r}")


class ServerApp:
    """A server connection's use of its session: hi, then ``challenges`` quests, then accept;
    a violation or an undecodable message closes the connection."""

    def __init__(self, config: Config) -> None:
        self.session = ServerSession(WIRE)
        self.challenges_left = config.challenges
        self.slow = config.slow_identify
        self.identify_running = False

    def identify_done(self) -> None:
        self.identify_running = False
        if self.challenges_left:
            self.challenges_left -= 1
            self.session.quest_sent()
        else:
            self.session.accepted()

    def message(self, triple: tuple[str, Any, str | None] | None) -> None:
        session = self.session
        state = session.state
        awaits = state is not ServerState.VALIDATING and state is not ServerState.CLOSED
        if session.awaits_message is not awaits:
            raise Finding(f"awaits_message is {session.awaits_message} in {state.name}")
        identify_was_running = self.identify_running
        if triple is None:  # cannot unpack: a protocol violation, unless it was never decoded
            if state is not ServerState.VALIDATING:
                session.closed()
        else:
            self.receive(state, *triple)
        if identify_was_running and session.state is ServerState.VALIDATING:
            self.identify_done()  # a slow identify ends after this message arrived

    def receive(self, state: ServerState, kind: str, payload: Any, stamp: str | None) -> None:
        session = self.session
        event = session.receive(kind, payload, stamp)
        after = session.state
        if state is ServerState.VALID:
            check_valid_event(event, kind, payload, stamp)
        elif state is ServerState.STRANGER:
            self.stranger(event, kind, payload)
        elif state is ServerState.CHALLENGED and kind == TYPES.challenge:
            if not (type(event) is ChallengeAnswer and event.response is payload):
                raise Finding(f"answer to a challenge gave {event!r}")
            if after is not ServerState.VALIDATING:
                raise Finding(f"challenge answer led to {after.name}")
        else:
            if not (type(event) is Ignored and event.type == kind):
                raise Finding(f"{state.name} gave {event!r}")
        if type(event) not in (Hello, ChallengeAnswer) and after is not state:
            raise Finding(f"{event!r} moved the session {state.name} -> {after.name}")
        if type(event) is Violation:
            session.closed()
        elif type(event) in (Hello, ChallengeAnswer):
            self.identify_running = True
            if not self.slow:
                self.identify_done()

    def stranger(self, event: object, kind: str, payload: Any) -> None:
        if kind != TYPES.hi:
            if type(event) is not Violation:
                raise Finding(f"stranger's {kind!r} gave {event!r}")
            return
        hi = payload if isinstance(payload, dict) else {}
        identity, meta = hi.get("identity"), hi.get("meta")
        limit = HI_MAX_DEPTH
        too_deep = max(nesting_levels(identity, limit), nesting_levels(meta, limit)) > limit
        if too_deep:
            if type(event) is not Violation:
                raise Finding(f"hi nested deeper than {limit} gave {event!r}")
            return
        if type(event) is not Hello:
            raise Finding(f"acceptable hi gave {event!r}")
        assert isinstance(event, Hello)
        if event.identity is not identity:
            raise Finding("Hello.identity is not the hi's identity")
        if type(event.meta) is not dict:
            raise Finding(f"Hello.meta is a {type(event.meta).__name__}")
        if nesting_levels(event.meta, limit) > limit:
            raise Finding("Hello.meta too deep")
        expected = meta if isinstance(meta, dict) else {}
        if not same_value(event.meta, expected):
            raise Finding("Hello.meta is not the hi's meta")
        if event.meta is meta:
            raise Finding("Hello.meta is the peer's dict itself, not a copy")
        if self.session.state is not ServerState.VALIDATING:
            raise Finding("Hello did not lead to VALIDATING")

    def end(self, last: tuple[str, Any, str | None] | None) -> None:
        session = self.session
        session.closed()
        if not (session.state is ServerState.CLOSED and not session.awaits_message):
            raise Finding("closed()")
        if last is not None:
            event = session.receive(*last)
            if type(event) is not Ignored:
                raise Finding(f"closed session gave {event!r}")
        for transition in (session.accepted, session.quest_sent):
            try:
                transition()
            except IllegalTransition:
                continue
            raise Finding(f"{transition.__name__}() from CLOSED did not raise")
        if session.state is not ServerState.CLOSED:
            raise Finding("a refused transition changed the state")


class ClientApp:
    """A client connection's use of its session: it answers quests and waits for welcome;
    an undecodable message is reported and skipped."""

    def __init__(self) -> None:
        self.session = ClientSession(WIRE)

    def message(self, triple: tuple[str, Any, str | None] | None) -> None:
        if triple is None:
            return
        kind, payload, stamp = triple
        session = self.session
        state = session.state
        event = session.receive(kind, payload, stamp)
        if state is ClientState.READY:
            check_valid_event(event, kind, payload, stamp)
        elif state is ClientState.GREETING and kind == TYPES.welcome:
            if not (type(event) is Welcome and event.payload is payload):
                raise Finding(f"welcome: {event!r}")
            if not (session.state is ClientState.READY and session.ready):
                raise Finding("welcome: not READY")
            return
        elif state is ClientState.GREETING and kind == TYPES.challenge:
            if not (type(event) is Quest and event.quest is payload):
                raise Finding(f"challenge gave {event!r}")
        else:
            if not (type(event) is Ignored and event.type == kind):
                raise Finding(f"{state.name} gave {event!r}")
        if session.state is not state:
            raise Finding(f"{event!r} moved the client from {state.name}")

    def end(self, last: tuple[str, Any, str | None] | None) -> None:
        self.session.closed()
        if not (self.session.state is ClientState.CLOSED and not self.session.ready):
            raise Finding("closed()")
        if last is not None:
            event = self.session.receive(*last)
            if type(event) is not Ignored:
                raise Finding(f"closed client session gave {event!r}")


def receive(stream: bytes, config: Config) -> None:
    """The whole receive path over one byte stream."""
    reassembly = Reassembly(config.max_size)
    servers = [ServerApp(config) for _ in PROTOCOLS]
    clients = [ClientApp() for _ in PROTOCOLS]
    last: list[tuple[str, Any, str | None] | None] = [None for _ in PROTOCOLS]
    for fin, rsv, opcode, payload in frames(stream):
        if opcode >= 0x8:
            continue  # control frames are picows's and the endpoint's, not the assembler's
        try:
            message = reassembly.frame(opcode, fin, rsv, payload)
        except FrameViolation:
            break  # the endpoint fails the connection and reads nothing more
        if message is None:
            continue
        binary, data = message
        for i, protocol in enumerate(PROTOCOLS):
            triple = unpack(protocol, data)
            if not binary and isinstance(protocol, JsonProtocol):
                # a custom protocol's unpack gets text as str: the codec takes both alike
                text = unpack(protocol, bytes(data).decode("utf-8"))  # type: ignore[arg-type]
                if not (
                    (triple is None) == (text is None)
                    and (triple is None or same_value(list(triple), list(text or ())))
                ):
                    raise Finding(
                        f"unpack_json of str and of bytes disagree: {triple!r} vs {text!r}"
                    )
            servers[i].message(triple)
            clients[i].message(triple)
            last[i] = triple
    for i in range(len(PROTOCOLS)):
        servers[i].end(last[i])
        clients[i].end(last[i])


# ---- structured input --------------------------------------------------------------------------

INTERESTING_TYPES = [
    TYPES.hi,
    TYPES.challenge,
    TYPES.welcome,
    TYPES.call,
    TYPES.response,
    TYPES.response_error,
    "chat",
]


def nested(fdp: Any, levels: int, leaf: Any) -> Any:
    for _ in range(levels):
        leaf = {"k": leaf} if fdp.ConsumeBool() else [leaf]
    return leaf


def value(fdp: Any, levels: int = 3) -> Any:
    """A JSON value of at most ``levels`` levels (what the codecs pack, whatever the input)."""
    choice = fdp.ConsumeIntInRange(0, 6 if levels > 0 else 4)
    if choice == 0:
        return None
    if choice == 1:
        return fdp.ConsumeIntInRange(-(2**63), 2**64 - 1)
    if choice == 2:
        return fdp.ConsumeRegularFloat()
    if choice == 3:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 16))
    if choice == 4:
        return fdp.ConsumeBool()
    if choice == 5:
        return [value(fdp, levels - 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    return {
        fdp.ConsumeUnicodeNoSurrogates(4): value(fdp, levels - 1)
        for _ in range(fdp.ConsumeIntInRange(0, 3))
    }


def hi_payload(fdp: Any) -> Any:
    """Around the nesting limit: identity and meta up to HI_MAX_DEPTH + 3 levels."""
    if fdp.ConsumeProbability() < 0.1:
        return value(fdp)  # not a dict: identity and meta are then None
    identity = nested(fdp, fdp.ConsumeIntInRange(0, HI_MAX_DEPTH + 3), value(fdp))
    meta = {"m": nested(fdp, fdp.ConsumeIntInRange(0, HI_MAX_DEPTH + 2), value(fdp))}
    return {"identity": identity, "meta": meta if fdp.ConsumeBool() else value(fdp)}


def message_body(fdp: Any, binary: bool, first: bool) -> tuple[bool, bytes]:
    """``(binary, body)``: mostly a WSE envelope in the stream's protocol (a hi first, most
    of the time), sometimes in the other one, else raw bytes."""
    if fdp.ConsumeProbability() < 0.05:
        binary = not binary
    if fdp.ConsumeProbability() < 0.1:
        return binary, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    if first and fdp.ConsumeProbability() < 0.8:
        kind = TYPES.hi
    elif fdp.ConsumeBool():
        kind = fdp.PickValueInList(INTERESTING_TYPES)
    else:
        kind = fdp.ConsumeUnicodeNoSurrogates(8)
    payload = hi_payload(fdp) if kind == TYPES.hi else value(fdp)
    stamp = None if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(10)
    pack = codec.pack_msgpack if binary else codec.pack_json
    return binary, pack(kind, payload, stamp)


def frame(opcode: int, payload: bytes, fin: bool, rsv: int, key: bytes | None) -> bytes:
    """A frame with a masking key chosen by the input (``build_frame`` draws its own)."""
    plain = codec.build_frame(opcode, payload, fin=fin, rsv=rsv)
    if key is None:
        return plain
    head = codec.parse_frame_header(plain)
    assert head is not None
    size = head[5]
    return bytes([plain[0], plain[1] | 0x80]) + plain[2:size] + key + codec.mask(payload, key)


def structured_stream(fdp: Any) -> bytes:
    """Messages in one to four fragments, a few frames broken, pings in between."""
    out = bytearray()
    binary_stream = fdp.ConsumeBool()  # the protocol this peer speaks
    for index in range(fdp.ConsumeIntInRange(1, 6)):
        binary, body = message_body(fdp, binary_stream, first=index == 0)
        cuts = sorted(
            fdp.ConsumeIntInRange(0, len(body)) for _ in range(fdp.ConsumeIntInRange(0, 3))
        )
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        for i, piece in enumerate(pieces):
            opcode = (OP_BINARY if binary else OP_TEXT) if i == 0 else OP_CONTINUATION
            fin, rsv = i == len(pieces) - 1, 0
            if fdp.ConsumeProbability() < 0.03:
                opcode = fdp.ConsumeIntInRange(0, 15)
            if fdp.ConsumeProbability() < 0.03:
                fin = not fin
            if fdp.ConsumeProbability() < 0.03:
                rsv = fdp.ConsumeIntInRange(1, 7)
            key = fdp.ConsumeBytes(4) if fdp.ConsumeBool() else None
            out += frame(opcode, piece, fin, rsv, key if key is None or len(key) == 4 else None)
            if fdp.ConsumeProbability() < 0.05:
                out += frame(OP_PING, b"ping", True, 0, None)
    return bytes(out)


def one_input(data: bytes) -> None:
    if not data:
        return
    config = Config.of(data[0])
    if config.structured:
        stream = structured_stream(atheris.FuzzedDataProvider(data[1:]))
    else:
        stream = data[1:]
    receive(stream, config)


# ---- seeds -------------------------------------------------------------------------------------


def seeds() -> dict[str, bytes]:
    """Valid exchanges in raw form: hi, a call, and a text message in three fragments."""
    raw = Config(structured=False, max_size=4096, challenges=0, slow_identify=False).byte()
    challenged = Config(structured=False, max_size=4096, challenges=1, slow_identify=True)
    hi = {"identity": "user-1", "meta": {"device": "phone", "tags": ["a", "b"]}}
    call = ("sum", [1, 2.5], "STAMP00001")
    text = codec.pack_json("chat", {"text": "grüße 😀"}, None)
    fragmented = (
        frame(OP_TEXT, text[:5], False, 0, b"\x01\x02\x03\x04")
        + frame(OP_PING, b"", True, 0, None)
        + frame(OP_CONTINUATION, text[5:20], False, 0, None)
        + frame(OP_CONTINUATION, text[20:], True, 0, b"\xff\x00\xff\x00")
    )
    json_hi = frame(OP_TEXT, codec.pack_json(TYPES.hi, hi, None), True, 0, b"abcd")
    msgpack_hi = frame(OP_BINARY, codec.pack_msgpack(TYPES.hi, hi, None), True, 0, None)
    return {
        "json-hi-call-fragments": bytes([raw])
        + json_hi
        + frame(OP_TEXT, codec.pack_json(*call), True, 0, b"wxyz")
        + fragmented,
        "msgpack-hi-call": bytes([raw])
        + msgpack_hi
        + frame(OP_BINARY, codec.pack_msgpack(*call), True, 0, None),
        "json-challenge": bytes([challenged.byte()])
        + json_hi
        + frame(OP_TEXT, codec.pack_json("ignored"), True, 0, None)
        + frame(OP_TEXT, codec.pack_json(TYPES.challenge, "answer"), True, 0, None)
        + frame(OP_TEXT, codec.pack_json(TYPES.response, 3.5, "STAMP00002"), True, 0, None),
        "structured": bytes([1 | 2 << 1]) + bytes(range(256)) * 2,
    }


if __name__ == "__main__":
    main(one_input, seeds())
