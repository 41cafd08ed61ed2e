"""``async with WseServer(...)`` starts and closes a server; ``async with WseClient(...)``
closes a client, also when the block raises."""

from __future__ import annotations

import pytest
from wse_fast import WSE_REASON, WSE_STATUS, ConnectionFailed, WseClient, WseServer

from tests.conftest import ClientFactory, EventLog, ServerFactory, accept_identity


async def test_a_server_block_serves_inside_and_is_closed_after(
    make_client: ClientFactory, log: EventLog
) -> None:
    async with WseServer(accept_identity, port=0) as server:
        assert server.port != 0  # bound: start() has run
        client = make_client(server)
        client.when.closed(log.hook("closed"))
        assert await client.connect("alice") == {"hey": "welcome data"}
        url = f"ws://127.0.0.1:{server.port}"
    # leaving the block closed every connection with the server's close (1012) ...
    assert await log.wait("closed") == [(1012, WSE_REASON.BY_SERVER)]
    assert server.connections == {}
    # ... and the listening socket
    with pytest.raises(ConnectionFailed):
        await make_client(url).connect("bob")


async def test_a_client_block_closes_the_client_when_it_ends(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await make_server()
    server.when.disconnected(log.hook("disconnected"))
    async with WseClient(f"ws://127.0.0.1:{server.port}", reconnect=None) as client:
        await client.connect("alice")
        assert "alice" in server.clients
    [(_, code, reason)] = await log.wait("disconnected")
    assert (code, reason) == (1000, WSE_REASON.BY_CLIENT)
    assert client.status == WSE_STATUS.OFFLINE


async def test_a_client_block_that_raises_still_closes_the_client(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await make_server()
    server.when.disconnected(log.hook("disconnected"))
    with pytest.raises(RuntimeError, match="in the block"):
        async with WseClient(f"ws://127.0.0.1:{server.port}", reconnect=None) as client:
            await client.connect("alice")
            raise RuntimeError("in the block")
    [(_, code, reason)] = await log.wait("disconnected")
    assert (code, reason) == (1000, WSE_REASON.BY_CLIENT)
    assert client.status == WSE_STATUS.OFFLINE
