"""What handlers get for one device of one user: :class:`Connection`.

The machinery behind it (transport events, authentication messages, flow control) is its
subclass :class:`~wse_fast.server_connection.ServerConnection`; handlers only ever need what
is here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .constants import CLOSE_NORMAL, WSE_REASON, Cid
from .errors import ConnectionNotReady
from .rpc import PendingCalls, deadline

if TYPE_CHECKING:
    from .ports import ConnectionHost, UserHost
    from .sansio.session import ServerSession
    from .transport.base import Transport


class Connection:
    """One WebSocket of a user (``client``): ``cid`` (the user's id, once accepted),
    ``conn_id`` (unique in its server), ``identity`` and ``meta`` (from the client's hi),
    ``remote_addr``, ``state`` (the application's own); ``send``, ``call`` and ``drop``."""

    __slots__ = (
        "_pending",
        "_server",
        "_state",
        "cid",
        "client",
        "conn_id",
        "endpoint",
        "forwarded_addr",
        "identity",
        "meta",
        "session",
    )

    def __init__(self, server: ConnectionHost, conn_id: str, session: ServerSession) -> None:
        self._server = server
        self.conn_id = conn_id
        self.session = session
        # the user's id as identify gave it to accept (any hashable value), once accepted
        self.cid: Cid = None  # None until accepted
        self.identity: Any = None
        self.meta: dict[str, Any] = {}
        self.client: User | None = None
        self.endpoint: Transport | None = None
        self.forwarded_addr: tuple[str, int] | None = None  # the client, as a trusted proxy says
        self._pending: PendingCalls | None = None  # made by the first server-to-client call
        self._state: dict[str, Any] | None = None  # made when first read

    @property
    def state(self) -> dict[str, Any]:
        """The application's own data for this connection (JavaScript handlers set properties
        on the connection object): a dict, made when first used, gone with the connection."""
        state = self._state
        if state is None:
            state = self._state = {}
        return state

    def __repr__(self) -> str:
        return f"<Connection {self.conn_id} cid={self.cid!r} {self.session.state.name}>"

    @property
    def remote_addr(self) -> Any:
        """The client's address: as a trusted proxy forwarded it, else the socket's peer (None
        once closed)."""
        if self.forwarded_addr is not None:
            return self.forwarded_addr
        return None if self.endpoint is None else self.endpoint.remote_addr

    @property
    def open(self) -> bool:
        """True until the connection closes or starts closing."""
        return self.endpoint is not None and self.endpoint.open

    def send(self, type: str, payload: Any = None) -> None:
        """Sends a message to this device."""
        if self.endpoint is not None:
            frame = self._server.encode(type, payload, None)
            self.endpoint.write(frame)
            metrics = self._server.metrics
            if metrics.counting:
                metrics.count_sent(type, len(frame))

    async def call(self, rp: str, payload: Any = None, timeout: float | None = None) -> Any:
        """Calls procedure ``rp`` on this device and returns its result; raises ``RpcError``,
        ``RpcTimeout``, ``RpcDisconnected`` or ``ConnectionNotReady`` (also reported through
        the server's ``error`` event). ``timeout``: seconds, None for the server's, 0 for no
        deadline (see :func:`deadline`)."""
        if not self.session.valid or self.endpoint is None or not self.endpoint.open:
            err = ConnectionNotReady({"rpc": rp})
            self._server.when.emit_unless_within("error", err, self)  # as JavaScript does
            raise err
        if self._pending is None:
            self._pending = PendingCalls(asyncio.get_running_loop())
        stamp, future = self._pending.open(deadline(self._server.timeout, timeout))
        frame = self._server.encode(rp, payload, stamp)
        self.endpoint.write(frame)
        metrics = self._server.metrics
        if metrics.counting:
            metrics.count_sent(rp, len(frame))
        return await future

    def drop(self, reason: str = WSE_REASON.BY_SERVER, code: int = CLOSE_NORMAL) -> None:
        """Closes this connection with ``code`` and ``reason``."""
        if self.endpoint is not None:
            self.endpoint.close(code, reason)

    def send_frame(self, frame: bytes) -> None:
        """Sends a frame the server's encoder built (one encoding for many connections)."""
        if self.endpoint is not None:
            self.endpoint.write(frame)


class User:
    """A user on the server (``cid``, as identify gave it to accept: any hashable value) and
    its open connections, oldest first; ``state`` is the application's own data for the user.
    (0.1 called it ``Client``, beside the unrelated ``WseClient``; that name stays as a
    deprecated alias for one release.)"""

    __slots__ = ("_conns", "_registry", "_state", "cid", "meta")

    def __init__(self, registry: UserHost, cid: Cid, first: Connection) -> None:
        self._registry = registry
        self.cid = cid
        self.meta = first.meta
        self._state: dict[str, Any] | None = None  # made when first read
        # A tuple, not a dict or a list: most users have one or two devices, and an idle
        # user's dict would cost more than its connection's own state (a one-item tuple is
        # 48 bytes, a list 80). Replaced, not changed, when a device comes or goes.
        self._conns: tuple[Connection, ...] = (first,)

    def __repr__(self) -> str:
        return f"<User {self.cid!r} conns={len(self._conns)}>"

    @property
    def state(self) -> dict[str, Any]:
        """The application's own data for this user (JavaScript handlers set properties on
        the user object): a dict, made when first used, kept while the user has a
        connection on this server (a user who leaves and comes back starts with a new one)."""
        state = self._state
        if state is None:
            state = self._state = {}
        return state

    @property
    def conns(self) -> Mapping[str, Connection]:
        """The user's open connections, conn_id to :class:`Connection`, oldest first.

        A read-only snapshot taken when read.
        """
        return MappingProxyType({conn.conn_id: conn for conn in self._conns})

    def send(self, type: str, payload: Any = None) -> None:
        """Sends to every device of this user; the frame is encoded once."""
        registry = self._registry
        frame = registry.encode(type, payload, None)
        self.send_frame(frame)
        metrics = registry.metrics
        if metrics is not None and metrics.counting:
            metrics.count_sent(type, len(frame), len(self._conns))

    def send_frame(self, frame: bytes) -> int:
        """Sends a frame the server's encoder built to every device of this user: to how
        many."""
        conns = self._conns
        for conn in conns:
            endpoint = conn.endpoint  # Connection.send_frame, inlined: once per device
            if endpoint is not None:
                endpoint.write(frame)
        return len(conns)

    def drop(self, reason: str = WSE_REASON.BY_SERVER) -> None:
        for conn in self._conns:  # a tuple: the drops below replace it, not change it
            conn.drop(reason)

    # ---- kept by the registry alone --------------------------------------------------------

    def add_connection(self, conn: Connection, limit: int) -> list[Connection]:
        """Adds a newly accepted device: its oldest devices over ``limit`` (to drop)."""
        conns = self._conns = (*self._conns, conn)
        excess = len(conns) - limit
        return list(conns[:excess]) if excess > 0 else []

    def remove_connection(self, conn: Connection) -> bool | None:
        """Takes a device off: None when it was not one of this user's, else whether the
        user has devices left."""
        conns = self._conns
        if conn not in conns:
            return None
        conns = self._conns = tuple(c for c in conns if c is not conn)
        return bool(conns)


#: Deprecated: 0.1's name of :class:`User` (a user on the server, not a ``WseClient``).
Client = User
