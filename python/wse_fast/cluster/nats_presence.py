"""Presence over NATS (see :mod:`wse_fast.cluster.nats_cluster` for the whole design): the
``<prefix>_users`` bucket, each user's connections ``[node, ref]`` oldest first, changed by
compare-and-set; the per-user queue of changes waiting for NATS, bounded, re-synced whole past
its bound; the sweep of dead nodes' entries; the per-user limit over every node; and the
``online`` and ``offline`` events, decided by the bucket.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack

from ..constants import WSE_REASON, Cid
from ..errors import WseError
from .broker import cid_text
from .nats_client import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from .nats_link import CLUSTER_UNAVAILABLE, DROP_CONN, NatsLink, pack_name, required

if TYPE_CHECKING:
    from .broker import BrokerHandler, LocalConnection

log = logging.getLogger("wse_fast.cluster")

#: Compare-and-set attempts on one user's list before giving up (each failure means another
#: node changed it in between).
_CAS_ATTEMPTS = 50
#: Registry changes in flight at once (a reconnect re-registers every connection).
_CHANGES_AT_ONCE = 64
#: The registry queue's hard ceiling, in ``max_pending_users``: even while NATS takes
#: changes, a queue this long (a NATS slower than the users' churn) is dropped and the state
#: re-synced, so that the node's memory stays bounded (about 250 B per waiting user).
_CEILING = 10
#: In the registry queue, a user known only by its key (found in the bucket by a re-sync):
#: the change removes this node's closed connections from its list and adds none.
_GONE: Any = object()


def user_key(cid: Cid) -> str:
    """A user's key in the bucket: a fixed-length hash of its text form (KV keys are subject
    tokens, bounded and restricted; a cid is a str or a number, of any length)."""
    return "u." + hashlib.sha256(cid_text(cid).encode()).hexdigest()[:40]


class NatsPresence:
    """Who is online, over every node of one NATS (a
    :class:`~wse_fast.cluster.broker.Presence`)."""

    def __init__(self, link: NatsLink, handler: BrokerHandler, max_pending_users: int) -> None:
        if max_pending_users < 1:
            raise ValueError("max_pending_users must be at least 1")
        self._link = link
        self._node = handler
        #: Users whose registry entries may wait for NATS while it does not answer; past
        #: it they are forgotten and the node's whole state is written again once it does.
        self.max_pending_users = max_pending_users
        self.resyncs = 0  # times the registry queue overflowed and the whole state was written
        self._me = [link.node, link.instance + ":"]  # what _living keeps of this node's
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
        #: When the writer last made progress, monotonic: a change done, or one started while
        #: none was under way unless the last change failed (a NATS that refuses every write
        #: makes no progress). A writer without progress for node_ttl waits for NATS.
        self._progress = 0.0
        self._last_failed = False

    @property
    def pending_users(self) -> int:
        """Users whose registry entries wait to be written (bounded by
        ``max_pending_users`` while NATS does not answer, and a few more while their change
        is under way; while it answers, by this node's users and those who just left, and
        at most ten times ``max_pending_users``)."""
        return len(self._dirty) + len(self._again) + len(self._syncing)

    def ref(self, conn_id: str) -> str:
        """A connection of this process, as the registry names it."""
        return f"{self._link.instance}:{conn_id}"

    # ---- what the node tells and asks -------------------------------------------------------

    @staticmethod
    def check_cid(cid: Cid) -> None:
        """A cid crosses NATS as text: one :func:`cid_text` cannot make (a tuple, a bool)
        raises TypeError."""
        cid_text(cid)

    @staticmethod
    def reaches(cid: Cid) -> bool:
        """Any user may have a connection on another node."""
        return True

    def added(self, cid: Cid, conn_id: str, first: bool) -> None:
        """A connection of this node was accepted: it joins its user's list (the bucket,
        not ``first``, decides whether the user came online)."""
        self._mark(user_key(cid), cid, True)

    def removed(self, cid: Cid, conn_id: str, last: bool) -> None:
        """A connection of this node closed: it leaves its user's list."""
        self._mark(user_key(cid), cid, False)

    async def online(self, cid: Cid) -> int:
        """The user's open connections on every live node; raises ``wse.cluster.unavailable``
        at once without a link to NATS, and when NATS does not answer within
        ``health_timeout``."""
        link = self._link
        entries = await self.lookup(cid, link.health_timeout)
        here = len(self._node.user_connections(cid))
        return here + sum(1 for node, _ in entries if node != link.node and node in link.alive)

    async def lookup(self, cid: Cid, within: float | None) -> list[list[str]]:
        """The user's entries, with the nodes they name known alive or not, within
        ``within`` seconds (None: NATS's own request timeout)."""
        if not self._link.connected:
            raise WseError(CLUSTER_UNAVAILABLE, {"error": "no link to NATS"})
        try:
            async with asyncio.timeout(within):
                entries = await self._entries(cid)
                await self._link.learn_nodes(entries)
        except TimeoutError:
            error = {"error": f"NATS did not answer within {within} s"}
            raise WseError(CLUSTER_UNAVAILABLE, error) from None
        return entries

    def local(self, cid: Cid, ref: str) -> LocalConnection | None:
        """This process's open, accepted connection ``ref`` of user ``cid``, if it is one."""
        conn = self._open(ref)
        return conn if conn is not None and conn.cid == cid else None

    # ---- what the link tells ---------------------------------------------------------------

    def nodes_gone(self, gone: list[str]) -> None:
        sweep = asyncio.ensure_future(self._sweep(gone))
        self._sweeps.add(sweep)
        sweep.add_done_callback(self._swept)

    def taken_for_dead(self) -> None:
        for cid in self._node.local_users():
            self._mark(user_key(cid), cid, False)

    # ---- leaving ---------------------------------------------------------------------------

    def cancel_sweeps(self) -> None:
        for task in list(self._sweeps):
            task.cancel()

    async def drain(self) -> bool:
        """Writes the registry changes still queued (the connections the server closed on
        its way out), for up to ``node_ttl``; whether all were written."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self._link.node_ttl
        while self._dirty or self._again or self._syncing or self._resync or self._resync_task:
            self.pump()
            waiting: list[asyncio.Task[None]] = list(self._syncing.values())
            if self._resync_task is not None:
                waiting.append(self._resync_task)
            left = until - loop.time()
            if not waiting or left <= 0:
                return False  # no link to NATS, or no time left: the others sweep them
            await asyncio.wait(waiting, timeout=left)
        return True

    def reset(self) -> None:
        """Forgets what is queued (the node has left)."""
        for task in list(self._syncing.values()):
            task.cancel()
        if self._resync_task is not None:
            self._resync_task.cancel()
        self._dirty.clear()
        self._again.clear()
        self._resync = False

    # ---- the registry ----------------------------------------------------------------------

    def _open(self, ref: str) -> LocalConnection | None:
        """This process's open, accepted connection ``ref``, if it is one."""
        instance, _, conn_id = ref.partition(":")
        if instance != self._link.instance:
            return None
        return self._node.local_connection(conn_id)

    def _mine(self, cid: Cid) -> list[str]:
        """The refs of user ``cid``'s open connections in this process, oldest first."""
        if cid is _GONE:
            return []
        refs = [self.ref(conn.conn_id) for conn in self._node.user_connections(cid)]
        return [ref for ref in refs if self.local(cid, ref) is not None]

    async def _entries(self, cid: Cid) -> list[list[str]]:
        users = required(self._link.users)
        try:
            entry = await users.get(user_key(cid))
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
        moment ago (see ``NatsLink.learn_nodes``)."""
        users = required(self._link.users)
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
                await self._link.learn_nodes(entries, recheck)
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

    async def _all_entries(self) -> dict[str, list[list[str]]]:
        """Every user's list in the bucket, as one snapshot: a watch of the bucket's latest
        values streams them, where a ``get`` per user would cost a NATS round trip each.

        The snapshot ends at the bucket's last revision, read before the watch, not at
        nats-py's mark (None) for "every value present at the start came": nats-py takes
        that mark from a consumer info it reads once the consumer delivers, and NATS answers
        it before the values the consumer has already sent (nothing pending, none received
        yet; nats-io/nats.py#842). The mark then came first and the snapshot was empty: a
        re-sync left the entries of users who had left while NATS was away, and a sweep the
        entries of a dead node. The watch delivers each key's latest value in stream order,
        deletes included. A list rewritten while the watch runs loses its old revision (one is
        kept per key) and gets a new one past the revision read, which the watch has not
        reached yet: the snapshot is whole only at a point where the bucket holds nothing past
        what the watch has delivered. So once the watch reaches the revision read, the last
        revision is read again, and the snapshot ends if the watch has reached that one too;
        else it goes on to it. (NATS's count of what is still pending, on each message, is no
        such point: it lags the stream, both ways, while lists are rewritten.) (Every
        list's latest value at that read is then at or below what was delivered, and was
        there when the watch passed its place: it came. A list rewritten after that read had
        its older value delivered already.) A bucket that has changed at every read for
        ``node_ttl`` ends the snapshot at the last read, with a warning (it may then lack the
        lists rewritten since). Raises TimeoutError when NATS sends nothing for ``node_ttl``
        (the caller tries again later)."""
        users = required(self._link.users)
        state = (await users.status()).stream_info.state
        held: dict[str, list[list[str]]] = {}
        if not state.messages:
            return held
        last = state.last_seq
        seen = 0  # the highest revision delivered
        changing_since: float | None = None  # the first read of the last revision again
        quiet = self._link.node_ttl
        loop = asyncio.get_running_loop()
        watcher = await users.watchall()
        try:
            # one deadline moved on at each value (wait_for would make a task per value)
            async with asyncio.timeout(quiet) as deadline:
                async for entry in watcher:
                    deadline.reschedule(loop.time() + quiet)
                    if entry is None:
                        continue  # nats-py's mark: not to be trusted (above)
                    if entry.operation is None:
                        held[entry.key] = _decode_entries(entry.value)
                    else:  # deleted or purged: no list
                        held.pop(entry.key, None)
                    seen = max(seen, entry.revision)
                    if seen < last:
                        continue
                    now = loop.time()
                    if changing_since is None:
                        changing_since = now
                    elif now - changing_since > quiet:
                        # The bucket never rested for a round trip: what is held misses at
                        # most the lists rewritten since the last read, whose old revision
                        # the watch had not reached. Waiting on would keep a re-sync (and
                        # the changes it holds back) from ever ending while NATS is busy.
                        log.warning(
                            "cluster node %s: the users bucket changed at every read for"
                            " %s s: its snapshot may lack lists rewritten meanwhile",
                            self._link.node,
                            quiet,
                        )
                        return held
                    last = (await users.status()).stream_info.state.last_seq
                    if last <= seen:
                        return held
        except TimeoutError:
            raise TimeoutError(f"the users bucket sent nothing for {quiet} s") from None
        finally:
            await watcher.stop()
        raise TimeoutError("the users bucket's watch ended")  # stopped from elsewhere

    def _mark(self, key: str, cid: Cid, announce: bool) -> None:
        """Queues user ``key`` for its entries to be brought to this node's connections.
        Past ``max_pending_users`` while NATS takes no changes (see :meth:`_writing`), or
        past ten times that in any case, the queue is dropped and the whole state re-synced.

        While NATS takes changes the queue is not bounded by ``max_pending_users``: it only
        waits for the writer, which drains it (a ramp of joins outruns it for a while), and
        it holds one entry per user, so it stays within this node's users and those who
        left meanwhile. Dropping it then would only swap each user's one write for a read
        of the whole bucket, on a NATS already busy (it may answer the heartbeat late, and
        the node be unhealthy, while the writes go on). Users who come and go faster than a
        slow NATS takes their changes would make it grow without end: past the ceiling it
        is dropped all the same."""
        if self._resync and self._resync_task is None:
            return  # the re-sync, still to come, reads every user's state
        held = self._dirty.get(key)
        if held is not None:
            self._dirty[key] = (cid if cid is not _GONE else held[0], announce or held[1])
        elif len(self._dirty) >= self.max_pending_users and (
            not self._writing() or len(self._dirty) >= _CEILING * self.max_pending_users
        ):
            log.warning(
                "cluster node %s: %d users wait for NATS: their changes are dropped, and the"
                " node's whole registry state is written once NATS answers",
                self._link.node,
                len(self._dirty),
            )
            self._dirty.clear()
            self._resync = True
            self.resyncs += 1
            return
        else:
            self._dirty[key] = (cid, announce)
        self.pump()

    def _writing(self) -> bool:
        """Whether NATS takes the registry's changes: linked, and the writer made progress
        within ``node_ttl`` (see ``_progress``)."""
        if not self._link.connected:
            return False
        return asyncio.get_running_loop().time() - self._progress <= self._link.node_ttl

    def pump(self) -> None:
        """Starts queued registry changes while NATS is linked, up to ``_CHANGES_AT_ONCE``
        at a time and one at a time per user."""
        if not self._link.started or not self._link.connected:
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
            if not self._syncing and not self._last_failed:
                self._progress = asyncio.get_running_loop().time()
            task = asyncio.ensure_future(self._sync(key, cid, announce))
            self._syncing[key] = task
            task.add_done_callback(functools.partial(self._synced, key, cid, announce))

    def _synced(self, key: str, cid: Cid, announce: bool, task: asyncio.Task[None]) -> None:
        if self._syncing.get(key) is task:
            del self._syncing[key]
        if task.cancelled():
            return
        again = self._again.pop(key, None)
        failed = task.exception()
        self._last_failed = failed is not None
        if failed is None:
            self._progress = asyncio.get_running_loop().time()
        if failed is not None:
            self._link.report(failed, {})
            # made again at the next heartbeat or reconnect, not at once
            if not self._resync:
                held = self._dirty.get(key)
                self._dirty[key] = (cid, announce or (held is not None and held[1]))
        if again is not None:
            self._mark(key, *again)
        elif failed is None:
            self.pump()

    async def _sync(self, key: str, cid: Cid, announce: bool) -> None:
        """Brings this node's entries in the list under ``key`` to its open connections of
        the user (``cid``; ``_GONE`` when unknown: then it only removes the closed ones); the
        entries of dead nodes go with the change."""
        me = self._link.node

        def reconcile(entries: list[list[str]]) -> list[list[str]]:
            mine = self._mine(cid)  # read at each attempt: the latest state
            living = _living(entries, self._me, self._link.alive)
            kept = [e for e in living if e[0] != me or self._open(e[1]) is not None]
            have = {ref for node, ref in kept if node == me}
            return kept + [[me, ref] for ref in mine if ref not in have]

        before, after = await self._change(key, reconcile, guess_new=bool(self._mine(cid)))
        if cid is _GONE:
            return
        living_before = _living(before, self._me, self._link.alive)
        ours_before = {ref for node, ref in living_before if node == me}
        if any(node == me and ref not in ours_before for node, ref in after):
            # this change added connections
            if announce and not living_before:  # the bucket decides: once
                self._node.user_online(cid)
            excess = len(after) - self._node.conn_per_user
            for node, ref in after[: max(excess, 0)]:
                if node == me:
                    conn = self.local(cid, ref)
                    if conn is not None:
                        conn.drop(WSE_REASON.CLIENTS_CONCURRENCY)
                else:
                    drop = msgpack.packb([cid_text(cid), ref])
                    self._link.publish(pack_name(DROP_CONN, node, drop))
        ours_after = {ref for node, ref in after if node == me}
        if not after and ours_before - ours_after:  # this change removed the last one
            self._node.user_offline(cid)

    async def _resync_all(self) -> None:
        """Writes this node's whole state: every user in the bucket loses the entries of
        this node's closed connections, every user with connections here gets them."""
        log.warning("cluster node %s: writing its whole registry state again", self._link.node)
        local = {user_key(cid): cid for cid in self._node.local_users()}
        held = await self._all_entries()
        me = self._link.node
        todo = []
        # Only the lists this node must change, as the snapshot shows them: a user whose list
        # already names exactly this process's open connections is left alone (a round trip
        # per user of the whole cluster: 2 s of a worker's CPU per 20 000 users).
        # A change under way when the snapshot was read may land after it: its user is
        # changed too, by compare-and-set, from the list as it is then.
        for key in held.keys() | local.keys():
            cid = local.get(key, _GONE)
            ours = {ref for node, ref in held.get(key, []) if node == me}
            if ours != set(self._mine(cid)) or key in self._syncing:
                todo.append((key, cid))
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
            self._link.report(failed, {})
            self._dirty.clear()
            self._resync = True  # again, at the next heartbeat or reconnect
        else:
            self.pump()

    async def _sweep(self, dead: list[str]) -> None:
        """Removes the entries of nodes whose key expired from every user's list: one live
        node does it (the first to claim it), so that a dead node's users stop weighing on
        the bucket without waiting for each of them to change."""
        nodes = required(self._link.nodes)
        claimed = set()
        for node in dead:
            try:  # the claim expires with the bucket's TTL, as node keys do
                await nodes.create(f"s.{node}", self._link.node.encode())
                claimed.add(node)
            except KeyWrongLastSequenceError:
                pass  # another node sweeps it, or it left with nothing to sweep
        # a node alive again since its key was seen gone (a late renewal) keeps its entries
        await self._link.learn_nodes([[node, ""] for node in claimed], frozenset(claimed))
        claimed -= self._link.alive
        if not claimed:
            return
        # only the lists that name a swept node, found in one read of the bucket rather than a
        # round trip per user of the whole cluster
        keys = [
            key
            for key, entries in (await self._all_entries()).items()
            if any(node in claimed for node, _ in entries)
        ]

        def without_dead(entries: list[list[str]]) -> list[list[str]]:
            # alive again (a paused node that resumed, a restart under its name): kept
            return [e for e in entries if e[0] not in claimed or e[0] in self._link.alive]

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
        swept = ", ".join(sorted(claimed))
        log.info("cluster node %s: swept the entries of %s", self._link.node, swept)

    def _swept(self, task: asyncio.Task[None]) -> None:
        self._sweeps.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("cluster sweep failed: %r", task.exception())


def _decode_entries(value: bytes | None) -> list[list[str]]:
    entries = msgpack.unpackb(value) if value else []
    return [list(e) for e in entries if isinstance(e, list) and len(e) == 2]


def _living(entries: list[list[str]], me: list[str], alive: frozenset[str]) -> list[list[str]]:
    """The entries of live nodes (this one is, whatever its key says, but only this
    process's: ``me`` is ``[node, instance mark]``); a dead node's, or a former process's of
    this node's name, are forgotten by the next change of the list."""
    node, mark = me
    return [e for e in entries if (e[1].startswith(mark) if e[0] == node else e[0] in alive)]
