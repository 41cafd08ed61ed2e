"""A browser (headless Chromium from Debian) as the WSE client of a wse-fast server."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from tests.conftest import EventLog, ServerFactory

PAGE = Path(__file__).parent / "browser" / "wse_page.html"


async def test_chromium_talks_to_the_server(
    make_server: ServerFactory, log: EventLog, tmp_path: Path
) -> None:
    chromium = shutil.which("chromium")
    assert chromium is not None, "Debian's chromium is part of the test setup (make setup)"
    server = await make_server()
    server.when.joined(log.hook("joined"))
    server.when.disconnected(log.hook("disconnected"))
    server.register("add", lambda conn, p: p["a"] + p["b"])
    server.channel.on("report", log.hook("report"))

    @server.channel.on("go-on")
    async def go_on(conn: Any, payload: Any) -> None:
        log.hook("rpc")(await conn.call("browser-rp", {"q": "é😀"}))
        server.broadcast("news", {"text": "grüße 😀", "n": [1, 2.5, None, True]})

    browser = await asyncio.create_subprocess_exec(
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path}", f"{PAGE.as_uri()}?port={server.port}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        [(conn, seen)] = await log.wait("report", timeout=60)
        assert seen == {
            "protocol": "wse-default-json",
            "welcome": {"hey": "welcome data"},
            "add": 42,
            "news": {"text": "grüße 😀", "n": [1, 2.5, None, True]},
            "textFrames": 4,  # welcome, the add answer, the server's call, the news: all text
        }
        assert log.of("rpc") == [({"browser": {"q": "é😀"}},)]
        [(client, meta)] = log.of("joined")
        assert (client.cid, meta) == ("browser-user", {"device": "browser"})
        conn.send("bye")
        [(_, code, reason)] = await log.wait("disconnected", timeout=30)
        assert (code, reason) == (1000, "wse.by-client")
    finally:
        browser.kill()
        await browser.wait()
