"""One accepted socket of wse-fast's own listener, from its HTTP upgrade to its end: the
upgrade request is read and answered here, then the same socket carries the WebSocket, whose
frames :class:`wse_fast.codec.FrameReader` reads.

Reads go into one buffer per event loop, not one per connection: what a read brings is
handed to the connection's reader at once, which keeps only the bytes of an unfinished frame
or message (and gives them back once complete), so an idle connection holds no read buffer,
and one that received a large message keeps nothing of it. Each read is one call into the
reader, and its events reach the endpoint as one batch.

Before the connection is accepted it sits behind a :class:`~.admission.ReadGuard`, which
counts it as a stranger and holds an upgrade an ``async`` ``on_upgrade`` must decide; it
reads into :func:`shared_read_buffer` (``get_buffer``/``buffer_updated``). The stranger's
bytes are bounded here: the upgrade request's by :data:`HTTP_REQUEST_MAX`, and what may
follow it by the reader's budget (the stranger budget less the request), which the reader
checks as it reads and which is lifted when the guard steps aside. uvloop then calls this
protocol directly, as a plain protocol: it reads into its own buffer (one per loop, 256 KiB)
and hands over each read as ``bytes`` (``data_received``). Per read that is one Python call
where a buffered protocol costs two, and none of uvloop's buffer-protocol handling: measured
at 800 connections with one call each in flight, 0.2–0.5 µs less server user time per call
(of about 5). What it costs is a ``bytes`` object per read, about 8 µs per 256 KiB read of a
large message.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import functools
import hashlib
import os
import platform
import socket
import ssl as ssl_module
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from multidict import CIMultiDictProxy

from .. import codec
from ..constants import CLOSE_NO_STATUS, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, OP_CLOSE
from .admission import HTTP_REQUEST_MAX, Admission, ReadGuard, Vet, parse_request_head
from .endpoint import DeflateEndpoint, Endpoint, Keepalive
from .per_loop import per_loop

#: The size of each event loop's read buffer: what one read can take (a larger frame is
#: read in several, its bytes kept by its connection's reader until it is whole).
READ_BUFFER_SIZE = 256 * 1024
#: RFC 6455 §1.3: appended to the client's key before hashing it into the accept value.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: Answers an upgrade: ``upgrade(target, headers, guard)`` gives the connection's endpoint
#: and the 101 response's added headers, or the HTTP status and body that refuse it.
Upgrade = Callable[
    [str, CIMultiDictProxy[str], ReadGuard],
    "tuple[int, str] | tuple[Endpoint, list[tuple[str, str]]]",
]


@per_loop
def shared_read_buffer(loop: asyncio.AbstractEventLoop) -> memoryview:
    """The read buffer every socket of ``loop`` reads into (only one runs at a time)."""
    return memoryview(bytearray(READ_BUFFER_SIZE))


#: glibc's ``mallopt`` parameter for the size from which blocks are mapped on their own.
_M_MMAP_THRESHOLD = -3
#: Blocks from this size on go back to the OS when freed (glibc's initial threshold).
LARGE_BLOCK = 128 * 1024
#: The environment variable that sets the threshold :func:`give_large_blocks_back` fixes
#: (bytes), or ``off`` to leave glibc's own (dynamic) threshold alone.
MMAP_THRESHOLD_ENV = "WSE_FAST_MMAP_THRESHOLD"
_large_blocks_fixed = False


def _threshold_chosen_for_glibc() -> bool:
    """Whether the environment gave glibc a threshold of its own: ``MALLOC_MMAP_THRESHOLD_``
    or the ``glibc.malloc.mmap_threshold`` tunable (``GLIBC_TUNABLES``, glibc 2.26+)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return True
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(
        item.split("=", 1)[0].strip() == "glibc.malloc.mmap_threshold"
        for item in tunables.split(":")
    )


