"""Three wse-fast nodes as one server over a real nats-server: one user's devices on several
nodes, send-to-user, broadcast exactly once, the cluster-wide connection limit, ``online``,
calls across nodes, and a NATS restart. (A node killed with SIGKILL: test_cluster_faults.py.)
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import re
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from wse_fast import (
    WSE_REASON,
    ClusterOptions,
    ConnectionNotReady,
    RpcError,
    WseClient,
    WseError,
    WseServer,
    codec,
)
from wse_fast.cluster.local_nats import LocalNats, nats_server_binary
from wse_fast.cluster.nats_cluster import CLUSTER_LOST, CLUSTER_UNAVAILABLE
from wse_fast.constants import OP_CLOSE, OP_TEXT

from tests.conftest import ClientFactory, EventLog, accept_identity, url_of
from tests.test_metrics import health

Nodes = Callable[..., Awaitable[list[WseServer]]]


@pytest.fixture
async def nats_server() -> AsyncIterator[LocalNats]:
    async with LocalNats() as nats:
        yield nats


@pytest.fixture
async def make_nodes(nats_server: LocalNats) -> AsyncIterator[Nodes]:
    nodes: list[WseServer] = []

    async def make(count: int = 3, **options: Any) -> list[WseServer]:
        made = []
        for _ in range(count):
            server = WseServer(accept_identity, port=0, **options)
            server.join_cluster(
                nats_server.url, ClusterOptions(node=f"n{len(nodes)}", node_ttl=2.0)
            )
            await server.start()
            nodes.append(server)
            made.append(server)
        return made

    yield make
    for server in nodes:
        await server.close()


async def connect(
    make_client: ClientFactory, node: WseServer, cid: str, log: EventLog
) -> WseClient:
    client = make_client(node)
    name = f"{cid}@{node.cluster.node}"  # type: ignore[union-attr]
    client.channel.on("news", lambda payload: log.hook(name)(payload))
    client.when.closed(log.hook(f"closed {name}"))
    await client.connect(cid)
    return client


async def until_state(log: EventLog, name: str, state: str) -> None:
    async with asyncio.timeout(10):
        while (state,) not in log.of(name):
            await log.wait(name, len(log.of(name)) + 1)


async def until_online(node: WseServer, cid: str, count: int) -> None:
    """The user's registry entries are written as the connections are accepted, a NATS round
    trip later: wait (bounded) for them to be seen from ``node``."""
    async with asyncio.timeout(5):
        while await node.online(cid) != count:
            await asyncio.sleep(0.01)


async def test_send_to_a_user_reaches_its_devices_on_every_node(
    make_nodes: Nodes, make_client: ClientFactory, log: EventLog
) -> None:
    a, b, c = await make_nodes(conn_per_user=3)
    for node in (a, b, c):
        await connect(make_client, node, "alice", log)
    await connect(make_client, b, "bob", log)
    await until_online(a, "alice", 3)
    assert a.send("alice", "news", 1) is True
    for node in ("n0", "n1", "n2"):
        assert await log.wait(f"alice@{node}") == [(1,)]
    a.send("bob", "news", 2)
    assert await log.wait("bob@n1") == [(2,)]
    assert log.of("alice@n0") == [(1,)]  # one copy each: nothing came twice


async def test_broadcast_reaches_every_connection_exactly_once(
    make_nodes: Nodes, make_client: ClientFactory, log: EventLog
) -> None:
    nodes = await make_nodes()
    users = [f"u{i}" for i in range(6)]
    for i, cid in enumerate(users):
        await connect(make_client, nodes[i % 3], cid, log)
    for i in range(3):
        nodes[i].broadcast("news", i)
    for i, cid in enumerate(users):
        got = await log.wait(f"{cid}@n{i % 3}", 3)
        assert sorted(p for (p,) in got) == [0, 1, 2]
    nodes[0].send(users[0], "news", "last")  # after the broadcasts, on the same subject
    await log.wait(f"{users[0]}@n0", 4)
    assert all(len(log.of(f"{cid}@n{i % 3}")) == 3 for i, cid in enumerate(users[1:], 1))


async def test_the_connection_limit_holds_across_nodes_oldest_first(
    make_nodes: Nodes, make_client: ClientFactory, log: EventLog
) -> None:
    a, b, c = await make_nodes(conn_per_user=2)
    await connect(make_client, a, "alice", log)
    await until_online(c, "alice", 1)
    await connect(make_client, b, "alice", log)
    await until_online(c, "alice", 2)
    await connect(make_client, c, "alice", log)  # the third: the oldest, on a, goes
    assert await log.wait("closed alice@n0") == [(1000, WSE_REASON.CLIENTS_CONCURRENCY)]
    await until_online(b, "alice", 2)
    assert log.of("closed alice@n1") == [] and log.of("closed alice@n2") == []


async def test_online_counts_from_any_node_and_drop_client_ends_them_all(
    make_nodes: Nodes, make_client: ClientFactory, log: EventLog
) -> None:
    a, b, c = await make_nodes(conn_per_user=5)
    for node in (a, b, c):
        node.when.online(log.hook("online"))
        node.when.offline(log.hook("offline"))
    assert await a.online("alice") == 0
    await connect(make_client, a, "alice", log)
    await connect(make_client, c, "alice", log)
    await until_online(b, "alice", 2)
    assert await a.online("alice") == await c.online("alice") == 2
    assert await log.wait("online") == [("alice",)]  # the first connection anywhere
    b.drop_client("alice", "bye")
    await log.wait("closed alice@n0")
    await log.wait("closed alice@n2")
    await until_online(b, "alice", 0)
    assert await log.wait("offline") == [("alice",)]  # the last one anywhere
    assert log.of("online") == [("alice",)]  # each once, across the three nodes


async def test_call_reaches_the_users_newest_connection_on_another_node(
    make_nodes: Nodes, make_client: ClientFactory, log: EventLog
) -> None:
    a, b, _ = await make_nodes(conn_per_user=2)
    old = await connect(make_client, a, "alice", log)
    old.register("where", lambda payload: "old")
    await until_online(b, "alice", 1)
    new = await connect(make_client, b, "alice", log)
    new.register("where", lambda payload: f"new {payload}")
    new.register("fail", lambda payload: (_ for _ in ()).throw(WseError("app.nope", {"x": 1})))
    await until_online(a, "alice", 2)
    assert await a.call("alice", "where", 1) == "new 1"  # across nodes
    assert await b.call("alice", "where", 2) == "new 2"  # on its own node
    with pytest.raises(RpcError) as caught:
        await a.call("alice", "fail")
    assert caught.value.code == "app.nope" and caught.value.details["x"] == 1
    with pytest.raises(ConnectionNotReady):
        await a.call("nobody", "where")


async def test_a_nats_restart_is_reported_and_survived(
    nats_server: LocalNats, make_nodes: Nodes, make_client: ClientFactory, log: EventLog
) -> None:
    a, b = await make_nodes(2)
    for node in (a, b):
        node.when.cluster(log.hook(f"cluster {node.cluster.node}"))  # type: ignore[union-attr]
        node.when.error(log.hook(f"error {node.cluster.node}"))  # type: ignore[union-attr]
    await connect(make_client, b, "bob", log)
    await until_online(a, "bob", 1)
    await nats_server.stop()
    await log.wait("cluster n0")
    assert log.of("cluster n0")[0] == ("disconnected",)
    a.send("bob", "news", "while down")  # delivered nowhere: counted and reported
    [(err, conn)] = await log.wait("error n0")
    assert isinstance(err, WseError) and err.code == CLUSTER_LOST and conn is None
    assert a.cluster is not None and a.cluster.lost == 1 and not a.cluster.healthy
    await nats_server.restart()
    for name in ("cluster n0", "cluster n1"):
        await until_state(log, name, "healthy")  # its subscriptions answer again
        states = [s for (s,) in log.of(name)]
        assert states[:2] == ["disconnected", "reconnected"]
    assert a.cluster.healthy
    a.send("bob", "news", "after")
    assert await log.wait("bob@n1") == [("after",)]
    assert await a.online("bob") == 1  # the registry kept its data through the restart


async def test_a_server_without_cluster_answers_online_and_call_locally(
    make_client: ClientFactory, log: EventLog
) -> None:
    async with WseServer(accept_identity, port=0, conn_per_user=2) as server:
        server.when.online(log.hook("online"))
        server.when.offline(log.hook("offline"))
        client = make_client(url_of(server))
        client.register("hi", lambda payload: "hello")
        await client.connect("alice")
        assert await server.online("alice") == 1 and await server.online("bob") == 0
        assert await server.call("alice", "hi") == "hello"
        with pytest.raises(ConnectionNotReady):
            await server.call("bob", "hi")
        assert log.of("online") == [("alice",)]
        await client.close()
        assert await log.wait("offline") == [("alice",)]


# ---- what a hostile peer or a bad moment must not do -----------------------------------------


async def test_a_user_id_of_any_length_keeps_the_link(
    make_nodes: Nodes, make_client: ClientFactory, log: EventLog
) -> None:
    a, b = await make_nodes(2)
    cid = "x" * 5000  # past NATS's 4 KiB control line, were it a subject or a key
    await connect(make_client, b, cid, log)
    await until_online(a, cid, 1)
    a.send(cid, "news", "long")
    assert await log.wait(f"{cid}@n1") == [("long",)]
    assert a.cluster is not None and a.cluster.healthy


async def test_a_call_naming_another_users_connection_is_refused(
    nats_server: LocalNats, make_nodes: Nodes, make_client: ClientFactory, log: EventLog
) -> None:
    import msgpack
    import nats

    _, b = await make_nodes(2)
    bob = await connect(make_client, b, "bob", log)
    bob.register("secret", lambda payload: "bob's")
    await until_online(b, "bob", 1)
    [bob_conn] = b.clients["bob"].conns.values()
    assert b.cluster is not None
    # a request as another node would send it, naming alice but bob's connection
    request = {"cid": "alice", "ref": b.cluster.ref(bob_conn.conn_id), "rp": "secret", "t": 2}
    nc = await nats.connect(nats_server.url)
    try:
        reply = await nc.request("wse.call.n1", msgpack.packb(request), timeout=5)
    finally:
        await nc.close()
    answer = msgpack.unpackb(reply.data)
    assert answer["err"]["code"] == "wse.client.not-ready" and "ok" not in answer


async def test_a_slow_call_holds_up_no_other_call_to_its_node(
    make_nodes: Nodes, make_client: ClientFactory, log: EventLog
) -> None:
    a, b = await make_nodes(2)
    release = asyncio.Event()

    async def slow(payload: Any) -> str:
        await release.wait()
        return "slow"

    alice = await connect(make_client, b, "alice", log)
    alice.register("slow", slow)
    bob = await connect(make_client, b, "bob", log)
    bob.register("fast", lambda payload: "fast")
    await until_online(a, "alice", 1)
    await until_online(a, "bob", 1)
    pending = asyncio.ensure_future(a.call("alice", "slow", timeout=10))
    assert await a.call("bob", "fast", timeout=3) == "fast"  # while alice's call waits
    assert not pending.done()
    release.set()
    assert await pending == "slow"


async def test_a_server_starts_only_with_its_cluster_and_can_try_again() -> None:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nats_server = LocalNats(port=port)  # not started yet; its URL (and credentials) known
    server = WseServer(accept_identity, port=0)
    server.join_cluster(nats_server.url, ClusterOptions(node="lonely", connect_timeout=0.5))
    with pytest.raises(WseError) as failed:
        await server.start()
    assert failed.value.code == "wse.cluster.unavailable"
    async with nats_server:
        assert nats_server.port == port
        await server.start()  # the same server, once NATS is there
        try:
            assert server.cluster is not None and server.cluster.healthy
        finally:
            await server.close()


async def test_a_send_right_after_the_last_flush_ended_is_not_held_back(
    make_nodes: Nodes, make_client: ClientFactory, log: EventLog
) -> None:
    a, b = await make_nodes(2)
    await connect(make_client, b, "bob", log)
    await until_online(a, "bob", 1)
    a.send("bob", "news", 1)
    # one loop turn: the flush of the first has ended, its done callback has not run yet
    await asyncio.sleep(0)
    a.send("bob", "news", 2)  # nothing is published after it
    assert await log.wait("bob@n1", 2) == [(1,), (2,)]


async def test_a_numeric_cid_is_one_user_across_nodes_and_not_its_string(
    make_nodes: Nodes, make_client: ClientFactory, log: EventLog
) -> None:
    def by_number(req: Any) -> None:
        req.accept(int(req.identity) if req.identity.isdigit() else req.identity)

    a, b = await make_nodes(2, conn_per_user=2)
    for node in (a, b):
        node.identify = by_number
    one = make_client(b)
    one.channel.on("news", log.hook("one"))
    await one.connect("1")
    text = make_client(b)
    text.channel.on("news", log.hook("text"))
    await text.connect("x1")
    await until_online(a, 1, 1)
    assert await a.online("1") == 0  # 1 and "1" are two users, as in JavaScript's Map
    a.send(1, "news", "number")
    assert await log.wait("one") == [("number",)]
    one.register("who", lambda payload: "one")
    assert await a.call(1, "who") == "one"
    assert log.of("text") == []


async def test_a_forged_frame_on_the_message_subject_reaches_no_client(
    nats_server: LocalNats, make_nodes: Nodes, make_client: ClientFactory, log: EventLog
) -> None:
    import nats

    (a,) = await make_nodes(1)
    await connect(make_client, a, "alice", log)
    await until_online(a, "alice", 1)
    # what any process that reaches NATS can publish: a mark that is not a's own (a takes
    # the message for another node's), an operation, and bytes for the clients' streams
    origin = bytes(8)

    def to_alice(frame: bytes) -> bytes:
        return origin + b"s" + struct.pack("!I", len(b"alice")) + b"alice" + frame

    close = codec.build_frame(OP_CLOSE, b"\x03\xe8forged")
    forged = [
        origin + b"b" + close,  # a Close to every client of every node
        to_alice(codec.build_frame(OP_TEXT, b'["news","masked"]', mask=True)),
        to_alice(codec.build_frame(OP_TEXT, b'["news","cut"]')[:-3]),  # swallows what follows
        to_alice(codec.build_frame(OP_TEXT, b'["news","two"]') + close),
        origin + b"b" + codec.build_frame(OP_TEXT, b'["news","deflated"]', rsv=4),
    ]
    nc = await nats.connect(nats_server.url)
    try:
        for data in forged:
            await nc.publish("wse.msg", data)
        # a well-formed frame is delivered, whoever published it (NATS is trusted with that)
        await nc.publish("wse.msg", to_alice(a.encode("news", "valid", None)))
        await nc.flush()
    finally:
        await nc.close()
    # one publisher's messages arrive in order: the forged ones were handled before this
    assert await log.wait("alice@n0") == [("valid",)]
    assert log.of("closed alice@n0") == []
    assert a.cluster is not None and a.cluster.refused == len(forged) and a.cluster.healthy


async def wait_state(log: EventLog, name: str, state: str, count: int) -> None:
    """Until ``state`` has been reported ``count`` times under ``name``."""
    async with asyncio.timeout(10):
        while log.of(name).count((state,)) < count:
            await log.wait(name, len(log.of(name)) + 1)


async def test_a_frozen_nats_makes_the_node_unhealthy_and_its_return_healthy(
    nats_server: LocalNats, log: EventLog
) -> None:
    server = WseServer(accept_identity, port=0)
    server.join_cluster(
        nats_server.url, ClusterOptions(node="frozen", node_ttl=1.5, health_timeout=0.5)
    )
    server.when.cluster(log.hook("cluster"))
    listener = await server.metrics.listen("127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    pid = nats_server.pid
    assert pid is not None
    loop = asyncio.get_running_loop()
    try:
        await server.start()
        assert (await health(port))[0] == 200
        os.kill(pid, signal.SIGSTOP)  # the TCP connection stays open; nothing answers
        try:
            await wait_state(log, "cluster", "unhealthy", 1)  # within a heartbeat and 0.5 s
            status, report = await health(port)
            assert status == 503 and report["cluster"] == {"node": "frozen", "healthy": False}
            # a lookup waits no longer than the call's own timeout, or health_timeout
            for lookup, bound in (
                (server.call("alice", "where", timeout=0.3), 0.3),
                (server.online("alice"), 0.5),
            ):
                began = loop.time()
                with pytest.raises(WseError) as failed:
                    await lookup
                assert failed.value.code == CLUSTER_UNAVAILABLE
                assert loop.time() - began < bound + 0.25
        finally:
            os.kill(pid, signal.SIGCONT)
        await wait_state(log, "cluster", "healthy", 1)
        assert (await health(port))[0] == 200
    finally:
        await server.close()
        listener.close()


async def test_healthy_is_reported_once_per_recovery_after_a_reconnect(
    nats_server: LocalNats, log: EventLog
) -> None:
    server = WseServer(accept_identity, port=0)
    server.join_cluster(nats_server.url, ClusterOptions(node="once", node_ttl=1.5))
    server.when.cluster(log.hook("cluster"))
    heartbeat = 1.5 / 3
    try:
        await server.start()
        await nats_server.stop()
        await wait_state(log, "cluster", "disconnected", 1)
        # longer than a heartbeat: its renewal waits in nats-py's buffer for the reconnect
        await asyncio.sleep(2 * heartbeat)
        await nats_server.restart()
        await wait_state(log, "cluster", "healthy", 1)
        # a window of several heartbeats, each of which could report it again
        await asyncio.sleep(4 * heartbeat)
        states = [state for (state,) in log.of("cluster")]
        assert states == ["disconnected", "reconnected", "healthy"]
    finally:
        await server.close()


async def test_a_call_without_nats_fails_at_once_not_after_natss_timeout(
    nats_server: LocalNats, make_nodes: Nodes, log: EventLog
) -> None:
    (a,) = await make_nodes(1)
    a.when.cluster(log.hook("cluster"))
    await nats_server.stop()
    await wait_state(log, "cluster", "disconnected", 1)
    loop = asyncio.get_running_loop()
    for lookup in (a.call("alice", "where", timeout=0.5), a.online("alice")):
        began = loop.time()
        with pytest.raises(WseError) as failed:
            await lookup
        assert failed.value.code == CLUSTER_UNAVAILABLE
        assert loop.time() - began < 0.5 + 0.25


async def test_the_registry_queue_stays_bounded_while_nats_is_down_and_resyncs_after(
    nats_server: LocalNats, make_client: ClientFactory, log: EventLog
) -> None:
    bound = 20
    a = WseServer(accept_identity, port=0, conn_per_user=3)
    a.join_cluster(nats_server.url, ClusterOptions(node="a", node_ttl=1.5, max_pending_users=bound))
    b = WseServer(accept_identity, port=0, conn_per_user=3)
    b.join_cluster(nats_server.url, ClusterOptions(node="b", node_ttl=1.5))
    a.when.cluster(log.hook("cluster"))
    b.when.cluster(log.hook("cluster-b"))
    try:
        for node in (a, b):
            await node.start()
        assert a.cluster is not None
        # users whose connection closes while NATS is away: their entries must go
        leaving = [make_client(a) for _ in range(5)]
        for i, client in enumerate(leaving):
            await client.connect(f"leaving{i}")
        await until_online(b, "leaving4", 1)
        await nats_server.stop()
        await wait_state(log, "cluster", "disconnected", 1)
        tasks_before = len(asyncio.all_tasks())
        for client in leaving:
            await client.close()
        # one user connecting and leaving again and again is one change
        for _ in range(30):
            client = make_client(a)
            await client.connect("flapping")
            await client.close()
        assert a.cluster.pending_users <= 6
        # many users: the queue stops at its bound, and no task waits per change
        for i in range(120):
            client = make_client(a)
            await client.connect(f"passing{i}")
            await client.close()
            assert a.cluster.pending_users <= bound
        assert a.cluster.resyncs >= 1
        assert len(asyncio.all_tasks()) < tasks_before + 20
        staying = make_client(a)
        await staying.connect("staying")
        await nats_server.restart()
        await wait_state(log, "cluster", "healthy", 1)
        # b reconnects on its own schedule: its lookups need its link
        await wait_state(log, "cluster-b", "healthy", 1)
        # the whole state, written again: who left is gone, who stays is there
        await until_online(b, "staying", 1)
        for cid in ("leaving0", "leaving4", "flapping", "passing0", "passing119"):
            await until_online(b, cid, 0)
        assert a.cluster.pending_users == 0
    finally:
        for node in (a, b):
            await node.close()


@pytest.mark.parametrize("health_timeout", [0.5, 0.0001], ids=["healthy", "heartbeat-late"])
async def test_a_burst_of_joins_faster_than_the_registry_writer_is_written_not_resynced(
    nats_server: LocalNats, log: EventLog, health_timeout: float
) -> None:
    # A ramp of ~16 000 joins a minute per worker outran the writer: past max_pending_users
    # the queue was dropped and the whole bucket read and written again, while NATS took
    # every write. Now the bound holds only while NATS takes none, whether or not the
    # heartbeat is late (a busy NATS answers it late: "heartbeat-late").
    bound = 50
    server = WseServer(accept_identity, port=0)
    options = ClusterOptions(
        node="ramp", node_ttl=3.0, health_timeout=health_timeout, max_pending_users=bound
    )
    server.join_cluster(nats_server.url, options)
    server.when.cluster(log.hook("cluster"))
    try:
        await server.start()
        cluster = server.cluster
        assert cluster is not None
        # what the node tells presence as it accepts connections, all in one turn of the
        # loop: far faster than NATS round trips
        for i in range(8 * bound):  # below the ceiling, ten times the bound
            cluster.presence.added(f"ramp{i}", str(i), True)
        assert cluster.presence.pending_users > bound
        assert await cluster.presence.drain()
        assert cluster.presence.pending_users == 0
        assert cluster.resyncs == 0
        assert cluster.healthy is (health_timeout == 0.5)
    finally:
        await server.close()


async def test_a_queue_past_ten_times_the_bound_is_resynced_even_while_nats_takes_writes(
    nats_server: LocalNats,
) -> None:
    # Users who come and go faster than a slow NATS takes their changes would grow the queue
    # without end while NATS answers: past ten times max_pending_users it is dropped and the
    # state re-synced all the same, so the node's memory stays bounded.
    bound = 50
    server = WseServer(accept_identity, port=0)
    server.join_cluster(
        nats_server.url, ClusterOptions(node="churn", node_ttl=3.0, max_pending_users=bound)
    )
    try:
        await server.start()
        cluster = server.cluster
        assert cluster is not None
        for i in range(12 * bound):  # in one turn: NATS has taken none of them yet
            cluster.presence.added(f"churn{i}", str(i), True)
        assert cluster.resyncs == 1
        assert cluster.presence.pending_users < 12 * bound
        assert await cluster.presence.drain()
    finally:
        await server.close()


async def test_a_nats_that_refuses_every_registry_write_bounds_the_queue_after_node_ttl(
    nats_server: LocalNats, make_client: ClientFactory
) -> None:
    # NATS answers, but every registry write fails (its bucket is gone): each failure came
    # back fast and the next join restarted the writer, which counted as progress, so the
    # queue of users to write was never bounded. A failed write is no progress: once
    # node_ttl has passed without one done, the bound holds.
    import nats

    bound, ttl = 10, 1.0
    server = WseServer(accept_identity, port=0)
    server.join_cluster(
        nats_server.url,
        ClusterOptions(node="refused", node_ttl=ttl, health_timeout=None, max_pending_users=bound),
    )
    loop = asyncio.get_running_loop()
    admin = await nats.connect(nats_server.url)
    try:
        await server.start()
        cluster = server.cluster
        assert cluster is not None
        assert await admin.jetstream().delete_key_value("wse_users")
        started, joined = loop.time(), 0
        while joined < 120 or loop.time() < started + 1.5 * ttl:
            batch = [make_client(server) for _ in range(10)]
            await asyncio.gather(*(c.connect(f"refused{joined + i}") for i, c in enumerate(batch)))
            joined += len(batch)
        assert cluster.resyncs >= 1
        assert cluster.presence.pending_users <= bound + 64  # the bound, and those under way
    finally:
        await admin.close()
        await server.close()


async def test_a_nats_slower_than_health_timeout_does_not_let_the_nodes_key_expire(
    nats_server: LocalNats, log: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    # Under a ramp NATS answered each request of a heartbeat slowly: the heartbeat, cut off
    # after health_timeout before it had written the node's key, let the key expire, and the
    # others took a live node for dead (and swept its users, which it then wrote again).
    # Now the key is written first and the write is never cut off: the node may be
    # unhealthy (NATS is slow), never dead.
    server = WseServer(accept_identity, port=0)
    server.join_cluster(
        nats_server.url, ClusterOptions(node="slow", node_ttl=1.5, health_timeout=0.2)
    )
    server.when.cluster(log.hook("cluster"))
    pid = nats_server.pid
    assert pid is not None
    loop = asyncio.get_running_loop()
    try:
        await server.start()
        until = loop.time() + 4.5  # three times node_ttl
        try:
            while loop.time() < until:
                # NATS answers only a tenth of the time, late for every heartbeat
                os.kill(pid, signal.SIGSTOP)
                await asyncio.sleep(0.7)
                os.kill(pid, signal.SIGCONT)
                await asyncio.sleep(0.08)
        finally:
            os.kill(pid, signal.SIGCONT)
        async with asyncio.timeout(5):  # a heartbeat done in time again
            while log.of("cluster")[-1:] != [("healthy",)]:
                await log.wait("cluster", len(log.of("cluster")) + 1)
        assert "taken for dead" not in caplog.text
    finally:
        await server.close()


# A process that links to NATS, as a worker of `wse-fast serve --workers N` does: prints
# whether aiohttp was imported, whether importlib.metadata was, the version nats-py gives in
# its CONNECT, and whether the node was healthy.
_LINK_SCRIPT = """
import asyncio, sys
from wse_fast import ClusterOptions, WseServer
import wse_fast.cluster.nats_cluster
import nats.aio.client

