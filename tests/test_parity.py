"""JavaScript WSE's behaviours that wse-fast ports (or decides against, where the reference is
buggy): channels as event emitters, error events, reconnect semantics, late subscribers,
application state, cids of any type, handshake options, and the small decisions (timeouts of
0, unregister, disconnected, joined's meta, jump). What a peer can observe runs on every
transport."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

import pytest
import websockets
from wse_fast import (
    WSE_ERROR,
    WSE_STATUS,
    AlreadyConnected,
    ConnectionFailed,
    ConnectionNotReady,
    IdentifyRequest,
    Reconnect,
    RpcError,
    RpcTimeout,
    WseClient,
    WseError,
    WseServer,
)
from wse_fast.cluster.broker import cid_from_text, cid_text

from tests.conftest import ClientFactory, EventLog, ServerFactory, url_of
from tests.hosts import TRANSPORTS


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def codes(errors: list[tuple[Any, ...]]) -> list[str]:
    return [args[0].code for args in errors]


# ---- channels are event emitters -----------------------------------------------------------


async def test_every_listener_of_a_type_runs_in_order_and_off_removes_one(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    order: list[str] = []
    first = server.channel.on("chat", lambda conn, p: order.append(f"first {p}"))
    server.channel.on("chat", lambda conn, p: order.append(f"second {p}"))

    @server.channel.on("chat")
    async def third(conn: Any, payload: Any) -> None:
        order.append(f"third {payload}")
        log.hook("third")(payload)

    client = make_client(server)
    heard: list[Any] = []
    client.channel.on("news", heard.append)
    client.channel.on("news", log.hook("news"))
    await client.connect("alice")
    client.send("chat", 1)
    await log.wait("third")
    assert order == ["first 1", "second 1", "third 1"]

    server.channel.off("chat", first)
    client.send("chat", 2)
    await log.wait("third", 2)
    assert order[3:] == ["second 2", "third 2"]

    server.send("alice", "news", "n")
    await log.wait("news")
    assert heard == ["n"]


async def test_a_once_listener_runs_for_one_message_and_the_rest_stay(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    server.channel.once("ping", log.hook("once"))
    server.channel.on("ping", log.hook("always"))
    server.when.ignored(log.hook("ignored"))
    client = make_client(server)
    await client.connect("alice")
    for n in range(3):
        client.send("ping", n)
    await log.wait("always", 3)
    assert [p for _, p in log.of("once")] == [0]
    server.channel.off("ping")  # every listener of the type
    client.send("ping", 4)
    [(_, type, payload)] = await log.wait("ignored")
    assert (type, payload) == ("ping", 4)


async def test_off_takes_back_a_once_listener_before_it_ran(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    never = log.hook("never")
    server.channel.once("ping", never)
    server.channel.off("ping", never)
    server.when.ignored(log.hook("ignored"))
    client = make_client(server)
    await client.connect("alice")
    client.send("ping", 1)
    await log.wait("ignored")
    assert log.of("never") == []
    assert server.channel.listeners("ping") == ()


# ---- error events --------------------------------------------------------------------------


async def test_not_ready_is_an_error_event_and_still_raises(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    server.when.error(log.hook("server_error"))
    server.when.disconnected(log.hook("disconnected"))
    client = make_client(server)
    client.when.error(log.hook("client_error"))
    with pytest.raises(ConnectionNotReady):
        client.send("hello")
    with pytest.raises(ConnectionNotReady):
        await client.call("anything")
    assert codes(log.of("client_error")) == [WSE_ERROR.CONNECTION_NOT_READY] * 2

    await client.connect("alice")
    conn = next(iter(server.clients["alice"].conns.values()))
    await client.close()
    await log.wait("disconnected")
    with pytest.raises(ConnectionNotReady):
        await conn.call("anything")
    with pytest.raises(ConnectionNotReady):
        await server.call("alice", "anything")
    errors = log.of("server_error")
    assert codes(errors) == [WSE_ERROR.CONNECTION_NOT_READY] * 2
    assert [args[1] for args in errors] == [conn, None]


async def test_a_socket_that_does_not_open_is_an_error_event(
    make_client: ClientFactory, log: EventLog
) -> None:
    client = make_client(f"ws://127.0.0.1:{free_port()}")
    client.when.error(log.hook("error"))
    with pytest.raises(ConnectionFailed) as raised:
        await client.connect("alice")
    [(err,)] = log.of("error")
    assert err is raised.value and err.code == WSE_ERROR.WS_CLIENT_ERROR


# ---- reconnect semantics -------------------------------------------------------------------

FAST: dict[str, Any] = {"delay": 0.01, "jitter": 0.01, "max_delay": 0.05}


async def test_keep_trying_connects_once_the_server_is_up_and_reports_each_attempt(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    port = free_port()
    client = make_client(f"ws://127.0.0.1:{port}", reconnect=Reconnect(keep_trying=True, **FAST))
    client.when.closed(log.hook("closed"))
    client.when.updated(log.hook("updated"))
    client.when.error(log.hook("error"))
    connecting = asyncio.ensure_future(client.connect("alice"))
    await log.wait("closed", 2)  # two attempts failed, and connect still waits
    assert not connecting.done()
    assert log.of("closed")[:2] == [(1006, ""), (1006, "")]
    statuses = [s for (s,) in log.of("updated")]
    assert statuses[:5] == ["CONNECTING", "OFFLINE", "RE_CONNECTING", "OFFLINE", "RE_CONNECTING"]
    assert set(codes(log.of("error"))) == {WSE_ERROR.WS_CLIENT_ERROR}

    server = await make_server(port=port)
    client.url = url_of(server)  # the same port; a mounted server's path
    assert await connecting == {"hey": "welcome data"}
    assert client.status == WSE_STATUS.READY
    assert list(server.clients) == ["alice"]


async def test_without_keep_trying_the_first_failure_is_raised(
    make_client: ClientFactory, log: EventLog
) -> None:
    client = make_client(f"ws://127.0.0.1:{free_port()}", reconnect=Reconnect(**FAST))
    client.when.closed(log.hook("closed"))
    with pytest.raises(ConnectionFailed):
        await client.connect("alice")
    assert client.status == WSE_STATUS.OFFLINE and log.of("closed") == []


async def test_keep_trying_still_raises_a_refusal(make_server: ServerFactory) -> None:
    server = await make_server()
    client = WseClient(url_of(server), reconnect=Reconnect(keep_trying=True, **FAST))
    with pytest.raises(WseError) as raised:
        await client.connect("bad-user")
    assert raised.value.code == WSE_ERROR.NOT_AUTHORIZED
    assert client.status == WSE_STATUS.OFFLINE


async def test_close_stops_a_connect_that_keeps_trying(
    make_client: ClientFactory, log: EventLog
) -> None:
    client = make_client(
        f"ws://127.0.0.1:{free_port()}", reconnect=Reconnect(keep_trying=True, **FAST)
    )
    client.when.closed(log.hook("closed"))
    connecting = asyncio.ensure_future(client.connect("alice"))
    await log.wait("closed")
    await client.close()
    with pytest.raises(ConnectionFailed):
        await connecting
    assert client.status == WSE_STATUS.OFFLINE


async def test_connect_while_re_connecting_opens_no_second_socket(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    server.when.connected(log.hook("connected"))
    client = make_client(server, reconnect=Reconnect(delay=0.3, jitter=0))
    client.when.updated(log.hook("updated"))
    await client.connect("alice")
    await log.wait("connected")
    conn = next(iter(server.clients["alice"].conns.values()))
    conn.drop("restart", 1012)
    await log.wait("updated", 3)  # CONNECTING, READY, RE_CONNECTING
    assert client.status == WSE_STATUS.RE_CONNECTING
    with pytest.raises(AlreadyConnected):
        await client.connect("alice")
    await log.wait("connected", 2)
    await log.wait("updated", 4)
    assert client.status == WSE_STATUS.READY
    assert len(server.connections) == 1 and len(log.of("connected")) == 2


async def test_keep_trying_reports_a_lost_connection_as_javascript_does(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    server.when.connected(log.hook("connected"))
    client = make_client(server, reconnect=Reconnect(keep_trying=True, **FAST))
    client.when.updated(log.hook("updated"))
    await client.connect("alice")
    server.drop_client("alice", "restart")  # 1000 with a reason: final
    await log.wait("updated", 3)
    assert [s for (s,) in log.of("updated")] == ["CONNECTING", "READY", "OFFLINE"]
    await client.connect("alice")
    await log.wait("connected", 2)
    conn = next(iter(server.clients["alice"].conns.values()))
    conn.drop("restart", 1012)
    await log.wait("updated", 8)
    statuses = [s for (s,) in log.of("updated")][3:]
    assert statuses == ["CONNECTING", "READY", "OFFLINE", "RE_CONNECTING", "READY"]


async def test_the_reconnect_close_codes_are_the_clients_own(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    server.when.connected(log.hook("connected"))
    eager = make_client(server, reconnect=Reconnect(codes={1000}, **FAST))
    default = make_client(server, reconnect=Reconnect(**FAST))
    default.when.updated(log.hook("default_updated"))
    await eager.connect("eager")
    await default.connect("default")
    await log.wait("connected", 2)
    server.drop_client("eager", "maintenance")  # 1000: final for the reference's codes
    server.drop_client("default", "maintenance")
    await log.wait("connected", 3)  # eager is back: its close was handled already
    await eager.when.wait("updated", lambda status: status == WSE_STATUS.READY)
    assert "eager" in server.clients
    await log.wait("default_updated", 3)
    assert default.status == WSE_STATUS.OFFLINE


# ---- late subscribers, once and wait -------------------------------------------------------


async def test_ready_and_updated_replay_their_last_value_to_late_handlers(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    client = make_client(server)
    await client.connect("alice")
    client.when.ready(log.hook("ready"))
    client.when.updated(log.hook("updated"))
    client.when.closed(log.hook("closed"))  # not memorable: nothing yet
    assert log.of("ready") == [({"hey": "welcome data"},)]
    assert log.of("updated") == [(WSE_STATUS.READY,)]
    assert log.of("closed") == []
    assert await client.when.wait("ready") == ({"hey": "welcome data"},)
    await client.close()
    late: list[Any] = []
    client.when.ready(late.append)  # the welcome of a closed connection is not replayed
    assert late == []
    await client.connect("alice")
    assert late == [{"hey": "welcome data"}]


async def test_once_handlers_and_waiting_for_events(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    server.when.once.joined(log.hook("joined_once"))
    joined = asyncio.ensure_future(server.when.wait("joined"))
    client = make_client(server)
    client.when.once.closed(log.hook("closed_once"))
    ready = asyncio.ensure_future(
        client.when.wait("updated", lambda status: status == WSE_STATUS.READY)
    )
    await client.connect("alice")
    assert await ready == (WSE_STATUS.READY,)
    user, meta = await joined
    assert user.cid == "alice" and meta == {}
    await client.close()
    await client.connect("bob")
    await client.close()
    assert len(log.of("joined_once")) == 1 and len(log.of("closed_once")) == 1


# ---- the application's own state -----------------------------------------------------------


async def test_connections_and_users_carry_the_applications_state(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(conn_per_user=2)

    @server.when.connected
    def count(conn: Any) -> None:
        conn.state["seen"] = 0
        user = conn.client.state
        user["devices"] = user.get("devices", 0) + 1

    @server.channel.on("tick")
    def tick(conn: Any, payload: Any) -> None:
        conn.state["seen"] += 1
        conn.send("tock", {"seen": conn.state["seen"], "devices": conn.client.state["devices"]})

    phone, laptop = make_client(server), make_client(server)
    laptop.channel.on("tock", log.hook("tock"))
    await phone.connect("alice")
    await laptop.connect("alice")
    laptop.send("tick")
    laptop.send("tick")
    assert [p for (p,) in await log.wait("tock", 2)] == [
        {"seen": 1, "devices": 2},
        {"seen": 2, "devices": 2},
    ]


# ---- cids of any type ----------------------------------------------------------------------


def accept_number(req: IdentifyRequest) -> None:
    req.accept(req.identity["id"], "hi")


async def test_a_number_cid_stays_a_number(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(accept_number)
    server.when.joined(log.hook("joined"))
    client = make_client(server)
    client.channel.on("note", log.hook("note"))
    client.register("where", lambda payload: "here")
    await client.connect({"id": 1})
    [(user, _)] = await log.wait("joined")
    assert user.cid == 1 and server.clients[1] is user
    assert server.send(1, "note", "for one")
    assert not server.send("1", "note", "for the string")  # another user, as in a JS Map
    assert await log.wait("note") == [("for one",)]
    assert await server.online(1) == 1 and await server.online("1") == 0
    assert await server.call(1, "where") == "here"
    server.drop_client(1)
    assert (await client.when.wait("closed"))[1] == "wse.by-server"


async def test_an_unhashable_cid_refuses_the_connection(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(accept_number)
    server.when.error(log.hook("error"))
    with pytest.raises(WseError) as raised:
        await make_client(server).connect({"id": ["a", "list"]})
    assert raised.value.code == WSE_ERROR.NOT_AUTHORIZED
    [(err, _)] = await log.wait("error")
    assert "TypeError" in err.details["error"]


def test_cids_cross_the_cluster_as_distinct_text() -> None:
    cids: list[Any] = ["alice", "1", 1, 1.5, "\x00odd", "", -7, 2**80]
    texts = [cid_text(cid) for cid in cids]
    assert len(set(texts)) == len(cids)
    assert cid_text("alice") == "alice"  # the keys of string cids are what they were
    assert [cid_from_text(t) for t in texts] == cids
    assert cid_text(1.0) == cid_text(1)  # one user, as in a dict (and JavaScript's Map)
    for odd in (("a", "tuple"), True):  # True would be the user 1 in a dict, not in JS
        with pytest.raises(TypeError):
            cid_text(odd)


# ---- handshake options ---------------------------------------------------------------------


async def test_extra_headers_and_origin_reach_the_server(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    seen: list[dict[str, str]] = []

    def on_upgrade(request: Any) -> None:
        seen.append({k.lower(): request.headers.get(k) for k in ("Authorization", "Cookie")})

    server = await make_server(origins={"https://app.example"}, on_upgrade=on_upgrade)
    client = make_client(
        server,
        headers={"Authorization": "Bearer t0k", "Cookie": "session=s1"},
        origin="https://app.example",
    )
    assert await client.connect("alice") == {"hey": "welcome data"}
    assert seen == [{"authorization": "Bearer t0k", "cookie": "session=s1"}]
    with pytest.raises(ConnectionFailed):
        await make_client(server, origin="https://evil.example").connect("mallory")


def test_the_handshakes_own_headers_cannot_be_replaced() -> None:
    with pytest.raises(ValueError, match="Sec-WebSocket-Key"):
        WseClient("ws://127.0.0.1:1", headers=[("Sec-WebSocket-Key", "x")])


# ---- decisions -----------------------------------------------------------------------------


async def test_a_timeout_of_0_is_no_deadline_and_none_is_the_default(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    release = asyncio.Event()

    async def hang(*args: Any) -> str:
        await release.wait()
        return "done"

    server = await make_server(timeout=0)
    server.register("hang", hang)
    client = make_client(server, timeout=0.05)
    client.register("hang", hang)
    await client.connect("alice")
    unbounded = asyncio.ensure_future(client.call("hang", timeout=0))
    server_side = asyncio.ensure_future(server.call("alice", "hang"))  # the server's 0
    with pytest.raises(RpcTimeout):
        await client.call("hang")  # None: the client's 0.05
    with pytest.raises(RpcTimeout):
        await server.call("alice", "hang", timeout=0.05)
    assert not unbounded.done() and not server_side.done()  # both outlived 0.05 s
    release.set()
    assert await unbounded == "done" and await server_side == "done"


def test_unregistering_an_unknown_procedure_raises_as_in_javascript() -> None:
    server = WseServer(lambda req: None)
    client = WseClient("ws://127.0.0.1:1")
    for peer in (server, client):
        with pytest.raises(WseError) as raised:
            peer.unregister("never")
        assert raised.value.code == WSE_ERROR.RP_NOT_REGISTERED
        assert raised.value.details == {"rpc": "never"}


async def test_disconnected_is_only_for_accepted_connections(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    server.when.disconnected(log.hook("disconnected"))
    with pytest.raises(WseError):
        await make_client(server).connect("bad-user")
    client = make_client(server)
    await client.connect("alice")
    await client.close()
    [(conn, code, reason)] = await log.wait("disconnected")
    assert conn.cid == "alice" and (code, reason) == (1000, "wse.by-client")


async def test_joined_gets_the_hi_meta_under_challenge_response(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    def identify(req: IdentifyRequest) -> None:
        assert req.challenge is not None
        if req.challenge.response == req.challenge.quest * 2:
            req.accept(req.identity)
        else:
            req.refuse()

    server = await make_server(identify)
    server.use_challenge(lambda identity, meta, quest, refuse: quest(21))
    server.when.joined(log.hook("joined"))
    client = make_client(server)
    client.challenge(lambda quest, solve: solve({"meta": {"not": "this"}} and quest * 2))
    await client.connect("alice", {"device": "phone"})
    [(user, meta)] = await log.wait("joined")
    assert user.cid == "alice" and meta == {"device": "phone"}


async def test_jump_connects_with_the_identity_it_is_given(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    one, two = await make_server(), await make_server()
    two.when.joined(log.hook("joined_two"))
    client = make_client(one)
    await client.connect("alice", {"device": "phone"})
    assert await client.jump(url_of(two), "bob") == {"hey": "welcome data"}
    [(user, meta)] = await log.wait("joined_two")
    assert user.cid == "bob" and meta == {"device": "phone"}
    assert client.identity == "bob" and client.status == WSE_STATUS.READY


async def test_a_failing_procedure_is_an_error_event_where_it_failed(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    server.when.error(log.hook("server_error"))

    @server.register("boom")
    def boom(conn: Any, payload: Any) -> None:
        raise ValueError("broken")

    client = make_client(server)
    client.when.error(log.hook("client_error"))

    @client.register("fragile")
    async def fragile(payload: Any) -> None:
        raise WseError("app.refused", {"why": payload})

    await client.connect("alice")
    with pytest.raises(RpcError):
        await client.call("boom", {"x": 1})
    [(err, conn)] = await log.wait("server_error")
    assert err.code == WSE_ERROR.RP_EXECUTION_FAILED
    assert err.details["rpc"] == "boom" and err.details["payload"] == {"x": 1}
    assert err.details["cid"] == "alice" and conn.cid == "alice"
    assert err.details["error"]["code"] == WSE_ERROR.RP_EXECUTION_FAILED
    assert "error_id" in err.details["error"]["details"]  # the log's key to the exception
    # the exception itself, with its traceback, for an error reporter (JavaScript: details.err)
    assert isinstance(err.__cause__, ValueError) and str(err.__cause__) == "broken"
    assert err.__cause__.__traceback__ is not None
    assert log.of("client_error") == []  # the caller learns of it from the call alone

    with pytest.raises(RpcError) as raised:
        await server.call("alice", "fragile", 7)
    assert raised.value.code == "app.refused"
    [(err,)] = await log.wait("client_error")
    assert err.code == WSE_ERROR.RP_EXECUTION_FAILED
    assert err.details["rpc"] == "fragile" and err.details["error"]["code"] == "app.refused"
    assert isinstance(err.__cause__, WseError) and err.__cause__.code == "app.refused"
    assert len(log.of("server_error")) == 1


def test_once_removes_itself_not_a_plain_handler_of_the_same_function() -> None:
    from wse_fast.events import Channel, ClientEvents

    calls: list[Any] = []

    def f(*args: Any) -> None:
        calls.append(args)

    channel: Channel[Any] = Channel()
    channel.on("t", f)
    channel.once("t", f)
    assert len(channel.listeners("t")) == 2
    channel.listeners("t")[1]("x")  # the once listener runs: it goes, the plain one stays
    assert list(channel.listeners("t")) == [f]
    events = ClientEvents()
    events.updated(f)
    events.once.updated(f)
    events.emit("updated", "a")
    events.emit("updated", "b")
    assert calls == [("x",), ("a",), ("a",), ("b",)]


async def test_an_error_handler_that_sends_while_not_ready_does_not_report_to_itself() -> None:
    client = WseClient("ws://127.0.0.1:9", reconnect=None)
    seen: list[Any] = []

    @client.when.error
    def on_error(err: WseError) -> None:
        seen.append(err.code)
        with contextlib.suppress(ConnectionNotReady):
            client.send("log", "from the handler")  # not ready either: raises, no new event

    with pytest.raises(ConnectionNotReady):
        client.send("chat", 1)
    assert seen == [WSE_ERROR.CONNECTION_NOT_READY]


# ---- throw {code, details} -----------------------------------------------------------------

#: What JavaScript WSE 4.12.3 answers (``RpcManager.normalizeError`` in src/rpc-man.js, run
#: under Node.js on each object) when procedure ``rp`` called with ``{"v": 1}`` throws it.
JS_THROWN_OBJECTS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (
        {"code": "app.x", "details": {"a": 1}},
        {"code": "app.x", "details": {"a": 1, "rpc": "rp", "payload": {"v": 1}}},
    ),
    (  # empty details are still an object: true in JavaScript
        {"code": "app.x", "details": {}},
        {"code": "app.x", "details": {"rpc": "rp", "payload": {"v": 1}}},
    ),
    (  # the thrower's own rpc and payload stay
        {"code": "app.x", "details": {"rpc": "mine", "payload": "p"}},
        {"code": "app.x", "details": {"rpc": "mine", "payload": "p"}},
    ),
    (  # every other field goes too
        {"code": "app.x", "details": {"a": 1}, "message": "hello"},
        {
            "code": "app.x",
            "details": {"a": 1, "rpc": "rp", "payload": {"v": 1}},
            "message": "hello",
        },
    ),
    ({"code": "app.x", "details": [1, 2]}, {"code": "app.x", "details": [1, 2]}),
    (  # no details: a custom error, its fields in rp.failed's details
        {"code": "app.x"},
        {
            "code": WSE_ERROR.RP_EXECUTION_FAILED,
            "message": "RPC execution failed",
            "details": {"code": "app.x", "rpc": "rp", "payload": {"v": 1}},
        },
    ),
    (  # an empty code is false
        {"code": "", "details": {"a": 1}},
        {
            "code": WSE_ERROR.RP_EXECUTION_FAILED,
            "message": "RPC execution failed",
            "details": {"code": "", "details": {"a": 1}, "rpc": "rp", "payload": {"v": 1}},
        },
    ),
]


async def test_raising_a_dict_with_code_and_details_answers_as_javascripts_throw(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server()
    thrown: list[dict[str, Any]] = []

    @server.register("rp")
    def rp(conn: Any, payload: Any) -> None:
        raise Exception(thrown[-1])

    async with websockets.connect(url_of(server), subprotocols=["wse-default-json"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps(["~wse:hi", {"identity": "alice", "meta": {}}, None]))
        assert json.loads(await ws.recv())[0] == "~wse:welcome"
        for n, (error, answered) in enumerate(JS_THROWN_OBJECTS):
            thrown.append(error)
            await ws.send(json.dumps(["rp", {"v": 1}, f"STAMP{n:05}"]))
            assert json.loads(await ws.recv()) == ["~wse:response-err", answered, f"STAMP{n:05}"]

    # and a wse-fast caller gets the thrower's code, as a JavaScript caller does
    thrown.append({"code": "app.denied", "details": {"why": "quota"}})
    client = make_client(server)
    await client.connect("bob")
    with pytest.raises(RpcError) as raised:
        await client.call("rp", {"v": 1})
    assert raised.value.code == "app.denied"
    assert raised.value.details == {"why": "quota", "rpc": "rp", "payload": {"v": 1}}
