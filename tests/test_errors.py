"""The exception classes under WseError, each raised where it happens on real connections.

Every class keeps the JavaScript code in ``.code`` (what travels on the wire is unchanged);
a close before the welcome never turns its close reason into an error code.
"""

from __future__ import annotations

import asyncio
import json
import pickle
from typing import Any

import pytest
import websockets
from wse_fast import (
    WSE_ERROR,
    WSE_REASON,
    WSE_STATUS,
    AlreadyConnected,
    ConnectionFailed,
    ConnectionNotReady,
    IdentifyRequest,
    JsonProtocol,
    MsgpackProtocol,
    NotAuthorized,
    ProtocolViolation,
    Reconnect,
    RpcDisconnected,
    RpcError,
    RpcTimeout,
    WseError,
)

from tests.conftest import ClientFactory, EventLog, ServerFactory, accept_identity, url_of

FIXED = {
    NotAuthorized: WSE_ERROR.NOT_AUTHORIZED,
    ConnectionFailed: WSE_ERROR.WS_CLIENT_ERROR,
    AlreadyConnected: WSE_ERROR.CLIENT_ALREADY_CONNECTED,
    ConnectionNotReady: WSE_ERROR.CONNECTION_NOT_READY,
    RpcTimeout: WSE_ERROR.RP_TIMEOUT,
    RpcDisconnected: WSE_ERROR.RP_DISCONNECT,
    ProtocolViolation: WSE_ERROR.PROTOCOL_VIOLATION,
}


# ---- the classes ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", sorted(FIXED, key=lambda c: c.__name__))
def test_each_class_carries_its_javascript_code_and_is_a_wse_error(cls: type[WseError]) -> None:
    err = cls({"x": 1}, "text")  # type: ignore[call-arg]
    assert (err.code, err.details, err.message) == (FIXED[cls], {"x": 1}, "text")
    assert isinstance(err, WseError)
    chosen = WseError.from_code(FIXED[cls], {"x": 1})
    assert type(chosen) is cls and chosen.code == FIXED[cls]


def test_remote_failure_codes_map_to_rpc_error_and_others_stay_wse_error() -> None:
    for code in (WSE_ERROR.RP_EXECUTION_FAILED, WSE_ERROR.RP_NOT_REGISTERED):
        assert type(WseError.from_code(code)) is RpcError
    assert type(WseError.from_code("app.own-code", {"a": 1})) is WseError
    assert type(WseError.from_code(WSE_ERROR.RP_ALREADY_REGISTERED)) is WseError
    plain = WseError("app.code", {"a": 1}, "m")  # the base still takes a code
    assert (plain.code, plain.details, plain.message) == ("app.code", {"a": 1}, "m")


def test_errors_survive_pickling_with_their_class() -> None:
    for err in (NotAuthorized({"code": 1000}), RpcError("app.x", {"a": 1}, "m")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err)
        assert (back.code, back.details, back.message) == (err.code, err.details, err.message)


# ---- connecting ----------------------------------------------------------------------------


