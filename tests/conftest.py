"""Shared fixtures: real servers on 127.0.0.1, real clients, and an awaitable event log."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvloop
from wse_fast import IdentifyRequest, Limits, ServerLimits, WseClient, WseServer

from tests.hosts import URLS, Host, mount


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    return {"uvloop": uvloop.new_event_loop}  # the loop the library is made for


def accept_identity(req: IdentifyRequest) -> None:
    """The test servers' identify: the identity is the user id, unless it starts with 'bad'."""
    if isinstance(req.identity, str) and not req.identity.startswith("bad"):
        req.accept(req.identity, {"hey": "welcome data"})
    else:
        req.refuse()


class EventLog:
    """Records calls by name; tests await what they expect instead of sleeping."""

    def __init__(self) -> None:
        self.items: list[tuple[str, tuple[Any, ...]]] = []
        self._changed = asyncio.Event()

    def hook(self, name: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            self.items.append((name, args))
            self._changed.set()

        return record

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [args for n, args in self.items if n == name]

    async def wait(self, name: str, count: int = 1, timeout: float = 10) -> list[tuple[Any, ...]]:
        async with asyncio.timeout(timeout):
            while len(self.of(name)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.of(name)


@pytest.fixture
def log() -> EventLog:
    return EventLog()


def with_limits(kind: type[Limits], options: dict[str, Any]) -> dict[str, Any]:
    """The factories below take the fields of ``Limits`` / ``ServerLimits`` as keywords of
    their own: they are gathered into a ``limits`` object here."""
    names = {field.name for field in dataclasses.fields(kind)}
    limits = {name: options.pop(name) for name in list(options) if name in names}
    return {**options, "limits": kind(**limits)} if limits else options


ServerFactory = Callable[..., Awaitable[WseServer]]
ClientFactory = Callable[..., WseClient]


@pytest.fixture
def transport() -> str:
    """What ``make_server`` serves on: picows's own listener; modules that run on every
    transport override this with a parametrised fixture (``hosts.TRANSPORTS``)."""
    return "picows"


@pytest.fixture
async def make_server(transport: str) -> AsyncIterator[ServerFactory]:
    servers: list[WseServer] = []
    hosts: dict[int, Host] = {}

    async def make(identify: Any = accept_identity, **options: Any) -> WseServer:
        port = options.pop("port", 0)
        server = WseServer(identify, **with_limits(ServerLimits, options))
        servers.append(server)
        if transport == "picows":
            server.port = port
            await server.start()
            URLS[server] = f"ws://127.0.0.1:{server.port}"
            return server
        if port in hosts:  # a restart on the same address: the old host goes first
            await hosts.pop(port).stop()
        host = await mount(transport, {"/ws": server}, port)
        hosts[host.port] = host
        server.port = host.port
        URLS[server] = host.url("/ws")
        return server

    yield make
    for server in servers:
        await server.close()
    for host in hosts.values():
        await host.stop()


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    clients: list[WseClient] = []

    def make(target: WseServer | str, **options: Any) -> WseClient:
        url = target if isinstance(target, str) else url_of(target)
        options.setdefault("reconnect", None)
        client = WseClient(url, **with_limits(Limits, options))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def url_of(server: WseServer) -> str:
    return URLS.get(server) or f"ws://127.0.0.1:{server.port}"


class RecordingTransport:
    """A real uvloop transport that also keeps what each ``write`` was given, in order."""

    def __init__(self, real: Any, writes: list[bytes]) -> None:
        self._real, self._writes = real, writes

    def write(self, data: bytes) -> None:
        self._writes.append(data)
        self._real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def listen_backlogs(port: int) -> list[int]:
    """The accept-queue length of every socket listening on ``port`` (SO_REUSEPORT: one per
    worker), as the kernel holds it after capping at ``somaxconn``: ``ss`` reads it through
    sock_diag and shows it as Send-Q of a listening socket (/proc/net/tcp does not show it)."""
    table = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    # State Recv-Q Send-Q Local-Address:Port Peer-Address:Port
    return [int(row.split()[2]) for row in table.splitlines() if row.strip()]


def somaxconn() -> int:
    with open("/proc/sys/net/core/somaxconn", encoding="ascii") as file:
        return int(file.read())
