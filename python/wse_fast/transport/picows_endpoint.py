"""One WebSocket connection on picows, either side: frames in, messages and a close out.

picows parses frames and answers pings; this listener does the rest of RFC 6455 that picows
leaves to its user: reassembly and validation (through the sans-I/O assembler), the close
handshake, and, on the client side, masking with keys from the OS CSPRNG (picows's own client
masking draws keys from an unseeded ``rand()``, so every frame it sends is written here).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any, Protocol

from multidict import CIMultiDict, CIMultiDictProxy
from picows import WSFrame, WSListener, WSMsgType, WSTransport

from .. import codec
from ..constants import CLOSE_ABNORMAL, CLOSE_NO_STATUS, CLOSE_POLICY_VIOLATION, SLOW_CONSUMER
from ..sansio.framing import FrameViolation, MessageAssembler, whole_message
from .flush import flusher_for

#: From this size on, queued frames are handed over as they are instead of joined.
LARGE_FRAME = 8 * 1024
OP_CLOSE = 0x8
OP_PONG = 0xA
_CLOSE = WSMsgType.CLOSE
_PING = WSMsgType.PING
_PONG = WSMsgType.PONG
#: What an accepted upgrade request keeps as headers once the handshake is over: one shared
#: instance, read-only so that it cannot be changed through any request (hence Any: picows
#: types the attribute as a mutable CIMultiDict).
_NO_HEADERS: Any = CIMultiDictProxy(CIMultiDict[str]())


class EndpointHandler(Protocol):
    def on_open(self, endpoint: Endpoint) -> None: ...
    def on_message(self, binary: bool, data: Any) -> None: ...
    def on_close(self, code: int, reason: str) -> None: ...
    def on_overflow(self) -> None: ...


class Endpoint(WSListener):  # type: ignore[misc]
    __slots__ = (
        "_assembler",
        "_close_received",
        "_close_sent",
        "_close_timeout",
        "_failed",
        "_flusher",
        "_head",
        "_tail",
        "_timer",
        "client_side",
        "direct_fd",
        "handler",
        "max_message_size",
        "max_pending_bytes",
        "transport",
        "under",
    )

    def __init__(
        self,
        handler: EndpointHandler,
        max_message_size: int,
        client_side: bool,
        close_timeout: float,
        max_pending_bytes: int | None = None,
    ) -> None:
        self.handler = handler
        self.max_pending_bytes = max_pending_bytes
        # Frames queued in this loop turn: the first, and a list of any after it. The common
        # case, one broadcast frame per turn, then allocates nothing per delivery (fewer
        # garbage collections in paced fan-out), and an idle connection keeps no list.
        self._head: bytes | None = None
        self._tail: list[bytes] | None = None
        self._flusher = flusher_for(asyncio.get_running_loop())
        self.direct_fd = -1
        self.client_side = client_side
        self.max_message_size = max_message_size
        self._assembler: MessageAssembler | None = None  # made when the peer first fragments
        self._close_timeout = close_timeout
        self._close_sent: tuple[int, str] | None = None
        self._close_received: tuple[int, str] | None = None
        self._failed = False
        self._timer: asyncio.TimerHandle | None = None
        self.transport: WSTransport | None = None

    # ---- picows callbacks ------------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        request = transport.request
        if request is not None:
            # picows keeps the parsed request for the connection's life; its headers (about
            # 1.7 KiB) are not needed after the handshake, and idle connections are many.
            # A picows whose request is immutable keeps them: memory, not correctness.
            with contextlib.suppress(AttributeError):
                request.headers = _NO_HEADERS
        underlying = transport.underlying_transport
        self.under = underlying
        sock = underlying.get_extra_info("socket")
        if sock is not None and underlying.get_extra_info("sslcontext") is None:
            self.direct_fd = sock.fileno()  # plain TCP: frames may go straight to the socket
        if self.max_pending_bytes is not None:
            # pause_writing (below) fires when more than this is waiting for the peer
            underlying.set_write_buffer_limits(high=self.max_pending_bytes)
        self.handler.on_open(self)

    def pause_writing(self) -> None:
        """The peer reads slower than we write: drop it before its backlog grows further."""
        if self.max_pending_bytes is None or self.transport is None:
            return
        self._head = self._tail = None
        if self._close_sent is None:
            self._close_sent = (CLOSE_POLICY_VIOLATION, SLOW_CONSUMER)
            self.handler.on_overflow()
        self.transport.disconnect(graceful=False)  # frees the backlog now

    def resume_writing(self) -> None:
        pass

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        op = frame.msg_type
        if op is _CLOSE:
            self._on_close_frame(frame)
            return
        if op is _PING:  # only reached on the client side, where picows does not auto-pong
            if self._close_sent is None:
                self.write(codec.build_frame(OP_PONG, frame.get_payload_as_bytes(), mask=True))
            return
        # Data sent before the peer saw our close is still delivered; nothing after theirs,
        # and nothing after a framing violation.
        if op is _PONG or self._close_received is not None or self._failed:
            return
        rsv = (frame.rsv1 << 2) | (frame.rsv2 << 1) | frame.rsv3
        try:
            # A memoryview into picows's read buffer: valid during this call, which is where
            # a single-frame message is decoded; fragments are copied by the assembler.
            payload = frame.get_payload_as_memoryview()
            message: tuple[bool, bytes | memoryview] | None
            assembler = self._assembler
            if assembler is None:
                if frame.fin:
                    message = whole_message(op.value, rsv, payload, self.max_message_size)
                else:
                    assembler = self._assembler = MessageAssembler(self.max_message_size)
                    message = assembler.feed(op.value, False, rsv, payload)
            else:
                message = assembler.feed(op.value, frame.fin, rsv, payload)
        except FrameViolation as violation:
            self._failed = True
            self.close(violation.code, violation.reason)
            return
        if message is not None:
            self.handler.on_message(*message)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._close_received is not None:
            code, reason = self._close_received
        elif self._close_sent is not None:
            code, reason = self._close_sent
        else:
            code, reason = CLOSE_ABNORMAL, ""
        self.handler.on_close(code, reason)

    # ---- output ----------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return (
            self._close_sent is None
            and self.transport is not None
            and not self.transport.is_disconnected
        )

    def write(self, frame: bytes) -> None:
        """Queues one complete frame (built by the codec) for this loop turn's flush."""
        # WseServer.broadcast inlines these lines (a call per delivery would cost more than
        # the queueing itself): change both together.
        if self._close_sent is None:
            if self._head is None:
                self._head = frame
                self._flusher.mark(self)
            else:
                tail = self._tail
                if tail is None:
                    self._tail = [frame]
                else:
                    tail.append(frame)

    def write_through(self, data: bytes) -> None:
        self.under.write(data)

    def flush(self) -> None:
        head, tail = self._head, self._tail
        if head is None:
            return
        self._head = self._tail = None
        if self.transport is None or self.transport.is_disconnected:
            return
        if tail is None:
            self.under.write(head)
        elif len(head) < LARGE_FRAME:
            self.under.write(b"".join((head, *tail)))  # small frames: one copy, one write
        else:
            self.under.writelines((head, *tail))  # large frames: no joined copy of megabytes

    def close(self, code: int, reason: str = "") -> None:
        """Starts the close handshake; the connection ends when the peer answers or times out."""
        if self._close_sent is not None or self.transport is None:
            return
        self._send_close(code, reason)
        if self._close_received is not None and not self.client_side:
            self.transport.disconnect()
        else:
            self._arm_timer()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.disconnect(graceful=False)

    # ---- close handshake -------------------------------------------------------------------

    def _send_close(self, code: int, reason: str) -> None:
        self.flush()  # what was queued before the close leaves before it
        self._close_sent = (code, reason)
        # A close reason fits 123 bytes (RFC 6455 §5.5); cut it on a character boundary.
        text = reason.encode()[:123].decode("utf-8", "ignore").encode()
        body = struct.pack("!H", code) + text if code != CLOSE_NO_STATUS else b""
        self.under.write(codec.build_frame(OP_CLOSE, body, mask=self.client_side))

    def _on_close_frame(self, frame: WSFrame) -> None:
        body = frame.get_payload_as_bytes()
        if len(body) >= 2:  # picows has checked the code and the reason's UTF-8 already
            self._close_received = (int.from_bytes(body[:2], "big"), body[2:].decode())
        else:
            self._close_received = (CLOSE_NO_STATUS, "")
        if self._close_sent is None:  # echo the peer's close, as the reference does
            code, reason = self._close_received
            self._send_close(code, reason)
        assert self.transport is not None
        if self.client_side:
            self._arm_timer()  # RFC 6455 §7.1.1: the server closes TCP first
        else:
            self.transport.disconnect()

    def _arm_timer(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._close_timeout, self.abort)
