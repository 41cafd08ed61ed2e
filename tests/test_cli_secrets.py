"""What the ``wse-fast`` command keeps from other local users and from the servers it talks to,
tried on real processes: the nats-server that ``serve --workers`` starts refuses clients
without the credentials only its workers get (in the environment: no command line holds
them), and dies with a SIGKILLed parent, leaving only a private directory; a cluster URL with
a password can come from the environment and is logged without it; modules in the
application's directory do not replace the ones the server imports; ``call`` and ``listen``
escape the terminal controls a server sends; the identity can come from the environment or
a file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
import pytest
from wse_fast import Connection, IdentifyRequest, WseClient, WseServer
from wse_fast.cluster.local_nats import LocalNats, without_credentials

from tests.conftest import EventLog, ServerFactory, url_of
from tests.test_cli import COMMAND, ROOT, Served, exited, tell_across

CLUSTER_ENV = "WSE_FAST_CLUSTER"
IDENTITY_ENV = "WSE_FAST_IDENTITY"


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


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://user:secret@10.0.0.1:4222", "nats://10.0.0.1:4222"),
        ("tls://token@nats.example.com", "tls://nats.example.com"),
        # nats-py's URLs without a scheme (it puts nats:// in front) carry credentials too
        ("user:secret@10.0.0.1:4222", "10.0.0.1:4222"),
        ("secret@nats.example.com", "nats.example.com"),
        ("10.0.0.1:4222", "10.0.0.1:4222"),
    ],
)
def test_urls_are_shown_without_credentials(url: str, shown: str) -> None:
    assert without_credentials(url) == shown


# ---- the application's directory ---------------------------------------------------------

HOSTILE = """\
from pathlib import Path
Path(__file__).with_name("imported-" + __name__).touch()
raise ImportError("not the real {name}")
"""

APP = """\
import os

from wse_fast import WseServer


def identify(req):
    req.accept(str(req.identity))


server = WseServer(identify)


@server.register("echo")
def echo(conn, payload):
    return payload


@server.register("environment")
def environment(conn, payload):
    return os.environ.get(payload)
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
            client = WseClient(f"ws://127.0.0.1:{port}", reconnect=None)
            await client.connect("alice")  # JSON both ways: orjson's dumps and loads
            assert await client.call("echo", {"text": "hi"}) == {"text": "hi"}
            # the credentials were read and taken out of the environment, which the
            # application's own subprocesses would inherit
            assert await client.call("environment", CLUSTER_ENV) is None
            await client.close()
        finally:
            status, output = await served.terminate()
        assert status == 0, output
    assert sorted(path.name for path in tmp_path.glob("imported-*")) == []


async def test_modules_in_the_applications_directory_replace_nothing_in_workers_or_metrics(
    tmp_path: Path,
) -> None:
    # Workers are started with "python -m", which would put the working directory first on
    # sys.path before the server imports its own modules; and the first scrape of /metrics,
    # from the network, imports prometheus_client after the application's directory is there.
    for name in ("orjson", "msgpack", "prometheus_client"):
        (tmp_path / f"{name}.py").write_text(HOSTILE.format(name=name))
    (tmp_path / "app.py").write_text(APP)
    served = await serve(
        "app:server",
        *("--port", "0", "--workers", "2", "--no-cluster", "--metrics-port", "0"),
        cwd=tmp_path,
    )
    try:
        port = await served.serving()
        client = WseClient(f"ws://127.0.0.1:{port}", reconnect=None)
        await client.connect("alice")
        assert await client.call("echo", {"text": "hi"}) == {"text": "hi"}
        await client.close()
        metrics_ports = re.findall(r"metrics on http://127\.0\.0\.1:(\d+)/", "".join(served.output))
        assert len(metrics_ports) == 2
        for metrics_port in metrics_ports:
            reader, writer = await asyncio.open_connection("127.0.0.1", int(metrics_port))
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    finally:
        status, output = await served.terminate()
    assert status == 0, output
    assert sorted(path.name for path in tmp_path.glob("imported-*")) == []


# ---- the client commands -----------------------------------------------------------------

