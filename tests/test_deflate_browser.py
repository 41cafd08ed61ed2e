"""Headless Chromium (which always offers permessage-deflate) against a server that agrees,
with every message compressed both ways."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import yarl
from wse_fast.transport.picows_endpoint import DeflateEndpoint

from tests.conftest import EventLog, ServerFactory, url_of
from tests.test_browser import PAGE, devtools

__all__ = ["devtools"]  # the module's Chromium fixture, shared


async def test_chromium_with_compression(
    make_server: ServerFactory, log: EventLog, devtools: str
) -> None:
    server = await make_server(compression=True, compression_threshold=0)
    server.when.connected(log.hook("connected"))
    server.register("add", lambda conn, p: p["a"] + p["b"])
    server.channel.on("report", log.hook("report"))

    @server.channel.on("go-on")
    async def go_on(conn: Any, payload: Any) -> None:
        log.hook("rpc")(await conn.call("browser-rp", {"q": "é😀"}))
        server.broadcast("news", {"text": "grüße 😀", "n": [1, 2.5, None, True]})

    page = f"{PAGE.as_uri()}?{urlencode({'url': url_of(server)})}"
    async with aiohttp.ClientSession(raise_for_status=True) as http:
        new_tab = yarl.URL(f"{devtools}/json/new?{quote(page, safe='')}", encoded=True)
        async with http.put(new_tab) as answer:
            tab = await answer.json()
        try:
            [(_conn, seen)] = await log.wait("report", timeout=30)
            [(connected,)] = log.of("connected")
            assert isinstance(connected.endpoint, DeflateEndpoint)  # agreed
            compressor = connected.endpoint.compressor
            assert compressor is not None and compressor.messages >= 4  # all it was sent
            assert seen == {
                "protocol": "wse-default-json",
                "welcome": {"hey": "welcome data"},
                "add": 42,
                "news": {"text": "grüße 😀", "n": [1, 2.5, None, True]},
                "textFrames": 4,
            }
            assert log.of("rpc") == [({"browser": {"q": "é😀"}},)]
        finally:
            async with http.get(f"{devtools}/json/close/{tab['id']}"):
                pass
