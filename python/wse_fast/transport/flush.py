"""Write coalescing: every frame for a connection within one loop turn leaves in one write.

Endpoints queue frames and mark themselves dirty; one callback per loop turn, scheduled with
``call_soon``, writes each dirty endpoint's frames. ``call_soon`` callbacks run before the
loop waits on I/O again, so coalescing adds no latency beyond the current turn, and order per
connection is the order of the writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from .. import codec
from .per_loop import per_loop

#: Below this many connections in one flush, the plain path is as fast as the batched one.
DIRECT_MIN = 8


class Flushable(Protocol):
    queue_head: bytes | None  # the first frame queued this turn
    queue_tail: list[bytes] | None  # any after it
    direct_fd: int  # the socket, when frames may be sent to it directly; -1 otherwise
    under: Any  # the uvloop transport under the socket
    transport: Any  # the socket's own (a ServerSocket, or picows's on the client)

    def flush(self) -> None: ...
    def write_through(self, data: bytes) -> None: ...


class Flusher:
    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[Flushable] = []
        self._scheduled = False

    def mark(self, endpoint: Flushable) -> None:
        self._dirty.append(endpoint)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def mark_all(self, endpoints: Sequence[Flushable]) -> None:
        if endpoints:
            self._dirty += endpoints
            if not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        if len(dirty) < DIRECT_MIN:
            for endpoint in dirty:
                endpoint.flush()
            return
        # Endpoints holding one frame, whose transport has nothing queued, get it in one call
        # into the codec, which sends to each socket with the GIL released (through one
        # io_uring submission for many): in paced fan-out that is the shared broadcast frame,
        # in RPC each connection's answer. The rest take the transport's path.
        shared: bytes | None = None  # the first frame
        frames: list[bytes] | None = None  # each endpoint's, once one differs from the first
        fds: list[int] = []
        batch: list[Flushable] = []
        for endpoint in dirty:
            frame = endpoint.queue_head
            if frame is not None and endpoint.queue_tail is None and endpoint.direct_fd >= 0:
                # Straight to the socket only if that keeps every byte in order and sends
                # nothing after a Close: nothing may wait in the transport (nor in the
                # endpoint: frames it holds back wait only while the transport is paused, that
                # is not empty, so this one test covers both), it must not be closing (after
                # close() or abort() the fd is released at once, before the socket's protocol
                # learns of it, and its number may already belong to another connection), and
                # the transport must not have sent a Close of its own (the client's picows
                # disconnects a moment after a parse error). Inlined: this runs once per
                # delivery.
                under = endpoint.under
                if (
                    not under.is_closing()
                    and not under.get_write_buffer_size()
                    and not endpoint.transport.is_close_frame_sent
                ):
                    endpoint.queue_head = None
                    fds.append(endpoint.direct_fd)
                    batch.append(endpoint)
                    if frames is not None:
                        frames.append(frame)
                    elif frame is not shared:
                        if shared is None:
                            shared = frame
                        else:  # a second frame: from now on, one per endpoint
                            frames = [shared] * (len(fds) - 1)
                            frames.append(frame)
                    continue
            endpoint.flush()
        if fds:
            if frames is not None:
                _send_each(batch, fds, frames)
            else:
                assert shared is not None
                _send_batch(batch, fds, shared)


def _send_batch(batch: list[Flushable], fds: list[int], frame: bytes) -> None:
    # Only sockets that took part of the frame or none (or failed) come back: the transport
    # takes over the rest for them, and reports their errors itself.
    for index, sent in codec.send_to_all(fds, frame):
        batch[index].write_through(frame[sent:] if sent > 0 else frame)


def _send_each(batch: list[Flushable], fds: list[int], frames: list[bytes]) -> None:
    # As _send_batch, with a frame for each socket.
    for index, sent in codec.send_each(fds, frames):
        frame = frames[index]
        batch[index].write_through(frame[sent:] if sent > 0 else frame)


@per_loop
def flusher_for(loop: asyncio.AbstractEventLoop) -> Flusher:
    """The one flusher of ``loop``, the running loop (shared by all servers and clients on it)."""
    return Flusher(loop)
