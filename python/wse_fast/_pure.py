"""Pure-Python reference of every function in the Rust extension ``wse_fast._codec``.

Each function here defines what its Rust twin must return; the test suite compares the two
with hypothesis. ``WSE_FAST_PURE=1`` makes the package run on this module alone. Its public
functions and classes are ``wse_fast.codec.EXPORTS``, no more (tests/test_codec.py checks).
"""

from __future__ import annotations

import codecs
import json
import math
import os
import struct
import zlib
from collections.abc import Callable
from typing import Any

import msgpack
import orjson

from .constants import OP_BINARY, OP_TEXT

try:  # share the exception class with the extension when it is importable
    from ._codec import EnvelopeError
except ImportError:  # pragma: no cover - only without the compiled extension

    class EnvelopeError(ValueError):  # type: ignore[no-redef]
        """A received message is not a valid WSE envelope."""


_Buffer = bytes | bytearray | memoryview


def _key(key: _Buffer) -> bytes:
    key = bytes(key)
    if len(key) != 4:
        raise ValueError("masking key must be 4 bytes")
    return key


def mask(data: _Buffer, key: _Buffer, offset: int = 0) -> bytes:
    k = _key(key)
    k = k[offset % 4 :] + k[: offset % 4]
    n = len(data)
    # One big-integer XOR instead of a byte loop keeps the reference usable on large inputs.
    pad = (k * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(n, "little")


_xor = mask  # build_frame's `mask` flag shadows the function


def send_to_all(fds: list[int], data: bytes) -> list[tuple[int, int]]:
    """Sends ``data`` to each socket without blocking. Returns ``(index, sent)`` for the
    sockets that did not take all of it: ``sent`` bytes went out, or minus the errno."""
    return send_each(fds, [data] * len(fds))


def send_each(fds: list[int], frames: list[bytes]) -> list[tuple[int, int]]:
    """Sends ``frames[i]`` to ``fds[i]`` without blocking; returns what :func:`send_to_all`
    does."""
    if len(frames) != len(fds):
        raise ValueError("one frame per socket")
    short = []
    for i, (fd, frame) in enumerate(zip(fds, frames, strict=True)):
        try:
            sent = os.write(fd, frame)  # the fds are non-blocking sockets
        except OSError as exc:
            short.append((i, -(exc.errno or 5)))
            continue
        if sent < len(frame):
            short.append((i, sent))
    return short


def validate_utf8(data: _Buffer) -> bool:
    try:
        codecs.decode(data, "utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _completable(prefix: bytes) -> bool:
    need = {0xC: 2, 0xD: 2, 0xE: 3, 0xF: 4}.get(prefix[0] >> 4, 1) - len(prefix)
    # 0x80 and 0xBF are the ends of every continuation range, so one of them completes any
    # prefix that can be completed at all.
    return any(validate_utf8(prefix + fill * need) for fill in (b"\x80", b"\xbf"))


class Utf8Validator:
    """Validates the fragments of one message as they arrive."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._failed = False

    def feed(self, data: _Buffer) -> bool:
        if self._failed:
            return False
        try:
            self._decoder.decode(bytes(data), False)
        except UnicodeDecodeError:
            self._failed = True
            return False
        # CPython buffers an unfinished sequence without checking that it can still become
        # valid (ED A0 cannot); a WebSocket endpoint must fail as early as possible (RFC 6455
        # §8.1), so check that some completion of the pending bytes is valid.
        pending = self._decoder.getstate()[0]
        if pending and not _completable(pending):
            self._failed = True
        return not self._failed

    def finish(self) -> bool:
        if self._failed:
            return False
        try:
            self._decoder.decode(b"", True)
        except UnicodeDecodeError:
            return False
        finally:
            self._decoder.reset()
        return True

    def reset(self) -> None:
        self._decoder.reset()
        self._failed = False


def _header(opcode: int, length: int, fin: bool, rsv: int, key: bytes | None) -> bytes:
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | opcode
    bit = 0x80 if key is not None else 0
    if length < 126:
        head = struct.pack("!BB", first, bit | length)
    elif length <= 0xFFFF:
        head = struct.pack("!BBH", first, bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, bit | 127, length)
    return head + (key or b"")


def build_frame(
    opcode: int, payload: _Buffer, fin: bool = True, mask: bool = False, rsv: int = 0
) -> bytes:
    if not 0 <= opcode <= 0x0F or not 0 <= rsv <= 7:
        raise ValueError("opcode must fit 4 bits and rsv 3 bits")
    if mask:
        key = os.urandom(4)  # unpredictable, as RFC 6455 §5.3 requires
        return _header(opcode, len(payload), fin, rsv, key) + _xor(payload, key)
    return _header(opcode, len(payload), fin, rsv, None) + bytes(payload)


def parse_frame_header(data: _Buffer) -> tuple[bool, int, int, bytes | None, int, int] | None:
    data = bytes(data[:14])
    if len(data) < 2:
        return None
    b0, b1 = data[0], data[1]
    length, at = b1 & 0x7F, 2
    if length == 126:
        if len(data) < 4:
            return None
        (length,), at = struct.unpack_from("!H", data, 2), 4
    elif length == 127:
        if len(data) < 10:
            return None
        (length,), at = struct.unpack_from("!Q", data, 2), 10
        if length >> 63:
            raise ValueError("the most significant bit of a 64-bit length must be 0")
    key = None
    if b1 & 0x80:
        if len(data) < at + 4:
            return None
        key, at = data[at : at + 4], at + 4
    return bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, key, length, at


def _check_outgoing(kind: object, stamp: object) -> None:
    if not isinstance(kind, str):
        raise TypeError("message type must be a str")
    if stamp is not None and not isinstance(stamp, str):
        raise TypeError("stamp must be a str or None")


_INT_RANGE = range(-(2**63), 2**64)


def _jsonable(value: Any, depth: int = 0) -> Any:
    """The value as the Rust path writes it (orjson's rules): NaN and infinities become null,
    as in JavaScript's JSON.stringify; ints must fit 64 bits and dict keys must be str."""
    if depth > 254:
        raise TypeError("recursion limit reached")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        if value not in _INT_RANGE:
            raise TypeError("integer exceeds 64-bit range")
        return value
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("dict key must be str")
        return {k: _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, depth + 1) for v in value]
    raise TypeError(f"type is not JSON serializable: {type(value).__name__}")


def pack_json(kind: str, payload: Any = None, stamp: str | None = None) -> bytes:
    _check_outgoing(kind, stamp)
    try:
        text = json.dumps(
            [kind, _jsonable(payload), stamp], separators=(",", ":"), ensure_ascii=False
        )
        return text.encode()
    except (TypeError, ValueError) as exc:  # a lone surrogate fails the encode
        raise TypeError(f"payload cannot be serialised: {exc}") from exc


def pack_msgpack(kind: str, payload: Any = None, stamp: str | None = None) -> bytes:
    _check_outgoing(kind, stamp)
    try:
        return msgpack.packb([kind, payload, stamp])  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"payload cannot be serialised: {exc}") from exc


def pack_json_frame(
    kind: str, payload: Any = None, stamp: str | None = None, mask: bool = False
) -> bytes:
    return build_frame(OP_TEXT, pack_json(kind, payload, stamp), mask=mask)


def pack_msgpack_frame(
    kind: str, payload: Any = None, stamp: str | None = None, mask: bool = False
) -> bytes:
    return build_frame(OP_BINARY, pack_msgpack(kind, payload, stamp), mask=mask)


def _triple(decoded: Any) -> tuple[str, Any, str | None]:
    if not isinstance(decoded, list):
        raise EnvelopeError("envelope must be an array")
    if not 1 <= len(decoded) <= 3:
        raise EnvelopeError(f"envelope must hold 1 to 3 elements, got {len(decoded)}")
    kind = decoded[0]
    if not isinstance(kind, str):
        raise EnvelopeError("message type must be a string")
    if not kind:
        raise EnvelopeError("message type must not be empty")
    payload = decoded[1] if len(decoded) > 1 else None
    stamp = decoded[2] if len(decoded) > 2 else None
    if stamp is not None and not isinstance(stamp, str):
        raise EnvelopeError("stamp must be a string or null")
    return kind, payload, stamp


def unpack_json(data: _Buffer | str) -> tuple[str, Any, str | None]:
    # Reading JSON is orjson's, as on the Rust path: integers past 64 bits become floats, and
    # numbers past the double range, lone surrogates and nesting deeper than 1024 levels are
    # refused (json.loads keeps the first three and can exhaust the stack on the last).
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"invalid JSON: {exc}") from exc
    return _triple(decoded)


