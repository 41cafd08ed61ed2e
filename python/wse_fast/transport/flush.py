"""Write coalescing: every frame for a connection within one loop turn leaves in one write.

Endpoints queue frames and mark themselves dirty; one callback per loop turn, scheduled with
``call_soon``, writes each dirty endpoint's frames. ``call_soon`` callbacks run before the
loop waits on I/O again, so coalescing adds no latency beyond the current turn, and order per
connection is the order of the writes.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Flushable(Protocol):
    def flush(self) -> None: ...


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

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        for endpoint in dirty:
            endpoint.flush()


_flushers: dict[asyncio.AbstractEventLoop, Flusher] = {}


def flusher_for(loop: asyncio.AbstractEventLoop) -> Flusher:
    """The one flusher of ``loop`` (shared by all servers and clients on it)."""
    flusher = _flushers.get(loop)
    if flusher is None or flusher._loop is not loop:
        if loop.is_closed():
            raise RuntimeError("event loop is closed")
        flusher = _flushers[loop] = Flusher(loop)
        # forget the flusher with its loop, so closed loops do not accumulate
        _prune_closed()
    return flusher


def _prune_closed() -> None:
    for loop in [loop for loop in _flushers if loop.is_closed()]:
        del _flushers[loop]
