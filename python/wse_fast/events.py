"""Handler registries: ``when`` (life-cycle events) and ``channel`` (messages by type).

Every registration method works as a call and as a decorator, and handlers may be plain
functions or coroutine functions; a coroutine is run as a task whose failure is reported.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from .constants import WSE_ERROR
from .errors import WseError

log = logging.getLogger("wse_fast")

F = TypeVar("F", bound=Callable[..., Any])
ErrorSink = Callable[[BaseException], None]

_tasks: set[asyncio.Future[Any]] = set()


def run_handler(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    on_error: ErrorSink,
    track: Callable[[asyncio.Future[Any]], None] | None = None,
) -> None:
    """Calls ``fn(*args)``; a coroutine it returns runs as a task. Errors go to ``on_error``.

    ``track`` takes charge of that task (a connection counts its tasks and cancels them when it
    closes); without it the task is kept here until it ends.
    """
    try:
        result = fn(*args)
    except Exception as exc:
        on_error(exc)
        return
    if inspect.isawaitable(result):
        task = asyncio.ensure_future(result)
        task.add_done_callback(lambda t: _finish(t, on_error))
        (track or keep)(task)


def keep(task: asyncio.Future[Any]) -> None:
    """Holds a task until it ends (the event loop keeps only weak references to tasks)."""
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def _finish(task: asyncio.Future[Any], on_error: ErrorSink) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        on_error(exc)


def _log_error(exc: BaseException) -> None:
    log.error("event handler failed", exc_info=exc)


class Events:
    """Base of ``server.when`` and ``client.when``: one list of handlers per event name."""

    _names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._handlers: dict[str, list[Callable[..., Any]]] = {n: [] for n in self._names}

    def _add(self, name: str, fn: F) -> F:
        self._handlers[name].append(fn)
        return fn

    def off(self, name: str, fn: Callable[..., Any] | None = None) -> None:
        """Removes one handler of ``name``, or all of them."""
        if fn is None:
            self._handlers[name].clear()
        elif fn in self._handlers[name]:
            self._handlers[name].remove(fn)

    def emit(self, name: str, *args: Any) -> None:
        for fn in self._handlers[name]:
            run_handler(fn, args, _log_error)


class ServerEvents(Events):
    _names = ("joined", "left", "connected", "disconnected", "ignored", "error")

    def joined(self, fn: F) -> F:
        """``fn(client, meta)``: a user's first connection was accepted."""
        return self._add("joined", fn)

    def left(self, fn: F) -> F:
        """``fn(client, code, reason)``: a user's last connection closed."""
        return self._add("left", fn)

    def connected(self, fn: F) -> F:
        """``fn(conn)``: a connection was accepted (after identify)."""
        return self._add("connected", fn)

    def disconnected(self, fn: F) -> F:
        """``fn(conn, code, reason)``: an accepted connection closed."""
        return self._add("disconnected", fn)

    def ignored(self, fn: F) -> F:
        """``fn(conn, type, payload)``: a message with no channel handler."""
        return self._add("ignored", fn)

    def error(self, fn: F) -> F:
        """``fn(err, conn)``: a bad message, a failing handler, a refused protocol."""
        return self._add("error", fn)


class ClientEvents(Events):
    _names = ("ready", "closed", "error", "updated", "connected", "ignored")

    def ready(self, fn: F) -> F:
        """``fn(welcome)``: authenticated; messages and calls may flow."""
        return self._add("ready", fn)

    def closed(self, fn: F) -> F:
        """``fn(code, reason)``: the connection closed."""
        return self._add("closed", fn)

    def error(self, fn: F) -> F:
        """``fn(err)``: a failing handler or a transport error."""
        return self._add("error", fn)

    def updated(self, fn: F) -> F:
        """``fn(status)``: the status (:class:`wse_fast.WSE_STATUS`) changed."""
        return self._add("updated", fn)

    def connected(self, fn: F) -> F:
        """``fn()``: the WebSocket opened (authentication follows)."""
        return self._add("connected", fn)

    def ignored(self, fn: F) -> F:
        """``fn(type, payload)``: a message with no channel handler."""
        return self._add("ignored", fn)


class Channel:
    """Message handlers by type: ``channel.on("type", fn)`` or ``@channel.on("type")``."""

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[..., Any]] = {}

    def on(self, type: str, fn: Callable[..., Any] | None = None) -> Any:
        if fn is None:

            def decorate(f: F) -> F:
                self.handlers[type] = f
                return f

            return decorate
        self.handlers[type] = fn
        return fn

    def off(self, type: str) -> None:
        self.handlers.pop(type, None)


class Procedures:
    """RPC handlers by name, shared by server and client."""

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, fn: Callable[..., Any] | None = None) -> Any:
        def add(f: F) -> F:
            if name in self.handlers:
                raise WseError(WSE_ERROR.RP_ALREADY_REGISTERED, {"rpc": name})
            self.handlers[name] = f
            return f

        return add if fn is None else add(fn)  # type: ignore[arg-type]

    def unregister(self, name: str) -> None:
        self.handlers.pop(name, None)
