"""What a stranger may cost before identify accepts it: counts, addresses and bytes.

Every accepted TCP socket starts behind a :class:`ReadGuard`, a thin buffered protocol between
uvloop and picows's ``WSProtocol``. It

- counts the server's strangers (sockets not yet accepted by identify, from the TCP accept on)
  and refuses a socket past ``max_total`` with HTTP 503 before reading a byte of it;
- caps every read at the bytes the stranger still may send, so that picows's read buffer (which
  grows with what arrives and never shrinks) stays small whatever frame header a stranger sends;
- steps aside once the connection is accepted (:meth:`ReadGuard.release`): uvloop then talks to
  picows directly, so an authenticated connection pays nothing per read.

Counts per remote address are taken at the upgrade (:meth:`Admission.admit_address`), once the
address a trusted proxy forwarded is known.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

#: picows refuses an upgrade request larger than this (its ``_http_max_size``).
HTTP_REQUEST_MAX = 16 * 1024
#: Room for control frames (pings, a close) a stranger may send besides its messages.
CONTROL_ALLOWANCE = 4 * 1024
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Length: 0\r\n\r\n"
)


class Admission:
    """The server's strangers: how many there are, in all and per remote address."""

    __slots__ = ("_per_address", "max_per_address", "max_total", "total")

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.total = 0
        self._per_address: dict[str, int] = {}

    def admit(self) -> bool:
        if self.total >= self.max_total:
            return False
        self.total += 1
        return True

    def admit_address(self, host: str) -> bool:
        count = self._per_address.get(host, 0)
        if count >= self.max_per_address:
            return False
        self._per_address[host] = count + 1
        return True

    def leave(self, host: str | None) -> None:
        self.total -= 1
        if host is not None:
            count = self._per_address[host] - 1
            if count:
                self._per_address[host] = count
            else:
                del self._per_address[host]

    def strangers_from(self, host: str) -> int:
        return self._per_address.get(host, 0)


class ReadGuard(asyncio.BufferedProtocol):
    """Stands between uvloop and one picows protocol until the connection is accepted.

    ``budget`` is every byte the socket may send before that: its upgrade request, its
    authentication messages and a few control frames. When it is spent, ``on_exhausted`` runs
    (set by the connection once the WebSocket is open), or the socket is aborted before then.
    """

    __slots__ = (
        "_admission",
        "_budget",
        "_inner",
        "_transport",
        "counted_address",
        "on_exhausted",
        "peer",
    )

    def __init__(self, inner: Any, admission: Admission, budget: int) -> None:
        self._inner = inner
        self._admission = admission
        self._budget = budget
        self._transport: Any = None  # uvloop's transport (not an asyncio.Transport subclass)
        self.peer: Any = None  # the socket's peer address
        self.counted_address: str | None = None  # set by the upgrade once counted per address
        self.on_exhausted: Callable[[], None] | None = None

    @property
    def inner(self) -> Any:
        """The picows protocol behind the guard."""
        return self._inner

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        if not self._admission.admit():
            self._inner = None  # picows never sees this socket
            transport.write(_BUSY)
            transport.close()
            return
        self.peer = transport.get_extra_info("peername")
        self._inner.connection_made(transport)

    def get_buffer(self, sizehint: int) -> Any:
        if self._inner is None:
            return bytearray(256)  # a refused socket: whatever arrives is dropped
        buffer = self._inner.get_buffer(sizehint)
        # Never read more than the stranger may still send: picows's buffer grows to fit what
        # is read, and keeps that size for the connection's life.
        return buffer if len(buffer) <= self._budget else buffer[: max(self._budget, 1)]

    def buffer_updated(self, nbytes: int) -> None:
        if self._inner is None:
            return
        self._budget -= nbytes
        self._inner.buffer_updated(nbytes)
        if self._budget <= 0 and self._transport is not None:
            self._exhausted()

    def _exhausted(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or transport.get_protocol() is not self:
            return
        if self.on_exhausted is not None:
            self.on_exhausted()
        else:
            transport.abort()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is None:
            return
        inner, self._inner = self._inner, None
        self._transport = None
        self._admission.leave(self.counted_address)
        inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def release(self) -> None:
        """The connection is accepted: hand the socket to picows alone, and stop counting it."""
        transport = self._transport
        if transport is None or self._inner is None:
            return
        self._transport = None
        self.on_exhausted = None
        self._admission.leave(self.counted_address)
        transport.set_protocol(self._inner)
        self._inner = None
