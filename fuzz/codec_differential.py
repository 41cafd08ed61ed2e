"""Differential fuzz harness: the Rust codec (``wse_fast._codec``) against its pure-Python twin
(``wse_fast._pure``) and against Python's own UTF-8 decoder, on arbitrary bytes.

tests/test_codec.py compares the twins on values hypothesis builds (valid envelopes, frames
built by the codec, near-UTF-8 text); this harness feeds both whatever bytes the fuzzer finds,
so it reaches the error paths and the odd-but-valid inputs that generators do not make:

- ``unpack_json`` and ``unpack_msgpack`` agree on accept or reject (``EnvelopeError``, nothing
  else), and on the value, type for type; what was unpacked packs again in both or in neither
  (``TypeError``), and packed it unpacks to the same value;
- ``validate_utf8`` and ``Utf8Validator`` (fed in pieces, then reset and fed whole) agree with
  Python's decoder, failing as soon as no valid text can start with what was fed;
- ``parse_frame_header``, ``mask`` and ``build_frame`` return the same;
- ``FrameReader`` fed the bytes as a client's stream (cut into reads where the input says)
  reports the same events and keeps the same state in both (inflating permessage-deflate
  messages itself for some inputs, a fragmented text's UTF-8 checked as each fragment
  inflates), and never more buffered bytes than it was fed (plus the inflated limit when it
  inflates), nor, with a stranger's byte budget, than the budget (which is lifted after the
  third read for some inputs, as an acceptance does).

Run: ``python fuzz/codec_differential.py [CORPUS_DIR] [libFuzzer flags]``; see fuzz/README.md.
"""

from __future__ import annotations

import reprlib
import zlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from atheris_main import instrumented_imports, main
from oracles import same_value, utf8_completable, valid_utf8

with instrumented_imports(__name__):
    import msgpack
    from wse_fast import _codec as rust
    from wse_fast import _pure as pure

IMPLEMENTATIONS: tuple[ModuleType, ...] = (rust, pure)
Triple = tuple[str, Any, "str | None"]


class Finding(AssertionError):
    """The twins disagree, or one of them broke its documented contract."""


#: A finding's description of a decoded value: bounded, as decoded JSON nests up to 1024
#: levels, deeper than repr can go.
_bounded_repr = reprlib.Repr()
_bounded_repr.maxlevel, _bounded_repr.maxstring, _bounded_repr.maxother = 6, 80, 80
short = _bounded_repr.repr


def unpacked(unpack: Callable[[Any], Triple], data: Any) -> Triple | None:
    """The envelope, or None when refused with the documented ``EnvelopeError``."""
    try:
        return unpack(data)
    except rust.EnvelopeError:  # one class: _pure imports the extension's
        return None


def packed(pack: Callable[..., bytes], triple: Triple) -> bytes | None:
    """The encoding, or None when refused with the documented ``TypeError``."""
    try:
        return pack(*triple)
    except TypeError:
        return None


def check_envelopes(data: bytes, fmt: str) -> None:
    name_unpack, name_pack = f"unpack_{fmt}", f"pack_{fmt}"
    fast = unpacked(getattr(rust, name_unpack), data)
    reference = unpacked(getattr(pure, name_unpack), data)
    if (fast is None) != (reference is None):
        raise Finding(f"{name_unpack}({data!r}): rust {short(fast)}, pure {short(reference)}")
    if fast is None or reference is None:
        return
    if not same_value(list(fast), list(reference)):
        raise Finding(f"{name_unpack}({data!r}): rust {short(fast)}, pure {short(reference)}")
    view = unpacked(getattr(rust, name_unpack), memoryview(data))
    if not (view is not None and same_value(list(view), list(fast))):
        raise Finding("memoryview input differs")
    # Echo: what one side decoded, sent back. Both refuse it or both encode it, to the same.
    encodings = [packed(getattr(impl, name_pack), fast) for impl in IMPLEMENTATIONS]
    if (encodings[0] is None) != (encodings[1] is None):
        raise Finding(f"{name_pack} of {short(fast)}: rust {encodings[0]!r}, pure {encodings[1]!r}")
    for impl, encoding in zip(IMPLEMENTATIONS, encodings, strict=True):
        if encoding is not None:
            again = unpacked(getattr(rust, name_unpack), encoding)
            if not (again is not None and same_value(list(again), list(fast))):
                raise Finding(f"{impl.__name__}.{name_pack} of {short(fast)} gives {short(again)}")


