"""One node's link to NATS (see :mod:`wse_fast.cluster.nats_cluster` for the whole design):
the connection and its two buckets, the node's name claimed and renewed (the heartbeat), which
nodes live, the link's health, and the ordered, bounded outbox of ``<prefix>.msg``.

What arrives (messages from other nodes, calls to this one) and what the heartbeat learns
(nodes gone, this node taken for dead, the link answering again) goes to the
:class:`LinkListener` it is given; the link itself knows neither users nor calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import struct
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from ..errors import WseError
from .nats_client import (
    KeyDeletedError,
    KeyNotFoundError,
    KeyValue,
    KeyWrongLastSequenceError,
    Msg,
    Nats,
    NoKeysError,
    allow_websocket,
    connect,
)

if TYPE_CHECKING:
    from .broker import BrokerHandler

log = logging.getLogger("wse_fast.cluster")

CLUSTER_UNAVAILABLE = "wse.cluster.unavailable"
CLUSTER_LOST = "wse.cluster.lost"

# what a message on <prefix>.msg carries: an operation, then its fields
BROADCAST, SEND, DROP_USER, DROP_CONN = b"b", b"s", b"d", b"x"
_LENGTH = struct.Struct("!I")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ORIGIN = 8  # bytes of the sending node's mark, first in every message

#: The states of the link, as ``when.cluster`` reports them (with "reconnected" between).
_HEALTHY, _UNHEALTHY, _DISCONNECTED = "healthy", "unhealthy", "disconnected"

#: Listings of the nodes bucket a read of the live nodes may take before it fails: a listing
#: without this node's own key is cut short (``NatsLink._read_nodes``).
_NODE_READS = 3
#: Seconds before the second listing of the nodes bucket (twice that before the third).
_NODE_READ_PAUSE = 0.05


def pack_name(op: bytes, name: str, rest: bytes = b"") -> bytes:
    """An operation on a user (``name``: its cid) or a node's connection (its node)."""
    raw = name.encode()
    return op + _LENGTH.pack(len(raw)) + raw + rest


def unpack_name(data: bytes) -> tuple[str, bytes]:
    (length,) = _LENGTH.unpack_from(data, 1)
    start = 1 + _LENGTH.size
    return data[start : start + length].decode(), data[start + length :]


def required(value: Any) -> Any:
    """``value``, which exists once the link is made; else ``wse.cluster.unavailable``."""
    if value is None:
        raise WseError(CLUSTER_UNAVAILABLE, {"error": "the cluster link is not started"})
    return value


class LinkListener(Protocol):
    """What the link hands on: what arrived, and what its heartbeat learnt."""

    def on_message(self, data: bytes) -> None:
        """A message of another node on ``<prefix>.msg`` (without its origin mark)."""

    def on_call(self, msg: Msg) -> Awaitable[None]:
        """A request on this node's call subject (a call, or the link's own ping)."""

    def nodes_gone(self, gone: list[str]) -> None:
        """These nodes' keys expired since the last renewal."""

    def taken_for_dead(self) -> None:
        """This node's own key had expired: the others may have forgotten its state."""

    def answering(self) -> None:
        """NATS answered a heartbeat or a reconnect: queued work may go."""