async def main(url):
    server = WseServer(lambda request: request.accept("someone"), port=0)
    server.join_cluster(url, ClusterOptions(node="link"))
    await server.start()
    healthy = server.cluster.healthy
    await server.close()
    metadata = "importlib.metadata" in sys.modules
    print("aiohttp" in sys.modules, metadata, nats.aio.client.__version__, healthy)

asyncio.run(main(sys.argv[1]))
"""


_OTHER_NATS_USER = """
import asyncio, sys
import wse_fast.cluster.nats_client  # imports nats-py with aiohttp held back
import nats

async def main():
    print("aiohttp" in sys.modules)
    link = await nats.connect(sys.argv[1], allow_reconnect=False)
    await link.flush()
    await link.close()
    print("linked", "aiohttp" in sys.modules)

asyncio.run(main())
"""


async def link_in_a_process(url: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LINK_SCRIPT, url, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    return out.decode().strip()


async def test_a_tcp_link_imports_no_aiohttp_nor_importlib_metadata_a_websocket_link_aiohttp(
    nats_server: LocalNats, tmp_path: Path
) -> None:
    # nats-py imports aiohttp (10 MB a process) whenever it is installed, for its WebSocket
    # transport alone, and importlib.metadata (3 MB) for its own version: six workers on TCP
    # paid 78 MB for them.
    version = importlib.metadata.version("nats-py")
    assert await link_in_a_process(nats_server.url) == f"False False {version} True"
    config = tmp_path / "ws.conf"
    config.write_text(
        'listen: "127.0.0.1:-1"\n'
        f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
        'websocket { listen: "127.0.0.1:-1", no_tls: true }\n'
    )
    server = await asyncio.create_subprocess_exec(
        nats_server_binary(), "-c", str(config), stderr=asyncio.subprocess.PIPE
    )
    try:
        assert server.stderr is not None
        ws_url = ""
        async with asyncio.timeout(10):
            while line := (await server.stderr.readline()).decode():
                if found := re.search(r"websocket clients on (ws://\S+)", line):
                    ws_url = found[1]
                if "Server is ready" in line:
                    break
        assert ws_url
        assert await link_in_a_process(ws_url) == f"True False {version} True"
        # the process's other nats-py users still have the WebSocket transport: aiohttp,
        # held back while wse-fast imported nats-py, is imported when they first use it
        other_user = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _OTHER_NATS_USER, ws_url, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await other_user.communicate()
        assert out.decode().split() == ["False", "linked", "True"]
    finally:
        server.kill()
        await server.communicate()
