"""What the programs of the ``wse-fast`` command share: its logger, the stop signals, the
cluster's environment variable, a SO_REUSEPORT socket, and how addresses, URLs and a process's
end are written in a log line."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Sequence

import click

from ..cluster.local_nats import without_credentials

#: One logger for every program of the command (its records say ``wse_fast.cli``).
log = logging.getLogger("wse_fast.cli")

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: ``serve --cluster``'s environment variable: how the workers get their cluster's URLs
#: (credentials included), and how a user gives a URL with a password without argv.
CLUSTER_ENV = "WSE_FAST_CLUSTER"


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEPORT (not listening yet): every
    worker binds one, and the kernel spreads new connections over those that listen."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise click.ClickException("--workers needs SO_REUSEPORT, which this system lacks")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise click.ClickException(f"cannot resolve {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot bind {host}:{port}: {exc.strerror}") from None
    return sock


def shown_urls(urls: Sequence[str]) -> str:
    """URLs for a log line: without their credentials."""
    return ", ".join(without_credentials(url) for url in urls)


def shown_server_url(url: str) -> str:
    """A WebSocket server's URL as a report prints and saves it: without user name and
    password, nor a query (where a token often travels)."""
    return without_credentials(url).partition("?")[0]


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_status(status: int) -> str:
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"
