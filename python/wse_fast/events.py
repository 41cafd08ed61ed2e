"""Handler registries: ``when`` (life-cycle events) and ``channel`` (messages by type).

Every registration method works as a call and as a decorator, and handlers may be plain
functions or coroutine functions; a coroutine is run as a task whose failure is reported.

For type checkers, registering returns the function unchanged, with its own type, and checks
it against the signature the registry calls it with: the Protocols below, whose returns are
``object`` (a value, None, or an awaitable that is awaited).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar, overload

from .constants import WSE_ERROR
from .errors import WseError

if TYPE_CHECKING:
    from typing_extensions import TypeVar as DefaultedTypeVar

    from .connection import Connection, User

log = logging.getLogger("wse_fast")

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


# ---- handler signatures ------------------------------------------------------------------


class ServerHandler(Protocol):
    """A server's message handler or procedure: ``fn(conn, payload)``."""

    def __call__(self, conn: Connection, payload: Any, /) -> object: ...


class ClientHandler(Protocol):
    """A client's message handler or procedure: ``fn(payload)``."""

    def __call__(self, payload: Any, /) -> object: ...


class OnJoined(Protocol):
    def __call__(self, user: User, meta: dict[str, Any], /) -> object: ...


class OnLeft(Protocol):
    def __call__(self, user: User, code: int, reason: str, /) -> object: ...


class OnConnected(Protocol):
    def __call__(self, conn: Connection, /) -> object: ...


class OnDisconnected(Protocol):
    def __call__(self, conn: Connection, code: int, reason: str, /) -> object: ...


class OnServerIgnored(Protocol):
    def __call__(self, conn: Connection, type: str, payload: Any, /) -> object: ...


class OnServerError(Protocol):
    def __call__(self, err: WseError, conn: Connection | None, /) -> object: ...


class OnCluster(Protocol):
    def __call__(self, state: str, /) -> object: ...


class OnPresence(Protocol):
    def __call__(self, cid: str, /) -> object: ...


class OnReady(Protocol):
    def __call__(self, welcome: Any, /) -> object: ...


class OnClosed(Protocol):
    def __call__(self, code: int, reason: str, /) -> object: ...


class OnClientError(Protocol):
    def __call__(self, err: WseError, /) -> object: ...


class OnUpdated(Protocol):
    def __call__(self, status: str, /) -> object: ...


class OnOpened(Protocol):
    def __call__(self) -> object: ...


class OnClientIgnored(Protocol):
    def __call__(self, type: str, payload: Any, /) -> object: ...


# Each registration is generic in the handler's own type, bounded by its signature, so that
# decorating keeps the function's type.
F = TypeVar("F", bound=Callable[..., Any])
_SH = TypeVar("_SH", bound=ServerHandler)
_CH = TypeVar("_CH", bound=ClientHandler)
_Joined = TypeVar("_Joined", bound=OnJoined)
_Left = TypeVar("_Left", bound=OnLeft)
_Connected = TypeVar("_Connected", bound=OnConnected)
_Disconnected = TypeVar("_Disconnected", bound=OnDisconnected)
_ServerIgnored = TypeVar("_ServerIgnored", bound=OnServerIgnored)
_ServerError = TypeVar("_ServerError", bound=OnServerError)
_Cluster = TypeVar("_Cluster", bound=OnCluster)
_Presence = TypeVar("_Presence", bound=OnPresence)
_Ready = TypeVar("_Ready", bound=OnReady)
_Closed = TypeVar("_Closed", bound=OnClosed)
_ClientError = TypeVar("_ClientError", bound=OnClientError)
_Updated = TypeVar("_Updated", bound=OnUpdated)
_Opened = TypeVar("_Opened", bound=OnOpened)
_ClientIgnored = TypeVar("_ClientIgnored", bound=OnClientIgnored)


