"""The WSE client: connect with an identity, send, call, answer calls, reconnect."""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Final, Self

from picows import WSError, WSFrame, WSListener, WSTransport, ws_connect

from .constants import (
    CLOSE_ABNORMAL,
    CLOSE_GOING_AWAY,
    CLOSE_JUMP,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    JUMP_REASON,
    OP_BINARY,
    OP_TEXT,
    RECONNECT_CODES,
    SLOW_CONSUMER,
    WSE_ERROR,
    WSE_REASON,
    WSE_STATUS,
)
from .errors import (
    AlreadyConnected,
    ConnectionFailed,
    ConnectionNotReady,
    NotAuthorized,
    ProtocolViolation,
    WseError,
)
from .events import ClientEvents, ErrorSink, run_handler
from .options import Limits, Reconnect
from .peer import Peer
from .protocols import FrameEncoder, WireProtocol
from .rpc import PendingCalls, deadline
from .sansio import session as ev
from .sansio.deflate import Compressor, PerMessageDeflate
from .sansio.framing import unframe
from .sansio.session import ClientSession
from .transport.endpoint import DeflateEndpoint, Endpoint

#: The reason reported with code 1006 when the server left a keepalive ping unanswered.
PING_TIMEOUT_REASON: Final = "wse.client.ping-timeout"
#: Headers of the upgrade request that the WebSocket handshake itself writes (RFC 6455 §4.1).
HANDSHAKE_HEADERS: Final = frozenset(
    {
        "host",
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
    }
)


