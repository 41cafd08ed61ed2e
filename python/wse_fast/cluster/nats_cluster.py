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

A node is healthy while its heartbeat (the renewal of its key, a NATS round trip) completes
within ``health_timeout``: a NATS that stops answering without closing the connection (a
frozen process, a silently dropped link) makes it unhealthy within a heartbeat and a
timeout, before nats-py's own pings give up on the link. ``when.cluster`` says
"disconnected", "reconnected", and "healthy" or "unhealthy" once per change.

Delivery is at most once: what a node publishes while it has no link to NATS (or beyond
``max_outbox`` bytes waiting for it) is not queued for later but counted as lost
(``NatsCluster.lost``) and reported through the server's ``error`` event. Within one node,
delivery to its own connections never depends on NATS. A frame that arrives from NATS is
written to clients only if it is one whole server data frame (``NatsCluster.refused`` counts
the others): NATS is inside the trust boundary, and this bounds what a stray publisher does.

Registry changes are queued per user, not per event: a user's entries are brought to the
connections this node holds at the time of the change, so a user who connects and leaves a
thousand times while NATS is away is one change once it is back. The queue holds at most
``max_pending_users`` users; past it, it is dropped and the node writes its whole state again
once NATS answers (every list in the bucket, then every local user).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import re
import secrets
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgpack
import nats
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from ..connection import deadline
from ..constants import WSE_ERROR, WSE_REASON
from ..errors import ConnectionNotReady, RpcError, WseError
from ..registry import cid_from_text, cid_text
from ..sansio.framing import is_server_data_frame

if TYPE_CHECKING:
    from ..server import WseServer
    from ..server_connection import ServerConnection

log = logging.getLogger("wse_fast.cluster")

# what a message on <prefix>.msg carries: an operation, then its fields
_BROADCAST, _SEND, _DROP_USER, _DROP_CONN = b"b", b"s", b"d", b"x"
_LENGTH = struct.Struct("!I")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ORIGIN = 8  # bytes of the sending node's mark, first in every message
#: Compare-and-set attempts on one user's list before giving up (each failure means another
#: node changed it in between).
_CAS_ATTEMPTS = 50
#: Seconds a call waits beyond its own timeout for the other node's answer to arrive.
_CALL_MARGIN = 1.0
#: What a call without a deadline waits for the other node at most (NATS requests have one).
_NO_DEADLINE = 24 * 3600.0
#: Registry changes in flight at once (a reconnect re-registers every connection).
_CHANGES_AT_ONCE = 64
#: Calls from other nodes running at once on this one.
_CALLS_AT_ONCE = 1024

CLUSTER_UNAVAILABLE = "wse.cluster.unavailable"
CLUSTER_LOST = "wse.cluster.lost"

#: The states of the link, as ``when.cluster`` reports them (with "reconnected" between).
_HEALTHY, _UNHEALTHY, _DISCONNECTED = "healthy", "unhealthy", "disconnected"
#: In the registry queue, a user known only by its key (found in the bucket by a re-sync):
#: the change removes this node's closed connections from its list and adds none.
_GONE: Any = object()


def default_node_name() -> str:
    """The host's first label, the pid and a random part (a restarted process may get an old
    pid back while its former self still counts as alive)."""
    label = socket.gethostname().split(".")[0]
    host = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in label)
    return f"{host[:32] or 'node'}-{os.getpid()}-{secrets.token_hex(3)}"


def _key(cid: Any) -> str:
    """A user's key in the bucket: a fixed-length hash of its text form (KV keys are subject
    tokens, bounded and restricted; a cid is a str or a number, of any length)."""
    return "u." + hashlib.sha256(cid_text(cid).encode()).hexdigest()[:40]


def _pack_name(op: bytes, name: str, rest: bytes = b"") -> bytes:
    """An operation on a user (``name``: its cid) or a node's connection (its node)."""
    raw = name.encode()
    return op + _LENGTH.pack(len(raw)) + raw + rest


def _unpack_name(data: bytes) -> tuple[str, bytes]:
    (length,) = _LENGTH.unpack_from(data, 1)
    start = 1 + _LENGTH.size
    return data[start : start + length].decode(), data[start + length :]


