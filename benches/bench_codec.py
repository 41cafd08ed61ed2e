"""Codec micro-benchmarks, each against what it replaces, in one run.

Run: make bench-codec (writes benches/results/codec.md and codec.png).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import msgpack
import orjson
import pytest
from websockets.speedups import apply_mask as websockets_apply_mask
from wse_fast import _codec as rust
from wse_fast import _pure as pure

KEY = b"\x12\x34\x56\x78"
SIZES = {"16B": 16, "1KiB": 1024, "1MiB": 1024 * 1024}
ASCII_1K = (b"The quick brown fox jumps over the lazy dog. " * 30)[:1024]
MULTI = "Grüße, 世界! Привет мир. 😀 ".encode()
MULTI_1K = (MULTI * 40)[:1020]  # cut on a character boundary below
MULTI_1K = MULTI_1K[: len(MULTI_1K.decode("utf-8", "ignore").encode())]
TEXTS = {
    "ascii-1KiB": ASCII_1K,
    "ascii-1MiB": ASCII_1K * 1024,
    "multilingual-1KiB": MULTI_1K,
    "multilingual-1MiB": MULTI_1K * 1024,
}
PAYLOAD = {"user": "u-123", "price": 101.25, "qty": 3, "tags": ["a", "b"], "ok": True}


def _bytes(size: int) -> bytes:
    return os.urandom(size)


MASKERS: dict[str, Callable[[bytes, bytes], Any]] = {
    "wse_fast-rust": rust.mask,
    "wse_fast-pure": pure.mask,
    "websockets-C": websockets_apply_mask,
}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("impl", list(MASKERS))
def test_mask(benchmark: Any, impl: str, size: str) -> None:
    benchmark.group = f"mask {size}"
    benchmark.extra_info["bytes"] = SIZES[size]
    data = _bytes(SIZES[size])
    out = benchmark(MASKERS[impl], data, KEY)
    assert bytes(out) == pure.mask(data, KEY)


VALIDATORS: dict[str, Callable[[bytes], Any]] = {
    "wse_fast-rust": rust.validate_utf8,
    "bytes.decode": lambda b: b.decode("utf-8"),
}


@pytest.mark.parametrize("text", list(TEXTS))
@pytest.mark.parametrize("impl", list(VALIDATORS))
def test_utf8(benchmark: Any, impl: str, text: str) -> None:
    benchmark.group = f"utf8 {text}"
    benchmark.extra_info["bytes"] = len(TEXTS[text])
    assert benchmark(VALIDATORS[impl], TEXTS[text])


PACKERS: dict[str, Callable[[], bytes]] = {
    "wse_fast-rust json frame": lambda: rust.pack_json_frame("quote", PAYLOAD, None),
    "wse_fast-rust json frame masked": lambda: rust.pack_json_frame("quote", PAYLOAD, None, True),
    "orjson.dumps bare list": lambda: orjson.dumps(["quote", PAYLOAD, None]),
    "wse_fast-rust msgpack frame": lambda: rust.pack_msgpack_frame("quote", PAYLOAD, None),
    "msgpack.packb bare list": lambda: msgpack.packb(["quote", PAYLOAD, None]),
    "wse_fast-pure json frame": lambda: pure.pack_json_frame("quote", PAYLOAD, None),
}


@pytest.mark.parametrize("impl", list(PACKERS))
def test_pack_small_message(benchmark: Any, impl: str) -> None:
    benchmark.group = "pack small message"
    assert benchmark(PACKERS[impl])


UNPACKERS: dict[str, Callable[[], Any]] = {
    "wse_fast-rust unpack_json": lambda: rust.unpack_json(JSON_MSG),
    "orjson.loads alone": lambda: orjson.loads(JSON_MSG),
    "wse_fast-pure unpack_json": lambda: pure.unpack_json(JSON_MSG),
}
JSON_MSG = orjson.dumps(["quote", PAYLOAD, "STAMP00001"])


@pytest.mark.parametrize("impl", list(UNPACKERS))
def test_unpack_small_message(benchmark: Any, impl: str) -> None:
    benchmark.group = "unpack small message"
    assert benchmark(UNPACKERS[impl])
