"""codec.FrameReader without sockets: every RFC 6455 receiving rule, on both implementations,
fed whole, split at every offset and byte by byte; the memory it keeps; a stranger's byte
budget; and the Rust reader against its pure-Python reference (hypothesis)."""

from __future__ import annotations

import itertools
import random
import struct
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wse_fast import _codec as rust
from wse_fast import _pure as pure
from wse_fast.codec import build_frame
from wse_fast.constants import (
    EVENT_FAIL,
    EVENT_FAIL_IN_CLOSE,
    EVENT_OVER_BUDGET,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    OVER_BUDGET_REASON,
)

IMPLS = [pytest.param(rust, id="rust"), pytest.param(pure, id="pure")]
Event = tuple[int, Any, Any]


def frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0) -> bytes:
    """A client's frame (masked)."""
    return build_frame(opcode, payload, fin=fin, mask=True, rsv=rsv)


def close_body(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def read(impl: Any, data: bytes, *, max_size: int = 1 << 20, compression: bool = False) -> Any:
    reader = impl.FrameReader(max_size, compression=compression)
    return reader, reader.feed(data)


def fail(code: int, events: list[Event]) -> None:
    """``events`` end in a failure with ``code``."""
    assert events[-1][0] == EVENT_FAIL and events[-1][1] == code, events


# ---- messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_messages_and_control_frames_in_one_read(impl: Any) -> None:
    stream = (
        frame(OP_TEXT, "héllo".encode())
        + frame(OP_BINARY, b"\x00\xff")
        + frame(OP_PING, b"p")
        + frame(OP_PONG, b"q")
        + frame(OP_TEXT, b"")
    )
    reader, events = read(impl, stream)
    assert events == [
        (OP_TEXT, "héllo".encode(), False),
        (OP_BINARY, b"\x00\xff", False),
        (OP_PING, b"p", False),
        (OP_PONG, b"q", False),
        (OP_TEXT, b"", False),
    ]
    assert not reader.failed and not reader.done and reader.buffered == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_a_fragmented_message_with_a_ping_between_its_fragments(impl: Any) -> None:
    stream = (
        frame(OP_TEXT, b"ab", fin=False)
        + frame(OP_PING, b"mid")
        + frame(OP_CONTINUATION, b"cd", fin=False)
        + frame(OP_CONTINUATION, b"ef")
    )
    _, events = read(impl, stream)
    assert events == [(OP_PING, b"mid", False), (OP_TEXT, b"abcdef", False)]


@pytest.mark.parametrize("impl", IMPLS)
def test_compressed_messages_only_where_agreed(impl: Any) -> None:
    _, events = read(impl, frame(OP_BINARY, b"zz", rsv=4), compression=True)
    assert events == [(OP_BINARY, b"zz", True)]
    # not UTF-8 checked: the caller checks the inflated text
    stream = frame(OP_TEXT, b"\xff", fin=False, rsv=4) + frame(OP_CONTINUATION, b"\xfe")
    _, events = read(impl, stream, compression=True)
    assert events == [(OP_TEXT, b"\xff\xfe", True)]
    _, events = read(impl, frame(OP_BINARY, b"zz", rsv=4))
    fail(1002, events)
    # RSV1 on a continuation, RSV2 or RSV3 anywhere: never
    _, events = read(
        impl,
        frame(OP_TEXT, b"a", fin=False, rsv=4) + frame(OP_CONTINUATION, b"b", rsv=4),
        compression=True,
    )
    fail(1002, events)
    _, events = read(impl, frame(OP_TEXT, b"a", rsv=2), compression=True)
    fail(1002, events)


# ---- permessage-deflate: the reader inflates ---------------------------------------------------


def deflated(data: bytes, compressor: Any = None, bits: int = 15) -> bytes:
    """``data`` as one compressed message (RFC 7692 §7.2.1: sync flush, tail stripped);
    ``compressor`` kept across messages for context takeover."""
    if compressor is None:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def inflating(
    impl: Any,
    *,
    limit: int = 1 << 20,
    bits: int = 15,
    takeover: bool = False,
    budget: int | None = None,
    max_size: int = 1 << 20,
) -> Any:
    reader = impl.FrameReader(max_size)
    reader.inflate_messages(bits, takeover, limit, budget)
    return reader


@pytest.mark.parametrize("impl", IMPLS)
def test_compressed_messages_come_out_inflated(impl: Any) -> None:
    text = "héllo wörld ".encode() * 50
    packed = deflated(text)
    stream = (
        frame(OP_TEXT, packed, rsv=4)
        + frame(OP_BINARY, b"plain")  # RSV1 clear: as sent (§6)
        + frame(OP_BINARY, packed[:5], fin=False, rsv=4)
        + frame(OP_PING, b"mid")
        + frame(OP_CONTINUATION, packed[5:9], fin=False)
        + frame(OP_CONTINUATION, packed[9:])
        + frame(OP_TEXT, deflated(b""), rsv=4)
    )
    reader = inflating(impl)
    assert reader.compression
    assert reader.feed(stream) == [
        (OP_TEXT, text, False),
        (OP_BINARY, b"plain", False),
        (OP_PING, b"mid", False),
        (OP_BINARY, text, False),
        (OP_TEXT, b"", False),
    ]
    assert not reader.failed and reader.buffered == 0
    # split at every offset, the same messages
    expected = inflating(impl).feed(stream)
    for cut in range(1, len(stream)):
        assert feed_all(inflating(impl), [stream[:cut], stream[cut:]]) == expected


@pytest.mark.parametrize("impl", IMPLS)
def test_inflation_fails_1009_at_the_first_byte_past_the_limit(impl: Any) -> None:
    assert inflating(impl, limit=1000).feed(frame(OP_BINARY, deflated(b"x" * 1000), rsv=4)) == [
        (OP_BINARY, b"x" * 1000, False)
    ]
    reader = inflating(impl, limit=1000)
    events = reader.feed(frame(OP_BINARY, deflated(b"x" * 1001), rsv=4))
    assert events == [(EVENT_FAIL, 1009, "message too big")]
    # fragmented, the limit counts the whole message inflated so far
    packed = deflated(b"x" * 1001)
    stream = frame(OP_BINARY, packed[:3], fin=False, rsv=4) + frame(OP_CONTINUATION, packed[3:])
    fail(1009, inflating(impl, limit=1000).feed(stream))
    # a bomb: the first fragment that inflates past the limit fails, the message's end not
    # awaited, and nothing of it is kept
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = compressor.compress(b" " * (64 << 20)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(first) < 100_000
    reader = inflating(impl, limit=1 << 20)
    assert reader.feed(frame(OP_TEXT, first, fin=False, rsv=4)) == [
        (EVENT_FAIL, 1009, "message too big")
    ]
    assert reader.failed and reader.buffered == 0
    # the limit may be changed between messages (a stranger accepted)
    reader = inflating(impl, limit=10)
    fail(1009, reader.feed(frame(OP_BINARY, deflated(b"x" * 11), rsv=4)))
    reader = inflating(impl, limit=10)
    reader.inflate_limit = 11
    assert reader.feed(frame(OP_BINARY, deflated(b"x" * 11), rsv=4)) == [
        (OP_BINARY, b"x" * 11, False)
    ]


@pytest.mark.parametrize("impl", IMPLS)
def test_context_takeover_across_messages_only_where_agreed(impl: Any) -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -12)
    line = b"the same line, again and again; " * 4
    first, second = deflated(line, compressor), deflated(line, compressor)
    assert len(second) < len(first) // 4  # the second refers to the first
    stream = frame(OP_TEXT, first, rsv=4) + frame(OP_TEXT, second, rsv=4)
    assert inflating(impl, bits=12, takeover=True).feed(stream) == [
        (OP_TEXT, line, False),
        (OP_TEXT, line, False),
    ]
    # client_no_context_takeover: each message inflated alone, the second cannot be
    events = inflating(impl).feed(stream)
    assert events == [(OP_TEXT, line, False), (EVENT_FAIL, 1007, "invalid compressed data")]
    # without takeover, messages made alone inflate one after another
    alone = frame(OP_TEXT, deflated(line), rsv=4)
    assert inflating(impl).feed(alone * 3) == [(OP_TEXT, line, False)] * 3


@pytest.mark.parametrize("impl", IMPLS)
def test_the_window_agreed_bounds_what_a_message_may_refer_to(impl: Any) -> None:
    # 600 random bytes, then the same again in the next message: with a 15-bit window the second
    # refers 600 bytes back into the first; an inflater that agreed to 9 bits keeps 512
    # bytes of the first, so the reference is refused as zlib refuses it (within one
    # message zlib, like zlib-rs, lets it refer to what that call has made, whatever the
    # window: the window bounds what is kept between calls)
    chunk = random.Random(7).randbytes(600)  # no repeat within itself
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    stream = frame(OP_BINARY, deflated(chunk, compressor), rsv=4) + frame(
        OP_BINARY, deflated(chunk, compressor), rsv=4
    )
    assert inflating(impl, bits=15, takeover=True).feed(stream) == [(OP_BINARY, chunk, False)] * 2
    events = inflating(impl, bits=9, takeover=True).feed(stream)
    assert events == [(OP_BINARY, chunk, False), (EVENT_FAIL, 1007, "invalid compressed data")]
    with pytest.raises(ValueError):
        inflating(impl, bits=16)
    with pytest.raises(ValueError):
        inflating(impl, bits=7)


@pytest.mark.parametrize("bits", [8, 9, 12, 14, 15])
def test_a_reference_past_the_window_is_judged_alike_by_both_twins(bits: int) -> None:
    # A peer that agreed to fewer than 15 bits but refers further back, within one message
    # of 21 KB: zlib (and zlib-rs) let a distance past the window reach what the same call
    # made, not what an earlier call made. Both twins ask for output in the same steps, so
    # they refuse (or accept) the same streams, fragmented anywhere.
    chunk = random.Random(3).randbytes(600)
    data = chunk + b"a" * 20_000 + chunk  # the second chunk refers 20 600 bytes back
    packed = deflated(data, bits=15)
    cut = len(packed) // 3
    for stream in (
        frame(OP_BINARY, packed, rsv=4),
        frame(OP_BINARY, packed[:cut], fin=False, rsv=4) + frame(OP_CONTINUATION, packed[cut:]),
    ):
        events = [inflating(impl, bits=bits).feed(stream) for impl in (rust, pure)]
        assert events[0] == events[1]
        if bits == 15:  # a 32 KiB window holds it all
            assert events[0] == [(OP_BINARY, data, False)]
        elif bits <= 12:  # 4 KiB or less: refused at the step that reaches back
            assert events[0] == [(EVENT_FAIL, 1007, "invalid compressed data")]


@pytest.mark.parametrize("impl", IMPLS)
def test_a_corrupt_stream_or_text_fails_1007(impl: Any) -> None:
    events = inflating(impl).feed(frame(OP_BINARY, b"\xff\xff\xff\xff", rsv=4))
    assert events == [(EVENT_FAIL, 1007, "invalid compressed data")]
    events = inflating(impl).feed(frame(OP_TEXT, deflated(b"ok \xff"), rsv=4))
    assert events == [(EVENT_FAIL, 1007, "invalid UTF-8 in a text message")]
    # after a failure, the peer's Close is still read
    reader = inflating(impl)
    stream = frame(OP_BINARY, b"\xff\xff", rsv=4) + frame(OP_CLOSE, close_body(1000))
    assert reader.feed(stream)[1:] == [(OP_CLOSE, 1000, "")]


def flushed(compressor: Any, data: bytes) -> bytes:
    """``data`` deflated onto ``compressor``'s stream and flushed (Z_SYNC_FLUSH): a fragment
    that inflates to all of ``data`` before the next fragment is read."""
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_compressed_text_fails_1007_at_the_first_fragment_that_inflates_bad(impl: Any) -> None:
    invalid = (EVENT_FAIL, 1007, "invalid UTF-8 in a text message")
    # the first fragment inflates to bytes no text can start with: the failure comes with
    # that fragment's read, the message's end not awaited and nothing of it kept
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = flushed(compressor, b"ok \xff and more")
    last = deflated(b"the end", compressor)
    reader = inflating(impl)
    assert reader.feed(frame(OP_TEXT, first, fin=False, rsv=4)) == [invalid]
    assert reader.failed and reader.buffered == 0
    # what follows is skipped, the peer's Close still read
    stream = frame(OP_CONTINUATION, last) + frame(OP_CLOSE, close_body(1000))
    assert reader.feed(stream) == [(OP_CLOSE, 1000, "")]
    # a sequence that can never be completed (a surrogate's start) fails as early
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    reader = inflating(impl)
    assert reader.feed(frame(OP_TEXT, flushed(compressor, b"ok\xed\xa0"), fin=False, rsv=4)) == [
        invalid
    ]
    # a later fragment: valid text until it, the failure with it, with a ping between
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    reader = inflating(impl)
    assert (
        reader.feed(frame(OP_TEXT, flushed(compressor, "grüße ".encode()), fin=False, rsv=4)) == []
    )
    assert reader.feed(frame(OP_PING, b"p")) == [(OP_PING, b"p", False)]
    assert reader.feed(frame(OP_CONTINUATION, flushed(compressor, b"\xc3("), fin=False)) == [
        invalid
    ]
    # a character split across fragments is fine; a text ending inside one fails at its end
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    stream = frame(OP_TEXT, flushed(compressor, b"\xe2\x82"), fin=False, rsv=4) + frame(
        OP_CONTINUATION, deflated(b"\xac", compressor)
    )
    assert inflating(impl).feed(stream) == [(OP_TEXT, "€".encode(), False)]
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    stream = frame(OP_TEXT, flushed(compressor, b"\xe2\x82"), fin=False, rsv=4) + frame(
        OP_CONTINUATION, deflated(b"", compressor)
    )
    assert inflating(impl).feed(stream) == [
        (EVENT_FAIL, 1007, "text message ends inside a character")
    ]
    # a binary message is not text
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    stream = frame(OP_BINARY, flushed(compressor, b"\xff"), fin=False, rsv=4) + frame(
        OP_CONTINUATION, deflated(b"\xfe", compressor)
    )
    assert inflating(impl).feed(stream) == [(OP_BINARY, b"\xff\xfe", False)]


@pytest.mark.parametrize("impl", IMPLS)
def test_a_budget_bounds_what_all_messages_inflate_to(impl: Any) -> None:
    message = frame(OP_BINARY, deflated(b"z" * 400), rsv=4)
    reader = inflating(impl, budget=1000)
    assert reader.feed(message * 2) == [(OP_BINARY, b"z" * 400, False)] * 2
    assert reader.inflate_budget == 200
    assert reader.feed(message) == [(EVENT_FAIL, 1008, OVER_BUDGET_REASON)]
    reader = inflating(impl, budget=1000)
    reader.inflate_budget = None  # accepted: no bound
    assert reader.feed(message * 5) == [(OP_BINARY, b"z" * 400, False)] * 5


# ---- what fails the connection -----------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rsv", [1, 2, 4])
def test_reserved_bits_without_an_extension_fail_1002(impl: Any, rsv: int) -> None:
    fail(1002, read(impl, frame(OP_TEXT, b"x", rsv=rsv))[1])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcodes_fail_1002_and_end_reading(impl: Any, opcode: int) -> None:
    reader, events = read(impl, frame(opcode, b"x") + frame(OP_CLOSE, close_body(1000)))
    fail(1002, events)
    assert reader.done  # frames cannot be told apart any more: no Close is looked for


@pytest.mark.parametrize("impl", IMPLS)
def test_an_unmasked_client_frame_fails_1002(impl: Any) -> None:
    reader, events = read(impl, build_frame(OP_TEXT, b"x"))
    fail(1002, events)
    assert reader.done
    # a client's reader (the peer is a server) refuses the opposite
    client = impl.FrameReader(100, client_frames=False)
    assert client.feed(build_frame(OP_TEXT, b"x")) == [(OP_TEXT, b"x", False)]
    fail(1002, client.feed(frame(OP_TEXT, b"x")))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_control_frames_over_125_bytes_or_fragmented_fail_1002(impl: Any, opcode: int) -> None:
    fail(1002, read(impl, frame(opcode, b"x" * 126))[1])
    fail(1002, read(impl, frame(opcode, b"x", fin=False))[1])


@pytest.mark.parametrize("impl", IMPLS)
def test_reserved_bits_on_control_frames(impl: Any) -> None:
    fail(1002, read(impl, frame(OP_PING, b"", rsv=4))[1])
    reader, events = read(impl, frame(OP_CLOSE, close_body(1000), rsv=2))
    assert events == [(EVENT_FAIL_IN_CLOSE, 1002, "reserved bits set on a control frame")]
    assert reader.done


@pytest.mark.parametrize("impl", IMPLS)
def test_fragmentation_rules(impl: Any) -> None:
    fail(1002, read(impl, frame(OP_CONTINUATION, b"x"))[1])
    fail(1002, read(impl, frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"))[1])
    fail(1002, read(impl, frame(OP_BINARY, b"a", fin=False) + frame(OP_BINARY, b"b"))[1])


@pytest.mark.parametrize("impl", IMPLS)
def test_utf8_fails_at_the_first_bad_fragment(impl: Any) -> None:
    fail(1007, read(impl, frame(OP_TEXT, b"\xc3"))[1])
    # "é" split across fragments is fine
    _, events = read(impl, frame(OP_TEXT, b"\xc3", fin=False) + frame(OP_CONTINUATION, b"\xa9"))
    assert events == [(OP_TEXT, "é".encode(), False)]
    # ED A0 can never become valid: the first fragment fails, before any continuation
    reader = impl.FrameReader(100)
    fail(1007, reader.feed(frame(OP_TEXT, b"ok\xed\xa0", fin=False)))
    # a text message that ends inside a character
    stream = frame(OP_TEXT, b"\xe2\x82", fin=False) + frame(OP_CONTINUATION, b"")
    fail(1007, read(impl, stream)[1])
    # binary messages are not text
    assert read(impl, frame(OP_BINARY, b"\xff"))[1] == [(OP_BINARY, b"\xff", False)]


@pytest.mark.parametrize("impl", IMPLS)
def test_max_message_size_is_checked_from_the_header(impl: Any) -> None:
    whole = frame(OP_BINARY, b"x" * 1001)
    reader = impl.FrameReader(1000)
    events = reader.feed(whole[:8])  # the header alone (2 + 2 + 4 bytes)
    fail(1009, events)
    assert reader.buffered == 0  # nothing of the frame was kept
    assert read(impl, frame(OP_BINARY, b"x" * 1000), max_size=1000)[1][0][1] == b"x" * 1000
    # fragments count together
    stream = frame(OP_TEXT, b"x" * 600, fin=False) + frame(OP_CONTINUATION, b"x" * 401)
    fail(1009, read(impl, stream, max_size=1000)[1])


@pytest.mark.parametrize("impl", IMPLS)
def test_a_length_over_2_63_fails_1002(impl: Any) -> None:
    header = bytes([0x82, 0x80 | 127]) + (1 << 63).to_bytes(8, "big") + b"abcd"
    fail(1002, read(impl, header, max_size=1 << 62)[1])


# ---- close frames ------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", (OP_CLOSE, 1005, "")),
        (close_body(1000), (OP_CLOSE, 1000, "")),
        (close_body(1001, "bye ☺".encode()), (OP_CLOSE, 1001, "bye ☺")),
        (close_body(1014), (OP_CLOSE, 1014, "")),
        (close_body(3000), (OP_CLOSE, 3000, "")),
        (close_body(4999), (OP_CLOSE, 4999, "")),
        (b"\x03", (EVENT_FAIL_IN_CLOSE, 1002, "close frame with a 1-byte payload")),
        (close_body(999), (EVENT_FAIL_IN_CLOSE, 1002, "close code 999 may not be sent")),
        (close_body(1004), (EVENT_FAIL_IN_CLOSE, 1002, "close code 1004 may not be sent")),
        (close_body(1005), (EVENT_FAIL_IN_CLOSE, 1002, "close code 1005 may not be sent")),
        (close_body(1006), (EVENT_FAIL_IN_CLOSE, 1002, "close code 1006 may not be sent")),
        (close_body(1015), (EVENT_FAIL_IN_CLOSE, 1002, "close code 1015 may not be sent")),
        (close_body(2999), (EVENT_FAIL_IN_CLOSE, 1002, "close code 2999 may not be sent")),
        (close_body(5000), (EVENT_FAIL_IN_CLOSE, 1002, "close code 5000 may not be sent")),
        (close_body(1000, b"\xff"), (EVENT_FAIL_IN_CLOSE, 1007, "close reason is not UTF-8")),
    ],
)
def test_close_frames(impl: Any, body: bytes, expected: Event) -> None:
    reader, events = read(impl, frame(OP_CLOSE, body) + frame(OP_TEXT, b"after"))
    assert events == [expected]  # nothing after a Close is read
    assert reader.done and reader.feed(frame(OP_PING)) == []


@pytest.mark.parametrize("impl", IMPLS)
def test_after_a_failure_only_the_peers_close_is_read(impl: Any) -> None:
    reader = impl.FrameReader(1000)
    events = reader.feed(
        frame(OP_TEXT, b"x", rsv=2)  # fails
        + frame(OP_PING, b"late")  # not reported: no pong goes after a failure
        + frame(OP_TEXT, b"\xff")  # not checked
    )
    assert events == [(EVENT_FAIL, 1002, "reserved bits set without an extension")]
    # a frame too large to keep is skipped as it arrives, without keeping a byte of it
    big = frame(OP_BINARY, b"y" * 5000)
    assert reader.feed(big[:3000]) == []
    assert reader.buffered == 0
    assert reader.feed(big[3000:] + frame(OP_CLOSE, close_body(1002))) == [(OP_CLOSE, 1002, "")]
    assert reader.done


# ---- reads split anywhere ----------------------------------------------------------------------

STREAM = (
    frame(OP_TEXT, "ünïcode".encode())
    + frame(OP_BINARY, bytes(range(256)) * 3)  # a 16-bit length
    + frame(OP_TEXT, "€".encode()[:2], fin=False)
    + frame(OP_PING, b"between")
    + frame(OP_CONTINUATION, "€".encode()[2:])
    + frame(OP_BINARY, b"z" * 70000)  # a 64-bit length
    + frame(OP_CLOSE, close_body(1000, b"done"))
)


def feed_all(reader: Any, pieces: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for piece in pieces:
        events += reader.feed(piece)
    return events


@pytest.mark.parametrize("impl", IMPLS)
def test_a_stream_split_at_every_offset_reads_the_same(impl: Any) -> None:
    expected = impl.FrameReader(1 << 20).feed(STREAM)
    assert [e[0] for e in expected] == [OP_TEXT, OP_BINARY, OP_PING, OP_TEXT, OP_BINARY, OP_CLOSE]
    small = STREAM[: len(STREAM) - 70014 - 8]  # without the large frame: every offset is cheap
    small_expected = impl.FrameReader(1 << 20).feed(small)
    for cut in range(1, len(small)):
        assert feed_all(impl.FrameReader(1 << 20), [small[:cut], small[cut:]]) == small_expected
    for cut in range(len(STREAM) - 70100, len(STREAM), 7):  # across the large frame's end
        assert feed_all(impl.FrameReader(1 << 20), [STREAM[:cut], STREAM[cut:]]) == expected


@pytest.mark.parametrize("impl", IMPLS)
def test_a_stream_fed_byte_by_byte_reads_the_same(impl: Any) -> None:
    stream = STREAM.replace(frame(OP_BINARY, b"z" * 70000), frame(OP_BINARY, b"z" * 300))
    expected = impl.FrameReader(1 << 20).feed(stream)
    reader = impl.FrameReader(1 << 20)
    assert feed_all(reader, [stream[i : i + 1] for i in range(len(stream))]) == expected


# ---- memory ------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_only_unfinished_bytes_are_kept_and_given_back(impl: Any) -> None:
    reader = impl.FrameReader(2 << 20)
    assert reader.buffered == 0  # idle: no buffer
    message = frame(OP_BINARY, b"m" * (1 << 20))
    events: list[Event] = []
    for at in range(0, len(message), 65536):  # as 64 KiB reads bring it
        events += reader.feed(message[at : at + 65536])
        if at + 65536 < len(message):
            assert reader.buffered == at + 65536  # what has come of the frame, no more
    assert events == [(OP_BINARY, b"m" * (1 << 20), False)]
    assert reader.buffered == 0  # the 1 MiB is given back with the message
    # a fragmented message: its payload so far, then nothing
    reader.feed(frame(OP_TEXT, b"a" * 1000, fin=False))
    assert reader.buffered == 1000
    assert reader.feed(frame(OP_CONTINUATION, b"b")) == [(OP_TEXT, b"a" * 1000 + b"b", False)]
    assert reader.buffered == 0


# ---- a stranger's byte budget ------------------------------------------------------------------

OVER_BUDGET = (EVENT_OVER_BUDGET, 1008, OVER_BUDGET_REASON)
MESSAGES = frame(OP_TEXT, b"hello") + frame(OP_PING, b"p") + frame(OP_BINARY, b"\x00" * 300)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_budget_may_be_spent_to_its_last_byte(impl: Any) -> None:
    reader = impl.FrameReader(1 << 20, budget=len(MESSAGES))
    assert reader.budget == len(MESSAGES)
    events = reader.feed(MESSAGES[:10]) + reader.feed(MESSAGES[10:])
    assert events == impl.FrameReader(1 << 20).feed(MESSAGES)
    assert reader.budget == 0 and not reader.done and not reader.over_budget
    assert reader.feed(b"") == []  # nothing fed, nothing spent
    # one byte more is one too many
    assert reader.feed(frame(OP_PING, b"")[:1]) == [OVER_BUDGET]
    assert reader.done and reader.over_budget and reader.unread == 1 and reader.buffered == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_what_the_budget_covers_is_read_before_the_stranger_is_stopped(impl: Any) -> None:
    # the budget runs out inside the binary message: the text and the ping before it are
    # read, then the decision, last; the message's bytes within the budget are kept (they
    # are part of the budget), none past it
    budget = len(MESSAGES) - 100
    reader = impl.FrameReader(1 << 20, budget=budget)
    events = reader.feed(MESSAGES)
    assert events == [(OP_TEXT, b"hello", False), (OP_PING, b"p", False), OVER_BUDGET]
    assert reader.unread == 100 and reader.budget == 0
    assert reader.buffered == len(frame(OP_BINARY, b"\x00" * 300)) - 100
    # stopped: nothing more is read, kept or counted
    assert reader.feed(frame(OP_TEXT, b"more")) == []
    assert reader.done and reader.buffered == len(frame(OP_BINARY, b"\x00" * 300)) - 100


@pytest.mark.parametrize("impl", IMPLS)
def test_a_stranger_declaring_a_large_frame_is_stopped_before_the_excess_is_kept(
    impl: Any,
) -> None:
    # a 1 MB frame sent in one large read: at most the budget is kept, not the read
    reader = impl.FrameReader(2 << 20, budget=4096)
    assert reader.feed(frame(OP_BINARY, b"x" * 1_000_000)[:200_000]) == [OVER_BUDGET]
    assert reader.buffered == 4096 and reader.unread == 200_000 - 4096


@pytest.mark.parametrize("impl", IMPLS)
def test_every_byte_fed_counts_also_those_skipped_after_a_failure(impl: Any) -> None:
    reader = impl.FrameReader(100, budget=500)
    events = reader.feed(frame(OP_BINARY, b"x" * 200))  # 1009, then skipped: 208 bytes
    fail(1009, events)
    assert reader.budget == 500 - 208
    assert reader.feed(frame(OP_BINARY, b"y" * 300)) == [OVER_BUDGET]
    assert reader.unread == 308 - 292


@pytest.mark.parametrize("impl", IMPLS)
def test_a_close_within_the_budget_ends_reading_without_a_budget_decision(impl: Any) -> None:
    stream = frame(OP_CLOSE, close_body(1000)) + b"\x00" * 50
    reader = impl.FrameReader(100, budget=len(stream) - 10)
    assert reader.feed(stream) == [(OP_CLOSE, 1000, "")]
    assert reader.done and not reader.over_budget


@pytest.mark.parametrize("impl", IMPLS)
def test_a_budget_split_at_every_offset_decides_at_the_same_byte(impl: Any) -> None:
    budget = len(MESSAGES) - 100
    expected = impl.FrameReader(1 << 20, budget=budget).feed(MESSAGES)
    for cut in range(len(MESSAGES) + 1):
        reader = impl.FrameReader(1 << 20, budget=budget)
        assert feed_all(reader, [MESSAGES[:cut], MESSAGES[cut:]]) == expected
        # what is left unread of the read the budget ran out in
        assert reader.unread == (100 if cut <= budget else cut - budget)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_lifted_budget_bounds_nothing_and_a_stopped_reader_reads_on(impl: Any) -> None:
    unbounded = impl.FrameReader(1 << 20).feed(MESSAGES)
    # lifted before it runs out: no bound at all
    reader = impl.FrameReader(1 << 20, budget=10)
    reader.lift_budget()
    assert reader.budget is None and reader.feed(MESSAGES) == unbounded
    # lifted after it ran out (the connection was accepted by a message of that read): the
    # bytes left unread, fed again, complete what the budget cut
    reader = impl.FrameReader(1 << 20, budget=len(MESSAGES) - 100)
    first = reader.feed(MESSAGES)
    assert first[-1] == OVER_BUDGET
    reader.lift_budget()
    # still stopped until it is fed again: its caller, which lifted the budget while
    # handling that read's events, then sees that the read was cut and what is left of it
    assert reader.done and reader.over_budget and reader.budget is None
    assert first[:-1] + reader.feed(MESSAGES[-reader.unread :]) == unbounded
    assert not reader.done and not reader.over_budget and reader.unread == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_a_negative_budget_is_refused(impl: Any) -> None:
    with pytest.raises(OverflowError):
        impl.FrameReader(100, budget=-1)


# ---- the Rust reader against its reference -----------------------------------------------------

_frames = st.tuples(
    st.sampled_from([0, 1, 2, 3, 8, 9, 10, 11]),  # opcodes, some reserved
    st.binary(max_size=300),
    st.booleans(),  # fin
    st.sampled_from([0, 0, 0, 4, 2]),  # rsv
    st.booleans(),  # masked
).map(lambda f: build_frame(f[0], f[1], fin=f[2], rsv=f[3], mask=f[4]))
_texts = st.text(max_size=40).map(lambda t: t.encode())
_valid = st.one_of(
    _texts.map(lambda b: frame(OP_TEXT, b)),
    st.tuples(_texts, st.integers(0, 40)).map(
        lambda t: frame(OP_TEXT, t[0][: t[1]], fin=False) + frame(OP_CONTINUATION, t[0][t[1] :])
    ),
    st.binary(max_size=200).map(lambda b: frame(OP_BINARY, b)),
    st.binary(max_size=125).map(lambda b: frame(OP_PING, b)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(st.one_of(_valid, _valid, _frames, st.binary(max_size=20)), max_size=12),
    cuts=st.lists(st.integers(0, 4000), max_size=6),
    max_size=st.sampled_from([50, 400, 1 << 20]),
    compression=st.booleans(),
    budget=st.one_of(st.none(), st.integers(0, 1500)),
    lift_after=st.integers(0, 8),
)
def test_rust_reads_as_the_reference(
    pieces: list[bytes],
    cuts: list[int],
    max_size: int,
    compression: bool,
    budget: int | None,
    lift_after: int,
) -> None:
    stream = b"".join(pieces)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    reads = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    readers = [
        impl.FrameReader(max_size, compression=compression, budget=budget) for impl in (rust, pure)
    ]
    for at, data in enumerate(reads):
        got = [reader.feed(data) for reader in readers]
        assert got[0] == got[1]
        if at + 1 == lift_after:  # accepted: lifted, and the rest of a cut read read on
            for reader in readers:
                reader.lift_budget()
            if readers[0].over_budget:
                got = [reader.feed(data[len(data) - reader.unread :]) for reader in readers]
                assert got[0] == got[1]
        states = [
            (r.failed, r.done, r.buffered, r.budget, r.over_budget, r.unread) for r in readers
        ]
        assert states[0] == states[1]


def _compressed(parts: tuple[bytes, int, int, bool]) -> bytes:
    """A compressed message from its payload: alone (without takeover), fragmented at
    ``cut``, as text or binary, ``corrupt`` with a byte flipped."""
    data, cut, opcode_choice, corrupt = parts
    packed = bytearray(deflated(data))
    if corrupt and packed:
        packed[len(packed) // 2] ^= 0x5A
    opcode = OP_TEXT if opcode_choice else OP_BINARY
    cut = min(cut, len(packed))
    if cut == 0:
        return frame(opcode, bytes(packed), rsv=4)
    return frame(opcode, bytes(packed[:cut]), fin=False, rsv=4) + frame(
        OP_CONTINUATION, bytes(packed[cut:])
    )


_deflated = st.tuples(
    st.one_of(_texts, st.binary(max_size=300), st.integers(0, 5000).map(lambda n: b"a" * n)),
    st.integers(0, 30),
    st.booleans(),
    st.sampled_from([False, False, False, True]),
).map(_compressed)


def _fragmented(parts: tuple[list[tuple[bytes, bool]], list[int], bool]) -> bytes:
    """A compressed message of several fragments: each chunk deflated onto one stream, those
    ``flush``ed ending a fragment (which then inflates to all its chunks so far), and the
    stream cut again at ``cuts`` (mid-symbol: a fragment inflates to what zlib can decode of
    it); text or binary."""
    chunks, cuts, text = parts
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    packed, ends = b"", {0}
    for chunk, flush in chunks:
        packed += compressor.compress(chunk)
        if flush:
            packed += compressor.flush(zlib.Z_SYNC_FLUSH)
            ends.add(len(packed))
    packed = (packed + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    bounds = [*sorted(b for b in ends | set(cuts) if b < len(packed)), len(packed)]
    fragments = [packed[a:b] for a, b in itertools.pairwise(bounds)] or [b""]
    opcode = OP_TEXT if text else OP_BINARY
    return b"".join(
        frame(
            OP_CONTINUATION if at else opcode,
            fragment,
            fin=at == len(fragments) - 1,
            rsv=0 if at else 4,
        )
        for at, fragment in enumerate(fragments)
    )


# text chunks, bytes no text may hold, and pieces of characters (valid only when joined)
_chunks = st.one_of(
    _texts,
    _texts,
    st.sampled_from(
        [
            b"\xff",
            b"\x80",
            b"\xed\xa0",
            b"\xf4\x90",
            b"\xe0\x80",
            b"\xc3(",
            b"\xc3",
            b"\xa9",
            b"\xe2\x82",
            b"\xac",
            b"\xf0\x9f",
            b"\x98\x80",
        ]
    ),
    st.integers(0, 3000).map(lambda n: b"a" * n),
)
_fragmented_texts = st.tuples(
    st.lists(st.tuples(_chunks, st.booleans()), min_size=1, max_size=6),
    st.lists(st.integers(0, 400), max_size=3),
    st.sampled_from([True, True, True, False]),
).map(_fragmented)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(
        st.one_of(_deflated, _deflated, _fragmented_texts, _fragmented_texts, _valid, _frames),
        max_size=10,
    ),
    cuts=st.lists(st.integers(0, 4000), max_size=6),
    limit=st.sampled_from([0, 60, 1000, 1 << 20]),
    bits=st.integers(8, 15),
    takeover=st.booleans(),
    budget=st.one_of(st.none(), st.integers(0, 8000)),
    change_after=st.integers(0, 8),
)
def test_rust_inflates_as_the_reference(
    pieces: list[bytes],
    cuts: list[int],
    limit: int,
    bits: int,
    takeover: bool,
    budget: int | None,
    change_after: int,
) -> None:
    stream = b"".join(pieces)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    reads = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    readers = [impl.FrameReader(1 << 20) for impl in (rust, pure)]
    for reader in readers:
        reader.inflate_messages(bits, takeover, limit, budget)
    for at, data in enumerate(reads):
        got = [reader.feed(data) for reader in readers]
        assert got[0] == got[1]
        if at + 1 == change_after:  # accepted: the limits lifted between reads
            for reader in readers:
                reader.inflate_limit = 1 << 20
                reader.inflate_budget = None
        states = [(r.failed, r.done, r.buffered, r.inflate_budget) for r in readers]
        assert states[0] == states[1]
