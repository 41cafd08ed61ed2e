"""Faults of a cluster, with real node processes and a real nats-server: a node killed with
SIGKILL stops counting (``online``, the per-user limit, ``call``) within its TTL while the
others serve on, and the default TTL bounds that by 10 s; a node paused beyond its TTL counts
again once it resumes; a node newer than another's view of the cluster keeps its users'
connections; and the Node.js ``ws`` peer on one node gets what the other nodes send it,
exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest
from nats.js.errors import KeyDeletedError, KeyNotFoundError, NoKeysError
from wse_fast import WSE_REASON, ClusterOptions, WseClient, WseError, WseServer
from wse_fast.cluster.local_nats import LocalNats

from tests.conftest import ClientFactory, EventLog, accept_identity, url_of
from tests.nats_reorder import ReorderingProxy

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = shutil.which("wse-fast", path=str(Path(sys.executable).parent))
COMMAND = [SCRIPT] if SCRIPT is not None else [sys.executable, "-m", "wse_fast"]
SERVING = re.compile(r"serving \S+ on ws://127\.0\.0\.1:(\d+)")
NODE_PEER = Path(__file__).parent / "node" / "wse_cluster_peer.mjs"

NODE_TTL = 1.5
# Every node renews its key and reads the others' every third of its TTL (nats_cluster's
# module docstring): a dead node's key is gone NODE_TTL after its last renewal, and the others
# see it at their next reading.
HEARTBEAT = NODE_TTL / 3
# nats-server ages keys out on a timer of its own: on this machine 0.25 s late at most, seen
# with node TTLs of 0.5, 1.5 and 3 s.
EXPIRY_SLACK = 1.0


def dead_node_bound(node_ttl: float) -> float:
    """Seconds after a node's death by which the others no longer count its connections."""
    return node_ttl + node_ttl / 3 + EXPIRY_SLACK


class NodeProcess:
    """A node in a process of its own: ``wse-fast serve tests.cluster_node_app:make_server``."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.output: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, nats_url: str, node: str, conn_per_user: int) -> NodeProcess:
        env = {
            **os.environ,
            "WSE_FAST_TEST_NATS": nats_url,
            "WSE_FAST_TEST_NODE": node,
            "WSE_FAST_TEST_NODE_TTL": str(NODE_TTL),
            "WSE_FAST_TEST_CONN_PER_USER": str(conn_per_user),
        }
        proc = await asyncio.create_subprocess_exec(
            *COMMAND,
            "serve",
            "tests.cluster_node_app:make_server",
            "--port",
            "0",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(proc)

    async def serving(self) -> str:
        """The node's URL, once it serves (its cluster link is up before it listens)."""
        stdout = self.proc.stdout
        assert stdout is not None
        async with asyncio.timeout(20):
            while line := (await stdout.readline()).decode():
                self.output.append(line)
                if found := SERVING.search(line):
                    self._drain = asyncio.ensure_future(self._read_rest())
                    return f"ws://127.0.0.1:{found[1]}"
        raise AssertionError(f"the node exited before serving:\n{''.join(self.output)}")

    async def _read_rest(self) -> None:
        """Keeps reading what the node writes, so that a full pipe never stops it."""
        assert self.proc.stdout is not None
        while line := (await self.proc.stdout.readline()).decode():
            self.output.append(line)

    async def kill(self) -> None:
        """SIGKILL: no goodbye to the cluster, no close frame to its connections."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        if self._drain is not None:
            await self._drain


@pytest.fixture
async def nats_server() -> AsyncIterator[LocalNats]:
    async with LocalNats() as nats:
        yield nats


InProcessNodes = Callable[..., Awaitable[WseServer]]


@pytest.fixture
async def make_node(nats_server: LocalNats) -> AsyncIterator[InProcessNodes]:
    """Nodes in the test's own process (the ones that are not killed)."""
    nodes: list[WseServer] = []

    async def make(name: str, conn_per_user: int = 3, node_ttl: float = NODE_TTL) -> WseServer:
        server = WseServer(accept_identity, port=0, conn_per_user=conn_per_user)
        server.join_cluster(nats_server.url, ClusterOptions(node=name, node_ttl=node_ttl))
        nodes.append(server)
        await server.start()
        return server

    yield make
    for server in nodes:
        await server.close()


ProcessNodes = Callable[[str], Awaitable[NodeProcess]]