class Events:
    """Base of ``server.when`` and ``client.when``: the handlers of each event, in the order
    they were added; several may listen to one event, and each runs.

    ``when.once`` is the same events, registering handlers that run once and are removed;
    ``off`` removes one; ``await when.wait(name)`` waits for the next emission. Events named
    in ``_memorable`` (a client's ``ready`` and ``updated``) remember their last arguments:
    a handler added afterwards runs at once with them, and ``wait`` returns them at once.
    """

    __slots__ = ("_emitting", "_handlers", "_memory", "registers_once")

    _names: tuple[str, ...] = ()
    _memorable: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self._handlers: dict[str, list[Callable[..., Any]]] = {n: [] for n in self._names}
        self._emitting: list[str] = []  # names whose handlers are running, innermost last
        self._memory: dict[str, tuple[Any, ...]] = {}
        #: True on the view ``once`` returns: the handlers it adds run once, then go
        self.registers_once = False

    @property
    def once(self) -> Self:
        """These events, registering handlers that run once (``@client.when.once.ready``)."""
        view = copy.copy(self)
        view.registers_once = True
        return view

    def _add(self, name: str, fn: F) -> F:
        remembered = self._memory.get(name)
        if remembered is not None:
            run_handler(fn, remembered, _log_error)
            if self.registers_once:
                return fn
        self._handlers[name].append(_Once(self, name, fn) if self.registers_once else fn)
        return fn

    def off(self, name: str, fn: Callable[..., Any] | None = None) -> None:
        """Removes handler ``fn`` of ``name`` (also one added through ``once``), or all of
        them; a handler that is not there is no error."""
        handlers = self._handlers[name]
        if fn is None:
            handlers.clear()
            return
        for i, h in enumerate(handlers):
            if h is fn or (isinstance(h, _Once) and h.fn is fn):
                del handlers[i]
                return

    def remove(self, name: str, handler: Callable[..., Any]) -> None:
        """Removes exactly ``handler`` (a ``once`` wrapper removing itself)."""
        handlers = self._handlers[name]
        for i, h in enumerate(handlers):
            if h is handler:
                del handlers[i]
                return

    def emit(self, name: str, *args: Any) -> None:
        if name in self._memorable:
            self._memory[name] = args
        handlers = self._handlers[name]
        if not handlers:
            return
        self._emitting.append(name)
        try:
            for fn in tuple(handlers):  # a handler may remove itself (once)
                run_handler(fn, args, _log_error)
        finally:
            self._emitting.pop()

    def emit_unless_within(self, name: str, *args: Any) -> None:
        """Emits ``name`` unless one of its handlers is running now: for what a handler can
        cause itself (an ``error`` handler sending while not ready would otherwise report
        its own failure to itself without end)."""
        if name not in self._emitting:
            self.emit(name, *args)

    def forget(self, name: str) -> None:
        """Drops what a memorable event remembers: later handlers wait for its next time."""
        self._memory.pop(name, None)

    def last(self, name: str) -> tuple[Any, ...] | None:
        """The arguments a memorable event last fired with, or None."""
        return self._memory.get(name)

    async def wait(self, name: str, until: Callable[..., bool] | None = None) -> tuple[Any, ...]:
        """The arguments of the next emission of ``name`` (for which ``until(*args)`` is true,
        when given); for a memorable event, its remembered arguments if they fit. Cancel it,
        or bound it with ``asyncio.timeout``, to stop waiting."""
        remembered = self._memory.get(name)
        if remembered is not None and (until is None or until(*remembered)):
            return remembered
        future: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

        def settle(*args: Any) -> None:
            if not future.done() and (until is None or until(*args)):
                future.set_result(args)

        self._handlers[name].append(settle)
        try:
            return await future
        finally:
            self.off(name, settle)


class _Removes(Protocol):
    """Where a one-shot handler is kept: ``Events`` (by event name) or ``Channel`` (by
    message type)."""

    def remove(self, key: str, handler: Callable[..., Any], /) -> None: ...


class _Once:
    """A handler added through ``when.once`` or ``channel.once``: removed from ``owner``
    before it runs, so that it runs once even when it emits the same event itself."""

    __slots__ = ("fn", "key", "owner")

    def __init__(self, owner: _Removes, key: str, fn: Callable[..., Any]) -> None:
        self.owner, self.key, self.fn = owner, key, fn

    def __call__(self, *args: Any) -> Any:
        self.owner.remove(self.key, self)  # this wrapper, not the first handler with its fn
        return self.fn(*args)


