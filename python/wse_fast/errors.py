"""The exceptions of the public API: :class:`WseError` and its subclasses.

Every exception carries ``code``, the JavaScript WSE code string (see
:class:`wse_fast.WSE_ERROR`), ``details`` (a dict) and ``message``; the subclasses only sort
them, so ``except WseError`` still catches everything and ``.code`` reads as before. A code
is always an error code, never a close reason: a close shows up in ``details`` as ``code``
(the close code) and ``reason``.

================================  =========================================================
class                             code, and when
================================  =========================================================
:class:`NotAuthorized`            ``wse.not-authorized``: the server refused the connection
:class:`ConnectionFailed`         ``wse.client.ws-error``: no connection (socket, upgrade,
                                  subprotocol, no welcome in time, closed before the welcome)
:class:`AlreadyConnected`         ``wse.client.already-connected``: ``connect`` while connected
:class:`ConnectionNotReady`       ``wse.client.not-ready``: send or call before the welcome
:class:`RpcTimeout`               ``wse.client.rp.timeout``: no answer to a call in time
:class:`RpcDisconnected`          ``wse.client.rp.disconnect``: the connection closed first
:class:`RpcError`                 the code the other side answered a call with:
                                  ``wse.server.rp.failed``, ``wse.server.rp.not-registered``
                                  or the application's own
:class:`ProtocolViolation`        ``wse.server.protocol-violation`` (``error`` events)
================================  =========================================================

Other codes (configuration mistakes, failing handlers, slow consumers) stay plain
:class:`WseError`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .constants import WSE_ERROR


class WseError(Exception):
    """An error with a WSE code (see :class:`wse_fast.WSE_ERROR`) and optional details.

    The base of every exception below. An RPC handler that raises one (of any class) sends
    its code and details to the caller, who gets an :class:`RpcError` with them.
    """

    def __init__(
        self, code: str, details: dict[str, Any] | None = None, message: str | None = None
    ):
        super().__init__(code)
        self.code = code
        self.details: dict[str, Any] = dict(details) if details else {}
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.details!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # The subclasses with a fixed code take no code argument: rebuild without __init__.
        return _rebuild, (type(self), self.code, self.details, self.message)

    @staticmethod
    def from_code(
        code: str, details: dict[str, Any] | None = None, message: str | None = None
    ) -> WseError:
        """An error of the class that stands for ``code`` (:class:`WseError` for a code
        without a class of its own)."""
        return _rebuild(_CLASS_OF.get(code, WseError), code, details, message)


class _FixedCode(WseError):
    """A subclass whose instances all carry the code ``CODE``."""

    CODE: ClassVar[str]

    def __init__(self, details: dict[str, Any] | None = None, message: str | None = None):
        super().__init__(self.CODE, details, message)


class NotAuthorized(_FixedCode):
    """The server refused the connection (``identify`` refused, a failed challenge, no
    answer within the server's ``auth_timeout``). ``details`` has the close ``code`` and
    ``reason``. The client does not try again by itself."""

    CODE = WSE_ERROR.NOT_AUTHORIZED


class ConnectionFailed(_FixedCode):
    """The client has no connection: the socket or the upgrade failed (``details["error"]``),
    the server chose another subprotocol, no welcome came in time, or the server closed before
    the welcome for another reason than a refusal (``details["code"]`` and ``["reason"]``)."""

    CODE = WSE_ERROR.WS_CLIENT_ERROR


class AlreadyConnected(_FixedCode):
    """``connect`` on a client that is connected or connecting."""

    CODE = WSE_ERROR.CLIENT_ALREADY_CONNECTED


class ConnectionNotReady(_FixedCode):
    """A send or a call on a connection that is not (or no longer) authenticated."""

    CODE = WSE_ERROR.CONNECTION_NOT_READY


class RpcTimeout(_FixedCode):
    """A call got no answer within its timeout (``details["timeout"]``, seconds)."""

    CODE = WSE_ERROR.RP_TIMEOUT


class RpcDisconnected(_FixedCode):
    """The connection closed while a call waited for its answer (``details``: the close
    ``code`` and ``reason``)."""

    CODE = WSE_ERROR.RP_DISCONNECT


class RpcError(WseError):
    """The other side answered a call with an error: ``code`` is the one it sent, such as
    ``wse.server.rp.failed`` (the procedure raised), ``wse.server.rp.not-registered``, or an
    application code raised as ``WseError(code, details)``; ``details`` and ``message`` are
    what it sent.

    Whatever the code, it describes the remote procedure: a remote handler whose own call
    timed out answers ``wse.client.rp.timeout``, which arrives here as an :class:`RpcError`,
    not as this side's :class:`RpcTimeout`."""


class ProtocolViolation(_FixedCode):
    """The peer broke the WSE protocol (a message that cannot be decoded, a forbidden message,
    too much data before authentication, an unknown subprotocol). Reported through the
    ``error`` events; the server then closes the connection."""

    CODE = WSE_ERROR.PROTOCOL_VIOLATION


_CLASS_OF: dict[str, type[WseError]] = {
    **{
        cls.CODE: cls
        for cls in (
            NotAuthorized,
            ConnectionFailed,
            AlreadyConnected,
            ConnectionNotReady,
            RpcTimeout,
            RpcDisconnected,
            ProtocolViolation,
        )
    },
    WSE_ERROR.RP_EXECUTION_FAILED: RpcError,
    WSE_ERROR.RP_NOT_REGISTERED: RpcError,
}


def _rebuild(
    cls: type[WseError], code: str, details: dict[str, Any] | None, message: str | None
) -> WseError:
    err = cls.__new__(cls)
    WseError.__init__(err, code, details, message)
    return err


__all__ = [
    "AlreadyConnected",
    "ConnectionFailed",
    "ConnectionNotReady",
    "NotAuthorized",
    "ProtocolViolation",
    "RpcDisconnected",
    "RpcError",
    "RpcTimeout",
    "WseError",
]