@pytest.fixture
async def node_process(nats_server: LocalNats) -> AsyncIterator[ProcessNodes]:
    """Starts a node in a process of its own (one a test may kill, pause or resume), on the
    test's nats-server with ``conn_per_user=3``; any still running at the test's end are
    killed."""
    processes: list[NodeProcess] = []

    async def start(name: str) -> NodeProcess:
        process = await NodeProcess.start(nats_server.url, name, conn_per_user=3)
        processes.append(process)
        return process

    yield start
    for process in processes:
        await process.kill()


async def device(
    make_client: ClientFactory, url: str, cid: str, name: str, log: EventLog
) -> WseClient:
    """A connection of user ``cid``; its ``news`` and its close go to ``log`` under ``name``,
    in the order they happen."""
    client = make_client(url)
    client.channel.on("news", lambda payload: log.hook(name)("news", payload))
    client.when.closed(lambda code, reason: log.hook(name)("closed", code, reason))
    await client.connect(cid)
    return client


async def until_online(node: WseServer, cid: str, count: int, within: float = 5.0) -> None:
    """Polls ``online`` until it says ``count``: a registry entry appears a NATS round trip
    after its connection is accepted, and a dead node's connections stop counting when a TTL
    runs out, which no event announces."""
    seen = -1
    try:
        async with asyncio.timeout(within):
            while (seen := await node.online(cid)) != count:
                await asyncio.sleep(0.02)
    except TimeoutError:
        name = node.cluster.node if node.cluster is not None else "?"
        raise AssertionError(f"{name} counts {seen} of {cid}'s connections, not {count}") from None


def news(log: EventLog, name: str) -> list[Any]:
    return [event[1] for event in log.of(name) if event[0] == "news"]


def closes(log: EventLog, *names: str) -> list[tuple[str, tuple[Any, ...]]]:
    return [(name, event) for name in names for event in log.of(name) if event[0] == "closed"]


async def test_a_node_killed_with_sigkill_stops_counting_within_its_ttl_and_the_others_serve_on(
    make_node: InProcessNodes,
    node_process: ProcessNodes,
    make_client: ClientFactory,
    log: EventLog,
) -> None:
    a = await make_node("a", conn_per_user=3)
    c = await make_node("c", conn_per_user=3)
    b = await node_process("b")
    b_url = await b.serving()
    # alice's devices, oldest first: a1, c1, b1. b1, the newest, gets calls while b lives and
    # must be skipped once b is dead; a1, live, is the oldest: the one a new device would
    # wrongly drop if the dead b1 still counted against the limit
    await device(make_client, url_of(a), "alice", "a1", log)
    await until_online(c, "alice", 1)
    c1 = await device(make_client, url_of(c), "alice", "c1", log)
    c1.register("where", lambda payload: "c")
    await until_online(a, "alice", 2)
    b1 = await device(make_client, b_url, "alice", "b1", log)
    b1.register("where", lambda payload: "b")
    for node in (a, c):
        await until_online(node, "alice", 3)
    assert await a.call("alice", "where") == "b"  # the newest, in the other process

    killed_at = asyncio.get_running_loop().time()
    await b.kill()
    assert b.proc.returncode == -signal.SIGKILL
    [(_, code, _)] = await log.wait("b1")
    assert code == 1006  # no close frame: the process is gone
    bound = killed_at + dead_node_bound(NODE_TTL)
    for node in (a, c):
        await until_online(node, "alice", 2, within=bound - asyncio.get_running_loop().time())

    # the survivors serve on: calls skip the dead entry, sends and broadcasts arrive once
    assert await a.call("alice", "where") == "c"
    a.send("alice", "news", "from a")
    c.broadcast("news", "from c")
    for name in ("a1", "c1"):
        await log.wait(name, 2)
        assert sorted(news(log, name)) == ["from a", "from c"]

    # The limit (3) counts the live devices only: a third live one drops nobody. a2's
    # removal from alice's list waits for its addition (which drops the oldest when over the
    # limit) to finish, and anything a sends to a1 afterwards follows such a drop's close.
    a2 = await device(make_client, url_of(a), "alice", "a2", log)
    await until_online(c, "alice", 3)
    await a2.close()
    await until_online(c, "alice", 2)
    a.send("alice", "news", "probe")
    for name in ("a1", "c1"):
        assert (await log.wait(name, 3))[2] == ("news", "probe")
    assert closes(log, "a1", "c1") == []

    # and the limit still holds across nodes: a fourth live device drops the oldest, a1
    await device(make_client, url_of(c), "alice", "c2", log)
    await until_online(a, "alice", 3)
    await device(make_client, url_of(c), "alice", "c3", log)
    assert (await log.wait("a1", 4))[3] == ("closed", 1000, WSE_REASON.CLIENTS_CONCURRENCY)
    await until_online(a, "alice", 3)
    assert closes(log, "c1", "c2", "c3") == []


