"""What every benchmarked server and the load generator agree on, byte for byte."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

PROTOCOL = "wse-default-json"
WELCOME = json.dumps(["~wse:welcome", None, None], separators=(",", ":")).encode()


def tick_body(size: int) -> bytes:
    """The JSON of one fan-out message whose payload (a JSON string) is ``size`` bytes."""
    return b'["tick","' + b"x" * (size - 2) + b'",null]'


def frame_header(length: int) -> bytes:
    if length < 126:
        return bytes([0x81, length])
    if length <= 0xFFFF:
        return bytes([0x81, 126]) + length.to_bytes(2, "big")
    return bytes([0x81, 127]) + length.to_bytes(8, "big")


def server_frame(body: bytes) -> bytes:
    """An unmasked text frame, as a server sends it."""
    return frame_header(len(body)) + body


def bench_command(mode: str, count: int, size: int, rate: float = 0.0) -> bytes:
    command = {"mode": mode, "count": count, "size": size, "rate": rate}
    return json.dumps(["bench", command, None], separators=(",", ":")).encode()


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far, from the scheduler (nanosecond resolution)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def upgrade_request(port: int, path: str = "/", subprotocol: str | None = PROTOCOL) -> bytes:
    key = "dGhlIHNhbXBsZSBub25jZQ=="  # any 16 bytes, base64; the load generator ignores Accept
    offer = f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{offer}\r\n"
    ).encode()


def mask_frame(body: bytes) -> bytes:
    """A masked text frame, as a client sends it (pure Python: the load generator must not
    depend on the library it measures)."""
    key = os.urandom(4)
    n = len(body)
    pad = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(body, "little") ^ int.from_bytes(pad, "little")).to_bytes(n, "little")
    head = frame_header(n)
    return bytes([head[0], head[1] | 0x80]) + head[2:] + key + masked