def give_large_blocks_back() -> bool:
    """Fixes glibc's threshold from which ``malloc`` maps a block on its own (and unmaps it
    when freed) at :data:`LARGE_BLOCK`; True when it is fixed (now or before).

    glibc starts there but raises the threshold, up to 32 MiB, each time such a block is
    freed: after one connection's large message, the next ones come from the heap, which
    keeps what they freed. Measured with ``benches/memory.py --step 1000 --steps 2
    --message 1000000``: RSS per connection after each sent one 1 MB message 4.8 KiB, twice
    its idle 2.5 KiB, and 2.5 KiB with the threshold fixed.

    It is process-wide (every thread, every library): each block from the threshold on then
    costs an ``mmap``/``munmap`` and page faults. So it is done once per process, on glibc
    only, and not when the environment has chosen a threshold for glibc already
    (``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=N``), nor when
    :data:`MMAP_THRESHOLD_ENV` is ``off``; that variable may also give the threshold in bytes.
    """
    global _large_blocks_fixed
    if _large_blocks_fixed:
        return True
    choice = os.environ.get(MMAP_THRESHOLD_ENV, "").strip().lower()
    if choice == "off" or _threshold_chosen_for_glibc() or platform.libc_ver()[0] != "glibc":
        return False
    threshold = int(choice) if choice else LARGE_BLOCK
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    _large_blocks_fixed = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    return _large_blocks_fixed


#: A read from this many bytes on is part of a large message (a call or a chat message is a
#: small fraction of it): the heap is trimmed a moment later (:class:`HeapTrim`).
LARGE_READ = 64 * 1024
#: Seconds without a large read before the trim (and at most one trim per this long, in the
#: whole process).
TRIM_DELAY = 1.0


class HeapTrim:
    """Gives the heap's free pages back to the OS (glibc's ``malloc_trim``) once a loop's
    sockets have read no large message for :data:`TRIM_DELAY`.

    Blocks from :data:`LARGE_BLOCK` on go back when freed (:func:`give_large_blocks_back`);
    the smaller reads of a large message come from the heap, and while many connections
    read one at once the heap grows between the blocks still held: glibc keeps those pages
    once freed (it gives back only the heap's top). Measured with ``benches/memory.py --step
    1000 --steps 2 --message 1000000``: RSS per connection 3 s after each sent one 1 MB
    message 2.84-3.70 KiB over runs (its idle 2.6-2.7 KiB), 2.56-2.58 KiB with the trim.

    A trim walks the whole heap (milliseconds for a large one) and the pages it gives back
    are faulted in again when used: so it waits for large reads to stop rather than running
    under them, runs at most once per :data:`TRIM_DELAY` for the whole process (it walks
    every arena, whichever loop asks), and only accepted connections' reads ask for it (a
    stranger's bytes are bounded below :data:`LARGE_READ` anyway, but one read can bring
    more). Only where the large blocks are given back too (glibc, and not turned off with
    :data:`MMAP_THRESHOLD_ENV`), so that one switch leaves glibc's allocator alone."""

    __slots__ = ("_last_large", "_loop", "scheduled", "trimmed", "trims")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.scheduled = False  # a trim waits for its time
        self._last_large = 0.0  # the loop's time of the last large read
        #: How many trims this loop ran, and an event set after the next one (cleared when
        #: one is scheduled).
        self.trims = 0
        self.trimmed = asyncio.Event()

    def note_large_read(self) -> None:
        """An accepted socket read :data:`LARGE_READ` bytes or more."""
        self._last_large = self._loop.time()
        if self.scheduled or not _large_blocks_fixed or _malloc_trim() is None:
            return
        self.scheduled = True
        self.trimmed.clear()
        self._loop.call_later(TRIM_DELAY, self._trim)

    def _trim(self) -> None:
        global _last_trim
        quiet_for = self._loop.time() - self._last_large
        if quiet_for < TRIM_DELAY:  # large reads go on: wait until they stop
            self._loop.call_later(TRIM_DELAY - quiet_for, self._trim)
            return
        self.scheduled = False
        now = time.monotonic()
        if now - _last_trim >= TRIM_DELAY:  # else another loop has just trimmed the process
            _last_trim = now
            trim = _malloc_trim()
            assert trim is not None
            trim(0)  # 0: keep no pad at the heap's top
        self.trims += 1
        self.trimmed.set()


_last_trim = -TRIM_DELAY  # time.monotonic() of the process's last trim


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, looked up once; None where there is none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]  # int malloc_trim(size_t pad)
    trim.restype = ctypes.c_int
    return trim


@per_loop
def heap_trim_for(loop: asyncio.AbstractEventLoop) -> HeapTrim:
    """The :class:`HeapTrim` of ``loop``, the running loop (shared by its servers)."""
    return HeapTrim(loop)


