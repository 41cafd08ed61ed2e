"""What the WSE layer needs of a transport, and what a transport tells it.

Every transport (the own listener, the client on picows, an ASGI server, aiohttp) gives each
connection an endpoint with this interface, and reports to one :class:`EndpointHandler`.
Frames are the unit on the way out on every transport: complete server frames built by the
codec, so that a broadcast is encoded once for every connection whatever carries it (the
message-level transports take the payload back out of the frame, see
:func:`wse_fast.sansio.framing.unframe`).
"""

from __future__ import annotations

from typing import Any, Protocol


class Transport(Protocol):
    """One connection's way to its peer."""

    @property
    def open(self) -> bool:
        """True until a Close is sent or the connection is gone."""
        ...

    @property
    def remote_addr(self) -> Any:
        """The socket's peer as the transport knows it (None once closed)."""
        ...

    def write(self, frame: bytes) -> None:
        """Queues one complete frame; frames leave in the order written, nothing after a
        Close."""
        ...

    def close(self, code: int, reason: str = "", *, wait: bool = True) -> None:
        """Sends a Close (after what is queued). ``wait=False``: the connection is ended as
        soon as the Close is out, without waiting for the peer's answer (for strangers)."""
        ...

    def abort(self) -> None:
        """Ends the connection now, without a close handshake."""
        ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class EndpointHandler(Protocol):
    """What a transport reports about one connection, in this order: ``on_open`` once, then
    messages (and overflows), then ``on_close`` once."""

    def on_open(self, endpoint: Any) -> None: ...

    def on_message(self, binary: bool, data: Any) -> None:
        """``data``: bytes-like (possibly a view valid only during the call) or, from
        message-level transports, ``str`` for a text message."""
        ...

    def on_close(self, code: int, reason: str) -> None: ...

    def on_overflow(self) -> None:
        """The peer reads slower than it is written to: the transport dropped it."""
        ...
