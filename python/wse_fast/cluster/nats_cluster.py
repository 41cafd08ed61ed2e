"""Several WseServer processes as one logical server, over NATS.

Each process is a node. What the nodes share lives in NATS, never in a broker of our own:

- ``<prefix>.msg``: one subject every node subscribes to, carrying broadcasts, sends to a
  user, and drops; a node delivers what concerns its own connections (its own messages it
  delivered when it sent them, and skips). One subject (not one
  per user, and not one per kind) keeps the subscriptions per node constant whatever the
  number of users, and keeps the order of everything one node sends: NATS delivers one
  publisher's messages on one subject in order. Every message reaches every node, which looks
  the user up in a dict: the cost grows with the number of nodes, not of users.
- ``<prefix>.call.<node>``: request/reply, for calls to a connection on that node (and the
  node's own health check).
- JetStream key-value bucket ``<prefix>_users``: for each user with open connections, the list
  of its connections ``[node, conn_id]``, oldest first. It is changed only by
  compare-and-set on the key's revision, so every change is ordered by the bucket (never by
  clocks), and the node that appends a connection sees every connection added before it:
  it drops the oldest past ``conn_per_user``, wherever they live.
- JetStream key-value bucket ``<prefix>_nodes``, with a TTL of ``node_ttl``: each node renews
  its key every third of it. A node killed without a goodbye stops renewing; once its key has
  expired its connections no longer count (``online``, the per-user limit, ``call``), and they
  leave the users' lists the next time those lists change.

Delivery is at most once: what a node publishes while it has no link to NATS is not queued
for later but counted as lost (``NatsCluster.lost``) and reported through the server's
``error`` event. Within one node, delivery to its own connections never depends on NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import socket
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgpack
import nats
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js.errors import (
    BadRequestError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue

from ..constants import WSE_ERROR, WSE_REASON
from ..errors import ConnectionNotReady, RpcError, WseError

if TYPE_CHECKING:
    from ..server import WseServer

log = logging.getLogger("wse_fast.cluster")

# what a message on <prefix>.msg carries: an operation, then its fields
_BROADCAST, _SEND, _DROP_USER, _DROP_CONN = b"b", b"s", b"d", b"x"
_LENGTH = struct.Struct("!H")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ORIGIN = 8  # bytes of the sending node's mark, first in every message
#: Compare-and-set attempts on one user's list before giving up (each failure means another
#: node changed it in between).
_CAS_ATTEMPTS = 50
#: Seconds a call waits beyond its own timeout for the other node's answer to arrive.
_CALL_MARGIN = 1.0

CLUSTER_UNAVAILABLE = "wse.cluster.unavailable"
CLUSTER_LOST = "wse.cluster.lost"


def default_node_name() -> str:
    """The host's first label, the pid and a random part (a restarted process may get an old
    pid back while its former self still counts as alive)."""
    host = "".join(
        c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname().split(".")[0]
    )
    return f"{host or 'node'}-{os.getpid()}-{secrets.token_hex(3)}"


def _key(cid: str) -> str:
    """A user's key in the bucket: KV keys take ``[-/_=.a-zA-Z0-9]``, a cid anything."""
    return "u." + cid.encode().hex()


def _pack_name(op: bytes, name: str, rest: bytes = b"") -> bytes:
    """An operation on a user (``name``: its cid) or a node's connection (its node)."""
    raw = name.encode()
    return op + _LENGTH.pack(len(raw)) + raw + rest


