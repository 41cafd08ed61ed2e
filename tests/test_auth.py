"""wse_fast.hmac_challenge: HMAC challenge-response, as pure functions and against a real server."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from wse_fast import WSE_ERROR, WSE_REASON, IdentifyRequest, WseError, WseServer
from wse_fast import hmac_challenge as auth_module
from wse_fast.hmac_challenge import ALG, HmacChallenge, hmac_answer, hmac_solver

from tests.conftest import ClientFactory, ServerFactory

ALICE_KEY = b"alice's key"
BOB_KEY = b"bob's key"


class FakeClock:
    """Seconds that move only when a test says so (a wall clock, or a monotonic one)."""

    def __init__(self, now: float = 1_700_000_000.25) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def identify_with(auth: HmacChallenge) -> Callable[[IdentifyRequest], Awaitable[None]]:
    async def identify(req: IdentifyRequest) -> None:
        if await auth.verify(req):
            req.accept(req.identity, {"hello": req.identity})
        else:
            req.refuse()

    return identify


async def serve(make_server: ServerFactory, auth: HmacChallenge) -> WseServer:
    server = await make_server(identify_with(auth))
    server.use_challenge(auth)
    return server


@asynccontextmanager
async def raw_peer(server: WseServer, identity: Any) -> AsyncIterator[ClientConnection]:
    """A `websockets` client that has said hi and is waiting for its quest."""
    async with websockets.connect(
        f"ws://127.0.0.1:{server.port}",
        subprotocols=["wse-default-json"],  # type: ignore[list-item]
    ) as ws:
        await ws.send(json.dumps(["~wse:hi", {"identity": identity, "meta": {}}, None]))
        yield ws


async def receive_quest(ws: ClientConnection) -> dict[str, Any]:
    kind, quest, _ = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert kind == "~wse:challenge"
    assert isinstance(quest, dict)
    return quest


async def answer(ws: ClientConnection, response: Any) -> None:
    await ws.send(json.dumps(["~wse:challenge", response, None]))


async def outcome(ws: ClientConnection) -> str:
    """'welcome', or the reason the server closed the connection with."""
    try:
        kind, _, _ = json.loads(await asyncio.wait_for(ws.recv(), 5))
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None
        return closed.rcvd.reason
    assert kind == "~wse:welcome"
    return "welcome"


# ---- pure functions ---------------------------------------------------------------------------


def test_answer_is_hmac_sha256_of_alg_nonce_ts_identity() -> None:
    quest = {"alg": ALG, "nonce": "00ff" * 16, "ts": 1700000000, "identity": "al:ice ✓"}
    text = "HMAC-SHA256:" + "00ff" * 16 + ":1700000000:al:ice ✓"
    expected = hmac.new(ALICE_KEY, text.encode(), hashlib.sha256).hexdigest()
    assert hmac_answer(ALICE_KEY, quest) == expected
    for field, other in (("nonce", "01ff" * 16), ("ts", 1700000001), ("identity", "bob")):
        assert hmac_answer(ALICE_KEY, {**quest, field: other}) != expected
    assert hmac_answer(BOB_KEY, quest) != expected


@pytest.mark.parametrize(
    "quest",
    [
        None,
        "a string",
        {"nonce": "00" * 32, "ts": 1, "identity": "alice"},  # no alg
        {"alg": "HMAC-SHA1", "nonce": "00" * 32, "ts": 1, "identity": "alice"},
        {"alg": ALG, "nonce": "AB" * 32, "ts": 1, "identity": "alice"},  # not lowercase
        {"alg": ALG, "nonce": "ab cd", "ts": 1, "identity": "alice"},  # spaces
        {"alg": ALG, "nonce": "zz", "ts": 1, "identity": "alice"},
        {"alg": ALG, "nonce": "00" * 32, "ts": "1", "identity": "alice"},
        {"alg": ALG, "nonce": "00" * 32, "ts": True, "identity": "alice"},
        {"alg": ALG, "nonce": "00" * 32, "ts": 1, "identity": 7},
        {"alg": ALG, "nonce": "00" * 32, "ts": 1, "identity": "\ud800"},  # not encodable
    ],
)
def test_answer_refuses_what_is_not_an_hmac_quest(quest: Any) -> None:
    with pytest.raises(ValueError):
        hmac_answer(ALICE_KEY, quest)


def test_quest_format() -> None:
    clock = FakeClock()
    auth = HmacChallenge(lambda identity: None, clock=clock)
    first, second = auth.issue("alice"), auth.issue("alice")
    assert json.loads(json.dumps(first)) == first
    assert set(first) == {"alg", "nonce", "ts", "identity"}
    assert first["alg"] == "HMAC-SHA256" and first["identity"] == "alice"
    assert first["ts"] == 1_700_000_000
    assert len(bytes.fromhex(first["nonce"])) == 32 and first["nonce"] == first["nonce"].lower()
    assert first["nonce"] != second["nonce"]
    assert len(HmacChallenge(lambda identity: None, nonce_bytes=16).issue("a")["nonce"]) == 32


@pytest.mark.parametrize(
    "options", [{"nonce_bytes": 15}, {"ttl": 0}, {"ttl": -1.0}, {"max_outstanding": 0}]
)
def test_unsafe_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        HmacChallenge(lambda identity: None, **options)


async def test_right_answer_verifies_once() -> None:
    auth = HmacChallenge({"alice": ALICE_KEY}.get)
    quest = auth.issue("alice")
    right = hmac_answer(ALICE_KEY, quest)
    assert auth.outstanding == 1
    assert await auth.verify_answer("alice", quest, right)
    assert auth.outstanding == 0
    assert not await auth.verify_answer("alice", quest, right)  # replayed


async def test_a_wrong_answer_uses_the_quest_up() -> None:
    auth = HmacChallenge({"alice": ALICE_KEY}.get)
    quest = auth.issue("alice")
    assert not await auth.verify_answer("alice", quest, hmac_answer(BOB_KEY, quest))
    assert not await auth.verify_answer("alice", quest, hmac_answer(ALICE_KEY, quest))


async def test_expiry_follows_the_servers_record() -> None:
    elapsed = FakeClock(100.0)
    auth = HmacChallenge({"alice": ALICE_KEY}.get, ttl=30.0, monotonic=elapsed)
    on_time, late = auth.issue("alice"), auth.issue("alice")
    elapsed.now += 30.0
    assert await auth.verify_answer("alice", on_time, hmac_answer(ALICE_KEY, on_time))
    elapsed.now += 0.5
    assert not await auth.verify_answer("alice", late, hmac_answer(ALICE_KEY, late))


@pytest.mark.parametrize("jump", [-3600.0, 3600.0])
async def test_expiry_ignores_a_wall_clock_jump(jump: float) -> None:
    # NTP stepping the clock, or an operator setting it: a quest issued a moment ago stays
    # answerable (a jump forward would have expired it), one past its ttl stays expired and
    # is forgotten (a jump back would have kept it); the ts on the wire is the wall clock's.
    wall, elapsed = FakeClock(), FakeClock(100.0)
    auth = HmacChallenge({"alice": ALICE_KEY}.get, ttl=30.0, clock=wall, monotonic=elapsed)
    fresh, stale, unanswered = auth.issue("alice"), auth.issue("alice"), auth.issue("alice")
    assert fresh["ts"] == 1_700_000_000
    wall.now += jump
    elapsed.now += 1.0
    assert await auth.verify_answer("alice", fresh, hmac_answer(ALICE_KEY, fresh))
    elapsed.now += 30.0
    assert not await auth.verify_answer("alice", stale, hmac_answer(ALICE_KEY, stale))
    later = auth.issue("alice")
    assert later["ts"] == int(1_700_000_000.25 + jump)
    assert auth.outstanding == 1  # only ``later``: ``unanswered`` expired and is forgotten
    assert not await auth.verify_answer("alice", unanswered, hmac_answer(ALICE_KEY, unanswered))


async def test_a_quest_with_a_changed_ts_fails() -> None:
    clock = FakeClock()
    auth = HmacChallenge({"alice": ALICE_KEY}.get, clock=clock)
    quest = auth.issue("alice")
    newer = {**quest, "ts": quest["ts"] + 60}  # a client cannot move its quest's time
    assert not await auth.verify_answer("alice", newer, hmac_answer(ALICE_KEY, newer))


async def test_quests_not_issued_here_fail() -> None:
    auth = HmacChallenge({"alice": ALICE_KEY}.get)
    elsewhere = HmacChallenge({"alice": ALICE_KEY}.get).issue("alice")
    assert not await auth.verify_answer("alice", elsewhere, hmac_answer(ALICE_KEY, elsewhere))
    made_up = {"alg": ALG, "nonce": "00" * 32, "ts": 0, "identity": "alice"}
    assert not await auth.verify_answer("alice", made_up, hmac_answer(ALICE_KEY, made_up))
    assert not await auth.verify_answer("alice", None, "00")


async def test_an_answer_binds_the_identity() -> None:
    shared = {"alice": ALICE_KEY, "bob": ALICE_KEY}  # even with one key for both
    auth = HmacChallenge(shared.get)
    quest = auth.issue("bob")
    for_alice = hmac_answer(ALICE_KEY, {**quest, "identity": "alice"})
    assert not await auth.verify_answer("bob", quest, for_alice)
    quest = auth.issue("bob")  # a quest issued to bob's connection does not serve alice
    for_alice = hmac_answer(ALICE_KEY, {**quest, "identity": "alice"})
    assert not await auth.verify_answer("alice", quest, for_alice)


@pytest.mark.parametrize("key", [None, b""])
async def test_unknown_users_and_empty_keys_always_fail(key: bytes | None) -> None:
    asked: list[str] = []

    def secret_for(identity: str) -> bytes | None:
        asked.append(identity)
        return key

    auth = HmacChallenge(secret_for)
    quest = auth.issue("mallory")
    assert asked == []  # the quest did not depend on whether the user exists
    for guess in (hmac_answer(b"", quest), hmac_answer(b"anything", quest), ""):
        quest = auth.issue("mallory")
        assert not await auth.verify_answer("mallory", quest, guess)
    assert asked == ["mallory"] * 3


async def test_odd_answers_fail() -> None:
    auth = HmacChallenge({"alice": ALICE_KEY}.get)
    for odd in (None, 42, ["a"], "é" * 64, "\ud800", hmac_answer(ALICE_KEY, auth.issue("x"))):
        quest = auth.issue("alice")
        assert not await auth.verify_answer("alice", quest, odd)
    quest = auth.issue("alice")
    assert not await auth.verify_answer("alice", quest, hmac_answer(ALICE_KEY, quest).upper())


async def test_secret_for_may_be_a_coroutine() -> None:
    async def secret_for(identity: str) -> bytes | None:
        await asyncio.sleep(0)
        return ALICE_KEY if identity == "alice" else None

    auth = HmacChallenge(secret_for)
    quest = auth.issue("alice")
    assert await auth.verify_answer("alice", quest, hmac_answer(ALICE_KEY, quest))


async def test_a_key_that_is_not_bytes_is_an_error_not_a_pass() -> None:
    auth = HmacChallenge(lambda identity: "alice's key")  # type: ignore[arg-type,return-value]
    quest = auth.issue("alice")
    with pytest.raises(TypeError, match="str, not bytes") as raised:
        await auth.verify_answer("alice", quest, "00")
    assert "alice's key" not in str(raised.value)


async def test_outstanding_quests_stay_bounded_oldest_first() -> None:
    auth = HmacChallenge({"alice": ALICE_KEY}.get, max_outstanding=5)
    quests = [auth.issue(f"stranger-{n}") for n in range(50)] + [auth.issue("alice")]
    assert auth.outstanding == 5
    evicted = auth.issue("alice")
    for _ in range(5):
        auth.issue("stranger")
    assert auth.outstanding == 5
    assert not await auth.verify_answer("alice", evicted, hmac_answer(ALICE_KEY, evicted))
    quest = auth.issue("alice")
    assert await auth.verify_answer("alice", quest, hmac_answer(ALICE_KEY, quest))
    assert quests[-1]["identity"] == "alice"


def test_expired_quests_are_forgotten_when_the_next_is_issued() -> None:
    elapsed = FakeClock(100.0)
    auth = HmacChallenge(lambda identity: None, ttl=10.0, monotonic=elapsed)
    for _ in range(100):
        auth.issue("stranger")
    elapsed.now += 10.5
    auth.issue("stranger")
    assert auth.outstanding == 1


def test_generator_quests_string_identities_and_refuses_others() -> None:
    auth = HmacChallenge(lambda identity: None)
    sent: list[Any] = []
    refused: list[Any] = []
    for identity in ("known", "unknown", None, 7, {"user": "x"}):
        auth(identity, {}, sent.append, lambda: refused.append(identity))  # noqa: B023
    assert [q["identity"] for q in sent] == ["known", "unknown"]
    assert refused == [None, 7, {"user": "x"}]


def test_solver_answers_the_quest_and_nothing_else() -> None:
    quest = HmacChallenge(lambda identity: None).issue("alice")
    solved: list[Any] = []
    hmac_solver(ALICE_KEY)(quest, solved.append)
    assert solved == [hmac_answer(ALICE_KEY, quest)]
    with pytest.raises(ValueError):
        hmac_solver(ALICE_KEY)({"nonce": "whatever"}, solved.append)
    assert len(solved) == 1
    for bad_key in (b"", "alice's key"):
        with pytest.raises(TypeError):
            hmac_solver(bad_key)  # type: ignore[arg-type]


def test_no_key_in_repr() -> None:
    auth = HmacChallenge({"alice": ALICE_KEY}.get)
    auth.issue("alice")
    assert repr(auth) == "<HmacChallenge ttl=30.0 outstanding=1>"


NODE_CRYPTO = (
    'createHmac("sha256", key).update([q.alg, q.nonce, q.ts, q.identity].join(":")).digest("hex")'
)
WEB_CRYPTO = """\
const text = new TextEncoder().encode([q.alg, q.nonce, q.ts, q.identity].join(":"));
const hmacKey = await crypto.subtle.importKey(
  "raw", key, {name: "HMAC", hash: "SHA-256"}, false, ["sign"]);
