"""A graceful close (``WseServer.close(grace=...)``, ``wse-fast serve --graceful-timeout``):
new connections are refused, nothing more is read or started, the handlers already running
finish and their answers reach the callers, then every connection is closed with 1012; a
handler outliving the grace is cancelled (its caller told so) and the close comes at the
grace. On the own listener, under aiohttp and uvicorn, as a process stopped by SIGTERM
(alone or as workers), and as two nodes of a cluster with a call across them in flight."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from aiohttp import web
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from wse_fast import (
    WSE_ERROR,
    ClusterOptions,
    Connection,
    ConnectionNotReady,
    RpcDisconnected,
    RpcError,
    WseClient,
    WseServer,
)
from wse_fast.cluster.local_nats import LocalNats

from tests.conftest import ClientFactory, EventLog, ServerFactory, accept_identity, url_of
from tests.hosts import Host, bound_socket, serve_aiohttp
from tests.test_cli import serve
from tests.test_cluster import until_online
from tests.test_hardening import upgrade

CLOSE_SERVICE_RESTART = 1012


class Gate:
    """A procedure that counts its callers in and holds them until it is opened."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.entered = 0
        self.all_in = asyncio.Event()
        self.open = asyncio.Event()

    async def __call__(self, conn: Connection, payload: Any) -> Any:
        self.entered += 1
        if self.entered == self.expected:
            self.all_in.set()
        await self.open.wait()
        return payload


async def calls_in_flight(
    make_client: ClientFactory, url: str, gate: Gate, log: EventLog
) -> list[asyncio.Task[Any]]:
    """``gate.expected`` clients, each with a call to ``hold`` that has started."""
    calls = []
    for n in range(gate.expected):
        client = make_client(url)
        client.when.closed(log.hook("closed"))
        await client.connect(f"user{n}")
        calls.append(asyncio.ensure_future(client.call("hold", n, timeout=0)))
    async with asyncio.timeout(5):
        await gate.all_in.wait()
    return calls


async def closing(server: WseServer, grace: float) -> asyncio.Task[None]:
    """``server.close(grace=grace)`` under way: its first step (no more accepting, nothing
    more read) is done when this returns."""
    task = asyncio.ensure_future(server.close(grace=grace))
    await asyncio.sleep(0)  # the task's first step runs before this one's next: no race
    assert server.closing
    return task


