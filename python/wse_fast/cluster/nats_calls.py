"""Calls to users across NATS (see :mod:`wse_fast.cluster.nats_cluster` for the whole
design): a call goes to the user's newest connection on any live node, by request/reply on
``<prefix>.call.<node>``; this node answers the calls made to its own connections (and its
link's ping) on its subject, each call in a task of its own, none while it drains.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import msgpack

from ..constants import WSE_ERROR, Cid
from ..errors import ConnectionNotReady, RpcError, WseError
from ..rpc import deadline
from .broker import cid_from_text, cid_text
from .nats_client import Msg
from .nats_link import CLUSTER_UNAVAILABLE, NatsLink
from .nats_presence import NatsPresence

if TYPE_CHECKING:
    from .broker import BrokerHandler

#: Seconds a call waits beyond its own timeout for the other node's answer to arrive.
_CALL_MARGIN = 1.0
#: What a call without a deadline waits for the other node at most (NATS requests have one).
_NO_DEADLINE = 24 * 3600.0
#: Calls from other nodes running at once on this one.
_CALLS_AT_ONCE = 1024


class NatsCalls:
    """The calls one node makes to users on others, and answers for its own."""

    def __init__(self, link: NatsLink, presence: NatsPresence, handler: BrokerHandler) -> None:
        self._link = link
        self._presence = presence
        self._node = handler
        self._calls: set[asyncio.Task[None]] = set()  # calls from other nodes, running

    async def call(self, cid: Cid, rp: str, payload: Any, timeout: float | None) -> Any:
        """Calls the user's newest connection on any live node (an older one when the newest
        is gone by the time the call reaches it). The call's time limit bounds the lookup of
        the user's connections too, and what is left of it the call."""
        loop = asyncio.get_running_loop()
        limit = deadline(self._node.timeout, timeout)  # None: no deadline
        until = None if limit is None else loop.time() + limit
        entries = await self._presence.lookup(cid, limit)

        def left() -> float | None:
            # what the caller asked (None: the server's default, 0: none) when unbounded
            return timeout if until is None else max(until - loop.time(), 0.001)

        me = self._link.node
        for node, ref in reversed(entries):
            if node == me:
                conn = self._presence.local(cid, ref)
                if conn is not None:
                    return await conn.call(rp, payload, left())
            elif node in self._link.alive:
                try:
                    return await self._remote_call(node, cid, ref, rp, payload, left())
                except ConnectionNotReady:
                    continue
        local = self._node.user_connections(cid)
        if local:  # accepted here, not yet in the list
            return await local[-1].call(rp, payload, left())
        raise ConnectionNotReady({"rpc": rp, "cid": cid})

    async def finish(self, timeout: float) -> None:
        """Waits up to ``timeout`` seconds for the calls other nodes made to this node's users
        to be answered (the server's drain: a closing node takes no new ones, and its link
        stays up until it stops)."""
        if self._calls and timeout > 0:
            await asyncio.wait(list(self._calls), timeout=timeout)

    def cancel(self) -> None:
        for task in list(self._calls):
            task.cancel()

    async def _remote_call(
        self, node: str, cid: Cid, ref: str, rp: str, payload: Any, timeout: float | None
    ) -> Any:
        limit = deadline(self._node.timeout, timeout)  # None: no deadline
        request = {"cid": cid_text(cid), "ref": ref, "rp": rp, "p": payload, "t": limit or 0}
        request = msgpack.packb(request)
        try:
            reply = await self._link.request(
                node, request, timeout=limit + _CALL_MARGIN if limit else _NO_DEADLINE
            )
            answer = msgpack.unpackb(reply)
        except Exception as exc:  # no responders, a timeout, a lost link, a garbled reply
            raise WseError(CLUSTER_UNAVAILABLE, {"error": repr(exc), "node": node}) from exc
        if isinstance(answer, dict) and "ok" in answer:
            return answer["ok"]
        error = answer.get("err") if isinstance(answer, dict) else None
        if not isinstance(error, dict) or not isinstance(error.get("code"), str):
            raise WseError(CLUSTER_UNAVAILABLE, {"error": "a reply not understood", "node": node})
        details = error.get("details") if isinstance(error.get("details"), dict) else None
        message = error.get("message") if isinstance(error.get("message"), str) else None
        if error.get("rpc"):  # the device answered with an error, as a local call would get
            raise RpcError(error["code"], details, message)
        raise WseError.from_code(error["code"], details, message)

    async def on_call(self, msg: Msg) -> None:
        """Answers a ping at once; runs a call in a task of its own, so that a slow procedure
        holds up neither the other calls to this node nor its health check."""
        try:
            request = msgpack.unpackb(msg.data)
        except Exception:
            return
        if not isinstance(request, dict):
            return
        if request.get("ping"):
            with contextlib.suppress(Exception):
                await msg.respond(b"\x01")
            return
        if self._node.closing:
            # draining: no new work here; the caller tries the user's other connections
            refused = {
                "code": WSE_ERROR.CONNECTION_NOT_READY,
                "details": {"rpc": request.get("rp")},
            }
            with contextlib.suppress(Exception):
                await msg.respond(msgpack.packb({"err": refused}))
            return
        if len(self._calls) >= _CALLS_AT_ONCE:
            busy = {"code": CLUSTER_UNAVAILABLE, "details": {"error": "node busy"}}
            with contextlib.suppress(Exception):
                await msg.respond(msgpack.packb({"err": busy}))
            return
        task = asyncio.ensure_future(self._answer(msg, request))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _answer(self, msg: Msg, request: dict[str, Any]) -> None:
        try:
            cid = cid_from_text(str(request["cid"]))
            ref, rp = str(request["ref"]), str(request["rp"])
            conn = self._presence.local(cid, ref)
            if conn is None:
                raise ConnectionNotReady({"rpc": rp})
            timeout = request.get("t")
            # 0: no deadline, as the caller asked (None would be this server's default)
            result = await conn.call(rp, request.get("p"), 0 if not timeout else float(timeout))
            answer = msgpack.packb({"ok": result})
        except WseError as exc:
            error = {"code": exc.code, "details": exc.details, "message": exc.message}
            try:
                answer = msgpack.packb({"err": {**error, "rpc": isinstance(exc, RpcError)}})
            except Exception:  # details msgpack cannot carry: the code alone
                answer = msgpack.packb({"err": {"code": exc.code, "rpc": True}})
        except Exception as exc:  # a bad request, or a result msgpack cannot carry
            error = {"code": WSE_ERROR.RP_EXECUTION_FAILED, "details": {"error": repr(exc)}}
            answer = msgpack.packb({"err": error})
        with contextlib.suppress(Exception):
            await msg.respond(answer)
