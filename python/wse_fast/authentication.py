"""The server's authentication flow: a stranger's hi, an optional challenge, ``identify``,
then accepted or refused.

The session (:mod:`.sansio.session`) keeps the state and builds the frames; this module runs
the application's ``identify`` and challenge generator (plain or coroutine functions), the
authentication deadline, and hands accepted connections to the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .constants import CLOSE_NORMAL, WSE_ERROR, WSE_REASON, Cid
from .errors import WseError
from .events import run_handler

if TYPE_CHECKING:
    from .handshake import HandshakeRequest
    from .options import ServerLimits
    from .server_connection import ServerConnection


@dataclass(frozen=True, slots=True)
class Challenge:
    """What the challenge generator asked (``quest``) and what the client answered."""

    quest: Any
    response: Any


class AuthenticationHost(Protocol):
    """What the flow needs of its server."""

    identify: Callable[[IdentifyRequest], Any]
    challenger: Callable[..., Any] | None
    limits: ServerLimits

    def admitted(self, conn: ServerConnection, cid: Cid, welcome: Any) -> None: ...

    def refuse(self, conn: ServerConnection, code: int, reason: str) -> None: ...

    def report(self, error: WseError, conn: ServerConnection) -> None: ...


class IdentifyRequest:
    """Handed to ``identify``: answer with ``accept(cid, welcome)`` or ``refuse()``, once."""

    __slots__ = ("_answered", "_flow", "challenge", "conn", "conn_id", "identity", "meta")

    def __init__(
        self, flow: Authentication, conn: ServerConnection, challenge: Challenge | None
    ) -> None:
        self._flow = flow
        self._answered = False
        self.conn = conn
        self.conn_id = conn.conn_id
        self.identity = conn.identity
        self.meta = conn.meta
        self.challenge = challenge

    @property
    def request(self) -> HandshakeRequest | None:
        """The upgrade request (path, query, headers, cookies, remote address, the
        framework's own request), while the connection authenticates; released once it is
        accepted or refused."""
        return self.conn.handshake

    def accept(self, cid: Cid, welcome: Any = None) -> None:
        """Admits the connection as a device of user ``cid``, kept as given: any hashable
        value, and ``1`` and ``"1"`` are two users (as keys of JavaScript's ``Map``); a falsy
        cid refuses. An unhashable cid raises TypeError (identify then fails: refused)."""
        if self._answered:
            return
        hash(cid)  # before answering: a cid that cannot be a key is the caller's mistake
        self._answered = True
        if not cid:
            self._flow.refuse(self.conn)
        else:
            self._flow.host.admitted(self.conn, cid, welcome)

    def refuse(self) -> None:
        if not self._answered:
            self._answered = True
            self._flow.refuse(self.conn)


class Authentication:
    """One server's authentication flow, for each of its strangers."""

    __slots__ = ("host",)

    def __init__(self, host: AuthenticationHost) -> None:
        self.host = host

    def opened(self, conn: ServerConnection) -> asyncio.TimerHandle:
        """A stranger's WebSocket is open: its deadline starts."""
        loop = asyncio.get_running_loop()
        return loop.call_later(self.host.limits.auth_timeout, self.refuse, conn)

    def hello(self, conn: ServerConnection) -> None:
        """The stranger said hi (``conn.identity`` and ``conn.meta`` are set)."""
        challenger = self.host.challenger
        if challenger is None:
            self.identify(conn, None)
            return

        def quest(q: Any) -> None:
            if conn.open:
                frame = conn.session.challenge(q)
                if frame is not None:
                    conn.send_frame(frame)

        run_handler(
            challenger,
            (conn.identity, conn.meta, quest, lambda: self.refuse(conn)),
            lambda exc: self.failed(conn, exc),
            conn.track,
        )

    def identify(self, conn: ServerConnection, response: Any) -> None:
        """Asks ``identify``; with a challenge, it sees the quest and the client's answer."""
        challenge = None
        if self.host.challenger is not None:
            quest = conn.session.quest
            challenge = Challenge(quest[0] if quest else None, response)
        req = IdentifyRequest(self, conn, challenge)
        run_handler(self.host.identify, (req,), lambda exc: self.failed(conn, exc), conn.track)

    def failed(self, conn: ServerConnection, exc: BaseException) -> None:
        err = WseError(WSE_ERROR.MESSAGE_PROCESSING_ERROR, {"error": repr(exc), "stage": "auth"})
        err.__cause__ = exc
        self.host.report(err, conn)
        self.refuse(conn)

    def refuse(self, conn: ServerConnection) -> None:
        if not conn.session.valid:
            self.host.refuse(conn, CLOSE_NORMAL, WSE_REASON.NOT_AUTHORIZED)
