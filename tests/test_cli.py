"""``wse-fast serve`` as a real process: one process, or workers sharing a port with
SO_REUSEPORT (each connection answered by one of them), stopped by SIGTERM with their
connections closed and the port released; a worker that dies is named and restarted in its
slot (its /health tells so, in a cluster under a new node name) while the others serve, the
group stops with status 1 past the crash-loop bound (or at once with --max-restarts 0), a stop
signal during a restart stops everything, and workers stop when their parent is killed.
--backlog sets every worker's accept queue. Workers in a cluster serve as one
server (a user on one reaches a user on the other), on a nats-server of the command's own
(stopped after them) or a given one (left running). Bad MODULE:ATTR arguments are explained;
--help documents the options."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from wse_fast import WseClient
from wse_fast.cluster.local_nats import LocalNats

from tests.conftest import EventLog, listen_backlogs

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = shutil.which("wse-fast", path=str(Path(sys.executable).parent))
# the installed console script when there is one, else the module: both run cli.main
COMMAND = [SCRIPT] if SCRIPT is not None else [sys.executable, "-m", "wse_fast"]
# The line the command writes once it accepts connections (a group: once every worker does).
SERVING = re.compile(
    r"serving \S+ on (?:ws://)?127\.0\.0\.1:(\d+)(?:.* workers \(pids ([\d, ]+)\))?"
)
CLOSE_SERVICE_RESTART = 1012
CLUSTER = re.compile(r"serving \S+ on 127\.0\.0\.1:\d+, cluster (nats://\S+?:\d+)")


class Served:
    """``wse-fast serve ...`` running in a child process; what it writes is kept."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.output: list[str] = []
        self.workers: list[int] = []

    async def serving(self) -> int:
        """The port, from the line written once serving starts."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            while line := (await self.proc.stdout.readline()).decode():
                self.output.append(line)
                if found := SERVING.search(line):
                    if found[2]:
                        self.workers = [int(pid) for pid in found[2].split(", ")]
                    return int(found[1])
        raise AssertionError(f"it exited before serving:\n{''.join(self.output)}")

    async def line(self, pattern: str) -> str:
        """The next line written that matches ``pattern``."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            while line := (await self.proc.stdout.readline()).decode():
                self.output.append(line)
                if re.search(pattern, line):
                    return line
        raise AssertionError(f"it exited before writing {pattern!r}:\n{''.join(self.output)}")

    async def ended(self) -> tuple[int, str]:
        """Waits for the process to exit: its status and all it wrote."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            self.output.append((await self.proc.stdout.read()).decode())
            status = await self.proc.wait()
        return status, "".join(self.output)

    async def terminate(self) -> tuple[int, str]:
        self.proc.terminate()
        return await self.ended()


async def serve(*args: str) -> Served:
    proc = await asyncio.create_subprocess_exec(
        *COMMAND,
        "serve",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    return Served(proc)


async def health(port: int) -> tuple[int, dict[str, Any]]:
    """``GET /health`` of a worker's metrics port: its status and JSON."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    answer = await reader.read()  # the server closes after the answer
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def answering_pid(url: str, identity: str, log: EventLog) -> tuple[WseClient, int]:
    """A connected client and the pid of the process its `pid` call reached."""
    client = WseClient(url, reconnect=None)
    client.when.closed(log.hook("closed"))
    await client.connect(identity)
    return client, await client.call("pid")


