"""The installed ``wse-fast`` command as a client, run as a real process against real servers:
``call`` prints a result as JSON or an error's code and details (exit 1), ``listen`` prints
messages as JSON lines and stops after --count, on SIGINT (closing the connection) or when the
server closes (exit 1), ``send`` delivers one message before its close handshake; wrong
arguments are usage errors (exit 2). ``serve --ssl-certfile/--ssl-keyfile`` serves wss://
(also with workers). ``bench``, the load tool, is tests/test_cli_bench.py's."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wse_fast import (
    Connection,
    ConnectionFailed,
    IdentifyRequest,
    WseClient,
    WseError,
    WseServer,
)

from tests.conftest import EventLog, ServerFactory
from tests.test_cli import ROOT, Served, serve

CLOSE_NORMAL = 1000
CLOSE_SERVICE_RESTART = 1012
SERVING_TLS = re.compile(r"serving \S+ on wss://127\.0\.0\.1:(\d+)")
# the console script the wheel installs beside this Python (.venv/bin/wse-fast)
COMMAND = [str(Path(sys.executable).with_name("wse-fast"))]


async def wse_fast(*args: str, cwd: Path = ROOT) -> tuple[int, str, str]:
    """Runs ``wse-fast ARGS`` to its end (the servers of the test run meanwhile on this loop):
    its exit status, stdout and stderr."""
    proc = await started(*args, cwd=cwd)
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def started(*args: str, cwd: Path = ROOT) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *COMMAND,
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``wse-fast ARGS`` for the cases that need no server of the test's."""
    return subprocess.run(
        [*COMMAND, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def url_of(server: WseServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def recording_server(make_server: ServerFactory, log: EventLog) -> WseServer:
    """A server that accepts any identity but "bad", records what it accepts, who joins and
    who leaves, and answers ``add`` and ``fail``."""

    def identify(req: IdentifyRequest) -> None:
        log.hook("identified")(req.identity, req.meta)
        if req.identity == "bad":
            req.refuse()
        else:
            req.accept(req.identity)

    server = await make_server(identify)
    server.when.joined(log.hook("joined"))
    server.when.disconnected(log.hook("disconnected"))

    @server.register("add")
    def add(conn: Connection, payload: Any) -> int:
        return int(sum(payload))

    @server.register("fail")
    def fail(conn: Connection, payload: Any) -> None:
        raise WseError("app.refused", {"why": "because", "got": payload})

    return server


# ---- call ------------------------------------------------------------------------------------


async def test_call_prints_the_result_as_json(make_server: ServerFactory, log: EventLog) -> None:
    server = await recording_server(make_server, log)
    status, out, err = await wse_fast(
        "call", url_of(server), "add", "[1, 2, 39]", "--identity", "alice", "--meta", '{"v": 2}'
    )
    assert (status, out, err) == (0, "42\n", "")
    assert log.of("identified") == [("alice", {"v": 2})]


async def test_call_prints_a_procedures_error_code_and_details_and_exits_1(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await recording_server(make_server, log)
    status, out, err = await wse_fast("call", url_of(server), "fail", '"x"', "--identity", "alice")
    assert status == 1 and out == ""
    code, _, details = err.rstrip("\n").partition(" ")
    assert code == "app.refused"
    # the application's details, with what the server adds (the procedure and its payload)
    assert json.loads(details).items() >= {"why": "because", "got": "x"}.items()


async def test_call_of_an_unknown_procedure_names_the_code(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await recording_server(make_server, log)
    status, out, err = await wse_fast("call", url_of(server), "nothing", "--identity", "alice")
    assert status == 1 and out == ""
    assert err.startswith("wse.server.rp.not-registered")


async def test_call_refused_by_the_server_prints_not_authorized(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await recording_server(make_server, log)
    status, out, err = await wse_fast("call", url_of(server), "add", "[1]", "--identity", "bad")
    assert status == 1 and out == ""
    code, _, details = err.rstrip("\n").partition(" ")
    assert code == "wse.not-authorized"
    assert json.loads(details)["code"] == CLOSE_NORMAL  # the refusal's close, as details


async def test_call_with_nothing_listening_prints_the_connection_failure() -> None:
    with socket.socket() as reserved:  # bound, never listening: connections are refused
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        status, out, err = await wse_fast(
            "call", f"ws://127.0.0.1:{port}", "add", "--identity", "alice"
        )
    assert status == 1 and out == ""
    code, _, details = err.rstrip("\n").partition(" ")
    assert code == "wse.client.ws-error"
    assert "Connection refused" in json.loads(details)["error"]


async def test_call_times_out_after_timeout(make_server: ServerFactory, log: EventLog) -> None:
    server = await recording_server(make_server, log)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @server.register("hang")
    async def hang(conn: Connection, payload: Any) -> None:
        await never

    status, _, err = await wse_fast(
        "call", url_of(server), "hang", "--identity", "alice", "--timeout", "0.2"
    )
    assert status == 1 and err.startswith("wse.client.rp.timeout")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["call", "ws://127.0.0.1:1", "add", "[1,"], "'[1,' is not JSON"),
        (["call", "ws://127.0.0.1:1", "add", "text"], "a string is written in double quotes"),
        (["call", "ws://127.0.0.1:1", "add", "--meta", "[1]"], "'[1]' is not a JSON object"),
        (["call", "ws://127.0.0.1:1", "add", "--meta", "{"], "'{' is not JSON"),
        (["call", "http://127.0.0.1:1", "add"], "is not a ws:// or wss:// URL"),
        (["call", "ws://", "add"], "is not a ws:// or wss:// URL"),
        (["call", "ws://127.0.0.1:99999", "add"], "is not a valid URL"),
        (["listen", "127.0.0.1:4200"], "is not a ws:// or wss:// URL"),
        (["send", "wss:/nohost", "note"], "is not a ws:// or wss:// URL"),
        (["send", "ws://127.0.0.1:1", "note", "{'a': 1}"], "is not JSON"),
        (["listen", "ws://127.0.0.1:1", "--count", "0"], "--count"),
        (["call", "ws://127.0.0.1:1", "add", "--cafile", __file__], "--cafile is for wss://"),
    ],
)
def test_wrong_arguments_are_usage_errors(args: list[str], message: str) -> None:
    identity = [] if "--identity" in args else ["--identity", "alice"]
    result = run(*args, *identity)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and result.stdout == ""


def test_identity_is_required() -> None:
    result = run("call", "ws://127.0.0.1:1", "add")
    assert result.returncode == 2 and "--identity" in result.stderr


# ---- listen ----------------------------------------------------------------------------------


async def listening(server: WseServer, log: EventLog, *options: str) -> asyncio.subprocess.Process:
    """``wse-fast listen`` as alice, once the server has accepted it."""
    proc = await started("listen", url_of(server), "--identity", "alice", *options)
    await log.wait("joined", timeout=20)
    return proc


async def ended(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_listen_prints_every_type_as_json_lines_and_stops_after_count(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await recording_server(make_server, log)
    proc = await listening(server, log, "--count", "2")
    server.broadcast("tick", {"n": 1, "text": "héllo"})
    assert server.send("alice", "note", [1, None])
    server.broadcast("tick", {"n": 2})  # past --count: not printed
    status, out, err = await ended(proc)
    assert (status, err) == (0, "")
    assert [json.loads(line) for line in out.splitlines()] == [
        ["tick", {"n": 1, "text": "héllo"}],
        ["note", [1, None]],
    ]
    [(_conn, code, _reason)] = await log.wait("disconnected")
    assert code == CLOSE_NORMAL  # it closed the connection itself


async def test_listen_closes_cleanly_on_sigint(make_server: ServerFactory, log: EventLog) -> None:
    server = await recording_server(make_server, log)
    proc = await listening(server, log)
    server.broadcast("tick", 1)
    proc.send_signal(signal.SIGINT)
    status, _out, err = await ended(proc)
    assert (status, err) == (0, "")
    [(_conn, code, _reason)] = await log.wait("disconnected")
    assert code == CLOSE_NORMAL


async def test_listen_exits_1_with_the_close_code_when_the_server_closes(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await recording_server(make_server, log)
    proc = await listening(server, log, "--count", "5")
    server.broadcast("tick", 1)
    await server.close()
    status, out, err = await ended(proc)
    assert status == 1
    assert out == '["tick", 1]\n'
    assert err.startswith(f"connection closed: {CLOSE_SERVICE_RESTART} ")


async def test_listen_ends_with_status_1_when_the_server_closes_as_it_accepts(
    make_server: ServerFactory, log: EventLog
) -> None:
    """Welcome, a message and the Close in one write. The client may then report the close
    before ``connect`` returns (which then raises "closed at once") or after ``ready``,
    depending on when the socket's end is read; listen says the same either way."""
    server = await recording_server(make_server, log)

    @server.when.connected
    def greet_and_leave(conn: Connection) -> None:
        conn.send("note", "bye")
        conn.drop("wse.test.leaving")

    status, out, err = await wse_fast("listen", url_of(server), "--identity", "alice")
    assert (status, out) == (1, '["note", "bye"]\n')
    assert err == f"connection closed: {CLOSE_NORMAL} wse.test.leaving\n"


async def test_listen_refused_prints_not_authorized(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await recording_server(make_server, log)
    status, out, err = await wse_fast("listen", url_of(server), "--identity", "bad")
    assert status == 1 and out == ""
    assert err.startswith("wse.not-authorized ")
    assert "connection closed" not in err  # the refusal is said once, as connect's error


# ---- send ------------------------------------------------------------------------------------


async def test_send_delivers_the_message_before_its_close(
    make_server: ServerFactory, log: EventLog
) -> None:
    server = await recording_server(make_server, log)
    server.channel.on("note", log.hook("note"))
    status, out, err = await wse_fast(
        "send", url_of(server), "note", '{"text": "hi"}', "--identity", "alice"
    )
    assert (status, out, err) == (0, "", "")
    await log.wait("disconnected")
    received = [(name, args[1:]) for name, args in log.items if name in ("note", "disconnected")]
    assert received[0] == ("note", ({"text": "hi"},))
    assert received[1][0] == "disconnected" and received[1][1][0] == CLOSE_NORMAL


async def test_send_without_payload_sends_null(make_server: ServerFactory, log: EventLog) -> None:
    server = await recording_server(make_server, log)
    server.channel.on("ping", log.hook("ping"))
    status, _, err = await wse_fast("send", url_of(server), "ping", "--identity", "alice")
    assert (status, err) == (0, "")
    [(_conn, payload)] = await log.wait("ping")
    assert payload is None


# ---- serve with TLS --------------------------------------------------------------------------


#: openssl's command for a self-signed certificate and a new P-256 key, valid two days.
NEW_CERTIFICATE = ["openssl", "req", "-x509", "-days", "2", "-newkey", "ec"]
NEW_CERTIFICATE += ["-pkeyopt", "ec_paramgen_curve:prime256v1", "-subj", "/CN=127.0.0.1"]
FOR_127_0_0_1 = ["-addext", "subjectAltName=IP:127.0.0.1"]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A self-signed certificate for 127.0.0.1 and its unencrypted key (by openssl)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [*NEW_CERTIFICATE, "-nodes", "-keyout", str(key), "-out", str(cert), *FOR_127_0_0_1],
        check=True,
        capture_output=True,
        timeout=30,
    )
    yield cert, key


async def serving_tls(served: Served) -> int:
    """The port from the line the command writes once it serves wss://."""
    assert served.proc.stdout is not None
    async with asyncio.timeout(30):
        while line := (await served.proc.stdout.readline()).decode():
            served.output.append(line)
            if found := SERVING_TLS.search(line):
                return int(found[1])
    raise AssertionError(f"it exited before serving wss://:\n{''.join(served.output)}")


async def test_serve_with_a_certificate_serves_wss(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    served = await serve(
        "tests.cli_app:server",
        "--port",
        "0",
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(key),
    )
    client: WseClient | None = None
    try:
        port = await serving_tls(served)
        client = WseClient(
            f"wss://127.0.0.1:{port}", reconnect=None, ssl=ssl.create_default_context(cafile=cert)
        )
        await client.connect("alice")
        assert await client.call("pid") == served.proc.pid
        plain = WseClient(f"ws://127.0.0.1:{port}", reconnect=None, timeout=5)
        with pytest.raises(ConnectionFailed):  # TLS only
            await plain.connect("bob")
        # the client commands trust a self-signed server through --cafile
        status, out, err = await wse_fast(
            "call", f"wss://127.0.0.1:{port}", "pid", "--identity", "carol", "--cafile", str(cert)
        )
        assert (status, out, err) == (0, f"{served.proc.pid}\n", "")
        status, out, err = await wse_fast(
            "call", f"wss://127.0.0.1:{port}", "pid", "--identity", "carol"
        )
        assert status == 1 and "CERTIFICATE_VERIFY_FAILED" in err  # not in the system's store
    finally:
        if client is not None:
            await client.close()
        status, output = await served.terminate()
    assert status == 0, output


async def test_serve_workers_all_serve_wss(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    served = await serve(
        "tests.cli_app:server",
        "--port",
        "0",
        "--workers",
        "2",
        "--no-cluster",
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(key),
    )
    clients: list[WseClient] = []
    try:
        port = await serving_tls(served)
        pids = {int(pid) for pid in re.findall(r"\d+", "".join(served.output).split("pids")[1])}
        context = ssl.create_default_context(cafile=cert)
        answered: set[int] = set()
        # the kernel draws a worker per connection: 64 all missing one has probability 2**-63
        for n in range(64):
            client = WseClient(f"wss://127.0.0.1:{port}", reconnect=None, ssl=context)
            clients.append(client)
            await client.connect(f"user{n}")
            answered.add(await client.call("pid"))
            if answered == pids:
                break
        assert answered == pids and len(pids) == 2
    finally:
        for client in clients:
            await client.close()
        status, output = await served.terminate()
    assert status == 0, output


def encrypted_key(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [*NEW_CERTIFICATE, "-passout", "pass:secret", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def test_serve_explains_a_certificate_it_cannot_use(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = certificate
    serve_app = ("serve", "tests.cli_app:server", "--port", "0")
    result = run(*serve_app, "--ssl-keyfile", str(key))
    assert result.returncode == 2 and "--ssl-keyfile needs --ssl-certfile" in result.stderr
    result = run(*serve_app, "--ssl-certfile", str(key), "--ssl-keyfile", str(cert))
    assert result.returncode == 1 and "cannot load a certificate and its key" in result.stderr
    locked_cert, locked_key = encrypted_key(tmp_path)
    result = run(*serve_app, "--ssl-certfile", str(locked_cert), "--ssl-keyfile", str(locked_key))
    assert result.returncode == 1 and "is encrypted" in result.stderr


# ---- help ------------------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for command in ("serve", "call", "listen", "send", "bench"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), command
