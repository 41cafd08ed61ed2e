"""Challenge-response authentication with a shared key per user: HMAC-SHA256 over a nonce.

Server::

    auth = HmacChallenge(lambda identity: KEYS.get(identity))  # may also be a coroutine

    async def identify(req):
        if await auth.verify(req):
            req.accept(req.identity)
        else:
            req.refuse()

    server = WseServer(identify=identify)
    server.use_challenge(auth)

Client: ``client.challenge(hmac_solver(key))``.

The quest (``~wse:challenge`` payload, JSON-serialisable) is::

    {"alg": "HMAC-SHA256", "nonce": "<64 lowercase hex digits>", "ts": <int, Unix seconds>,
     "identity": "<the identity the client sent>"}

and the answer is the lowercase hex HMAC-SHA256, keyed with the user's key, of the UTF-8 text
``alg + ":" + nonce + ":" + ts + ":" + identity`` (``ts`` in decimal). Only ``identity`` may
contain ``:``, and it comes last, so the text is unambiguous. In JavaScript, with ``q`` the
quest and ``key`` the key (a Buffer or Uint8Array) — node:crypto::

    createHmac("sha256", key).update([q.alg, q.nonce, q.ts, q.identity].join(":")).digest("hex")

Web Crypto (browsers, Node, Deno)::

    const text = new TextEncoder().encode([q.alg, q.nonce, q.ts, q.identity].join(":"));
    const hmacKey = await crypto.subtle.importKey(
      "raw", key, {name: "HMAC", hash: "SHA-256"}, false, ["sign"]);
    const mac = new Uint8Array(await crypto.subtle.sign("HMAC", hmacKey, text));
    const answer = Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join("");

What the server guarantees:

- the nonce comes from :func:`secrets.token_bytes`; every quest is recorded by the server
  and each record is used once: a replayed answer fails, and so does an answer to a quest
  this server did not issue;
- a quest expires ``ttl`` seconds after it was issued, by the server's own record of when,
  kept on a monotonic clock (a wall clock stepped by NTP or by hand neither revives expired
  quests nor expires fresh ones); the ``ts`` a client sees, wall-clock Unix seconds, is
  informative and only has to come back unchanged: nothing the client says about time is
  trusted;
- the answer covers the identity, so an answer for one user is no answer for another, even
  if they share a key;
- the record of outstanding quests holds at most ``max_outstanding`` entries (oldest go
  first), so strangers opening connections cannot grow it without limit;
- every identity that is a string gets the same kind of quest, whether or not the user
  exists (``secret_for`` is asked only once the answer arrives), and an unknown user's answer
  is checked against a random decoy key in the same way: nothing tells an unknown user from a
  wrong key (except whatever time ``secret_for`` itself takes);
- answers are compared with :func:`hmac.compare_digest`; keys are never logged or sent.

Non-string identities are refused before any quest (this says nothing about which users
exist). Identities that are not valid Unicode (lone surrogates) always fail.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .authentication import IdentifyRequest

#: The value of the quest's ``alg`` field.
ALG = "HMAC-SHA256"

KeyLookup = Callable[[str], bytes | Awaitable[bytes | None] | None]
Solver = Callable[[Any, Callable[[Any], None]], None]


def _mac(key: bytes, nonce: str, ts: int, identity: str) -> str:
    text = f"{ALG}:{nonce}:{ts}:{identity}"
    # Strict UTF-8: an identity with lone surrogates raises here, as JavaScript would encode
    # them as U+FFFD and the two sides could never agree.
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def _fields(quest: Any) -> tuple[str, int, str]:
    """The quest's nonce, ts and identity, or ValueError when it is not an HMAC quest."""
    if not isinstance(quest, Mapping) or quest.get("alg") != ALG:
        raise ValueError(f"not an {ALG} quest")
    nonce, ts, identity = quest.get("nonce"), quest.get("ts"), quest.get("identity")
    # One spelling per nonce (lowercase hex, no spaces), so the text that is signed is the
    # text the server derives from its own record.
    if not isinstance(nonce, str) or bytes.fromhex(nonce).hex() != nonce:
        raise ValueError("quest nonce is not lowercase hex")
    if type(ts) is not int or not isinstance(identity, str):
        raise ValueError("quest ts is not an int or identity not a string")
    return nonce, ts, identity


def hmac_answer(key: bytes, quest: Any) -> str:
    """The answer to an :class:`HmacChallenge` quest with ``key``, as lowercase hex.

    Raises ValueError when ``quest`` is not such a quest (a solver should not answer it).
    """
    nonce, ts, identity = _fields(quest)
    return _mac(key, nonce, ts, identity)


def hmac_solver(key: bytes) -> Solver:
    """The client side: ``client.challenge(hmac_solver(key))`` answers with ``key``.

    A quest that is not an :class:`HmacChallenge` quest raises ValueError, so nothing is sent
    (the client reports the error, and the server refuses after its ``auth_timeout``).
    """
    if not isinstance(key, bytes | bytearray) or not key:
        raise TypeError("hmac_solver needs a non-empty bytes key")
    key = bytes(key)

    def solver(quest: Any, solve: Callable[[Any], None]) -> None:
        solve(hmac_answer(key, quest))

    return solver