async def test_calls_in_flight_are_answered_then_each_client_gets_1012(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    gate = Gate(20)
    server.register("hold", gate)
    url = url_of(server)
    calls = await calls_in_flight(make_client, url, gate, log)
    late_caller = make_client(url)
    await late_caller.connect("late")
    done = await closing(server, grace=10)

    with pytest.raises(ConnectionRefusedError):  # no longer listening
        await asyncio.open_connection("127.0.0.1", server.port)
    # a call sent during the drain is not run: it is never read, and fails at the close
    late_call = asyncio.ensure_future(late_caller.call("hold", "late", timeout=0))
    assert not done.done()  # waiting for the handlers
    gate.open.set()
    async with asyncio.timeout(10):
        assert await asyncio.gather(*calls) == list(range(20))  # every one answered
        await done
    closed = await log.wait("closed", 20)
    assert {code for code, _ in closed} == {CLOSE_SERVICE_RESTART}
    with pytest.raises(RpcDisconnected):
        await late_call
    assert gate.entered == 20
    assert server.connections == {} and server.tasks_running == 0


async def test_a_handler_outliving_the_grace_is_cancelled_and_its_caller_told_so(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    gate = Gate(3)  # never opened
    server.register("hold", gate)
    calls = await calls_in_flight(make_client, url_of(server), gate, log)
    started = time.monotonic()
    async with asyncio.timeout(5):
        await server.close(grace=0.5)
    took = time.monotonic() - started
    assert 0.5 <= took < 2.5, took  # the grace, the cancellations' answers and the closes
    for call in calls:
        with pytest.raises(RpcError) as raised:
            await call
        assert raised.value.code == WSE_ERROR.RP_EXECUTION_FAILED
        assert raised.value.message == "the call was cancelled"
    closed = await log.wait("closed", 3)
    assert {code for code, _ in closed} == {CLOSE_SERVICE_RESTART}


async def test_a_handler_finishing_during_the_drain_gets_its_clients_answer(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    release = asyncio.Event()
    entered = asyncio.Event()

    @server.register("ask back")
    async def ask_back(conn: Connection, payload: Any) -> Any:
        entered.set()
        await release.wait()
        return await conn.call("double", payload)  # read though the server is closing

    client = make_client(url_of(server))
    client.register("double", lambda payload: payload * 2)
    client.when.closed(log.hook("closed"))
    await client.connect("alice")
    call = asyncio.ensure_future(client.call("ask back", 21, timeout=0))
    async with asyncio.timeout(5):
        await entered.wait()
    done = await closing(server, grace=10)
    release.set()
    async with asyncio.timeout(10):
        assert await call == 42
        await done
    assert await log.wait("closed") == [(CLOSE_SERVICE_RESTART, "wse.by-server")]


async def test_with_grace_0_running_handlers_are_cancelled_at_once(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server(grace=30)  # the server's own, overridden by close()
    gate = Gate(2)
    server.register("hold", gate)
    calls = await calls_in_flight(make_client, url_of(server), gate, log)
    async with asyncio.timeout(3):
        await server.close(grace=0)
    for call in calls:
        with pytest.raises(RpcError) as raised:
            await call
        assert raised.value.message == "the call was cancelled"


async def test_two_closes_at_once_both_end_when_the_handlers_do(
    make_server: ServerFactory, make_client: ClientFactory, log: EventLog
) -> None:
    server = await make_server()
    gate = Gate(2)
    server.register("hold", gate)
    calls = await calls_in_flight(make_client, url_of(server), gate, log)
    first = await closing(server, grace=10)
    second = await closing(server, grace=10)  # the application's shutdown, and a signal
    gate.open.set()
    async with asyncio.timeout(5):  # not the grace: neither waits for the other's drain
        assert await asyncio.gather(*calls) == [0, 1]
        await asyncio.gather(first, second)
    assert {code for code, _ in await log.wait("closed", 2)} == {CLOSE_SERVICE_RESTART}


# ---- mounted --------------------------------------------------------------------------------


@pytest.mark.parametrize("host_kind", ["aiohttp", "uvicorn"])
async def test_a_mounted_server_drains_before_its_host_closes(
    host_kind: str, make_client: ClientFactory, log: EventLog
) -> None:
    """aiohttp runs ``on_shutdown`` before it closes its connections; uvicorn closes every
    WebSocket itself before the ASGI lifespan's shutdown, so the server is closed from a
    subclass of uvicorn's server before its own shutdown (the recipe in the documentation)."""
    server = WseServer(accept_identity)
    gate = Gate(5)
    server.register("hold", gate)
    shutting_down = asyncio.Event()
    stop: Callable[[], Awaitable[None]]
    if host_kind == "aiohttp":
        app = web.Application()
        app.router.add_get("/ws", server.aiohttp_handler)

        async def on_shutdown(app: web.Application) -> None:
            shutting_down.set()  # close() below takes its first step before the test wakes
            await server.close(grace=10)

        app.on_shutdown.append(on_shutdown)
        host = await serve_aiohttp(app)
        stop = host.stop  # stops listening, then on_shutdown
    else:

        class DrainingServer(uvicorn.Server):
            async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
                shutting_down.set()
                await server.close(grace=10)
                await super().shutdown(sockets)

        sock = bound_socket()
        config = uvicorn.Config(
            Starlette(routes=[WebSocketRoute("/ws", server.asgi)]),
            lifespan="off",
            log_level="warning",
            loop="none",
        )
        config.load()
        uvicorn_server = DrainingServer(config)
        uvicorn_server.lifespan = config.lifespan_class(config)
        await uvicorn_server.startup(sockets=[sock])
        host = Host(sock.getsockname()[1], sock.close)

        async def stop() -> None:
            uvicorn_server.should_exit = True
            await uvicorn_server.shutdown(sockets=[sock])

    calls = await calls_in_flight(make_client, host.url("/ws"), gate, log)
    stopping = asyncio.ensure_future(stop())
    async with asyncio.timeout(5):
        await shutting_down.wait()
    assert server.closing
    if host_kind == "uvicorn":  # uvicorn still listens: the server refuses the upgrade
        _, writer, head = await upgrade(host.port, target="/ws")
        assert head.startswith(b"HTTP/1.1 503"), head
        writer.close()
    gate.open.set()
    async with asyncio.timeout(10):
        assert await asyncio.gather(*calls) == list(range(5))
        await stopping
    closed = await log.wait("closed", 5)
    assert {code for code, _ in closed} == {CLOSE_SERVICE_RESTART}
    if host_kind == "uvicorn":
        sock.close()


# ---- wse-fast serve ---------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [[], ["--workers", "2", "--no-cluster"]])
async def test_sigterm_answers_the_calls_in_flight_before_closing(
    workers: list[str], log: EventLog
) -> None:
    served = await serve(
        "tests.drain_app:server", "--port", "0", "--graceful-timeout", "7", *workers
    )
    clients: list[WseClient] = []
    try:
        port = await served.serving()
        calls = []
        for n in range(8):
            client = WseClient(f"ws://127.0.0.1:{port}", reconnect=None)
            clients.append(client)
            client.when.closed(log.hook("closed"))
            client.channel.on("started", log.hook("started"))
            await client.connect(f"user{n}")
            calls.append(asyncio.ensure_future(client.call("hold", timeout=0)))
        await log.wait("started", 8)  # every call is running in the server
    finally:
        status, output = await served.terminate()
    assert status == 0, output
    answers = await asyncio.gather(*calls)
    # answered after the signal, with the grace given on the command line (passed on to
    # the workers)
    assert answers == [{"grace": 7.0, "closing": True}] * 8
    closed = await log.wait("closed", 8)
    assert {code for code, _ in closed} == {CLOSE_SERVICE_RESTART}
    for client in clients:
        await client.close()


async def test_a_second_sigterm_cancels_the_handlers_still_running(log: EventLog) -> None:
    served = await serve("tests.drain_app:server", "--port", "0", "--graceful-timeout", "60")
    try:
        port = await served.serving()
        client = WseClient(f"ws://127.0.0.1:{port}", reconnect=None)
        client.when.closed(log.hook("closed"))
        client.channel.on("started", log.hook("started"))
        client.channel.on("closing", log.hook("closing"))
        await client.connect("alice")
        call = asyncio.ensure_future(client.call("stuck", timeout=0))
        await log.wait("started")  # running in the server
        served.proc.terminate()
        await log.wait("closing")  # the drain waits for the stuck call
        assert not call.done()
        served.proc.terminate()  # not 60 s more
        status, output = await served.ended()
    finally:
        if served.proc.returncode is None:
            await served.terminate()
    assert status == 0, output
    with pytest.raises(RpcError) as raised:
        await call
    assert raised.value.message == "the call was cancelled"
    assert await log.wait("closed") == [(CLOSE_SERVICE_RESTART, "wse.by-server")]
    await client.close()


async def test_workers_shutdown_timeout_must_exceed_the_graceful_timeout() -> None:
    served = await serve(
        "tests.drain_app:server",
        "--workers",
        "2",
        "--graceful-timeout",
        "30",
        "--shutdown-timeout",
        "20",
    )
    status, output = await served.ended()
    assert status == 2, output
    assert "--shutdown-timeout must exceed --graceful-timeout" in output


# ---- in a cluster ---------------------------------------------------------------------------


async def test_calls_across_nodes_in_flight_are_answered_while_both_nodes_drain(
    make_client: ClientFactory, log: EventLog
) -> None:
    """bob on node a calls ``relay``, which calls alice's device on node b across NATS; both
    nodes close meanwhile. b waits for the call it carries to alice, and takes no new one
    from another node; a waits for its handler, whose answer comes over the cluster link,
    which stays up until the drain is over."""
    async with LocalNats() as nats:
        a, b = WseServer(accept_identity, port=0), WseServer(accept_identity, port=0)
        for server, name in ((a, "a"), (b, "b")):
            server.join_cluster(nats.url, ClusterOptions(node=name, node_ttl=2.0))
            await server.start()
        try:
            asked, release = asyncio.Event(), asyncio.Event()

            async def slow(payload: Any) -> Any:
                asked.set()
                await release.wait()
                return payload

            @a.register("relay")
            async def relay(conn: Connection, payload: Any) -> Any:
                return await a.call("alice", "slow", payload, timeout=10)

            alice = make_client(url_of(b))
            alice.register("slow", slow)
            await alice.connect("alice")
            bob = make_client(url_of(a))
            bob.when.closed(log.hook("closed"))
            await bob.connect("bob")
            await until_online(a, "alice", 1)
            relayed = asyncio.ensure_future(bob.call("relay", 1, timeout=0))
            async with asyncio.timeout(5):
                await asked.wait()  # a -> NATS -> b -> alice's device, waiting
            b_closed = await closing(b, grace=10)
            with pytest.raises(ConnectionNotReady):  # b is closing: no new call through it
                await a.call("alice", "slow", 2, timeout=5)
            a_closed = await closing(a, grace=10)
            release.set()
            async with asyncio.timeout(10):
                assert await relayed == 1
                await asyncio.gather(a_closed, b_closed)
            assert await log.wait("closed") == [(CLOSE_SERVICE_RESTART, "wse.by-server")]
        finally:
            await a.close(grace=0)
            await b.close(grace=0)
