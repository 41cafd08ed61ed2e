"""What ``wse-fast serve`` keeps from other local users, tried on real processes: the
nats-server that ``serve --workers`` starts refuses clients without the credentials only its
workers get (in the environment: no command line holds them), and dies with a SIGKILLed
parent, leaving only a private directory; a cluster URL with a password can come from the
environment and is logged without it; modules in the application's directory do not replace
the ones the server imports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import stat
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import nats
import nats.errors
import pytest
from wse_fast import WseClient
from wse_fast.cluster.local_nats import LocalNats

from tests.conftest import EventLog
from tests.test_cli import COMMAND, ROOT, Served, exited, tell_across

CLUSTER_ENV = "WSE_FAST_CLUSTER"


async def serve(*args: str, env: Mapping[str, str] = {}, cwd: Path = ROOT) -> Served:
    """``wse-fast serve ARGS`` with ``env`` added to this process's environment."""
    proc = await asyncio.create_subprocess_exec(
        *COMMAND,
        "serve",
        *args,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    return Served(proc)


def command_line(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def environment(pid: int) -> dict[str, str]:
    """A process's environment, as it was started (readable by its own user)."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().partition("=")[::2] for entry in entries if entry)


def local_nats_of(served: Served) -> tuple[int, str, Path]:
    """The pid, address and store of the nats-server a group started, from its log."""
    output = "".join(served.output)
    line = next(line for line in served.output if "started nats-server (pid" in line)
    pid = int(line.split("(pid ", 1)[1].split(")", 1)[0])
    address = line.rsplit(" on ", 1)[1].strip()
    store = next(line for line in served.output if "ready on" in line).rsplit(", store ", 1)[1]
    assert address.startswith("nats://127.0.0.1:"), output
    return pid, address, Path(store.strip())


async def ended(pid: int) -> None:
    """Waits for a process that is not this one's child to end (at once if it has)."""
    with contextlib.suppress(ProcessLookupError):  # gone already
        await exited(pid)  # its pidfd becomes readable, within 20 s


async def refused(url: str) -> str:
    """Connects with nats-py and expects the server to refuse: its words."""
    with pytest.raises(nats.errors.Error) as refusal:
        await nats.connect(url, allow_reconnect=False, connect_timeout=5)
    return str(refusal.value)


# ---- the local nats-server ---------------------------------------------------------------


async def test_the_groups_nats_server_takes_only_the_workers_and_no_command_line_holds_its_password(
    log: EventLog,
) -> None:
    served = await serve("tests.cli_app:server", "--port", "0", "--workers", "2")
    clients: list[WseClient] = []
    try:
        port = await served.serving()
        nats_pid, address, _store = local_nats_of(served)
        url = environment(served.workers[0])[CLUSTER_ENV]
        password = urlsplit(url).password
        assert password and url == environment(served.workers[1])[CLUSTER_ENV]
        assert "Authorization Violation" in await refused(address)

        for pid in (served.proc.pid, nats_pid, *served.workers):
            assert password.encode() not in command_line(pid), pid
        assert b"nats://" not in command_line(served.workers[0])  # no URL at all in argv
        assert password not in "".join(served.output)

        client = await nats.connect(url)  # the workers' credentials work
        await client.close()
        clients = await tell_across(served, port, log)  # the workers form one server
    finally:
        status, output = await served.terminate()
    assert status == 0, output
    for wse_client in clients:
        await wse_client.close()


async def test_the_groups_nats_server_dies_with_its_killed_parent_and_leaves_nothing_readable(
    log: EventLog,
) -> None:
    served = await serve("tests.cli_app:server", "--port", "0", "--workers", "2")
    nats_pid: int | None = None
    private: Path | None = None
    try:
        await served.serving()
        nats_pid, _address, store = local_nats_of(served)
        private = store.parent
        assert private.name.startswith("wse-fast-nats-"), private  # its own directory
        served.proc.kill()  # no cleanup can run: the kernel's parent-death signal must act
        await served.proc.wait()
        await ended(nats_pid)
        # Left behind (a SIGKILLed parent cannot remove it): a directory of this user's
        # alone, with the store but not the credentials' config file.
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        assert [path.name for path in private.iterdir()] == ["store"]
    finally:
        # The workers close on their own too (test_cli), but with their NATS gone their
        # cluster's goodbye waits for JetStream's timeout: ended here instead.
        for pid in [*served.workers, *([nats_pid] if nats_pid is not None else [])]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await ended(pid)
        if served.proc.returncode is None:
            await served.terminate()
        if private is not None and private.name.startswith("wse-fast-nats-"):
            shutil.rmtree(private, ignore_errors=True)


# ---- a cluster of the user's -------------------------------------------------------------


async def test_a_cluster_url_from_the_environment_reaches_the_workers_and_is_logged_without_it(
    log: EventLog,
) -> None:
    async with LocalNats() as nats_server:
        password = urlsplit(nats_server.url).password
        assert password
        served = await serve(
            "tests.cli_app:server",
            "--port",
            "0",
            "--workers",
            "2",
            env={CLUSTER_ENV: nats_server.url},
        )
        clients: list[WseClient] = []
        try:
            port = await served.serving()
            assert f", cluster {nats_server.address} with 2 workers" in "".join(served.output)
            for pid in (served.proc.pid, *served.workers):
                assert password.encode() not in command_line(pid)
            clients = await tell_across(served, port, log)
        finally:
            status, output = await served.terminate()
        assert status == 0, output
        assert password not in output
        for client in clients:
            await client.close()


async def test_a_cluster_url_given_in_argv_is_neither_logged_nor_passed_on(log: EventLog) -> None:
    async with LocalNats() as nats_server:
        password = urlsplit(nats_server.url).password
        assert password
        served = await serve(
            "tests.cli_app:server", "--port", "0", "--workers", "2", "--cluster", nats_server.url
        )
        try:
            await served.serving()
            for pid in served.workers:
                assert password.encode() not in command_line(pid)
        finally:
            status, output = await served.terminate()
        assert status == 0, output
        assert nats_server.address in output and password not in output


async def test_no_cluster_on_the_command_line_beats_the_environment() -> None:
    served = await serve(
        "tests.cli_app:server",
        "--port",
        "0",
        "--workers",
        "2",
        "--no-cluster",
        env={CLUSTER_ENV: "nats://user:secret@127.0.0.1:1"},  # nothing listens there
    )
    try:
        await served.serving()
        assert "cluster" not in "".join(served.output)
        assert all(CLUSTER_ENV not in environment(pid) for pid in served.workers)
    finally:
        status, output = await served.terminate()
    assert status == 0, output


# ---- the application's directory ---------------------------------------------------------

HOSTILE = """\
from pathlib import Path
Path(__file__).with_name("imported-" + __name__).touch()
raise ImportError("not the real {name}")
"""

APP = """\
from wse_fast import WseServer


def identify(req):
    req.accept(str(req.identity))


server = WseServer(identify)


@server.register("echo")
def echo(conn, payload):
    return payload
"""


async def test_modules_in_the_applications_directory_do_not_replace_the_servers_own(
    tmp_path: Path, log: EventLog
) -> None:
    # an orjson.py, msgpack.py and nats.py beside the application, as anyone who can write
    # to that directory could leave them
    for name in ("orjson", "msgpack", "nats"):
        (tmp_path / f"{name}.py").write_text(HOSTILE.format(name=name))
    (tmp_path / "app.py").write_text(APP)
    async with LocalNats() as nats_server:
        served = await serve(
            "app:server", "--port", "0", cwd=tmp_path, env={CLUSTER_ENV: nats_server.url}
        )
        try:
            port = await served.serving()
            assert f", cluster {nats_server.address}" in "".join(served.output)
            client = WseClient(f"ws://127.0.0.1:{port}", reconnect=False)
            await client.connect("alice")  # JSON both ways: orjson's dumps and loads
            assert await client.call("echo", {"text": "hi"}) == {"text": "hi"}
            await client.close()
        finally:
            status, output = await served.terminate()
        assert status == 0, output
    assert sorted(path.name for path in tmp_path.glob("imported-*")) == []