class NatsCluster:
    """The link of one node (one :class:`~wse_fast.WseServer`) to the others."""

    def __init__(
        self,
        server: WseServer,
        urls: Sequence[str],
        *,
        node: str | None = None,
        prefix: str = "wse",
        node_ttl: float = 6.0,
        connect_timeout: float = 10.0,
        max_outbox: int = 8 << 20,
        health_timeout: float | None = None,
        max_pending_users: int = 10_000,
        nats_options: dict[str, Any] | None = None,
    ) -> None:
        if node_ttl <= 0 or connect_timeout <= 0:
            raise ValueError("node_ttl and connect_timeout must be positive")
        if health_timeout is not None and health_timeout <= 0:
            raise ValueError("health_timeout must be positive")
        if max_pending_users < 1:
            raise ValueError("max_pending_users must be at least 1")
        self.server = server
        self.urls = list(urls)
        self.node = node or default_node_name()
        # both go into subjects and bucket names: ASCII letters, digits, '-' and '_' only
        if not _NAME.fullmatch(self.node) or not _NAME.fullmatch(prefix):
            raise ValueError("node and prefix take 1 to 64 ASCII letters, digits, '-' and '_'")
        self.prefix = prefix
        self.node_ttl = node_ttl
        self.connect_timeout = connect_timeout
        self.max_outbox = max_outbox
        #: What a heartbeat (the renewal of this node's key, a NATS round trip) and a lookup
        #: of ``online`` may take before NATS counts as unreachable.
        self.health_timeout = (
            health_timeout if health_timeout is not None else max(node_ttl / 3, 1.0)
        )
        #: Users whose registry entries wait for NATS; past it they are forgotten and the
        #: node's whole state is written again once NATS answers.
        self.max_pending_users = max_pending_users
        self.nats_options = dict(nats_options or {})
        self.lost = 0  # messages not handed to NATS because the link was down
        self.refused = 0  # messages from NATS not written to clients: not one server frame
        self.resyncs = 0  # times the registry queue overflowed and the whole state was written
        self._lost_unreported = 0
        self._next_loss_report = 0.0
        self._next_refusal_log = 0.0
        self.alive: frozenset[str] = frozenset()  # nodes whose key has not expired
        # this process's mark in the registry's entries, new at every start
        self.instance = secrets.token_hex(4)
        self._me = [self.node, self.instance + ":"]  # what _living keeps of this node's
        self._nc: Nats | None = None
        self._users: KeyValue | None = None
        self._nodes: KeyValue | None = None
        self._subject = f"{prefix}.msg"
        # NATS echoes a node's messages back to it (the node's health check needs its own
        # requests answered): they carry this mark so that it skips them
        self._origin = secrets.token_bytes(_ORIGIN)
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        self._flush_task: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        # The registry queue: users whose entries must be brought to what this node holds,
        # one entry per user whatever happened to it meanwhile (only the latest state
        # matters: it is read when the change is made), oldest first.
        self._dirty: dict[str, tuple[Any, bool]] = {}  # key: (cid or _GONE, announce)
        self._syncing: dict[str, asyncio.Task[None]] = {}  # key: its change, under way
        self._again: dict[str, tuple[Any, bool]] = {}  # keys marked while under way
        self._resync = False  # the queue overflowed: the whole state goes once NATS answers
        self._resync_task: asyncio.Task[None] | None = None
        self._sweeps: set[asyncio.Task[None]] = set()  # dead nodes' entries being removed
        self._change_slots = asyncio.Semaphore(_CHANGES_AT_ONCE)
        self._calls: set[asyncio.Task[None]] = set()  # calls from other nodes, running
        self._not_alive: dict[str, float] = {}  # node: until when it is taken for dead
        self._link_state = _DISCONNECTED
        self._started = False
        self._renewed = False  # this node's key has been written since it started

    # ---- life cycle ------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """Linked to NATS, its subscriptions answering (checked after every reconnect) and
        its heartbeat renewed within ``health_timeout``."""
        nc = self._nc
        return self._link_state == _HEALTHY and nc is not None and nc.is_connected

    @property
    def pending_users(self) -> int:
        """Users whose registry entries wait to be written (bounded by
        ``max_pending_users``; a few more while their change is under way)."""
        return len(self._dirty) + len(self._again) + len(self._syncing)

    def ref(self, conn_id: str) -> str:
        """A connection of this process, as the registry names it."""
        return f"{self.instance}:{conn_id}"

    async def start(self) -> None:
        """Links to NATS: within ``connect_timeout``, or raises ``wse.cluster.unavailable``.
        Refuses a node name another live process holds."""
        if self._started:
            return
        await self._link()
        nodes = self._require(self._nodes)
        # A node name is one process's: a process that takes over a name waits for the key
        # of the one before it (gone without a goodbye) to expire, for up to node_ttl.
        deadline = time.monotonic() + self.node_ttl + 1
        while True:
            try:
                await nodes.create(f"n.{self.node}", self.instance.encode())
                break
            except KeyWrongLastSequenceError:
                if time.monotonic() > deadline:
                    await self._unlink()
                    error = {"error": "a live node has this name", "node": self.node}
                    raise WseError(CLUSTER_UNAVAILABLE, error) from None
                await asyncio.sleep(self.node_ttl / 6)
        # a claim on sweeping this name's entries left by its former process's goodbye
        # would keep the others from sweeping this one's, should it die
        with contextlib.suppress(Exception):
            await nodes.delete(f"s.{self.node}")
        self._started = True
        await self._renew()
        # the first state is not an event: "healthy" and "unhealthy" report changes
        self._link_state = _HEALTHY if await self._check() else _UNHEALTHY
        self._heartbeat = asyncio.ensure_future(self._beat())

    async def stop(self) -> None:
        """Leaves the cluster: what is queued is sent, and the node's key goes."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        for task in [*self._calls, *self._sweeps]:
            task.cancel()
        written = self._started and await self._drain_registry()
        if self._flush_task is not None:  # what it is sending leaves before the rest
            await asyncio.gather(self._flush_task, return_exceptions=True)
        nc = self._nc
        if nc is not None:
            with contextlib.suppress(Exception):
                await self._flush_outbox(nc)
                if self._started and self._nodes is not None:
                    if written:  # nothing of this node's is left to sweep
                        with contextlib.suppress(Exception):
                            await self._nodes.create(f"s.{self.node}", self.node.encode())
                    await self._nodes.delete(f"n.{self.node}")
        for task in list(self._syncing.values()):
            task.cancel()
        if self._resync_task is not None:
            self._resync_task.cancel()
        self._dirty.clear()
        self._again.clear()
        self._resync = False
        self._started = self._renewed = False
        await self._unlink()

    async def finish_calls(self, timeout: float) -> None:
        """Waits up to ``timeout`` seconds for the calls other nodes made to this node's users
        to be answered (the server's drain: a closing node takes no new ones, and its link
        stays up until :meth:`stop`)."""
        if self._calls and timeout > 0:
            await asyncio.wait(list(self._calls), timeout=timeout)

    async def _drain_registry(self) -> bool:
        """Writes the registry changes still queued (the connections the server closed on
        its way out), for up to ``node_ttl``; whether all were written."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.node_ttl
        while self._dirty or self._again or self._syncing or self._resync or self._resync_task:
            self._pump()
            waiting: list[asyncio.Task[None]] = list(self._syncing.values())
            if self._resync_task is not None:
                waiting.append(self._resync_task)
            left = until - loop.time()
            if not waiting or left <= 0:
                return False  # no link to NATS, or no time left: the others sweep them
            await asyncio.wait(waiting, timeout=left)
        return True

    async def _link(self) -> None:
        options: dict[str, Any] = {
            "name": f"wse-fast {self.node}",
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "pending_size": self.max_outbox,
            "flush_timeout": self.node_ttl,
            # A server that stops answering (frozen, or a link that drops packets silently)
            # keeps the TCP connection open: after this many unanswered pings the client
            # takes the link for dead and reconnects, to another server if it has one.
            "ping_interval": self.node_ttl / 2,
            "max_outstanding_pings": 2,
            **self.nats_options,
            "disconnected_cb": self._disconnected,
            "reconnected_cb": self._reconnected,
            "error_cb": self._nats_error,
        }
        try:
            # nats-py retries a first connect for ever when reconnects are unlimited
            nc = await asyncio.wait_for(
                nats.connect(servers=self.urls, **options), self.connect_timeout
            )
        except Exception as exc:
            raise WseError(CLUSTER_UNAVAILABLE, {"error": repr(exc)}) from exc
        self._nc = nc
        try:
            js = nc.jetstream()
            self._users = await _bucket(js, f"{self.prefix}_users", ttl=None)
            self._nodes = await _bucket(js, f"{self.prefix}_nodes", ttl=self.node_ttl)
            await nc.subscribe(self._subject, cb=self._on_message)
            await nc.subscribe(f"{self.prefix}.call.{self.node}", cb=self._on_call)
        except Exception as exc:
            await self._unlink()
            raise WseError(CLUSTER_UNAVAILABLE, {"error": repr(exc)}) from exc

    async def _unlink(self) -> None:
        nc, self._nc = self._nc, None
        self._link_state = _DISCONNECTED
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.drain()
            with contextlib.suppress(Exception):
                await nc.close()

    # ---- what the server asks --------------------------------------------------------------

    def broadcast(self, frame: bytes) -> None:
        self._publish(_BROADCAST + frame)

    def send(self, cid: Any, frame: bytes) -> None:
        self._publish(_pack_name(_SEND, cid_text(cid), frame))

    def drop_user(self, cid: Any, reason: str) -> None:
        self._publish(_pack_name(_DROP_USER, cid_text(cid), reason.encode()))

    def added(self, cid: Any, conn_id: str) -> None:
        """A connection of this node was accepted: it joins its user's list."""
        self._mark(_key(cid), cid, True)

    def removed(self, cid: Any, conn_id: str) -> None:
        """A connection of this node closed: it leaves its user's list."""
        self._mark(_key(cid), cid, False)

    async def online(self, cid: Any) -> int:
        """The user's open connections on every live node; raises ``wse.cluster.unavailable``
        at once without a link to NATS, and when NATS does not answer within
        ``health_timeout``."""
        entries = await self._lookup(cid, self.health_timeout)
        local = self.server.clients.get(cid)
        here = len(local.conns) if local is not None else 0
        return here + sum(1 for node, _ in entries if node != self.node and node in self.alive)

    async def call(self, cid: Any, rp: str, payload: Any, timeout: float | None) -> Any:
        """Calls the user's newest connection on any live node (an older one when the newest
        is gone by the time the call reaches it). The call's time limit bounds the lookup of
        the user's connections too, and what is left of it the call."""
        loop = asyncio.get_running_loop()
        limit = deadline(self.server.timeout, timeout)  # None: no deadline
        until = None if limit is None else loop.time() + limit
        entries = await self._lookup(cid, limit)

        def left() -> float | None:
            # what the caller asked (None: the server's default, 0: none) when unbounded
            return timeout if until is None else max(until - loop.time(), 0.001)

        for node, ref in reversed(entries):
            if node == self.node:
                conn = self._local(cid, ref)
                if conn is not None:
                    return await conn.call(rp, payload, left())
            elif node in self.alive:
                try:
                    return await self._remote_call(node, cid, ref, rp, payload, left())
                except ConnectionNotReady:
                    continue
        local = self.server.clients.get(cid)
        if local is not None and local.conns:  # accepted here, not yet in the list
            return await list(local.conns.values())[-1].call(rp, payload, left())
        raise ConnectionNotReady({"rpc": rp, "cid": cid})

    async def _lookup(self, cid: Any, within: float | None) -> list[list[str]]:
        """The user's entries, with the nodes they name known alive or not, within
        ``within`` seconds (None: NATS's own request timeout)."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            raise WseError(CLUSTER_UNAVAILABLE, {"error": "no link to NATS"})
        try:
            async with asyncio.timeout(within):
                entries = await self._entries(cid)
                await self._learn_nodes(entries)
        except TimeoutError:
            error = {"error": f"NATS did not answer within {within} s"}
            raise WseError(CLUSTER_UNAVAILABLE, error) from None
        return entries

    # ---- the registry ----------------------------------------------------------------------

    def _local(self, cid: Any, ref: str) -> ServerConnection | None:
        """This process's open, accepted connection ``ref`` of user ``cid``, if it is one."""
        conn = self._open(ref)
        return conn if conn is not None and conn.cid == cid else None

    def _open(self, ref: str) -> ServerConnection | None:
        """This process's open, accepted connection ``ref``, if it is one."""
        instance, _, conn_id = ref.partition(":")
        if instance != self.instance:
            return None
        conn = self.server.connections.get(conn_id)
        if conn is None or not conn.session.valid or not conn.open:
            return None
        return conn

    def _mine(self, cid: Any) -> list[str]:
        """The refs of user ``cid``'s open connections in this process, oldest first."""
        if cid is _GONE:
            return []
        client = self.server.clients.get(cid)
        if client is None:
            return []
        refs = [self.ref(conn_id) for conn_id in client.conns]
        return [ref for ref in refs if self._local(cid, ref) is not None]

    async def _entries(self, cid: Any) -> list[list[str]]:
        users = self._require(self._users)
        try:
            entry = await users.get(_key(cid))
        except (KeyNotFoundError, KeyDeletedError):
            return []
        except Exception as exc:
            raise WseError(CLUSTER_UNAVAILABLE, {"error": repr(exc)}) from exc
        return _decode_entries(entry.value)

    async def _change(
        self,
        key: str,
        change: Callable[[list[list[str]]], list[list[str]]],
        guess_new: bool = False,
        recheck: frozenset[str] = frozenset(),
    ) -> tuple[list[list[str]], list[list[str]]]:
        """Applies ``change`` to the list under ``key`` by compare-and-set: the list it read
        and the list it wrote, in the change that took (nothing is written when ``change``
        leaves the list as it was). ``guess_new``: try first as if the user had no list
        (most users have one connection), which saves a round trip when so. ``recheck``:
        nodes looked up in the bucket whenever the list names them, even if found dead a
        moment ago (see :meth:`_learn_nodes`)."""
        users = self._require(self._users)
        async with self._change_slots:
            for attempt in range(_CAS_ATTEMPTS):
                revision: int | None
                if guess_new and attempt == 0:
                    revision, entries = None, []
                else:
                    try:
                        entry = await users.get(key)
                        revision, entries = entry.revision, _decode_entries(entry.value)
                    except (KeyNotFoundError, KeyDeletedError):
                        revision, entries = None, []
                # never forget a node only this one thinks dead
                await self._learn_nodes(entries, recheck)
                after = change(entries)
                if after == entries and not (guess_new and attempt == 0):
                    return entries, after
                try:
                    if not after:
                        if revision is not None:
                            await users.delete(key, last=revision)
                    elif revision is None:
                        await users.create(key, msgpack.packb(after))
                    else:
                        await users.update(key, msgpack.packb(after), last=revision)
                    return entries, after
                except KeyWrongLastSequenceError:
                    continue  # another node changed it first: read it again
        raise WseError(CLUSTER_UNAVAILABLE, {"error": "the user's list kept changing"})

    def _mark(self, key: str, cid: Any, announce: bool) -> None:
        """Queues user ``key`` for its entries to be brought to this node's connections.
        Past ``max_pending_users`` the queue is dropped and the whole state re-synced."""
        if self._resync and self._resync_task is None:
            return  # the re-sync, still to come, reads every user's state
        held = self._dirty.get(key)
        if held is not None:
            self._dirty[key] = (cid if cid is not _GONE else held[0], announce or held[1])
        elif len(self._dirty) >= self.max_pending_users:
            log.warning(
                "cluster node %s: %d users wait for NATS: their changes are dropped, and the"
                " node's whole registry state is written once NATS answers",
                self.node,
                len(self._dirty),
            )
            self._dirty.clear()
            self._resync = True
            self.resyncs += 1
            return
        else:
            self._dirty[key] = (cid, announce)
        self._pump()

    def _pump(self) -> None:
        """Starts queued registry changes while NATS is linked, up to ``_CHANGES_AT_ONCE``
        at a time and one at a time per user."""
        nc = self._nc
        if not self._started or nc is None or not nc.is_connected:
            return
        if self._resync and self._resync_task is None:
            self._resync = False
            task = self._resync_task = asyncio.ensure_future(self._resync_all())
            task.add_done_callback(self._resynced)
        while self._dirty and len(self._syncing) < _CHANGES_AT_ONCE:
            key = next(iter(self._dirty))
            cid, announce = self._dirty.pop(key)
            if key in self._syncing:  # after the change under way, which read older state
                held = self._again.get(key)
                self._again[key] = (cid, announce or (held is not None and held[1]))
                continue
            task = asyncio.ensure_future(self._sync(key, cid, announce))
            self._syncing[key] = task
            task.add_done_callback(functools.partial(self._synced, key, cid, announce))

    def _synced(self, key: str, cid: Any, announce: bool, task: asyncio.Task[None]) -> None:
        if self._syncing.get(key) is task:
            del self._syncing[key]
        if task.cancelled():
            return
        again = self._again.pop(key, None)
        failed = task.exception()
        if failed is not None:
            self._report(failed, {})
            # made again at the next heartbeat or reconnect, not at once
            if not self._resync:
                held = self._dirty.get(key)
                self._dirty[key] = (cid, announce or (held is not None and held[1]))
        if again is not None:
            self._mark(key, *again)
        elif failed is None:
            self._pump()

    async def _sync(self, key: str, cid: Any, announce: bool) -> None:
        """Brings this node's entries in the list under ``key`` to its open connections of
        the user (``cid``; ``_GONE`` when unknown: then it only removes the closed ones); the
        entries of dead nodes go with the change."""

        def reconcile(entries: list[list[str]]) -> list[list[str]]:
            mine = self._mine(cid)  # read at each attempt: the latest state
            living = _living(entries, self._me, self.alive)
            kept = [e for e in living if e[0] != self.node or self._open(e[1]) is not None]
            have = {ref for node, ref in kept if node == self.node}
            return kept + [[self.node, ref] for ref in mine if ref not in have]

        before, after = await self._change(key, reconcile, guess_new=bool(self._mine(cid)))
        if cid is _GONE:
            return
        living_before = _living(before, self._me, self.alive)
        ours_before = {ref for node, ref in living_before if node == self.node}
        if any(node == self.node and ref not in ours_before for node, ref in after):
            # this change added connections
            if announce and not living_before:  # the bucket decides: once
                self.server.when.emit("online", cid)
            excess = len(after) - self.server.conn_per_user
            for node, ref in after[: max(excess, 0)]:
                if node == self.node:
                    conn = self._local(cid, ref)
                    if conn is not None:
                        conn.drop(WSE_REASON.CLIENTS_CONCURRENCY)
                else:
                    drop = msgpack.packb([cid_text(cid), ref])
                    self._publish(_pack_name(_DROP_CONN, node, drop))
        ours_after = {ref for node, ref in after if node == self.node}
        if not after and ours_before - ours_after:  # this change removed the last one
            self.server.when.emit("offline", cid)

    async def _resync_all(self) -> None:
        """Writes this node's whole state: every user in the bucket loses the entries of
        this node's closed connections, every user with connections here gets them."""
        log.warning("cluster node %s: writing its whole registry state again", self.node)
        local = {_key(client.cid): client.cid for client in list(self.server.clients.values())}
        users = self._require(self._users)
        try:
            keys = await users.keys()
        except NoKeysError:
            keys = []
        todo = [(key, _GONE) for key in keys if key not in local] + list(local.items())
        for start in range(0, len(todo), _CHANGES_AT_ONCE):
            chunk = todo[start : start + _CHANGES_AT_ONCE]
            await asyncio.gather(*(self._sync(key, cid, False) for key, cid in chunk))

    def _resynced(self, task: asyncio.Task[None]) -> None:
        if self._resync_task is task:
            self._resync_task = None
        if task.cancelled():
            return
        failed = task.exception()
        if failed is not None:
            self._report(failed, {})
            self._dirty.clear()
            self._resync = True  # again, at the next heartbeat or reconnect
        else:
            self._pump()

    async def _sweep(self, dead: list[str]) -> None:
        """Removes the entries of nodes whose key expired from every user's list: one live
        node does it (the first to claim it), so that a dead node's users stop weighing on
        the bucket without waiting for each of them to change."""
        nodes, users = self._require(self._nodes), self._require(self._users)
        claimed = set()
        for node in dead:
            try:  # the claim expires with the bucket's TTL, as node keys do
                await nodes.create(f"s.{node}", self.node.encode())
                claimed.add(node)
            except KeyWrongLastSequenceError:
                pass  # another node sweeps it, or it left with nothing to sweep
        if not claimed:
            return
        try:
            keys = await users.keys()
        except NoKeysError:
            return

        def without_dead(entries: list[list[str]]) -> list[list[str]]:
            # alive again (a paused node that resumed, a restart under its name): kept
            return [e for e in entries if e[0] not in claimed or e[0] in self.alive]

        # A swept node may come back meanwhile (paused longer than its TTL, or NATS frozen so
        # long that every key expired at once): it writes its key, then its entries again.
        # Each list that names it looks it up afresh, never from a recent "dead" (the CAS
        # retries a list it wrote meanwhile), so that its entries written since stay.
        recheck = frozenset(claimed)
        for start in range(0, len(keys), _CHANGES_AT_ONCE):
            chunk = keys[start : start + _CHANGES_AT_ONCE]
            await asyncio.gather(
                *(self._change(key, without_dead, recheck=recheck) for key in chunk)
            )
        log.info("cluster node %s: swept the entries of %s", self.node, ", ".join(sorted(claimed)))

    def _swept(self, task: asyncio.Task[None]) -> None:
        self._sweeps.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("cluster sweep failed: %r", task.exception())

    # ---- messages from other nodes ---------------------------------------------------------

    async def _on_message(self, msg: Msg) -> None:
        data = msg.data
        if data[:_ORIGIN] == self._origin:
            return  # this node delivered it itself when it sent it
        data = data[_ORIGIN:]
        op = data[:1]
        server = self.server
        try:
            if op == _BROADCAST:
                frame = data[1:]
                if self._well_formed(frame):
                    server.deliver_to_all(frame)
            elif op == _SEND:
                name, frame = _unpack_name(data)
                if self._well_formed(frame):
                    server.deliver_to_user(cid_from_text(name), frame)
            elif op == _DROP_USER:
                name, reason = _unpack_name(data)
                server.drop_local_user(cid_from_text(name), reason.decode())
            elif op == _DROP_CONN:
                node, rest = _unpack_name(data)
                if node == self.node:
                    text, ref = msgpack.unpackb(rest)
                    cid = cid_from_text(text)
                    conn = self._local(cid, ref)
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
                self._subject,
            )
        return False

    async def _remote_call(
        self, node: str, cid: Any, ref: str, rp: str, payload: Any, timeout: float | None
    ) -> Any:
        nc = self._require(self._nc)
        limit = deadline(self.server.timeout, timeout)  # None: no deadline
        request = {"cid": cid_text(cid), "ref": ref, "rp": rp, "p": payload, "t": limit or 0}
        request = msgpack.packb(request)
        try:
            reply = await nc.request(
                f"{self.prefix}.call.{node}",
                request,
                timeout=limit + _CALL_MARGIN if limit else _NO_DEADLINE,
            )
            answer = msgpack.unpackb(reply.data)
        except Exception as exc:  # no responders, a timeout, a lost link, a garbled reply
            raise WseError(CLUSTER_UNAVAILABLE, {"error": repr(exc), "node": node}) from exc
        if isinstance(answer, dict) and "ok" in answer:
            return answer["ok"]
        error = answer.get("err") if isinstance(answer, dict) else None
        if not isinstance(error, dict) or not isinstance(error.get("code"), str):
            raise WseError(CLUSTER_UNAVAILABLE, {"error": "a reply not understood", "node": node})
        details = error.get("details") if isinstance(error.get("details"), dict) else None
        message = error.get("message") if isinstance(error.get("message"), str) else None
        if error.get("rpc"):  # the device answered with an error, as a local call would get
            raise RpcError(error["code"], details, message)
        raise WseError.from_code(error["code"], details, message)

    async def _on_call(self, msg: Msg) -> None:
        """Answers a ping at once; runs a call in a task of its own, so that a slow procedure
        holds up neither the other calls to this node nor its health check."""
        try:
            request = msgpack.unpackb(msg.data)
        except Exception:
            return
        if not isinstance(request, dict):
            return
        if request.get("ping"):
            with contextlib.suppress(Exception):
                await msg.respond(b"\x01")
            return
        if self.server.closing:
            # draining: no new work here; the caller tries the user's other connections
            refused = {
                "code": WSE_ERROR.CONNECTION_NOT_READY,
                "details": {"rpc": request.get("rp")},
            }
            with contextlib.suppress(Exception):
                await msg.respond(msgpack.packb({"err": refused}))
            return
        if len(self._calls) >= _CALLS_AT_ONCE:
            busy = {"code": CLUSTER_UNAVAILABLE, "details": {"error": "node busy"}}
            with contextlib.suppress(Exception):
                await msg.respond(msgpack.packb({"err": busy}))
            return
        task = asyncio.ensure_future(self._answer(msg, request))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _answer(self, msg: Msg, request: dict[str, Any]) -> None:
        try:
            cid = cid_from_text(str(request["cid"]))
            ref, rp = str(request["ref"]), str(request["rp"])
            conn = self._local(cid, ref)
            if conn is None:
                raise ConnectionNotReady({"rpc": rp})
            timeout = request.get("t")
            # 0: no deadline, as the caller asked (None would be this server's default)
            result = await conn.call(rp, request.get("p"), 0 if not timeout else float(timeout))
            answer = msgpack.packb({"ok": result})
        except WseError as exc:
            error = {"code": exc.code, "details": exc.details, "message": exc.message}
            try:
                answer = msgpack.packb({"err": {**error, "rpc": isinstance(exc, RpcError)}})
            except Exception:  # details msgpack cannot carry: the code alone
                answer = msgpack.packb({"err": {"code": exc.code, "rpc": True}})
        except Exception as exc:  # a bad request, or a result msgpack cannot carry
            error = {"code": WSE_ERROR.RP_EXECUTION_FAILED, "details": {"error": repr(exc)}}
            answer = msgpack.packb({"err": error})
        with contextlib.suppress(Exception):
            await msg.respond(answer)

    # ---- publishing ------------------------------------------------------------------------

    def _publish(self, data: bytes) -> None:
        """Queues a message for ``<prefix>.msg``; one task at a time hands them to NATS, in
        order. Past ``max_outbox`` bytes waiting (NATS slow or unreachable), it is lost."""
        if self._outbox_bytes + len(data) > self.max_outbox:
            self._count_lost(1)
            return
        self._outbox.append(self._origin + data)
        self._outbox_bytes += len(data)
        if self._flush_task is None or self._flush_task.done():
            # (a task that has ended may not have run its done callback yet: a new one goes)
            nc = self._nc
            if nc is None:
                self._count_lost(len(self._outbox))
                self._outbox, self._outbox_bytes = [], 0
                return
            self._flush_task = asyncio.ensure_future(self._flush_outbox(nc))
            self._flush_task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        if self._flush_task is task:
            self._flush_task = None

    async def _flush_outbox(self, nc: Nats) -> None:
        try:
            while self._outbox:
                batch, self._outbox, self._outbox_bytes = self._outbox, [], 0
                if not nc.is_connected:
                    self._count_lost(len(batch))
                    continue
                for sent, data in enumerate(batch):
                    try:
                        await nc.publish(self._subject, data)
                    except Exception:
                        self._count_lost(len(batch) - sent)
                        raise
        except Exception as exc:
            self._count_lost(len(self._outbox))
            self._outbox, self._outbox_bytes = [], 0
            self._report(exc, {})

    def _count_lost(self, count: int) -> None:
        """Counts messages lost; reported through ``error`` at most once a second (a storm of
        sends while NATS is away is one report, not one per message)."""
        if count:
            self.lost += count
            self._lost_unreported += count
            now = time.monotonic()
            if now >= self._next_loss_report:
                self._next_loss_report = now + 1.0
                lost, self._lost_unreported = self._lost_unreported, 0
                details = {"lost": lost, "total": self.lost, "node": self.node}
                self.server.when.emit("error", WseError(CLUSTER_LOST, details), None)

    # ---- liveness --------------------------------------------------------------------------

    async def _beat(self) -> None:
        """Every third of ``node_ttl``: renews this node's key and reads which nodes live,
        within ``health_timeout``. A renewal that fails or takes longer (NATS frozen,
        JetStream gone) makes the node unhealthy until one succeeds again."""
        interval = self.node_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                nc = self._nc
                if nc is None or nc.is_closed:
                    # closed for good by the client (a protocol error): link again
                    await self._unlink()
                    await self._link()
                    self._state("reconnected")
                elif not nc.is_connected:
                    continue  # reconnecting: _reconnected takes over
                async with asyncio.timeout(self.health_timeout):
                    await self._renew()
                    answers = self._link_state == _HEALTHY or await self._check()
                self._set_state(_HEALTHY if answers else _UNHEALTHY)
                self._pump()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._link_state == _HEALTHY:
                    log.warning("cluster heartbeat failed: %r", exc)
                if self._nc is not None and self._nc.is_connected:
                    self._set_state(_UNHEALTHY)

    async def _renew(self) -> None:
        nodes = self._require(self._nodes)
        key = f"n.{self.node}"
        expired = self._renewed and not await self._exists(key)
        await nodes.put(key, self.instance.encode())
        self._renewed = True
        try:
            keys = await nodes.keys()
        except NoKeysError:
            keys = []
        before = self.alive
        self.alive = frozenset(key[2:] for key in keys if key.startswith("n."))
        gone = sorted(before - self.alive - {self.node})
        if gone and self._started:
            sweep = asyncio.ensure_future(self._sweep(gone))
            self._sweeps.add(sweep)
            sweep.add_done_callback(self._swept)
        if expired:
            # The others took this node for dead (paused, or cut off from NATS, for longer
            # than node_ttl) and may have forgotten its connections: they are added again.
            log.warning("cluster node %s was taken for dead: its users are added again", self.node)
            for client in list(self.server.clients.values()):
                self._mark(_key(client.cid), client.cid, False)

    async def _exists(self, key: str) -> bool:
        try:
            await self._require(self._nodes).get(key)
        except (KeyNotFoundError, KeyDeletedError):
            return False
        return True

    async def _learn_nodes(
        self, entries: list[list[str]], recheck: frozenset[str] = frozenset()
    ) -> None:
        """Nodes in ``entries`` that this node does not know alive are looked up: one that
        joined since the last renewal is alive although this node has not seen it yet. A node
        found dead is not looked up again for a third of ``node_ttl``, unless in
        ``recheck``."""
        now = time.monotonic()
        unknown = {node for node, _ in entries} - self.alive - {self.node}
        unknown = {
            node for node in unknown if node in recheck or self._not_alive.get(node, 0.0) <= now
        }
        found = []
        for node in unknown:
            if await self._exists(f"n.{node}"):
                found.append(node)
            else:
                self._not_alive[node] = now + self.node_ttl / 3
        if found:
            self.alive = self.alive | frozenset(found)
        if len(self._not_alive) > 1024:
            self._not_alive = {n: t for n, t in self._not_alive.items() if t > now}

    async def _check(self) -> bool:
        """Whether this node's own call subscription answers through NATS."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            return False
        try:
            await nc.request(
                f"{self.prefix}.call.{self.node}",
                msgpack.packb({"ping": 1}),
                timeout=self.health_timeout,
            )
        except Exception:
            return False
        return True

    async def _disconnected(self) -> None:
        self._link_state = _DISCONNECTED
        self._state("disconnected")

    async def _reconnected(self) -> None:
        self._state("reconnected")
        try:
            async with asyncio.timeout(self.health_timeout):
                await self._renew()
            answers = await self._check()
        except Exception as exc:
            log.warning("cluster registry unreachable after the reconnect: %r", exc)
            answers = False
        self._set_state(_HEALTHY if answers else _UNHEALTHY)
        self._pump()

    async def _nats_error(self, exc: Exception) -> None:
        log.warning("NATS: %r", exc)

    def _set_state(self, state: str) -> None:
        """Moves to ``state`` (healthy or unhealthy), emitted once per change: a heartbeat
        and a reconnect that both find the link answering say "healthy" once."""
        if state != self._link_state:
            self._link_state = state
            self._state(state)

    def _state(self, state: str) -> None:
        level = logging.INFO if state in ("healthy", "reconnected") else logging.WARNING
        log.log(level, "cluster node %s: %s", self.node, state)
        self.server.when.emit("cluster", state)

    def _report(self, exc: BaseException, details: dict[str, Any]) -> None:
        if isinstance(exc, WseError):
            err = exc
        else:
            err = WseError(CLUSTER_UNAVAILABLE, {"error": repr(exc), **details})
        self.server.when.emit("error", err, None)

    @staticmethod
    def _require(value: Any) -> Any:
        if value is None:
            raise WseError(CLUSTER_UNAVAILABLE, {"error": "the cluster link is not started"})
        return value


def _decode_entries(value: bytes | None) -> list[list[str]]:
    entries = msgpack.unpackb(value) if value else []
    return [list(e) for e in entries if isinstance(e, list) and len(e) == 2]


def _living(entries: list[list[str]], me: list[str], alive: frozenset[str]) -> list[list[str]]:
    """The entries of live nodes (this one is, whatever its key says, but only this
    process's: ``me`` is ``[node, instance mark]``); a dead node's, or a former process's of
    this node's name, are forgotten by the next change of the list."""
    node, mark = me
    return [e for e in entries if (e[1].startswith(mark) if e[0] == node else e[0] in alive)]


async def _bucket(js: Any, name: str, ttl: float | None) -> KeyValue:
    """The bucket ``name``, made by the first node that needs it."""
    try:
        return await js.key_value(name)  # type: ignore[no-any-return]
    except Exception:
        pass
    try:
        return await js.create_key_value(bucket=name, history=1, ttl=ttl)  # type: ignore[no-any-return]
    except Exception:
        return await js.key_value(name)  # type: ignore[no-any-return]  # made by another node just now
