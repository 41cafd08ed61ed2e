"""permessage-deflate (RFC 7692), sans I/O: negotiation, compression and bounded inflation."""

from __future__ import annotations

import json
import random
import tracemalloc
import zlib

import pytest
from wse_fast import codec
from wse_fast.options import Limits, ServerLimits
from wse_fast.sansio.deflate import (
    RSV_COMPRESSED,
    SYNC_TAIL,
    Agreement,
    Compression,
    CorruptMessage,
    Inflater,
    MessageTooBig,
    PerMessageDeflate,
    parse_extensions,
)
from wse_fast.sansio.framing import FrameViolation, InflatingAssembler

JSON = json.dumps(["feed", [{"id": i, "symbol": "AAPL", "price": 1.5 * i} for i in range(60)]])
PAYLOAD = JSON.encode()


def deflate(data: bytes, bits: int = 15) -> bytes:
    """Compressed by zlib directly, as another implementation would (RFC 7692 §7.2.1)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(SYNC_TAIL)
    return out[:-4]


def inflate(data: bytes | memoryview) -> bytes:
    return zlib.decompressobj(-15).decompress(bytes(data) + SYNC_TAIL)


# ---- the header grammar ----------------------------------------------------------------------


def test_extensions_across_lines_with_quoted_values() -> None:
    parsed = parse_extensions(
        [
            'permessage-deflate; client_max_window_bits="10" ; server_no_context_takeover',
            "x-webkit-deflate-frame, permessage-deflate",
        ]
    )
    assert parsed == [
        (
            "permessage-deflate",
            [("client_max_window_bits", "10"), ("server_no_context_takeover", None)],
        ),
        ("x-webkit-deflate-frame", []),
        ("permessage-deflate", []),
    ]


@pytest.mark.parametrize(
    "value",
    ['permessage-deflate; a="1', "permessage deflate", "permessage-deflate; =1", "p; a=b c"],
)
def test_malformed_extension_headers_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        parse_extensions([value])


# ---- the server's answer -----------------------------------------------------------------------


def server(**options: int | bool) -> PerMessageDeflate:
    return PerMessageDeflate(Compression(**options))  # type: ignore[arg-type]


def test_a_browser_offer_is_answered_without_context_takeover() -> None:
    # what Chromium, Firefox and Node.js ws send
    answer = server().negotiate(["permessage-deflate; client_max_window_bits"])
    assert answer is not None
    assert answer.header() == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    )


def test_the_first_acceptable_offer_is_taken() -> None:
    answer = server().negotiate(
        [
            "permessage-deflate; unknown_param, permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=10, permessage-deflate",
        ]
    )
    assert answer == Agreement(
        server_no_context_takeover=True,
        client_no_context_takeover=True,
        server_max_window_bits=10,  # §7.1.2.1: named in the offer, so named in the answer
    )


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; server_max_window_bits",
        "x-webkit-deflate-frame",
        'permessage-deflate; a="',  # malformed: declined, not an error
        # thousands of digits: declined, not an error from int() (which would fail the upgrade)
        "permessage-deflate; client_max_window_bits=" + "1" * 5000,
        "permessage-deflate; server_max_window_bits=012",
        # longer than any real offer: declined unread
        "permessage-deflate" + "; client_max_window_bits" * 50,
    ],
)
def test_offers_that_cannot_be_honoured_are_declined(offer: str) -> None:
    assert server().negotiate([offer]) is None


def test_takeover_is_agreed_only_with_a_bounded_client_window() -> None:
    extension = server(takeover=True, window_bits=11)
    bounded = extension.negotiate(["permessage-deflate; client_max_window_bits"])
    assert bounded == Agreement(server_max_window_bits=11, client_max_window_bits=11)
    unbounded = extension.negotiate(["permessage-deflate"])
    assert unbounded == Agreement(client_no_context_takeover=True, server_max_window_bits=11)
    refrained = extension.negotiate(["permessage-deflate; server_no_context_takeover"])
    assert refrained is not None and refrained.server_no_context_takeover


def test_a_peer_that_demands_an_8_bit_window_is_agreed_and_sent_plain() -> None:
    extension = server()
    answer = extension.negotiate(["permessage-deflate; server_max_window_bits=8"])
    assert answer is not None and answer.server_max_window_bits == 8
    assert extension.compressor(answer, client_side=False) is None


def test_connections_without_takeover_share_one_compressor_per_window() -> None:
    extension = server()
    plain = extension.negotiate(["permessage-deflate"])
    limited = extension.negotiate(["permessage-deflate; server_max_window_bits=10"])
    assert plain is not None and limited is not None
    first = extension.compressor(plain, client_side=False)
    assert first is extension.compressor(plain, client_side=False)
    assert first is not extension.compressor(limited, client_side=False)


# ---- the client's offer ------------------------------------------------------------------------


def test_a_client_accepts_its_own_offer_answered_by_a_server() -> None:
    for takeover in (False, True):
        client = server(takeover=takeover)
        answer = server(takeover=takeover).negotiate([client.offer()])
        assert answer is not None
        assert client.accept([answer.header()]) == answer


@pytest.mark.parametrize(
    "answer",
    [
        "permessage-deflate",  # server_no_context_takeover offered, not answered
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
        "x-other",
        "permessage-deflate; server_no_context_takeover, permessage-deflate",
    ],
)
def test_a_client_refuses_answers_its_offer_did_not_allow(answer: str) -> None:
    with pytest.raises(ValueError):
        server().accept([answer])


def test_no_answer_is_compression_declined() -> None:
    assert server().accept([]) is None


# ---- compressing -------------------------------------------------------------------------------


def test_shared_compression_makes_messages_that_stand_alone() -> None:
    extension = server()
    agreement = extension.negotiate(["permessage-deflate"])
    assert agreement is not None
    compressor = extension.compressor(agreement, client_side=False)
    assert compressor is not None
    first = bytes(compressor.compress(PAYLOAD))
    second = bytes(compressor.compress(PAYLOAD))
    # no reference to the first message: each inflates with a fresh context
    assert inflate(first) == inflate(second) == PAYLOAD
    assert first == second and len(first) < len(PAYLOAD) // 3
    assert compressor.messages == 2


def test_takeover_compression_refers_to_earlier_messages() -> None:
    extension = server(takeover=True)
    agreement = extension.negotiate(["permessage-deflate; client_max_window_bits"])
    assert agreement is not None
    compressor = extension.compressor(agreement, client_side=False)
    assert compressor is not None
    inflater = zlib.decompressobj(-12)
    first, second = (bytes(compressor.compress(PAYLOAD)) for _ in range(2))
    assert inflater.decompress(first + SYNC_TAIL) == PAYLOAD
    assert inflater.decompress(second + SYNC_TAIL) == PAYLOAD
    assert len(second) < len(first) // 4  # the repeat costs almost nothing


def test_a_frame_is_compressed_with_rsv1_and_short_or_control_frames_are_not() -> None:
    compressor = server(threshold=64).compressor(Agreement(), client_side=False)
    assert compressor is not None
    frame = codec.build_frame(0x1, PAYLOAD)
    compressed = compressor.compress_frame(frame)
    parsed = codec.parse_frame_header(compressed)
    assert parsed is not None
    fin, rsv, opcode, _, length, at = parsed
    assert (fin, rsv, opcode) == (True, RSV_COMPRESSED, 0x1)
    assert inflate(compressed[at:]) == PAYLOAD and len(compressed) == at + length
    short = codec.build_frame(0x1, b"x" * 63)
    ping = codec.build_frame(0x9, b"x" * 100)
    assert compressor.compress_frame(short) is short
    assert compressor.compress_frame(ping) is ping


# ---- inflating ---------------------------------------------------------------------------------


def test_inflating_stops_one_byte_past_the_room_whatever_the_ratio() -> None:
    bomb = deflate(bytes(100 << 20))  # 100 MiB of zeros: about 100 KiB compressed
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooBig):
            Inflater(15, takeover=False).feed(bomb, 16 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing near the 100 MiB was ever made


def test_exactly_the_room_is_allowed() -> None:
    data = b"a" * 5000
    inflater = Inflater(15, takeover=False)
    assert inflater.feed(deflate(data), 5000) + inflater.end(0) == data
    with pytest.raises(MessageTooBig):
        Inflater(15, takeover=False).feed(deflate(data), 4999)


def test_corrupt_data_is_refused() -> None:
    with pytest.raises(CorruptMessage):
        Inflater(15, takeover=False).feed(b"\xff\xff\xff\xff", 100)


def test_messages_compressed_by_zlib_with_takeover_inflate_in_order() -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -10)
    inflater = Inflater(10, takeover=True)
    for index in range(3):
        data = PAYLOAD + str(index).encode()
        out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert inflater.feed(out[:-4], 1 << 20) + inflater.end(1 << 20) == data


# ---- the assembler -----------------------------------------------------------------------------


def assembler(limit: int = 1 << 20) -> InflatingAssembler:
    return InflatingAssembler(1 << 20, Inflater(15, takeover=False), limit)


def test_a_compressed_message_in_three_frames() -> None:
    data = deflate(PAYLOAD)
    parts = data[:10], data[10:20], data[20:]
    frames = assembler()
    assert frames.feed(0x1, False, RSV_COMPRESSED, parts[0]) is None
    assert frames.in_message
    assert frames.feed(0x0, False, 0, parts[1]) is None
    assert frames.feed(0x0, True, 0, parts[2]) == (False, PAYLOAD)
    # plain messages still pass, and a compressed one after them
    assert frames.feed(0x2, True, 0, b"plain") == (True, b"plain")
    assert frames.feed(0x2, True, RSV_COMPRESSED, data) == (True, PAYLOAD)


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([(0x1, False, RSV_COMPRESSED, b"K"), (0x0, True, RSV_COMPRESSED, b"")], 1002),
        ([(0x1, True, 2, b"x")], 1002),  # RSV2: no extension gives it a meaning
        ([(0x1, True, RSV_COMPRESSED | 1, b"x")], 1002),
        ([(0x1, False, RSV_COMPRESSED, b"K"), (0x1, True, 0, b"x")], 1002),
        ([(0x1, False, 0, b"x"), (0x1, True, RSV_COMPRESSED, deflate(b"x"))], 1002),
        ([(0x1, True, RSV_COMPRESSED, deflate(b"\xff\xfe"))], 1007),  # inflates to bad UTF-8
        ([(0x2, True, RSV_COMPRESSED, b"\xff\xff\xff\xff")], 1007),
    ],
)
def test_compressed_frames_that_break_the_rules(
    frames: list[tuple[int, bool, int, bytes]], code: int
) -> None:
    collect = assembler()
    with pytest.raises(FrameViolation) as caught:
        for opcode, fin, rsv, payload in frames:
            collect.feed(opcode, fin, rsv, payload)
    assert caught.value.code == code


def test_the_inflate_limit_bounds_fragments_together_and_may_be_raised() -> None:
    data = deflate(b"z" * 3000)
    collect = assembler(limit=2000)
    with pytest.raises(FrameViolation) as caught:
        collect.feed(0x2, True, RSV_COMPRESSED, data)
    assert caught.value.code == 1009
    noise = deflate(random.Random(1).randbytes(3000))  # barely compressible
    collect = assembler(limit=2000)
    assert collect.feed(0x2, False, RSV_COMPRESSED, noise[:1500]) is None
    with pytest.raises(FrameViolation):  # each half fits, not the two together
        collect.feed(0x0, True, 0, noise[1500:])
    collect = assembler(limit=2000)
    collect.inflate_limit = 3000  # accepted: the connection's full limit from now on
    assert collect.feed(0x2, True, RSV_COMPRESSED, data) == (True, b"z" * 3000)


# ---- options -----------------------------------------------------------------------------------


def test_compression_is_off_by_default_and_checked_when_made() -> None:
    assert Limits().compression is None
    assert ServerLimits().compression is None
    limits = ServerLimits(compression=Compression(level=1))
    assert limits.compression == Compression(level=1, threshold=128, takeover=False)
    with pytest.raises(ValueError):
        Compression(window_bits=8)
    with pytest.raises(ValueError):
        Compression(level=10)


def test_the_old_compression_switch_is_refused_with_what_replaced_it() -> None:
    # 0.1's ``compression=True`` would otherwise pass as a truthy value and be used as settings
    with pytest.raises(TypeError, match=r"Compression\(...\)"):
        Limits(compression=True)  # type: ignore[arg-type]