async def test_a_node_paused_beyond_its_ttl_counts_again_once_it_resumes(
    make_node: InProcessNodes,
    node_process: ProcessNodes,
    make_client: ClientFactory,
    log: EventLog,
) -> None:
    # a stopped VM, a long GC pause, a swapped-out process: the node looks dead, then is not
    a = await make_node("a", conn_per_user=3)
    b = await node_process("b")
    await device(make_client, await b.serving(), "alice", "b1", log)
    await until_online(a, "alice", 1)
    paused_at = asyncio.get_running_loop().time()
    b.proc.send_signal(signal.SIGSTOP)
    try:
        within = paused_at + dead_node_bound(NODE_TTL) - asyncio.get_running_loop().time()
        await until_online(a, "alice", 0, within=within)
        # while b looks dead, alice's list changes: its entries are forgotten
        await device(make_client, url_of(a), "alice", "a1", log)
    finally:
        b.proc.send_signal(signal.SIGCONT)
    # b renews its key at once (its heartbeat is overdue) and a reads it within a heartbeat:
    # b1, open all along, counts again
    await until_online(a, "alice", 2, within=NODE_TTL)
    assert closes(log, "a1", "b1") == []


async def nodes_in_bucket(nats_url: str) -> dict[str, list[str]]:
    """What the users bucket holds, read as any NATS client can: for each user's key, the
    nodes of its entries."""
    nc = await nats.connect(nats_url)
    try:
        users = await nc.jetstream().key_value("wse_users")
        try:
            keys = await users.keys()
        except NoKeysError:
            return {}
        held = {}
        for key in keys:
            try:
                entry = await users.get(key)
            except (KeyNotFoundError, KeyDeletedError):
                continue
            held[key] = [node for node, _ in msgpack.unpackb(entry.value or msgpack.packb([]))]
        return held
    finally:
        await nc.close()


async def test_a_killed_nodes_entries_are_swept_out_of_every_users_list(
    make_node: InProcessNodes,
    node_process: ProcessNodes,
    nats_server: LocalNats,
    make_client: ClientFactory,
    log: EventLog,
) -> None:
    a = await make_node("a", conn_per_user=3)
    c = await make_node("c", conn_per_user=3)
    b = await node_process("b")
    b_url = await b.serving()
    for cid in ("alice", "bob", "carol"):
        await device(make_client, b_url, cid, f"{cid}@b", log)
    await device(make_client, url_of(a), "bob", "bob@a", log)
    for cid, count in (("alice", 1), ("bob", 2), ("carol", 1)):
        await until_online(c, cid, count)
    held = await nodes_in_bucket(nats_server.url)
    assert sorted(sorted(nodes) for nodes in held.values()) == [["a", "b"], ["b"], ["b"]]

    killed_at = asyncio.get_running_loop().time()
    await b.kill()
    # no user changes: the first of a and c to see b's key gone sweeps its entries (a read
    # of each user's list, a few round trips after it notices)
    within = killed_at + dead_node_bound(NODE_TTL) + 0.5 - asyncio.get_running_loop().time()
    # Until the bucket holds bob's device on a alone (alice's and carol's lists gone): a
    # listing taken while the sweep deletes keys can come back short (nats-py reads the keys
    # through a watcher), so one read that lacks b proves nothing; the state itself is awaited.
    async with asyncio.timeout(within):
        held = await nodes_in_bucket(nats_server.url)
        while list(held.values()) != [["a"]]:
            await asyncio.sleep(0.05)
            held = await nodes_in_bucket(nats_server.url)
    for node in (a, c):
        assert [await node.online(cid) for cid in ("alice", "bob", "carol")] == [0, 1, 0]


