"""The deployment guide's nginx configuration, run: Debian's nginx in front of a real server.

nginx runs as a foreground process of this test (its own prefix, pid and logs in tmp_path) on
127.0.0.1 ports, with the proxy directives of docs/deploy/nginx/wse-fast-proxy.conf included
as they are. The outer blocks (ports, certificate, the read timeout) are the test's own, and
test_site_file_matches_what_is_tested checks that the documented site file says the same.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import trustme
from wse_fast import ConnectionFailed, IdentifyRequest, Limits, ServerLimits, WseClient, WseServer

from tests.conftest import EventLog

ROOT = Path(__file__).resolve().parents[1]
NGINX_DIR = ROOT / "docs" / "deploy" / "nginx"
PROXY_SNIPPET = NGINX_DIR / "wse-fast-proxy.conf"
SITE_FILE = NGINX_DIR / "wse-fast.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"  # Debian installs it outside a user's PATH

# The upgrade map as the site file writes it (checked below).
UPGRADE_MAP = """map $http_upgrade $connection_upgrade {
    default upgrade;
    ''      close;
}"""
CLIENT_HOST = "127.0.0.5"  # the "real" client: another loopback address than the proxy's
SPOOFED = "203.0.113.9"  # what a client writes into X-Forwarded-For itself (never contacted)


def free_port() -> int:
    # nginx cannot listen on port 0 and report it; a port the kernel just handed out is free
    # unless another process takes it in the next milliseconds.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Nginx:
    """One nginx master in the foreground, proxying ``/ws`` to ``upstream_port``."""

    def __init__(self, root: Path, upstream_port: int, read_timeout: float, tls: bool) -> None:
        self.root = root
        self.upstream_port = upstream_port
        self.read_timeout = read_timeout
        self.tls = tls
        self.ca = trustme.CA()
        if tls:
            cert = self.ca.issue_cert("127.0.0.1", "localhost")
            cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
            for blob in cert.cert_chain_pems[1:]:
                blob.write_to_path(str(root / "cert.pem"), append=True)
            cert.private_key_pem.write_to_path(str(root / "key.pem"))
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        root = self.root
        listen = f"127.0.0.1:{self.port}" + (" ssl" if self.tls else "")
        tls_lines = ""
        if self.tls:
            tls_lines = (
                f"ssl_certificate {root / 'cert.pem'};\n"
                f"        ssl_certificate_key {root / 'key.pem'};\n"
                "        ssl_protocols TLSv1.2 TLSv1.3;"
            )
        temp = "\n    ".join(
            f"{kind}_temp_path {root / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        timeout_ms = round(self.read_timeout * 1000)
        (root / "nginx.conf").write_text(
            f"""daemon off;