async def test_a_refused_connect_raises_not_authorized(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server()
    with pytest.raises(NotAuthorized) as err:
        await make_client(server).connect("bad-secret")
    assert err.value.code == WSE_ERROR.NOT_AUTHORIZED
    assert err.value.details == {"code": 1000, "reason": WSE_REASON.NOT_AUTHORIZED}


async def test_a_close_before_the_welcome_is_a_failed_connection_whatever_its_reason(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    # The server closes with the reason of a protocol error: the reason is in the details,
    # the code is the client's own (it used to be the reason itself).
    server = await make_server(lambda req: req.conn.drop(WSE_REASON.PROTOCOL_ERR))
    with pytest.raises(ConnectionFailed) as err:
        await make_client(server).connect("alice")
    assert err.value.code == WSE_ERROR.WS_CLIENT_ERROR
    assert err.value.details == {"code": 1000, "reason": WSE_REASON.PROTOCOL_ERR}


async def test_a_server_that_is_not_there_is_a_failed_connection(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await make_server()
    url = url_of(server)
    await server.close()
    client = make_client(url)
    with pytest.raises(ConnectionFailed) as err:
        await client.connect("alice")
    assert "error" in err.value.details
    assert client.status == WSE_STATUS.OFFLINE


async def test_a_subprotocol_mismatch_is_a_failed_connection_and_a_protocol_violation(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(protocol=MsgpackProtocol())
    server.when.error(log.hook("error"))
    with pytest.raises(ConnectionFailed):
        await make_client(server, protocol=JsonProtocol()).connect("alice")
    [(error, _)] = await log.wait("error")
    assert type(error) is ProtocolViolation and error.code == WSE_ERROR.PROTOCOL_VIOLATION


async def test_connecting_twice_raises_already_connected(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    client = make_client(await make_server())
    await client.connect("alice")
    with pytest.raises(AlreadyConnected) as err:
        await client.connect("alice")
    assert err.value.code == WSE_ERROR.CLIENT_ALREADY_CONNECTED


async def test_sending_or_calling_before_the_welcome_raises_connection_not_ready(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    server.when.connected(log.hook("connected"))
    client = make_client(server)
    with pytest.raises(ConnectionNotReady):
        client.send("chat", 1)
    with pytest.raises(ConnectionNotReady) as err:
        await client.call("add", 1)
    assert err.value.code == WSE_ERROR.CONNECTION_NOT_READY
    await client.connect("alice")
    [(conn,)] = await log.wait("connected")
    await client.close()
    with pytest.raises(ConnectionNotReady) as err:  # the server calling a device that left
        await conn.call("ping")
    assert err.value.details == {"rpc": "ping"}


# ---- calls ---------------------------------------------------------------------------------


async def test_a_call_without_an_answer_raises_rpc_timeout_on_both_sides(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    release = asyncio.Event()

    @server.register("hang")
    async def hang(conn: Any, payload: Any) -> None:
        await release.wait()

    server.when.connected(log.hook("connected"))
    client = make_client(server)

    @client.register("hang")
    async def client_hang(payload: Any) -> None:
        await release.wait()

    await client.connect("alice")
    with pytest.raises(RpcTimeout) as err:
        await client.call("hang", timeout=0.05)
    assert (err.value.code, err.value.details) == (WSE_ERROR.RP_TIMEOUT, {"timeout": 0.05})
    [(conn,)] = await log.wait("connected")
    with pytest.raises(RpcTimeout):
        await conn.call("hang", timeout=0.05)
    release.set()


async def test_remote_failures_raise_rpc_error_with_the_code_sent(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()

    @server.register("crash")
    def crash(conn: Any, payload: Any) -> None:
        raise RuntimeError("broken")

    @server.register("deny")
    def deny(conn: Any, payload: Any) -> None:
        raise NotAuthorized({"why": "not yours"})  # a procedure's own refusal

    @server.register("app")
    def app(conn: Any, payload: Any) -> None:
        raise WseError("app.out-of-stock", {"item": payload})

    @server.register("ask-client")
    async def ask_client(conn: Any, payload: Any) -> Any:
        return await conn.call("slow", timeout=0.05)  # times out on the server

    client = make_client(server)
    release = asyncio.Event()

    @client.register("slow")
    async def slow(payload: Any) -> None:
        await release.wait()

    await client.connect("alice")
    seen: dict[str, WseError] = {}
    for name in ("crash", "deny", "app", "ask-client", "missing"):
        with pytest.raises(RpcError) as err:
            await client.call(name, 7)
        seen[name] = err.value
    release.set()
    assert {name: err.code for name, err in seen.items()} == {
        "crash": WSE_ERROR.RP_EXECUTION_FAILED,
        "deny": WSE_ERROR.NOT_AUTHORIZED,
        "app": "app.out-of-stock",
        "ask-client": WSE_ERROR.RP_TIMEOUT,
        "missing": WSE_ERROR.RP_NOT_REGISTERED,
    }
    assert seen["app"].details == {"item": 7, "rpc": "app", "payload": 7}
    # what the remote procedure met is not this side's refusal or timeout
    assert not isinstance(seen["deny"], NotAuthorized)
    assert not isinstance(seen["ask-client"], RpcTimeout)


async def test_a_client_procedure_failing_raises_rpc_error_on_the_server(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    server.when.connected(log.hook("connected"))
    client = make_client(server)
    client.register("fail", lambda payload: 1 / 0)
    await client.connect("alice")
    [(conn,)] = await log.wait("connected")
    with pytest.raises(RpcError) as err:
        await conn.call("fail")
    assert err.value.code == WSE_ERROR.RP_EXECUTION_FAILED


async def test_a_disconnect_during_a_call_raises_rpc_disconnected_on_both_sides(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    release = asyncio.Event()

    @server.register("hang")
    async def hang(conn: Any, payload: Any) -> None:
        log.hook("called")(conn)
        await release.wait()

    client = make_client(server)

    @client.register("hang")
    async def client_hang(payload: Any) -> None:
        log.hook("client-called")()
        await release.wait()

    await client.connect("alice")
    call = asyncio.ensure_future(client.call("hang"))
    [(conn,)] = await log.wait("called")
    server_call = asyncio.ensure_future(conn.call("hang"))
    await log.wait("client-called")
    conn.drop("maintenance")
    with pytest.raises(RpcDisconnected) as err:
        await call
    assert (err.value.code, err.value.details) == (
        WSE_ERROR.RP_DISCONNECT,
        {"code": 1000, "reason": "maintenance"},
    )
    with pytest.raises(RpcDisconnected):
        await server_call
    release.set()


async def test_the_wire_carries_the_same_codes_as_before(make_server: ServerFactory) -> None:
    # A raw WebSocket peer reads the error payloads: a subclass raised by a procedure sends
    # the code its base always sent.
    server = await make_server()

    @server.register("refuse")
    def refuse(conn: Any, payload: Any) -> None:
        raise NotAuthorized()

    @server.register("app")
    def app(conn: Any, payload: Any) -> None:
        raise RpcError("app.code", {"n": 1})

    async with websockets.connect(url_of(server), subprotocols=["wse-default-json"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps(["~wse:hi", {"identity": "alice", "meta": {}}]))
        assert json.loads(await ws.recv())[0] == "~wse:welcome"
        errors = {}
        for name in ("refuse", "app", "missing"):
            await ws.send(json.dumps([name, None, f"stamp-{name}"]))
            type, error, stamp = json.loads(await ws.recv())
            assert (type, stamp) == ("~wse:response-err", f"stamp-{name}")
            errors[name] = error["code"]
    assert errors == {
        "refuse": "wse.not-authorized",
        "app": "app.code",
        "missing": "wse.server.rp.not-registered",
    }


# ---- reconnecting --------------------------------------------------------------------------


async def test_a_reconnect_the_server_refuses_stops_with_not_authorized(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    admitted = {"alice"}

    def identify(req: IdentifyRequest) -> None:
        if req.identity in admitted:
            accept_identity(req)
        else:
            req.refuse()

    server = await make_server(identify)
    server.when.connected(log.hook("connected"))
    client = make_client(server, reconnect=Reconnect(delay=0.01, jitter=0.0))
    client.when.error(log.hook("error"))
    client.when.updated(log.hook("updated"))
    await client.connect("alice")
    [(conn,)] = await log.wait("connected")
    admitted.clear()
    conn.drop(WSE_REASON.BY_SERVER, 1012)  # a restart: the client comes back, and is refused
    [(err,)] = await log.wait("error")
    assert type(err) is NotAuthorized
    assert err.details == {"code": 1000, "reason": WSE_REASON.NOT_AUTHORIZED}
    assert client.status == WSE_STATUS.OFFLINE
    assert [s for (s,) in log.of("updated")][-2:] == [WSE_STATUS.RE_CONNECTING, WSE_STATUS.OFFLINE]


async def test_a_reconnect_closed_with_a_final_reason_stops_and_one_with_a_restart_retries(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    answers = ["accept", "restart", "protocol-error"]

    def identify(req: IdentifyRequest) -> None:
        answer = answers.pop(0)
        log.hook("identify")(answer)
        if answer == "accept":
            accept_identity(req)
        elif answer == "restart":
            req.conn.drop(WSE_REASON.BY_SERVER, 1012)
        else:
            req.conn.drop(WSE_REASON.PROTOCOL_ERR)

    server = await make_server(identify)
    server.when.connected(log.hook("connected"))
    client = make_client(server, reconnect=Reconnect(delay=0.01, jitter=0.0))
    client.when.error(log.hook("error"))
    await client.connect("alice")
    [(conn,)] = await log.wait("connected")
    conn.drop(WSE_REASON.BY_SERVER, 1012)
    [(err,)] = await log.wait("error")
    assert [a for (a,) in log.of("identify")] == ["accept", "restart", "protocol-error"]
    assert type(err) is ConnectionFailed
    assert err.details == {"code": 1000, "reason": WSE_REASON.PROTOCOL_ERR}
    assert client.status == WSE_STATUS.OFFLINE