async def test_a_sweep_keeps_the_entries_of_a_swept_node_that_came_back(
    make_node: InProcessNodes, nats_server: LocalNats
) -> None:
    # a claimed b's sweep for "a" (b's key had expired: a paused b, or a NATS frozen past
    # every node's TTL). Meanwhile b is back: it wrote its key, then its entries again. a
    # found b dead moments ago (a lookup for an earlier list, remembered for a third of the
    # TTL): b's entries written since must stay all the same, or b's users are missing from
    # the registry until each of them reconnects (b adds them again only once).
    a = await make_node("a")
    cluster = a.cluster
    assert cluster is not None
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        nodes, users = await js.key_value("wse_nodes"), await js.key_value("wse_users")
        await nodes.put("n.b", b"b")  # b renewed its key...
        key = "u." + "0" * 40
        await users.put(key, msgpack.packb([["b", "b-instance:1"]]))  # ... then its entries
        cluster.link.alive = cluster.link.alive - {"b"}  # a's view from before b came back
        cluster.link._not_alive["b"] = time.monotonic() + 100
        await cluster.presence._sweep(["b"])
        entry = await users.get(key)
        assert msgpack.unpackb(entry.value) == [["b", "b-instance:1"]]
    finally:
        await nc.close()


async def test_a_sweep_and_a_resync_read_the_bucket_once_not_a_round_trip_per_user(
    make_node: InProcessNodes, nats_server: LocalNats, make_client: ClientFactory, log: EventLog
) -> None:
    # 100 000 users over 6 workers: a worker sweeping a dead one's entries, or writing its
    # whole state again, did a NATS round trip for every user of the cluster (a worker busy
    # for seconds). Now one watch reads every list, and only the lists to change are read again.
    a = await make_node("a")
    cluster = a.cluster
    assert cluster is not None
    await device(make_client, url_of(a), "alice", "alice@a", log)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        nodes, users = await js.key_value("wse_nodes"), await js.key_value("wse_users")
        await nodes.put("n.b", b"b")  # b is alive: its 300 users stay as they are
        for i in range(300):
            await users.put(f"u.b{i:039d}", msgpack.packb([["b", f"b-instance:{i}"]]))
        await users.put("u.c" + "0" * 39, msgpack.packb([["c", "c-instance:1"]]))  # c is dead
        await until_online(a, "alice", 1)
        api_requests: list[str] = []

        async def count(msg: nats.aio.msg.Msg) -> None:
            api_requests.append(msg.subject)

        counter = await nc.subscribe("$JS.API.>", cb=count)
        await nc.flush()
        await cluster.presence._sweep(["c"])
        await cluster.presence._resync_all()
        await nc.flush()
        await counter.unsubscribe()
        # the claim, the lookup of c, two watches (a consumer's creation, info, deletion
        # each), and the one list changed: far from the 600 reads of before
        assert len(api_requests) < 30, api_requests
        # c's only entry: swept (a list left empty is deleted, never written empty)
        with pytest.raises((KeyDeletedError, KeyNotFoundError)):
            await users.get("u.c" + "0" * 39)
        entry = await users.get("u.b" + "0" * 39)
        assert msgpack.unpackb(entry.value) == [["b", "b-instance:0"]]
        assert await a.online("alice") == 1
    finally:
        await nc.close()


async def test_a_resync_and_a_sweep_read_every_list_when_nats_answers_the_watch_first(
    nats_server: LocalNats,
) -> None:
    # One watch reads every list (above). nats-py ends its first values at a mark taken from
    # a consumer info, and a busy nats-server answered that before the values its consumer
    # had already sent (nats-io/nats.py#842): the snapshot came back empty, a re-sync after
    # NATS was away left the entries of users who had left meanwhile (one run in six of
    # test_cluster's re-sync test, on a loaded machine), a sweep a dead node's. The proxy
    # makes NATS answer in that order every time.
    proxy = ReorderingProxy(nats_server.url)
    await proxy.start()
    a = WseServer(accept_identity, port=0)
    a.join_cluster(proxy.url, ClusterOptions(node="a", node_ttl=NODE_TTL))
    nc = await nats.connect(nats_server.url)
    try:
        await a.start()
        assert a.cluster is not None
        presence = a.cluster.presence
        users = await nc.jetstream().key_value("wse_users")
        # users whose connections to a closed while NATS was away (a's queue dropped them)
        left = [f"u.left{i:036d}" for i in range(3)]
        for i, key in enumerate(left):
            await users.put(key, msgpack.packb([["a", presence.ref(f"gone{i}")]]))
        dead = "u.c" + "0" * 39
        await users.put(dead, msgpack.packb([["c", "c-instance:1"]]))  # c is dead
        proxy.arm("KV_wse_users", count=4)  # the latest value of each of the 4 keys
        await presence._resync_all()
        assert proxy.done.is_set()  # the values came after the consumer info
        for key in left:
            with pytest.raises((KeyDeletedError, KeyNotFoundError)):
                await users.get(key)
        proxy.arm("KV_wse_users", count=4)  # 3 deleted, c's
        await presence._sweep(["c"])
        assert proxy.done.is_set()
        with pytest.raises((KeyDeletedError, KeyNotFoundError)):
            await users.get(dead)
    finally:
        await a.close()
        await nc.close()
        await proxy.close()