def _unpack_name(data: bytes) -> tuple[str, bytes]:
    (length,) = _LENGTH.unpack_from(data, 1)
    return data[3 : 3 + length].decode(), data[3 + length :]


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
        nats_options: dict[str, Any] | None = None,
    ) -> None:
        if node_ttl <= 0:
            raise ValueError("node_ttl must be positive")
        self.server = server
        self.urls = list(urls)
        self.node = node or default_node_name()
        # both go into subjects and bucket names: ASCII letters, digits, '-' and '_' only
        if not _NAME.fullmatch(self.node) or not _NAME.fullmatch(prefix):
            raise ValueError("node and prefix take ASCII letters, digits, '-' and '_'")
        self.prefix = prefix
        self.node_ttl = node_ttl
        self.nats_options = dict(nats_options or {})
        self.lost = 0  # messages not handed to NATS because the link was down
        self.alive: frozenset[str] = frozenset()  # nodes whose key has not expired
        self._nc: Nats | None = None
        self._users: KeyValue | None = None
        self._nodes: KeyValue | None = None
        self._subject = f"{prefix}.msg"
        # NATS echoes a node's messages back to it (the node's health check needs its own
        # requests answered): they carry this mark so that it skips them
        self._origin = secrets.token_bytes(_ORIGIN)
        self._outbox: list[tuple[str, bytes]] = []
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._changes: dict[str, asyncio.Task[Any]] = {}  # conn_id: its registry change
        self._healthy = False
        self._started = False
        self._renewed = False

    # ---- life cycle ------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """Linked to NATS with its subscriptions answering (checked after every reconnect)."""
        return self._healthy and self._nc is not None and self._nc.is_connected

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        options: dict[str, Any] = {
            "name": f"wse-fast {self.node}",
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "pending_size": 8 << 20,
            **self.nats_options,
            "disconnected_cb": self._disconnected,
            "reconnected_cb": self._reconnected,
            "error_cb": self._nats_error,
        }
        self._nc = nc = await nats.connect(servers=self.urls, **options)
        js = nc.jetstream()
        self._users = await _bucket(js, f"{self.prefix}_users", ttl=None)
        self._nodes = await _bucket(js, f"{self.prefix}_nodes", ttl=self.node_ttl)
        await nc.subscribe(self._subject, cb=self._on_message)
        await nc.subscribe(f"{self.prefix}.call.{self.node}", cb=self._on_call)
        await self._renew()
        self._healthy = await self._check()
        self._heartbeat = asyncio.ensure_future(self._beat())

    async def stop(self) -> None:
        """Leaves the cluster: the node's key goes, and what is queued is sent."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self._changes:
            await asyncio.gather(*self._changes.values(), return_exceptions=True)
        nc, self._nc = self._nc, None
        if nc is None:
            return
        self._healthy = False
        self._started = False
        self._renewed = False
        with contextlib.suppress(Exception):
            await self._flush_outbox(nc)
            if self._nodes is not None:
                await self._nodes.delete(f"n.{self.node}")
        with contextlib.suppress(Exception):
            await nc.drain()

    # ---- what the server asks --------------------------------------------------------------

    def broadcast(self, frame: bytes) -> None:
        self._publish(_BROADCAST + frame)

    def send(self, cid: str, frame: bytes) -> None:
        self._publish(_pack_name(_SEND, cid, frame))

    def drop_user(self, cid: str, reason: str) -> None:
        self._publish(_pack_name(_DROP_USER, cid, reason.encode()))

    def added(self, cid: str, conn_id: str) -> None:
        """A connection of this node was accepted: it joins its user's list."""
        self._track(conn_id, asyncio.ensure_future(self._added(cid, conn_id)))

    def removed(self, cid: str, conn_id: str) -> None:
        """A connection of this node closed: it leaves its user's list (after its own
        addition, should that still be under way)."""
        before = self._changes.pop(conn_id, None)
        self._track(conn_id, asyncio.ensure_future(self._removed(cid, conn_id, before)))

    def _track(self, conn_id: str, task: asyncio.Task[Any]) -> None:
        """Keeps a registry change until it is done (a removal waits for the addition)."""
        self._changes[conn_id] = task

        def done(finished: asyncio.Task[Any]) -> None:
            if self._changes.get(conn_id) is finished:
                del self._changes[conn_id]

        task.add_done_callback(done)

    async def online(self, cid: str) -> int:
        """The user's open connections on every live node."""
        entries = await self._entries(cid)
        await self._learn_nodes(entries)
        local = self.server.clients.get(cid)
        here = len(local.conns) if local is not None else 0
        return here + sum(1 for node, _ in entries if node != self.node and node in self.alive)

    async def call(self, cid: str, rp: str, payload: Any, timeout: float | None) -> Any:
        """Calls the user's newest connection on any live node."""
        entries = await self._entries(cid)
        await self._learn_nodes(entries)
        local = self.server.clients.get(cid)
        for node, conn_id in reversed(entries):
            if node == self.node:
                conn = self.server.connections.get(conn_id)
                if conn is not None and conn.open:
                    return await conn.call(rp, payload, timeout)
            elif node in self.alive:
                return await self._remote_call(node, conn_id, rp, payload, timeout)
        if local is not None and local.conns:  # accepted here, not yet in the list
            return await list(local.conns.values())[-1].call(rp, payload, timeout)
        raise ConnectionNotReady({"rpc": rp, "cid": cid})

    # ---- the registry ----------------------------------------------------------------------

    async def _entries(self, cid: str) -> list[list[str]]:
        users = self._require(self._users)
        try:
            entry = await users.get(_key(cid))
        except (KeyNotFoundError, KeyDeletedError):
            return []
        except Exception as exc:
            raise WseError(CLUSTER_UNAVAILABLE, {"error": repr(exc)}) from exc
        return list(msgpack.unpackb(entry.value)) if entry.value else []

    async def _change(
        self, cid: str, change: Callable[[list[list[str]]], list[list[str]]]
    ) -> tuple[list[list[str]], list[list[str]]]:
        """Applies ``change`` to the user's list by compare-and-set: the list it read and the
        list it wrote, in the change that took."""
        users = self._require(self._users)
        key = _key(cid)
        for _ in range(_CAS_ATTEMPTS):
            revision: int | None
            try:
                entry = await users.get(key)
                revision = entry.revision
                entries = list(msgpack.unpackb(entry.value)) if entry.value else []
            except (KeyNotFoundError, KeyDeletedError):
                revision, entries = None, []
            await self._learn_nodes(entries)  # never forget a node only this one thinks dead
            after = change(entries)
            try:
                if not after:
                    if revision is not None:
                        await users.delete(key, last=revision)
                elif revision is None:
                    await users.create(key, msgpack.packb(after))
                else:
                    await users.update(key, msgpack.packb(after), last=revision)
                return entries, after
            except (KeyWrongLastSequenceError, BadRequestError):
                continue  # another node changed it first: read it again
        raise WseError(CLUSTER_UNAVAILABLE, {"error": "the user's list kept changing", "cid": cid})

    async def _added(self, cid: str, conn_id: str, announce: bool = True) -> None:
        me, entry = self.node, [self.node, conn_id]

        def add(entries: list[list[str]]) -> list[list[str]]:
            living = _living(entries, me, self.alive)
            return living if entry in living else [*living, entry]

        try:
            before, after = await self._change(cid, add)
        except Exception as exc:
            self._report(exc, {"cid": cid, "conn_id": conn_id})
            return
        if announce and not _living(before, me, self.alive):  # decided by the bucket: once
            self.server.when.emit("online", cid)
        excess = len(after) - self.server.conn_per_user
        for node, other in after[: max(excess, 0)]:
            if node == self.node:
                conn = self.server.connections.get(other)
                if conn is not None:
                    conn.drop(WSE_REASON.CLIENTS_CONCURRENCY)
            else:
                self._publish(_pack_name(_DROP_CONN, node, other.encode()))

    async def _removed(self, cid: str, conn_id: str, adding: asyncio.Task[Any] | None) -> None:
        if adding is not None:
            await asyncio.gather(adding, return_exceptions=True)
        me = self.node

        def remove(entries: list[list[str]]) -> list[list[str]]:
            return [e for e in _living(entries, me, self.alive) if e != [me, conn_id]]

        try:
            before, after = await self._change(cid, remove)
        except Exception as exc:
            self._report(exc, {"cid": cid, "conn_id": conn_id})
            return
        if not after and [me, conn_id] in before:
            self.server.when.emit("offline", cid)

    # ---- messages from other nodes ---------------------------------------------------------

    async def _on_message(self, msg: Msg) -> None:
        data = msg.data
        if data[:_ORIGIN] == self._origin:
            return  # this node delivered it itself when it sent it
        data = data[_ORIGIN:]
        op = data[:1]
        server = self.server
        if op == _BROADCAST:
            server.deliver_to_all(data[1:])
        elif op == _SEND:
            cid, frame = _unpack_name(data)
            server.deliver_to_user(cid, frame)
        elif op == _DROP_USER:
            cid, reason = _unpack_name(data)
            server.drop_local_user(cid, reason.decode())
        elif op == _DROP_CONN:
            node, conn_id = _unpack_name(data)
            if node == self.node:
                conn = server.connections.get(conn_id.decode())
                if conn is not None:
                    conn.drop(WSE_REASON.CLIENTS_CONCURRENCY)

    async def _remote_call(
        self, node: str, conn_id: str, rp: str, payload: Any, timeout: float | None
    ) -> Any:
        nc = self._require(self._nc)
        limit = self.server.timeout if timeout is None else timeout
        request = msgpack.packb({"c": conn_id, "r": rp, "p": payload, "t": limit})
        try:
            reply = await nc.request(
                f"{self.prefix}.call.{node}", request, timeout=limit + _CALL_MARGIN
            )
        except Exception as exc:  # no responders, a timeout, a lost link
            raise WseError(CLUSTER_UNAVAILABLE, {"error": repr(exc), "node": node}) from exc
        answer = msgpack.unpackb(reply.data)
        if "ok" in answer:
            return answer["ok"]
        error = answer["err"]
        code, details, message = error["code"], error.get("details"), error.get("message")
        if error.get("rpc"):  # the device answered with an error, as a local call would get
            raise RpcError(code, details, message)
        raise WseError.from_code(code, details, message)

    async def _on_call(self, msg: Msg) -> None:
        request = msgpack.unpackb(msg.data)
        if request.get("ping"):
            await msg.respond(b"\x01")
            return
        conn = self.server.connections.get(request["c"])
        try:
            if conn is None:
                raise ConnectionNotReady({"rpc": request["r"]})
            result = await conn.call(request["r"], request["p"], request["t"])
            answer = msgpack.packb({"ok": result})
        except WseError as exc:
            error = {"code": exc.code, "details": exc.details, "message": exc.message}
            answer = msgpack.packb({"err": {**error, "rpc": isinstance(exc, RpcError)}})
        except Exception as exc:  # a result msgpack cannot carry
            details = {"error": repr(exc)}
            answer = msgpack.packb(
                {"err": {"code": WSE_ERROR.RP_EXECUTION_FAILED, "details": details}}
            )
        with contextlib.suppress(Exception):
            await msg.respond(answer)

    # ---- publishing ------------------------------------------------------------------------

    def _publish(self, data: bytes) -> None:
        """Queues a message for ``<prefix>.msg``; one task per loop turn hands them to NATS
        in order."""
        self._outbox.append((self._subject, self._origin + data))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._start_flush)

    def _start_flush(self) -> None:
        nc = self._nc
        if nc is None:
            self._count_lost(len(self._outbox))
            self._outbox.clear()
            self._flushing = False
            return
        self._flush_task = asyncio.ensure_future(self._flush_outbox(nc))

    async def _flush_outbox(self, nc: Nats) -> None:
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                if not nc.is_connected:
                    self._count_lost(len(batch))
                    continue
                for subject, data in batch:
                    await nc.publish(subject, data)
        except Exception as exc:
            self._report(exc, {})
        finally:
            self._flushing = False

    def _count_lost(self, count: int) -> None:
        if count:
            self.lost += count
            err = WseError(CLUSTER_LOST, {"lost": count, "total": self.lost, "node": self.node})
            self.server.when.emit("error", err, None)

    # ---- liveness --------------------------------------------------------------------------

    async def _beat(self) -> None:
        interval = self.node_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._renew()
                if not self._healthy:
                    self._healthy = await self._check()
                    if self._healthy:
                        self._state("healthy")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster heartbeat failed: %r", exc)

    async def _renew(self) -> None:
        nodes = self._require(self._nodes)
        key = f"n.{self.node}"
        expired = self._renewed and not await self._exists(key)
        await nodes.put(key, b"")
        self._renewed = True
        try:
            keys = await nodes.keys()
        except NoKeysError:
            keys = []
        self.alive = frozenset(key[2:] for key in keys if key.startswith("n."))
        if expired:
            # The others took this node for dead (paused, or cut off from NATS, for longer
            # than node_ttl) and may have forgotten its connections: they are added again.
            log.warning(
                "cluster node %s was taken for dead: registering its users again", self.node
            )
            for client in list(self.server.clients.values()):
                for conn_id in list(client.conns):
                    self._track(
                        conn_id, asyncio.ensure_future(self._added(client.cid, conn_id, False))
                    )

    async def _exists(self, key: str) -> bool:
        try:
            await self._require(self._nodes).get(key)
        except (KeyNotFoundError, KeyDeletedError):
            return False
        return True

    async def _learn_nodes(self, entries: list[list[str]]) -> None:
        """Nodes in ``entries`` that this node does not know alive are looked up: one that
        joined since the last renewal is alive although this node has not seen it yet."""
        unknown = {node for node, _ in entries} - self.alive - {self.node}
        if unknown:
            found = [node for node in unknown if await self._exists(f"n.{node}")]
            if found:
                self.alive = self.alive | frozenset(found)

    async def _check(self) -> bool:
        """Whether this node's own call subscription answers through NATS."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            return False
        try:
            await nc.request(
                f"{self.prefix}.call.{self.node}", msgpack.packb({"ping": 1}), timeout=2
            )
        except Exception:
            return False
        return True

    async def _disconnected(self) -> None:
        self._healthy = False
        self._state("disconnected")

    async def _reconnected(self) -> None:
        self._state("reconnected")
        try:
            await self._renew()
        except Exception as exc:
            log.warning("cluster registry unreachable after the reconnect: %r", exc)
        self._healthy = await self._check()
        self._state("healthy" if self._healthy else "unhealthy")

    async def _nats_error(self, exc: Exception) -> None:
        log.warning("NATS: %r", exc)

    def _state(self, state: str) -> None:
        log.log(
            logging.INFO if state in ("healthy", "reconnected") else logging.WARNING,
            "cluster node %s: %s",
            self.node,
            state,
        )
        self.server.when.emit("cluster", state)

    def _report(self, exc: BaseException, details: dict[str, Any]) -> None:
        err = (
            exc
            if isinstance(exc, WseError)
            else WseError(CLUSTER_UNAVAILABLE, {"error": repr(exc), **details})
        )
        self.server.when.emit("error", err, None)

    @staticmethod
    def _require(value: Any) -> Any:
        if value is None:
            raise WseError(CLUSTER_UNAVAILABLE, {"error": "the cluster link is not started"})
        return value


def _living(entries: list[list[str]], me: str, alive: frozenset[str]) -> list[list[str]]:
    """The entries of live nodes (this one is, whatever its key says); a dead node's are
    forgotten by the next change of the list."""
    return [e for e in entries if e[0] == me or e[0] in alive]


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