class PicowsListener(WSListener):  # type: ignore[misc]
    """picows's listener for the client's connection: hands each of picows's callbacks to the
    connection's :class:`~wse_fast.transport.endpoint.Endpoint`.

    A class of its own rather than the endpoint itself, so that the endpoint (shared with the
    server's own sockets) needs no picows: a process that only serves never loads it.
    """

    __slots__ = ("endpoint",)

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.endpoint.on_ws_connected(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self.endpoint.on_ws_frame(transport, frame)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.endpoint.on_ws_disconnected(transport)

    def pause_writing(self) -> None:
        self.endpoint.pause_writing()

    def resume_writing(self) -> None:
        self.endpoint.resume_writing()


class _Link:
    """One WebSocket of the client: the session on it, its pending calls and its outcome."""

    def __init__(
        self,
        client: WseClient,
        handler_failed: ErrorSink,
        solve: Callable[[_Link, Any], None],
        closed: Callable[[_Link, int, str], None],
    ) -> None:
        self.client = client
        # the client's own steps, handed in (bound once): a failed handler, a challenge to
        # answer, this link's end
        self.handler_failed = handler_failed
        self.solve = solve
        self.link_closed = closed
        self.session = ClientSession(client.wire)
        self.pending = PendingCalls(asyncio.get_running_loop())
        self.endpoint: Endpoint | None = None
        self.transport: WSTransport | None = None  # picows's, once ws_connect has returned
        self.leaving = False  # this side has started the close handshake
        # permessage-deflate, when the server agreed: what compresses this side's messages
        # (None: they go plain), and why the server's answer was refused, if it was
        self.compressor: Compressor | None = None
        self.bad_extensions: str | None = None
        self.welcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()

    def on_open(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def on_message(self, binary: bool, data: Any) -> None:
        client = self.client
        event = self.session.receive_data(binary, data)
        if client.route(event, (), self.reply, self.pending, self.handler_failed):
            return
        if isinstance(event, ev.Violation):
            client.when.emit("error", ProtocolViolation({"detail": event.detail}))
        elif isinstance(event, ev.Welcome):
            if not self.welcome.done():
                self.welcome.set_result(event.payload)
        elif isinstance(event, ev.Quest):
            self.solve(self, event.quest)

    def on_overflow(self) -> None:
        self.client.when.emit(
            "error", WseError(WSE_ERROR.CONNECTION_ERROR, {"reason": SLOW_CONSUMER})
        )

    def on_close(self, code: int, reason: str) -> None:
        if self._ping_unanswered():
            # picows's own Close (1001) is not the server's answer; whether or not the server
            # echoed it, the server is gone as far as this client can tell: report it as an
            # abnormal close, which the reconnect rules then treat like a dropped socket.
            code, reason = CLOSE_ABNORMAL, PING_TIMEOUT_REASON
        self.session.closed()
        self.pending.reject_all(WSE_ERROR.RP_DISCONNECT, {"code": code, "reason": reason})
        if not self.welcome.done():
            self.welcome.set_exception(closed_before_welcome(code, reason))
        if not self.closed.done():
            self.closed.set_result((code, reason))
        self.link_closed(self, code, reason)

    def give_up(self, code: int, reason: str) -> None:
        """Closes a link whose welcome nobody will await any more (connect has failed):
        the welcome is cancelled, so that the close cannot leave an exception on it that
        nothing retrieves (asyncio would log it when the future is collected)."""
        self.welcome.cancel()
        self.close(code, reason)

    def close(self, code: int, reason: str) -> None:
        """Starts this side's close handshake; ``closed`` then reports ``code`` and ``reason``
        (or the server's own Close, should it have sent one first)."""
        if self.endpoint is not None:
            self.leaving = True
            self.endpoint.close(code, reason)

    def _ping_unanswered(self) -> bool:
        """picows ended this connection because its keepalive ping went unanswered.

        picows then sends Close 1001 itself and aborts the socket shortly after
        (``_auto_ping_loop``). Nothing else on this side closes with 1001: the client leaves
        with 1000 or 4000, and a Close that answers the server's is recorded as received
        first (``recv_then_sent``). A ping that goes unanswered after the client has begun
        to leave (the server is slow to answer its Close) is no news: the client's own
        close is what it reports.
        """
        if self.leaving:
            return False
        handshake = None if self.transport is None else self.transport.close_handshake
        if handshake is None or handshake.sent is None:
            return False
        return handshake.sent.code.value == CLOSE_GOING_AWAY and not handshake.recv_then_sent

    def send(self, type: str, payload: Any, stamp: str | None) -> None:
        assert self.endpoint is not None
        self.endpoint.write(self.encode(type, payload, stamp))

    def send_frame(self, frame: bytes) -> None:
        assert self.endpoint is not None
        self.endpoint.write(frame)

    def reply(self, type: str, payload: Any, stamp: str) -> None:
        if self.endpoint is not None:
            self.endpoint.write(self.encode(type, payload, stamp))

    def encode(self, type: str, payload: Any, stamp: str | None) -> bytes:
        """One message as a frame to send: compressed where the server agreed to it."""
        compressor = self.compressor
        if compressor is None:
            return self.client.encode(type, payload, stamp)
        binary, data = unframe(self.client.plain_encode(type, payload, stamp))
        return compressor.message_frame(OP_BINARY if binary else OP_TEXT, data, mask=True)


def closed_before_welcome(code: int, reason: str) -> ConnectionFailed | NotAuthorized:
    """What ``connect`` raises when the connection closes before the welcome: the server's
    refusal (reason ``wse.not-authorized``), or a failed connection; either way the close code
    and reason are in the details, never in the error code."""
    details = {"code": code, "reason": reason}
    if reason == WSE_REASON.NOT_AUTHORIZED:
        return NotAuthorized(details)
    return ConnectionFailed(details)


def worth_retrying(err: WseError, codes: Collection[int] = RECONNECT_CODES) -> bool:
    """Whether a reconnect attempt that failed with ``err`` should be followed by another.

    Yes when the server could not be reached or answered nothing (no close code), or closed
    with one of ``codes`` (by default those the reference reconnects after), or without a
    reason (no WSE server's answer). No when it refused (:class:`NotAuthorized`) or closed
    with a reason and a final code (``wse.protocol-error`` with 1000, say): trying again
    cannot help.
    """
    if not isinstance(err, ConnectionFailed):
        return False
    code = err.details.get("code")
    return code is None or code in codes or not err.details.get("reason")


class WseClient(Peer[ClientEvents]):
    """A WSE client on picows.

    ``async with WseClient(url) as client:`` closes the client when the block ends; connecting
    stays an explicit ``await client.connect(identity, meta)`` inside it, since it takes the
    identity and returns the welcome (and ``jump`` connects again with another).

    ``timeout`` bounds each RPC call and each connection attempt (seconds); 0 or None: no
    limit (JavaScript's ``tO: 0``).

    Handshake options, as a Node.js client sets them: ``headers`` (extra request headers:
    ``Authorization``, ``Cookie``, ``User-Agent``...; the WebSocket's own are refused),
    ``origin`` (the ``Origin`` header a browser would send), ``proxy`` (an ``http://`` or
    ``socks5://`` proxy URL), ``local_addr`` (the local ``(host, port)`` to connect from),
    ``ssl`` (TLS context for ``wss://``).

    ``limits``: a :class:`~wse_fast.Limits` (message size, pending bytes, keepalive, close
    timeout), the same object a server takes.

    Keepalive: when nothing has arrived from the server for ``ping_interval`` seconds (default
    20), the client pings it, and drops the connection when no pong comes within
    ``ping_timeout`` (default 20, at most ``ping_interval``), reporting ``closed`` with code
    1006 and reason ``wse.client.ping-timeout``. A dead server or a silent network path is so
    noticed within ``ping_interval + ping_timeout``, and then handled like any lost socket.
    ``Limits(ping_interval=None)`` turns keepalive off.

    Reconnect: ``reconnect`` is a :class:`~wse_fast.Reconnect` (by default ``Reconnect()``:
    a connection lost with one of the reference's reconnect codes, 1005, 1006, 1011-1014 and
    4000, is re-established after 1 s plus up to 1 s at random, the window doubling after
    each failed attempt up to 30 s), or None: never. ``Reconnect(keep_trying=True)`` is
    JavaScript's behaviour: ``connect`` itself keeps trying until the server is up.
    """

    when: ClientEvents

    def __init__(
        self,
        url: str,
        *,
        protocol: WireProtocol | None = None,
        timeout: float | None = 20.0,
        reconnect: Reconnect | None = Reconnect(),  # noqa: B008 (frozen: safe to share)
        ssl: ssl_module.SSLContext | None = None,
        limits: Limits | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        origin: str | None = None,
        proxy: str | None = None,
        local_addr: tuple[str, int] | None = None,
    ) -> None:
        if not isinstance(reconnect, Reconnect | None):
            # 0.1 took ``reconnect=True/False`` and seven flat ``reconnect_*`` keywords
            raise TypeError("reconnect takes a Reconnect(...) or None")
        super().__init__(protocol, mask=True)
        self.url = url
        self.timeout = timeout
        #: How a lost connection is re-established; None: it is not.
        self.reconnect = reconnect
        self.ssl = ssl
        self.limits = limits or Limits()
        settings = self.limits.compression
        #: permessage-deflate as this client offers it; None: not offered
        self.deflate = PerMessageDeflate(settings) if settings is not None else None
        # frames before masking and compression, for a connection that compresses
        self.plain_encode = FrameEncoder(self.protocol, mask=False)
        pairs = list(headers.items() if isinstance(headers, Mapping) else headers or ())
        for name, _ in pairs:
            if name.lower() in HANDSHAKE_HEADERS:
                raise ValueError(f"{name} is written by the WebSocket handshake itself")
        if origin is not None:
            pairs.append(("Origin", origin))
        pairs.append(("Sec-WebSocket-Protocol", self.protocol.name))
        if self.deflate is not None:
            pairs.append(("Sec-WebSocket-Extensions", self.deflate.offer()))
        #: The upgrade request's extra headers (with ``Origin`` and the subprotocol).
        self.headers: tuple[tuple[str, str], ...] = tuple(pairs)
        self.proxy = proxy
        self.local_addr = local_addr

        self.when = ClientEvents()
        self.status = WSE_STATUS.IDLE
        self.identity: Any = None
        self.meta: dict[str, Any] = {}

        self._solver: Callable[..., Any] | None = None
        self._link: _Link | None = None
        self._closing = False  # close() was asked: no reconnect
        self._jumping = False
        self._reconnector: asyncio.Task[None] | None = None

    # ---- configuration ---------------------------------------------------------------------

    def challenge(self, solver: Callable[..., Any]) -> None:
        """``solver(quest, solve)``: answer the server's challenge with ``solve(answer)``."""
        if not callable(solver):
            raise WseError(WSE_ERROR.INVALID_CRA_HANDLER)
        self._solver = solver

    # ---- life cycle ------------------------------------------------------------------------

    async def connect(self, identity: Any = None, meta: dict[str, Any] | None = None) -> Any:
        """Connects and authenticates; returns the server's welcome payload.

        Raises :class:`NotAuthorized` when refused, :class:`ConnectionFailed` when there is
        no connection (socket, upgrade, subprotocol, no welcome in time, closed before the
        welcome: then with the close ``code`` and ``reason`` in its details), and
        :class:`AlreadyConnected` while connected, connecting or re-connecting (the reconnect
        owns the socket: ``close`` first to connect anew). With ``Reconnect(keep_trying=True)``,
        a failed attempt is followed by others until one succeeds.
        """
        if self.status in (WSE_STATUS.READY, WSE_STATUS.CONNECTING, WSE_STATUS.RE_CONNECTING):
            raise AlreadyConnected()
        self.identity = identity
        self.meta = dict(meta or {})
        self._closing = False
        self._set_status(WSE_STATUS.CONNECTING)
        try:
            try:
                return await self._attempt()
            except WseError as err:
                reconnect = self.reconnect
                if reconnect is None or not reconnect.keep_trying:
                    raise
                if not worth_retrying(err, reconnect.codes):
                    raise
                self._attempt_failed(err)
            retrying = self._reconnector = asyncio.ensure_future(self._retry(0))
            try:
                return await retrying
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # connect itself was cancelled
                raise ConnectionFailed({"error": "closed while connecting"}) from None
            finally:
                if self._reconnector is retrying:
                    self._reconnector = None
        except BaseException:
            self._set_status(WSE_STATUS.OFFLINE)
            raise

    async def close(self, reason: str = WSE_REASON.BY_CLIENT) -> None:
        """Closes with code 1000 and ``reason``, and stops reconnecting."""
        self._closing = True
        if self._reconnector is not None:
            self._reconnector.cancel()
            self._reconnector = None
        link = self._link
        if link is not None and link.endpoint is not None:
            link.close(CLOSE_NORMAL, reason)
            await asyncio.shield(link.closed)
        self._set_status(WSE_STATUS.OFFLINE)

    async def __aenter__(self) -> Self:
        return self

    async def jump(self, url: str, identity: Any = None, meta: dict[str, Any] | None = None) -> Any:
        """Leaves the current server (close 4000 ``jump``) and connects to ``url``."""
        link = self._link
        self._jumping = True
        try:
            if link is not None and link.endpoint is not None:
                link.close(CLOSE_JUMP, JUMP_REASON)
                await asyncio.shield(link.closed)
        finally:
            self._jumping = False
        self.url = url
        self._set_status(WSE_STATUS.OFFLINE)
        return await self.connect(
            self.identity if identity is None else identity, self.meta if meta is None else meta
        )

    # ---- messages and calls ----------------------------------------------------------------

    def send(self, type: str, payload: Any = None) -> None:
        """Sends a message; raises :class:`ConnectionNotReady` before the welcome (and reports
        it through ``error``, as JavaScript does)."""
        self._ready_link().send(type, payload, None)

    async def call(self, rp: str, payload: Any = None, timeout: float | None = None) -> Any:
        """Calls server procedure ``rp`` and returns its result.

        Raises :class:`RpcError` when the server answers with an error, :class:`RpcTimeout`
        after ``timeout`` (None: the client's; 0: no limit), :class:`RpcDisconnected` when
        the connection closes first, :class:`ConnectionNotReady` before the welcome (also
        reported through ``error``).
        """
        link = self._ready_link()
        stamp, future = link.pending.open(deadline(self.timeout, timeout))
        link.send(rp, payload, stamp)
        return await future

    # ---- internals -------------------------------------------------------------------------

    def _ready_link(self) -> _Link:
        link = self._link
        if (
            link is None
            or not link.session.ready
            or link.endpoint is None
            or not link.endpoint.open
        ):
            err = ConnectionNotReady()
            self.when.emit_unless_within("error", err)
            raise err
        return link

    async def _attempt(self) -> Any:
        link = _Link(self, self._handler_failed, self._solve, self._link_closed)
        limits, deflate = self.limits, self.deflate

        def listener(request: Any, response: Any) -> PicowsListener:
            # picows's two-argument factory: made once the server's answer has arrived
            agreement = None
            if deflate is not None:
                try:
                    agreement = deflate.accept(
                        response.headers.getall("Sec-WebSocket-Extensions", [])
                    )
                except ValueError as exc:
                    link.bad_extensions = str(exc)  # the connection fails below
            if agreement is None:
                return PicowsListener(
                    Endpoint(
                        link,
                        limits.max_message_size,
                        True,
                        limits.close_timeout,
                        limits.max_pending_bytes,
                    )
                )
            assert deflate is not None
            link.compressor = deflate.compressor(agreement, client_side=True)
            return PicowsListener(
                DeflateEndpoint(
                    link,
                    limits.max_message_size,
                    True,
                    limits.close_timeout,
                    limits.max_pending_bytes,
                    compressor=None,  # the link compresses before masking
                    inflater=deflate.inflater(agreement, client_side=True),
                    inflate_limit=limits.max_message_size,
                )
            )

        limit = deadline(self.timeout, None)
        options: dict[str, Any] = {}
        if self.local_addr is not None:
            options["local_addr"] = self.local_addr  # to loop.create_connection
        try:
            transport, _ = await ws_connect(
                listener,
                self.url,
                ssl_context=self.ssl,
                extra_headers=self.headers,
                proxy=self.proxy,
                websocket_handshake_timeout=limit,
                enable_auto_pong=False,  # pongs are masked with CSPRNG keys by the endpoint
                # picows writes its keepalive pings itself, masked with its rand() key. They
                # carry no payload, so there are no bytes for a predictable key to expose
                # (the masking of RFC 6455 §10.3 guards payloads chosen by an attacker).
                # With auto-pong off, the server's pong is still consumed by picows while a
                # ping is outstanding, and a stray pong reaches the endpoint, which drops it.
                enable_auto_ping=self.limits.ping_interval is not None,
                auto_ping_idle_timeout=self.limits.ping_interval or self.limits.ping_timeout,
                auto_ping_reply_timeout=self.limits.ping_timeout,
                max_frame_size=self.limits.max_message_size,
                use_aiofastnet=False,
                **options,
            )
        except (TimeoutError, OSError, WSError) as exc:
            raise self._socket_failed(ConnectionFailed({"error": repr(exc)})) from exc
        if transport.response is None:
            # picows's ws_connect returns, without raising, a transport whose server hung up
            # before answering the upgrade (a server going down, or a proxy without backend)
            raise self._socket_failed(ConnectionFailed({"error": "closed during the upgrade"}))
        link.transport = transport
        self._link = link
        if link.bad_extensions is not None:  # RFC 6455 §4.1: fail the WebSocket connection
            link.give_up(CLOSE_PROTOCOL_ERROR, "")
            raise self._socket_failed(ConnectionFailed({"error": link.bad_extensions}))
        agreed = transport.response.headers.get("Sec-WebSocket-Protocol")
        if agreed != self.protocol.name:
            link.give_up(CLOSE_NORMAL, WSE_REASON.PROTOCOL_ERR)
            detail = f"server chose subprotocol {agreed!r}"
            raise self._socket_failed(ConnectionFailed({"error": detail}))
        self.when.emit("connected")
        link.send_frame(link.session.hello(self.identity, self.meta))
        try:
            welcome = await asyncio.wait_for(asyncio.shield(link.welcome), limit)
        except TimeoutError:
            link.give_up(CLOSE_NORMAL, WSE_REASON.BY_CLIENT)
            raise ConnectionFailed({"error": "no welcome in time"}) from None
        if link.closed.done():
            # closed between the welcome and this: ``closed`` has been reported while the
            # client was not ready yet, so it must not become ready now
            code, reason = link.closed.result()
            raise ConnectionFailed({"code": code, "reason": reason, "error": "closed at once"})
        self._set_status(WSE_STATUS.READY)
        self.when.emit("ready", welcome)
        return welcome

    def _solve(self, link: _Link, quest: Any) -> None:
        if self._solver is None:
            self.when.emit("error", WseError(WSE_ERROR.INVALID_CRA_HANDLER, {"quest": quest}))
            link.close(CLOSE_NORMAL, WSE_REASON.BY_CLIENT)
            return

        def solve(answer: Any) -> None:
            if link.endpoint is not None and link.endpoint.open:
                frame = link.session.answer(answer)
                if frame is not None:
                    link.send_frame(frame)

        run_handler(self._solver, (quest, solve), self._handler_failed)

    def _socket_failed(self, err: ConnectionFailed) -> ConnectionFailed:
        """Reports an attempt whose WebSocket did not open (``wse.client.ws-error``) through
        ``error``, as JavaScript's socket ``error`` event does; returns it to be raised."""
        self.when.emit("error", err)
        return err

    def _attempt_failed(self, err: WseError) -> None:
        """With ``keep_trying``: reports a failed attempt as JavaScript's client does, as a
        close (a socket that never opened closes with 1006 and no reason; one that opened
        was reported when it closed) and a status going OFFLINE, then RE_CONNECTING."""
        if self.reconnect is None or not self.reconnect.keep_trying:
            return
        if err.details.get("code") is None:
            self.when.emit("closed", CLOSE_ABNORMAL, "")
        self._set_status(WSE_STATUS.OFFLINE)
        self._set_status(WSE_STATUS.RE_CONNECTING)

    def _handler_failed(self, exc: BaseException) -> None:
        err = WseError(WSE_ERROR.MESSAGE_PROCESSING_ERROR, {"error": repr(exc)})
        err.__cause__ = exc
        self.when.emit("error", err)

    def _link_closed(self, link: _Link, code: int, reason: str) -> None:
        if link is not self._link:
            return
        was_ready = self.status == WSE_STATUS.READY
        if was_ready:
            self.when.forget("ready")  # a handler added from now on waits for the next welcome
        self.when.emit("closed", code, reason)
        if self._closing or self._jumping:
            return
        reconnect = self.reconnect
        if was_ready and reconnect is not None and code in reconnect.codes:
            if reconnect.keep_trying:  # as JavaScript's client reports every close
                self._set_status(WSE_STATUS.OFFLINE)
            self._set_status(WSE_STATUS.RE_CONNECTING)
            self._reconnector = asyncio.ensure_future(self._reconnect_loop())
        elif was_ready:
            self._set_status(WSE_STATUS.OFFLINE)

    async def _reconnect_loop(self) -> None:
        # One loop per loss: the attempt count starts at 0 again after a successful connection.
        try:
            await self._retry(0)
        except WseError as err:  # refused: trying again cannot help
            self._set_status(WSE_STATUS.OFFLINE)
            self.when.emit("error", err)
        except Exception as exc:
            # Not a known way for a connection to fail: stop, and say so, rather than leave
            # the client RE_CONNECTING with no task behind it.
            failure = ConnectionFailed({"error": repr(exc)})
            failure.__cause__ = exc
            self._set_status(WSE_STATUS.OFFLINE)
            self.when.emit("error", failure)
        finally:
            if self._reconnector is asyncio.current_task():
                self._reconnector = None

    async def _retry(self, attempt: int) -> Any:
        """Attempts, each after its backoff wait, until one is welcomed (its welcome) or fails
        in a way that another cannot mend (raised); ``attempt`` counts those already made."""
        reconnect = self.reconnect
        assert reconnect is not None  # only a client that reconnects retries
        while not self._closing:
            await asyncio.sleep(reconnect.wait(attempt))
            attempt += 1
            try:
                return await self._attempt()
            except WseError as err:
                if not worth_retrying(err, reconnect.codes):
                    raise
                self._attempt_failed(err)  # server still away: try again
        raise ConnectionFailed({"error": "closed while connecting"})

    def _set_status(self, status: str) -> None:
        if status != self.status:
            self.status = status
            self.when.emit("updated", status)
