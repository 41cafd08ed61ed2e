"""RPC bookkeeping shared by both sides: stamps, error payloads, calls awaiting an answer."""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from .constants import WSE_ERROR
from .errors import RpcError, RpcTimeout, WseError
from .protocols import InternalTypes
from .sansio.calls import CallTable

#: The message of a failure whose details stay on the server (the reference's own wording).
FAILED = "RPC execution failed"
log = logging.getLogger("wse_fast")


def deadline(default: float | None, timeout: float | None) -> float | None:
    """A call's time limit in seconds, or None for none: ``timeout`` when given, else the
    peer's ``default``; 0 (or less) means no limit, as JavaScript's ``tO: 0``."""
    limit = default if timeout is None else timeout
    return None if limit is None or limit <= 0 else limit


CANCELLED = {"code": WSE_ERROR.RP_EXECUTION_FAILED, "message": "the call was cancelled"}
#: What procedures mostly return: never awaitable, told without ``inspect.isawaitable``
#: (whose check against the ``Awaitable`` ABC costs about ten times as much).
_PLAIN_RESULTS = frozenset({type(None), bool, int, float, str, bytes, list, tuple, dict})


def error_payload(
    exc: BaseException,
    name: str,
    payload: Any,
    debug: bool,
    log_fields: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``~wse:response-err`` payload for an exception raised by the handler of ``name``.

    - :class:`WseError`: its code and details (``rpc`` and ``payload`` added when absent);
    - ``Exception({...})`` (exactly that class, with one dict) stands for JavaScript's
      ``throw {...}``, answered as the reference's ``RpcManager.normalizeError`` answers it:
      with a true ``code`` and true ``details`` (JavaScript's truth: ``{}`` is true) the dict
      is the answer itself, ``rpc`` and ``payload`` added to dict details when absent;
      otherwise the dict's fields become the details of ``wse.server.rp.failed``;
    - anything else says only that the call failed, with an ``error_id`` that the server logs
      beside the full exception: an exception's text describes the server (paths, SQL,
      constraint names), not the request (``log_fields``: the record's ``extra``, the
      connection's ``cid`` and ``conn_id``). With ``debug=True`` the caller also gets its
      type, message and stack trace, as the reference sends them.
    """
    if isinstance(exc, WseError):
        details = dict(exc.details)
        details.setdefault("rpc", name)
        details.setdefault("payload", payload)
        return {"code": exc.code, "details": details}
    if type(exc) is Exception and len(exc.args) == 1 and isinstance(exc.args[0], dict):
        thrown: dict[str, Any] = exc.args[0]
        code, given = thrown.get("code"), thrown.get("details")
        if _js_true(code) and _js_true(given):  # throw {code, details}: the answer as is
            if isinstance(given, dict):
                given = dict(given)
                given.setdefault("rpc", name)
                given.setdefault("payload", payload)
            # other details (a list, a text) go unchanged: the reference answers a list
            # without them, and never answers a text (setting a property on it throws)
            return {**thrown, "details": given}
        details = {**thrown, "rpc": name, "payload": payload}
        return {"code": WSE_ERROR.RP_EXECUTION_FAILED, "message": FAILED, "details": details}
    if debug:
        origin = {
            "name": type(exc).__name__,
            "message": str(exc),
            "stack": "".join(traceback.format_exception(exc)),
        }
        return {
            "code": WSE_ERROR.RP_EXECUTION_FAILED,
            "message": str(exc),
            "details": {"origin": origin, "rpc": name, "payload": payload},
        }
    error_id = secrets.token_hex(8)
    log.error("procedure %r failed (error_id %s)", name, error_id, exc_info=exc, extra=log_fields)
    return {
        "code": WSE_ERROR.RP_EXECUTION_FAILED,
        "message": FAILED,
        "details": {"error_id": error_id, "rpc": name, "payload": payload},
    }


def _js_true(value: Any) -> bool:
    """JavaScript's truth of a decoded value: every object and array is true, even empty."""
    return isinstance(value, dict | list | tuple) or bool(value)


def minimal_error(payload: dict[str, Any]) -> dict[str, Any]:
    """What is left of an error payload that could not be encoded: its code, which is a
    string (or the generic code), and nothing the application supplied."""
    code = payload.get("code")
    return {
        "code": code if isinstance(code, str) else WSE_ERROR.RP_EXECUTION_FAILED,
        "message": "the error could not be encoded",
    }


def error_from_payload(error: Any) -> RpcError:
    """The caller's view of a ``~wse:response-err`` payload: an :class:`RpcError` whatever its
    code, since every code in it describes the remote procedure (see :class:`RpcError`)."""
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        details = error.get("details")
        message = error.get("message")
        return RpcError(
            error["code"],
            details if isinstance(details, dict) else None,
            message if isinstance(message, str) else None,
        )
    return RpcError(WSE_ERROR.RP_EXECUTION_FAILED, {"error": error})


class _Waiting:
    """One call's future, and the timer of its deadline (set once the stamp is known)."""

    __slots__ = ("future", "timer")

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future
        self.timer: asyncio.TimerHandle | None = None


class PendingCalls:
    """Outgoing calls of one connection waiting for their answer, each with a deadline: the
    sans-I/O :class:`~wse_fast.sansio.calls.CallTable`, with a future and a timer each."""

    __slots__ = ("_calls", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: CallTable[_Waiting] = CallTable()

    def __len__(self) -> int:
        return len(self._calls)

    def open(self, timeout: float | None) -> tuple[str, asyncio.Future[Any]]:
        waiting = _Waiting(self._loop.create_future())
        stamp = self._calls.open(waiting)
        if timeout is not None:
            waiting.timer = self._loop.call_later(timeout, self._expire, stamp, timeout)
        return stamp, waiting.future

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
        waiting = self._calls.settle(stamp)
        if waiting is None:
            return None
        if waiting.timer is not None:
            waiting.timer.cancel()
        future = waiting.future
        return None if future.done() else future  # done: the caller gave up (cancelled)

    def reject_all(self, error_code: str, details: dict[str, Any]) -> None:
        for stamp in self._calls:
            self.reject(stamp, WseError.from_code(error_code, details))

    def _expire(self, stamp: str, timeout: float) -> None:
        self.reject(stamp, RpcTimeout({"timeout": timeout}))


Reply = Callable[[str, Any, str], None]
#: Takes charge of a task a handler started (keeps it, counts it, cancels it with its owner).
Track = Callable[["asyncio.Future[Any]"], None]


#: Hears of a procedure that failed: (its arguments, name, payload, stamp, error answered,
#: the exception it raised).
Failed = Callable[[tuple[Any, ...], str, Any, str, dict[str, Any], BaseException], None]


class Answering:
    """How one side answers the calls it receives, shared by all its connections and calls
    (made once, not passed along with each call): ``types`` names the answers' types;
    ``debug`` puts an exception's details in the answer (see :func:`error_payload`);
    ``failed`` hears of a procedure that failed, after its caller was answered.

    A call answered in the loop turn that read it (a plain result, an exception) allocates
    nothing here: its few parts (the handler's ``args`` with the payload last, the
    procedure's ``name``, the ``stamp``, the connection's ``reply``) are passed as arguments.
    A call answered later (an awaitable result) keeps them in one :class:`Call`."""

    __slots__ = ("debug", "failed", "types")

    def __init__(self, types: InternalTypes, debug: bool, failed: Failed | None = None) -> None:
        self.types = types
        self.debug = debug
        self.failed = failed

    def run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        name: str,
        stamp: str,
        reply: Reply,
        track: Track,
    ) -> None:
        """Runs procedure ``name``'s handler ``fn`` with ``args`` and sends its result or
        error under ``stamp`` through ``reply`` (the connection's): a plain function is
        answered at once, in the same loop turn; a coroutine runs as a task, handed to
        ``track``. A result or error that cannot be encoded still gets an answer."""
        try:
            result = fn(*args)
            if result.__class__ in _PLAIN_RESULTS:  # the common case, answered here
                reply(self.types.response, result, stamp)
                return
        except Exception as exc:  # it raised, or its result cannot be encoded
            self.answer_error(exc, args, name, stamp, reply)
            return
        self.answer(result, args, name, stamp, reply, track)

    def answer(
        self,
        result: Any,
        args: tuple[Any, ...],
        name: str,
        stamp: str,
        reply: Reply,
        track: Track,
    ) -> None:
        """Answers call ``stamp`` with what its handler returned: at once, or, for an
        awaitable, when its task (handed to ``track``) is done."""
        if result.__class__ in _PLAIN_RESULTS or not inspect.isawaitable(result):
            try:
                reply(self.types.response, result, stamp)
            except Exception as exc:  # the result cannot be encoded: tell the caller why
                self.answer_error(exc, args, name, stamp, reply)
            return
        task = asyncio.ensure_future(result)
        task.add_done_callback(Call(self, args, name, stamp, reply).task_done)
        track(task)

    def answer_error(
        self, exc: BaseException, args: tuple[Any, ...], name: str, stamp: str, reply: Reply
    ) -> None:
        """Answers call ``stamp`` with the error its handler raised (see
        :func:`error_payload`), then tells :attr:`failed` (with ``exc`` itself)."""
        payload = args[-1]
        error = error_payload(exc, name, payload, self.debug, _log_fields(args))
        try:
            reply(self.types.response_error, error, stamp)
        except Exception:  # details the protocol cannot encode: the code alone always can
            reply(self.types.response_error, minimal_error(error), stamp)
        failed = self.failed
        if failed is not None:
            failed(args, name, payload, stamp, error, exc)


class Call:
    """A call whose handler returned an awaitable: what its answer needs once the task is
    done, in one small object (its side's :class:`Answering`, the handler's ``args`` with the
    payload last, the procedure's ``name``, the ``stamp``, the connection's ``reply``)."""

    __slots__ = ("answering", "args", "name", "reply", "stamp")

    def __init__(
        self, answering: Answering, args: tuple[Any, ...], name: str, stamp: str, reply: Reply
    ) -> None:
        self.answering = answering
        self.args = args
        self.name = name
        self.stamp = stamp
        self.reply = reply

    @property
    def payload(self) -> Any:
        """What the caller sent (the handler's last argument)."""
        return self.args[-1]

    def task_done(self, task: asyncio.Future[Any]) -> None:
        """The task's end: its result, its exception, or "the call was cancelled"."""
        answering = self.answering
        if task.cancelled():  # its connection closed, or the server is shutting down
            self.reply(answering.types.response_error, CANCELLED, self.stamp)
        elif (exc := task.exception()) is not None:
            answering.answer_error(exc, self.args, self.name, self.stamp, self.reply)
        else:
            try:
                self.reply(answering.types.response, task.result(), self.stamp)
            except Exception as unencodable:  # tell the caller why
                answering.answer_error(unencodable, self.args, self.name, self.stamp, self.reply)


def _log_fields(args: tuple[Any, ...]) -> Mapping[str, Any] | None:
    """The log fields of the connection a server's procedure was called on (its first
    argument, which has ``log_fields``); None on a client, whose procedures get the payload
    alone."""
    fields = getattr(args[0], "log_fields", None) if len(args) > 1 else None
    return fields() if callable(fields) else None