class ServerEvents(Events):
    _names = (
        "joined",
        "left",
        "connected",
        "disconnected",
        "ignored",
        "error",
        "cluster",
        "online",
        "offline",
    )

    def joined(self, fn: _Joined) -> _Joined:
        """``fn(user, meta)``: a user's first connection was accepted (``user``: a
        :class:`~wse_fast.User`)."""
        return self._add("joined", fn)

    def left(self, fn: _Left) -> _Left:
        """``fn(user, code, reason)``: a user's last connection closed."""
        return self._add("left", fn)

    def connected(self, fn: _Connected) -> _Connected:
        """``fn(conn)``: a connection was accepted (after identify)."""
        return self._add("connected", fn)

    def disconnected(self, fn: _Disconnected) -> _Disconnected:
        """``fn(conn, code, reason)``: an accepted connection closed."""
        return self._add("disconnected", fn)

    def ignored(self, fn: _ServerIgnored) -> _ServerIgnored:
        """``fn(conn, type, payload)``: a message with no channel handler."""
        return self._add("ignored", fn)

    def error(self, fn: _ServerError) -> _ServerError:
        """``fn(err, conn)``: a bad message (:class:`wse_fast.ProtocolViolation`), a failing
        handler, a slow consumer; ``err`` is a :class:`wse_fast.WseError`. ``conn`` is None
        for the server's own errors (its cluster link: ``wse.cluster.*``). When an exception
        of the application's code caused it (a handler, a procedure, ``identify``), that
        exception is ``err.__cause__``, with its traceback: ``logging``'s ``exc_info=err``
        and error reporters such as Sentry's ``capture_exception(err)`` show both."""
        return self._add("error", fn)

    def online(self, fn: _Presence) -> _Presence:
        """``fn(cid)``: the user's first connection anywhere (in a cluster: on any node, fired
        once, on the node that accepted it); alone, it comes with ``joined``."""
        return self._add("online", fn)

    def offline(self, fn: _Presence) -> _Presence:
        """``fn(cid)``: the user's last connection anywhere closed (in a cluster: fired once,
        on the node where it closed); alone, it comes with ``left``."""
        return self._add("offline", fn)

    def cluster(self, fn: _Cluster) -> _Cluster:
        """``fn(state)``: the cluster link changed: ``disconnected``, ``reconnected``, then
        ``healthy`` (its subscriptions answer again) or ``unhealthy`` (they do not: the node
        cannot hear the others, and says so until they do)."""
        return self._add("cluster", fn)


class ClientEvents(Events):
    _names = ("ready", "closed", "error", "updated", "connected", "ignored")
    _memorable = frozenset({"ready", "updated"})

    def ready(self, fn: _Ready) -> _Ready:
        """``fn(welcome)``: authenticated; messages and calls may flow."""
        return self._add("ready", fn)

    def closed(self, fn: _Closed) -> _Closed:
        """``fn(code, reason)``: the connection closed."""
        return self._add("closed", fn)

    def error(self, fn: _ClientError) -> _ClientError:
        """``fn(err)``: a failing handler, a bad message, a reconnect that gave up; ``err`` is
        a :class:`wse_fast.WseError`, whose ``__cause__`` is the exception of the
        application's code that caused it (a handler, a procedure), if any."""
        return self._add("error", fn)

    def updated(self, fn: _Updated) -> _Updated:
        """``fn(status)``: the status (:class:`wse_fast.WSE_STATUS`) changed."""
        return self._add("updated", fn)

    def connected(self, fn: _Opened) -> _Opened:
        """``fn()``: the WebSocket opened (authentication follows)."""
        return self._add("connected", fn)

    def ignored(self, fn: _ClientIgnored) -> _ClientIgnored:
        """``fn(type, payload)``: a message with no channel handler."""
        return self._add("ignored", fn)


# The side of a peer (server or client), named by the class of its life-cycle events; it
# tells type checkers which handler signatures ``channel.on`` and ``register`` take. A peer or
# channel with no side named is a server's.
if TYPE_CHECKING:
    Side = DefaultedTypeVar("Side", bound=Events, default=ServerEvents)
else:
    Side = TypeVar("Side", bound=Events)