def unpack_msgpack(data: _Buffer) -> tuple[str, Any, str | None]:
    try:
        decoded = msgpack.unpackb(data)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise EnvelopeError(f"invalid MessagePack: {exc}") from exc
    return _triple(decoded)


#: The classes of results a CallAnswerer encodes itself (exactly these, no subclasses).
_PLAIN = frozenset({type(None), bool, int, float, str, list, tuple, dict})


class CallAnswerer:
    """Answers calls in one step: decode, call the procedure, build the response frame.
    What :meth:`answer` returns, by its length, is described in the extension's
    ``CallAnswerer``."""

    __slots__ = ("_frame", "_procedures", "_response", "_response_error", "_unpack")

    def __init__(
        self,
        procedures: dict[str, Callable[..., Any]],
        response: str,
        response_error: str,
        binary: bool = False,
    ) -> None:
        self._procedures = procedures
        self._response = response
        self._response_error = response_error
        self._unpack = unpack_msgpack if binary else unpack_json
        self._frame = pack_msgpack_frame if binary else pack_json_frame

    def answer(self, data: _Buffer | str, origin: Any) -> tuple[Any, ...]:
        decoded = self._unpack(data)  # type: ignore[arg-type]
        name, payload, stamp = decoded
        if stamp is None or name == self._response or name == self._response_error:
            return decoded
        procedure = self._procedures.get(name)
        if procedure is None:
            return decoded
        try:
            result = procedure(origin, payload)
        except Exception as exc:
            return name, payload, stamp, None, exc
        if result.__class__ in _PLAIN:
            try:
                return name, self._frame(self._response, result, stamp)
            except TypeError:
                pass
        return name, payload, stamp, result