def port_is_free(port: int) -> bool:
    """Nothing listens on the port any more (TIME_WAIT leftovers aside)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError:
            return False
    return True


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def users_on_both_workers(
    served: Served, port: int, log: EventLog
) -> tuple[dict[int, tuple[str, WseClient]], list[WseClient]]:
    """One (user, client) per worker pid; every client made, to close."""
    by_pid: dict[int, tuple[str, WseClient]] = {}
    clients: list[WseClient] = []
    # The kernel picks a listener per connection by a hash of its addresses: every new
    # source port is a fresh draw, so 64 connections all missing one worker has
    # probability 2**-63.
    for n in range(64):
        cid = f"user{n}"
        client, pid = await answering_pid(f"ws://127.0.0.1:{port}", cid, log)
        clients.append(client)
        by_pid.setdefault(pid, (cid, client))
        if len(by_pid) == 2:
            break
    assert sorted(by_pid) == sorted(served.workers)
    return by_pid, clients


async def tell_across(served: Served, port: int, log: EventLog) -> list[WseClient]:
    """A user on one worker sends to a user on the other, who gets it; the clients made."""
    by_pid, clients = await users_on_both_workers(served, port, log)
    (_, sender), (receiver_cid, receiver) = by_pid.values()
    receiver.channel.on("told", log.hook("told"))
    assert await sender.call("tell", {"cid": receiver_cid, "text": "across"}) is True
    [(payload,)] = await log.wait("told")
    assert payload == "across"
    return clients


def refuses_connections(url: str) -> bool:
    host, _, port = url.removeprefix("nats://").rpartition(":")
    with socket.socket() as probe:
        try:
            probe.connect((host, int(port)))
        except ConnectionRefusedError:
            return True
    return False


async def test_one_process_serves_a_factory_and_closes_its_connections_on_sigterm(
    log: EventLog,
) -> None:
    served = await serve("tests.cli_app:make_server", "--port", "0")
    try:
        port = await served.serving()
        client, pid = await answering_pid(f"ws://127.0.0.1:{port}", "alice", log)
        assert pid == served.proc.pid
    finally:
        status, output = await served.terminate()
    assert status == 0, output
    [(code, _reason)] = await log.wait("closed")
    assert code == CLOSE_SERVICE_RESTART  # server.close(), not a dead socket
    assert port_is_free(port)
    await client.close()


async def test_workers_share_the_port_and_all_stop_cleanly_on_sigterm(log: EventLog) -> None:
    served = await serve(
        "tests.cli_app:server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--workers",
        "2",
        "--no-cluster",
    )
    clients: list[WseClient] = []
    try:
        port = await served.serving()
        assert len(served.workers) == 2 and served.proc.pid not in served.workers
        by_pid, clients = await users_on_both_workers(served, port, log)
        (_, sender), (receiver_cid, _) = by_pid.values()
        # no cluster: each worker is a server of its own, the other's users unknown to it
        assert await sender.call("tell", {"cid": receiver_cid, "text": "lost"}) is False
    finally:
        status, output = await served.terminate()
    assert status == 0, output
    closed = await log.wait("closed", len(clients))
    assert {code for code, _ in closed} == {CLOSE_SERVICE_RESTART}  # each worker closed its own
    assert port_is_free(port)
    assert all(gone(pid) for pid in served.workers)
    for client in clients:
        await client.close()


def mapped_files(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


async def test_the_supervisor_imports_neither_the_server_nor_the_client() -> None:
    # The supervisor of --workers only starts, watches and signals its workers: the server
    # and the client (picows, the listener, the endpoints) were 5 MB of its memory, once more
    # beside every worker's. The workers serve without picows (2.8 MiB each).
    served = await serve("tests.cli_app:server", "--port", "0", "--workers", "2", "--no-cluster")
    try:
        await served.serving()
        # multidict: the server's upgrade parsing (transport/admission.py), which the
        # supervisor has no use for; picows: the client's (the packages' folders, not a
        # checkout's path, which may hold either name)
        server, client = "/multidict/", "/picows/"
        supervisor = mapped_files(served.proc.pid)
        assert server not in supervisor and client not in supervisor
        for worker in served.workers:
            serving = mapped_files(worker)
            assert server in serving  # (what the workers map: the test can see it)
            assert client not in serving  # serving needs no picows
    finally:
        status, output = await served.terminate()
    assert status == 0, output


async def test_with_max_restarts_0_a_worker_that_dies_stops_the_group_with_status_1() -> None:
    served = await serve(
        "tests.cli_app:server", "--port", "0", "--workers", "2", "--no-cluster",
        "--max-restarts", "0",
    )  # fmt: skip
    try:
        port = await served.serving()
        victim, survivor = served.workers
        os.kill(victim, signal.SIGKILL)
        status, output = await served.ended()  # on its own: no signal to the parent
    finally:
        if served.proc.returncode is None:
            await served.terminate()
    assert status == 1, output
    assert f"worker {victim} (slot 0) ended unexpectedly (killed by SIGKILL)" in output
    assert gone(survivor)
    assert port_is_free(port)


def free_port_pair() -> int:
    """A port p with p and p + 1 free now (metrics of workers 0 and 1)."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            base = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
            return base
    raise AssertionError("no two consecutive free ports")


