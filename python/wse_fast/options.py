"""What one connection may take: the limits a server and a client share, and the server's own.

``WseClient(url, limits=Limits(max_message_size=4 << 20))``,
``WseServer(identify, limits=ServerLimits(max_in_flight=16))``. Frozen: one object may serve
several servers or clients; derive a variant with ``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Transport limits of one connection, on either side.

    - ``max_message_size``: the largest message taken, in one frame or across fragments
      (larger: close 1009 before it is buffered);
    - ``max_pending_bytes``: what may wait for one slow reader; past it the connection is
      dropped at once (close 1008, ``wse.slow-consumer``); None: no limit;
    - ``ping_interval`` / ``ping_timeout``: keepalive, a ping after this long without hearing
      from the peer and a drop when no pong comes within the timeout; None turns it off;
    - ``close_timeout``: how long a close handshake may take before the socket is aborted;
    - ``read_buffer_size``: picows's initial read buffer per connection.
    """

    max_message_size: int = 1 << 20
    max_pending_bytes: int | None = 4 << 20
    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0
    close_timeout: float = 5.0
    read_buffer_size: int = 2048

    def __post_init__(self) -> None:
        if self.ping_interval is not None and not 0 < self.ping_timeout <= self.ping_interval:
            # picows checks this only when a connection starts, and then fails every one
            raise ValueError("ping_timeout must be positive and not exceed ping_interval")
        if min(self.max_message_size, self.read_buffer_size) < 1 or self.close_timeout < 0:
            raise ValueError("sizes must be at least 1 and close_timeout not negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits(Limits):
    """The server's limits: the shared ones, what a stranger may cost (see README, Security
    and limits) and how many handler tasks may run.

    - ``auth_timeout``: a connection not accepted within it is refused;
    - ``auth_max_message_size``: the largest message before authentication (close 1009), at
      most ``max_message_size``; about twice it is what a stranger may send in all (1008);
    - ``handshake_timeout``: for the upgrade request and a TLS handshake (own listener);
    - ``max_unauthenticated`` / ``max_unauthenticated_per_ip``: strangers in all / per client
      address (past either: HTTP 503 / 429);
    - ``max_in_flight`` / ``max_tasks``: handler tasks per connection / in all; past either
      the connection stops reading until one ends;
    - ``receive_buffer``: SO_RCVBUF of each socket (own listener), which bounds what one read
      can grow picows's read buffer to; None leaves the kernel's autotuning.
    """

    auth_timeout: float = 10.0
    auth_max_message_size: int = 16 * 1024
    handshake_timeout: float | None = 5.0
    max_unauthenticated: int = 2048
    max_unauthenticated_per_ip: int = 256
    max_in_flight: int = 64
    max_tasks: int = 10_000
    receive_buffer: int | None = None

    def __post_init__(self) -> None:
        Limits.__post_init__(self)
        counts = (
            self.auth_max_message_size,
            self.max_unauthenticated,
            self.max_unauthenticated_per_ip,
            self.max_in_flight,
            self.max_tasks,
        )
        if min(counts) < 1:
            raise ValueError("limits must be at least 1")
        if self.auth_max_message_size > self.max_message_size:
            # frozen: the one place the value is adjusted, before anyone reads it
            object.__setattr__(self, "auth_max_message_size", self.max_message_size)
