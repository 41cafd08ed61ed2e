"""The broker port (``wse_fast.cluster.broker``): the server reaches users only through its
broker, and a broker reaches the server only through its ``BrokerHandler``.

``TwinBroker`` below is a second broker written here, outside the package, without touching
server.py: an in-memory "cluster" of two servers in one process, with real clients on real
sockets. Sends, broadcasts, drops, presence (online, the online and offline events, the
per-user limit) and calls cross from one server to the other through it, as they would
through NATS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field
from typing import Any

import pytest
from wse_fast import WSE_REASON, ConnectionNotReady, NotAuthorized, WseClient, WseServer
from wse_fast.cluster.broker import Broker, BrokerHandler, LocalBroker, Presence

from tests.conftest import ClientFactory, EventLog, accept_identity, url_of


@dataclass
class Hub:
    """What the two nodes share: the brokers, and each user's connections, oldest first."""

    nodes: list[TwinBroker] = field(default_factory=list)
    users: dict[Any, list[tuple[TwinBroker, str]]] = field(default_factory=dict)


class TwinBroker:
    """One node's broker of a :class:`Hub`; it is its own presence, as NATS's is."""

    refused = lost = 0

    def __init__(self, hub: Hub, handler: BrokerHandler, name: str) -> None:
        self.hub = hub
        self.handler = handler
        self.node = name
        self.healthy = False
        self.calls = 0  # calls this broker carried to another node
        hub.nodes.append(self)

    @property
    def presence(self) -> TwinBroker:
        return self

    def publish_all(self, frame: bytes) -> None:
        for node in self.hub.nodes:
            node.handler.deliver_to_all(frame)

    def publish_user(self, cid: Any, frame: bytes) -> int:
        for node in self.hub.nodes:
            written = node.handler.deliver_to_user(cid, frame)
            if node is self:
                here = written
        return here

    def reaches(self, cid: Any) -> bool:
        return True  # the other node may have it

    def drop_user(self, cid: Any, reason: str) -> None:
        for node in self.hub.nodes:
            node.handler.drop_local_user(cid, reason)

    def check_cid(self, cid: Hashable) -> None:
        if not isinstance(cid, str):
            raise TypeError("this broker carries str cids only")

    def added(self, cid: Any, conn_id: str, first: bool) -> None:
        entries = self.hub.users.setdefault(cid, [])
        entries.append((self, conn_id))
        if len(entries) == 1:
            self.handler.user_online(cid)
        for node, old in entries[: max(len(entries) - self.handler.conn_per_user, 0)]:
            conn = node.handler.local_connection(old)
            if conn is not None:
                conn.drop(WSE_REASON.CLIENTS_CONCURRENCY)

    def removed(self, cid: Any, conn_id: str, last: bool) -> None:
        entries = self.hub.users.get(cid, [])
        if (self, conn_id) in entries:
            entries.remove((self, conn_id))
            if not entries:
                del self.hub.users[cid]
                self.handler.user_offline(cid)

    async def online(self, cid: Any) -> int:
        return len(self.hub.users.get(cid, ()))

    async def call(self, cid: Any, rp: str, payload: Any, timeout: float | None) -> Any:
        for node, conn_id in reversed(self.hub.users.get(cid, [])):
            conn = node.handler.local_connection(conn_id)
            if conn is not None:
                self.calls += node is not self
                return await conn.call(rp, payload, timeout)
        raise ConnectionNotReady({"rpc": rp, "cid": cid})

    async def start(self) -> None:
        self.healthy = True

    async def finish_calls(self, timeout: float) -> None:
        pass

    async def stop(self) -> None:
        self.healthy = False


def _conforms(broker: TwinBroker) -> tuple[Broker, Presence]:
    return broker, broker.presence  # mypy checks the double against both ports here


@pytest.fixture
async def twins(log: EventLog) -> AsyncIterator[tuple[WseServer, WseServer]]:
    hub = Hub()
    servers = []
    for name in ("a", "b"):
        server = WseServer(accept_identity, port=0, conn_per_user=2)
        server.use_broker(TwinBroker(hub, server, name))
        server.when.online(log.hook(f"online {name}"))
        server.when.offline(log.hook(f"offline {name}"))
        server.when.disconnected(log.hook(f"disconnected {name}"))
        await server.start()
        servers.append(server)
    yield servers[0], servers[1]
    for server in servers:
        await server.close()