#: How far the validator is fed one byte at a time, so that every prefix is checked.
BYTEWISE = 64


def piece_sizes(data: bytes) -> list[int]:
    """Where the validator's input is cut: after each of the first BYTEWISE bytes, then in
    sizes 1-8, 1-8 and 1-4 from the first byte, again and again."""
    b = data[0] if data else 0
    pattern = [1 + (b & 7), 1 + (b >> 3 & 7), 1 + (b >> 6)]
    sizes = [1] * min(len(data), BYTEWISE)
    total = len(sizes)
    while total < len(data):
        sizes.append(pattern[len(sizes) % 3])
        total += sizes[-1]
    return sizes


def check_utf8(data: bytes) -> None:
    whole = valid_utf8(data)
    for impl in IMPLEMENTATIONS:
        name = impl.__name__
        for form in (data, memoryview(data), bytearray(data)):
            if impl.validate_utf8(form) is not whole:
                raise Finding(f"{name}.validate_utf8({data!r})")
        validator = impl.Utf8Validator()
        at = 0
        for size in piece_sizes(data):
            expected = utf8_completable(data[: at + size])
            got = validator.feed(data[at : at + size])
            if got is not expected:
                raise Finding(f"{name}.Utf8Validator fed {data[: at + size]!r}: {got}")
            at += size
        if validator.finish() is not whole:
            raise Finding(f"{name}.Utf8Validator.finish after {data!r}")
        validator.reset()
        if validator.feed(memoryview(data)) is not utf8_completable(data):
            raise Finding(f"{name} after reset")
        if validator.finish() is not whole:
            raise Finding(f"{name}.Utf8Validator.finish after reset")


def frame_header(impl: ModuleType, data: Any) -> object:
    try:
        return impl.parse_frame_header(data)
    except ValueError:  # a 64-bit length with the top bit set
        return ValueError


def check_frames(data: bytes) -> None:
    heads = [
        frame_header(impl, form) for impl in IMPLEMENTATIONS for form in (data, memoryview(data))
    ]
    if not all(h == heads[0] for h in heads):
        raise Finding(f"parse_frame_header({data[:14]!r}): {heads}")
    if len(data) < 5:
        return
    key, offset, body = data[:4], data[4], data[5:]
    masked = rust.mask(body, key, offset)
    if masked != pure.mask(body, key, offset):
        raise Finding(f"mask({body!r}, {key!r}, {offset})")
    first = data[4]
    opcode, rsv, fin = first & 15, first >> 4 & 7, bool(first & 0x80)
    frames = [impl.build_frame(opcode, body, fin=fin, rsv=rsv) for impl in IMPLEMENTATIONS]
    if frames[0] != frames[1]:
        raise Finding(f"build_frame({opcode}, {body!r}, {fin}, rsv={rsv})")


def check_reader(data: bytes) -> None:
    if not data:
        return
    # the first byte: the message size limit (small ones reach 1009), compression and a
    # stranger's byte budget (none, or lifted after the third read as an acceptance does)
    settings, stream = data[0], data[1:]
    max_size = (16, 200, 1 << 20)[settings % 3]
    compression = bool(settings & 4)
    budget = (None, 0, 40, 300)[settings >> 3 & 3]
    readers = [
        impl.FrameReader(max_size, compression=compression, budget=budget)
        for impl in IMPLEMENTATIONS
    ]
    inflating = compression and bool(settings & 0x40)
    if inflating:
        # the reader inflates: a window of 9 or 15 bits, context takeover with 15, the
        # inflated limit the size limit, and an inflation budget with a stranger's byte one
        for reader in readers:
            reader.inflate_messages(
                15 if settings & 0x80 else 9, bool(settings & 0x80), max_size, budget
            )
    fed = at = 0
    for read, size in enumerate(piece_sizes(stream)):
        piece = stream[at : at + size]
        at += size
        fed += len(piece)
        events = [reader.feed(piece) for reader in readers]
        if events[0] != events[1]:
            raise Finding(f"FrameReader events after {stream[:at]!r}: {events}")
        if readers[0].budget is not None and readers[0].buffered > (budget or 0):
            raise Finding(f"FrameReader kept more than its budget after {stream[:at]!r}")
        if read == 2 and settings & 0x20:
            for reader in readers:
                reader.lift_budget()
            if readers[0].over_budget:  # what the budget left unread of this read, read on
                events = [reader.feed(piece[len(piece) - reader.unread :]) for reader in readers]
                if events[0] != events[1]:
                    raise Finding(f"FrameReader events after lifting at {stream[:at]!r}")
        states = [
            (r.failed, r.done, r.buffered, r.budget, r.over_budget, r.unread) for r in readers
        ]
        # an unfinished message is held as fed, or inflated (then within the inflated limit)
        if states[0] != states[1] or states[0][2] > fed + (max_size if inflating else 0):
            raise Finding(f"FrameReader state after {stream[:at]!r}: {states}")


