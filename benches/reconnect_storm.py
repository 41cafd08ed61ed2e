"""The reconnect storm: a server with many authenticated clients is killed and restarted.

    python benches/reconnect_storm.py                    # 15 000 clients, backlog 100 and default
    python benches/reconnect_storm.py --clients 2000 --out /tmp/storm

One wse-fast server process at its defaults (memory.py's ``--serve``: each connection its own
user) holds ``--clients`` connections from load-generator processes of 5 000 connections each
(a process may hold 20 000 files here). Then it is killed with SIGKILL and a new process
listens at once on the same port, as a supervisor would restart it: the new process is started
(its imports done) before the kill and binds right after it, so that what is measured is the
storm and not the interpreter's start-up on a busy machine (a real restart adds that, about
0.3-1 s, during which clients find the port closed and wait longer). The clients, which see their
connections end without a close (1006), reconnect as :class:`~wse_fast.WseClient` does at its
defaults (``Reconnect()``): a wait of ``backoff_delay`` (1 s plus up to 1 s at random, doubled after each failed
attempt, up to 30 s), an attempt given ``timeout`` (20 s) to be welcomed, another after a
refusal (HTTP 503 past ``max_unauthenticated``), a refused or reset connection, or a timeout.

Each client connects from a loopback address of its own (127.1.x.y), as a real storm comes
from many addresses: from one address the server's 256 strangers per address would be what
is measured. Each says ``hi`` with its own identity and answers pings (memory.py's Holder).

Measured from the kill: when the new server listens, when each client is welcomed again (all
of them: "all back"), the attempts made and those that hung until the timeout (a dropped SYN
or handshake ACK is retransmitted by TCP after 1, 3, 7 ... s), and the delta of the kernel's
TcpExt ListenOverflows (/proc/net/netstat: connections dropped because the accept queue was
full; the counter is the machine's, so other traffic on it adds to it). Every ``--backlog``
runs in the same invocation, alternating with ``--runs`` above 1; ``default`` is the
server's own (``ServerLimits.listen_backlog`` None: the kernel's somaxconn).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import random
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from memory import Holder, raise_file_limit, serve  # noqa: E402

PER_GENERATOR = 5_000
DEADLINE = 300.0  # seconds from the kill for every client to be back


def source_address(index: int) -> str:
    """Client ``index``'s own loopback address (all of 127.0.0.0/8 routes to lo)."""
    return f"127.1.{index // 250 + 1}.{index % 250 + 1}"


def client_defaults() -> dict[str, Any]:
    """WseClient's reconnect and timeout defaults, read from its signature."""
    from wse_fast import WseClient

    parameters = inspect.signature(WseClient).parameters
    reconnect = parameters["reconnect"].default
    return {
        "timeout": parameters["timeout"].default,
        "reconnect_delay": reconnect.delay,
        "reconnect_jitter": reconnect.jitter,
        "reconnect_factor": reconnect.factor,
        "reconnect_max_delay": reconnect.max_delay,
    }


class Returning(Holder):
    """A Holder that tells when its welcomed connection ends."""

    def __init__(
        self,
        port: int,
        identity: str,
        ready: Callable[[Holder, str | None], None],
        lost: asyncio.Future[None],
    ) -> None:
        super().__init__(port, identity, ready)
        self.lost = lost

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.upgraded and b"\r\n\r\n" in self.buffer and self.transport is not None:
            self.transport.close()  # refused (503, 429): the server would close it too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.welcomed:
            if not self.lost.done():
                self.lost.set_result(None)
        else:
            self.ready(self, "closed before the welcome")


@dataclass
class Counts:
    attempts: int = 0  # since the kill
    timed_out: int = 0
    failed: int = 0  # refused, reset, closed before the welcome
    back: list[float] = field(default_factory=list)  # monotonic, when each was welcomed again