#: Text a server may send to make a terminal do things: a CSI (U+009B) and an OSC (U+009D,
#: a window title) as C1 controls, an ESC sequence, DEL, bidi overrides and isolates, a line
#: separator, a character past U+FFFF that is a format character (a tag), and a lone
#: surrogate; beside them ordinary text that stays as it is.
HOSTILE_TEXT = (
    "héllo \x1b[2J \x9b31m \x9d0;pwned\x9c \x7f \u202egnp.exe\u202c \u2066x\u2069 \u2028 "
    "\U000e0041 日本"
)
TERMINAL_CONTROLS = set("\x1b\x9b\x9d\x9c\x7f\u202e\u202c\u2066\u2069\u2028\U000e0041")


async def wse_fast(*args: str, env: Mapping[str, str] = {}) -> tuple[int, str, str]:
    """``wse-fast ARGS`` run to its end, its output read as UTF-8 with the surrogates it
    might hold kept (so that a raw one would be seen): status, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *COMMAND,
        *args,
        cwd=ROOT,
        env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    decode = lambda data: data.decode("utf-8", "surrogateescape")  # noqa: E731
    return proc.returncode, decode(out), decode(err)


async def hostile_server(make_server: ServerFactory, log: EventLog) -> WseServer:
    def identify(req: IdentifyRequest) -> None:
        log.hook("identified")(req.identity)
        req.accept(str(req.identity))

    server = await make_server(identify)
    server.when.joined(log.hook("joined"))

    @server.register("text")
    def text(conn: Connection, payload: Any) -> Any:
        return {HOSTILE_TEXT: [HOSTILE_TEXT]}

    return server


def assert_escaped(line: str, expected: Any) -> None:
    assert not TERMINAL_CONTROLS & set(line), ascii(line)
    assert "héllo" in line and "日本" in line  # printable text as it is
    assert json.loads(line) == expected  # the same JSON value


async def test_call_escapes_the_terminal_controls_in_a_result(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await hostile_server(make_server, log)
    status, out, err = await wse_fast("call", url_of(server), "text", "--identity", "alice")
    assert (status, err) == (0, "")
    assert_escaped(out.removesuffix("\n"), {HOSTILE_TEXT: [HOSTILE_TEXT]})


async def test_listen_escapes_the_terminal_controls_in_types_and_payloads(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await hostile_server(make_server, log)
    proc = await asyncio.create_subprocess_exec(
        *COMMAND,
        "listen",
        url_of(server),
        "--identity",
        "alice",
        "--count",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await log.wait("joined", timeout=20)
    assert server.send("alice", HOSTILE_TEXT, {"text": HOSTILE_TEXT})
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    assert (proc.returncode, err) == (0, b"")
    line = out.decode("utf-8", "surrogateescape").removesuffix("\n")
    assert_escaped(line, [HOSTILE_TEXT, {"text": HOSTILE_TEXT}])


async def test_the_identity_comes_from_the_environment_or_a_file(
    make_server: ServerFactory, log: EventLog, tmp_path: Path
) -> None:
    server = await hostile_server(make_server, log)
    url = url_of(server)
    token = tmp_path / "token"
    token.write_text("from-the-file\n")

    assert (await wse_fast("call", url, "text", env={IDENTITY_ENV: "from-env"}))[0] == 0
    assert (await wse_fast("call", url, "text", "--identity-file", str(token)))[0] == 0
    # a file named on the command line wins over the environment
    both = await wse_fast(
        "call", url, "text", "--identity-file", str(token), env={IDENTITY_ENV: "from-env"}
    )
    assert both[0] == 0
    # --identity itself still works
    assert (await wse_fast("call", url, "text", "--identity", "from-argv"))[0] == 0
    identified = [identity for (identity,) in log.of("identified")]
    assert identified == ["from-env", "from-the-file", "from-the-file", "from-argv"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--identity", "a", "--identity-file", "{token}"], "exclude each other"),
        (["--identity-file", "{empty}"], "holds no identity"),
        ([], "--identity-file"),  # none at all: the message names every way
    ],
)
async def test_the_identity_options_are_explained(
    args: list[str], message: str, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("t\n")
    (tmp_path / "empty").write_text("")
    paths = {"token": str(tmp_path / "token"), "empty": str(tmp_path / "empty")}
    arguments = [arg.format(**paths) for arg in args]
    env = {key: value for key, value in os.environ.items() if key != IDENTITY_ENV}
    proc = await asyncio.create_subprocess_exec(
        *COMMAND,
        "call",
        "ws://127.0.0.1:1",
        "add",
        *arguments,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 2 and message in err.decode() and out == b""
