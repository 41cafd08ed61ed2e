"""Checked by mypy --strict in tests/test_typing.py, never run.

Every registration form keeps the registered function's own type (``assert_type`` fails on a
decorator that returns ``Any`` or a wider callable), and a handler whose signature does not
fit the registry is an error. A line ending in ``# E: <code>`` must have exactly that mypy
error; every other line must have none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, assert_type

import wse_fast
from wse_fast import (
    Channel,
    Cid,
    ClientEvents,
    ClusterOptions,
    Compression,
    Connection,
    HandshakeRequest,
    Limits,
    NotAuthorized,
    Reconnect,
    RpcError,
    ServerEvents,
    ServerLimits,
    User,
    WseClient,
    WseError,
    WseServer,
)

server = WseServer(lambda req: req.accept(req.identity))
client = WseClient("ws://127.0.0.1:1")


# ---- server.channel.on and server.register: fn(conn, payload) ------------------------------


@server.channel.on("chat")
def on_chat(conn: Connection, payload: dict[str, str], /) -> None: ...


assert_type(on_chat, Callable[[Connection, dict[str, str]], None])


def on_typing(conn: Connection, payload: bool, /) -> int:
    return 0


assert_type(server.channel.on("typing", on_typing), Callable[[Connection, bool], int])


@server.register("add")
async def add(conn: Connection, payload: list[int], /) -> int:
    return sum(payload)


assert_type(add, Callable[[Connection, list[int]], Coroutine[Any, Any, int]])


def ping(conn: Connection, payload: None, /) -> str:
    return "pong"


assert_type(server.register("ping", ping), Callable[[Connection, None], str])
server.channel.on("anything", lambda conn, payload: conn.send("echo", payload))


# ---- client.channel.on and client.register: fn(payload) ------------------------------------


@client.channel.on("news")
def on_news(payload: str, /) -> None: ...


assert_type(on_news, Callable[[str], None])


def on_score(payload: float, /) -> float:
    return payload


assert_type(client.channel.on("score", on_score), Callable[[float], float])


@client.register("status")
async def status(payload: Any, /) -> dict[str, int]:
    return {}


assert_type(status, Callable[[Any], Coroutine[Any, Any, dict[str, int]]])
assert_type(client.register("echo", on_score), Callable[[float], float])


# ---- server.when ---------------------------------------------------------------------------


@server.when.joined
def joined(user: User, meta: dict[str, Any], /) -> None: ...


@server.when.left
def left(user: User, code: int, reason: str, /) -> None: ...


@server.when.connected
async def connected(conn: Connection, /) -> None: ...


@server.when.disconnected
def disconnected(conn: Connection, code: int, reason: str, /) -> None: ...


@server.when.ignored
def server_ignored(conn: Connection, type: str, payload: Any, /) -> None: ...


@server.when.error
def server_error(err: Exception, conn: Connection | None, /) -> None: ...  # a wider type is fine


assert_type(joined, Callable[[User, dict[str, Any]], None])
assert_type(left, Callable[[User, int, str], None])
assert_type(connected, Callable[[Connection], Coroutine[Any, Any, None]])
assert_type(disconnected, Callable[[Connection, int, str], None])
assert_type(server_ignored, Callable[[Connection, str, Any], None])
assert_type(server_error, Callable[[Exception, Connection | None], None])


# ---- client.when ---------------------------------------------------------------------------


@client.when.ready
def ready(welcome: Any, /) -> None: ...


@client.when.closed
def closed(code: int, reason: str, /) -> None: ...


@client.when.error
def client_error(err: WseError, /) -> None: ...


@client.when.updated
def updated(status: str, /) -> None: ...


@client.when.connected
def opened() -> None: ...


@client.when.ignored
def client_ignored(type: str, payload: Any, /) -> Awaitable[None] | None: ...


assert_type(ready, Callable[[Any], None])
assert_type(closed, Callable[[int, str], None])
assert_type(client_error, Callable[[WseError], None])
assert_type(updated, Callable[[str], None])
assert_type(opened, Callable[[], None])
assert_type(client_ignored, Callable[[str, Any], Awaitable[None] | None])


# ---- once, off, wait and state -------------------------------------------------------------


@server.channel.once("chat")
def on_first_chat(conn: Connection, payload: str, /) -> None: ...


assert_type(on_first_chat, Callable[[Connection, str], None])
assert_type(client.channel.once("news", on_news), Callable[[str], None])
server.channel.off("chat", on_chat)
client.channel.off("news")


@server.when.once.joined
def first_joined(user: User, meta: dict[str, Any], /) -> None: ...


@client.when.once.ready
async def first_ready(welcome: Any, /) -> None: ...


assert_type(first_joined, Callable[[User, dict[str, Any]], None])
assert_type(first_ready, Callable[[Any], Coroutine[Any, Any, None]])
assert_type(server.channel.listeners("chat"), tuple[Callable[..., Any], ...])


async def waits(conn: Connection, user: User) -> None:
    assert_type(await client.when.wait("ready"), tuple[Any, ...])
    assert_type(await server.when.wait("joined", lambda user, meta: True), tuple[Any, ...])
    assert_type(conn.state, dict[str, Any])
    assert_type(user.state, dict[str, Any])


# ---- handlers that do not fit --------------------------------------------------------------


@server.channel.on("chat")  # E: type-var
def client_shaped(payload: str) -> None: ...


@client.register("status")  # E: type-var
def server_shaped(conn: Connection, payload: str) -> None: ...


server.register("narrow", lambda payload: payload)  # E: call-overload
client.channel.on("wide", lambda conn, payload: None)  # E: call-overload


@server.when.error  # E: type-var
def only_rpc_errors(err: RpcError, conn: Connection) -> None: ...


@client.when.closed  # E: type-var
def closed_without_reason(code: int) -> None: ...


@server.when.left  # E: type-var
def left_with_a_connection(conn: Connection, code: int, reason: str) -> None: ...


@client.channel.once("news")  # E: type-var
def once_server_shaped(conn: Connection, payload: str) -> None: ...


@client.when.once.closed  # E: type-var
def once_closed_without_reason(code: int) -> None: ...


# ---- on_upgrade: a plain function or a coroutine function ----------------------------------


def sync_upgrade(request: HandshakeRequest) -> tuple[int, str] | None:
    request.add_response_header("Set-Cookie", "sid=1")
    return None


async def async_upgrade(request: HandshakeRequest) -> int | None:
    return 401


WseServer(lambda req: req.refuse(), on_upgrade=sync_upgrade)
WseServer(lambda req: req.refuse(), on_upgrade=async_upgrade)
assert_type(
    HandshakeRequest("/", {}, ("", 0), ("", 0)).response_headers, tuple[tuple[str, str], ...]
)


async def upgrade_answering_text(request: HandshakeRequest) -> str:
    return "403"


WseServer(lambda req: req.refuse(), on_upgrade=upgrade_answering_text)  # E: arg-type


# ---- exceptions and async with -------------------------------------------------------------

assert_type(WseError.from_code("wse.not-authorized"), WseError)
assert_type(NotAuthorized().code, str)


async def lifetimes() -> None:
    async with WseServer(lambda req: req.refuse(), port=0) as running:
        assert_type(running, WseServer)
    async with WseClient("ws://127.0.0.1:1") as connected_client:
        assert_type(connected_client, WseClient)


# ---- option objects, exported types and Cid ------------------------------------------------

backoff = Reconnect(delay=0.1, jitter=0.0, codes={1006}, keep_trying=True)
assert_type(backoff.wait(0), float)
WseClient("ws://127.0.0.1:1", reconnect=backoff)
WseClient("ws://127.0.0.1:1", reconnect=None)
WseClient("ws://127.0.0.1:1", reconnect=True)  # E: arg-type
WseClient("ws://127.0.0.1:1", reconnect_delay=0.5)  # E: call-arg
Reconnect(delay="1s")  # E: arg-type

assert_type(Limits(compression=Compression(level=1)).compression, Compression | None)
ServerLimits(compression=Compression(takeover=True, window_bits=10))
Limits(compression=True)  # E: arg-type
Limits(compression_level=1)  # E: call-arg

server.join_cluster("nats://127.0.0.1:4222")
server.join_cluster(["nats://127.0.0.1:4222"], ClusterOptions(node="a", nats_options={}))
server.join_cluster("nats://127.0.0.1:4222", node="a")  # E: call-arg

events: ServerEvents = server.when
client_events: ClientEvents = client.when
server_channel: Channel[ServerEvents] = server.channel
client_channel: Channel[ClientEvents] = client.channel
user: Cid = "alice"
server.send(user, "hello")
server.send(("tenant", 7), "hello")
server.send(["not", "hashable"], "hello")  # E: arg-type

# the lazy __init__ still types every name, and a misspelt one is an error, not Any
assert_type(wse_fast.Reconnect, type[Reconnect])
misspelt = wse_fast.Reconect  # E: attr-defined
