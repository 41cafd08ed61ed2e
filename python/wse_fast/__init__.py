"""wse-fast: WSE (the JavaScript ``wse`` package) for Python, on picows + uvloop.

One user, several devices; challenge-response authentication; messages by type; broadcast,
send-to-user and send-to-connection; RPC both ways; an auto-reconnecting client; JSON (wire
compatible with JavaScript WSE 4.x) and MessagePack protocols.

The names below are loaded on first use (PEP 562 ``__getattr__``): ``import wse_fast`` and
``import wse_fast.sansio`` start no network stack (neither picows nor uvloop is imported
until ``WseServer`` or ``WseClient`` is touched), so a CLI's ``--help``, a type checker, or a
program that only uses the sans-I/O core stays light. Type checkers see the imports below.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .authentication import Challenge, IdentifyRequest
    from .client import WseClient
    from .connection import Client as Client  # deprecated: User
    from .connection import Connection, User
    from .constants import WSE_ERROR, WSE_REASON, WSE_STATUS, Cid
    from .errors import (
        AlreadyConnected,
        ConnectionFailed,
        ConnectionNotReady,
        NotAuthorized,
        ProtocolViolation,
        RpcDisconnected,
        RpcError,
        RpcTimeout,
        WseError,
    )
    from .events import Channel, ClientEvents, ClientHandler, ServerEvents, ServerHandler
    from .handshake import HandshakeRequest
    from .hmac_challenge import HmacChallenge, hmac_answer, hmac_solver
    from .listener import Listener
    from .options import ClusterOptions, Compression, Limits, Reconnect, ServerLimits
    from .protocols import InternalTypes, JsonProtocol, MsgpackProtocol, WireProtocol
    from .server import WseServer

__version__ = "0.1.0"

#: Where each public name lives: the module is imported when the name is first read.
_HOMES: dict[str, str] = {
    "HmacChallenge": "hmac_challenge",
    "hmac_answer": "hmac_challenge",
    "hmac_solver": "hmac_challenge",
    "Challenge": "authentication",
    "IdentifyRequest": "authentication",
    "WseClient": "client",
    "Connection": "connection",
    "WSE_ERROR": "constants",
    "WSE_REASON": "constants",
    "WSE_STATUS": "constants",
    "Cid": "constants",
    "AlreadyConnected": "errors",
    "ConnectionFailed": "errors",
    "ConnectionNotReady": "errors",
    "NotAuthorized": "errors",
    "ProtocolViolation": "errors",
    "RpcDisconnected": "errors",
    "RpcError": "errors",
    "RpcTimeout": "errors",
    "WseError": "errors",
    "Channel": "events",
    "ClientEvents": "events",
    "ClientHandler": "events",
    "ServerEvents": "events",
    "ServerHandler": "events",
    "HandshakeRequest": "handshake",
    "Listener": "listener",
    "ClusterOptions": "options",
    "Compression": "options",
    "Limits": "options",
    "Reconnect": "options",
    "ServerLimits": "options",
    "InternalTypes": "protocols",
    "JsonProtocol": "protocols",
    "MsgpackProtocol": "protocols",
    "WireProtocol": "protocols",
    "User": "connection",
    "WseServer": "server",
}

__all__ = [
    "WSE_ERROR",
    "WSE_REASON",
    "WSE_STATUS",
    "AlreadyConnected",
    "Challenge",
    "Channel",
    "Cid",
    "ClientEvents",
    "ClientHandler",
    "ClusterOptions",
    "Compression",
    "Connection",
    "ConnectionFailed",
    "ConnectionNotReady",
    "HandshakeRequest",
    "HmacChallenge",
    "IdentifyRequest",
    "InternalTypes",
    "JsonProtocol",
    "Limits",
    "Listener",
    "MsgpackProtocol",
    "NotAuthorized",
    "ProtocolViolation",
    "Reconnect",
    "RpcDisconnected",
    "RpcError",
    "RpcTimeout",
    "ServerEvents",
    "ServerHandler",
    "ServerLimits",
    "User",
    "WireProtocol",
    "WseClient",
    "WseError",
    "WseServer",
    "hmac_answer",
    "hmac_solver",
]


#: 0.1's names, still importable for one release with a DeprecationWarning: old name to
#: (module, new name).
_DEPRECATED: dict[str, tuple[str, str]] = {
    "Client": ("connection", "User"),  # a user on the server, easily taken for WseClient
}

if not TYPE_CHECKING:  # hidden from type checkers: a misspelt name stays an error, not Any

    def __getattr__(name: str) -> Any:
        if name in _DEPRECATED:
            module, new = _DEPRECATED[name]
            warnings.warn(
                f"wse_fast.{name} is now wse_fast.{new}", DeprecationWarning, stacklevel=2
            )
            return getattr(importlib.import_module(f".{module}", __name__), new)
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module 'wse_fast' has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{home}", __name__), name)
        globals()[name] = value  # read once: later lookups do not come back here
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
