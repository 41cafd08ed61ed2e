"""The string constants of the JavaScript ``wse`` 4.x package, under the same names."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final, TypeAlias

#: A user's id, as ``identify`` gave it to ``req.accept(cid)``: any hashable value (a str or
#: a number where it must cross a cluster). What ``server.send``, ``call``, ``online`` and
#: ``drop_client`` take.
Cid: TypeAlias = Hashable


class WSE_REASON:
    """Close reasons (all sent with close code 1000)."""

    NO_REASON: Final = ""
    CLIENTS_CONCURRENCY: Final = "wse.clients-concurrency"
    NOT_AUTHORIZED: Final = "wse.not-authorized"
    PROTOCOL_ERR: Final = "wse.protocol-error"
    BY_CLIENT: Final = "wse.by-client"
    BY_SERVER: Final = "wse.by-server"


class WSE_STATUS:
    """States of a client, reported through ``client.when.updated``."""

    IDLE: Final = "IDLE"
    OFFLINE: Final = "OFFLINE"
    READY: Final = "READY"
    CONNECTING: Final = "CONNECTING"
    RE_CONNECTING: Final = "RE_CONNECTING"


class WSE_ERROR:
    """Error codes carried by :class:`wse_fast.WseError` and RPC error payloads."""

    # client
    INVALID_CRA_HANDLER: Final = "wse.client.invalid-cra-handler"
    RP_TIMEOUT: Final = "wse.client.rp.timeout"
    RP_DISCONNECT: Final = "wse.client.rp.disconnect"
    CLIENT_ALREADY_CONNECTED: Final = "wse.client.already-connected"
    WS_CLIENT_ERROR: Final = "wse.client.ws-error"
    NOT_AUTHORIZED: Final = "wse.not-authorized"
    CONNECTION_NOT_READY: Final = "wse.client.not-ready"
    # server
    NO_CLIENT_CONNECTION: Final = "wse.server.client.connection-missing"
    IDENTIFY_HANDLER_MISSING: Final = "wse.server.auth.identify-handler-missing"
    INVALID_CRA_GENERATOR: Final = "wse.server.auth.invalid-cra-generator"
    RP_EXECUTION_FAILED: Final = "wse.server.rp.failed"
    RP_NOT_REGISTERED: Final = "wse.server.rp.not-registered"
    RP_ALREADY_REGISTERED: Final = "wse.server.rp.already-registered"
    PROTOCOL_VIOLATION: Final = "wse.server.protocol-violation"
    CONNECTION_ERROR: Final = "wse.server.connection-error"
    MESSAGE_PROCESSING_ERROR: Final = "wse.server.msg-processing-error"


# RFC 6455 §5.2 opcodes (the Rust codec has its own two in rust/src/frame.rs).
OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

# What codec.FrameReader.feed reports, each as ``(kind, a, b)``: a message or control frame
# under its opcode (``a`` its payload; ``b`` for a message: whether RSV1 says compressed), a
# Close received (``a``, ``b``: its code and reason), or a failure (``a``, ``b``: the code and
# reason to close with), found in a Close frame (the peer is closing anyway) or elsewhere;
# or, last, a stranger past its byte budget (``a``, ``b``: 1008 and OVER_BUDGET_REASON).
EVENT_FAIL: Final = 0x00
EVENT_FAIL_IN_CLOSE: Final = 0x18
EVENT_OVER_BUDGET: Final = 0x19
#: Why a stranger that sent more than it may before authentication is closed (with 1008).
OVER_BUDGET_REASON: Final = "too much data before authentication"

# RFC 6455 §7.4.1 close codes used here.
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_NO_STATUS: Final = 1005
CLOSE_ABNORMAL: Final = 1006
CLOSE_INVALID_TEXT: Final = 1007
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_SERVICE_RESTART: Final = 1012
CLOSE_JUMP: Final = 4000
JUMP_REASON: Final = "jump"
#: Reason reported (code 1008) for a connection dropped because it did not read fast enough.
SLOW_CONSUMER: Final = "wse.slow-consumer"

#: Close codes after which the client reconnects by itself, as the JavaScript client does.
RECONNECT_CODES: Final = frozenset({1005, 1006, 1011, 1012, 1013, 1014, CLOSE_JUMP})