worker_processes 1;
pid {root / "nginx.pid"};
error_log {root / "error.log"} info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    {temp}
    {UPGRADE_MAP}
    upstream wse_fast {{ server 127.0.0.1:{self.upstream_port}; }}
    server {{
        listen {listen};
        {tls_lines}
        location /ws {{
            proxy_pass http://wse_fast;
            include {PROXY_SNIPPET};
            proxy_read_timeout {timeout_ms}ms;
            proxy_send_timeout {timeout_ms}ms;
        }}
    }}
}}
"""
        )

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/ws"

    def client_ssl(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    async def start(self) -> None:
        # A port another process takes between free_port() and nginx's bind fails the start
        # (nginx exits); a fresh port is tried then.
        for _ in range(3):
            self.port = free_port()
            self.write_config()
            if await self._started():
                return
        raise RuntimeError((self.root / "nginx.stderr").read_text())

    async def _started(self) -> bool:
        pid_file = self.root / "nginx.pid"
        pid_file.unlink(missing_ok=True)
        with (self.root / "nginx.stderr").open("wb") as stderr:
            self.process = subprocess.Popen(
                [NGINX, "-p", str(self.root), "-c", str(self.root / "nginx.conf"), "-e", "stderr"],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        # nginx writes its pid file once its listening sockets are bound, and says so by
        # nothing else in the foreground: the file's appearance is the event waited for.
        async with asyncio.timeout(10):
            while not pid_file.exists():
                if self.process.poll() is not None:
                    return False  # it could not start (the error is in nginx.stderr)
                await asyncio.sleep(0.01)
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # fast shutdown of this master and its worker
            self.process.wait(timeout=10)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[int, float, bool], Nginx]]:
    started: list[Nginx] = []

    def make(upstream_port: int, read_timeout: float = 60, tls: bool = False) -> Nginx:
        proxy = Nginx(tmp_path, upstream_port, read_timeout, tls)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
async def servers() -> AsyncIterator[list[WseServer]]:
    made: list[WseServer] = []
    yield made
    for server in made:
        await server.close()


def identify(req: IdentifyRequest) -> None:
    headers = req.request.headers if req.request is not None else {}
    req.accept(req.identity, {"proto": headers.get("X-Forwarded-Proto")})


async def start_server(servers: list[WseServer], **options: object) -> WseServer:
    server = WseServer(identify, host="127.0.0.1", port=0, **options)  # type: ignore[arg-type]
    server.register("whoami", lambda conn, payload: conn.remote_addr[0])
    await server.start()
    servers.append(server)
    return server


@pytest.mark.parametrize(
    ("trusted", "seen"),
    [(["127.0.0.1"], CLIENT_HOST), ([], "127.0.0.1")],
    ids=["trusted_proxies", "untrusted"],
)
async def test_upgrade_through_nginx_and_the_client_address(
    nginx: Callable[..., Nginx], servers: list[WseServer], trusted: list[str], seen: str
) -> None:
    server = await start_server(servers, trusted_proxies=trusted)
    proxy = nginx(server.port)
    await proxy.start()
    # The client forges a forwarding header of its own; nginx appends the address it sees.
    client = WseClient(
        proxy.url,
        reconnect=None,
        local_addr=(CLIENT_HOST, 0),
        headers={"X-Forwarded-For": SPOOFED},
    )
    async with client:
        assert await client.connect("alice") == {"proto": "http"}
        # Trusted, the proxy names the real client and the forged entry is ignored;
        # untrusted, the socket's peer (the proxy) is all there is.
        assert await client.call("whoami") == seen


@pytest.mark.parametrize(
    ("server_ping", "stays_open"), [(0.2, True), (None, False)], ids=["pinging", "silent"]
)
async def test_idle_connection_outlives_the_proxy_read_timeout_when_the_server_pings(
    nginx: Callable[..., Nginx],
    servers: list[WseServer],
    log: EventLog,
    server_ping: float | None,
    stays_open: bool,
) -> None:
    read_timeout = 1.0  # nginx closes an upgraded connection silent upstream for this long
    server = await start_server(
        servers, limits=ServerLimits(ping_interval=server_ping, ping_timeout=server_ping)
    )
    proxy = nginx(server.port, read_timeout)
    await proxy.start()
    # The client never pings, as a browser does not: only the server's pings cross the proxy.
    client = WseClient(proxy.url, reconnect=None, limits=Limits(ping_interval=None))
    client.when.closed(log.hook("closed"))
    async with client:
        await client.connect("alice")
        if stays_open:
            # Idle for well past the read timeout: the connection must not close meanwhile.
            with pytest.raises(TimeoutError):
                await log.wait("closed", timeout=3 * read_timeout)
            assert await client.call("whoami") == "127.0.0.1"
        else:
            # The negative control: without pings, nginx gives up on the idle connection.
            await log.wait("closed", timeout=5 * read_timeout)


async def test_tls_terminated_at_nginx(
    nginx: Callable[..., Nginx], servers: list[WseServer]
) -> None:
    server = await start_server(servers, trusted_proxies=["127.0.0.1"])
    proxy = nginx(server.port, tls=True)
    await proxy.start()
    async with WseClient(proxy.url, reconnect=None, ssl=proxy.client_ssl()) as client:
        assert await client.connect("alice") == {"proto": "https"}  # the proxy says so
        assert await client.call("whoami") == "127.0.0.1"
    # A client that does not trust the proxy's certificate gets no connection at all.
    async with WseClient(proxy.url, reconnect=None, ssl=ssl.create_default_context()) as other:
        with pytest.raises(ConnectionFailed) as failed:
            await other.connect("mallory")
        assert "CERTIFICATE_VERIFY_FAILED" in str(failed.value.details["error"])


def test_site_file_matches_what_is_tested() -> None:
    """The documented site file includes the tested snippet, has the tested upgrade map, and
    a read timeout longer than the default ping_interval (plus the keepalive sweep's second)."""
    site = SITE_FILE.read_text()
    assert UPGRADE_MAP in site
    assert "include /etc/nginx/snippets/wse-fast-proxy.conf;" in site
    found = re.search(r"proxy_read_timeout (\d+)s;", site)
    assert found is not None
    assert int(found.group(1)) > Limits().ping_interval + 2  # type: ignore[operator]
