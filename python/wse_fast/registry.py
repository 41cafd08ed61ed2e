"""The server's users: each user (``cid``, a :class:`~wse_fast.connection.User`) and its open
connections, oldest first, with the per-user connection limit."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .connection import User
from .constants import Cid

if TYPE_CHECKING:
    from .connection import Connection
    from .ports import SentMeter


class UserRegistry:
    """``clients``: cid to :class:`User`, for users with at least one open connection."""

    __slots__ = ("clients", "conn_per_user", "encode", "metrics")

    def __init__(
        self, encode: Callable[..., bytes], conn_per_user: int, metrics: SentMeter | None = None
    ) -> None:
        self.encode = encode
        self.conn_per_user = conn_per_user
        self.metrics = metrics  # what the node counts (None: nothing)
        self.clients: dict[Any, User] = {}

    def add(self, conn: Connection, cid: Cid) -> tuple[User, bool, list[Connection]]:
        """Adds an accepted connection to user ``cid``: the user, whether this is its first
        connection (it joined), and its oldest connections over the limit (to drop)."""
        client = self.clients.get(cid)
        if client is None:
            client = self.clients[cid] = User(self, cid, conn)
            return client, True, []
        return client, False, client.add_connection(conn, self.conn_per_user)

    def remove(self, conn: Connection) -> User | None:
        """Takes a closed connection off its user: the user, when that was its last one (it
        left), else None."""
        client = conn.client
        if client is None or client.remove_connection(conn) is not False:
            return None  # not one of its devices, or it has others
        if self.clients.get(client.cid) is not client:
            return None
        del self.clients[client.cid]
        return client
