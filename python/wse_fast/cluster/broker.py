"""The node's ports to the other nodes: a :class:`Broker` that publishes and calls, a
:class:`Presence` that knows who is online, and the :class:`BrokerHandler` they answer
through.

The server always publishes and looks up presence through its broker, even alone: single
process is :class:`LocalBroker`, the in-memory implementation, not a second code path (as
Centrifuge's ``Node`` always publishes through its ``Broker``, ``NewMemoryBroker`` by
default). A broker never reads the server's maps or private attributes: what it needs of the
node (deliver a frame here, drop here, answer a call here, say who came online) it asks of
its :class:`BrokerHandler`, which :class:`~wse_fast.WseServer` implements. The NATS broker
(:class:`~wse_fast.cluster.nats_cluster.NatsCluster`) is one implementation beside it; another
(Redis, say) plugs in with :meth:`WseServer.use_broker` without touching the server.

A broker delivers to this node's own connections itself, at once (a cluster broker then also
hands the frame to the others): so the local path of :meth:`Broker.publish_all` may be the
handler's own write, bound once (:class:`LocalBroker` does exactly that).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from ..constants import Cid
from ..errors import ConnectionNotReady, WseError

#: Marks a cid's text form (:func:`cid_text`) that is not the cid itself.
_ENCODED = "\x00"


def cid_text(cid: Cid) -> str:
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


class LocalConnection(Protocol):
    """An accepted connection of this node, as a broker may use it."""

    @property
    def conn_id(self) -> str: ...

    @property
    def cid(self) -> Any: ...

    async def call(self, rp: str, payload: Any = None, timeout: float | None = None) -> Any: ...

    def drop(self, reason: str = ..., code: int = ...) -> None: ...


class BrokerHandler(Protocol):
    """What a broker may ask of the node it serves (Centrifuge's ``BrokerEventHandler``):
    deliver to and drop this node's connections, look them up, and report."""

    def deliver_to_all(self, frame: bytes) -> None:
        """Writes ``frame`` (one whole server frame) to every accepted connection here."""

    def deliver_to_user(self, cid: Cid, frame: bytes) -> int:
        """Writes ``frame`` to user ``cid``'s connections here: to how many."""

    def has_user(self, cid: Cid) -> bool:
        """Whether user ``cid`` has a connection here."""

    def drop_local_user(self, cid: Cid, reason: str) -> None:
        """Closes user ``cid``'s connections here."""

    def local_connection(self, conn_id: str) -> LocalConnection | None:
        """This node's open, accepted connection ``conn_id``, if it is one."""

    def user_connections(self, cid: Cid) -> Sequence[LocalConnection]:
        """User ``cid``'s accepted connections here, oldest first."""

    def local_users(self) -> list[Any]:
        """The users with connections here."""

    def user_online(self, cid: Cid) -> None:
        """User ``cid`` has its first connection (on any node): the ``online`` event."""

    def user_offline(self, cid: Cid) -> None:
        """User ``cid`` has no connection left (on any node): the ``offline`` event."""

    def broker_error(self, error: WseError) -> None:
        """A problem of the broker (lost messages, an unreachable peer): the ``error``
        event."""

    def broker_state(self, state: str) -> None:
        """The link to the other nodes changed ("disconnected", "reconnected", "healthy",
        "unhealthy"): the ``cluster`` event."""

    @property
    def closing(self) -> bool:
        """The node drains: it takes no new calls from other nodes."""

    @property
    def conn_per_user(self) -> int:
        """How many connections one user may have open, over every node."""

    @property
    def timeout(self) -> float:
        """The default time limit of a call to a user's connection (seconds)."""


class Presence(Protocol):
    """Who is online (Centrifuge's ``PresenceManager``): the node tells it of every
    connection accepted and closed, and asks it how many a user has. It, and only it, says
    when a user comes online and goes offline (through the handler)."""

    def check_cid(self, cid: Cid) -> None:
        """Raises (TypeError) for a cid this presence cannot carry: such a user is not
        accepted."""

    def reaches(self, cid: Cid) -> bool:
        """Whether a frame for user ``cid`` may reach one of its connections: alone,
        whether it is here; in a cluster, yes (another node may have it). The node encodes
        nothing for a user it does not reach."""

    def added(self, cid: Cid, conn_id: str, first: bool) -> None:
        """Connection ``conn_id`` of user ``cid`` was accepted here (``first``: the user's
        first one here)."""

    def removed(self, cid: Cid, conn_id: str, last: bool) -> None:
        """Connection ``conn_id`` of user ``cid`` closed (``last``: the user has none left
        here)."""

    async def online(self, cid: Cid) -> int:
        """How many connections user ``cid`` has open, on every node."""


class Broker(Protocol):
    """How the node reaches users wherever they are (Centrifuge's ``Broker``)."""

    @property
    def presence(self) -> Presence: ...

    @property
    def node(self) -> str | None:
        """This node's name among the others; None for an in-process broker (no cluster)."""

    @property
    def healthy(self) -> bool:
        """Whether the link to the other nodes works (always, in process)."""

    @property
    def lost(self) -> int:
        """Messages for other nodes that could not be handed on."""

    @property
    def refused(self) -> int:
        """Messages from other nodes not written to clients: not one server frame."""

    def publish_all(self, frame: bytes) -> None:
        """Writes ``frame`` to every connection here and on every other node."""

    def publish_user(self, cid: Cid, frame: bytes) -> int:
        """Writes ``frame`` to user ``cid``'s connections wherever they are: how many it
        wrote here (what the node counts as sent)."""

    def drop_user(self, cid: Cid, reason: str) -> None:
        """Closes user ``cid``'s connections wherever they are."""

    async def call(self, cid: Cid, rp: str, payload: Any, timeout: float | None) -> Any:
        """Calls ``rp`` on user ``cid``'s newest connection, wherever it is; raises
        :class:`~wse_fast.errors.ConnectionNotReady` when it has none."""

    async def start(self) -> None:
        """Links to the other nodes (the server does not start without it)."""

    async def finish_calls(self, timeout: float) -> None:
        """Waits up to ``timeout`` seconds for calls other nodes made here (the drain)."""

    async def stop(self) -> None:
        """Leaves the other nodes."""


class LocalBroker:
    """The in-process broker, a server's default: every operation is the handler's own, and
    the sending ones are the handler's methods themselves, bound once (a broadcast costs what
    the direct write costs)."""

    __slots__ = ("_handler", "drop_user", "publish_all", "publish_user", "reaches")

    node = None
    healthy = True
    lost = 0
    refused = 0

    def __init__(self, handler: BrokerHandler) -> None:
        self._handler = handler
        self.publish_all = handler.deliver_to_all
        self.publish_user = handler.deliver_to_user
        self.drop_user = handler.drop_local_user
        self.reaches = handler.has_user

    @property
    def presence(self) -> LocalBroker:
        return self

    # ---- presence: the node's own connections are all there is -----------------------------

    def check_cid(self, cid: Cid) -> None:
        """Any hashable cid stays in the process."""

    def added(self, cid: Cid, conn_id: str, first: bool) -> None:
        if first:
            self._handler.user_online(cid)

    def removed(self, cid: Cid, conn_id: str, last: bool) -> None:
        if last:
            self._handler.user_offline(cid)

    async def online(self, cid: Cid) -> int:
        return len(self._handler.user_connections(cid))

    # ---- calls -----------------------------------------------------------------------------

    async def call(self, cid: Cid, rp: str, payload: Any, timeout: float | None) -> Any:
        handler = self._handler
        conns = handler.user_connections(cid)
        if not conns:
            err = ConnectionNotReady({"rpc": rp, "cid": cid})
            handler.broker_error(err)
            raise err
        return await conns[-1].call(rp, payload, timeout)

    # ---- life cycle: nothing to link to ----------------------------------------------------

    async def start(self) -> None:
        pass

    async def finish_calls(self, timeout: float) -> None:
        pass

    async def stop(self) -> None:
        pass