class NatsLink:
    """The connection of one node to NATS, its liveness and its outbox."""

    def __init__(
        self,
        handler: BrokerHandler,
        listener: LinkListener,
        urls: Sequence[str],
        *,
        node: str,
        prefix: str,
        node_ttl: float,
        connect_timeout: float,
        max_outbox: int,
        health_timeout: float | None,
        nats_options: dict[str, Any] | None,
    ) -> None:
        if node_ttl <= 0 or connect_timeout <= 0:
            raise ValueError("node_ttl and connect_timeout must be positive")
        if health_timeout is not None and health_timeout <= 0:
            raise ValueError("health_timeout must be positive")
        # both go into subjects and bucket names: ASCII letters, digits, '-' and '_' only
        if not _NAME.fullmatch(node) or not _NAME.fullmatch(prefix):
            raise ValueError("node and prefix take 1 to 64 ASCII letters, digits, '-' and '_'")
        self._handler = handler
        self._listener = listener
        self.urls = list(urls)
        self.node = node
        self.prefix = prefix
        self.node_ttl = node_ttl
        self.connect_timeout = connect_timeout
        self.max_outbox = max_outbox
        #: What a heartbeat (the renewal of this node's key, a NATS round trip) and a lookup
        #: of ``online`` may take before NATS counts as unreachable.
        self.health_timeout = (
            health_timeout if health_timeout is not None else max(node_ttl / 3, 1.0)
        )
        self.nats_options = dict(nats_options or {})
        self.lost = 0  # messages not handed to NATS because the link was down
        self._lost_unreported = 0
        self._next_loss_report = 0.0
        self.alive: frozenset[str] = frozenset()  # nodes whose key has not expired
        # this process's mark in the registry's entries, new at every start
        self.instance = secrets.token_hex(4)
        self._nc: Nats | None = None
        #: The bucket of users' connections, and of live nodes (and sweep claims).
        self.users: KeyValue | None = None
        self.nodes: KeyValue | None = None
        self.subject = f"{prefix}.msg"
        # NATS echoes a node's messages back to it (the node's health check needs its own
        # requests answered): they carry this mark so that it skips them
        self._origin = secrets.token_bytes(_ORIGIN)
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        self._flush_task: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._writing: asyncio.Task[bool] | None = None  # the heartbeat's key write
        self._renewal: asyncio.Task[bool] | None = None  # the rest of its work
        self._renewing = asyncio.Lock()  # one renewal at a time: each expects the last's
        self._not_alive: dict[str, float] = {}  # node: until when it is taken for dead
        self._state = _DISCONNECTED
        self.started = False  # the node's name is claimed, its key written
        #: The revision of this node's key as this process last wrote it (None: not yet
        #: written since it started): the next renewal expects it, so that a key that
        #: expired meanwhile is found in the same round trip that writes it again.
        self._revision: int | None = None

    @property
    def healthy(self) -> bool:
        """Linked to NATS, its subscriptions answering (checked after every reconnect) and
        its heartbeat renewed within ``health_timeout``."""
        nc = self._nc
        return self._state == _HEALTHY and nc is not None and nc.is_connected

    @property
    def connected(self) -> bool:
        nc = self._nc
        return nc is not None and nc.is_connected

    # ---- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Links to NATS: within ``connect_timeout``, or raises ``wse.cluster.unavailable``.
        Refuses a node name another live process holds."""
        await self._link()
        nodes = required(self.nodes)
        # A node name is one process's: a process that takes over a name waits for the key
        # of the one before it (gone without a goodbye) to expire, for up to node_ttl.
        deadline = time.monotonic() + self.node_ttl + 1
        while True:
            try:
                self._revision = await nodes.create(f"n.{self.node}", self.instance.encode())
                break
            except KeyWrongLastSequenceError:
                if time.monotonic() > deadline:
                    await self.close()
                    error = {"error": "a live node has this name", "node": self.node}
                    raise WseError(CLUSTER_UNAVAILABLE, error) from None
                await asyncio.sleep(self.node_ttl / 6)
        # a claim on sweeping this name's entries left by its former process's goodbye
        # would keep the others from sweeping this one's, should it die
        with contextlib.suppress(Exception):
            await nodes.delete(f"s.{self.node}")
        self.started = True
        await self.renew()
        # the first state is not an event: "healthy" and "unhealthy" report changes
        self._state = _HEALTHY if await self._check() else _UNHEALTHY
        self._heartbeat = asyncio.ensure_future(self._beat())

    def stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        for task in (self._writing, self._renewal):
            if task is not None:
                task.cancel()
        self._writing = self._renewal = None

    async def leave(self, swept: bool) -> None:
        """What is queued goes out, and the node's key goes; ``swept``: none of this node's
        entries is left in the registry, so a claim says that nobody need sweep after it."""
        if self._flush_task is not None:  # what it is sending leaves before the rest
            await asyncio.gather(self._flush_task, return_exceptions=True)
        nc = self._nc
        if nc is not None:
            with contextlib.suppress(Exception):
                await self._flush_outbox(nc)
                if self.started and self.nodes is not None:
                    if swept:
                        with contextlib.suppress(Exception):
                            await self.nodes.create(f"s.{self.node}", self.node.encode())
                    await self.nodes.delete(f"n.{self.node}")

    async def close(self) -> None:
        self.started = False
        self._revision = None
        await self._unlink()

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
            allow_websocket(self.urls)
            # nats-py retries a first connect for ever when reconnects are unlimited
            nc = await asyncio.wait_for(connect(servers=self.urls, **options), self.connect_timeout)
        except Exception as exc:
            raise WseError(CLUSTER_UNAVAILABLE, {"error": repr(exc)}) from exc
        self._nc = nc
        try:
            js = nc.jetstream()
            self.users = await _bucket(js, f"{self.prefix}_users", ttl=None)
            self.nodes = await _bucket(js, f"{self.prefix}_nodes", ttl=self.node_ttl)
            await nc.subscribe(self.subject, cb=self._on_message)
            await nc.subscribe(f"{self.prefix}.call.{self.node}", cb=self._listener.on_call)
        except Exception as exc:
            await self._unlink()
            raise WseError(CLUSTER_UNAVAILABLE, {"error": repr(exc)}) from exc

    async def _unlink(self) -> None:
        nc, self._nc = self._nc, None
        self._state = _DISCONNECTED
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.drain()
            with contextlib.suppress(Exception):
                await nc.close()

    # ---- messages --------------------------------------------------------------------------

    async def _on_message(self, msg: Msg) -> None:
        data = msg.data
        if data[:_ORIGIN] == self._origin:
            return  # this node delivered it itself when it sent it
        self._listener.on_message(data[_ORIGIN:])

    def publish(self, data: bytes) -> None:
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
                        await nc.publish(self.subject, data)
                    except Exception:
                        self._count_lost(len(batch) - sent)
                        raise
        except Exception as exc:
            self._count_lost(len(self._outbox))
            self._outbox, self._outbox_bytes = [], 0
            self.report(exc, {})

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
                self._handler.broker_error(WseError(CLUSTER_LOST, details))

    async def request(self, node: str, data: bytes, timeout: float) -> bytes:
        """A request to ``node``'s call subject, and its answer."""
        nc = required(self._nc)
        reply = await nc.request(f"{self.prefix}.call.{node}", data, timeout=timeout)
        return reply.data  # type: ignore[no-any-return]

    # ---- liveness --------------------------------------------------------------------------

    async def _beat(self) -> None:
        """Every third of ``node_ttl``: writes this node's key, then reads which nodes live.
        A beat whose work fails, or is not done within ``health_timeout`` (NATS frozen,
        JetStream gone or overloaded), makes the node unhealthy until one succeeds again.

        The write is what keeps the node alive, so it goes first and on its own: it is
        never cancelled for being late (it still lands, and keeps the key; a renewal
        cancelled before its write let the key expire under load, and the others swept a
        node that lived), and a beat starts a new write whenever the last one is done, even
        while the rest of an earlier beat's work (the read of the live nodes, slower: a
        consumer of the bucket) is still under way."""
        interval = self.node_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                nc = self._nc
                if nc is None or nc.is_closed:
                    # closed for good by the client (a protocol error): link again
                    await self._unlink()
                    await self._link()
                    self._emit("reconnected")
                elif not nc.is_connected:
                    continue  # reconnecting: _reconnected takes over
                writing = self._writing
                if writing is None or writing.done():
                    writing = self._writing = asyncio.ensure_future(self._write_key())
                    writing.add_done_callback(self._key_written)
                renewal = self._renewal
                if renewal is None or renewal.done():
                    renewal = self._renewal = asyncio.ensure_future(self._rest_of_beat(writing))
                await asyncio.wait({renewal}, timeout=self.health_timeout)
                if not renewal.done():
                    raise TimeoutError(f"NATS did not answer within {self.health_timeout} s")
                self._set_state(_HEALTHY if renewal.result() else _UNHEALTHY)
                self._listener.answering()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._state == _HEALTHY:
                    log.warning("cluster heartbeat failed: %r", exc)
                if self._nc is not None and self._nc.is_connected:
                    self._set_state(_UNHEALTHY)

    async def _rest_of_beat(self, writing: asyncio.Task[bool]) -> bool:
        """After the key's write: which nodes live, then (when the link was not healthy)
        whether this node's own call subscription answers."""
        await asyncio.shield(writing)  # a stop cancels this, and the write on its own
        await self._read_nodes()
        return self._state == _HEALTHY or await self._check()

    def _key_written(self, task: asyncio.Task[bool]) -> None:
        # (a failed write is reported by the beat that waits for it)
        if not task.cancelled() and task.exception() is None and task.result():
            self._taken_for_dead()

    async def renew(self) -> None:
        """Writes this node's key, then reads which nodes live."""
        expired = await self._write_key()
        await self._read_nodes()
        if expired:
            self._taken_for_dead()

    async def _read_nodes(self) -> None:
        """Which nodes live (their keys): those gone since the last read are told.

        Only a whole listing counts. nats-py lists a bucket's keys through a watch that
        ends at its mark for "every value present at the start came", which it takes from a
        consumer info; a busy nats-server answers that before the values its consumer has
        already sent (nats-io/nats.py#842), and the listing comes back empty. It took every
        other node for gone for a beat, and claimed their sweeps (``s.<node>``): a live node
        claimed that way and dead within ``node_ttl`` was never swept. Every read follows a
        write of this node's own key (``renew``, and each beat waits for its write), so a
        listing without that key is not whole: it is read again, up to ``_NODE_READS``
        times, then the read fails as one NATS does not answer (nothing learnt, no claim).
        A listing cut short is always empty: nats-py sets the early mark only when no value
        has arrived yet, and then all of them come after it (otherwise its mark comes with
        the value NATS says is the last pending)."""
        nodes = required(self.nodes)
        own = f"n.{self.node}"
        for attempt in range(_NODE_READS):
            if attempt:
                # a listing cut short means a busy nats-server: give it a moment, not a
                # new consumer at once
                await asyncio.sleep(_NODE_READ_PAUSE * attempt)
            try:
                keys = await nodes.keys()
            except NoKeysError:
                keys = []
            if own in keys:
                break
        else:
            # (also a key that expired after its write: a read late by node_ttl; the next
            # beat's write finds it gone and this node taken for dead)
            error = f"{_NODE_READS} listings of the nodes bucket lacked this node's own key"
            raise WseError(CLUSTER_UNAVAILABLE, {"error": error, "node": self.node})
        before = self.alive
        self.alive = frozenset(key[2:] for key in keys if key.startswith("n."))
        gone = sorted(before - self.alive - {self.node})
        if gone and self.started:
            self._listener.nodes_gone(gone)

    def _taken_for_dead(self) -> None:
        # The others took this node for dead (paused, or cut off from NATS, for longer than
        # node_ttl) and may have forgotten its connections: they are added again.
        log.warning("cluster node %s was taken for dead: its users are added again", self.node)
        self._listener.taken_for_dead()

    async def _write_key(self) -> bool:
        """Writes this node's key, in one round trip while it is as this process left it (an
        update that expects its last revision); whether it had expired (or gone) since."""
        async with self._renewing:
            nodes = required(self.nodes)
            key, value = f"n.{self.node}", self.instance.encode()
            if self._revision is None:
                self._revision = await nodes.put(key, value)
                return False
            try:
                self._revision = await nodes.update(key, value, last=self._revision)
                return False
            except KeyWrongLastSequenceError:
                pass
            # Not as last written: expired, or a write whose answer was lost (a request that
            # timed out after NATS took it). Only a key that no longer holds this process's
            # mark means the others may have taken it for dead.
            try:
                entry = await nodes.get(key)
                expired = bytes(entry.value or b"") != value
            except (KeyNotFoundError, KeyDeletedError):
                expired = True
            self._revision = await nodes.put(key, value)
            return expired

    async def _exists(self, key: str) -> bool:
        try:
            await required(self.nodes).get(key)
        except (KeyNotFoundError, KeyDeletedError):
            return False
        return True

    async def learn_nodes(
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
        self._state = _DISCONNECTED
        self._emit("disconnected")

    async def _reconnected(self) -> None:
        self._emit("reconnected")
        try:
            async with asyncio.timeout(self.health_timeout):
                await self.renew()
            answers = await self._check()
        except Exception as exc:
            log.warning("cluster registry unreachable after the reconnect: %r", exc)
            answers = False
        self._set_state(_HEALTHY if answers else _UNHEALTHY)
        self._listener.answering()

    async def _nats_error(self, exc: Exception) -> None:
        log.warning("NATS: %r", exc)

    def _set_state(self, state: str) -> None:
        """Moves to ``state`` (healthy or unhealthy), emitted once per change: a heartbeat
        and a reconnect that both find the link answering say "healthy" once."""
        if state != self._state:
            self._state = state
            self._emit(state)

    def _emit(self, state: str) -> None:
        level = logging.INFO if state in ("healthy", "reconnected") else logging.WARNING
        log.log(level, "cluster node %s: %s", self.node, state)
        self._handler.broker_state(state)

    def report(self, exc: BaseException, details: dict[str, Any]) -> None:
        """``exc`` through the server's ``error`` event (as ``wse.cluster.unavailable``
        unless it is a WseError)."""
        if isinstance(exc, WseError):
            err = exc
        else:
            err = WseError(CLUSTER_UNAVAILABLE, {"error": repr(exc), **details})
        self._handler.broker_error(err)


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