const mac = new Uint8Array(await crypto.subtle.sign("HMAC", hmacKey, text));
const answer = Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join("");"""


def test_documented_javascript_computes_the_same_answer() -> None:
    doc = auth_module.__doc__
    assert doc is not None
    assert NODE_CRYPTO in doc
    assert "\n".join("    " + line for line in WEB_CRYPTO.splitlines()) in doc
    node = shutil.which("node")
    assert node is not None, "Node.js is part of the test setup (make setup)"
    quest = HmacChallenge(lambda identity: None).issue("ålice:1")
    script = f"""
import {{ createHmac }} from "node:crypto";
const q = JSON.parse(process.argv[1]);
const key = Buffer.from(process.argv[2], "hex");
console.log({NODE_CRYPTO});
{WEB_CRYPTO}
console.log(answer);
"""
    done = subprocess.run(
        [node, "--input-type=module", "-e", script, json.dumps(quest), ALICE_KEY.hex()],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [hmac_answer(ALICE_KEY, quest)] * 2


# ---- against a real server ------------------------------------------------------------------

KEYS = {"alice": ALICE_KEY, "bob": BOB_KEY}


async def test_right_key_is_welcomed(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    server = await serve(make_server, HmacChallenge(KEYS.get))
    client = make_client(server)
    client.challenge(hmac_solver(ALICE_KEY))
    assert await client.connect("alice") == {"hello": "alice"}
    assert set(server.clients) == {"alice"}


async def test_wrong_key_is_refused(make_server: ServerFactory, make_client: ClientFactory) -> None:
    server = await serve(make_server, HmacChallenge(KEYS.get))
    client = make_client(server)
    client.challenge(hmac_solver(BOB_KEY))
    with pytest.raises(WseError) as refused:
        await client.connect("alice")
    assert refused.value.code == WSE_ERROR.NOT_AUTHORIZED
    assert server.clients == {}


async def test_unknown_user_gets_a_quest_like_anyone_then_is_refused(
    make_server: ServerFactory,
) -> None:
    asked: list[str] = []

    def secret_for(identity: str) -> bytes | None:
        asked.append(identity)
        return KEYS.get(identity)

    server = await serve(make_server, HmacChallenge(secret_for))
    async with raw_peer(server, "alice") as known, raw_peer(server, "mallory") as stranger:
        known_quest, strange_quest = await receive_quest(known), await receive_quest(stranger)
        assert asked == []  # both quests were made without asking who exists
        assert {k: type(v) for k, v in known_quest.items()} == {
            k: type(v) for k, v in strange_quest.items()
        }
        assert len(known_quest["nonce"]) == len(strange_quest["nonce"])
        await answer(stranger, hmac_answer(b"a guess", strange_quest))
        assert await outcome(stranger) == WSE_REASON.NOT_AUTHORIZED
    assert asked == ["mallory"]


async def test_replayed_answer_is_refused(make_server: ServerFactory) -> None:
    server = await serve(make_server, HmacChallenge(KEYS.get))
    async with raw_peer(server, "alice") as first:
        captured = hmac_answer(ALICE_KEY, await receive_quest(first))
        await answer(first, captured)
        assert await outcome(first) == "welcome"
    async with raw_peer(server, "alice") as replay:
        await receive_quest(replay)
        await answer(replay, captured)
        assert await outcome(replay) == WSE_REASON.NOT_AUTHORIZED


async def test_expired_quest_is_refused(make_server: ServerFactory) -> None:
    elapsed = FakeClock(100.0)
    server = await serve(make_server, HmacChallenge(KEYS.get, ttl=5.0, monotonic=elapsed))
    async with raw_peer(server, "alice") as peer:
        quest = await receive_quest(peer)
        elapsed.now += 5.5
        await answer(peer, hmac_answer(ALICE_KEY, quest))
        assert await outcome(peer) == WSE_REASON.NOT_AUTHORIZED


async def test_answer_for_another_identity_is_refused(make_server: ServerFactory) -> None:
    one_key = {"alice": ALICE_KEY, "bob": ALICE_KEY}
    server = await serve(make_server, HmacChallenge(one_key.get))
    async with raw_peer(server, "bob") as peer:
        quest = await receive_quest(peer)
        await answer(peer, hmac_answer(ALICE_KEY, {**quest, "identity": "alice"}))
        assert await outcome(peer) == WSE_REASON.NOT_AUTHORIZED
    async with raw_peer(server, "bob") as peer:  # the same key, signed for bob, is welcome
        await answer(peer, hmac_answer(ALICE_KEY, await receive_quest(peer)))
        assert await outcome(peer) == "welcome"


async def test_non_string_identity_is_refused_without_a_quest(make_server: ServerFactory) -> None:
    server = await serve(make_server, HmacChallenge(KEYS.get))
    async with raw_peer(server, {"user": "alice"}) as peer:
        assert await outcome(peer) == WSE_REASON.NOT_AUTHORIZED


async def test_verify_refuses_when_the_server_sends_no_quest(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    auth = HmacChallenge(KEYS.get)
    server = await make_server(identify_with(auth))  # use_challenge(auth) forgotten
    client = make_client(server)
    client.challenge(hmac_solver(ALICE_KEY))
    with pytest.raises(WseError) as refused:
        await client.connect("alice")
    assert refused.value.code == WSE_ERROR.NOT_AUTHORIZED


async def test_outstanding_quests_stay_bounded_under_many_strangers(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    auth = HmacChallenge(KEYS.get, max_outstanding=8)
    server = await serve(make_server, auth)
    async with AsyncExitStack() as strangers:
        for n in range(40):
            peer = await strangers.enter_async_context(raw_peer(server, f"stranger-{n}"))
            await receive_quest(peer)  # every stranger holds an unanswered quest
        assert len(server.connections) == 40
        assert auth.outstanding == 8
        client = make_client(server)
        client.challenge(hmac_solver(ALICE_KEY))
        assert await client.connect("alice") == {"hello": "alice"}


def test_the_old_module_name_still_imports_with_a_deprecation_warning() -> None:
    # a fresh interpreter: the warning comes once, when the module is first imported
    probe = (
        "import warnings\n"
        "warnings.simplefilter('error')\n"
        "try:\n"
        "    import wse_fast.auth\n"
        "except DeprecationWarning as warning:\n"
        "    print(warning)\n"
        "warnings.simplefilter('ignore')\n"
        "import wse_fast.auth, wse_fast.hmac_challenge as new\n"
        "assert wse_fast.auth.HmacChallenge is new.HmacChallenge\n"
        "assert wse_fast.auth.hmac_solver is new.hmac_solver\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert "wse_fast.auth is now wse_fast.hmac_challenge" in done.stdout