async def test_a_snapshot_taken_while_lists_change_holds_every_user(
    nats_server: LocalNats,
) -> None:
    # The users bucket keeps one revision per key: a list rewritten while the snapshot's
    # watch runs loses its old revision before the watch reaches it, and its new one comes
    # after the bucket's last revision as read before the watch. Ending there left such a
    # user out of the snapshot (a re-sync then never cleaned its entries), and so could
    # ending where NATS says nothing more is pending (its count lags the stream): the
    # snapshot ends where a read of the last revision shows nothing past what the watch
    # delivered. The last 300 lists, which the watch reaches last, are rewritten as soon as
    # the snapshot has read the bucket's last revision.
    a = WseServer(accept_identity, port=0)
    a.join_cluster(nats_server.url, ClusterOptions(node="a", node_ttl=NODE_TTL))
    nc = await nats.connect(nats_server.url)
    try:
        await a.start()
        assert a.cluster is not None and a.cluster.link.users is not None
        presence, bucket = a.cluster.presence, a.cluster.link.users
        users = await nc.jetstream().key_value("wse_users")
        keys = [f"u.x{i:038d}" for i in range(3000)]
        value = msgpack.packb([["z", "z-instance:1"]])
        await asyncio.gather(*(users.put(key, value) for key in keys))
        read = asyncio.Event()
        status = bucket.status

        async def status_then_tell() -> Any:
            answer = await status()
            read.set()
            return answer

        async def rewrite() -> None:
            await read.wait()
            await asyncio.gather(*(users.put(key, value) for key in keys[-300:]))

        bucket.status = status_then_tell  # type: ignore[method-assign]
        writer = asyncio.create_task(rewrite())
        held = await presence._all_entries()
        await writer
        assert sorted(set(keys) - set(held)) == []
    finally:
        await a.close()
        await nc.close()


async def test_a_node_list_answered_before_its_keys_takes_no_live_node_for_dead(
    make_node: InProcessNodes, nats_server: LocalNats
) -> None:
    # The heartbeat lists the nodes bucket's keys through the same kind of nats-py watch
    # (nats-io/nats.py#842): the listing came back empty, the node took every other node for
    # gone for a beat and claimed its sweep (s.<node>); had that live node died within
    # node_ttl, nobody would have swept its entries. The proxy answers in that order.
    proxy = ReorderingProxy(nats_server.url)
    await proxy.start()
    await make_node("b")
    a = WseServer(accept_identity, port=0)
    a.join_cluster(proxy.url, ClusterOptions(node="a", node_ttl=NODE_TTL))
    nc = await nats.connect(nats_server.url)
    try:
        await a.start()
        cluster = a.cluster
        assert cluster is not None and "b" in cluster.alive
        cluster.link.stop_heartbeat()  # the reads below are the test's
        nodes = await nc.jetstream().key_value("wse_nodes")
        # one value per key (history 1): n.a, n.b, and the claims each start deleted
        held = (await nodes.status()).stream_info.state.messages
        proxy.arm("KV_wse_nodes", count=held)
        await cluster.link.renew()
        assert proxy.done.is_set()  # the keys came after the consumer info
        await asyncio.gather(*cluster.presence._sweeps)
        with pytest.raises((KeyDeletedError, KeyNotFoundError)):
            await nodes.get("s.b")
        assert "b" in cluster.alive
    finally:
        await a.close()
        await nc.close()
        await proxy.close()


