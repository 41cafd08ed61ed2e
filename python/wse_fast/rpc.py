"""RPC bookkeeping shared by both sides: stamps, error payloads, calls awaiting an answer."""

from __future__ import annotations

import asyncio
import inspect
import random
import string
import traceback
from collections.abc import Callable
from typing import Any

from .constants import WSE_ERROR
from .errors import WseError
from .protocols import InternalTypes

_STAMP_CHARS = string.ascii_letters + string.digits


def make_stamp() -> str:
    """10 characters of ``[A-Za-z0-9]``, like the reference. Stamps only pair answers with
    calls on one connection, so they need to be unlikely to collide, not unguessable."""
    return "".join(random.choices(_STAMP_CHARS, k=10))


def error_payload(exc: BaseException, name: str, payload: Any, debug: bool) -> dict[str, Any]:
    """The ``~wse:response-err`` payload for an exception raised by the handler of ``name``.

    - :class:`WseError`: its code and details (``rpc`` and ``payload`` added when absent);
    - an exception whose only argument is a dict stands for JavaScript's ``throw {...}``: the
      dict's fields become the details;
    - any other exception: its type name and message. The stack trace goes to the peer only
      when the server runs with ``debug=True``: it describes the server, not the request.
    """
    if isinstance(exc, WseError):
        details = dict(exc.details)
        details.setdefault("rpc", name)
        details.setdefault("payload", payload)
        return {"code": exc.code, "details": details}
    if len(exc.args) == 1 and isinstance(exc.args[0], dict):
        details = {**exc.args[0], "rpc": name, "payload": payload}
        return {
            "code": WSE_ERROR.RP_EXECUTION_FAILED,
            "message": "RPC execution failed",
            "details": details,
        }
    origin: dict[str, Any] = {"name": type(exc).__name__, "message": str(exc)}
    if debug:
        origin["stack"] = "".join(traceback.format_exception(exc))
    return {
        "code": WSE_ERROR.RP_EXECUTION_FAILED,
        "message": str(exc),
        "details": {"origin": origin, "rpc": name, "payload": payload},
    }


def error_from_payload(error: Any) -> WseError:
    """The caller's view of a ``~wse:response-err`` payload."""
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        details = error.get("details")
        return WseError(
            error["code"], details if isinstance(details, dict) else None, error.get("message")
        )
    return WseError(WSE_ERROR.RP_EXECUTION_FAILED, {"error": error})


class PendingCalls:
    """Outgoing calls of one connection waiting for their answer, each with a deadline."""

    __slots__ = ("_calls", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: dict[str, tuple[asyncio.Future[Any], asyncio.TimerHandle | None]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def open(self, timeout: float | None) -> tuple[str, asyncio.Future[Any]]:
        stamp = make_stamp()
        while stamp in self._calls:
            stamp = make_stamp()
        future: asyncio.Future[Any] = self._loop.create_future()
        timer = None
        if timeout is not None:
            timer = self._loop.call_later(timeout, self._expire, stamp, timeout)
        self._calls[stamp] = (future, timer)
        return stamp, future

    def resolve(self, stamp: str, result: Any) -> bool:
        future = self._settle(stamp)
        if future is not None:
            future.set_result(result)
        return future is not None

    def reject(self, stamp: str, error: WseError) -> bool:
        future = self._settle(stamp)
        if future is not None:
            future.set_exception(error)
        return future is not None

    def _settle(self, stamp: str) -> asyncio.Future[Any] | None:
        """Takes the call off the table: its future if it still waits, else None."""
        entry = self._calls.pop(stamp, None)
        if entry is None:
            return None
        future, timer = entry
        if timer is not None:
            timer.cancel()
        return None if future.done() else future  # done: the caller gave up (cancelled)

    def reject_all(self, error_code: str, details: dict[str, Any]) -> None:
        for stamp in list(self._calls):
            self.reject(stamp, WseError(error_code, details))

    def _expire(self, stamp: str, timeout: float) -> None:
        self.reject(stamp, WseError(WSE_ERROR.RP_TIMEOUT, {"timeout": timeout}))


Reply = Callable[[str, Any, str], None]


def answer_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    name: str,
    payload: Any,
    stamp: str,
    reply: Reply,
    types: InternalTypes,
    debug: bool,
) -> None:
    """Runs an RPC handler and sends its result or error under ``stamp``.

    A plain function is answered at once, in the same loop turn; a coroutine runs as a task.
    """

    def send_result(result: Any) -> None:
        try:
            reply(types.response, result, stamp)
        except TypeError as exc:  # the result cannot be serialised: tell the caller why
            send_error(exc)

    def send_error(exc: BaseException) -> None:
        reply(types.response_error, error_payload(exc, name, payload, debug), stamp)

    try:
        result = fn(*args)
    except Exception as exc:
        send_error(exc)
        return
    if not inspect.isawaitable(result):
        send_result(result)
        return

    def done(task: asyncio.Future[Any]) -> None:
        _running.discard(task)
        if task.cancelled():
            send_error(asyncio.CancelledError("the call was cancelled"))
        elif (exc := task.exception()) is not None:
            send_error(exc)
        else:
            send_result(task.result())

    task = asyncio.ensure_future(result)
    _running.add(task)
    task.add_done_callback(done)


_running: set[asyncio.Future[Any]] = set()
