"""What a compressed text message costs the reader that inflates it: ``FrameReader.feed`` of a
client's 1 802-byte JSON message, permessage-deflate (15 bits, no context takeover), in one
frame and in four fragments, on the Rust reader and its pure-Python twin. The time covers
unmasking, inflating, the UTF-8 check and the message's bytes.

    python benches/inflate_reader.py --repeat 7 --number 20000

Each figure is the median over ``--repeat`` timings of ``--number`` messages, in
nanoseconds per message. One process, one core: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit
import zlib
from typing import Any

from wse_fast import _codec as rust
from wse_fast import _pure as pure
from wse_fast.codec import build_frame

SIZE = 1802
FRAGMENTS = 4
OP_TEXT, OP_CONTINUATION = 0x1, 0x0


def message(size: int) -> bytes:
    """A JSON envelope of exactly ``size`` bytes: market rows, some non-ASCII symbols."""
    rows: list[dict[str, Any]] = []
    payload = {"rows": rows, "note": ""}
    body = b""
    for i in range(1000):
        rows.append({"id": 7_000_000 + i * 37, "sym": "Zürich" if i % 5 else "MSFT", "px": i * 13})
        body = json.dumps(["tick", payload, None], ensure_ascii=False).encode()
        if len(body) > size - 60:
            break
    payload["note"] = "x" * (size - len(body))
    body = json.dumps(["tick", payload, None], ensure_ascii=False).encode()
    assert len(body) == size, len(body)
    return body


def compressed_frames(body: bytes, fragments: int) -> bytes:
    """The message as a client sends it (RFC 7692 §7.2.1), cut into ``fragments`` frames."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    packed = (compressor.compress(body) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    step = -(-len(packed) // fragments)
    pieces = [packed[at : at + step] for at in range(0, len(packed), step)]
    return b"".join(
        build_frame(
            OP_CONTINUATION if at else OP_TEXT,
            piece,
            fin=at == len(pieces) - 1,
            mask=True,
            rsv=0 if at else 4,
        )
        for at, piece in enumerate(pieces)
    )


def per_message_ns(impl: Any, stream: bytes, body: bytes, repeat: int, number: int) -> float:
    reader = impl.FrameReader(1 << 20)
    reader.inflate_messages(15, False, 1 << 20)
    assert reader.feed(stream) == [(OP_TEXT, body, False)]
    times = timeit.repeat(lambda: reader.feed(stream), repeat=repeat, number=number)
    return statistics.median(times) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    body = message(SIZE)
    print(f"| reader | {SIZE} B JSON, one frame | in {FRAGMENTS} fragments |")
    print("| --- | ---: | ---: |")
    for name, impl in (("Rust", rust), ("pure Python", pure)):
        number = args.number if impl is rust else max(1, args.number // 10)
        one, split = (
            per_message_ns(impl, compressed_frames(body, n), body, args.repeat, number)
            for n in (1, FRAGMENTS)
        )
        print(f"| {name} | {one / 1000:.2f} µs | {split / 1000:.2f} µs |")


if __name__ == "__main__":
    main()
