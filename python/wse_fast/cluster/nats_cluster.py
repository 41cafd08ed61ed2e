"""Several WseServer processes as one logical server, over NATS.

Each process is a node. What the nodes share lives in NATS, never in a broker of our own:

- ``<prefix>.msg``: one subject every node subscribes to, carrying broadcasts, sends to a
  user, and drops; a node delivers what concerns its own connections (its own messages it
  delivered when it sent them, and skips). One subject (not one per user, and not one per
  kind) keeps the subscriptions per node constant whatever the number of users, and keeps the
  order of everything one node sends: NATS delivers one publisher's messages on one subject
  in order. Every message reaches every node, which looks the user up in a dict: the cost
  grows with the number of nodes, not of users.
- ``<prefix>.call.<node>``: request/reply, for calls to a connection on that node (and the
  node's own health check).
- JetStream key-value bucket ``<prefix>_users``: for each user with open connections, the list
  of its connections ``[node, ref]``, oldest first (``ref``: the process's random instance
  mark and the connection's id, so that a restarted node reusing a name never takes another
  process's entries for its own). The key is a hash of the user's id: user ids stay out of
  subjects, and any length fits. The list changes only by compare-and-set on the key's
  revision, so every change is ordered by the bucket (never by clocks), and the node that
  appends a connection sees every connection added before it: it drops the oldest past
  ``conn_per_user``, wherever they live.
- JetStream key-value bucket ``<prefix>_nodes``, with a TTL of ``node_ttl``: each node renews
  its key every third of it. A node killed without a goodbye stops renewing; once its key has
  expired its connections no longer count (``online``, the per-user limit, ``call``), and
  the first live node to see it gone (its claim ``s.<node>`` in the same bucket) sweeps them
  out of every user's list. A node that leaves with its entries removed writes that claim
  itself: nobody sweeps after it.

A node is healthy while its heartbeat (the renewal of its key, then the read of the live
nodes) completes within ``health_timeout``: a NATS that stops answering without closing the
connection (a frozen process, a silently dropped link) makes it unhealthy within a heartbeat
and a timeout, before nats-py's own pings give up on the link. The key's write goes first
and is never cut off for being late: a slow NATS makes the node unhealthy, never taken for
dead while it lives. ``when.cluster`` says
"disconnected", "reconnected", and "healthy" or "unhealthy" once per change.

Delivery is at most once: what a node publishes while it has no link to NATS (or beyond
``max_outbox`` bytes waiting for it) is not queued for later but counted as lost
(``NatsCluster.lost``) and reported through the server's ``error`` event. Within one node,
delivery to its own connections never depends on NATS. A frame that arrives from NATS is
written to clients only if it is one whole server data frame (``NatsCluster.refused`` counts
the others): NATS is inside the trust boundary, and this bounds what a stray publisher does.

Registry changes are queued per user, not per event: a user's entries are brought to the
connections this node holds at the time of the change, so a user who connects and leaves a
thousand times while NATS is away is one change once it is back. While NATS takes no change
(no link, or no registry write done within ``node_ttl``) the queue holds at most
``max_pending_users`` users; past it, it is dropped and the node writes its whole state again
once NATS answers (every list in the bucket, then every local user). While NATS takes them,
a ramp of joins faster than the writer only waits for it, healthy or not (a busy NATS may
answer the heartbeat late): the queue has one entry per user, and dropping it would turn
each user's one write into a read of the whole bucket.

The node's side is three parts, each in its module: the link (:mod:`.nats_link`: the
connection, the heartbeat and health, the outbox), presence (:mod:`.nats_presence`: the
users bucket, its queue and the sweep) and remote calls (:mod:`.nats_calls`).
:class:`NatsCluster` puts them together as one :class:`~wse_fast.cluster.broker.Broker`, and
carries the messages of ``<prefix>.msg``; it knows the node only as the
:class:`~wse_fast.cluster.broker.BrokerHandler` it is given.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgpack

from ..constants import WSE_REASON, Cid
from ..sansio.framing import is_server_data_frame
from .broker import cid_from_text, cid_text
from .nats_calls import NatsCalls
from .nats_client import Msg
from .nats_link import (
    BROADCAST,
    CLUSTER_LOST,
    CLUSTER_UNAVAILABLE,
    DROP_CONN,
    DROP_USER,
    SEND,
    NatsLink,
    pack_name,
    unpack_name,
)
from .nats_presence import NatsPresence

if TYPE_CHECKING:
    from ..options import ClusterOptions
    from .broker import BrokerHandler

__all__ = ["CLUSTER_LOST", "CLUSTER_UNAVAILABLE", "NatsCluster", "default_node_name"]

log = logging.getLogger("wse_fast.cluster")


def default_node_name() -> str:
    """The host's first label, the pid and a random part (a restarted process may get an old
    pid back while its former self still counts as alive)."""
    label = socket.gethostname().split(".")[0]
    host = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in label)
    return f"{host[:32] or 'node'}-{os.getpid()}-{secrets.token_hex(3)}"


class NatsCluster:
    """The NATS broker: one node's link, presence and calls (a
    :class:`~wse_fast.cluster.broker.Broker`, whose ``presence`` is a
    :class:`~.nats_presence.NatsPresence`)."""

    def __init__(
        self,
        handler: BrokerHandler,
        urls: Sequence[str],
        options: ClusterOptions,
    ) -> None:
        self._node = handler
        self._deliver_to_all = handler.deliver_to_all  # a broadcast's local half, bound once
        self.link = NatsLink(
            handler,
            self,
            urls,
            node=options.node or default_node_name(),
            prefix=options.prefix,
            node_ttl=options.node_ttl,
            connect_timeout=options.connect_timeout,
            max_outbox=options.max_outbox,
            health_timeout=options.health_timeout,
            nats_options=dict(options.nats_options),
        )
        self._publish = self.link.publish
        self.presence = NatsPresence(self.link, handler, options.max_pending_users)
        self.calls = NatsCalls(self.link, self.presence, handler)
        self.node: str = self.link.node
        self.refused = 0  # messages from NATS not written to clients: not one server frame
        self._next_refusal_log = 0.0

    # ---- what the link, the presence and tests read ---------------------------------------

    @property
    def healthy(self) -> bool:
        """Linked to NATS, its subscriptions answering and its heartbeat on time."""
        return self.link.healthy

    @property
    def lost(self) -> int:
        """Messages not handed to NATS because the link was down or behind."""
        return self.link.lost

    @property
    def node_ttl(self) -> float:
        return self.link.node_ttl

    @property
    def alive(self) -> frozenset[str]:
        """The nodes whose key has not expired."""
        return self.link.alive

    @property
    def pending_users(self) -> int:
        return self.presence.pending_users

    @property
    def resyncs(self) -> int:
        return self.presence.resyncs

    def ref(self, conn_id: str) -> str:
        """A connection of this process, as the registry names it."""
        return self.presence.ref(conn_id)

    # ---- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Links to NATS: within ``connect_timeout``, or raises ``wse.cluster.unavailable``.
        Refuses a node name another live process holds."""
        if not self.link.started:
            await self.link.start()

    async def stop(self) -> None:
        """Leaves the cluster: what is queued is sent, and the node's key goes."""
        link = self.link
        link.stop_heartbeat()
        self.calls.cancel()
        self.presence.cancel_sweeps()
        written = link.started and await self.presence.drain()
        await link.leave(written)
        self.presence.reset()
        await link.close()

    async def finish_calls(self, timeout: float) -> None:
        await self.calls.finish(timeout)

    # ---- what the server asks --------------------------------------------------------------

    def publish_all(self, frame: bytes) -> None:
        """Writes ``frame`` here at once, and hands it to the other nodes."""
        self._deliver_to_all(frame)
        self._publish(BROADCAST + frame)

    def publish_user(self, cid: Cid, frame: bytes) -> int:
        """Writes ``frame`` to the user's connections here at once (answers to how many), and
        hands it to the other nodes, which deliver it to theirs."""
        written = self._node.deliver_to_user(cid, frame)
        self._publish(pack_name(SEND, cid_text(cid), frame))
        return written

    def drop_user(self, cid: Cid, reason: str) -> None:
        self._node.drop_local_user(cid, reason)
        self._publish(pack_name(DROP_USER, cid_text(cid), reason.encode()))

    async def call(self, cid: Cid, rp: str, payload: Any, timeout: float | None) -> Any:
        return await self.calls.call(cid, rp, payload, timeout)

    # ---- what the link hands on (nats_link.LinkListener) -----------------------------------

    async def on_call(self, msg: Msg) -> None:
        await self.calls.on_call(msg)

    def nodes_gone(self, gone: list[str]) -> None:
        self.presence.nodes_gone(gone)

    def taken_for_dead(self) -> None:
        self.presence.taken_for_dead()

    def answering(self) -> None:
        self.presence.pump()

    def on_message(self, data: bytes) -> None:
        """A message of another node: delivered to what concerns this node's connections."""
        op = data[:1]
        handler = self._node
        try:
            if op == BROADCAST:
                frame = data[1:]
                if self._well_formed(frame):
                    handler.deliver_to_all(frame)
            elif op == SEND:
                name, frame = unpack_name(data)
                if self._well_formed(frame):
                    handler.deliver_to_user(cid_from_text(name), frame)
            elif op == DROP_USER:
                name, reason = unpack_name(data)
                handler.drop_local_user(cid_from_text(name), reason.decode())
            elif op == DROP_CONN:
                node, rest = unpack_name(data)
                if node == self.node:
                    text, ref = msgpack.unpackb(rest)
                    cid = cid_from_text(text)
                    conn = self.presence.local(cid, ref)
                    if conn is not None:
                        conn.drop(WSE_REASON.CLIENTS_CONCURRENCY)
        except Exception as exc:  # a message of another version, or of something else
            log.warning("cluster message not understood: %r", exc)

    def _well_formed(self, frame: bytes) -> bool:
        """Whether a frame from NATS may go into clients' byte streams as it is (one whole
        server data frame); anything else is dropped, counted in ``refused`` and logged at
        most once a second: whoever can publish on NATS must not write a Close, a control
        frame or a half frame to every client."""
        if is_server_data_frame(frame):
            return True
        self.refused += 1
        now = time.monotonic()
        if now >= self._next_refusal_log:
            self._next_refusal_log = now + 1.0
            log.warning(
                "cluster node %s: a message from NATS is not one server frame: dropped"
                " (%d so far; is anything but the nodes publishing on %s?)",
                self.node,
                self.refused,
                self.link.subject,
            )
        return False