def one_input(data: bytes) -> None:
    check_envelopes(data, "json")
    check_envelopes(data, "msgpack")
    check_utf8(data)
    check_frames(data)
    check_reader(data)


def seeds() -> dict[str, bytes]:
    """An envelope of each format, UTF-8 text of every sequence length and range edge and
    invalid sequences just past the edges, and a masked frame."""
    payload = {"identity": "user-1", "meta": {"n": [1, -2, 2.5, None, True]}}
    return {
        "json": pure.pack_json("~wse:hi", payload, None),
        "json-call": pure.pack_json("sum", [1, 2], "STAMP00001"),
        "msgpack": msgpack.packb(["~wse:call", payload, "STAMP00002"]),
        "utf8": "aé€😀 grüße".encode(),
        # the last code points before and after each boundary of the UTF-8 ranges (RFC 3629)
        "utf8-edges": "\x7f\x80\u07ff\u0800\ud7ff\ue000\uffff\U00010000\U0010ffff".encode(),
        # and one just past each edge, where a validator must fail at the second byte
        "utf8-surrogate": b"a\xed\xa0\x80",
        "utf8-above-u10ffff": b"a\xf4\x90\x80\x80",
        "utf8-overlong": b"a\xe0\x80\xaf",
        "utf8-truncated": b"a\xe2\x82",
        "frame": pure.build_frame(0x1, b"hello", mask=True),
        "frames": b"\x02"
        + pure.build_frame(0x1, "é".encode()[:1], fin=False, mask=True)
        + pure.build_frame(0x9, b"p", mask=True)
        + pure.build_frame(0x0, "é".encode()[1:], mask=True)
        + pure.build_frame(0x2, b"x" * 300, mask=True)
        + pure.build_frame(0x8, b"\x03\xe8bye", mask=True),
        # inflating (1 MiB, 15 bits, takeover): a compressed text with a character split
        # across fragments, then one whose first fragment inflates to invalid UTF-8
        "deflate-fragments": b"\xc5"
        + deflated_fragments(["gr\u00fc".encode()[:3], "\u00fc".encode()[1:] + b"sse"])
        + deflated_fragments([b"ok \xff", b"more"])
        + pure.build_frame(0x8, b"\x03\xe8bye", mask=True),
        # inflating (200 bytes, 9 bits): a surrogate's start in the second fragment of three
        "deflate-surrogate": b"\x46" + deflated_fragments([b"a", b"b\xed\xa0", b"\x80c"]),
    }


def deflated_fragments(chunks: list[bytes]) -> bytes:
    """A client's compressed text (RFC 7692 §7.2.1), a fragment for each chunk, each flushed
    so that it inflates to its chunk before the next fragment is read."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -9)
    packed = [compressor.compress(c) + compressor.flush(zlib.Z_SYNC_FLUSH) for c in chunks]
    packed[-1] = packed[-1][:-4]
    return b"".join(
        pure.build_frame(
            0x0 if at else 0x1, p, fin=at == len(packed) - 1, rsv=0 if at else 4, mask=True
        )
        for at, p in enumerate(packed)
    )


if __name__ == "__main__":
    main(one_input, seeds())