class Channel(Generic[Side]):
    """Message listeners by type, an event emitter as in JavaScript: ``channel.on("type",
    fn)`` or ``@channel.on("type")`` adds a listener, ``off`` removes one, ``once`` adds one
    that runs once. Every listener of a type runs, in the order added.

    ``fn(conn, payload)`` on a server (:class:`ServerHandler`), ``fn(payload)`` on a client
    (:class:`ClientHandler`). A message whose type has no listener goes to ``when.ignored``.
    """

    __slots__ = ("handlers", "several")

    def __init__(self) -> None:
        # The route reads ``handlers`` once per message: the types with exactly one listener,
        # called directly, so that one listener costs what it did when there could be only
        # one. Types with more are in ``several``, which is read only when ``handlers`` has
        # nothing for the type.
        self.handlers: dict[str, Callable[..., Any]] = {}
        self.several: dict[str, tuple[Callable[..., Any], ...]] = {}

    @overload
    def on(self: Channel[ServerEvents], type: str) -> Callable[[_SH], _SH]: ...
    @overload
    def on(self: Channel[ServerEvents], type: str, fn: _SH) -> _SH: ...
    @overload
    def on(self: Channel[ClientEvents], type: str) -> Callable[[_CH], _CH]: ...
    @overload
    def on(self: Channel[ClientEvents], type: str, fn: _CH) -> _CH: ...
    def on(self, type: str, fn: Callable[..., Any] | None = None) -> Any:
        def add(f: F) -> F:
            self._add(type, f)
            return f

        return add if fn is None else add(fn)

    @overload
    def once(self: Channel[ServerEvents], type: str) -> Callable[[_SH], _SH]: ...
    @overload
    def once(self: Channel[ServerEvents], type: str, fn: _SH) -> _SH: ...
    @overload
    def once(self: Channel[ClientEvents], type: str) -> Callable[[_CH], _CH]: ...
    @overload
    def once(self: Channel[ClientEvents], type: str, fn: _CH) -> _CH: ...
    def once(self, type: str, fn: Callable[..., Any] | None = None) -> Any:
        """Adds a listener that is removed before its first run (one message, on whichever
        connection it comes first)."""

        def add(f: F) -> F:
            self._add(type, _Once(self, type, f))
            return f

        return add if fn is None else add(fn)

    def remove(self, type: str, listener: Callable[..., Any]) -> None:
        """Removes exactly ``listener`` (a ``once`` wrapper removing itself)."""
        fns = list(self.listeners(type))
        for i, f in enumerate(fns):
            if f is listener:
                del fns[i]
                self._set(type, fns)
                return

    def off(self, type: str, fn: Callable[..., Any] | None = None) -> None:
        """Removes listener ``fn`` of ``type`` (also one added with ``once``), or every
        listener of ``type``; one that is not there is no error."""
        if fn is None:
            self._set(type, [])
            return
        fns = list(self.listeners(type))
        for i, f in enumerate(fns):
            if f is fn or (isinstance(f, _Once) and f.fn is fn):
                del fns[i]
                self._set(type, fns)
                return

    def listeners(self, type: str) -> tuple[Callable[..., Any], ...]:
        """The listeners of ``type``, in the order they run."""
        one = self.handlers.get(type)
        return (one,) if one is not None else self.several.get(type, ())

    def _add(self, type: str, fn: Callable[..., Any]) -> None:
        self._set(type, [*self.listeners(type), fn])

    def _set(self, type: str, fns: list[Callable[..., Any]]) -> None:
        self.handlers.pop(type, None)
        self.several.pop(type, None)
        if len(fns) == 1:
            self.handlers[type] = fns[0]
        elif fns:
            self.several[type] = tuple(fns)


class Procedures:
    """RPC handlers by name, shared by server and client (typed by ``Peer.register``)."""

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, fn: Callable[..., Any] | None = None) -> Any:
        def add(f: F) -> F:
            if name in self.handlers:
                raise WseError(WSE_ERROR.RP_ALREADY_REGISTERED, {"rpc": name})
            self.handlers[name] = f
            return f

        return add if fn is None else add(fn)

    def unregister(self, name: str) -> None:
        """Removes procedure ``name``; one that is not registered raises
        ``wse.server.rp.not-registered``, as in JavaScript."""
        if self.handlers.pop(name, None) is None:
            raise WseError(WSE_ERROR.RP_NOT_REGISTERED, {"rpc": name})
