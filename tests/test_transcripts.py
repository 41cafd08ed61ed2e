"""Replays the exchanges recorded from JavaScript WSE 4.12.3 (tests/vectors, see its README).

Server sessions: a raw RFC 6455 client (the ``websockets`` library) plays the recorded client
frames against a wse-fast server set up like the recorded one, and expects the recorded
server frames and close. Client sessions: a raw ``websockets`` server plays the recorded
server frames to a wse-fast client, and expects what the JavaScript client sent.
Random stamps match any stamp (and are then carried into later frames); stack traces are not
compared, since wse-fast does not send them unless asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.server import ServerConnection
from wse_fast import IdentifyRequest, WseClient, WseError, WseServer

from tests.conftest import ClientFactory, ServerFactory

VECTORS = Path(__file__).resolve().parent / "vectors" / "reference-transcripts.json"
SESSIONS: dict[str, list[dict[str, Any]]] = json.loads(VECTORS.read_text())["sessions"]
SERVER_SESSIONS = [name for name, s in SESSIONS.items() if "offered_protocols" not in s[0]]
CLIENT_SESSIONS = [name for name, s in SESSIONS.items() if "offered_protocols" in s[0]]
STAMP = re.compile(r"^[A-Za-z0-9]{10}$")


class Error(Exception):
    """Named like JavaScript's Error, so that ``origin.name`` matches the recording."""


def strip_stacks(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_stacks(v) for k, v in value.items() if k != "stack"}
    if isinstance(value, list):
        return [strip_stacks(v) for v in value]
    return value


