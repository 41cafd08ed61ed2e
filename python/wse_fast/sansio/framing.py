"""Frames to messages and close frames to (code, reason): the RFC 6455 rules picows leaves out.

picows hands over frames one by one and leaves these duties to its user: fragmentation, UTF-8
and size rules of data frames, which status codes a Close frame may carry, and, where
permessage-deflate was agreed, inflating compressed messages (:class:`InflatingAssembler`).
"""

from __future__ import annotations

from .. import codec
from ..constants import (
    CLOSE_INVALID_TEXT,
    CLOSE_NO_STATUS,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CONTINUATION,
    OP_TEXT,
    OVER_BUDGET_REASON,
)
from .deflate import RSV_COMPRESSED, CorruptMessage, Inflater, MessageTooBig


class FrameViolation(Exception):
    """The peer broke the framing rules; close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def close_code_allowed(code: int) -> bool:
    """Whether a Close frame may carry ``code`` (RFC 6455 §7.4).

    1000-1003 and 1007-1014 are the defined codes an endpoint may send (1012-1014 registered
    with IANA after the RFC); 3000-4999 belong to libraries and applications. 1004 is reserved,
    1005, 1006 and 1015 only report what happened and must never be sent, and every other
    value is unassigned.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close(body: bytes) -> tuple[int, str]:
    """A Close frame's payload as ``(code, reason)``; 1005 for one without a status code.

    Raises :class:`FrameViolation`: 1002 for a 1-byte payload or a code that may not be sent,
    1007 for a reason that is not UTF-8 (RFC 6455 §5.5.1).
    """
    if not body:
        return CLOSE_NO_STATUS, ""
    if len(body) == 1:
        raise FrameViolation(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = int.from_bytes(body[:2], "big")
    if not close_code_allowed(code):
        raise FrameViolation(CLOSE_PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        reason = body[2:].decode()
    except UnicodeDecodeError:
        raise FrameViolation(CLOSE_INVALID_TEXT, "close reason is not UTF-8") from None
    return code, reason


def whole_message(
    opcode: int, rsv: int, payload: bytes | memoryview, max_size: int
) -> tuple[bool, bytes | memoryview]:
    """A message that is one frame (FIN set, text or binary), checked: ``(is_binary, payload)``.

    A connection that is not inside a fragmented message needs nothing more than this, so it
    can do without a :class:`MessageAssembler` until its peer fragments.
    """
    if rsv:
        raise FrameViolation(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
    if opcode == OP_TEXT:
        if len(payload) > max_size:
            raise FrameViolation(CLOSE_TOO_BIG, "message too big")
        if not codec.validate_utf8(payload):
            raise FrameViolation(CLOSE_INVALID_TEXT, "invalid UTF-8 in a text message")
        return False, payload
    if opcode == OP_BINARY:
        if len(payload) > max_size:
            raise FrameViolation(CLOSE_TOO_BIG, "message too big")
        return True, payload
    if opcode == OP_CONTINUATION:
        raise FrameViolation(CLOSE_PROTOCOL_ERROR, "continuation frame without a message")
    raise FrameViolation(CLOSE_PROTOCOL_ERROR, f"unexpected opcode {opcode:#x}")


class MessageAssembler:
    """Collects the data frames of one message at a time.

    ``feed`` returns ``(is_binary, payload)`` when a message is complete, None while fragments
    are still expected, and raises :class:`FrameViolation` for what must close the connection.
    Memory held is the message so far, never more than ``max_size``.
    """

    __slots__ = ("_binary", "_buffer", "_utf8", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer: bytearray | None = None
        self._binary = False
        self._utf8: codec.Utf8Validator | None = None  # made for the first fragmented text

    @property
    def in_message(self) -> bool:
        """Whether a fragmented message has begun and not ended."""
        return self._buffer is not None

    def feed(
        self, opcode: int, fin: bool, rsv: int, payload: bytes | memoryview
    ) -> tuple[bool, bytes | memoryview] | None:
        if rsv:
            raise FrameViolation(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
        if opcode == OP_CONTINUATION:
            return self._continue(fin, payload)
        if opcode not in (OP_TEXT, OP_BINARY):
            raise FrameViolation(CLOSE_PROTOCOL_ERROR, f"unexpected opcode {opcode:#x}")
        if self._buffer is not None:
            raise FrameViolation(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
        if fin:  # the common case: one frame, one message
            return whole_message(opcode, rsv, payload, self.max_size)
        binary = opcode == OP_BINARY
        if len(payload) > self.max_size:
            raise FrameViolation(CLOSE_TOO_BIG, "message too big")
        self._binary = binary
        self._buffer = bytearray()
        if not binary:
            if self._utf8 is None:
                self._utf8 = codec.Utf8Validator()
            else:
                self._utf8.reset()
        return self._continue(False, payload)

    def _continue(self, fin: bool, payload: bytes | memoryview) -> tuple[bool, bytes] | None:
        buffer = self._buffer
        if buffer is None:
            raise FrameViolation(CLOSE_PROTOCOL_ERROR, "continuation frame without a message")
        if len(buffer) + len(payload) > self.max_size:
            raise FrameViolation(CLOSE_TOO_BIG, "message too big")
        utf8 = self._utf8
        if not self._binary and utf8 is not None and not utf8.feed(payload):
            raise FrameViolation(CLOSE_INVALID_TEXT, "invalid UTF-8 in a text message")
        buffer += payload
        if not fin:
            return None
        if not self._binary and utf8 is not None and not utf8.finish():
            raise FrameViolation(CLOSE_INVALID_TEXT, "text message ends inside a character")
        self._buffer = None
        return self._binary, bytes(buffer)


class InflatingAssembler(MessageAssembler):
    """A :class:`MessageAssembler` for a connection with permessage-deflate (RFC 7692 §6):
    RSV1 on a message's first frame says it is compressed; never on a continuation or a
    control frame. Plain messages are taken as by the parent class.

    ``inflate_limit`` bounds a compressed message's inflated size (close 1009 one byte past
    it, before more is inflated); a server keeps it at the stranger's limit until the
    connection is accepted. Memory held: the message inflated so far, at most that limit.

    ``inflate_budget`` (None: no bound) bounds what all compressed messages together may
    inflate to (close 1008 past it): a server gives a stranger the bytes it may send in all,
    so that its work is bounded by that, not by its bytes on the wire times the compression
    ratio (a few bytes can inflate to 16 KiB, message after message).
    """

    __slots__ = ("_inflated", "_inflater", "inflate_budget", "inflate_limit")

    def __init__(
        self,
        max_size: int,
        inflater: Inflater,
        inflate_limit: int,
        inflate_budget: int | None = None,
    ) -> None:
        super().__init__(max_size)
        self._inflater = inflater
        self.inflate_limit = inflate_limit
        self.inflate_budget = inflate_budget
        self._inflated: bytearray | None = None  # a compressed fragmented message so far

    @property
    def in_message(self) -> bool:
        return self._inflated is not None or self._buffer is not None

    def feed(
        self, opcode: int, fin: bool, rsv: int, payload: bytes | memoryview
    ) -> tuple[bool, bytes | memoryview] | None:
        if opcode == OP_CONTINUATION and self._inflated is not None:
            if rsv:
                raise FrameViolation(CLOSE_PROTOCOL_ERROR, "reserved bits on a continuation")
            return self._inflate(self._inflated, payload, fin)
        if self._inflated is not None:
            raise FrameViolation(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
        if rsv != RSV_COMPRESSED or (opcode != OP_TEXT and opcode != OP_BINARY):
            return super().feed(opcode, fin, rsv, payload)
        if self._buffer is not None:
            raise FrameViolation(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
        self._binary = opcode == OP_BINARY
        return self._inflate(None, payload, fin)

    def _inflate(
        self, so_far: bytearray | None, payload: bytes | memoryview, fin: bool
    ) -> tuple[bool, bytes] | None:
        """Inflates one frame's payload; ``so_far``: the message's earlier frames inflated
        (None for its first frame)."""
        inflater = self._inflater
        room = self.inflate_limit - (0 if so_far is None else len(so_far))
        try:
            out = inflater.feed(payload, room)
            if fin:
                out += inflater.end(room - len(out))
        except MessageTooBig:
            self._inflated = None
            raise FrameViolation(CLOSE_TOO_BIG, "message too big") from None
        except CorruptMessage:
            self._inflated = None
            raise FrameViolation(CLOSE_INVALID_TEXT, "invalid compressed data") from None
        if self.inflate_budget is not None:
            self.inflate_budget -= len(out)
            if self.inflate_budget < 0:
                self._inflated = None
                raise FrameViolation(CLOSE_POLICY_VIOLATION, OVER_BUDGET_REASON)
        if not fin:
            if so_far is None:
                self._inflated = bytearray(out)
            else:
                so_far += out
            return None
        self._inflated = None
        if so_far is None:
            message = out
        else:
            so_far += out
            message = bytes(so_far)
        if not self._binary and not codec.validate_utf8(message):
            raise FrameViolation(CLOSE_INVALID_TEXT, "invalid UTF-8 in a text message")
        return self._binary, message


def unframe(frame: bytes) -> tuple[bool, memoryview]:
    """A complete, unmasked, unfragmented data frame (as the codec builds for a server) back to
    ``(binary, payload)``: for transports where the host server does the framing.

    The header is 2 bytes, plus 2 or 8 bytes of extended length when the 7-bit length says
    126 or 127 (RFC 6455 §5.2); the payload is what follows, as a view (no copy).
    """
    first, length = frame[0], frame[1] & 0x7F
    start = 2 if length < 126 else 4 if length == 126 else 10
    return (first & 0x0F) == OP_BINARY, memoryview(frame)[start:]


def is_server_data_frame(frame: bytes | memoryview) -> bool:
    """Whether ``frame`` is exactly one frame a server may write to a client as it is: a data
    frame (text or binary) with FIN set, no reserved bit, unmasked (RFC 6455 §5.1: a server
    never masks), a payload whose length is what the header says in its shortest encoding
    (§5.2), and valid UTF-8 when it is text (§8.1).

    For frames that reach this process from elsewhere (a cluster node's broadcast through
    NATS) before they go into a client's byte stream: anything else would let the sender
    write whatever it likes there (a Close, a continuation, a half frame that swallows the
    next one). No reserved bit, not even RSV1 where permessage-deflate was agreed: the frames
    that cross the cluster are plain ones, and each connection compresses what it writes.
    """
    try:
        header = codec.parse_frame_header(frame)
    except ValueError:  # a 64-bit length with its top bit set
        return False
    if header is None:
        return False
    fin, rsv, opcode, mask, length, start = header
    if not fin or rsv or mask is not None or (opcode != OP_TEXT and opcode != OP_BINARY):
        return False
    if length != len(frame) - start:
        return False
    if (start == 4 and length < 126) or (start == 10 and length <= 0xFFFF):
        return False  # not the shortest encoding: a client may refuse it
    return opcode == OP_BINARY or codec.validate_utf8(memoryview(frame)[start:])
