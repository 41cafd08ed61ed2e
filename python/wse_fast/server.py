"""The WSE server: users with several connections, authentication, messages and RPC."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from functools import partial
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Self

from .authentication import Authentication, IdentifyRequest
from .cluster.broker import Broker, LocalBroker
from .connection import Connection, User
from .constants import CLOSE_NORMAL, CLOSE_SERVICE_RESTART, WSE_ERROR, WSE_REASON, Cid
from .errors import WseError
from .events import ServerEvents
from .handshake import HandshakeRequest, client_address, is_trusted, parse_networks
from .listener import Listener, refuse_removed_sockets
from .metrics import ServerMetrics
from .options import DEFAULT_GRACE, ClusterOptions, ServerLimits
from .peer import Peer
from .protocols import WireProtocol
from .registry import UserRegistry
from .sansio.deflate import Agreement, PerMessageDeflate
from .server_connection import ServerConnection
from .transport.admission import (
    CONTROL_ALLOWANCE,
    HTTP_REQUEST_MAX,
    Admission,
    ReadGuard,
    StrangerHold,
)
from .transport.asgi import AsgiApp
from .transport.endpoint import DeflateEndpoint, Endpoint
from .transport.group import EndpointGroup
from .transport.upgrade import agreed_subprotocol, offered_subprotocols

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("wse_fast")
#: What ``on_upgrade`` may answer: None to go on, or an HTTP status (and a body) to refuse;
#: an ``async`` hook answers the same once awaited.
UpgradeVerdict = int | tuple[int, str] | None
UpgradeHook = Callable[[HandshakeRequest], UpgradeVerdict | Awaitable[UpgradeVerdict]]


class WseServer(Peer[ServerEvents]):
    """A WSE server on its own listener (uvloop), or mounted in an ASGI or aiohttp application.

    ``identify(req)`` decides who a connection is (see :class:`IdentifyRequest`); it may be a
    coroutine function. ``port``, ``conn_per_user``, ``protocol`` and ``timeout``
    (server-to-client calls) are the JavaScript server's options; beyond them: ``host``
    (127.0.0.1 unless given), ``debug`` (send stack traces of failing RPC handlers to
    callers), ``ssl`` (own listener), ``limits`` (a :class:`~wse_fast.ServerLimits`: the
    transport limits shared with the client, and what strangers and handler tasks may cost).
    ``origins`` lists the ``Origin`` values allowed (others: HTTP 403); ``on_upgrade`` sees
    each upgrade request (:class:`HandshakeRequest`) and may refuse it with an HTTP status, or
    add headers to the 101 response; it may be a coroutine function, which has
    ``limits.handshake_timeout`` to answer (else HTTP 503) while the stranger counts;
    ``trusted_proxies`` (addresses or networks) are believed about the client's address
    (``X-Forwarded-For``). ``cluster``: NATS URL(s) to share users, sends, broadcasts, the
    per-user limit and calls with other servers (see :meth:`join_cluster`). ``grace``: how
    long :meth:`close` lets running handlers finish (seconds, default
    :data:`DEFAULT_GRACE`).
    """

    def __init__(
        self,
        identify: Callable[[IdentifyRequest], Any] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 4200,
        conn_per_user: int = 1,
        protocol: WireProtocol | None = None,
        timeout: float = 20.0,
        limits: ServerLimits | None = None,
        ssl: ssl_module.SSLContext | None = None,
        debug: bool = False,
        origins: Collection[str] | None = None,
        on_upgrade: UpgradeHook | None = None,
        trusted_proxies: Collection[str] = (),
        cluster: str | Sequence[str] | None = None,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        if identify is None:
            raise WseError(WSE_ERROR.IDENTIFY_HANDLER_MISSING)
        if conn_per_user < 1:
            raise ValueError("conn_per_user must be at least 1")
        if grace < 0:
            raise ValueError("grace must not be negative")
        self.identify = identify
        self.grace = grace
        self.host = host
        self.port = port
        super().__init__(protocol, mask=False, debug=debug)
        self.limits = limits = limits or ServerLimits()
        self.wire.auth_max_message_size = limits.auth_max_message_size
        self.timeout = timeout
        self.ssl = ssl
        self.origins = frozenset(origins) if origins is not None else None
        self.on_upgrade = on_upgrade
        self.trusted_proxies = parse_networks(trusted_proxies)
        is_proxy = partial(is_trusted, self.trusted_proxies)
        self.admission = Admission(
            limits.max_unauthenticated, limits.max_unauthenticated_per_ip, is_proxy
        )
        #: Answers an authenticated connection's calls in one codec call (None for a custom
        #: protocol); read once per message by ServerConnection.on_message.
        answerer = self.wire.call_answerer(self.procedures.handlers)
        self.answer_calls = None if answerer is None else answerer.answer
        # flow control reads these per handler task: kept at hand
        self.max_in_flight = limits.max_in_flight
        self.max_tasks = limits.max_tasks

        self.when = ServerEvents()
        #: What the server counts (see :mod:`wse_fast.metrics`): ``/metrics`` and ``/health``.
        #: Made first (it keeps the server, reads it only when asked), so that every part is
        #: handed it whole when made.
        self.metrics = ServerMetrics(self)
        self.registry = UserRegistry(self.encode, conn_per_user, self.metrics)
        self.clients: dict[Any, User] = self.registry.clients  # users with open connections
        # every open socket, authenticated or not
        self.connections: dict[str, ServerConnection] = {}
        self.challenger: Callable[..., Any] | None = None
        self.authentication = Authentication(self)

        # what a stranger may send before it is accepted: the upgrade request, the hi and a
        # challenge answer, and a few control frames
        self.stranger_budget = (
            HTTP_REQUEST_MAX + 2 * limits.auth_max_message_size + CONTROL_ALLOWANCE
        )
        self._ids = itertools.count(1)
        #: permessage-deflate as this server agrees to it; None: offers are declined
        self.deflate = None if limits.compression is None else PerMessageDeflate(limits.compression)
        self._live = EndpointGroup()  # endpoints of accepted connections
        #: Writes a frame to every accepted connection here (what a broker delivers to
        #: all): the group's own write, so that a broadcast costs no call more than it.
        self.deliver_to_all: Callable[[bytes], None] = self._live.write_all
        #: Whether a user has a connection here (the dict's own lookup: a send asks it).
        self.has_user: Callable[[Any], bool] = self.registry.clients.__contains__
        self._asgi: AsgiApp | None = None
        self._listener: Listener | None = None  # its own, from start()
        self._attached: asyncio.Future[None] | None = None  # the broker's link, once started
        self.use_broker(LocalBroker(self))  # alone: the in-process broker
        if cluster is not None:
            self.join_cluster(cluster)
        self._all_closed: asyncio.Event | None = None
        self.tasks_running = 0  # handler tasks of every connection
        self.closing = False  # close() has begun: /health answers 503, no new work starts
        # while closing: set once no handler task runs (none starts again until start())
        self._idle: asyncio.Event | None = None
        self.saturated = False  # tasks_running has reached max_tasks (read per message)
        self._waiting_for_tasks: dict[ServerConnection, None] = {}  # paused by max_tasks, in order

    @property
    def conn_per_user(self) -> int:
        """How many connections one user may have open; a new one drops the oldest."""
        return self.registry.conn_per_user

    @conn_per_user.setter
    def conn_per_user(self, limit: int) -> None:
        self.registry.conn_per_user = limit

    # ---- configuration ---------------------------------------------------------------------

    def use_challenge(self, generator: Callable[..., Any]) -> None:
        """``generator(identity, meta, quest, refuse)``: call ``quest(q)`` to challenge the
        client with ``q`` (identify then gets ``req.challenge``), or ``refuse()``."""
        if not callable(generator):
            raise WseError(WSE_ERROR.INVALID_CRA_GENERATOR)
        self.challenger = generator

    def use_broker(self, broker: Broker) -> None:
        """Makes ``broker`` (see :mod:`wse_fast.cluster.broker`) carry what this server
        publishes, its presence and its calls to users (before the server starts). By
        default the in-process :class:`~wse_fast.cluster.broker.LocalBroker`;
        :meth:`join_cluster` puts NATS's; any other implementation of the interface plugs in
        the same way. The broker answers through this server's
        :class:`~wse_fast.cluster.broker.BrokerHandler` methods."""
        if self._attached is not None:
            raise RuntimeError("the broker is chosen before the server starts")
        self.broker = broker
        self.presence = broker.presence
        # bound once: a broadcast and a send each cost one call into the broker
        self._publish_all = broker.publish_all
        self._publish_user = broker.publish_user
        self._reaches = broker.presence.reaches

    @property
    def cluster(self) -> Broker | None:
        """The broker that links this server to other nodes (its ``node``, ``healthy``,
        ``lost`` and ``refused``); None when the server is alone (in-process broker)."""
        broker = self.broker
        return None if broker.node is None else broker

    def join_cluster(
        self, urls: str | Sequence[str], options: ClusterOptions | None = None
    ) -> None:
        """Makes this server one node of a cluster on NATS (before it starts): sends to a user,
        broadcasts, ``drop_client``, ``conn_per_user``, :meth:`online` and :meth:`call` then
        span every node. ``urls``: NATS server URL(s); ``options``: a
        :class:`~wse_fast.ClusterOptions` (the node's name, the subjects' prefix, how soon a
        dead node stops counting, NATS's own TLS and credentials...). Needs the ``cluster``
        extra (nats-py)."""
        from .cluster.nats_cluster import NatsCluster  # nats-py is optional

        if self._attached is not None:
            raise RuntimeError("join_cluster comes before the server starts")
        broker = NatsCluster(
            self, [urls] if isinstance(urls, str) else list(urls), options or ClusterOptions()
        )
        self.use_broker(broker)

    async def attach(self) -> None:
        """Starts what the server needs beside its connections (its broker), once: by
        :meth:`start`, or by a mounted server's first connection."""
        attached = self._attached
        if attached is None:
            attached = self._attached = asyncio.get_running_loop().create_future()
            try:
                await self.broker.start()
            except BaseException as exc:
                self._attached = None
                attached.set_exception(exc)
                attached.exception()  # retrieved: the caller gets it raised
                raise
            attached.set_result(None)
        elif not attached.done():
            await asyncio.shield(attached)

    # ---- life cycle ------------------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None) -> None:
        """Starts listening on every path; ``self.port`` holds the bound port (useful with
        ``port=0``). Several servers share a port by path through a
        :class:`~wse_fast.Listener` instead.

        ``sock``: an already bound socket to serve on instead (host and port are then unused),
        for example one inherited from a process manager.
        """
        # before the broker: a cluster node that cannot listen must not join first
        refuse_removed_sockets()
        self.closing = False  # started again after a close: /health answers 200 again
        self.saturated = self.tasks_running >= self.max_tasks
        self._idle = self._all_closed = None
        await self.attach()
        listener = Listener({None: self}, host=self.host, port=self.port, ssl=self.ssl)
        await listener.start(sock)
        self._listener = listener
        self.port = listener.port

    async def close(
        self,
        code: int = CLOSE_SERVICE_RESTART,
        reason: str = WSE_REASON.BY_SERVER,
        *,
        grace: float | None = None,
    ) -> None:
        """Stops the server gracefully, then closes every connection with a close handshake.

        In order: no more connections are accepted (when started by :meth:`start`; a mounted
        server or one on a shared :class:`~wse_fast.Listener` refuses upgrades with 503);
        nothing more read from the open ones starts a handler (what was read and not started
        is dropped, and reading pauses); the handlers already running (procedures, message
        handlers, ``identify``) and the calls other nodes of a cluster made to this node's
        users get up to ``grace`` seconds (None: the server's ``grace``) to finish, and
        their answers are sent; those still running then are cancelled (a cancelled call is
        answered ``wse.server.rp.failed``, "the call was cancelled"); then every connection
        is closed, and the cluster link last. So a call the server did not answer never
        started. Reading goes on only where a handler waits for a client's answer.

        The default code, 1012 (service restart), is one that WSE clients with reconnect on
        (wse-fast's default; ``re: true`` in JavaScript, whose default is off) reconnect after.
        Mounted (ASGI, aiohttp) or on a shared :class:`~wse_fast.Listener`, it closes the
        connections of this server; call it from the application's shutdown, before the host
        closes its connections (aiohttp's ``on_shutdown`` comes before; uvicorn closes every
        WebSocket before the ASGI lifespan's shutdown, see :mod:`wse_fast.transport.asgi`).
        """
        grace = self.grace if grace is None else grace
        self.closing = True
        self.saturated = True  # every message now takes the paused path, which starts nothing
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop_listening()
        self._waiting_for_tasks.clear()  # none of them is resumed now
        for conn in list(self.connections.values()):
            conn.stop_reading()
        await self._finish_work(grace)
        if self.connections:
            if self._all_closed is None or self._all_closed.is_set():
                self._all_closed = asyncio.Event()  # (else one a close() under way awaits)
            for conn in list(self.connections.values()):
                if conn.endpoint is not None:
                    # the peer's answering Close must be read (what comes before it is
                    # read too, and not run: the server is closing)
                    conn.endpoint.resume_reading()
                conn.drop(reason, code)
            try:
                await asyncio.wait_for(self._all_closed.wait(), self.limits.close_timeout + 1)
            except TimeoutError:
                for conn in list(self.connections.values()):
                    if conn.endpoint is not None:
                        conn.endpoint.abort()
        if listener is not None:
            await listener.wait_closed()
        if self._attached is not None:
            await self.broker.stop()
            self._attached = None

    async def _finish_work(self, grace: float) -> None:
        """The drain: waits up to ``grace`` seconds for the running handler tasks and the
        calls other nodes made to this node's users to end; then cancels the tasks still
        running and waits (up to ``close_timeout``) until their cancellation is answered, so
        that those answers leave before the Close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._idle is None:  # (shared with a close() already under way)
            self._idle = asyncio.Event()
        if self.tasks_running and grace > 0:
            log.info(
                "closing: up to %s s for %d running handler task(s) to finish",
                grace,
                self.tasks_running,
            )
            try:
                async with asyncio.timeout_at(deadline):
                    await self._idle.wait()
            except TimeoutError:
                log.warning(
                    "%d handler task(s) still running after the grace of %s s: cancelled",
                    self.tasks_running,
                    grace,
                )
        if self._attached is not None:
            await self.broker.finish_calls(deadline - loop.time())
        running = [task for conn in self.connections.values() for task in conn.cancel_tasks()]
        if running:
            await asyncio.wait(running, timeout=self.limits.close_timeout)

    async def __aenter__(self) -> Self:
        """``async with WseServer(identify, port=0) as server:`` starts it (see :meth:`start`);
        leaving the block closes it (see :meth:`close`)."""
        await self.start()
        return self

    def run(self) -> None:
        """Runs the server on uvloop until interrupted."""
        import uvloop

        async def main() -> None:
            await self.start()
            try:
                await asyncio.Event().wait()
            finally:
                await self.close()

        uvloop.run(main())

    # ---- sending ---------------------------------------------------------------------------

    def broadcast(self, type: str, payload: Any = None) -> None:
        """Sends to every connection of every user (on every node of a cluster); the frame is
        encoded once."""
        frame = self.encode(type, payload, None)
        self._publish_all(frame)  # alone: the endpoint group's write itself
        if self.metrics.counting:
            # once for all connections
            self.metrics.count_sent(type, len(frame), len(self._live))

    def send(self, cid: Cid, type: str, payload: Any = None) -> bool:
        """Sends to every device of user ``cid`` (as identify accepted it: ``1`` and ``"1"``
        are two users); False if the user is not connected here and there is no cluster to
        pass it to (in a cluster: True, and every node delivers it to the user's connections
        it has)."""
        if not self._reaches(cid):  # alone: has_user, the dict's own lookup
            return False
        frame = self.encode(type, payload, None)
        written = self._publish_user(cid, frame)  # alone: deliver_to_user itself
        if written and self.metrics.counting:
            self.metrics.count_sent(type, len(frame), written)
        return True

    def drop_client(self, cid: Cid, reason: str = WSE_REASON.BY_SERVER) -> None:
        """Closes every connection of user ``cid`` (on every node of a cluster)."""
        self.broker.drop_user(cid, reason)

    async def online(self, cid: Cid) -> int:
        """How many connections user ``cid`` has open (on every live node of a cluster)."""
        return await self.presence.online(cid)

    async def call(
        self, cid: Cid, rp: str, payload: Any = None, timeout: float | None = None
    ) -> Any:
        """Calls procedure ``rp`` on the newest connection of user ``cid``, wherever it lives;
        the same results and errors as :meth:`Connection.call` (``ConnectionNotReady`` when
        the user has none, also reported through the ``error`` event, alone)."""
        return await self.broker.call(cid, rp, payload, timeout)

    # ---- what the broker asks of this node (cluster.broker.BrokerHandler) ------------------
    # (deliver_to_all and has_user: attributes, bound in __init__)

    def deliver_to_user(self, cid: Cid, frame: bytes) -> int:
        client = self.clients.get(cid)
        return 0 if client is None else client.send_frame(frame)

    def drop_local_user(self, cid: Cid, reason: str) -> None:
        client = self.clients.get(cid)
        if client is not None:
            client.drop(reason)

    def local_connection(self, conn_id: str) -> ServerConnection | None:
        conn = self.connections.get(conn_id)
        if conn is None or not conn.session.valid or not conn.open:
            return None
        return conn

    def user_connections(self, cid: Cid) -> Sequence[Connection]:
        client = self.clients.get(cid)
        return () if client is None else tuple(client.conns.values())

    def local_users(self) -> list[Any]:
        return list(self.clients)

    def user_online(self, cid: Cid) -> None:
        self.when.emit("online", cid)

    def user_offline(self, cid: Cid) -> None:
        self.when.emit("offline", cid)

    def broker_error(self, error: WseError) -> None:
        self.when.emit("error", error, None)

    def broker_state(self, state: str) -> None:
        self.when.emit("cluster", state)

    # ---- mounting --------------------------------------------------------------------------

    @property
    def asgi(self) -> AsgiApp:
        """This server as an ASGI 3 application: a route ``WebSocketRoute("/ws", server.asgi)``
        in Starlette or FastAPI (``routes=[...]``, or ``app.router.routes.append(...)``), or
        served alone (``uvicorn module:app`` with ``app = server.asgi``). No :meth:`start` is
        needed; call :meth:`close` from the application's shutdown (lifespan)."""
        if self._asgi is None:
            self._asgi = AsgiApp(self)
        return self._asgi

    async def aiohttp_handler(self, request: web.Request) -> web.StreamResponse:
        """This server as an aiohttp handler: ``app.router.add_get("/ws",
        server.aiohttp_handler)``. No :meth:`start` is needed; call :meth:`close` from the
        application's ``on_shutdown``."""
        from .transport import aiohttp as aiohttp_transport  # aiohttp is optional

        return await aiohttp_transport.handle(self, request)

    # ---- upgrades (every transport) --------------------------------------------------------

    @property
    def upgrade_is_async(self) -> bool:
        """Whether ``on_upgrade`` is a coroutine function: the own listener then holds each
        upgrade request until the hook has answered (see :meth:`vet_upgrade`)."""
        hook = self.on_upgrade
        # an instance whose __call__ is a coroutine function counts too
        return hook is not None and (
            inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(type(hook).__call__)
        )

    def admit(
        self,
        target: str,
        headers: Mapping[str, str],
        peer: Any,
        stranger: StrangerHold,
        offered: Collection[str],
        native: Any = None,
    ) -> ServerConnection | tuple[int, str]:
        """Decides an upgrade request at once: a new connection, or the HTTP status (and
        body) that refuses it. ``peer`` is the socket's peer address, ``stranger`` what counts
        and bounds the socket until it is accepted, ``offered`` the subprotocols the client
        offered, ``native`` the transport's own request (what ``HandshakeRequest.native``
        shows). An ``on_upgrade`` that answers with an awaitable here is refused with 500:
        the transports that can wait use :meth:`admit_async` or :meth:`vet_upgrade`."""
        screened = self._screen(target, headers, peer, stranger, native)
        if isinstance(screened, tuple):
            return screened
        if self.on_upgrade is not None:
            try:
                verdict = self.on_upgrade(screened)
            except Exception:
                log.exception("on_upgrade failed; the upgrade is refused")
                return HTTPStatus.INTERNAL_SERVER_ERROR, ""
            if inspect.isawaitable(verdict):
                if inspect.iscoroutine(verdict):
                    verdict.close()  # never awaited: no "was never awaited" warning
                log.error("on_upgrade answered an awaitable: declare it with async def")
                return HTTPStatus.INTERNAL_SERVER_ERROR, ""
            refusal = _judged(verdict)
            if refusal is not None:
                return refusal
        return self._open(screened, stranger, offered)

    async def admit_async(
        self,
        target: str,
        headers: Mapping[str, str],
        peer: Any,
        stranger: StrangerHold,
        offered: Collection[str],
        native: Any = None,
    ) -> ServerConnection | tuple[int, str]:
        """:meth:`admit` for a transport whose upgrade may wait (ASGI, aiohttp): an
        ``on_upgrade`` that answers with an awaitable is awaited (see :meth:`_ask_hook`)."""
        screened = self._screen(target, headers, peer, stranger, native)
        if isinstance(screened, tuple):
            return screened
        refusal = await self._ask_hook(screened)
        if refusal is not None:
            return refusal
        return self._open(screened, stranger, offered)

    async def vet_upgrade(
        self, target: str, headers: Mapping[str, str], stranger: StrangerHold, peer: Any
    ) -> HandshakeRequest | tuple[int, str]:
        """The own listener's first half of an upgrade with an ``async`` ``on_upgrade``, run
        while the listener holds the request back: the request screened and the hook
        awaited. :meth:`upgrade` finishes it with what this answered (the guard's
        ``vetted``)."""
        screened = self._screen(target, headers, peer, stranger, None)
        if isinstance(screened, tuple):
            return screened
        refusal = await self._ask_hook(screened)
        return screened if refusal is None else refusal

    def _screen(
        self,
        target: str,
        headers: Mapping[str, str],
        peer: Any,
        stranger: StrangerHold,
        native: Any,
    ) -> HandshakeRequest | tuple[int, str]:
        """What every upgrade passes before ``on_upgrade``: the origin, and the count of a
        client that a trusted proxy names; none while the server drains (see :meth:`close`):
        a client comes back to another server."""
        if self.closing:
            return _SHUTTING_DOWN
        if self.origins is not None and headers.get("Origin") not in self.origins:
            return HTTPStatus.FORBIDDEN, "origin not allowed"
        remote = client_address(peer, headers, self.trusted_proxies)
        if _forwarded(remote, peer):  # named by a trusted proxy: counted under the client now
            if not self.admission.admit_address(remote[0]):
                return HTTPStatus.TOO_MANY_REQUESTS, "too many connections authenticating"
            stranger.counted_address = remote[0]
        return HandshakeRequest(target, headers, peer, remote, native)

    async def _ask_hook(self, handshake: HandshakeRequest) -> tuple[int, str] | None:
        """``on_upgrade``'s refusal of ``handshake``, or None to go on. An awaitable answer
        has ``limits.handshake_timeout`` to come (ws's asynchronous ``verifyClient`` has no
        limit, but a stranger must not hold an upgrade open for ever): past it, 503."""
        if self.on_upgrade is None:
            return None
        try:
            verdict = self.on_upgrade(handshake)
            if inspect.isawaitable(verdict):
                deadline = asyncio.timeout(self.limits.handshake_timeout)
                try:
                    async with deadline:
                        verdict = await verdict
                except TimeoutError:
                    if not deadline.expired():
                        raise  # the hook's own timeout: a failure like any other
                    log.warning("on_upgrade did not answer in time; the upgrade is refused")
                    return HTTPStatus.SERVICE_UNAVAILABLE, ""
                if self.closing:
                    # close() began while the hook ran: its drain has already looked at the
                    # connections, so one opened now would outlive the close
                    return _SHUTTING_DOWN
        except Exception:
            log.exception("on_upgrade failed; the upgrade is refused")
            return HTTPStatus.INTERNAL_SERVER_ERROR, ""
        return _judged(verdict)

    def _open(
        self, handshake: HandshakeRequest, stranger: StrangerHold, offered: Collection[str]
    ) -> ServerConnection:
        """The connection of an upgrade that passed."""
        conn = ServerConnection(self, f"{next(self._ids):x}")
        conn.stranger = stranger
        conn.handshake = handshake
        if _forwarded(handshake.remote_addr, handshake.peer_addr):
            conn.forwarded_addr = handshake.remote_addr
        if agreed_subprotocol(self.protocol.name, offered) is None:
            # Like the reference: upgrade, then close with wse.protocol-error, so that a WSE
            # client sees a reason it knows (an HTTP 400 would only say that the upgrade failed).
            conn.offered_protocols = ", ".join(offered)
        return conn

    def endpoint_options(
        self, conn: ServerConnection, stranger: StrangerHold, peer: Any
    ) -> dict[str, Any]:
        """What a message-level transport's endpoint takes from this server."""
        return {
            "handler": conn,
            "max_message_size": self.limits.max_message_size,
            "max_pending_bytes": self.limits.max_pending_bytes,
            "close_timeout": self.limits.close_timeout,
            "remote_addr": peer,
            "ticket": stranger,
        }

    def upgrade(
        self,
        target: str,
        headers: Any,
        guard: ReadGuard,
    ) -> tuple[int, str] | tuple[Endpoint, list[tuple[str, str]]]:
        """An upgrade on wse-fast's own listener: :meth:`admit` (or what an async
        ``on_upgrade`` answered before, the guard's ``vetted``), then the connection's
        endpoint and the 101 response's headers besides the handshake's own
        (``Sec-WebSocket-Accept``, ``Upgrade``, ``Connection``), or the HTTP status and body
        that refuse it."""
        offered = offered_subprotocols(headers.getall("Sec-WebSocket-Protocol", ()))
        vetted = guard.vetted  # what vet_upgrade answered, with an async on_upgrade
        if vetted is None:
            verdict = self.admit(target, headers, guard.peer, guard, offered)
        elif self.closing:  # close() began after the hook answered, before this
            verdict = _SHUTTING_DOWN
        elif isinstance(vetted, HandshakeRequest):
            verdict = self._open(vetted, guard, offered)
        else:
            verdict = vetted
        if isinstance(verdict, tuple):
            return verdict
        assert verdict.handshake is not None
        added = verdict.handshake.response_headers  # on_upgrade's, most often none
        limits = self.limits
        agreement = None
        if self.deflate is not None and verdict.offered_protocols is None:
            agreement = self.deflate.negotiate(headers.getall("Sec-WebSocket-Extensions", []))
        # handler, max_message_size, client_side, close_timeout, max_pending_bytes,
        # receive_buffer: the same for either kind of endpoint
        options = (
            verdict,
            limits.max_message_size,
            False,
            limits.close_timeout,
            limits.max_pending_bytes,
            limits.receive_buffer,
        )
        endpoint: Endpoint
        if agreement is None:
            endpoint = Endpoint(*options)
        else:
            assert self.deflate is not None
            endpoint = DeflateEndpoint(
                *options,
                compressor=self.deflate.compressor(agreement, client_side=False),
                inflater=self.deflate.inflater(agreement, client_side=False),
                # a stranger's compressed message inflates no further than a plain one may
                # be, and all of them together no further than it may send in all
                inflate_limit=limits.auth_max_message_size,
                inflate_budget=self.stranger_budget,
            )
        # (no subprotocol for a client that did not offer this server's)
        own = self._upgrade_headers(agreement) if verdict.offered_protocols is None else []
        return endpoint, [*own, *added]  # the handshake's headers first

    def _upgrade_headers(self, agreement: Agreement | None = None) -> list[tuple[str, str]]:
        """The headers of this server's 101 response besides the handshake's own."""
        headers = [("Sec-WebSocket-Protocol", self.protocol.name)]
        if agreement is not None:
            headers.append(("Sec-WebSocket-Extensions", agreement.header()))
        return headers

    # ---- connection life cycle (called by ServerConnection) -----------------------------------

    def connection_opened(self, conn: ServerConnection) -> None:
        """A connection's WebSocket is open (before authentication)."""
        self.connections[conn.conn_id] = conn
        self.metrics.opened += 1

    def report(self, error: WseError, conn: ServerConnection) -> None:
        """Reports a problem of one connection through the ``error`` event."""
        self.when.emit("error", error, conn)

    def refuse(self, conn: ServerConnection, code: int, reason: str) -> None:
        """Ends a connection that was never accepted: its Close frame goes out and the socket
        closes at once, without waiting for the stranger's answer; what it sent is released,
        and what it sent after is not decoded."""
        if conn.open:  # counted once, however many reasons to refuse it come up
            self.metrics.count_refused(reason)
        conn.forget_stranger()
        conn.session.closed()
        if conn.endpoint is not None:
            conn.endpoint.close(code, reason, wait=False)

    def admitted(self, conn: ServerConnection, cid: Cid, welcome: Any) -> None:
        """identify accepted ``conn`` as user ``cid`` (kept as given: any hashable value):
        welcome it, register it, tell the application, and drop the user's oldest
        connections over ``conn_per_user``."""
        if not conn.open:
            return  # closed (or timed out) while identify was running
        try:  # before any state changes: a welcome that cannot be sent accepts nobody
            self.presence.check_cid(cid)  # one the broker cannot carry accepts nobody
            welcome_frame = conn.session.accept(welcome)
        except Exception as exc:
            self.authentication.failed(conn, exc)
            return
        conn.accepted(cid)
        endpoint = conn.endpoint
        if isinstance(endpoint, DeflateEndpoint):
            endpoint.accepted(self.limits.max_message_size)
        client, joined, excess = self.registry.add(conn, cid)
        conn.client = client
        self._live.add(conn.conn_id, conn.endpoint)  # type: ignore[arg-type]  # open: it has one
        conn.send_frame(welcome_frame)
        if joined:
            self.when.emit("joined", client, conn.meta)
        self.presence.added(cid, conn.conn_id, joined)  # it says when the user is online
        self.when.emit("connected", conn)
        for old in excess:  # over the limit: the oldest devices go, the newest stays
            old.drop(WSE_REASON.CLIENTS_CONCURRENCY, CLOSE_NORMAL)

    def accepted_connections(self) -> int:
        """How many open connections are accepted (the rest of ``connections`` are
        authenticating)."""
        return len(self._live)

    # ---- handler tasks (counted by ServerConnection) ---------------------------------------------

    def task_started(self) -> None:
        self.tasks_running += 1
        self.saturated = self.tasks_running >= self.max_tasks or self.closing

    def task_finished(self) -> None:
        self.tasks_running -= 1
        self.saturated = self.tasks_running >= self.max_tasks or self.closing
        if self._idle is not None and not self.tasks_running:
            self._idle.set()  # the drain is over (see close)
        waiting = self._waiting_for_tasks
        while waiting and self.tasks_running < self.max_tasks:
            conn = next(iter(waiting))
            del waiting[conn]
            conn.resume()

    def wait_for_tasks(self, conn: ServerConnection) -> None:
        """``conn`` stopped reading because the server runs ``max_tasks``: resumed, oldest
        first, as tasks end."""
        self._waiting_for_tasks[conn] = None

    def connection_closed(
        self, conn: ServerConnection, was_valid: bool, code: int, reason: str
    ) -> None:
        """A connection is gone (``was_valid``: it had been accepted)."""
        self.connections.pop(conn.conn_id, None)
        self._waiting_for_tasks.pop(conn, None)
        self._live.discard(conn.conn_id)
        left = self.registry.remove(conn)
        if was_valid:
            self.when.emit("disconnected", conn, code, reason)
        if left is not None:
            self.when.emit("left", left, code, reason)
        if (was_valid or left is not None) and conn.cid is not None:
            self.presence.removed(conn.cid, conn.conn_id, left is not None)  # and offline
        if self._all_closed is not None and not self.connections:
            self._all_closed.set()


#: The refusal of an upgrade while the server closes: a client comes back to another server.
_SHUTTING_DOWN = (HTTPStatus.SERVICE_UNAVAILABLE, "the server is shutting down")


def _forwarded(remote: tuple[str, int], peer: Any) -> bool:
    """Whether a trusted proxy named the client (an IPv6 peer has two more fields)."""
    return remote != tuple(peer[:2])


def _judged(verdict: object) -> tuple[int, str] | None:
    """``on_upgrade``'s answer as a refusal, or None to go on; an answer that is neither
    refuses with 500 (and says so in the log)."""
    if verdict is None:
        return None
    refusal = _http_refusal(verdict)
    if refusal is None:
        log.error("on_upgrade answered %r, not an HTTP error status", verdict)
        return HTTPStatus.INTERNAL_SERVER_ERROR, ""
    return refusal


def _http_refusal(verdict: object) -> tuple[int, str] | None:
    """``on_upgrade``'s answer as (status, body), or None when it is not an error status (or
    a status and a text)."""
    status, body = verdict if isinstance(verdict, tuple) and len(verdict) == 2 else (verdict, "")
    if type(status) is not int and not isinstance(status, HTTPStatus):
        return None
    if not isinstance(body, str) or not 400 <= status <= 599:
        return None
    return int(status), body
