"""The option objects: what one connection may take (the limits a server and a client share,
and the server's own), how it compresses, how a client reconnects, how a node joins a cluster.

``WseClient(url, limits=Limits(max_message_size=4 << 20), reconnect=Reconnect(delay=0.5))``,
``WseServer(identify, limits=ServerLimits(max_in_flight=16, compression=Compression()))``,
``server.join_cluster(url, ClusterOptions(node="web-1"))``. Frozen: one object may serve
several servers or clients; derive a variant with ``dataclasses.replace``. Nothing here
imports picows or nats: building options never starts a network stack.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from .constants import RECONNECT_CODES
from .sansio.deflate import Compression

#: How long (seconds) :meth:`WseServer.close` lets running handlers finish by default: the
#: default RPC timeout of both sides (a call still running this long after the close began
#: has timed out at a caller with the default timeout, so waiting longer answers nobody), and
#: with ``close_timeout`` (5 s) it fits in the 30 s that Kubernetes (terminationGracePeriod)
#: and gunicorn (graceful_timeout) give a process to stop. (Here, not in the server's module:
#: the command line's supervisor needs it without importing the server.)
DEFAULT_GRACE = 20.0

__all__ = ["ClusterOptions", "Compression", "Limits", "Reconnect", "ServerLimits", "backoff_delay"]


def backoff_delay(
    attempt: int,
    *,
    base: float,
    jitter: float,
    factor: float,
    cap: float,
    rand: Callable[[], float],
) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0: the first after a loss).

    The first wait is ``base + rand() * jitter``, as in the JavaScript client. Each failed
    attempt multiplies both terms by ``factor``, until the longest possible wait would pass
    ``cap``; from then on the window keeps its proportions with ``cap`` as its top, so clients
    that have retried for long stay spread instead of piling up on the cap. With the defaults
    (1 + up to 1 s) half of each window is fixed and half random ("equal jitter"); with
    ``base=0`` the whole window is random ("full jitter").
    """
    top = base + jitter
    if top <= 0:
        return 0.0
    limit = cap / top
    # Compared in logarithms: factor ** attempt overflows a float after ~1000 attempts.
    capped = attempt * math.log(factor) >= math.log(limit)
    scale = limit if capped else factor**attempt
    return scale * (base + rand() * jitter)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconnect:
    """How a :class:`~wse_fast.WseClient` re-establishes a lost connection
    (``WseClient(url, reconnect=Reconnect(...))``; ``reconnect=None``: never).

    A connection lost with one of ``codes`` (by default the reference's: 1005, 1006,
    1011-1014, 4000) is re-established by itself. The first attempt waits ``delay`` plus up
    to ``jitter`` at random, as the JavaScript client does; each failed attempt multiplies
    that window by ``factor``, and no wait exceeds ``max_delay``. A successful connection
    starts the next loss from the first window again (see :func:`backoff_delay`).

    - ``random``: the jitter's source (floats in [0, 1)): pass ``random.Random(seed).random``
      for a reproducible schedule;
    - ``keep_trying``: JavaScript's behaviour: ``connect`` keeps trying until the server is up
      (it still raises when refused, or when ``close`` stops it), and every failed attempt,
      the first or a reconnect, is reported: ``closed`` (1006 and no reason when no socket
      opened) and ``updated`` ``OFFLINE`` then ``RE_CONNECTING``. Without it ``connect``
      raises the first attempt's error, and reconnect attempts are reported only by the
      ``error`` of a socket that would not open.
    """

    delay: float = 1.0
    jitter: float = 1.0
    factor: float = 2.0
    max_delay: float = 30.0
    codes: Collection[int] = RECONNECT_CODES
    keep_trying: bool = False
    random: Callable[[], float] = field(default=random.random, compare=False)

    def __post_init__(self) -> None:
        if self.delay < 0 or self.jitter < 0:
            raise ValueError("reconnect delay and jitter must not be negative")
        if self.factor < 1:
            raise ValueError("reconnect factor must be at least 1")
        if self.max_delay <= 0:
            raise ValueError("reconnect max_delay must be positive")
        # frozen: the one place the value is normalised, before anyone reads it
        object.__setattr__(self, "codes", frozenset(self.codes))

    def wait(self, attempt: int) -> float:
        """Seconds before reconnect attempt ``attempt`` (0: the first after a loss)."""
        return backoff_delay(
            attempt,
            base=self.delay,
            jitter=self.jitter,
            factor=self.factor,
            cap=self.max_delay,
            rand=self.random,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterOptions:
    """How a server joins a cluster on NATS
    (``server.join_cluster(urls, ClusterOptions(node="web-1"))``).

    - ``node``: this node's name (default: host, pid and a random part);
    - ``prefix``: of every subject and bucket, to keep clusters apart on one NATS;
    - ``node_ttl``: how soon a node that died without a goodbye stops counting (seconds);
    - ``connect_timeout``: for the first link to NATS (the server does not start without it);
    - ``max_outbox``: bytes that may wait for NATS before what is sent is counted as lost;
    - ``health_timeout``: what a heartbeat (a NATS round trip) and a lookup of ``online`` may
      take before the node counts as unhealthy (default: a third of ``node_ttl``, at least
      1 s);
    - ``max_pending_users``: users whose registry change may wait while NATS takes none (no
      link, or no registry write done within ``node_ttl``) before the node re-syncs its
      whole state instead (a failed write is no progress); while NATS takes them, changes
      only wait for the writer, up to ten times ``max_pending_users``;
    - ``nats_options``: passed to ``nats.connect`` (TLS: ``{"tls": ssl_context}``,
      credentials: ``{"user_credentials": ...}``; frames and call payloads cross NATS as
      they are).
    """

    node: str | None = None
    prefix: str = "wse"
    node_ttl: float = 6.0
    connect_timeout: float = 10.0
    max_outbox: int = 8 << 20
    health_timeout: float | None = None
    max_pending_users: int = 10_000
    nats_options: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.max_pending_users < 1:
            raise ValueError("max_pending_users must be at least 1")
        if self.node_ttl <= 0 or self.connect_timeout <= 0 or self.max_outbox < 1:
            raise ValueError("node_ttl, connect_timeout and max_outbox must be positive")


#: ``Limits.read_buffer_size``'s default: a value other than this warns (deprecated).
_READ_BUFFER_SIZE = 2048


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Transport limits of one connection, on either side.

    - ``max_message_size``: the largest message taken, in one frame or across fragments
      (larger: close 1009 before it is buffered);
    - ``max_pending_bytes``: what may wait for one slow reader in this process (the
      kernel's socket buffers come on top); past it the connection is dropped at once
      (close 1008, ``wse.slow-consumer``): on the own listener and the client what still
      waits is thrown away and
      the Close goes behind what the socket already holds (the kernel's buffers and about
      64 KiB more, whole frames only), so a reader that catches up reads the 1008; the
      close handshake then takes at most ``close_timeout``. None: no limit;
    - ``ping_interval`` / ``ping_timeout``: keepalive, a ping after this long without hearing
      from the peer and a drop when no pong comes within the timeout; None turns it off;
    - ``close_timeout``: how long a close handshake may take before the socket is aborted;
    - ``read_buffer_size``: deprecated, no effect (a value other than the default warns):
      the server's sockets share one read buffer per event loop, and the client's is
      picows's default;
    - ``compression``: permessage-deflate (RFC 7692) as a :class:`Compression`, or None
      (the default, as in Node.js ``ws``): off. A server agrees to a client's offer, a
      client offers it. A compressed message inflating past the message limit closes 1009
      (before authentication: past ``auth_max_message_size``).
    """

    max_message_size: int = 1 << 20
    max_pending_bytes: int | None = 4 << 20
    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0
    close_timeout: float = 5.0
    read_buffer_size: int = _READ_BUFFER_SIZE
    compression: Compression | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.compression, Compression | None):
            # 0.1 took ``compression=True`` and six ``compression_*`` fields
            raise TypeError("compression takes a Compression(...) or None")
        if self.ping_interval is not None and not 0 < self.ping_timeout <= self.ping_interval:
            # picows checks this only when a connection starts, and then fails every one
            raise ValueError("ping_timeout must be positive and not exceed ping_interval")
        if min(self.max_message_size, self.read_buffer_size) < 1 or self.close_timeout < 0:
            raise ValueError("sizes must be at least 1 and close_timeout not negative")
        if self.read_buffer_size != _READ_BUFFER_SIZE:
            # it sized the read buffers of the server's picows sockets, which are gone
            warnings.warn(
                "Limits.read_buffer_size has no effect and will be removed",
                DeprecationWarning,
                stacklevel=3,  # the caller of the dataclass's __init__
            )


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
    - ``receive_buffer``: SO_RCVBUF of each socket (own listener): what the kernel holds
      unread for one connection; it turns the kernel's receive autotuning off for the socket,
      so it also caps what a connection receives per round trip. None leaves the kernel's
      autotuning;
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