async def pids_answering(port: int, stop: Callable[[set[int]], bool], log: EventLog) -> set[int]:
    """Connects and calls ``pid`` until ``stop(pids so far)``: every connection must be
    accepted and answered."""
    pids: set[int] = set()
    async with asyncio.timeout(20):
        for n in itertools.count():
            client, pid = await answering_pid(f"ws://127.0.0.1:{port}", f"probe{n}", log)
            await client.close()
            pids.add(pid)
            if stop(pids):
                return pids
    raise AssertionError("unreachable")


async def test_a_killed_worker_is_restarted_in_its_slot_while_the_others_serve(
    log: EventLog,
) -> None:
    metrics_port = free_port_pair()
    served = await serve(
        "tests.cli_app:server", "--port", "0", "--workers", "2",
        "--metrics-port", str(metrics_port),
    )  # fmt: skip
    clients: list[WseClient] = []
    try:
        port = await served.serving()
        victim, survivor = served.workers  # slots 0 and 1
        status, before = await health(metrics_port)
        assert status == 200 and before["worker"] == {"slot": 0, "restarts": 0, "pid": victim}
        os.kill(victim, signal.SIGKILL)
        await exited(victim)
        # from its death on, every connection is taken (by the survivor, then also by the
        # new worker: the kernel spreads them over the listening sockets again)
        pids = await pids_answering(port, lambda pids: bool(pids - {survivor}), log)
        [replacement] = pids - {survivor}
        assert replacement != victim and not gone(survivor)
        restarted = await served.line(rf"worker {replacement} \(slot 0\) is listening")
        assert "(restart 1)" in restarted
        output = "".join(served.output)
        assert f"worker {victim} (slot 0) ended unexpectedly (killed by SIGKILL); restart" in output
        # the same options (its metrics port), its restart told in /health, a new node name
        status, after = await health(metrics_port)
        assert status == 200, after
        assert after["worker"] == {"slot": 0, "restarts": 1, "pid": replacement}
        assert after["cluster"]["healthy"] and after["cluster"]["node"] != before["cluster"]["node"]
        served.workers = [replacement, survivor]
        clients = await tell_across(served, port, log)  # the cluster serves as one again
    finally:
        status, output = await served.terminate()
    assert status == 0, output
    assert all(gone(pid) for pid in served.workers)
    assert port_is_free(port)
    for client in clients:
        await client.close()


async def test_past_the_crash_loop_bound_the_group_stops_with_status_1() -> None:
    served = await serve(
        "tests.cli_app:server", "--port", "0", "--workers", "2", "--no-cluster",
        "--max-restarts", "1", "--restart-window", "600",
    )  # fmt: skip
    try:
        port = await served.serving()
        victim, survivor = served.workers
        os.kill(victim, signal.SIGKILL)
        started = await served.line(r"worker (\d+) \(slot 0\) is listening \(restart 1\)")
        replacement = int(started.split("worker ")[1].split()[0])
        os.kill(replacement, signal.SIGKILL)  # the second restart within the window: too many
        status, output = await served.ended()
    finally:
        if served.proc.returncode is None:
            await served.terminate()
    assert status == 1, output
    assert (
        f"worker {replacement} (slot 0) ended unexpectedly (killed by SIGKILL); "
        "1 restarts within 600.0 s already"
    ) in output
    assert gone(survivor)
    assert port_is_free(port)


async def test_a_stop_signal_during_a_restart_stops_everything_cleanly() -> None:
    served = await serve("tests.cli_app:server", "--port", "0", "--workers", "2")  # a cluster
    try:
        port = await served.serving()
        victim, survivor = served.workers
        os.kill(victim, signal.SIGKILL)
        started = await served.line(r"worker \d+ \(slot 0\) started in place of")
        replacement = int(started.split("worker ")[1].split()[0])
        status, output = await served.terminate()  # the new worker is still starting
    finally:
        if served.proc.returncode is None:
            await served.terminate()
    assert status == 0, output
    found = CLUSTER.search(output)
    assert found is not None
    assert refuses_connections(found[1])  # its nats-server stopped too
    assert gone(survivor) and gone(replacement)
    assert port_is_free(port)


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_backlog_sets_every_workers_accept_queue(workers: str) -> None:
    served = await serve(
        "tests.cli_app:server", "--port", "0", "--workers", workers, "--no-cluster",
        "--backlog", "321",
    )  # fmt: skip
    try:
        port = await served.serving()
        assert listen_backlogs(port) == [321] * int(workers)
    finally:
        status, output = await served.terminate()
    assert status == 0, output


