"""``wse-fast serve --workers N``: a group of worker processes sharing a port.

The workers are subprocesses running this same command with the hidden ``--worker-of-group``
option, not ``multiprocessing`` children: each imports the application itself (nothing is
pickled, nothing of the parent's event loop is inherited), has its own signals and exit
status, and runs the same code as a single ``wse-fast serve``. Two pipes tie a worker to its
parent: it writes its pid to the first (its own) once it listens (the parent announces the
group only when every worker does), and it closes its server when the second (shared by all)
reaches end-of-file, which happens when the parent exits in any way, SIGKILL included; no
worker outlives its parent and keeps the port. A worker that ends on its own is replaced in
its slot (see :class:`WorkerGroup`); its environment tells it its slot and restarts.

The workers get the cluster's URLs, credentials included, in the environment
(:data:`~wse_fast.cli.common.CLUSTER_ENV`), not in argv, which every local user can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import click

from ..options import DEFAULT_GRACE
from .common import (
    CLUSTER_ENV,
    STOP_SIGNALS,
    address,
    describe_status,
    log,
    reuseport_socket,
    shown_urls,
)

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
    from ..cluster.local_nats import LocalNats

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