# ---- the peer's frames, read once (rust/src/reader.rs) ------------------------------------

_EVENT_FAIL = 0x00
_EVENT_FAIL_IN_CLOSE = 0x18
_EVENT_OVER_BUDGET = 0x19
_OVER_BUDGET_REASON = "too much data before authentication"
_EMPTY = b""
_SYNC_TAIL = b"\x00\x00\xff\xff"
#: The most output one inflating step asks zlib for, as the Rust twin's STEP. At most CPython's
#: first output block (32 KiB): a ``decompress`` call within it is one zlib ``inflate`` call.
_INFLATE_STEP = 32 * 1024


def _inflate_into(
    inflate: Any, data: bytes, message: bytearray, limit: int, *, stepped: bool
) -> bool:
    """Inflates ``data`` onto ``message``, which may hold no more than ``limit`` bytes: False
    as soon as one byte more comes out (nothing past it is made); zlib.error if corrupt.

    ``stepped`` (a window below 15 bits): output is asked for in the steps the Rust twin
    (``Inflater::feed``) asks zlib-rs for it. A distance past the window agreed is refused
    only where it reaches across two steps (within one, zlib, like zlib-rs, lets it refer to
    what that step made), so both twins accept and refuse the same streams only if they step
    alike. A 15-bit window keeps every distance DEFLATE can encode, so there one call does."""
    if inflate.eof:  # a BFINAL block ended the stream: the rest is not inflated
        return True
    cap = _INFLATE_STEP if stepped else limit + 1  # unstepped: one call for all the room
    step = min(max(len(data) * 4, 256), cap) if stepped else cap
    while True:
        at = len(message)
        if at > limit:
            return False
        # room + 1: one byte more than allowed tells "exactly full" from "too big" (and
        # max_length 0 would mean no limit)
        want = min(limit - at + 1, step)
        step = min(step * 2, cap)
        out = inflate.decompress(data, want)
        message += out
        rest = inflate.unconsumed_tail
        consumed = len(data) - len(rest)
        data = rest
        if len(message) > limit:
            return False
        if inflate.eof or (consumed == 0 and not out) or (len(out) < want and not data):
            return True


