"""The accepted connections of one server, as a broadcast reaches them.

picows endpoints take a broadcast frame through :func:`picows_endpoint.write_all`, which
queues it for each in one loop and lets the loop turn's flush send it to every socket in one
call into the codec; endpoints of message-level transports (ASGI, aiohttp) take it one by one.
"""

from __future__ import annotations

from .base import Transport
from .picows_endpoint import Endpoint, write_all


class EndpointGroup:
    __slots__ = ("_native", "_others")

    def __init__(self) -> None:
        self._native: dict[str, Endpoint] = {}
        self._others: dict[str, Transport] = {}

    def __len__(self) -> int:
        return len(self._native) + len(self._others)

    def add(self, key: str, endpoint: Transport) -> None:
        if isinstance(endpoint, Endpoint):
            self._native[key] = endpoint
        else:
            self._others[key] = endpoint

    def discard(self, key: str) -> None:
        if self._native.pop(key, None) is None:
            self._others.pop(key, None)

    def write_all(self, frame: bytes) -> None:
        """Queues ``frame`` for every endpoint in the group."""
        if self._native:
            write_all(self._native.values(), frame)
        if self._others:
            for endpoint in self._others.values():
                endpoint.write(frame)
