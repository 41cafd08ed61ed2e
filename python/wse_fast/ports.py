"""The narrow interfaces (ports) that the layers below the server are handed, so that none of
them knows :class:`~wse_fast.WseServer`: each names only what its user calls.

Modules import this one, never ``server``; the server satisfies every port structurally (no
registration, no base class). A port that names a class of a higher module lives beside its one
user instead (``server_connection.SessionHost``, ``transport.host.UpgradeHost``,
``metrics.MetricsSource``), so that this module stays at the bottom of the import graph.
"""

from __future__ import annotations

from typing import Any, Protocol


class SentMeter(Protocol):
    """What counts the messages sent (``ServerMetrics``): tested once per send."""

    @property
    def counting(self) -> bool: ...

    def count_sent(self, type: str, size: int, connections: int = 1) -> None: ...


class ErrorEvents(Protocol):
    """Where a connection reports what its application caused (the server's ``when``)."""

    def emit_unless_within(self, name: str, *args: Any) -> None: ...


class Encoder(Protocol):
    """Builds one frame of the server's protocol (``Wire.encode``)."""

    def __call__(self, type: str, payload: Any, stamp: str | None) -> bytes: ...


class ConnectionHost(Protocol):
    """What a :class:`~wse_fast.connection.Connection` needs from the node it belongs to."""

    @property
    def encode(self) -> Encoder: ...

    @property
    def metrics(self) -> SentMeter: ...

    @property
    def when(self) -> ErrorEvents: ...

    @property
    def timeout(self) -> float | None: ...


class UserHost(Protocol):
    """What a :class:`~wse_fast.connection.User` (a user) needs from its registry: the
    node's encoder, to encode a message once for every device, and what counts it."""

    @property
    def encode(self) -> Encoder: ...

    @property
    def metrics(self) -> SentMeter | None: ...
