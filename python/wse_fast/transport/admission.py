"""What a stranger may cost before identify accepts it: counts, addresses and bytes.

Every accepted TCP socket starts behind a :class:`ReadGuard`, a thin buffered protocol between
uvloop and the socket's own protocol (:class:`~.server_socket.ServerSocket`). It

- counts the server's strangers (sockets not yet accepted by identify, from the TCP accept on),
  in all and per address, and refuses a socket past either with HTTP 503 or 429 before
  reading a byte of it (the stranger's bytes are counted by its socket's frame reader, which
  calls :meth:`ReadGuard.exhausted` when they run out);
- steps aside once the connection is accepted (:meth:`ReadGuard.release`): uvloop then talks to
  the socket's protocol directly, so an authenticated connection pays nothing per read;
- with a ``vet`` (a server's ``async`` ``on_upgrade``), holds the upgrade request back from
  the socket's protocol, whose upgrade is synchronous, until ``vet`` has answered
  (:meth:`ReadGuard.vetted`): reading pauses meanwhile, and the socket counts as a stranger,
  so that pending upgrades are bounded by the stranger limits and by the handshake timeout,
  which the guard then keeps itself (from the TCP accept): a request whose head has not come
  by then is aborted, one still being vetted is answered 503 and its ``vet`` cancelled.

A trusted proxy's sockets are counted per client address at the upgrade
(:meth:`Admission.admit_address`), once the proxy has named the client.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

#: The longest upgrade request head taken (longer: HTTP 431).
HTTP_REQUEST_MAX = 16 * 1024
#: Room for control frames (pings, a close) a stranger may send besides its messages.
CONTROL_ALLOWANCE = 4 * 1024
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Length: 0\r\n\r\n"
)
_TOO_MANY = (
    b"HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Length: 0\r\n\r\n"
)
#: What the read guard writes to a stranger it does not admit, by status.
_REFUSALS = {HTTPStatus.SERVICE_UNAVAILABLE: _BUSY, HTTPStatus.TOO_MANY_REQUESTS: _TOO_MANY}


log = logging.getLogger("wse_fast")

#: Decides an upgrade before the socket answers it: ``vet(target, headers, guard)`` answers
#: an awaitable whose result the guard keeps as ``vetted``, or None when there is nothing to
#: wait for (the request then goes to the socket's protocol at once).
Vet = Callable[[str, "CIMultiDictProxy[str]", "ReadGuard"], Awaitable[Any] | None]


#: RFC 9110 §5.1: a field name is a token.
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parse_request_head(head: bytes) -> tuple[str, CIMultiDictProxy[str]] | None:
    """The target and headers of an HTTP/1.1 request head (without its blank line), or None
    when it is not one that an upgrade can be (RFC 9112 §3 and §5; no obsolete line
    folding). A CR, LF or NUL anywhere but in the CRLF that ends each line refuses the
    request (RFC 9112 §2.2, RFC 9110 §5.5): a proxy in front that splits lines at a bare LF
    would otherwise see other headers than the server does."""
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    if any("\r" in line or "\n" in line or "\x00" in line for line in lines):
        return None
    request_line = lines[0].split(" ")
    if len(request_line) != 3 or request_line[0] != "GET" or request_line[2] != "HTTP/1.1":
        return None
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or _FIELD_NAME.fullmatch(name) is None:
            return None
        headers.add(name, value.strip(" \t"))
    return request_line[1], CIMultiDictProxy(headers)


def stranger_refusal(counted: str | None) -> HTTPStatus:
    """The status that refuses a socket :meth:`Admission.admit` did not admit, on every
    transport: 429 when its address (``counted``) has taken its share, 503 when the server's
    strangers are all taken (``counted`` None). A client may retry either soon."""
    return HTTPStatus.SERVICE_UNAVAILABLE if counted is None else HTTPStatus.TOO_MANY_REQUESTS


class StrangerHold(Protocol):
    """What counts and bounds one stranger until it is accepted (a :class:`ReadGuard` on
    the own listener, a :class:`StrangerTicket` on a mounted transport)."""

    counted_address: str | None  # the client's address as a trusted proxy named it
    on_exhausted: Callable[[], None] | None  # runs when the stranger has sent all it may

    def release(self) -> None:
        """The stranger is accepted: it no longer counts, and nothing bounds its bytes."""
        ...


class Admission:
    """The server's strangers: how many there are, in all and per client address.

    A socket is counted per address from its TCP accept, under its peer's address, so that
    one host cannot take every stranger's place before it has sent a byte. A peer that is a
    trusted proxy speaks for many clients: its sockets count in all only, and each is counted
    under the client's address once the upgrade request has named it.
    """

    __slots__ = ("_is_proxy", "_per_address", "max_per_address", "max_total", "total")

    def __init__(
        self, max_total: int, max_per_address: int, is_proxy: Callable[[str], bool]
    ) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._is_proxy = is_proxy
        self.total = 0
        self._per_address: dict[str, int] = {}

    def admit(self, peer_host: str) -> tuple[bool, str | None]:
        """A socket from ``peer_host`` arrives: whether it may stay, and the address it is
        counted under (None for a trusted proxy's)."""
        if self.total >= self.max_total:
            return False, None
        # a trusted proxy speaks for many clients, and a socket with no address (a Unix
        # socket behind a proxy) for anyone: both count in all only
        counted = None if not peer_host or self._is_proxy(peer_host) else peer_host
        if counted is not None and not self.admit_address(counted):
            return False, counted
        self.total += 1
        return True, counted

    def admit_address(self, host: str) -> bool:
        count = self._per_address.get(host, 0)
        if count >= self.max_per_address:
            return False
        self._per_address[host] = count + 1
        return True

    def leave(self, *hosts: str | None) -> None:
        """A counted socket is accepted or gone: it no longer counts, in all or under
        ``hosts``."""
        self.total -= 1
        for host in hosts:
            if host is not None:
                count = self._per_address[host] - 1
                if count:
                    self._per_address[host] = count
                else:
                    del self._per_address[host]

    def strangers_from(self, host: str) -> int:
        return self._per_address.get(host, 0)


class _Unbuffered:
    """Buffered-read callbacks that belong to no socket (see :meth:`ReadGuard.release`):
    plain functions, so that uvloop holds no bound method, and no guard, through them."""

    @staticmethod
    def get_buffer(sizehint: int) -> bytearray:
        raise RuntimeError("a plain protocol's socket is not read through get_buffer")

    @staticmethod
    def buffer_updated(nbytes: int) -> None:
        raise RuntimeError("a plain protocol's socket is not read through buffer_updated")


_UNBUFFERED = _Unbuffered()


class GuardedProtocol(Protocol):
    """What a :class:`ReadGuard` stands in front of: a buffered protocol
    (:class:`~.server_socket.ServerSocket`) that becomes uvloop's own protocol for the socket
    once the guard steps aside."""

    def connection_made(self, transport: Any) -> None: ...
    def get_buffer(self, sizehint: int) -> Any: ...
    def buffer_updated(self, nbytes: int) -> None: ...
    def eof_received(self) -> bool | None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...


class ReadGuard(asyncio.BufferedProtocol):
    """Stands between uvloop and one socket's protocol until the connection is accepted.

    The protocol behind counts the stranger's bytes (its frame reader's budget: the upgrade
    request, the authentication messages and a few control frames) and calls
    :meth:`exhausted` when they run out: ``on_exhausted`` runs (set by the connection once the
    WebSocket is open), or the socket is aborted before then. ``on_release`` tells it when the
    bytes stop counting.
    """

    __slots__ = (
        "_admission",
        "_counted_peer",
        "_head",
        "_head_length",
        "_head_timeout",
        "_head_timer",
        "_inner",
        "_transport",
        "_vet",
        "_vetting",
        "counted_address",
        "on_exhausted",
        "on_release",
        "peer",
        "vetted",
    )

    def __init__(
        self,
        inner: GuardedProtocol,
        admission: Admission,
        vet: Vet | None = None,
        head_timeout: float | None = None,
    ) -> None:
        self._inner: GuardedProtocol | None = inner
        self._admission = admission
        self._transport: Any = None  # uvloop's transport (not an asyncio.Transport subclass)
        self.peer: Any = None  # the socket's peer address
        self._counted_peer: str | None = None  # counted under the peer's address at the accept
        self.counted_address: str | None = None  # a proxy's client, counted at the upgrade
        self.on_exhausted: Callable[[], None] | None = None
        #: Runs when the connection is accepted, before the socket goes to the protocol behind.
        self.on_release: Callable[[], None] | None = None
        self._vet = vet
        # With a vet: the request as it arrives, until its head is whole (then None)
        self._head: bytearray | None = None
        self._head_length = 0
        self._head_timeout = head_timeout  # with a vet: the handshake timeout, kept here
        self._head_timer: asyncio.TimerHandle | None = None
        self._vetting: asyncio.Future[Any] | None = None
        #: What ``vet`` answered for this socket's upgrade (None: nothing was vetted).
        self.vetted: Any = None

    def connection_made(self, transport: Any) -> None:
        inner = self._inner
        assert inner is not None  # made for this one socket
        self._transport = transport
        self.peer = transport.get_extra_info("peername")
        host = self.peer[0] if isinstance(self.peer, tuple) else ""
        admitted, counted = self._admission.admit(host)
        if not admitted:
            self._inner = None  # the protocol behind never sees this socket
            transport.write(_REFUSALS[stranger_refusal(counted)])
            transport.close()
            return
        self._counted_peer = counted
        if self._vet is not None:
            # one byte past the largest request, to tell a head that is too long
            self._head = bytearray(HTTP_REQUEST_MAX + 1)
            if self._head_timeout is not None:
                loop = asyncio.get_running_loop()
                self._head_timer = loop.call_later(self._head_timeout, self._head_timed_out)
        inner.connection_made(transport)

    def get_buffer(self, sizehint: int) -> Any:
        if self._inner is None:
            return bytearray(256)  # a refused socket: whatever arrives is dropped
        if self._head is not None:
            return memoryview(self._head)[self._head_length :]
        return self._inner.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if self._inner is None:
            return
        if self._head is not None:
            self._head_read(nbytes)
        else:
            self._inner.buffer_updated(nbytes)

    def _head_read(self, nbytes: int) -> None:
        """More of a held request arrived: once its head is whole, vet it, reading nothing
        more until ``vet`` answers (a head longer than any taken, or malformed, goes on at
        once, to be refused by the protocol behind)."""
        assert self._head is not None and self._vet is not None
        start = max(self._head_length - 3, 0)
        self._head_length += nbytes
        end = self._head.find(b"\r\n\r\n", start, self._head_length)
        if end < 0:
            if self._head_length == len(self._head):
                self._pass_head()  # refused there (too long)
            return
        parsed = parse_request_head(bytes(self._head[:end]))
        if parsed is None:
            self._pass_head()  # refused there (malformed)
            return
        pending = self._vet(parsed[0], parsed[1], self)
        if pending is None:
            self._pass_head()
            return
        self._transport.pause_reading()
        self._vetting = asyncio.ensure_future(pending)
        self._vetting.add_done_callback(self._vet_done)

    def _vet_done(self, vetting: asyncio.Future[Any]) -> None:
        self._vetting = None
        if self._inner is None:
            return  # the socket is gone
        if vetting.cancelled():
            # by the handshake timeout (which answered and closed), or from within the hook:
            # then nothing else would end the socket, which holds a stranger's place
            if not self._transport.is_closing():
                self._transport.abort()
            return
        exc = vetting.exception()
        if exc is not None:
            log.error("an upgrade could not be vetted", exc_info=exc)
            self._transport.abort()
            return
        self.vetted = vetting.result()
        # Reading resumes before the protocol behind reads what was held (nothing is read in
        # between: it is all in this callback), so that a pause the connection asks for
        # meanwhile (flow control, with more calls held than max_in_flight) holds: the
        # endpoint pauses only a transport that reads, and resuming after would undo its pause.
        transport = self._transport
        if not transport.is_closing():
            transport.resume_reading()
        self._pass_head()

    def _head_timed_out(self) -> None:
        """The handshake timeout, while the request is held: a client that has not sent its
        request head by now is cut off; one whose ``vet`` is still running
        gets 503, and its ``vet`` is cancelled."""
        self._head_timer = None
        transport = self._transport
        if self._inner is None or self._head is None or transport is None:
            return
        vetting, self._vetting = self._vetting, None
        if vetting is None:
            transport.abort()
            return
        vetting.cancel()
        transport.write(_BUSY)
        transport.close()

    def _pass_head(self) -> None:
        """Hands what was held to the protocol behind, as if it had just been read; it reads
        the upgrade request (and anything the client sent after it) as it always does, and
        answers it at once: the handshake timeout has nothing left to bound."""
        head, length = self._head, self._head_length
        assert head is not None
        self._head, self._head_length = None, 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        held = memoryview(head)[:length]
        # Fed to the protocol behind to the end, also once a message in it got the connection
        # accepted (the guard then stepped aside, and that protocol is the socket's own): what
        # the client sent after that message must not be lost.
        inner, transport = self._inner, self._transport
        while held and inner is not None and transport is not None and not transport.is_closing():
            buffer = inner.get_buffer(-1)
            n = min(len(buffer), len(held))
            buffer[:n] = held[:n]
            held = held[n:]
            inner.buffer_updated(n)

    def exhausted(self) -> None:
        """The stranger has sent every byte it may (its socket's reader says so):
        ``on_exhausted`` runs (the connection's decision: close 1008), or the socket is aborted
        when none is set yet."""
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
        if self._vetting is not None:  # no one waits for the answer: stop the hook
            self._vetting.cancel()
        if self._head_timer is not None:
            self._head_timer.cancel()
        inner, self._inner = self._inner, None
        self._transport = None
        self._admission.leave(self._counted_peer, self.counted_address)
        inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def release(self) -> None:
        """The connection is accepted: hand the socket to the protocol behind alone, and stop
        counting it."""
        transport = self._transport
        if transport is None or self._inner is None:
            return
        self._transport = None
        self.on_exhausted = None
        self._admission.leave(self._counted_peer, self.counted_address)
        on_release, self.on_release = self.on_release, None
        if on_release is not None:
            on_release()
        inner, self._inner = self._inner, None
        # uvloop keeps the buffered-read callbacks of the last buffered protocol it was given,
        # also once it reads a plain one: shared ones replace this guard's bound methods first,
        # or each accepted socket would keep its guard (0.35 KiB more per idle connection,
        # measured with benches/memory.py)
        transport.set_protocol(_UNBUFFERED)
        # uvloop restarts reading here, with the read callbacks of the protocol's kind: a
        # ServerSocket is then read through data_received, no longer through this buffer
        transport.set_protocol(inner)


class StrangerTicket:
    """A stranger on a transport whose host server did the TCP accept and the upgrade (ASGI,
    aiohttp): counted from its upgrade until it is accepted or gone, with the bytes it may
    still send in messages (the host server bounds the upgrade request itself).

    It offers what a :class:`ReadGuard` offers the server: ``counted_address``,
    ``on_exhausted`` and :meth:`release`.
    """

    __slots__ = (
        "_admission",
        "_counted_peer",
        "_held",
        "budget",
        "counted_address",
        "on_exhausted",
    )

    def __init__(self, admission: Admission, counted_peer: str | None, budget: int) -> None:
        self._admission = admission
        self._counted_peer = counted_peer
        self._held = True
        self.budget = budget
        self.counted_address: str | None = None
        self.on_exhausted: Callable[[], None] | None = None

    @classmethod
    def admit(cls, admission: Admission, peer_host: str, budget: int) -> StrangerTicket | int:
        """A ticket for a stranger from ``peer_host``, or the HTTP status that refuses it."""
        admitted, counted = admission.admit(peer_host)
        if not admitted:
            return int(stranger_refusal(counted))
        return cls(admission, counted, budget)

    @property
    def held(self) -> bool:
        return self._held

    def spend(self, nbytes: int) -> None:
        """The stranger sent ``nbytes`` more; past its budget, ``on_exhausted`` runs, once
        (what the stranger sends while its Close leaves is not reported again)."""
        if self._held:
            self.budget -= nbytes
            exhausted = self.on_exhausted
            if self.budget < 0 and exhausted is not None:
                self.on_exhausted = None
                exhausted()

    def release(self) -> None:
        """Accepted or gone: it no longer counts (idempotent)."""
        if self._held:
            self._held = False
            self.on_exhausted = None
            self._admission.leave(self._counted_peer, self.counted_address)
