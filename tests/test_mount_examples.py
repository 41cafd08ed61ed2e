"""The mounting examples run as their own processes, started by the commands they document:
HTTP login sets a session cookie, the WSE endpoint beside the HTTP routes admits only
connections that bring it, RPC and broadcast work, and a SIGTERM shuts the app down through
its lifespan / on_shutdown, which closes the WSE server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol
from wse_fast import WSE_REASON

ROOT = Path(__file__).resolve().parents[1]
# Port 0: the OS picks a free port, and each host announces the one it bound once it listens
# (uvicorn's "Uvicorn running on ...", aiohttp's "Running on ..."), so reading that line is
# both the readiness signal and the address.
COMMANDS = {
    "fastapi": [
        *("-m", "uvicorn", "examples.fastapi_app:app", "--host", "127.0.0.1", "--port", "0"),
        # server.asgi.uvicorn_options() as the example documents them
        *("--no-proxy-headers", "--ws", "websockets-sansio", "--ws-max-size", "1048576"),
        *("--ws-per-message-deflate", "false"),
    ],
    "aiohttp": ["examples/aiohttp_app.py", "--host", "127.0.0.1", "--port", "0"],
}
# uvicorn re-raises the SIGTERM it shut down for once it is done, as its exit status.
EXIT_STATUS = {"fastapi": -signal.SIGTERM, "aiohttp": 0}
# uvicorn closes its WebSockets itself (1012, no reason) before the lifespan's shutdown; aiohttp
# leaves them to on_shutdown, where the WSE server's close() says why.
CLOSE_REASON = {"fastapi": "", "aiohttp": WSE_REASON.BY_SERVER}
LISTENING = re.compile(r"Running on http://127\.0\.0\.1:(\d+)", re.IGNORECASE)
JSON = [Subprotocol("wse-default-json")]


class Example:
    """One example app running in a child process; its stdout and stderr are kept."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.output: list[str] = []

    async def listening(self) -> int:
        """The port, read from the line the host writes once it accepts connections."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            while line := (await self.proc.stdout.readline()).decode():
                self.output.append(line)
                if found := LISTENING.search(line):
                    return int(found[1])
        raise AssertionError(f"the example exited before listening:\n{''.join(self.output)}")

    async def terminate(self) -> tuple[int, str]:
        """Sends SIGTERM and waits for the process to exit: its status and all it wrote."""
        assert self.proc.stdout is not None
        self.proc.terminate()
        async with asyncio.timeout(20):
            self.output.append((await self.proc.stdout.read()).decode())
            status = await self.proc.wait()
        return status, "".join(self.output)


async def start(name: str) -> Example:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # print() lines arrive as they are written
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *COMMANDS[name],
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    return Example(proc)


async def login(http: aiohttp.ClientSession, base: str, user: str, password: str) -> str:
    """The session cookie the app sets (the client's cookie jar keeps none for IP hosts)."""
    async with http.post(f"{base}/login", json={"user": user, "password": password}) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"user": user}
        return resp.cookies["session"].value


async def receive(ws: ClientConnection) -> list[Any]:
    async with asyncio.timeout(10):
        message = json.loads(await ws.recv())
    assert isinstance(message, list)
    return message


def hi(device: str) -> str:
    return json.dumps(["~wse:hi", {"identity": "whoever", "meta": {"device": device}}, None])


async def assert_refused(url: str, headers: dict[str, str]) -> None:
    """The upgrade succeeds (identify runs after the hi), then the server refuses."""
    async with connect(url, additional_headers=headers, subprotocols=JSON) as ws:
        await ws.send(hi("laptop"))
        async with asyncio.timeout(10):
            await ws.wait_closed()
        assert (ws.close_code, ws.close_reason) == (1000, WSE_REASON.NOT_AUTHORIZED)


@pytest.mark.parametrize("name", sorted(COMMANDS))
async def test_mounted_example_serves_http_and_wse_with_a_session_cookie(name: str) -> None:
    example = await start(name)
    try:
        port = await example.listening()
        base, url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/health") as resp:
                assert await resp.json() == {"status": "ok", "users": 0, "connections": 0}
            async with http.post(
                f"{base}/login", json={"user": "alice", "password": "a guess"}
            ) as resp:
                assert resp.status == 401
                assert "session" not in resp.cookies
            session = await login(http, base, "alice", "alice's password")

            await assert_refused(url, {})
            await assert_refused(url, {"Cookie": "session=made-up"})

            cookie = {"Cookie": f"session={session}"}
            ws = await connect(url, additional_headers=cookie, subprotocols=JSON)
            assert ws.subprotocol == "wse-default-json"
            await ws.send(hi("laptop"))
            assert await receive(ws) == ["~wse:welcome", {"hello": "alice"}, None]

            await ws.send(json.dumps(["whoami", None, "call-1"]))
            expected = {"user": "alice", "device": "laptop"}
            assert await receive(ws) == ["~wse:response", expected, "call-1"]

            async with http.get(f"{base}/health") as resp:
                assert await resp.json() == {"status": "ok", "users": 1, "connections": 1}
            async with http.post(f"{base}/announce", json={"text": "hello, all"}) as resp:
                assert resp.status == 401  # the HTTP routes take the same session
            async with http.post(
                f"{base}/announce", json={"text": "hello, all"}, headers=cookie
            ) as resp:
                assert await resp.json() == {"users": 1}
            announcement = {"from": "alice", "text": "hello, all"}
            assert await receive(ws) == ["announcement", announcement, None]

        # the WebSocket is still open: shutting down closes it
        status, output = await example.terminate()
        async with asyncio.timeout(10):
            await ws.wait_closed()
        # 1012, service restart: WSE clients come back later
        assert (ws.close_code, ws.close_reason) == (1012, CLOSE_REASON[name]), output
        assert status == EXIT_STATUS[name], output
        assert "joined: alice" in output and "left: alice 1012" in output, output
        assert "WSE server closed" in output, output  # the lifespan / on_shutdown hook ran
        assert "Traceback" not in output and "ERROR" not in output, output
    finally:
        if example.proc.returncode is None:
            example.proc.kill()
            await example.proc.wait()