async def exited(pid: int) -> None:
    """Waits for any process (not only a child) to exit: its pidfd becomes readable."""
    fd = os.pidfd_open(pid)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(fd, done.set_result, None)
    try:
        async with asyncio.timeout(20):
            await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def test_workers_close_their_connections_when_their_parent_is_killed(log: EventLog) -> None:
    served = await serve("tests.cli_app:server", "--port", "0", "--workers", "2", "--no-cluster")
    try:
        port = await served.serving()
        client, pid = await answering_pid(f"ws://127.0.0.1:{port}", "alice", log)
        assert pid in served.workers
        served.proc.kill()
        await served.proc.wait()
        for worker in served.workers:
            await exited(worker)
    finally:
        if served.proc.returncode is None:
            await served.terminate()
    [(code, _reason)] = await log.wait("closed")
    assert code == CLOSE_SERVICE_RESTART  # the worker closed its server: no orphan keeps the port
    assert port_is_free(port)
    await client.close()


async def test_workers_without_cluster_share_a_nats_server_of_their_own(log: EventLog) -> None:
    served = await serve("tests.cli_app:server", "--port", "0", "--workers", "2")
    clients: list[WseClient] = []
    try:
        port = await served.serving()
        found = CLUSTER.search("".join(served.output))
        assert found is not None, served.output
        nats_url = found[1]
        clients = await tell_across(served, port, log)
    finally:
        status, output = await served.terminate()
    assert status == 0, output
    assert refuses_connections(nats_url)  # stopped after the workers
    assert port_is_free(port)
    for client in clients:
        await client.close()


async def test_workers_join_a_given_cluster_and_leave_it_running(log: EventLog) -> None:
    async with LocalNats() as server:
        served = await serve(
            "tests.cli_app:server", "--port", "0", "--workers", "2", "--cluster", server.url
        )
        clients: list[WseClient] = []
        try:
            port = await served.serving()
            assert f", cluster {server.address}" in "".join(served.output)
            clients = await tell_across(served, port, log)
        finally:
            status, output = await served.terminate()
        assert status == 0, output
        assert server.running
        client = await nats.connect(server.url)  # still serving
        await client.close()
        for wse_client in clients:
            await wse_client.close()


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("tests.cli_app:nothing", "module 'tests.cli_app' has no attribute 'nothing'"),
        ("tests.no_such_module:server", "could not import module 'tests.no_such_module'"),
        ("tests.cli_app:os", "tests.cli_app:os is a module, not a WseServer"),
        ("tests.cli_app", "'tests.cli_app' is not MODULE:ATTR"),
    ],
)
def test_a_wrong_application_is_explained(app: str, message: str) -> None:
    result = subprocess.run(
        [*COMMAND, "serve", app, "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode in (1, 2) and message in result.stderr, result.stderr


def test_cluster_and_no_cluster_exclude_each_other() -> None:
    result = subprocess.run(
        [
            *COMMAND,
            "serve",
            "tests.cli_app:server",
            "--cluster",
            "nats://127.0.0.1:1",
            "--no-cluster",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "exclude each other" in result.stderr


@pytest.mark.parametrize(
    "command",
    [[*COMMAND, "serve", "--help"], [sys.executable, "-m", "wse_fast", "serve", "--help"]],
)
def test_serve_help_lists_its_options(command: list[str]) -> None:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    options = ("--host", "--port", "--workers", "--cluster", "--no-cluster", "--node-name")
    for option in (*options, "--max-restarts", "--restart-window", "--backlog"):
        assert option in result.stdout
    assert "SO_REUSEPORT" in result.stdout and "nats-server" in result.stdout
    assert "--worker-of-group" not in result.stdout  # the parent's own, hidden


def test_module_help_lists_serve() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wse_fast", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "--version" in result.stdout