def accept_value(key: str) -> str:
    """``Sec-WebSocket-Accept`` for the client's ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("latin-1") + _GUID).digest()).decode()


def handshake_problem(headers: CIMultiDictProxy[str]) -> tuple[int, str] | None:
    """Why an HTTP request is not a WebSocket upgrade (RFC 6455 §4.2.1), as the status and
    body to refuse it with; None when it is one."""
    if headers.get("Upgrade", "").strip().lower() != "websocket":
        return HTTPStatus.UPGRADE_REQUIRED, "a WebSocket upgrade is required"
    # RFC 9110 §7.6.1: Connection is a list, which may come in several field lines
    tokens = (
        t.strip().lower() for line in headers.getall("Connection", ()) for t in line.split(",")
    )
    if "upgrade" not in tokens:
        return HTTPStatus.BAD_REQUEST, "Connection: Upgrade is missing"
    if len(headers.getall("Host", ())) != 1:
        # RFC 9112 §3.2: an HTTP/1.1 request with no Host, or more than one, is refused
        return HTTPStatus.BAD_REQUEST, "exactly one Host is required"
    if headers.get("Sec-WebSocket-Version", "").strip() != "13":
        return HTTPStatus.UPGRADE_REQUIRED, "Sec-WebSocket-Version 13 is required"
    keys = headers.getall("Sec-WebSocket-Key", ())
    if len(keys) > 1:  # RFC 6455 §11.3.1: it must not appear more than once
        return HTTPStatus.BAD_REQUEST, "more than one Sec-WebSocket-Key"
    key = keys[0].strip() if keys else ""
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid_key = False
    if not valid_key:
        return HTTPStatus.BAD_REQUEST, "Sec-WebSocket-Key is not a 16-byte nonce"
    return None


def refusal_response(status: int, body: str) -> bytes:
    """A complete HTTP response refusing an upgrade; the socket is closed after it."""
    content = body.encode()
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    # RFC 9110 §15.5.22: a 426 names the protocol to upgrade to; RFC 6455 §4.2.2: and a
    # refused WebSocket upgrade the versions the server speaks
    upgrade = (
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        if status == HTTPStatus.UPGRADE_REQUIRED
        else ""
    )
    return (
        f"HTTP/1.1 {status} {phrase}\r\nConnection: close\r\n{upgrade}"
        f"Content-Type: text/plain\r\nContent-Length: {len(content)}\r\n\r\n"
    ).encode("latin-1") + content


class ServerSocket(asyncio.Protocol):
    """The protocol of one accepted socket: the upgrade, then the WebSocket.

    Behind its guard, it is read through ``get_buffer``/``buffer_updated`` (the guard calls
    them); once accepted, uvloop calls ``data_received`` (see the module's docstring).

    To its endpoint it is a :class:`~.endpoint.SocketTransport` (``send_close``,
    ``disconnect``, ``is_close_frame_sent``, ``is_disconnected``, ``underlying_transport``),
    as picows's transport is to the client's endpoint, so the endpoint works the same on
    either.
    """

    __slots__ = (
        "_buffer",
        "_endpoint",
        "_guard",
        "_head",
        "_head_timeout",
        "_head_timer",
        "_reader",
        "_stranger_budget",
        "_transport",
        "_upgrade",
        "is_close_frame_sent",
    )

    def __init__(self, upgrade: Upgrade, head_timeout: float | None, stranger_budget: int) -> None:
        self._upgrade = upgrade
        # set by the listener; kept until the connection is accepted (the guard releases it)
        self._guard: ReadGuard | None = None
        self._stranger_budget = stranger_budget  # bytes it may send until then, request too
        self._transport: Any = None
        self._buffer: memoryview | None = None
        # the upgrade request so far, until its head is whole; then None
        self._head: bytearray | None = bytearray()
        self._head_timeout = head_timeout  # None: the guard keeps it (see listen)
        self._head_timer: asyncio.TimerHandle | None = None
        self._reader: Any = None  # codec.FrameReader, once the WebSocket is open
        self._endpoint: Endpoint | None = None
        self.is_close_frame_sent = False

    def bind(self, guard: ReadGuard) -> None:
        """The guard this socket sits behind until it is accepted (what the upgrade counts
        the stranger with, and what decides when it sends more than its budget)."""
        self._guard = guard
        guard.on_release = self._released

    def _released(self) -> None:
        """The connection is accepted: its bytes are bounded no more."""
        self._guard = None
        if self._reader is not None:
            self._reader.lift_budget()

    # ---- what uvloop calls ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        loop = asyncio.get_running_loop()
        self._buffer = shared_read_buffer(loop)
        if self._head_timeout is not None:
            self._head_timer = loop.call_later(self._head_timeout, self._head_timed_out)

    def get_buffer(self, sizehint: int) -> memoryview:
        assert self._buffer is not None
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        assert self._buffer is not None
        if self._reader is not None:
            self.data_received(self._buffer[:nbytes])
        elif self._head is not None:
            self._head_read(self._buffer[:nbytes])
        # else: refused, or the WebSocket failed at once: nothing more is read

    def data_received(self, data: bytes | memoryview) -> None:
        # A read of the WebSocket: an accepted socket's (uvloop calls this once the guard has
        # stepped aside), or a stranger's, the frames after its request, or bytes read again.
        # The reader is None once the WebSocket failed, and then nothing more is read.
        reader = self._reader
        if reader is not None:
            if len(data) >= LARGE_READ and self._guard is None:  # a small read pays one test
                heap_trim_for(asyncio.get_running_loop()).note_large_read()
            events = reader.feed(data)
            if events:
                self._dispatch(events, data)

    def eof_received(self) -> bool | None:
        return None  # the peer is gone for reading: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._head = None
        self._reader = None
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            endpoint.on_ws_disconnected(self)

    def pause_writing(self) -> None:
        if self._endpoint is not None:
            self._endpoint.pause_writing()

    def resume_writing(self) -> None:
        if self._endpoint is not None:
            self._endpoint.resume_writing()

    # ---- the upgrade ------------------------------------------------------------------------

    def _head_read(self, data: memoryview) -> None:
        head = self._head
        assert head is not None
        held = len(head)
        start = max(held - 3, 0)
        # No more than the longest head and its blank line is copied: a head not ended
        # within is refused, and what follows one (frames) is read from ``data`` itself.
        head += data[: HTTP_REQUEST_MAX + 4 - held]
        end = head.find(b"\r\n\r\n", start)
        if end < 0:
            if len(head) > HTTP_REQUEST_MAX:
                self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "")
            return
        self._head = None
        self._cancel_head_timer()
        rest = data[end + 4 - held :]  # what the client sent after its request: frames
        parsed = parse_request_head(bytes(head[:end]))
        if parsed is None:
            self._refuse(HTTPStatus.BAD_REQUEST, "malformed upgrade request")
            return
        target, headers = parsed
        problem = handshake_problem(headers)
        if problem is not None:
            self._refuse(*problem)
            return
        guard = self._guard  # the connection keeps it while it counts
        assert guard is not None
        verdict = self._upgrade(target, headers, guard)
        if isinstance(verdict[0], int):
            self._refuse(*verdict)  # type: ignore[arg-type]
            return
        endpoint, added = verdict
        budget = max(self._stranger_budget - (end + 4), 0)  # what may follow the request
        accept = accept_value(headers["Sec-WebSocket-Key"].strip())
        self._open(endpoint, accept, added, rest, budget)

    def _open(
        self,
        endpoint: Endpoint,
        accept: str,
        added: list[tuple[str, str]],
        rest: memoryview,
        budget: int,
    ) -> None:
        """Answers 101 and opens the WebSocket; ``rest``: bytes that came after the request,
        ``budget``: how many the stranger may send from there on."""
        lines = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept}",
            *(f"{name}: {value}" for name, value in added),
        ]
        self._transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self._reader = codec.FrameReader(
            endpoint.max_message_size,
            client_frames=True,
            compression=isinstance(endpoint, DeflateEndpoint),
            budget=None if self._guard is None else budget,
        )
        if isinstance(endpoint, DeflateEndpoint):
            # permessage-deflate agreed: the reader inflates, bounded by the endpoint's limits
            endpoint.inflate_in(self._reader)
        self._endpoint = endpoint
        endpoint.on_ws_connected(self)
        if rest and self._reader is not None and not self._transport.is_closing():
            self.data_received(rest)

    def _dispatch(self, events: list[tuple[int, Any, Any]], data: bytes | memoryview) -> None:
        """Hands what one read (``data``) completed to the endpoint, as one batch."""
        endpoint = self._endpoint
        assert endpoint is not None
        endpoint.on_events(events)
        reader = self._reader
        if reader is not None and reader.done:
            if not reader.over_budget:
                # No Close can be read any more (the peer's came, or its frames cannot be
                # told apart after a failure): TCP is closed once the Close frame has left.
                endpoint.close(CLOSE_PROTOCOL_ERROR, wait=False)
                return
            # The stranger's budget ran out in this read (the reader's last event says so,
            # which the endpoint passes over): the guard, its hold, carries out the decision.
            guard = self._guard
            if guard is not None:
                guard.exhausted()
                return
            # ... yet a message before that got it accepted, which lifted the budget: the
            # bytes the reader left unread are read now, as if they had come in their own read
            self.data_received(data[len(data) - reader.unread :])

    def _refuse(self, status: int, body: str) -> None:
        self._head = None
        self._cancel_head_timer()
        self._transport.write(refusal_response(status, body))
        self._transport.close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head is not None and self._transport is not None:
            self._head = None
            self._transport.abort()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    # ---- what the endpoint calls (its SocketTransport) ---------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes the socket holds of unfinished frames and messages (0 between messages)."""
        reader = self._reader
        return 0 if reader is None else int(reader.buffered)

    @property
    def underlying_transport(self) -> Any:
        return self._transport

    @property
    def is_disconnected(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def send_close(self, close_code: Any = CLOSE_NORMAL, close_message: Any = None) -> None:
        """Writes the one Close frame (a status code always: 1005 is sent as 1000)."""
        if self.is_close_frame_sent or self.is_disconnected:
            return
        self.is_close_frame_sent = True
        status = CLOSE_NORMAL if close_code == CLOSE_NO_STATUS else int(close_code)
        body = struct.pack("!H", status) + bytes(close_message or b"")
        self._transport.write(codec.build_frame(OP_CLOSE, body))

    def disconnect(self, graceful: bool = True) -> None:
        """Closes TCP once what is written has left (``graceful``), or at once."""
        transport = self._transport
        if transport is None:
            return
        if graceful:
            transport.close()
        else:
            transport.abort()


@dataclass(frozen=True, slots=True)
class ListenerOptions:
    handshake_timeout: float | None
    ping_interval: float | None
    ping_timeout: float
    stranger_budget: int  # bytes a socket may send before it is accepted
    backlog: int  # the accept queue's length (listen(2))

    def keepalive(self) -> Keepalive | None:
        """The endpoints' keepalive sweep settings (one sweep per event loop), or None
        with pings off."""
        if self.ping_interval is None:
            return None
        return Keepalive(self.ping_interval, self.ping_timeout)


#: The accept queue where the kernel's bound cannot be read: Linux's ``somaxconn`` since 5.4.
FALLBACK_BACKLOG = 4096


def kernel_backlog() -> int:
    """The longest accept queue the kernel grants (``listen(2)`` silently caps a larger
    backlog): Linux's ``net.core.somaxconn``, else :data:`FALLBACK_BACKLOG`."""
    if sys.platform == "linux":
        try:
            with open("/proc/sys/net/core/somaxconn", encoding="ascii") as file:
                return int(file.read())
        except (OSError, ValueError):
            pass
    return FALLBACK_BACKLOG


async def listen(
    upgrade: Upgrade,
    admission: Admission,
    options: ListenerOptions,
    *,
    host: str | None = None,
    port: int | None = None,
    sock: socket.socket | None = None,
    ssl: ssl_module.SSLContext | None = None,
    vet: Vet | None = None,
) -> asyncio.Server:
    """Serves WebSocket upgrades on ``host:port`` (or ``sock``), each socket a
    :class:`ServerSocket` behind a :class:`ReadGuard`; ``upgrade`` answers each request.
    ``vet``: what may decide an upgrade before it is answered, asynchronously (see
    :class:`ReadGuard`, which then keeps the handshake timeout).

    Keepalive is the endpoints' sweep (:class:`Keepalive`): one per event loop.
    """
    give_large_blocks_back()  # a large message's memory goes back once it is read
    keepalive = options.keepalive()

    def route(
        target: str, headers: CIMultiDictProxy[str], guard: ReadGuard
    ) -> tuple[int, str] | tuple[Endpoint, list[tuple[str, str]]]:
        answer = upgrade(target, headers, guard)
        if isinstance(answer[0], Endpoint):
            answer[0].keepalive = keepalive
        return answer

    def protocol() -> ReadGuard:
        inner = ServerSocket(
            route, options.handshake_timeout if vet is None else None, options.stranger_budget
        )
        guard = ReadGuard(inner, admission, vet, options.handshake_timeout)
        inner.bind(guard)
        return guard

    where: dict[str, Any] = {"sock": sock} if sock is not None else {"host": host, "port": port}
    if ssl is not None and options.handshake_timeout is not None:
        # uvloop reports a TLS socket only once its TLS handshake is done: bound that too
        where["ssl_handshake_timeout"] = options.handshake_timeout
    loop = asyncio.get_running_loop()
    return await loop.create_server(protocol, ssl=ssl, backlog=options.backlog, **where)
