"""A browser (headless Chromium from Debian) as the WSE client of a wse-fast server, on its own
listener and mounted under uvicorn and aiohttp."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import pytest
import yarl
from wse_fast import IdentifyRequest, WseServer

from tests.conftest import EventLog, ServerFactory, accept_identity, url_of
from tests.hosts import TRANSPORTS

PAGE = Path(__file__).parent / "browser" / "wse_page.html"


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """The browser against picows's own listener, and mounted under uvicorn and aiohttp."""
    return str(request.param)


@pytest.fixture(scope="module")
def devtools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One headless Chromium for the module (its start is the dear part); each test opens a
    tab of its own through the DevTools HTTP endpoint, whose base URL this yields."""
    chromium = shutil.which("chromium")
    assert chromium is not None, "Debian's chromium is part of the test setup (make setup)"
    profile = tmp_path_factory.mktemp("chromium")
    browser = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace",
    )  # fmt: skip
    assert browser.stderr is not None
    try:
        # Chromium names the port it chose on stderr: "DevTools listening on ws://HOST:PORT/..."
        for line in browser.stderr:
            if line.startswith("DevTools listening on "):
                endpoint = urlsplit(line.split()[-1])
                break
        else:
            raise AssertionError(f"Chromium exited ({browser.wait()}) without a DevTools port")
        # Its later chatter must not fill the pipe and stall it.
        threading.Thread(target=browser.stderr.read, daemon=True).start()
        yield f"http://{endpoint.netloc}"
    finally:
        browser.kill()
        browser.wait()


#: What the page reports once it has done everything (tests/browser/wse_page.html).
PAGE_REPORT = {
    "protocol": "wse-default-json",
    "welcome": {"hey": "welcome data"},
    "add": 42,
    "news": {"text": "grüße 😀", "n": [1, 2.5, None, True]},
    "textFrames": 4,  # welcome, the add answer, the server's call, the news: all text
}


def serve_the_page(server: WseServer, log: EventLog) -> None:
    """What the page calls and is sent: ``add``, its ``report`` (logged as "report"), and on
    ``go-on`` a call to the page (its answer logged as "rpc") and a broadcast."""
    server.register("add", lambda conn, p: p["a"] + p["b"])
    server.channel.on("report", log.hook("report"))

    @server.channel.on("go-on")
    async def go_on(conn: Any, payload: Any) -> None:
        log.hook("rpc")(await conn.call("browser-rp", {"q": "é😀"}))
        server.broadcast("news", {"text": "grüße 😀", "n": [1, 2.5, None, True]})


@asynccontextmanager
async def tab_of_the_page(devtools: str, server: WseServer) -> AsyncIterator[None]:
    """A Chromium tab with the page, pointed at ``server``, closed on the way out."""
    page = f"{PAGE.as_uri()}?{urlencode({'url': url_of(server)})}"
    async with aiohttp.ClientSession(raise_for_status=True) as http:
        # /json/new takes the page's URL, escaped once, as its whole query
        new_tab = yarl.URL(f"{devtools}/json/new?{quote(page, safe='')}", encoded=True)
        async with http.put(new_tab) as answer:
            tab = await answer.json()
        try:
            yield
        finally:
            async with http.get(f"{devtools}/json/close/{tab['id']}"):
                pass


async def test_chromium_talks_to_the_server(
    make_server: ServerFactory, log: EventLog, devtools: str
) -> None:
    def identify(req: IdentifyRequest) -> None:
        log.hook("path")(req.request and req.request.path)
        accept_identity(req)

    server = await make_server(identify)
    server.when.joined(log.hook("joined"))
    server.when.disconnected(log.hook("disconnected"))
    serve_the_page(server, log)
    async with tab_of_the_page(devtools, server):
        [(conn, seen)] = await log.wait("report", timeout=30)
        assert seen == PAGE_REPORT
        assert log.of("rpc") == [({"browser": {"q": "é😀"}},)]
        [(client, meta)] = log.of("joined")
        assert (client.cid, meta) == ("browser-user", {"device": "browser"})
        # the page reached the server where it is served: a mounted one at its path
        assert log.of("path") == [(urlsplit(url_of(server)).path or "/",)]
        conn.send("bye")
        [(_, code, reason)] = await log.wait("disconnected", timeout=30)
        assert (code, reason) == (1000, "wse.by-client")
