"""WSE's own behaviour suite, scenario by scenario, with real servers and clients on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from typing import Any, ClassVar

import pytest
from wse_fast import (
    WSE_ERROR,
    WSE_REASON,
    WSE_STATUS,
    ConnectionFailed,
    IdentifyRequest,
    JsonProtocol,
    Listener,
    MsgpackProtocol,
    Reconnect,
    WseClient,
    WseError,
    WseServer,
)

from tests.conftest import ClientFactory, EventLog, ServerFactory, accept_identity, url_of
from tests.hosts import TRANSPORTS, mount


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Every scenario on every transport: picows's own listener, and mounted under uvicorn
    (Starlette's WebSocketRoute) and aiohttp."""
    return str(request.param)


# ---- messages ------------------------------------------------------------------------------


async def test_broadcast_reaches_every_user(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    clients = [make_client(server) for _ in range(3)]
    for i, c in enumerate(clients):
        c.channel.on("announcement", log.hook(f"got{i}"))
        await c.connect(f"user{i}")
    server.broadcast("announcement", {"m": "all"})
    for i in range(3):
        assert await log.wait(f"got{i}") == [({"m": "all"},)]


async def test_client_to_server_message(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    server.channel.on("hello", log.hook("hello"))
    client = make_client(server)
    await client.connect("alice")
    client.send("hello", {"message": "Hello server!"})
    [(conn, payload)] = await log.wait("hello")
    assert payload == {"message": "Hello server!"}
    assert conn.cid == "alice" and conn.client is server.clients["alice"]


async def test_async_channel_handler_answers(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()

    @server.channel.on("hello")
    async def hello(conn: Any, data: Any) -> None:
        await asyncio.sleep(0)
        conn.send("welcome", {"message": "Hello back!", "echo": data})

    client = make_client(server)
    client.channel.on("welcome", log.hook("welcome"))
    await client.connect("alice")
    client.send("hello", 1)
    assert await log.wait("welcome") == [({"message": "Hello back!", "echo": 1},)]


async def test_ignored_messages_on_both_sides(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    server.when.ignored(log.hook("server_ignored"))
    client = make_client(server)
    client.when.ignored(log.hook("client_ignored"))
    await client.connect("alice")
    client.send("nobody-listens", {"x": 1})
    [(conn, type_, payload)] = await log.wait("server_ignored")
    assert (conn.cid, type_, payload) == ("alice", "nobody-listens", {"x": 1})
    server.send("alice", "unknown-to-client", [1, 2])
    assert await log.wait("client_ignored") == [("unknown-to-client", [1, 2])]


async def test_send_to_a_users_devices_and_to_everyone(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(conn_per_user=2)
    phone, desktop, other = make_client(server), make_client(server), make_client(server)
    for name, c in (("phone", phone), ("desktop", desktop), ("other", other)):
        c.channel.on("sync", log.hook(name))
        c.channel.on("all", log.hook(name))
    await phone.connect("alice", {"device": "phone"})
    await desktop.connect("alice", {"device": "desktop"})
    await other.connect("bob")
    assert server.send("alice", "sync", {"n": 1}) is True
    assert server.send("nobody", "sync", {"n": 1}) is False
    await log.wait("phone")
    await log.wait("desktop")
    server.broadcast("all", {"n": 2})
    assert await log.wait("phone", 2) == [({"n": 1},), ({"n": 2},)]
    assert await log.wait("desktop", 2) == [({"n": 1},), ({"n": 2},)]
    assert await log.wait("other") == [({"n": 2},)]  # bob never got alice's sync


async def test_send_to_one_connection(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(conn_per_user=2)
    server.when.connected(log.hook("connected"))
    a, b = make_client(server), make_client(server)
    a.channel.on("only", log.hook("a"))
    b.channel.on("only", log.hook("b"))
    await a.connect("alice")
    await b.connect("alice")
    [(conn_a,), (conn_b,)] = await log.wait("connected", 2)
    server.clients["alice"].conns[conn_b.conn_id].send("only", "b")
    assert await log.wait("b") == [("b",)]
    conn_a.send("only", "a")
    assert await log.wait("a") == [("a",)]


# ---- users and connections -----------------------------------------------------------------


async def test_connection_limit_drops_the_oldest(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(conn_per_user=2)
    devices = [make_client(server) for _ in range(3)]
    for i, d in enumerate(devices):
        d.when.closed(log.hook(f"closed{i}"))
        await d.connect("alice", {"n": i})
    assert await log.wait("closed0") == [(1000, WSE_REASON.CLIENTS_CONCURRENCY)]
    assert devices[1].status == devices[2].status == WSE_STATUS.READY
    assert devices[0].status == WSE_STATUS.OFFLINE
    conns = server.clients["alice"].conns.values()
    assert [c.meta["n"] for c in conns] == [1, 2]


async def test_client_conns_is_a_read_only_snapshot_oldest_first(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(conn_per_user=2)
    server.when.disconnected(log.hook("disconnected"))
    phone, desktop = make_client(server), make_client(server)
    await phone.connect("alice", {"device": "phone"})
    await desktop.connect("alice", {"device": "desktop"})
    conns = server.clients["alice"].conns
    assert [c.meta["device"] for c in conns.values()] == ["phone", "desktop"]
    assert all(conn.conn_id == conn_id for conn_id, conn in conns.items())
    with pytest.raises(TypeError):
        conns["x"] = conns[next(iter(conns))]  # type: ignore[index]
    await phone.close()
    await log.wait("disconnected")
    assert len(conns) == 2  # a snapshot: taken when read
    assert [c.meta["device"] for c in server.clients["alice"].conns.values()] == ["desktop"]


async def test_default_limit_is_one_connection(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    first, second = make_client(server), make_client(server)
    first.when.closed(log.hook("closed"))
    await first.connect("alice")
    await second.connect("alice")
    assert await log.wait("closed") == [(1000, WSE_REASON.CLIENTS_CONCURRENCY)]
    assert len(server.clients["alice"].conns) == 1


async def test_connect_joined_and_meta_events(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    seen: list[Any] = []

    def identify(req: IdentifyRequest) -> None:
        seen.append((req.identity, dict(req.meta), req.challenge, req.conn_id))
        req.accept("alice", {"welcome": True})

    server = await make_server(identify, conn_per_user=2)
    server.when.joined(log.hook("joined"))
    server.when.connected(log.hook("connected"))
    phone, desktop = make_client(server), make_client(server)
    assert await phone.connect("secret", {"device": "phone"}) == {"welcome": True}
    await desktop.connect("secret", {"device": "desktop"})
    [(conn1,), (conn2,)] = await log.wait("connected", 2)
    assert conn1.meta == {"device": "phone"} and conn2.meta == {"device": "desktop"}
    assert conn1.identity == "secret" and conn1.remote_addr[0] == "127.0.0.1"
    [(client, meta)] = await log.wait("joined")  # once per user, not per device
    assert client.cid == "alice" and meta == {"device": "phone"}
    assert [s[:3] for s in seen] == [
        ("secret", {"device": "phone"}, None),
        ("secret", {"device": "desktop"}, None),
    ]
    assert seen[0][3] != seen[1][3]


async def test_disconnect_events(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(conn_per_user=2)
    server.when.disconnected(log.hook("disconnected"))
    server.when.left(log.hook("left"))
    a, b = make_client(server), make_client(server)
    await a.connect("alice")
    await b.connect("alice")
    await a.close()
    [(conn, code, reason)] = await log.wait("disconnected")
    assert (conn.cid, code, reason) == ("alice", 1000, WSE_REASON.BY_CLIENT)
    assert log.of("left") == []  # alice still has a device
    await b.close("custom-reason")
    await log.wait("left")
    [(client, code, reason)] = log.of("left")
    assert (client.cid, code, reason) == ("alice", 1000, "custom-reason")
    assert "alice" not in server.clients


@pytest.mark.parametrize("users", [10, 1001])
async def test_many_users_at_once(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog, users: int
) -> None:
    server = await make_server()
    server.when.joined(log.hook("joined"))
    clients = [make_client(server) for _ in range(users)]
    await asyncio.gather(*(c.connect(f"user{i}") for i, c in enumerate(clients)))
    await log.wait("joined", users)
    assert len(server.clients) == users
    for c in clients:
        c.channel.on("ping", log.hook("ping"))
    server.broadcast("ping", None)
    await log.wait("ping", users)


async def test_swarm_connects_and_disconnects(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    server.when.joined(log.hook("joined"))
    server.when.left(log.hook("left"))
    clients = [make_client(server) for _ in range(200)]
    await asyncio.gather(*(c.connect(f"user{i}") for i, c in enumerate(clients)))
    await asyncio.gather(*(c.close() for c in clients[::2]))
    await log.wait("left", 100)
    assert len(server.clients) == 100
    await asyncio.gather(*(c.close() for c in clients[1::2]))
    await log.wait("left", 200)
    assert server.clients == {} and server.connections == {}


async def test_two_servers_in_one_process(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    one, two = await make_server(), await make_server()
    one.register("who", lambda conn, p: "one")
    two.register("who", lambda conn, p: "two")
    c1, c2 = make_client(one), make_client(two)
    await c1.connect("alice")
    await c2.connect("alice")
    assert await c1.call("who") == "one" and await c2.call("who") == "two"
    assert list(one.clients) == list(two.clients) == ["alice"]


async def test_several_servers_on_one_port_by_path(
    transport: str, make_client: ClientFactory
) -> None:
    chat, admin = WseServer(accept_identity), WseServer(accept_identity, conn_per_user=2)
    chat.register("who", lambda conn, p: "chat")
    admin.register("who", lambda conn, p: "admin")
    routes = {"/chat": chat, "/admin": admin}
    if transport == "picows":
        listener = Listener(routes, port=0)
        await listener.start()
        port, stop = listener.port, listener.close
    else:
        host = await mount(transport, routes)
        port, stop = host.port, host.stop
    try:
        on_chat = make_client(f"ws://127.0.0.1:{port}/chat")
        on_admin = make_client(f"ws://127.0.0.1:{port}/admin?x=1")
        await on_chat.connect("alice")
        await on_admin.connect("alice")
        assert await on_chat.call("who") == "chat" and await on_admin.call("who") == "admin"
        assert len(chat.connections) == len(admin.connections) == 1
        with pytest.raises(ConnectionFailed):  # no server on that path
            await make_client(f"ws://127.0.0.1:{port}/other").connect("alice")
    finally:
        await chat.close()
        await admin.close()
        await stop()


async def test_pre_existing_socket(make_client: ClientFactory) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = WseServer(accept_identity)
    await server.start(sock=sock)
    try:
        assert server.port == sock.getsockname()[1]
        client = make_client(server)
        assert await client.connect("alice") == {"hey": "welcome data"}
        await client.close()
    finally:
        await server.close()


async def test_server_close_tells_clients_to_come_back(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    client = make_client(server)
    client.when.closed(log.hook("closed"))
    await client.connect("alice")
    await server.close()
    assert await log.wait("closed") == [(1012, WSE_REASON.BY_SERVER)]


# ---- authentication ------------------------------------------------------------------------


async def test_invalid_auth_is_refused(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server()
    client = make_client(server)
    with pytest.raises(WseError) as err:
        await client.connect("bad-secret")
    assert err.value.code == WSE_ERROR.NOT_AUTHORIZED
    assert client.status == WSE_STATUS.OFFLINE
    assert server.clients == {}


async def test_falsy_cid_refuses(make_server: ServerFactory, make_client: ClientFactory) -> None:
    server = await make_server(lambda req: req.accept("", {"never": "sent"}))
    with pytest.raises(WseError) as err:
        await make_client(server).connect("anyone")
    assert err.value.code == WSE_ERROR.NOT_AUTHORIZED


async def test_identify_that_never_answers_times_out(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server(lambda req: None, auth_timeout=0.2)
    with pytest.raises(WseError) as err:
        await make_client(server).connect("anyone")
    assert err.value.code == WSE_ERROR.NOT_AUTHORIZED


async def test_async_identify(make_server: ServerFactory, make_client: ClientFactory) -> None:
    async def identify(req: IdentifyRequest) -> None:
        await asyncio.sleep(0)
        req.accept(f"u-{req.identity}", "hi")

    server = await make_server(identify)
    assert await make_client(server).connect("7") == "hi"
    assert list(server.clients) == ["u-7"]


async def test_identify_raising_refuses_and_reports(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    def identify(req: IdentifyRequest) -> None:
        raise RuntimeError("database down")

    server = await make_server(identify)
    server.when.error(log.hook("error"))
    with pytest.raises(WseError) as err:
        await make_client(server).connect("alice")
    assert err.value.code == WSE_ERROR.NOT_AUTHORIZED
    [(error, _conn)] = await log.wait("error")
    assert "database down" in error.details["error"]


def _cra_server_options() -> dict[str, Any]:
    def identify(req: IdentifyRequest) -> None:
        assert req.challenge is not None
        if req.challenge.response == req.challenge.quest["a"] + req.challenge.quest["b"]:
            req.accept(req.identity, "ok")
        else:
            req.refuse()

    return {"identify": identify}


async def test_challenge_success(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(**_cra_server_options())
    server.use_challenge(lambda identity, meta, quest, refuse: quest({"a": 1, "b": 2}))
    client = make_client(server)
    client.challenge(lambda q, solve: (log.hook("quest")(q), solve(q["a"] + q["b"])))
    assert await client.connect("someone") == "ok"
    assert log.of("quest") == [({"a": 1, "b": 2},)]


async def test_challenge_wrong_answer(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server(**_cra_server_options())
    server.use_challenge(lambda identity, meta, quest, refuse: quest({"a": 1, "b": 2}))
    client = make_client(server)
    client.challenge(lambda q, solve: solve(4))
    with pytest.raises(WseError) as err:
        await client.connect("someone")
    assert err.value.code == WSE_ERROR.NOT_AUTHORIZED


async def test_challenge_refused_before_the_quest(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(**_cra_server_options())
    server.use_challenge(
        lambda identity, meta, quest, refuse: refuse() if identity == "bad" else quest(1)
    )
    client = make_client(server)
    client.challenge(lambda q, solve: log.hook("quest")(q))
    with pytest.raises(WseError) as err:
        await client.connect("bad")
    assert err.value.code == WSE_ERROR.NOT_AUTHORIZED
    assert log.of("quest") == []


async def test_challenge_refused_halfway(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    async def generator(identity: Any, meta: Any, quest: Any, refuse: Any) -> None:
        quest({"a": 1, "b": 2})
        await log.wait("quest")  # the client has the quest; now change our mind
        refuse()

    server = await make_server(**_cra_server_options())
    server.use_challenge(generator)
    client = make_client(server)
    client.challenge(lambda q, solve: log.hook("quest")(q))  # never solves
    with pytest.raises(WseError) as err:
        await client.connect("someone")
    assert err.value.code == WSE_ERROR.NOT_AUTHORIZED


async def test_invalid_handlers_are_rejected() -> None:
    with pytest.raises(WseError) as err:
        WseServer(None)
    assert err.value.code == WSE_ERROR.IDENTIFY_HANDLER_MISSING
    with pytest.raises(WseError) as err:
        WseServer(accept_identity).use_challenge("not callable")  # type: ignore[arg-type]
    assert err.value.code == WSE_ERROR.INVALID_CRA_GENERATOR
    with pytest.raises(WseError) as err:
        WseClient("ws://127.0.0.1:1").challenge(None)  # type: ignore[arg-type]
    assert err.value.code == WSE_ERROR.INVALID_CRA_HANDLER


async def test_ready_and_status_events(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    client = make_client(server)
    client.when.ready(log.hook("ready"))
    client.when.updated(log.hook("updated"))
    client.when.connected(log.hook("connected"))
    await client.connect("alice")
    assert await log.wait("ready") == [({"hey": "welcome data"},)]
    assert log.of("connected") == [()]
    await client.close()
    assert [s for (s,) in log.of("updated")] == [
        WSE_STATUS.CONNECTING,
        WSE_STATUS.READY,
        WSE_STATUS.OFFLINE,
    ]


async def test_connecting_twice_is_an_error(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server()
    client = make_client(server)
    await client.connect("alice")
    with pytest.raises(WseError) as err:
        await client.connect("alice")
    assert err.value.code == WSE_ERROR.CLIENT_ALREADY_CONNECTED


async def test_unreachable_server(make_client: ClientFactory) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(WseError) as err:
        await make_client(f"ws://127.0.0.1:{port}").connect("alice")
    assert err.value.code == WSE_ERROR.WS_CLIENT_ERROR


async def test_send_and_call_before_ready_fail_at_once(make_client: ClientFactory) -> None:
    client = make_client("ws://127.0.0.1:1")
    with pytest.raises(WseError) as err:
        client.send("x", 1)
    assert err.value.code == WSE_ERROR.CONNECTION_NOT_READY
    with pytest.raises(WseError) as err:
        await client.call("x", 1)
    assert err.value.code == WSE_ERROR.CONNECTION_NOT_READY


# ---- RPC: client calls server --------------------------------------------------------------


def _rpc_server_setup(server: WseServer, release: asyncio.Event) -> None:
    server.register("add", lambda conn, p: p["a"] + p["b"])

    @server.register("slow-add")
    async def slow_add(conn: Any, p: Any) -> Any:
        await asyncio.sleep(0)
        return p["a"] + p["b"]

    @server.register("throw-vanilla")
    def throw_vanilla(conn: Any, p: Any) -> Any:
        raise ValueError("boom")

    @server.register("throw-custom")
    def throw_custom(conn: Any, p: Any) -> Any:
        raise Exception({"test_field": "nope"})  # JavaScript's throw {...}

    @server.register("throw-wse")
    async def throw_wse(conn: Any, p: Any) -> Any:
        raise WseError("my.code", {"why": "because"})

    @server.register("never")
    async def never(conn: Any, p: Any) -> Any:
        await release.wait()

    server.register("returns-none", lambda conn, p: None)


async def test_rpc_from_client(make_server: ServerFactory, make_client: ClientFactory) -> None:
    server = await make_server()
    release = asyncio.Event()
    _rpc_server_setup(server, release)
    client = make_client(server, timeout=0.3)
    await client.connect("alice")
    assert await client.call("add", {"a": 5, "b": 3}) == 8
    assert await client.call("slow-add", {"a": 1, "b": 1}, timeout=10.0) == 2
    assert await client.call("returns-none") is None
    # fifty at once, each with a limit of its own: the client's 0.3 s is for "never" below,
    # and fifty answers on a loaded machine may take longer than that
    results = await asyncio.gather(
        *(client.call("add", {"a": i, "b": i}, timeout=10.0) for i in range(50))
    )
    assert results == [2 * i for i in range(50)]

    with pytest.raises(WseError) as err:
        await client.call("nope", 1)
    assert err.value.code == WSE_ERROR.RP_NOT_REGISTERED

    with pytest.raises(WseError) as err:
        await client.call("throw-vanilla", {"v": 1})
    assert err.value.code == WSE_ERROR.RP_EXECUTION_FAILED
    assert err.value.message == "RPC execution failed"  # nothing of the exception itself
    assert err.value.details == {
        "error_id": err.value.details["error_id"],
        "rpc": "throw-vanilla",
        "payload": {"v": 1},
    }
    assert re.fullmatch("[0-9a-f]{16}", err.value.details["error_id"])

    with pytest.raises(WseError) as err:
        await client.call("throw-custom", {"v": 2})
    assert err.value.code == WSE_ERROR.RP_EXECUTION_FAILED
    assert err.value.message == "RPC execution failed"
    assert err.value.details == {"test_field": "nope", "rpc": "throw-custom", "payload": {"v": 2}}

    with pytest.raises(WseError) as err:
        await client.call("throw-wse", 3)
    assert err.value.code == "my.code"
    assert err.value.details == {"why": "because", "rpc": "throw-wse", "payload": 3}

    with pytest.raises(WseError) as err:
        await client.call("never", None)
    assert err.value.code == WSE_ERROR.RP_TIMEOUT
    release.set()


async def test_rpc_stack_trace_only_in_debug(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server(debug=True)
    _rpc_server_setup(server, asyncio.Event())
    client = make_client(server)
    await client.connect("alice")
    with pytest.raises(WseError) as err:
        await client.call("throw-vanilla", 1)
    assert (err.value.message, err.value.details["origin"]["name"]) == ("boom", "ValueError")
    assert "Traceback" in err.value.details["origin"]["stack"]


async def test_rpc_disconnect_during_a_call(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    release = asyncio.Event()

    @server.register("hang")
    async def hang(conn: Any, p: Any) -> Any:
        log.hook("called")(conn)
        await release.wait()

    client = make_client(server)
    await client.connect("alice")
    call = asyncio.ensure_future(client.call("hang"))
    [(conn,)] = await log.wait("called")
    conn.drop("maintenance")
    with pytest.raises(WseError) as err:
        await call
    assert err.value.code == WSE_ERROR.RP_DISCONNECT
    assert err.value.details == {"code": 1000, "reason": "maintenance"}
    release.set()


async def test_register_twice_and_unregister(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server()
    server.register("x", lambda conn, p: 1)
    with pytest.raises(WseError) as err:
        server.register("x", lambda conn, p: 2)
    assert err.value.code == WSE_ERROR.RP_ALREADY_REGISTERED
    client = make_client(server)
    await client.connect("alice")
    assert await client.call("x") == 1
    server.unregister("x")
    with pytest.raises(WseError) as err:
        await client.call("x")
    assert err.value.code == WSE_ERROR.RP_NOT_REGISTERED


async def test_unserialisable_result_becomes_an_error(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server()
    server.register("bad", lambda conn, p: object())
    client = make_client(server)
    await client.connect("alice")
    with pytest.raises(WseError) as err:
        await client.call("bad")
    assert err.value.code == WSE_ERROR.RP_EXECUTION_FAILED
    assert "error_id" in err.value.details


# ---- RPC: server calls client --------------------------------------------------------------


async def test_server_to_client_message_and_rpc(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(timeout=0.3)
    server.when.connected(log.hook("connected"))
    client = make_client(server)
    client.channel.on("note", log.hook("note"))
    client.register("ping", lambda payload: "pong")

    @client.register("echo")
    async def echo(payload: Any) -> Any:
        await asyncio.sleep(0)
        return {"echoed": payload}

    @client.register("client-throws")
    def client_throws(payload: Any) -> Any:
        raise RuntimeError("client boom")

    @client.register("client-throws-wse")
    def client_throws_wse(payload: Any) -> Any:
        raise WseError("client.code", {"x": 1})

    @client.register("client-throws-custom")
    def client_throws_custom(payload: Any) -> Any:
        raise Exception({"field": "v"})

    release = asyncio.Event()

    @client.register("client-never")
    async def client_never(payload: Any) -> Any:
        await release.wait()

    await client.connect("alice")
    [(conn,)] = await log.wait("connected")
    conn.send("note", {"n": 1})
    assert await log.wait("note") == [({"n": 1},)]
    assert await conn.call("ping") == "pong"
    assert await conn.call("echo", {"q": 1}) == {"echoed": {"q": 1}}

    with pytest.raises(WseError) as err:
        await conn.call("missing-rp", 1)
    assert err.value.code == WSE_ERROR.RP_NOT_REGISTERED
    with pytest.raises(WseError) as err:
        await conn.call("client-throws", 1)
    assert (err.value.code, err.value.message) == (
        WSE_ERROR.RP_EXECUTION_FAILED,
        "RPC execution failed",
    )
    assert "origin" not in err.value.details  # the client keeps its internals to itself too
    with pytest.raises(WseError) as err:
        await conn.call("client-throws-wse", 2)
    assert (err.value.code, err.value.details) == (
        "client.code",
        {"x": 1, "rpc": "client-throws-wse", "payload": 2},
    )
    with pytest.raises(WseError) as err:
        await conn.call("client-throws-custom", 3)
    assert err.value.details == {"field": "v", "rpc": "client-throws-custom", "payload": 3}
    with pytest.raises(WseError) as err:
        await conn.call("client-never", 4)
    assert err.value.code == WSE_ERROR.RP_TIMEOUT
    with pytest.raises(WseError) as err:
        await conn.call("client-never", 4, timeout=0.05)
    assert err.value.code == WSE_ERROR.RP_TIMEOUT
    release.set()


async def test_bidirectional_rpc(make_server: ServerFactory, make_client: ClientFactory) -> None:
    server = await make_server()

    @server.register("ask-back")
    async def ask_back(conn: Any, p: Any) -> Any:
        doubled = await conn.call("double", p)
        return doubled + 1

    client = make_client(server)
    client.register("double", lambda p: p * 2)
    await client.connect("alice")
    assert await client.call("ask-back", 20) == 41


# ---- protocol violations -------------------------------------------------------------------


async def test_invalid_first_message_is_dropped_and_reported(
    make_server: ServerFactory, log: EventLog
) -> None:
    import websockets

    server = await make_server()
    server.when.error(log.hook("error"))
    async with websockets.connect(url_of(server), subprotocols=["wse-default-json"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps(["hello", 1]))
        with pytest.raises(websockets.ConnectionClosedOK):
            await ws.recv()
        assert (ws.close_code, ws.close_reason) == (1000, WSE_REASON.PROTOCOL_ERR)
    [(error, _conn)] = await log.wait("error")
    assert error.code == WSE_ERROR.PROTOCOL_VIOLATION


async def test_failing_channel_handler_reports_an_error(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    server.when.error(log.hook("error"))

    @server.channel.on("crash")
    async def crash(conn: Any, p: Any) -> None:
        raise KeyError("missing")

    client = make_client(server)
    await client.connect("alice")
    client.send("crash", 1)
    [(error, conn)] = await log.wait("error")
    assert error.code == WSE_ERROR.MESSAGE_PROCESSING_ERROR and conn.cid == "alice"
    assert client.status == WSE_STATUS.READY  # a failing handler does not drop the user


# ---- protocols -----------------------------------------------------------------------------


class ObjectJson:
    """A custom protocol: its own name and internal types, each message a JSON object."""

    name = "object-json"
    internal_types: ClassVar = {"hi": "~my:hi", "welcome": "~my:welcome", "response": "~my:ok"}

    def pack(self, type: str, payload: Any = None, stamp: str | None = None) -> str:
        return json.dumps({"t": type, "p": payload, "s": stamp})

    def unpack(self, data: bytes | str) -> tuple[str, Any, str | None]:
        assert isinstance(data, str)  # custom protocols get text as str, as in JavaScript
        message = json.loads(data)
        return message["t"], message["p"], message["s"]


@pytest.mark.parametrize("protocol", [MsgpackProtocol, ObjectJson], ids=["msgpack", "custom"])
async def test_other_protocols_end_to_end(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog, protocol: Any
) -> None:
    server = await make_server(protocol=protocol())
    server.register("add", lambda conn, p: p["a"] + p["b"])
    server.channel.on("hello", lambda conn, p: conn.send("back", p))
    client = make_client(server, protocol=protocol())
    client.channel.on("back", log.hook("back"))
    assert await client.connect("alice") == {"hey": "welcome data"}
    assert await client.call("add", {"a": 2, "b": 3}) == 5
    client.send("hello", {"bin": [1, 2, 3]})
    assert await log.wait("back") == [({"bin": [1, 2, 3]},)]


async def test_protocol_mismatch_is_refused(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(protocol=MsgpackProtocol())
    server.when.error(log.hook("error"))
    with pytest.raises(WseError) as err:
        await make_client(server).connect("alice")  # offers wse-default-json
    assert err.value.code == WSE_ERROR.WS_CLIENT_ERROR
    [(error, _)] = await log.wait("error")
    assert error.code == WSE_ERROR.PROTOCOL_VIOLATION


# ---- moving between servers ----------------------------------------------------------------


async def test_jump_between_servers(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    one, two = await make_server(), await make_server()
    one.when.left(log.hook("left_one"))
    two.when.joined(log.hook("joined_two"))
    client = make_client(one, reconnect=Reconnect())
    client.when.closed(log.hook("closed"))
    await client.connect("alice", {"device": "phone"})
    welcome = await client.jump(url_of(two))
    assert welcome == {"hey": "welcome data"}
    assert log.of("closed") == [(4000, "jump")]
    [(c, code, reason)] = await log.wait("left_one")
    assert (code, reason) == (4000, "jump")
    [(c, meta)] = await log.wait("joined_two")
    assert c.cid == "alice" and meta == {"device": "phone"}
    assert client.status == WSE_STATUS.READY


async def test_auto_reconnect_after_the_server_restarts(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    first = await make_server()
    port = first.port
    client = make_client(first, reconnect=Reconnect(delay=0.05, jitter=0.0))
    client.when.updated(log.hook("updated"))
    client.when.ready(log.hook("ready"))
    await client.connect("alice", {"device": "phone"})
    await first.close()
    await log.wait("updated", 3)  # CONNECTING, READY, RE_CONNECTING
    assert client.status == WSE_STATUS.RE_CONNECTING
    second = await make_server(port=port)  # the same address, a new process in real life
    second.when.joined(log.hook("joined"))
    [(c, meta)] = await log.wait("joined")
    assert c.cid == "alice" and meta == {"device": "phone"}
    await log.wait("ready", 2)
    assert client.status == WSE_STATUS.READY
    second.register("after", lambda conn, p: "restart")
    assert await client.call("after") == "restart"


async def test_no_reconnect_after_a_deliberate_close(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(conn_per_user=1)
    client = make_client(server, reconnect=Reconnect(delay=0.01, jitter=0.0))
    client.when.closed(log.hook("closed"))
    await client.connect("alice")
    server.drop_client("alice", "go away")
    assert await log.wait("closed") == [(1000, "go away")]
    assert client.status == WSE_STATUS.OFFLINE


# uvicorn (ASGI) answers a peer's Close itself, at once, before the application has read the
# messages that came before it: answers to them are then lost (docs/guides/mounting.md).
@pytest.mark.parametrize("transport", ["picows", "aiohttp"])
async def test_messages_in_flight_during_a_close_are_delivered(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    server.channel.on("x", lambda conn, p: conn.send("last", p))
    client = make_client(server)
    client.channel.on("last", log.hook("last"))
    await client.connect("alice")
    client.send("x", 1)
    await client.close()  # sent after x: the server answers x before it sees the close
    assert log.of("last") == [(1,)]


class TaggedJson(JsonProtocol):
    """A subclass of the built-in protocol that changes pack: its pack must be used."""

    name = "tagged-json"

    def pack(self, type: str, payload: Any = None, stamp: str | None = None) -> bytes:
        if type == "tick":
            payload = {"tagged": payload}
        return super().pack(type, payload, stamp)


async def test_protocol_subclass_with_its_own_pack(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(protocol=TaggedJson())
    client = make_client(server, protocol=TaggedJson())
    client.channel.on("tick", log.hook("tick"))
    await client.connect("alice")
    server.broadcast("tick", 1)
    assert await log.wait("tick") == [({"tagged": 1},)]