class HmacChallenge:
    """The server side: the challenge generator for ``server.use_challenge`` and ``verify``.

    ``secret_for(identity)`` returns the user's key (bytes), or None for an unknown user; it
    may be a coroutine function. ``ttl``: seconds a quest stays answerable. ``nonce_bytes``:
    random bytes per nonce (at least 16). ``max_outstanding``: most quests waiting for an
    answer; past it the oldest are forgotten (their answers then fail). Each costs 200 to 270
    bytes, so the default bounds the record near 2.5 MB; a legitimate client loses its quest
    only if more than that many quests are issued during its round trip. ``clock``: wall-clock
    seconds (``time.time``), used only for the quest's ``ts``. ``monotonic``: seconds that
    never go back (``time.monotonic``), used for expiry.
    """

    __slots__ = (
        "_clock",
        "_decoy",
        "_issued",
        "_max",
        "_monotonic",
        "_nonce_bytes",
        "_secret_for",
        "_ttl",
    )

    def __init__(
        self,
        secret_for: KeyLookup,
        *,
        ttl: float = 30.0,
        nonce_bytes: int = 32,
        max_outstanding: int = 10_000,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not callable(secret_for):
            raise TypeError("secret_for must be callable")
        if not ttl > 0:
            raise ValueError("ttl must be positive")
        if nonce_bytes < 16:
            raise ValueError("nonce_bytes must be at least 16")
        if max_outstanding < 1:
            raise ValueError("max_outstanding must be at least 1")
        self._secret_for = secret_for
        self._ttl = float(ttl)
        self._nonce_bytes = nonce_bytes
        self._max = max_outstanding
        self._clock = clock
        self._monotonic = monotonic
        # nonce -> (monotonic time of issue, the ts sent). Issue order is expiry order, so
        # expired records are found at the front.
        self._issued: OrderedDict[bytes, tuple[float, int]] = OrderedDict()
        # Unknown users' answers are checked against this, so they cost the same as a wrong key.
        self._decoy = secrets.token_bytes(32)

    def __repr__(self) -> str:
        return f"<HmacChallenge ttl={self._ttl} outstanding={len(self._issued)}>"

    @property
    def outstanding(self) -> int:
        """How many issued quests are still recorded (waiting for an answer or to expire)."""
        return len(self._issued)

    def issue(self, identity: str) -> dict[str, Any]:
        """A new quest for ``identity``, recorded as outstanding."""
        now = self._monotonic()
        issued = self._issued
        while issued:
            oldest, _ = next(iter(issued.values()))
            if now - oldest <= self._ttl:
                break
            issued.popitem(last=False)
        while len(issued) >= self._max:
            issued.popitem(last=False)
        nonce = secrets.token_bytes(self._nonce_bytes)
        ts = int(self._clock())
        issued[nonce] = (now, ts)
        return {"alg": ALG, "nonce": nonce.hex(), "ts": ts, "identity": identity}

    def __call__(
        self, identity: Any, meta: Any, quest: Callable[[Any], None], refuse: Callable[[], None]
    ) -> None:
        """The challenge generator: ``server.use_challenge(auth)``."""
        if isinstance(identity, str):
            quest(self.issue(identity))
        else:
            refuse()

    async def verify(self, req: IdentifyRequest) -> bool:
        """True when ``req`` answers a quest of this object for ``req.identity`` correctly.

        False too when the server has no challenge (``use_challenge(auth)`` was forgotten).
        """
        if req.challenge is None:
            return False
        return await self.verify_answer(req.identity, req.challenge.quest, req.challenge.response)

    async def verify_answer(self, identity: Any, quest: Any, answer: Any) -> bool:
        """True when ``answer`` is the right answer by ``identity`` to ``quest``, issued here,
        not answered before and not expired. The quest is used up whatever the outcome."""
        now = self._monotonic()
        try:
            nonce, ts, quest_identity = _fields(quest)
            record = self._issued.pop(bytes.fromhex(nonce), None)
        except ValueError:
            return False
        if record is None:
            return False
        issued_at, issued_ts = record
        if ts != issued_ts or now - issued_at > self._ttl:
            return False
        if not isinstance(identity, str) or identity != quest_identity:
            return False
        found = self._secret_for(identity)
        key = await found if inspect.isawaitable(found) else found
        if key is not None and not isinstance(key, bytes | bytearray):
            raise TypeError(f"secret_for returned {type(key).__name__}, not bytes or None")
        known = bool(key)  # an empty key would let anyone answer: treated as no key
        try:
            expected = _mac(bytes(key) if key else self._decoy, nonce, ts, identity)
        except UnicodeEncodeError:
            return False
        given = answer.encode("utf-8", "surrogatepass") if isinstance(answer, str) else b""
        return hmac.compare_digest(expected.encode("ascii"), given) and known
