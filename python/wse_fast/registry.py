"""The server's users: each user (``cid``) and its open connections, oldest first, with the
per-user connection limit."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .constants import WSE_REASON

if TYPE_CHECKING:
    from .connection import Connection
    from .metrics import ServerMetrics


#: Marks a cid's text form (:func:`cid_text`) that is not the cid itself.
_ENCODED = "\x00"


def cid_text(cid: Hashable) -> str:
    """A cid as text, one to one, for what carries only text (the cluster's subjects and
    keys): a string is itself (unless it starts with NUL), anything else that JSON keeps
    (an int, a float, a bool) is NUL and its JSON, so that ``1`` and ``"1"`` stay two users,
    as in JavaScript's ``Map``. Other cids cannot cross the cluster: TypeError."""
    if isinstance(cid, str) and not cid.startswith(_ENCODED):
        return cid
    if isinstance(cid, bool) or not isinstance(cid, (str, int, float)):
        raise TypeError(f"a cid that crosses the cluster is a str or a number, not {cid!r}")
    if isinstance(cid, float) and cid.is_integer():
        cid = int(cid)  # 1.0 is the user 1, as in Python's dicts and JavaScript's Map
    return _ENCODED + json.dumps(cid)


def cid_from_text(text: str) -> Any:
    """The cid that :func:`cid_text` made ``text`` from."""
    return json.loads(text[1:]) if text.startswith(_ENCODED) else text


class User:
    """A user on the server (``cid``, as identify gave it to accept: any hashable value) and
    its open connections, oldest first; ``state`` is the application's own data for the user.
    (0.1 called it ``Client``, beside the unrelated ``WseClient``; that name stays as a
    deprecated alias for one release.)"""

    __slots__ = ("_conns", "_registry", "_state", "cid", "meta")

    def __init__(self, registry: UserRegistry, cid: Any, first: Connection) -> None:
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


class UserRegistry:
    """``clients``: cid to :class:`User`, for users with at least one open connection."""

    __slots__ = ("clients", "conn_per_user", "encode", "metrics")

    def __init__(self, encode: Callable[..., bytes], conn_per_user: int) -> None:
        self.encode = encode
        self.conn_per_user = conn_per_user
        self.metrics: ServerMetrics | None = None  # what the server counts, once it has it
        self.clients: dict[Any, Client] = {}

    def add(self, conn: Connection, cid: Hashable) -> tuple[Client, bool, list[Connection]]:
        """Adds an accepted connection to user ``cid``: the user, whether this is its first
        connection (it joined), and its oldest connections over the limit (to drop)."""
        client = self.clients.get(cid)
        joined = client is None
        if client is None:
            client = self.clients[cid] = Client(self, cid, conn)
        else:
            client._conns = (*client._conns, conn)
        excess = len(client._conns) - self.conn_per_user
        return client, joined, list(client._conns[:excess]) if excess > 0 else []

    def remove(self, conn: Connection) -> Client | None:
        """Takes a closed connection off its user: the user, when that was its last one (it
        left), else None."""
        client = conn.client
        if client is None or conn not in client._conns:
            return None
        client._conns = tuple(c for c in client._conns if c is not conn)
        if client._conns or self.clients.get(client.cid) is not client:
            return None
        del self.clients[client.cid]
        return client


#: Deprecated: 0.1's name of :class:`User` (a user on the server, not a :class:`WseClient`).
Client = User