async def test_a_node_list_without_the_nodes_own_key_fails_the_read_and_claims_nothing(
    make_node: InProcessNodes, nats_server: LocalNats
) -> None:
    # A listing without the key the node wrote just before is not whole, whatever cut it
    # short (the early mark above, or a key expired under a read late by node_ttl): after
    # three such listings the read fails like one NATS does not answer, and changes nothing.
    a = await make_node("a")
    await make_node("b")
    cluster = a.cluster
    assert cluster is not None
    cluster.link.stop_heartbeat()
    await cluster.link.renew()
    assert cluster.alive == {"a", "b"}
    nc = await nats.connect(nats_server.url)
    try:
        nodes = await nc.jetstream().key_value("wse_nodes")
        await nodes.delete("n.a")  # after its write: a read that follows sees it gone
        with pytest.raises(WseError) as failed:
            await cluster.link._read_nodes()
        assert failed.value.code == "wse.cluster.unavailable"
        await asyncio.gather(*cluster.presence._sweeps)
        with pytest.raises((KeyDeletedError, KeyNotFoundError)):
            await nodes.get("s.b")
        assert cluster.alive == {"a", "b"}
    finally:
        await nc.close()


def test_the_default_node_ttl_drops_a_dead_node_within_ten_seconds() -> None:
    """The issue's bound on the default: the TTL plus a heartbeat plus nats-server's lateness."""
    made = WseServer(accept_identity, cluster="nats://127.0.0.1:1")  # never started
    joined = WseServer(accept_identity)
    joined.join_cluster("nats://127.0.0.1:1")
    for server in (made, joined):
        assert server.cluster is not None
        assert dead_node_bound(server.cluster.node_ttl) <= 10.0


async def test_a_node_newer_than_anothers_view_of_the_cluster_keeps_its_users_connections(
    make_node: InProcessNodes, make_client: ClientFactory, log: EventLog
) -> None:
    # a reads which nodes are alive at its start and then every 10 s: b and c join after it,
    # like a node restarted after a crash does
    a = await make_node("a", conn_per_user=2, node_ttl=30.0)
    b = await make_node("b", conn_per_user=2, node_ttl=30.0)
    c = await make_node("c", conn_per_user=2, node_ttl=30.0)
    await device(make_client, url_of(b), "alice", "b1", log)
    await until_online(c, "alice", 1)
    await device(make_client, url_of(a), "alice", "a1", log)  # b1 must stay in alice's list
    await until_online(c, "alice", 2)
    await device(make_client, url_of(c), "alice", "c1", log)  # over the limit: b1 is the oldest
    assert await log.wait("b1") == [("closed", 1000, WSE_REASON.CLIENTS_CONCURRENCY)]
    await until_online(b, "alice", 2)
    assert closes(log, "a1", "c1") == []


async def test_the_node_ws_peer_on_one_node_gets_what_the_others_send_exactly_once(
    make_node: InProcessNodes, make_client: ClientFactory, log: EventLog
) -> None:
    node_js = shutil.which("node")
    assert node_js is not None, "Node.js is part of the test setup (make setup)"
    a, b, c = [await make_node(name) for name in ("a", "b", "c")]
    await device(make_client, url_of(c), "carol", "carol", log)  # someone else, on c
    peer = await asyncio.create_subprocess_exec(
        node_js, str(NODE_PEER), url_of(b), "js-user", "2", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert peer.stdout is not None
        async with asyncio.timeout(20):
            first = json.loads(await peer.stdout.readline())
        assert first == ["welcome", {"hey": "welcome data"}]
        await until_online(a, "js-user", 1)
        assert await a.call("js-user", "where", {"q": 1}) == {"node": {"q": 1}}
        a.send("js-user", "news", "from a")
        c.broadcast("news", "from c")
        # NATS keeps one node's messages in order: each end follows its node's message and
        # any copy of it; the peer closes after both
        a.send("js-user", "end", "a")
        c.send("js-user", "end", "c")
        async with asyncio.timeout(20):
            out, _ = await peer.communicate()
    finally:
        if peer.returncode is None:
            peer.kill()
            await peer.wait()
    assert peer.returncode == 0, out
    seen = [json.loads(line) for line in out.decode().splitlines()]
    assert seen[0] == ["called", ["where", {"q": 1}]]
    assert seen[-1] == ["close", [1000, "wse.by-client"]]
    messages = [tuple(value) for what, value in seen if what == "message"]
    assert sorted(messages) == [("end", "a"), ("end", "c"), ("news", "from a"), ("news", "from c")]
    assert messages.index(("news", "from a")) < messages.index(("end", "a"))
    assert messages.index(("news", "from c")) < messages.index(("end", "c"))
    assert await log.wait("carol") == [("news", "from c")]  # c's own user got it too
