"""wse-fast: WSE (the JavaScript ``wse`` package) for Python, on picows + uvloop.

One user, several devices; challenge-response authentication; messages by type; broadcast,
send-to-user and send-to-connection; RPC both ways; an auto-reconnecting client; JSON (wire
compatible with JavaScript WSE 4.x) and MessagePack protocols.
"""

from .auth import HmacChallenge, hmac_answer, hmac_solver
from .authentication import Challenge, IdentifyRequest
from .client import WseClient
from .connection import Client, Connection
from .constants import WSE_ERROR, WSE_REASON, WSE_STATUS
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
from .handshake import HandshakeRequest
from .listener import Listener
from .options import Limits, ServerLimits
from .protocols import InternalTypes, JsonProtocol, MsgpackProtocol, WireProtocol
from .server import WseServer

__version__ = "0.1.0"

__all__ = [
    "WSE_ERROR",
    "WSE_REASON",
    "WSE_STATUS",
    "AlreadyConnected",
    "Challenge",
    "Client",
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
    "RpcDisconnected",
    "RpcError",
    "RpcTimeout",
    "ServerLimits",
    "WireProtocol",
    "WseClient",
    "WseError",
    "WseServer",
    "hmac_answer",
    "hmac_solver",
]