def _close_allowed(code: int) -> bool:
    # RFC 6455 §7.4: 1000-1003 and 1007-1014 (1012-1014 registered later with IANA) and
    # 3000-4999 may be sent; 1004-1006, 1015 and everything else may not.
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class FrameReader:
    """The peer's side of one WebSocket connection, sans I/O: the bytes of each read in,
    everything they completed out (see ``feed``), every RFC 6455 receiving rule applied once.

    ``client_frames``: the peer is a client, whose frames must be masked (a server's must
    not be); ``compression``: permessage-deflate was agreed, so RSV1 may mark a message's
    first frame as compressed (RFC 7692 §6; the caller inflates it). ``max_message_size``
    bounds a message (its payload as sent, compressed or not), checked from each frame's
    header before any of its payload is kept.

    After a failure (``failed``) the reader only looks for the peer's Close, which answers
    the one the failure sends (RFC 6455 §7.1.7), skipping every other frame without keeping
    its payload; once it has a Close, or cannot tell frames apart any more (a reserved
    opcode, a frame masked the wrong way, a control frame over 125 bytes or fragmented), it
    is ``done`` and reads nothing more.

    ``budget``: the bytes the peer may still send (a stranger, not yet accepted), or None for
    no bound. Every byte fed counts; none past the budget is read or kept: the reader stops
    there (``done`` and ``over_budget``, the last read's ``unread`` bytes left unread) with
    ``(EVENT_OVER_BUDGET, 1008, reason)``, after what the bytes within the budget completed.
    :meth:`lift_budget` (the connection is accepted) removes the bound, and a reader that
    stopped at it reads on from its next ``feed``.

    Memory: only the bytes of an unfinished frame and of an unfinished fragmented message,
    given back as soon as they complete; an idle reader holds no buffer.
    """

    __slots__ = (
        "_compressed",
        "_frame",
        "_inflate",
        "_inflate_bits",
        "_inflate_takeover",
        "_message",
        "_opcode",
        "_received",
        "_skip",
        "_utf8",
        "budget",
        "client_frames",
        "compression",
        "done",
        "failed",
        "inflate_budget",
        "inflate_limit",
        "max_message_size",
        "over_budget",
        "unread",
    )

    def __init__(
        self,
        max_message_size: int,
        client_frames: bool = True,
        compression: bool = False,
        budget: int | None = None,
    ) -> None:
        if budget is not None and budget < 0:
            raise OverflowError("a budget cannot be negative")  # as Rust's u64 refuses it
        self.max_message_size = max_message_size
        self.client_frames = client_frames
        self.compression = compression
        self._frame: bytearray | None = None  # an unfinished frame's bytes so far
        self._skip = 0  # bytes of a frame skipped after a failure still to come
        self._message: bytearray | None = None  # a fragmented message's payload so far
        self._opcode = 0  # the fragmented message's opcode
        self._compressed = False  # ... and whether RSV1 was set on its first frame
        self._utf8: Utf8Validator | None = None  # ... its text so far, when plain text
        self._received = 0  # ... its payload bytes as sent (inflated in _message, if so)
        self._inflate_bits = 0  # set by inflate_messages: the reader inflates
        self._inflate_takeover = False
        self._inflate: Any = None  # zlib's inflater, while a message (or a context) needs it
        #: The largest size a compressed message may inflate to.
        self.inflate_limit = max_message_size
        #: What all compressed messages together may still inflate to (None: no bound).
        self.inflate_budget: int | None = None
        #: A failure has been reported: only a Close is still looked for.
        self.failed = False
        #: A Close has been read, or frames cannot be told apart: nothing more is read.
        self.done = False
        #: Bytes the peer may still send (None: no bound); counted as they are fed.
        self.budget = budget
        #: The budget ran out: the reader stopped there (``done``) until :meth:`lift_budget`.
        self.over_budget = False
        #: With ``over_budget``: the bytes of the last read it left unread (not kept).
        self.unread = 0

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished frame or message."""
        return (0 if self._frame is None else len(self._frame)) + (
            0 if self._message is None else len(self._message)
        )

    def feed(self, data: _Buffer) -> list[tuple[int, Any, Any]]:
        """What the bytes of one read completed, in order: ``(opcode, payload, compressed)``
        for a message (text or binary, the payload unmasked bytes; a compressed one as sent),
        ``(OP_PING or OP_PONG, payload, False)``, ``(OP_CLOSE, code, reason)`` (1005 and ""
        for a Close without a status), or a failure ``(EVENT_FAIL or EVENT_FAIL_IN_CLOSE,
        code, reason)``: at most one, and after it only a failure found in the peer's Close;
        last, ``(EVENT_OVER_BUDGET, 1008, reason)`` when the budget ran out."""
        events: list[tuple[int, Any, Any]] = []
        if self.done:
            if not self.over_budget or self.budget is not None:
                return events
            # stopped at a budget lifted since: read on
            self.done = self.over_budget = False
            self.unread = 0
        view = memoryview(data)
        if not len(view):
            return events
        unread = 0
        left = self.budget
        if left is not None:
            # every byte fed counts; none past the budget is read (nor kept)
            if len(view) > left:
                unread = len(view) - left
                view = view[:left]
                self.budget = 0
            else:
                self.budget = left - len(view)
        self._read(view, events)
        if unread and not self.done:
            # after what the bytes within the budget completed: the stranger's decision
            self.done = self.over_budget = True
            self.unread = unread
            events.append((_EVENT_OVER_BUDGET, 1008, _OVER_BUDGET_REASON))
        return events

    def inflate_messages(
        self, window_bits: int, takeover: bool, limit: int, budget: int | None = None
    ) -> None:
        """permessage-deflate was agreed and this reader inflates (RFC 7692 §7.2.2):
        compressed messages come out inflated (``compressed`` False), each at most ``limit``
        bytes (1009 at the byte past it, before more is inflated) and all of them together at
        most ``budget`` (1008 past it), with a zlib context per message or, with
        ``takeover``, one kept across messages within ``window_bits`` (8 to 15; 8 is inflated
        with a 9-bit window, as zlib-rs in the Rust twin takes no less, which accepts all a
        conforming peer sends)."""
        if not 8 <= window_bits <= 15:
            raise ValueError("window_bits must be 8..15")
        if budget is not None and budget < 0:
            raise OverflowError("a budget cannot be negative")  # as Rust's u64 refuses it
        self.compression = True
        self._inflate_bits = window_bits
        self._inflate_takeover = takeover
        self._inflate = None
        self.inflate_limit = limit
        self.inflate_budget = budget

    def lift_budget(self) -> None:
        """The connection is accepted: no bound on its bytes from now on. A reader that
        stopped at its budget reads on from the next ``feed``, which should bring the
        ``unread`` bytes."""
        self.budget = None

    def _read(self, view: memoryview, events: list[tuple[int, Any, Any]]) -> None:
        """Reads the frames in ``view`` (what is kept of an unfinished frame first)."""
        size = len(view)
        if not size:
            return
        pos = self._skip
        if pos:
            if pos >= size:
                self._skip = pos - size
                return
            self._skip = 0
        joined = self._frame
        if joined is not None:  # an unfinished frame: its bytes and what came now
            self._frame = None
            joined += view[pos:]
            view = memoryview(joined)
            size = len(view)
            pos = 0
        while pos < size and not self.done:
            used = self._frame_at(view, pos, size, events)
            if used == 0:  # unfinished: its bytes kept (a copy: data is the caller's)
                if joined is None:
                    self._frame = bytearray(view[pos:])
                else:
                    view.release()
                    del joined[:pos]
                    self._frame = joined
                break
            if used < 0:
                break
            pos += used
        if pos > size:  # a skipped frame goes on in the next reads
            self._skip = pos - size

    def _fail(self, events: list[tuple[int, Any, Any]], code: int, reason: str) -> None:
        """The first failure: reported, then only a Close is looked for."""
        self.failed = True
        self._message = self._utf8 = self._inflate = None
        events.append((_EVENT_FAIL, code, reason))

    def _lost(self, events: list[tuple[int, Any, Any]], reason: str) -> int:
        """Frames cannot be told apart any more: a failure (if none was reported), and done."""
        if not self.failed:
            self._fail(events, 1002, reason)
        self.done = True
        self._frame = self._message = self._utf8 = None
        return -1

    def _frame_at(
        self, view: memoryview, pos: int, size: int, events: list[tuple[int, Any, Any]]
    ) -> int:
        """Reads the frame at ``pos``: how far it reaches (past ``size`` for a frame skipped
        after a failure), 0 if it is not all there yet, -1 once done."""
        failed = self.failed
        first = view[pos]
        opcode = first & 0x0F
        fin = first & 0x80
        rsv = first & 0x70
        # what the first byte alone tells (RFC 6455 §5.2, §5.4, §5.5; RFC 7692 §6)
        if opcode >= 0x8:
            if opcode > 0xA:
                return self._lost(events, f"reserved opcode {opcode:#x}")
            if not fin:
                return self._lost(events, "fragmented control frame")
            if rsv and not failed:
                if opcode == 0x8:  # the peer is closing anyway: nothing more to look for
                    self._close_failed(events, 1002, "reserved bits set on a control frame")
                    self.done = True
                    self._frame = None
                    return -1
                self._fail(events, 1002, "reserved bits set on a control frame")
                return self._frame_at(view, pos, size, events)
        elif opcode > 0x2:
            return self._lost(events, f"reserved opcode {opcode:#x}")
        elif not failed:
            problem = None
            if opcode == 0x0:
                if self._message is None:
                    problem = "continuation frame without a message"
                elif rsv:
                    problem = "reserved bits set on a continuation frame"
            elif self._message is not None:
                problem = "new message inside a fragmented one"
            elif rsv and (rsv != 0x40 or not self.compression):
                problem = "reserved bits set without an extension"
            if problem is not None:
                self._fail(events, 1002, problem)
                return self._frame_at(view, pos, size, events)
        if pos + 1 >= size:
            return 0
        second = view[pos + 1]
        masked = second & 0x80
        if masked and not self.client_frames:
            return self._lost(events, "masked frame from a server")
        if not masked and self.client_frames:
            return self._lost(events, "unmasked frame from a client")
        length = second & 0x7F
        start = pos + 2
        if opcode >= 0x8 and length > 125:
            return self._lost(events, "control frame payload over 125 bytes")
        if length == 126:
            if size < start + 2:
                return 0
            length = int.from_bytes(view[start : start + 2], "big")
            start += 2
        elif length == 127:
            if size < start + 8:
                return 0
            length = int.from_bytes(view[start : start + 8], "big")
            if length >> 63:
                return self._lost(events, "frame length over 2**63")
            start += 8
        if opcode < 0x8 and not failed:
            so_far = 0 if self._message is None else self._received
            if so_far + length > self.max_message_size:  # before a byte of it is kept
                self._fail(events, 1009, "message too big")
                return self._frame_at(view, pos, size, events)
        if masked:
            if size < start + 4:
                return 0
            start += 4
        end = start + length
        if failed and opcode != 0x8:
            return end - pos  # skipped, without waiting for (or keeping) its payload
        if size < end:
            return 0
        payload = view[start:end]
        payload_bytes = mask(payload, view[start - 4 : start]) if masked else bytes(payload)
        if opcode >= 0x8:
            self._control(opcode, payload_bytes, events)
        else:
            self._data(opcode, bool(fin), bool(rsv), payload_bytes, events)
        return end - pos

    def _control(self, opcode: int, payload: bytes, events: list[tuple[int, Any, Any]]) -> None:
        if opcode != 0x8:
            events.append((opcode, payload, False))
            return
        self.done = True
        self._frame = self._message = self._utf8 = None
        if not payload:
            events.append((0x8, 1005, ""))
            return
        if len(payload) == 1:
            self._close_failed(events, 1002, "close frame with a 1-byte payload")
            return
        code = int.from_bytes(payload[:2], "big")
        if not _close_allowed(code):
            self._close_failed(events, 1002, f"close code {code} may not be sent")
            return
        try:
            reason = payload[2:].decode()
        except UnicodeDecodeError:
            self._close_failed(events, 1007, "close reason is not UTF-8")
            return
        events.append((0x8, code, reason))

    def _close_failed(self, events: list[tuple[int, Any, Any]], code: int, reason: str) -> None:
        """A Close that breaks the rules (reported even after a first failure: the peer's
        answer, which ends the connection all the same)."""
        self.failed = True
        self._message = self._utf8 = None
        events.append((_EVENT_FAIL_IN_CLOSE, code, reason))

    def _data(
        self,
        opcode: int,
        fin: bool,
        compressed: bool,
        payload: bytes,
        events: list[tuple[int, Any, Any]],
    ) -> None:
        message = self._message
        if message is None:
            self._received = 0
            if compressed and self._inflate_bits:
                self._message = bytearray()
                self._opcode = opcode
                self._compressed = True
                # a fragmented text is checked as each frame inflates (RFC 6455 §8.1: fail
                # as soon as the bytes so far cannot begin valid text); one frame, whole
                self._utf8 = Utf8Validator() if opcode == OP_TEXT and not fin else None
                self._inflated(fin, payload, events)
                return
            if fin:  # the common case: one frame, one message
                if opcode == OP_TEXT and not compressed and not validate_utf8(payload):
                    self._fail(events, 1007, "invalid UTF-8 in a text message")
                    return
                events.append((opcode, payload, compressed))
                return
            message = self._message = bytearray()
            self._opcode = opcode
            self._compressed = compressed
            self._utf8 = Utf8Validator() if opcode == OP_TEXT and not compressed else None
        if self._compressed and self._inflate_bits:
            self._inflated(fin, payload, events)
            return
        self._received += len(payload)
        utf8 = self._utf8
        if utf8 is not None and not utf8.feed(payload):
            self._fail(events, 1007, "invalid UTF-8 in a text message")
            return
        message += payload
        if not fin:
            return
        if utf8 is not None and not utf8.finish():
            self._fail(events, 1007, "text message ends inside a character")
            return
        self._message = self._utf8 = None
        events.append((self._opcode, bytes(message), self._compressed))

    def _inflated(self, fin: bool, payload: bytes, events: list[tuple[int, Any, Any]]) -> None:
        """One frame of a compressed message, inflated onto the message so far (RFC 7692
        §6); the message out once its last frame is in. A fragmented text's bytes are checked
        as each frame's are inflated, a one-frame text's whole: after the frame is inflated in
        full, so that where it fails does not depend on how the inflater steps its output."""
        self._received += len(payload)
        message = self._message
        assert message is not None
        inflate = self._inflate
        if inflate is None:
            # 8 bits inflated with 9, as zlib-rs in the Rust twin does (it takes 9 to 15)
            inflate = self._inflate = zlib.decompressobj(-max(self._inflate_bits, 9))
        limit = self.inflate_limit
        before = len(message)
        try:
            # §7.2.2: the 4 bytes §7.2.1 stripped, appended again after the last frame
            stepped = self._inflate_bits < 15
            within = _inflate_into(inflate, payload, message, limit, stepped=stepped) and (
                not fin or _inflate_into(inflate, _SYNC_TAIL, message, limit, stepped=stepped)
            )
        except zlib.error:
            self._fail(events, 1007, "invalid compressed data")
            return
        if not within:
            self._fail(events, 1009, "message too big")
            return
        budget = self.inflate_budget
        if budget is not None:
            produced = len(message) - before
            if produced > budget:
                self.inflate_budget = 0
                self._fail(events, 1008, _OVER_BUDGET_REASON)
                return
            self.inflate_budget = budget - produced
        utf8 = self._utf8
        if utf8 is not None and not utf8.feed(message[before:]):
            self._fail(events, 1007, "invalid UTF-8 in a text message")
            return
        if not fin:
            return
        if not self._inflate_takeover or inflate.eof:
            # a BFINAL block ends the DEFLATE stream: the next message starts a new one
            self._inflate = None
        self._message = self._utf8 = None
        if utf8 is not None:
            if not utf8.finish():
                self._fail(events, 1007, "text message ends inside a character")
                return
        elif self._opcode == OP_TEXT and not validate_utf8(message):
            self._fail(events, 1007, "invalid UTF-8 in a text message")
            return
        events.append((self._opcode, bytes(message), False))
