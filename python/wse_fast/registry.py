"""The server's users: each user (``cid``) and its open connections, oldest first, with the
per-user connection limit."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .constants import WSE_REASON

if TYPE_CHECKING:
    from .connection import Connection


class Client:
    """A user (``cid``) and its open connections, oldest first."""

    __slots__ = ("_conns", "_encode", "cid", "meta")

    def __init__(self, encode: Callable[..., bytes], cid: str, first: Connection) -> None:
        self._encode = encode
        self.cid = cid
        self.meta = first.meta
        # A list, not a dict: most users have one or two devices, and an idle user's dict
        # would cost more than its connection's own state.
        self._conns: list[Connection] = [first]

    def __repr__(self) -> str:
        return f"<Client {self.cid!r} conns={len(self._conns)}>"

    @property
    def conns(self) -> Mapping[str, Connection]:
        """The user's open connections, conn_id to :class:`Connection`, oldest first.

        A read-only snapshot taken when read.
        """
        return MappingProxyType({conn.conn_id: conn for conn in self._conns})

    def send(self, type: str, payload: Any = None) -> None:
        """Sends to every device of this user; the frame is encoded once."""
        self.send_frame(self._encode(type, payload, None))

    def send_frame(self, frame: bytes) -> None:
        """Sends a frame the server's encoder built to every device of this user."""
        for conn in self._conns:
            endpoint = conn.endpoint  # Connection.send_frame, inlined: once per device
            if endpoint is not None:
                endpoint.write(frame)

    def drop(self, reason: str = WSE_REASON.BY_SERVER) -> None:
        for conn in list(self._conns):
            conn.drop(reason)


class UserRegistry:
    """``clients``: cid to :class:`Client`, for users with at least one open connection."""

    __slots__ = ("_encode", "clients", "conn_per_user")

    def __init__(self, encode: Callable[..., bytes], conn_per_user: int) -> None:
        self._encode = encode
        self.conn_per_user = conn_per_user
        self.clients: dict[str, Client] = {}

    def add(self, conn: Connection, cid: str) -> tuple[Client, bool, list[Connection]]:
        """Adds an accepted connection to user ``cid``: the user, whether this is its first
        connection (it joined), and its oldest connections over the limit (to drop)."""
        client = self.clients.get(cid)
        joined = client is None
        if client is None:
            client = self.clients[cid] = Client(self._encode, cid, conn)
        else:
            client._conns.append(conn)
        excess = len(client._conns) - self.conn_per_user
        return client, joined, client._conns[:excess] if excess > 0 else []

    def remove(self, conn: Connection) -> Client | None:
        """Takes a closed connection off its user: the user, when that was its last one (it
        left), else None."""
        client = conn.client
        if client is None or conn not in client._conns:
            return None
        client._conns.remove(conn)
        if client._conns or self.clients.get(client.cid) is not client:
            return None
        del self.clients[client.cid]
        return client
