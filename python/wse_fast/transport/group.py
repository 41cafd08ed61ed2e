"""The accepted connections of one server, as a broadcast reaches them.

Socket endpoints (:class:`~.endpoint.Endpoint`) take a broadcast frame through
:func:`endpoint.write_all`, which queues it for each in one loop and lets the loop
turn's flush send it to every socket in one call into the codec; endpoints of message-level
transports (ASGI, aiohttp) take it one by one.

With permessage-deflate, socket endpoints whose compressor is shared (no context takeover)
are grouped by it: a broadcast is compressed once per group (one per window size in use, in
practice one) and that one frame is queued for all of them, as the plain frame is for the
rest. Endpoints with a compression context of their own take the frame one by one and
compress it themselves.
"""

from __future__ import annotations

from ..sansio.deflate import Compressor
from .base import Transport
from .endpoint import DeflateEndpoint, Endpoint, write_all


class EndpointGroup:
    __slots__ = ("_compressed", "_native", "_others")

    def __init__(self) -> None:
        self._native: dict[str, Endpoint] = {}
        self._compressed: dict[Compressor, dict[str, Endpoint]] = {}
        self._others: dict[str, Transport] = {}

    def __len__(self) -> int:
        count = len(self._native) + len(self._others)
        if self._compressed:
            count += sum(len(members) for members in self._compressed.values())
        return count

    def add(self, key: str, endpoint: Transport) -> None:
        if isinstance(endpoint, DeflateEndpoint):
            compressor = endpoint.compressor
            if compressor is None:  # agreed, but never compressed to (an 8-bit window)
                self._native[key] = endpoint
            elif compressor.shared:
                self._compressed.setdefault(compressor, {})[key] = endpoint
            else:
                self._others[key] = endpoint  # its write() compresses with its own context
        elif isinstance(endpoint, Endpoint):
            self._native[key] = endpoint
        else:
            self._others[key] = endpoint

    def discard(self, key: str) -> None:
        if self._native.pop(key, None) is not None or self._others.pop(key, None) is not None:
            return
        for members in self._compressed.values():
            if members.pop(key, None) is not None:
                return

    def write_all(self, frame: bytes) -> None:
        """Queues ``frame`` for every endpoint in the group (compressed, for those that
        agreed, once per shared compressor)."""
        if self._native:
            write_all(self._native.values(), frame)
        if self._compressed:
            for compressor, members in self._compressed.items():
                if members:
                    write_all(members.values(), compressor.compress_frame(frame))
        if self._others:
            for endpoint in self._others.values():
                endpoint.write(frame)
