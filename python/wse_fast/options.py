"""What one connection may take: the limits a server and a client share, and the server's own.

``WseClient(url, limits=Limits(max_message_size=4 << 20))``,
``WseServer(identify, limits=ServerLimits(max_in_flight=16))``. Frozen: one object may serve
several servers or clients; derive a variant with ``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .sansio.deflate import DeflateSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Transport limits of one connection, on either side.

    - ``max_message_size``: the largest message taken, in one frame or across fragments
      (larger: close 1009 before it is buffered);
    - ``max_pending_bytes``: what may wait for one slow reader in this process (the
      kernel's socket buffers come on top); past it the connection is dropped at once
      (close 1008, ``wse.slow-consumer``): on picows what still waits is thrown away and
      the Close goes behind what the socket already holds (the kernel's buffers and about
      64 KiB more, whole frames only), so a reader that catches up reads the 1008; the
      close handshake then takes at most ``close_timeout``. None: no limit;
    - ``ping_interval`` / ``ping_timeout``: keepalive, a ping after this long without hearing
      from the peer and a drop when no pong comes within the timeout; None turns it off;
    - ``close_timeout``: how long a close handshake may take before the socket is aborted;
    - ``read_buffer_size``: picows's initial read buffer per connection (the client's; on
      the server only with ``WSE_FAST_SERVER_SOCKETS=picows``: its own sockets share one
      read buffer per event loop);
    - ``compression``: permessage-deflate (RFC 7692), off by default as in Node.js ``ws``.
      A server agrees to a client's offer, a client offers it. Without takeover every
      message is compressed on its own: a broadcast is compressed once and the same frame
      goes to every connection that agreed, and a connection keeps no zlib state between
      messages. A compressed message inflating past the message limit closes 1009 (before
      authentication: past ``auth_max_message_size``);
    - ``compression_threshold``: messages whose payload is shorter go plain (bytes);
    - ``compression_level``: zlib's level, 1 (fastest) to 9 (smallest);
    - ``compression_takeover``: a compression context per connection, each way, where the
      peer allows it (smaller messages when they repeat one another; every message, a
      broadcast too, is then compressed per connection);
    - ``compression_window_bits`` / ``compression_mem_level``: with takeover, what bounds
      each connection's contexts: about ``2 ** (bits + 2) + 2 ** (mem_level + 9)`` bytes to
      compress and ``2 ** bits`` + 7 KiB to inflate (32 KiB and 11 KiB at 12 and 5); a peer
      whose window cannot be limited is asked not to take over.
    """

    max_message_size: int = 1 << 20
    max_pending_bytes: int | None = 4 << 20
    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0
    close_timeout: float = 5.0
    read_buffer_size: int = 2048
    compression: bool = False
    compression_threshold: int = 128
    compression_level: int = 6
    compression_takeover: bool = False
    compression_window_bits: int = 12
    compression_mem_level: int = 5

    def __post_init__(self) -> None:
        self.deflate_settings()  # checks the compression options when they are made
        if self.ping_interval is not None and not 0 < self.ping_timeout <= self.ping_interval:
            # picows checks this only when a connection starts, and then fails every one
            raise ValueError("ping_timeout must be positive and not exceed ping_interval")
        if min(self.max_message_size, self.read_buffer_size) < 1 or self.close_timeout < 0:
            raise ValueError("sizes must be at least 1 and close_timeout not negative")

    def deflate_settings(self) -> DeflateSettings | None:
        """The compression options as the extension takes them; None when it is off."""
        settings = DeflateSettings(
            level=self.compression_level,
            mem_level=self.compression_mem_level,
            threshold=self.compression_threshold,
            takeover=self.compression_takeover,
            window_bits=self.compression_window_bits,
        )
        return settings if self.compression else None


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
      can grow picows's read buffer to; None leaves the kernel's autotuning;
    - ``listen_backlog``: the accept queue of the own listener, connections the kernel has
      completed and the server not yet accepted. When a restart brings every client back at
      once, connections past it are dropped by the kernel and retried by the client after
      seconds (SYN retransmission). None: the kernel's own bound (Linux's
      ``net.core.somaxconn``; 4096 where it cannot be read), and at least
      ``max_unauthenticated``; the kernel caps any value at ``somaxconn``.
    """

    auth_timeout: float = 10.0
    auth_max_message_size: int = 16 * 1024
    handshake_timeout: float | None = 5.0
    max_unauthenticated: int = 2048
    max_unauthenticated_per_ip: int = 256
    max_in_flight: int = 64
    max_tasks: int = 10_000
    receive_buffer: int | None = None
    listen_backlog: int | None = None

    def __post_init__(self) -> None:
        Limits.__post_init__(self)
        if self.listen_backlog is not None and self.listen_backlog < 1:
            raise ValueError("listen_backlog must be at least 1")
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