async def connect(
    make_client: ClientFactory, server: WseServer, cid: str, log: EventLog
) -> WseClient:
    client = make_client(url_of(server))
    name = f"{cid}@{server.cluster.node}"  # type: ignore[union-attr]
    client.channel.on("news", log.hook(name))
    client.register("where", lambda payload: f"{name} {payload}")
    client.when.closed(log.hook(f"closed {name}"))
    await client.connect(cid)
    return client


async def test_sends_broadcasts_and_drops_cross_to_the_other_server(
    twins: tuple[WseServer, WseServer], make_client: ClientFactory, log: EventLog
) -> None:
    a, b = twins
    assert a.cluster is a.broker and a.cluster.healthy and a.cluster.node == "a"
    await connect(make_client, a, "alice", log)
    await connect(make_client, b, "bob", log)
    assert a.send("bob", "news", "to bob") is True  # bob lives on b
    assert await log.wait("bob@b") == [("to bob",)]
    b.broadcast("news", "all")
    assert await log.wait("alice@a") == [("all",)]
    assert await log.wait("bob@b", 2) == [("to bob",), ("all",)]
    a.drop_client("bob", "go")
    assert (await log.wait("closed bob@b"))[0][1] == "go"
    assert log.of("alice@a") == [("all",)]  # nothing came twice, nothing to the wrong user


async def test_presence_and_calls_span_both_servers(
    twins: tuple[WseServer, WseServer], make_client: ClientFactory, log: EventLog
) -> None:
    a, b = twins
    await connect(make_client, a, "carol", log)
    await connect(make_client, b, "carol", log)
    assert await a.online("carol") == 2 and await b.online("carol") == 2
    assert log.of("online a") == [("carol",)] and log.of("online b") == []  # once, in all
    # the newest connection answers, on the other server
    assert await a.call("carol", "where", 1) == "carol@b 1"
    assert isinstance(a.broker, TwinBroker) and a.broker.calls == 1
    # the limit of 2 holds across both: a third device drops the oldest, on a
    await connect(make_client, b, "carol", log)
    assert (await log.wait("closed carol@a"))[0][1] == WSE_REASON.CLIENTS_CONCURRENCY
    await log.wait("disconnected a")  # a has taken it off
    assert await a.online("carol") == 2 and await b.online("carol") == 2
    await a.close()
    await b.close()
    assert await log.wait("offline b") == [("carol",)]  # the last one closed, on b
    assert log.of("offline a") == []


async def test_a_cid_the_broker_cannot_carry_is_refused(
    twins: tuple[WseServer, WseServer], make_client: ClientFactory, log: EventLog
) -> None:
    a, _ = twins
    a.identify = lambda req: req.accept(("a", "tuple"))  # not a str: TwinBroker refuses it
    client = make_client(url_of(a))
    with pytest.raises(NotAuthorized):
        await client.connect("x")
    assert await a.online(("a", "tuple")) == 0


async def test_a_server_alone_has_the_in_process_broker_bound_to_its_own_writes(
    make_client: ClientFactory, log: EventLog
) -> None:
    async with WseServer(accept_identity, port=0) as server:
        broker = server.broker
        assert isinstance(broker, LocalBroker) and server.cluster is None and broker.healthy
        # no layer between a broadcast and the write: the broker's methods are the node's
        assert broker.publish_all == server.deliver_to_all
        assert broker.publish_user == server.deliver_to_user
        assert broker.reaches == server.has_user
        client = make_client(url_of(server))
        client.channel.on("news", log.hook("news"))
        await client.connect("dave")
        server.broadcast("news", 1)
        assert server.send("dave", "news", 2) and not server.send("nobody", "news", 3)
        assert await log.wait("news", 2) == [(1,), (2,)]
        with pytest.raises(RuntimeError):
            server.use_broker(LocalBroker(server))  # chosen before the server starts
