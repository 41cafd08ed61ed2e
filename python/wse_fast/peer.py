"""What a server and a client share: a wire protocol, message handlers and procedures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .constants import WSE_ERROR
from .events import Channel, Procedures
from .protocols import FrameEncoder, InternalTypes, JsonProtocol, WireProtocol


class Peer:
    """One end of WSE: encodes and decodes with its protocol, routes messages by type, and
    answers calls. ``mask`` is True on the client side (RFC 6455 §5.3)."""

    def __init__(self, protocol: WireProtocol | None, mask: bool) -> None:
        self.protocol: WireProtocol = protocol or JsonProtocol()
        self.protocol_types = InternalTypes.of(self.protocol.internal_types)
        self.channel = Channel()
        self.procedures = Procedures(WSE_ERROR.RP_ALREADY_REGISTERED)
        encoder = FrameEncoder(self.protocol, mask)
        self.encode = encoder
        self._text_input = encoder.text_input
        self._unpack = self.protocol.unpack

    def register(self, name: str, fn: Callable[..., Any] | None = None) -> Any:
        """Registers procedure ``name`` for the other side to call (also as a decorator).

        On a server ``fn(conn, payload)``, on a client ``fn(payload)``; it returns the answer
        or raises (see :class:`wse_fast.WseError`), and may be a coroutine function.
        """
        return self.procedures.register(name, fn)

    def unregister(self, name: str) -> None:
        self.procedures.unregister(name)

    def decode(self, binary: bool, data: Any) -> tuple[str, Any, str | None]:
        """A received message to ``(type, payload, stamp)`` with this side's protocol."""
        if self._text_input and not binary:
            data = bytes(data).decode()  # custom protocols get text as str, as in JavaScript
        return self._unpack(data)
