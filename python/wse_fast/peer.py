"""What a server and a client share: a wire protocol, message handlers and procedures."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from . import rpc
from .constants import WSE_ERROR
from .errors import WseError
from .events import (
    Channel,
    ClientEvents,
    ClientHandler,
    ErrorSink,
    Procedures,
    ServerEvents,
    ServerHandler,
    Side,
    keep,
    run_handler,
)
from .protocols import JsonProtocol, WireProtocol
from .sansio import session as ev
from .sansio.session import Wire

_SH = TypeVar("_SH", bound=ServerHandler)
_CH = TypeVar("_CH", bound=ClientHandler)


class Peer(Generic[Side]):
    """One end of WSE: encodes and decodes with its protocol, routes messages by type, and
    answers calls. ``mask`` is True on the client side (RFC 6455 §5.3).

    ``Side`` is the class of its life-cycle events (``when``): :class:`ServerEvents` or
    :class:`ClientEvents`, which also tells type checkers the handler signatures that
    ``channel.on`` and ``register`` take."""

    when: Side  # the subclass's life-cycle events

    async def close(self) -> None:
        """Ends this side's connections (each subclass's own; it may take options)."""
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Leaving ``async with`` closes, also when the block raised."""
        await self.close()

    def __init__(self, protocol: WireProtocol | None, mask: bool, debug: bool = False) -> None:
        self.protocol: WireProtocol = protocol or JsonProtocol()
        self.wire = Wire(self.protocol, mask=mask)
        self.protocol_types = self.wire.types
        #: How this side answers the calls it receives (one for all its connections).
        self.answering = rpc.Answering(self.protocol_types, debug, self.procedure_failed)
        self.channel: Channel[Side] = Channel()
        self.procedures = Procedures()
        self.encode = self.wire.encode
        #: A received message to ``(type, payload, stamp)`` (see :class:`MessageDecoder`).
        self.decode = self.wire.decode

    @property
    def debug(self) -> bool:
        """Whether a procedure's exception is described to its caller (type, message,
        stack), as the reference's ``debug`` option does; else only its ``error_id``."""
        return self.answering.debug

    @debug.setter
    def debug(self, debug: bool) -> None:
        self.answering.debug = debug

    @overload
    def register(self: Peer[ServerEvents], name: str) -> Callable[[_SH], _SH]: ...
    @overload
    def register(self: Peer[ServerEvents], name: str, fn: _SH) -> _SH: ...
    @overload
    def register(self: Peer[ClientEvents], name: str) -> Callable[[_CH], _CH]: ...
    @overload
    def register(self: Peer[ClientEvents], name: str, fn: _CH) -> _CH: ...
    def register(self, name: str, fn: Callable[..., Any] | None = None) -> Any:
        """Registers procedure ``name`` for the other side to call (also as a decorator,
        which returns the function unchanged).

        On a server ``fn(conn, payload)``, on a client ``fn(payload)``; it returns the answer
        or raises (see :class:`wse_fast.WseError`), and may be a coroutine function. A name
        registered twice raises ``wse.server.rp.already-registered``.
        """
        return self.procedures.register(name, fn)

    def unregister(self, name: str) -> None:
        """Removes procedure ``name``; raises ``wse.server.rp.not-registered`` when there is
        none, as JavaScript does."""
        self.procedures.unregister(name)

    def procedure_failed(
        self,
        args: tuple[Any, ...],
        name: str,
        payload: Any,
        stamp: str,
        error: dict[str, Any],
        exc: BaseException,
    ) -> None:
        """Reports a procedure of this side that failed (``args``: what it was called with,
        the connection first on a server; ``error``: the ``~wse:response-err`` payload
        answered, whose ``error_id`` the log has; ``exc``: what it raised), as JavaScript
        does: an ``error`` event ``wse.server.rp.failed`` (both sides use that code), after
        the caller was answered, whose ``__cause__`` is ``exc`` (the reference puts it in
        ``details.err``), so that an error reporter sees the procedure's own traceback.
        The ``failed`` of this side's :class:`rpc.Answering`; not for a cancelled call."""
        origin = args[:-1]
        details: dict[str, Any] = {"rpc": name, "payload": payload, "stamp": stamp}
        details["error"] = error
        if origin:
            conn = origin[0]
            details["cid"], details["conn_id"] = conn.cid, conn.conn_id
        err = WseError(WSE_ERROR.RP_EXECUTION_FAILED, details)
        err.__cause__ = exc
        self.when.emit("error", err, *origin)

    def route(
        self,
        event: object,
        origin: tuple[Any, ...],
        reply: rpc.Reply,
        pending: rpc.PendingCalls | None,
        on_error: ErrorSink,
        track: rpc.Track = keep,
    ) -> bool:
        """Acts on what both sides do once authenticated: messages go to the channel (or the
        ``ignored`` event), calls to the procedures (answered through :attr:`answering`, sent
        by ``reply``), answers to the pending calls (dropped when there are none). Handlers
        and ``ignored`` get ``origin`` first: the connection on a server, nothing on a client;
        the tasks of coroutine handlers go to ``track``. False for an event this does not
        handle."""
        if isinstance(event, ev.Message):
            handler = self.channel.handlers.get(event.type)
            if handler is None:  # several listeners, or none
                several = self.channel.several.get(event.type)
                if several is None:
                    self.when.emit("ignored", *origin, event.type, event.payload)
                else:
                    args = (*origin, event.payload)
                    for listener in several:
                        run_handler(listener, args, on_error, track)
            else:
                run_handler(handler, (*origin, event.payload), on_error, track)
        elif isinstance(event, ev.Call):
            fn = self.procedures.handlers.get(event.name)
            if fn is None:
                error = {"code": WSE_ERROR.RP_NOT_REGISTERED}
                reply(self.protocol_types.response_error, error, event.stamp)
            else:
                args = (*origin, event.payload)
                self.answering.run(fn, args, event.name, event.stamp, reply, track)
        elif isinstance(event, ev.Response):
            if pending is not None:
                pending.resolve(event.stamp, event.result)
        elif isinstance(event, ev.ResponseError):
            if pending is not None:
                pending.reject(event.stamp, rpc.error_from_payload(event.error))
        else:
            return False
        return True
