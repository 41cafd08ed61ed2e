"""Headless Chromium (which always offers permessage-deflate) against a server that agrees,
with every message compressed both ways."""

from __future__ import annotations

from wse_fast import Compression
from wse_fast.transport.endpoint import DeflateEndpoint

from tests.conftest import EventLog, ServerFactory
from tests.test_browser import PAGE_REPORT, devtools, serve_the_page, tab_of_the_page

__all__ = ["devtools"]  # the module's Chromium fixture, shared


async def test_chromium_with_compression(
    make_server: ServerFactory, log: EventLog, devtools: str
) -> None:
    server = await make_server(compression=Compression(threshold=0))
    server.when.connected(log.hook("connected"))
    serve_the_page(server, log)
    async with tab_of_the_page(devtools, server):
        [(_conn, seen)] = await log.wait("report", timeout=30)
        [(connected,)] = log.of("connected")
        assert isinstance(connected.endpoint, DeflateEndpoint)  # agreed
        compressor = connected.endpoint.compressor
        assert compressor is not None and compressor.messages >= 4  # all it was sent
        assert seen == PAGE_REPORT
        assert log.of("rpc") == [({"browser": {"q": "é😀"}},)]