async def generate(port: int, count: int, first: int) -> None:
    """Holds ``count`` clients (identities and addresses from ``first`` on): READY once all
    are welcomed; after the kill, BACK and the counts as JSON once all are welcomed again;
    exits when standard input closes."""
    from wse_fast.options import backoff_delay

    loop = asyncio.get_running_loop()
    defaults = client_defaults()
    counts = Counts()
    connected = 0
    all_connected = loop.create_future()
    all_back = loop.create_future()
    opening = asyncio.Semaphore(200)
    killed = False

    def wait(attempt: int) -> float:
        return backoff_delay(
            attempt,
            base=defaults["reconnect_delay"],
            jitter=defaults["reconnect_jitter"],
            factor=defaults["reconnect_factor"],
            cap=defaults["reconnect_max_delay"],
            rand=random.random,
        )

    async def attempt(index: int) -> asyncio.Future[None] | None:
        """One connection attempt: the future of its end once welcomed, or None."""
        if killed:
            counts.attempts += 1
        welcomed: asyncio.Future[None] = loop.create_future()
        lost: asyncio.Future[None] = loop.create_future()

        def ready(holder: Holder, error: str | None) -> None:
            if not welcomed.done():
                if error is None:
                    welcomed.set_result(None)
                else:
                    welcomed.set_exception(ConnectionError(error))

        transport: asyncio.BaseTransport | None = None
        try:
            async with asyncio.timeout(defaults["timeout"]):
                transport, _ = await loop.create_connection(
                    lambda: Returning(port, f"user-{index}", ready, lost),
                    "127.0.0.1",
                    port,
                    local_addr=(source_address(index), 0),
                )
                await welcomed
        except TimeoutError:
            counts.timed_out += killed
        except OSError:
            counts.failed += killed
        else:
            return lost
        if transport is not None:
            transport.close()
        return None

    async def client(index: int) -> None:
        nonlocal connected
        async with opening:
            while (lost := await attempt(index)) is None:
                await asyncio.sleep(0.1)
        connected += 1
        if connected == count:
            all_connected.set_result(None)
        await lost  # the server was killed
        tries = 0
        while True:
            await asyncio.sleep(wait(tries))
            tries += 1
            if (lost := await attempt(index)) is not None:
                break
        counts.back.append(time.monotonic())
        if len(counts.back) == count:
            all_back.set_result(None)

    tasks = [asyncio.ensure_future(client(first + i)) for i in range(count)]
    await all_connected
    killed = True  # (the parent kills the server only after every READY)
    print("READY", flush=True)
    await all_back
    print("BACK", json.dumps(counts.__dict__), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    for task in tasks:
        task.cancel()


def listen_overflows() -> int:
    """The kernel's TcpExt ListenOverflows so far (this network namespace)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table["ListenOverflows"])
    raise RuntimeError("no TcpExt in /proc/net/netstat")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def line_from(proc: asyncio.subprocess.Process, prefix: str, timeout: float) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        while text := (await proc.stdout.readline()).decode():
            if text.startswith(prefix):
                return text
    raise RuntimeError(f"process {proc.pid} exited before {prefix}")


async def start_server(limits: dict[str, Any], port: int) -> asyncio.subprocess.Process:
    """memory.py's server, pinned to core 0 where taskset is, with its imports done: it
    listens on ``port`` once a line comes on its standard input (READY on its output)."""
    command = [sys.executable, __file__, "--serve", json.dumps(limits), str(port)]
    pin = ["taskset", "-c", "0"] if os.path.exists("/usr/bin/taskset") else []
    return await asyncio.create_subprocess_exec(
        *pin, *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )


async def listen_now(server: asyncio.subprocess.Process) -> None:
    assert server.stdin is not None
    server.stdin.write(b"go\n")
    await line_from(server, "READY", 30)


async def serve_on_go(limits: dict[str, Any], port: int) -> None:
    import wse_fast  # noqa: F401  # imported before the go, as a restarted server would have

    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await serve(limits, port)


@dataclass
class Storm:
    backlog: str
    clients: int
    listening: float  # seconds from the kill
    back: list[float]  # seconds from the kill, each client's, sorted
    attempts: int
    timed_out: int
    failed: int
    overflows: int

    @property
    def all_back(self) -> float:
        return self.back[-1]


async def storm(backlog: str, clients: int) -> Storm:
    limits = {} if backlog == "default" else {"listen_backlog": int(backlog)}
    port = free_port()
    server = await start_server(limits, port)
    await listen_now(server)
    generators: list[asyncio.subprocess.Process] = []
    try:
        for first in range(0, clients, PER_GENERATOR):
            count = min(PER_GENERATOR, clients - first)
            command = [__file__, "--generate", str(port), str(count), str(first)]
            generators.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    *command,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=1 << 22,  # the BACK line holds a time for each of its clients
                )
            )
        for generator in generators:
            await line_from(generator, "READY", 300)
        spare = await start_server(limits, port)
        overflows = listen_overflows()
        killed_at = time.monotonic()
        server.kill()
        await server.wait()
        server = spare
        await listen_now(server)
        listening = time.monotonic() - killed_at
        reports = [
            json.loads((await line_from(g, "BACK", DEADLINE)).split(" ", 1)[1]) for g in generators
        ]
        overflows = listen_overflows() - overflows
    finally:
        for generator in generators:
            assert generator.stdin is not None
            generator.stdin.close()
        for generator in generators:
            try:
                async with asyncio.timeout(30):
                    await generator.wait()
            except TimeoutError:
                generator.kill()
        server.kill()
        await server.wait()
    return Storm(
        backlog,
        clients,
        listening,
        sorted(t - killed_at for report in reports for t in report["back"]),
        sum(r["attempts"] for r in reports),
        sum(r["timed_out"] for r in reports),
        sum(r["failed"] for r in reports),
        overflows,
    )


def describe(backlog: str) -> str:
    if backlog != "default":
        return f"{int(backlog):,}" + (
            " (uvloop's default, the old one)" if backlog == "100" else ""
        )
    somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    return f"default (somaxconn: {int(somaxconn):,})"


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def write_report(storms: list[Storm], out: Path, command: str) -> None:
    defaults = client_defaults()
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `{command}` on {os.cpu_count()} cores "
        "shared with other work (the machine was busy: figures vary run to run). One wse-fast "
        "server process at its defaults (pinned to core 0), killed with SIGKILL, and a new "
        "one (started before, imports done) listening on the same port right after; "
        f"{storms[0].clients:,} authenticated clients, each from a "
        "loopback address of its own, reconnecting as WseClient does at its defaults "
        f"({defaults['reconnect_delay']} s + up to {defaults['reconnect_jitter']} s, "
        f"x{defaults['reconnect_factor']} per failed attempt, up to "
        f"{defaults['reconnect_max_delay']} s; {defaults['timeout']} s per attempt). Times "
        "from the kill; listening again is after the killed process is gone (its sockets "
        "closed by the kernel) and the new one has bound the port. Overflows: the kernel's TcpExt ListenOverflows over the storm "
        "(connections dropped on a full accept queue; the machine's counter).",
        "",
        "| backlog | server listening again | half back | 99 % back | all back | attempts "
        "| timed out | refused or reset | accept-queue overflows |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in storms:
        lines.append(
            f"| {describe(s.backlog)} | {s.listening:.2f} s | {statistics.median(s.back):.2f} s "
            f"| {percentile(s.back, 0.99):.2f} s | **{s.all_back:.2f} s** | {s.attempts:,} "
            f"| {s.timed_out:,} | {s.failed:,} | {s.overflows:,} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(
        json.dumps([{**s.__dict__, "back": [round(t, 3) for t in s.back]} for s in storms])
    )
    plot(storms, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.md')}, .json and .png")


def plot(storms: list[Storm], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    for s in storms:
        line = ax.plot(
            s.back,
            range(1, len(s.back) + 1),
            label=f"backlog {describe(s.backlog)}: all back in {s.all_back:.1f} s",
        )
        ax.axvline(s.listening, color=line[0].get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("seconds since the server was killed (dotted: listening again)")
    ax.set_ylabel("clients welcomed again")
    ax.set_title(f"Reconnect storm: {storms[0].clients:,} clients, server kill -9 and restart")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def main(args: argparse.Namespace) -> None:
    storms: list[Storm] = []
    for run in range(args.runs):
        for backlog in args.backlog:
            s = await storm(backlog, args.clients)
            storms.append(s)
            print(
                f"  run {run + 1}, backlog {describe(backlog)}: listening after "
                f"{s.listening:.2f} s, all {s.clients:,} back after {s.all_back:.2f} s "
                f"(half {statistics.median(s.back):.2f} s), {s.attempts:,} attempts, "
                f"{s.timed_out:,} timed out, {s.overflows:,} accept-queue overflows",
                flush=True,
            )
    if args.out is not None:
        command = "python benches/reconnect_storm.py " + " ".join(sys.argv[1:])
        write_report(storms, Path(args.out), command.strip())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=15_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--backlog",
        nargs="+",
        default=["100", "default"],
        help="backlogs to compare: numbers, or default (the server's own)",
    )
    parser.add_argument(
        "--out",
        help="results, without suffix (.md, .json, .png)  [e.g. benches/results/reconnect_storm]",
    )
    parser.add_argument("--generate", nargs=3, help=argparse.SUPPRESS)  # port count first
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)  # limits (JSON), port
    args = parser.parse_args()
    raise_file_limit()
    if args.generate is not None:
        port, count, first = (int(x) for x in args.generate)
        uvloop.run(generate(port, count, first))
    elif args.serve is not None:
        uvloop.run(serve_on_go(json.loads(args.serve[0]), int(args.serve[1])))
    else:
        uvloop.run(main(args))