class StampMap:
    """Pairs the recording's random stamps with the ones seen in this run."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def match(self, recorded: list[Any], actual: list[Any]) -> None:
        recorded, actual = strip_stacks(recorded), strip_stacks(actual)
        if len(recorded) == 3 and isinstance(recorded[2], str) and len(actual) == 3:
            assert isinstance(actual[2], str) and STAMP.match(actual[2]), actual
            self.seen.setdefault(recorded[2], actual[2])
            recorded = [*recorded[:2], self.seen[recorded[2]]]
        assert actual == recorded

    def substitute(self, recorded: list[Any]) -> list[Any]:
        if len(recorded) == 3 and recorded[2] in self.seen:
            return [*recorded[:2], self.seen[recorded[2]]]
        return recorded


def pick(run: list[list[Any]], actual: list[Any], stamps: StampMap) -> list[Any]:
    """The recorded frame that ``actual`` stands for: the same type, and the same stamp where
    the stamp is known (one the server sent, or one already paired)."""
    same_type = [r for r in run if r[0] == actual[0]]
    stamp = actual[2] if len(actual) == 3 else None
    for r in same_type:
        if len(r) == 3 and r[2] is not None and stamps.seen.get(r[2], r[2]) == stamp:
            return r
    for r in same_type:
        if len(r) < 3 or r[2] is None or r[2] not in stamps.seen:
            return r
    raise AssertionError(f"{actual} is none of {run}")


# ---- the server side -----------------------------------------------------------------------


def identify(req: IdentifyRequest) -> None:
    if req.challenge is not None:
        if req.challenge.response == req.challenge.quest["a"] + req.challenge.quest["b"]:
            req.accept("someone", "ok")
        else:
            req.refuse()
    elif req.identity == "valid-secret":
        req.accept(req.meta.get("user_id", "u1"), {"hey": "welcome data"})
    else:
        req.refuse()


def set_up_like_the_recording(server: WseServer) -> None:
    server.channel.on("hello", lambda conn, p: conn.send("hello-back", {"got": p}))
    server.channel.on("bcast", lambda conn, p: server.broadcast("announcement", p))
    server.channel.on("to-user", lambda conn, p: server.send(conn.cid, "personal", p))

    @server.channel.on("ask-client")
    async def ask_client(conn: Any, p: Any) -> None:
        with contextlib.suppress(WseError):  # the recorder hangs up without answering
            await conn.call("client-rp", p)

    server.register("add", lambda conn, p: p["a"] + p["b"])
    server.register("returns-undefined", lambda conn, p: None)

    @server.register("throw-vanilla")
    def throw_vanilla(conn: Any, p: Any) -> None:
        raise Error("boom")

    @server.register("throw-custom")
    def throw_custom(conn: Any, p: Any) -> None:
        raise Exception({"test_field": "nope"})  # JavaScript's throw {...}


@pytest.mark.parametrize("name", SERVER_SESSIONS)
async def test_server_answers_like_the_reference(make_server: ServerFactory, name: str) -> None:
    session = SESSIONS[name]
    # debug: failing procedures describe themselves to the caller, as the reference's do
    server = await make_server(identify, debug=True)
    set_up_like_the_recording(server)
    if name.startswith("cra_"):
        server.use_challenge(
            lambda identity, meta, quest, refuse: (
                refuse() if identity == "bad" else quest({"a": 1, "b": 2})
            )
        )
    url = f"ws://127.0.0.1:{server.port}"

    if "handshake_error" in session[0]:
        # The reference answered a wrong subprotocol with its own, which RFC clients reject;
        # wse-fast upgrades without one and closes with the reason a WSE client understands.
        async with websockets.connect(url, subprotocols=["not-wse"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol is None
            with pytest.raises(websockets.ConnectionClosedOK):
                await ws.recv()
            assert (ws.close_code, ws.close_reason) == (1000, "wse.protocol-error")
        return

    stamps = StampMap()
    async with websockets.connect(url, subprotocols=["wse-default-json"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == session[0]["negotiated_protocol"]
        for step in session[1:]:
            if step["dir"] == "c2s":
                await ws.send(step["data"])
            elif "close" in step:
                code, reason = step["close"]["code"], step["close"]["reason"]
                if code == 1005:  # the recorder hung up itself
                    await ws.close()
                elif reason == "wse.by-client":  # the server's echo of the recorder's close
                    await ws.close(code, reason)
                    rcvd = ws.protocol.close_rcvd
                    assert rcvd is not None and (rcvd.code, rcvd.reason) == (code, reason)
                else:
                    with pytest.raises(websockets.ConnectionClosedOK):
                        await asyncio.wait_for(ws.recv(), 5)
                    assert (ws.close_code, ws.close_reason) == (code, reason)
            else:
                frame = await asyncio.wait_for(ws.recv(), 5)
                assert isinstance(frame, str) and not step["binary"]  # JSON goes in text frames
                stamps.match(json.loads(step["data"]), json.loads(frame))


# ---- the client side -----------------------------------------------------------------------


async def drive_client(name: str, client: WseClient, done: asyncio.Event) -> None:
    if name == "client_connect_call":
        assert await client.connect("my-identity", {"device": "desktop"}) == {"hey": 1}
        assert await client.call("add", {"a": 2, "b": 2}) == 4
        with pytest.raises(WseError) as err:
            await client.call("fail", 1)
        assert err.value.code == "wse.server.rp.not-registered"
        client.send("chat", {"text": "hi"})
        client.send("no-payload")
    elif name == "client_challenge":
        client.challenge(lambda quest, solve: solve(quest["nonce"] + "-solved"))
        assert await client.connect("id") == "cra-ok"
    elif name == "client_answers_server_rpc":
        client.register("client-rp", lambda p: {"echoed": p})

        @client.register("client-throws")
        def throws(p: Any) -> None:
            raise Error("client boom")

        assert await client.connect("id") is None
        await done.wait()  # the server has read the three answers
    elif name == "client_rpc_timeout":
        assert await client.connect("id") is None
        with pytest.raises(WseError) as err:
            await client.call("never", 1, timeout=0.1)
        assert err.value.code == "wse.client.rp.timeout"
    await client.close()


@pytest.mark.parametrize("name", CLIENT_SESSIONS)
async def test_client_sends_like_the_reference(make_client: ClientFactory, name: str) -> None:
    session = SESSIONS[name]
    failures: list[BaseException] = []
    answered = asyncio.Event()
    finished = asyncio.Event()

    async def play(ws: ServerConnection) -> None:
        stamps = StampMap()
        try:
            assert ws.request is not None
            offered = ws.request.headers.get("Sec-WebSocket-Protocol")
            assert [offered] == session[0]["offered_protocols"]
            steps = [s for s in session[1:] if "dir" in s]
            i = 0
            while i < len(steps):
                step = steps[i]
                if step["dir"] == "s2c":
                    await ws.send(json.dumps(stamps.substitute(json.loads(step["data"]))))
                    i += 1
                elif "close" in step:
                    with pytest.raises(websockets.ConnectionClosedOK):
                        await asyncio.wait_for(ws.recv(), 5)
                    assert (ws.close_code, ws.close_reason) == (
                        step["close"]["code"],
                        step["close"]["reason"],
                    )
                    i += 1
                else:
                    # Answers to concurrent calls may leave in any order: compare each run of
                    # client frames as a set.
                    run = []
                    while i < len(steps) and steps[i]["dir"] == "c2s" and "data" in steps[i]:
                        run.append(json.loads(steps[i]["data"]))
                        i += 1
                    got = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in run]
                    for actual in got:
                        recorded = pick(run, actual, stamps)
                        stamps.match(recorded, actual)
                        run.remove(recorded)
                    if len(got) == 3:
                        answered.set()
        except BaseException as exc:
            failures.append(exc)
            answered.set()
        finally:
            finished.set()

    async with websockets.serve(play, "127.0.0.1", 0, subprotocols=["wse-default-json"]) as raw:  # type: ignore[list-item]
        port = raw.sockets[0].getsockname()[1]
        client = make_client(f"ws://127.0.0.1:{port}")
        client.debug = True  # failing procedures describe themselves, as the reference's do
        await drive_client(name, client, answered)
        await asyncio.wait_for(finished.wait(), 5)
    if failures:
        raise failures[0]
