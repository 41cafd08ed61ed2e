"""The benchmark suite: fan-out, latency, RPC and connections, wse-fast beside its peers.

Every server runs pinned to core 0 (taskset), this load generator to core 1. Deliveries are
counted on the receiving side (a run that loses one fails), server CPU comes from the
scheduler's per-thread counters, and each figure is the median of several runs.

    python benches/run.py            # 1 000 connections, 64 B: what the README reports
    python benches/run.py --full     # 10 .. 10 000 connections, 64 B .. 16 KiB
    python benches/run.py --parts rpc-realistic rpc --runs 3 --name rpc_realistic
    python benches/run.py --parts rpc-realistic --loadgen python go   # both load generators

Each part's header is followed by a progress bar on stderr (on a terminal), counted to the
results the part will print (benches/progress.py); the results follow when the part is done.

The reference, JavaScript WSE 4.12.3, runs beside the others when WSE_JS_DIR (or --wse-js-dir)
names a checkout of that release with its dependencies (make bench-setup WSE_JS_DIR=DIR).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from loadgen import (  # noqa: E402
    SOCKETIO,
    WSE,
    WSE_SERVER,
    Dialect,
    Latency,
    LoadGen,
    Result,
    RpcResult,
    SyscallCount,
    rpc,
    rpc_one_write,
)
from progress import Progress  # noqa: E402
from wire import rss_bytes, server_frame, tick_body  # noqa: E402

RESULTS = HERE / "results"
SERVER_CORE, LOADGEN_CORE = "0", 1
#: The second load generator (benches/loadgen_go; make setup builds it): RPC only.
LOADGEN_GO = HERE / ".bin/loadgen_go"
LOADGENS = ("python", "go")
#: The reference: JavaScript WSE at the release wse-fast is measured against. Its code is
#: never part of this repository; WSE_JS_DIR names a checkout of it (benches/peers/
#: wse_js_server.mjs imports its server from there).
WSE_JS_VERSION = "4.12.3"
WSE_JS = f"JavaScript WSE {WSE_JS_VERSION}"
WSE_SERVER_PYTHON = HERE / ".venv-wse-server/bin/python"
#: What the wse-server peer runs on, said in its environment.
WSE_SERVER_VERSION = (
    "import importlib.metadata, platform; "
    "print('wse-server', importlib.metadata.version('wse-server'), "
    "'on CPython', platform.python_version())"
)
PEERS: dict[str, list[str]] = {
    # first: every table lists the reference first where it ran
    WSE_JS: ["node", str(HERE / "peers/wse_js_server.mjs")],
    "wse-fast": [sys.executable, str(HERE / "peers/wse_fast_server.py")],
    # the same server with io_uring turned off: paced fan-out through a loop of send() calls
    "wse-fast send() loop": [
        "env",
        "WSE_FAST_IO_URING=0",
        sys.executable,
        str(HERE / "peers/wse_fast_server.py"),
    ],
    "bare send() loop": [sys.executable, str(HERE / "peers/bare_send_server.py")],
    "minimal picows": [sys.executable, str(HERE / "peers/picows_server.py")],
    "websockets broadcast()": [sys.executable, str(HERE / "peers/websockets_server.py")],
    "Node.js ws": ["node", str(HERE / "peers/node_ws_server.mjs")],
    "aiohttp": [sys.executable, str(HERE / "peers/aiohttp_server.py")],
    "python-socketio": [sys.executable, str(HERE / "peers/socketio_server.py")],
    # the price of mounting: the same wse-fast server inside a web framework's application,
    # beside that framework's own WebSocket handler
    "wse-fast on uvicorn": [sys.executable, str(HERE / "peers/wse_fast_uvicorn.py")],
    "Starlette (uvicorn)": [sys.executable, str(HERE / "peers/starlette_server.py")],
    "wse-fast on aiohttp": [sys.executable, str(HERE / "peers/wse_fast_aiohttp.py")],
    "python-socketio (uvicorn)": [sys.executable, str(HERE / "peers/socketio_asgi_server.py")],
    # a Rust/tokio engine driven from Python, in its own CPython >= 3.12 environment
    # (benches/peers/wse_server_setup.sh); left out of a run when that environment is missing
    "wse-server": [str(WSE_SERVER_PYTHON), str(HERE / "peers/wse_server_peer.py")],
}
#: Servers that answer ``add`` and greet, and do no fan-out: the RPC parts only.
RPC_ONLY_PEERS: dict[str, list[str]] = {
    "Node.js ws + JSON": ["node", str(HERE / "peers/node_ws_rpc_server.mjs")],
}
BASELINE = "wse-fast baseline"
# the others speak the WSE slice
DIALECTS = {
    "python-socketio": SOCKETIO,
    "python-socketio (uvicorn)": SOCKETIO,
    "wse-server": WSE_SERVER,
}
#: The peers that answer the ``add`` procedure: wse-fast, wherever it runs, and the bare
#: servers (no framework) that show what parsing, adding and answering costs alone.
RPC_PEERS = (
    WSE_JS,
    "wse-fast",
    "wse-fast on uvicorn",
    "wse-fast on aiohttp",
    BASELINE,
    "minimal picows",
    "Node.js ws + JSON",
)
#: What the RPC tables call the bare peers.
RPC_LABELS = {"minimal picows": "bare picows + orjson"}
MODES = {"bare send() loop": ["paced"]}  # the kernel's price of one write: paced only
#: Every peer --peers takes.
PEER_NAMES = [*PEERS, *RPC_ONLY_PEERS]
#: The parts --parts takes, in the order a run measures them, and those run without --parts.
PARTS = ("fanout", "latency", "rpc-realistic", "rpc", "connections")
DEFAULT_PARTS = ("fanout", "latency", "rpc", "connections")
DEFAULT_CONNS, DEFAULT_SIZE, DEFAULT_RUNS = 1000, 64, 5
#: The line each part's results follow (one indented line per result), by part (latency's
#: results follow the fan-out they need). Each gets a progress bar (see expected_results).
PART_HEADERS = {
    "fanout": "fan-out:",
    "latency": "latency:",
    "rpc-realistic": "rpc, each call its own write:",
    "rpc": "rpc:",
    "connections": "connections:",
}
#: The peers whose connection costs a run measures, where they run.
CONNECTION_PEERS = (
    WSE_JS,
    "wse-fast",
    BASELINE,
    "minimal picows",
    "websockets broadcast()",
    "Node.js ws",
)
CONNECTION_COUNTS = (1000, 10000)
#: The fan-out matrix of --full: connections times payload bytes.
FULL_CONNS, FULL_SIZES = (10, 100, 1000, 10000), (64, 1024, 16384)
#: The RPC shapes of the rpc part: connections times calls in flight.
RPC_SHAPES = ((1, 1), (1, 64), (100, 8))


#: Peers that hold more than one file descriptor per connection: wse-server dup()s every
#: socket (its pre-framed broadcasts are written through the copy, beside tungstenite).
FILES_PER_CONNECTION = {"wse-server": 2}


def file_limit() -> int:
    """The open-file limit every server inherits from this process."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def wse_js_missing() -> str | None:
    """Why the JavaScript WSE peer cannot run here, or None when it can."""
    root = os.environ.get("WSE_JS_DIR")
    if not root:
        return "WSE_JS_DIR is not set"
    try:
        version = json.loads((Path(root) / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return f"{root} holds no package.json with a version"
    if version != WSE_JS_VERSION:
        return f"{root} holds JavaScript WSE {version}, not {WSE_JS_VERSION}"
    if not (Path(root) / "node_modules/ws").is_dir():
        return f"its dependencies are not installed in {root}"
    return None


def wse_js_versions() -> str:
    """What the JavaScript WSE peer ran on: its release and the packages it imports."""
    modules = Path(os.environ["WSE_JS_DIR"]) / "node_modules"
    installed = []
    for name in ("ws", "a-signal", "tseep", "bufferutil", "utf-8-validate"):
        package = modules / name / "package.json"
        if package.exists():
            installed.append(f"{name} {json.loads(package.read_text())['version']}")
    return f"JavaScript WSE {WSE_JS_VERSION} ({', '.join(installed)})"


def unfit(peers: list[str], conns: int) -> list[str]:
    """The peers that cannot hold ``conns`` connections under the open-file limit (with a
    hundred files to spare for the rest of the process)."""
    return [
        p
        for p in peers
        if p in FILES_PER_CONNECTION and FILES_PER_CONNECTION[p] * conns + 100 > file_limit()
    ]


#: Where say's lines go: main replaces it with one that counts the parts' results.
PROGRESS = Progress({})


def say(*parts: object) -> None:
    PROGRESS.line(" ".join(str(part) for part in parts))


def runnable(peers: list[str]) -> tuple[list[str], list[str]]:
    """``peers`` without those that cannot run here, and a line for each of those saying why
    (the Node.js servers without node are left out silently)."""
    notes = []
    if shutil.which("node") is None:
        peers = [p for p in peers if not p.startswith("Node.js")]
    if WSE_JS in peers and (why := wse_js_missing()) is not None:
        notes.append(f"{WSE_JS} left out: {why} (make bench-setup WSE_JS_DIR=DIR)")
        peers = [p for p in peers if p != WSE_JS]
    if "wse-server" in peers and not WSE_SERVER_PYTHON.exists():
        notes.append("wse-server left out: run benches/peers/wse_server_setup.sh to set it up")
        peers = [p for p in peers if p != "wse-server"]
    return peers, notes


class Server:
    """A peer server process pinned to the server core.

    It announces ``READY <port>``, or ``READY <port> <path>`` when it serves at a path of
    its own (a mounted application) rather than at its dialect's.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        command = PEERS[name] if name in PEERS else RPC_ONLY_PEERS[name]
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *command, "0"], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "READY":
            self.stop()
            raise RuntimeError(f"{name} did not start")
        self.port = int(line[1])
        self.dialect: Dialect = DIALECTS.get(name, WSE)
        if len(line) > 2:
            self.dialect = replace(self.dialect, path=line[2])

    def loadgen(self) -> LoadGen:
        return LoadGen(self.port, self.proc.pid, self.dialect)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: wse-fast as a cluster: ``wse-fast serve --workers 2`` (two worker processes sharing the port
#: through SO_REUSEPORT, joined through the nats-server the command starts for them); latency
#: only. The whole of it, both workers and nats-server, runs pinned to the server core like
#: every other peer: the same one core for the same load, which is the honest comparison
#: with the one-process peers (on a machine of two cores, a second core for the server would
#: also be the load generator's). What it shows is what the cluster's extra hop costs.
CLUSTER_WORKERS = {"wse-fast 2 workers + NATS": 2}


class ClusterServer:
    """``wse-fast serve wse_cluster_app:cluster_app --workers N`` (benches/peers/
    wse_cluster_app.py: the suite's wse-fast server, its users' cids unique across nodes) with
    the nats-server it starts, everything pinned to the server core. Its CPU is that of every
    process of it: the supervising command, the workers and nats-server."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dialect = WSE
        serve = str(Path(sys.executable).parent / "wse-fast")
        command = ["taskset", "-c", SERVER_CORE, serve, "serve", "wse_cluster_app:cluster_app"]
        command += ["--host", "127.0.0.1", "--port", "0", "--workers", str(CLUSTER_WORKERS[name])]
        self.proc = subprocess.Popen(
            command,
            cwd=HERE / "peers",
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        self.log: list[str] = []
        nats_pid = port = None
        for line in self.proc.stderr:
            self.log.append(line)
            if found := re.search(r"started nats-server \(pid (\d+)\)", line):
                nats_pid = int(found[1])
            if found := re.search(
                r" on 127\.0\.0\.1:(\d+).* with \d+ workers \(pids ([\d, ]+)\)", line
            ):
                port, workers = int(found[1]), [int(p) for p in found[2].split(",")]
                break
        if port is None or nats_pid is None:
            self.stop()
            raise RuntimeError(f"{name} did not start: {''.join(self.log)}")
        self.port = port
        self.pids = [*workers, nats_pid, self.proc.pid]
        # the workers log to the same pipe: read on, so that no write of theirs ever blocks
        self.reader = threading.Thread(
            target=self.log.extend, args=(self.proc.stderr,), daemon=True
        )
        self.reader.start()
        for pid in self.pids:  # inherited from taskset already; made sure of, thread by thread
            for task in Path(f"/proc/{pid}/task").iterdir():
                os.sched_setaffinity(int(task.name), {int(SERVER_CORE)})

    def loadgen(self) -> LoadGen:
        return LoadGen(self.port, self.pids[0], self.dialect, *self.pids[1:])

    def stop(self) -> None:
        """SIGTERM: the command stops its workers, then its nats-server."""
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_server(name: str) -> Server | ClusterServer:
    return ClusterServer(name) if name in CLUSTER_WORKERS else Server(name)


def cluster_available() -> bool:
    """Whether ``wse-fast serve --workers`` can start its nats-server here."""
    try:
        from wse_fast.cluster.local_nats import nats_server_binary

        nats_server_binary()
    except (ImportError, FileNotFoundError):
        return False
    return True


@dataclass
class Row:
    peer: str
    conns: int
    size: int
    mode: str
    runs: list[Result] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in self.runs))


async def calibrate(gen: LoadGen, mode: str, conns: int, size: int) -> int:
    """Messages per run for about half a second of work, at most ~64 MB per run."""
    frame = len(server_frame(gen.dialect.tick_body(size)))
    rounds = max(2, 50_000 // conns)
    probe = await gen.fanout(mode, rounds, size)
    per_round = probe.wall / rounds
    return max(1, int(min(0.5 / max(per_round, 1e-9), 64e6 / (conns * frame))))


async def fanout(names: list[str], conns: int, size: int, runs: int) -> list[Row]:
    """Measures every (peer, mode) ``runs`` times, interleaving peers run by run, so that drift
    in the shared machine's speed touches every peer alike."""
    together = conns * len(names) <= 15_000  # each peer's connections stay open meanwhile
    groups = [names] if together else [[n] for n in names]
    rows: list[Row] = []
    for group in groups:
        servers = [Server(name) for name in group]
        try:
            plans = []
            for server in servers:
                gen = server.loadgen()
                await gen.connect(conns)
                for mode in MODES.get(server.name, ["burst", "paced"]):
                    plans.append(
                        (
                            Row(server.name, conns, size, mode),
                            gen,
                            await calibrate(gen, mode, conns, size),
                        )
                    )
            for _ in range(runs):
                for row, gen, count in plans:
                    row.runs.append(await gen.fanout(row.mode, count, size))
            for row, _, count in plans:
                say(
                    f"  {row.peer:24} {conns:>6} conns {size:>6} B {row.mode:6}: "
                    f"{row.median('per_cpu_second'):>12,.0f} /CPU-s {row.median('per_second'):>12,.0f} /s"
                    f"  ({count} msgs x {runs} runs)"
                )
                rows.append(row)
            for _, gen, _ in plans:
                gen.close()
        finally:
            for server in servers:
                server.stop()
    return rows


#: Latency is measured for wse-fast and, at the same rates, for the reference (JavaScript WSE,
#: where it is set up) and the bare send() loop: what one send per delivery costs on this
#: machine bounds what any server can reach; and for wse-fast's cluster of two workers on the
#: same one core (left out where no nats-server is).
LATENCY_PEERS = (WSE_JS, "wse-fast", "bare send() loop", *CLUSTER_WORKERS)


async def latency(
    paced_max: float, conns: int, size: int, runs: int, names: list[str]
) -> list[tuple[float, str, list[float], float]]:
    """p50/p99/p99.9/max (ms) from send to receipt at fixed fractions of wse-fast's paced
    maximum, for each latency peer: (fraction, peer, quantiles, server CPU busy share).

    Each run sends on a fixed schedule for about two seconds; peers alternate run by run, and
    each quantile is the median over the runs.
    """
    out = []
    frame = len(server_frame(tick_body(size)))
    offset = len(server_frame(b"")) + len(b'["tick","')
    servers = [start_server(name) for name in names]
    try:
        gens = []
        for server in servers:
            gen = server.loadgen()
            await gen.connect(conns)
            gens.append(gen)
        for fraction in (0.1, 0.5, 0.8):
            rate = fraction * paced_max / conns  # broadcasts per second
            count = max(20, int(rate * 2))  # about two seconds
            picks: dict[str, list[list[float]]] = {name: [] for name in names}
            busy: dict[str, list[float]] = {name: [] for name in names}
            for _ in range(runs):
                for server, gen in zip(servers, gens, strict=True):
                    gen.latency = Latency(frame, offset, gen.receivers)
                    result = await gen.fanout("rate", count, size, rate=rate)
                    samples = sorted(gen.latency.samples)
                    gen.latency = None
                    pick = [samples[int(q * (len(samples) - 1))] / 1e6 for q in (0.5, 0.99, 0.999)]
                    picks[server.name].append([*pick, samples[-1] / 1e6])
                    busy[server.name].append(result.cpu / result.wall)
            for name in names:
                med = [statistics.median(run[i] for run in picks[name]) for i in range(4)]
                share = statistics.median(busy[name])
                out.append((fraction, name, med, share))
                say(
                    f"  latency {name:25} at {fraction:.0%} of paced max ({rate * conns:,.0f}/s): "
                    f"p50 {med[0]:.2f} ms p99 {med[1]:.2f} ms p99.9 {med[2]:.2f} ms "
                    f"(server core {share:.0%} busy)"
                )
        for gen in gens:
            gen.close()
    finally:
        for server in servers:
            server.stop()
    return out


def rpc_order(names: list[str]) -> list[str]:
    """The RPC servers in the tables' order: the reference, then wse-fast, then the rest."""
    first = [n for n in (WSE_JS, "wse-fast") if n in names or n == "wse-fast"]
    return [*first, *(n for n in names if n not in first)]


async def rpc_bench(
    runs: int, servers: list[str], loadgens: list[str]
) -> list[tuple[str, Result, list[float]]]:
    """RPC through each of ``servers`` (wse-fast on its own listener, mounted, and a
    baseline build when one is given) from each of ``loadgens``, measured in alternation run
    by run."""
    out = []
    for conns, depth in RPC_SHAPES:
        pairs = [(name, loadgen) for loadgen in loadgens for name in servers]
        results: dict[tuple[str, str], list[Result]] = {pair: [] for pair in pairs}
        lat: dict[tuple[str, str], list[list[float]]] = {pair: [] for pair in pairs}
        for _ in range(runs):
            for name, loadgen in pairs:
                result: Result
                with Server(name) as server:
                    if loadgen == "go":
                        result, p = await rpc_go(server, conns, depth, 1.0, pipelined=True)
                    else:
                        gen = server.loadgen()
                        result, samples = await rpc(gen, conns, depth, 1.0)
                        gen.close()
                        p = p50_p99(samples)
                results[name, loadgen].append(result)
                lat[name, loadgen].append(p)
        for name, loadgen in sorted(pairs, key=lambda pair: servers.index(pair[0])):
            runs_of = results[name, loadgen]
            mid = sorted(runs_of, key=lambda r: r.per_cpu_second)[len(runs_of) // 2]
            p = [statistics.median(x[i] for x in lat[name, loadgen]) for i in (0, 1)]
            label = f"pipelined: {conns} conn x {depth} in flight"
            if loadgen == "go":
                label += f" ({RPC_LABELS.get(name, name)}, Go load generator)"
            elif name != "wse-fast":
                label += f" ({RPC_LABELS.get(name, name)})"
            say(
                f"  rpc {label:22}: {mid.per_cpu_second:>10,.0f} calls/CPU-s {mid.per_second:>10,.0f} calls/s p50 {p[0]:.3f} ms p99 {p[1]:.3f} ms"
            )
            out.append((label, mid, p))
    return out


@dataclass
class RpcRow:
    """One server under the one-write-per-call workload from one load generator: the median
    run by calls per server CPU-second, and the median latencies over the runs."""

    peer: str
    loadgen: str
    conns: int
    depth: int
    runs: list[RpcResult]
    p50_p99_ms: list[float]
    syscalls: dict[str, float]  # per call, from one more run with perf counting

    @property
    def mid(self) -> RpcResult:
        return sorted(self.runs, key=lambda r: r.per_cpu_second)[len(self.runs) // 2]

    @property
    def label(self) -> str:
        return RPC_LABELS.get(self.peer, self.peer)


#: The one-write-per-call shapes: the issue's 100 connections x 8 in flight, and the same
#: 800 calls in flight as 800 connections with one each, where no read can find two calls.
REALISTIC_SHAPES = ((100, 8), (800, 1))


async def rpc_go(
    server: Server, conns: int, depth: int, seconds: float, pipelined: bool = False
) -> tuple[RpcResult, list[float]]:
    """One window of the Go load generator against ``server`` (on this process's core, which
    it inherits): its result and its p50/p99 in ms. ``pipelined``: a connection's calls
    written together, as :func:`loadgen.rpc` writes them."""
    proc = await asyncio.create_subprocess_exec(
        str(LOADGEN_GO), "-port", str(server.port), "-path", server.dialect.path,
        "-conns", str(conns), "-depth", str(depth), "-seconds", str(seconds),
        "-server-pids", str(server.proc.pid), *(["-pipelined"] if pipelined else []),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen_go against {server.name}: {err.decode().strip()}")
    got = json.loads(out)
    result = RpcResult(got["deliveries"], got["wall"], got["cpu"], got["loadgen_cpu"])
    return result, [got["p50_ms"], got["p99_ms"]]


def p50_p99(samples: list[int]) -> list[float]:
    """The p50 and p99 in ms of the Python load generator's samples (ns)."""
    samples.sort()
    return [samples[len(samples) // 2] / 1e6, samples[int(0.99 * (len(samples) - 1))] / 1e6]


async def one_write_run(
    server: Server, loadgen: str, conns: int, depth: int, seconds: float
) -> tuple[RpcResult, list[float]]:
    """One window of calls, each its own write, from ``loadgen``: the result and p50/p99 (ms)."""
    if loadgen == "go":
        return await rpc_go(server, conns, depth, seconds)
    gen = server.loadgen()
    result, samples = await rpc_one_write(gen, conns, depth, seconds)
    gen.close()
    return result, p50_p99(samples)


async def rpc_realistic(
    runs: int, servers: list[str], loadgens: list[str], seconds: float = 2.0
) -> list[RpcRow]:
    """RPC as independent clients make it: connections with calls in flight, every call its
    own write with its own stamp, a new one written as each answer arrives. A fresh server per
    run; servers and load generators alternate run by run; then, for the Python load
    generator, one more run per server with its system calls counted (perf), which is not
    among the measured ones (the Go one's window is its own: perf cannot be switched at its
    edges from here)."""
    rows = []
    for conns, depth in REALISTIC_SHAPES:
        pairs = [(name, loadgen) for loadgen in loadgens for name in servers]
        results: dict[tuple[str, str], list[RpcResult]] = {pair: [] for pair in pairs}
        lat: dict[tuple[str, str], list[list[float]]] = {pair: [] for pair in pairs}
        for _ in range(runs):
            for name, loadgen in pairs:
                with Server(name) as server:
                    result, p = await one_write_run(server, loadgen, conns, depth, seconds)
                results[name, loadgen].append(result)
                lat[name, loadgen].append(p)
        for name, loadgen in sorted(pairs, key=lambda pair: servers.index(pair[0])):
            per_call: dict[str, float] = {}
            if loadgen == "python" and shutil.which("perf") is not None:
                with Server(name) as server, tempfile.TemporaryDirectory() as tmp:
                    gen = server.loadgen()
                    counted, _ = await rpc_one_write(
                        gen, conns, depth, seconds, SyscallCount(server.proc.pid, Path(tmp))
                    )
                    gen.close()
                assert counted.syscalls is not None
                per_call = {k: v / counted.deliveries for k, v in counted.syscalls.items()}
            p = [statistics.median(x[i] for x in lat[name, loadgen]) for i in (0, 1)]
            row = RpcRow(name, loadgen, conns, depth, results[name, loadgen], p, per_call)
            mid = row.mid
            say(
                f"  rpc one write per call {row.label:22} ({loadgen:6}) {conns} x {depth}: "
                f"{mid.per_cpu_second:>10,.0f} calls/CPU-s {mid.per_second:>10,.0f} calls/s "
                f"p50 {p[0]:.2f} ms p99 {p[1]:.2f} ms, system calls per call "
                f"{ {k: round(v, 2) for k, v in per_call.items()} }, load generator "
                f"{mid.loadgen_cpu / mid.wall:.0%} busy"
            )
            rows.append(row)
    return rows


async def connections(
    counts: list[int], names: list[str]
) -> list[tuple[str, int, float, float, float]]:
    """Server RSS per idle authenticated connection, and connects + authentications per second."""
    out = []
    for name in names:
        for n in counts:
            with Server(name) as server:
                gen = server.loadgen()
                await gen.connect(10)  # warm up allocators and code paths
                rss0 = rss_bytes(server.proc.pid)
                from wire import cpu_seconds

                cpu0 = cpu_seconds(server.proc.pid)
                wall = await gen.connect(n)
                cpu = cpu_seconds(server.proc.pid) - cpu0
                per_conn = (rss_bytes(server.proc.pid) - rss0) / n
                gen.close()
            say(
                f"  {name:24} {n:>6} idle conns: {per_conn / 1024:6.1f} KiB each, {n / wall:8,.0f} connects/s ({n / cpu:,.0f} per CPU-s)"
            )
            out.append((name, n, per_conn, n / wall, n / cpu))
    return out


def write_report(
    realistic: list[RpcRow],
    fan: list[Row],
    lat: list[tuple[float, str, list[float], float]],
    rpcs: list[tuple[str, Result, list[float]]],
    conns: list[tuple[str, int, float, float, float]],
    args: argparse.Namespace,
) -> None:
    RESULTS.mkdir(exist_ok=True)
    versions = {
        "python": platform.python_version(),
        "node": subprocess.run(
            ["node", "--version"], capture_output=True, text=True
        ).stdout.strip(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
    }
    if os.environ.get("WSE_JS_DIR") and wse_js_missing() is None:
        versions["wse_js"] = wse_js_versions()
    if realistic or rpcs:
        versions["loadgens"] = ", ".join(args.loadgen)
        if "go" in args.loadgen:
            versions["go"] = subprocess.run(
                ["go", "version"], capture_output=True, text=True
            ).stdout.strip()
    if any(r.peer == "wse-server" for r in fan):
        versions["wse_server"] = subprocess.run(
            [str(WSE_SERVER_PYTHON), "-c", WSE_SERVER_VERSION], capture_output=True, text=True
        ).stdout.strip()
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {versions['cpus']} cores (Linux {versions['kernel']}), "
        f"Python {versions['python']}, Node.js {versions['node']}. Server pinned to core 0, load "
        f"generator to core 1; median of {args.runs} runs; deliveries counted by the receivers."
        + (f" {versions['wse_server']}." if "wse_server" in versions else "")
        + (f" {versions['wse_js']} on Node.js." if "wse_js" in versions else "")
        + (
            " RPC from the load generators: "
            + ", ".join(
                "benches/loadgen.py (Python, uvloop)"
                if g == "python"
                else f"benches/loadgen_go ({versions['go']}, gorilla/websocket)"
                for g in args.loadgen
            )
            + "."
            if "loadgens" in versions
            else ""
        ),
        "",
    ]
    if fan:
        lines += [
            "### Fan-out",
            "",
            "| server | conns | payload | mode | deliveries per server CPU-second | deliveries per second (wall) |",
            "| --- | ---: | ---: | --- | ---: | ---: |",
        ]
    for r in fan:
        lines.append(
            f"| {r.peer} | {r.conns:,} | {r.size} B | {r.mode} | {r.median('per_cpu_second'):,.0f} | {r.median('per_second'):,.0f} |"
        )
    if lat:
        lines += [
            "",
            "### Fan-out latency (send to receipt, the same rates for every server)",
            "",
            "| load (of wse-fast's paced max) | server | p50 | p99 | p99.9 | max | server core busy |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for fraction, peer, (p50, p99, p999, pmax), share in lat:
            lines.append(
                f"| {fraction:.0%} | {peer} | {p50:.2f} ms | {p99:.2f} ms | {p999:.2f} ms | {pmax:.2f} ms | {share:.0%} |"
            )
    if realistic:

        def per_call(row: RpcRow, family: str) -> str:
            return f"{row.syscalls[family]:.2f}" if row.syscalls else "-"

        lines[2:2] = [
            "### RPC, each call its own write (as independent clients send them)",
            "",
            "Every call its own TCP write with its own stamp; a new call is written as each "
            "answer arrives. Each figure: the run with the median calls per server CPU-second; "
            "latencies are medians over the runs. The server's system calls per call come from "
            "one more run with perf counting its tracepoints (read: read/recvfrom/recvmsg; "
            "write: write/writev/sendto/sendmsg).",
            "",
            "| server | load generator | load | calls per server CPU-second | calls per second "
            "| p50 | p99 | syscalls per call: read | write | epoll_wait | all "
            "| server core busy | load generator core busy |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *(
                f"| {row.label} | {row.loadgen} | {row.conns} conns x {row.depth} in flight "
                f"| {row.mid.per_cpu_second:,.0f} | {row.mid.per_second:,.0f} "
                f"| {row.p50_p99_ms[0]:.2f} ms | {row.p50_p99_ms[1]:.2f} ms "
                f"| {per_call(row, 'read')} | {per_call(row, 'write')} | {per_call(row, 'epoll_wait')} "
                f"| {per_call(row, 'all')} "
                f"| {row.mid.cpu / row.mid.wall:.0%} | {row.mid.loadgen_cpu / row.mid.wall:.0%} |"
                for row in realistic
            ),
            "",
        ]
    if rpcs:
        lines += [
            "",
            "### RPC, pipelined: a connection's calls in one write",
            "",
            "| load | calls per server CPU-second | calls per second | p50 | p99 |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for label, res, (p50, p99) in rpcs:
            lines.append(
                f"| {label} | {res.per_cpu_second:,.0f} | {res.per_second:,.0f} | {p50:.3f} ms | {p99:.3f} ms |"
            )
    if conns:
        lines += [
            "",
            "### Connections",
            "",
            "| server | idle authenticated connections | server RSS per connection | connects + auth per second | per server CPU-second |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, n, per_conn, rate, per_cpu in conns:
            lines.append(
                f"| {name} | {n:,} | {per_conn / 1024:.1f} KiB | {rate:,.0f} | {per_cpu:,.0f} |"
            )
    name = args.name or ("matrix" if args.full else "suite")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(
        json.dumps(
            {
                "versions": versions,
                "rpc_one_write_per_call": [
                    {
                        "peer": row.label,
                        "loadgen": row.loadgen,
                        "conns": row.conns,
                        "in_flight": row.depth,
                        "per_cpu_second": row.mid.per_cpu_second,
                        "per_second": row.mid.per_second,
                        "p50_p99_ms": row.p50_p99_ms,
                        "server_syscalls_per_call": row.syscalls,
                        "server_busy": row.mid.cpu / row.mid.wall,
                        "loadgen_busy": row.mid.loadgen_cpu / row.mid.wall,
                        "runs_per_cpu_second": [r.per_cpu_second for r in row.runs],
                    }
                    for row in realistic
                ],
                "fanout": [
                    {
                        "peer": r.peer,
                        "conns": r.conns,
                        "size": r.size,
                        "mode": r.mode,
                        "per_cpu_second": r.median("per_cpu_second"),
                        "per_second": r.median("per_second"),
                    }
                    for r in fan
                ],
                "latency": [
                    {"fraction": f, "peer": peer, "p50_p99_p999_max_ms": p, "server_busy": share}
                    for f, peer, p, share in lat
                ],
                "rpc": [
                    {
                        "load": label,
                        "per_cpu_second": res.per_cpu_second,
                        "per_second": res.per_second,
                        "p50_p99_ms": p,
                    }
                    for label, res, p in rpcs
                ],
                "connections": [
                    {
                        "peer": n,
                        "conns": c,
                        "rss_per_conn": r,
                        "per_second": s,
                        "per_cpu_second": pc,
                    }
                    for n, c, r, s, pc in conns
                ],
            },
            indent=1,
        )
    )
    if fan:
        plot(fan, RESULTS / f"{name}.png")
    elif realistic:
        plot_rpc(realistic, rpcs, RESULTS / f"{name}.png")
    if lat:
        plot_latency(lat, RESULTS / f"{name}-latency.png")
    say(f"wrote {RESULTS / name}.md, .json and .png")


def plot(fan: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = sorted({(r.conns, r.size) for r in fan})
    modes = ["burst", "paced"]
    fig, axes = plt.subplots(len(configs), 2, figsize=(11, 2.6 * len(configs)), squeeze=False)
    for i, (conns, size) in enumerate(configs):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            rows = [r for r in fan if (r.conns, r.size, r.mode) == (conns, size, mode)]
            rows.sort(key=lambda r: r.median("per_cpu_second"))
            ax.barh(
                [r.peer for r in rows], [r.median("per_cpu_second") for r in rows], color="tab:blue"
            )
            ax.set_xscale("log")
            ax.set_title(f"{mode}: {conns:,} connections, {size} B", fontsize=9)
            ax.tick_params(labelsize=8)
            ax.set_xlabel("deliveries per server CPU-second (log)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_rpc(
    realistic: list[RpcRow], rpcs: list[tuple[str, Result, list[float]]], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several = len({row.loadgen for row in realistic}) > 1
    bars = [
        (
            f"{row.label}\n{row.conns} x {row.depth}, one write per call"
            + (f", {row.loadgen} load generator" if several else ""),
            row.mid.per_cpu_second,
        )
        for row in realistic
    ]
    bars += [
        (
            label.replace("pipelined: ", "pipelined\n") + ("" if "(" in label else " (wse-fast)"),
            res.per_cpu_second,
        )
        for label, res, _ in rpcs
        if label.startswith(f"pipelined: {realistic[0].conns} conn x {realistic[0].depth} ")
    ]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(bars) + 1.2))
    ax.barh([b[0] for b in bars][::-1], [b[1] for b in bars][::-1], color="tab:blue")
    ax.set_xlabel("calls per server CPU-second", fontsize=8)
    ax.set_title("RPC: calls per server CPU-second", fontsize=9)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_latency(lat: list[tuple[float, str, list[float], float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = sorted({f for f, *_ in lat})
    peers = [p for p in LATENCY_PEERS if any(peer == p for _, peer, _, _ in lat)]
    width = 0.8 / len(peers)
    fig, axes = plt.subplots(1, len(fractions), figsize=(11, 3), squeeze=False)
    for ax, fraction in zip(axes[0], fractions, strict=True):
        for offset, peer in enumerate(peers):
            [quantiles] = [q for f, p, q, _ in lat if (f, p) == (fraction, peer)]
            xs = [i + offset * width for i in range(4)]
            ax.bar(xs, quantiles, width=width, label=peer)
        ax.set_xticks(
            [i + width * (len(peers) - 1) / 2 for i in range(4)],
            ["p50", "p99", "p99.9", "max"],
            fontsize=8,
        )
        ax.set_title(f"{fraction:.0%} of wse-fast's paced maximum", fontsize=9)
        ax.set_ylabel("send to receipt (ms)", fontsize=8)
        ax.tick_params(labelsize=8)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def chosen_peers(asked: list[str] | None) -> list[str]:
    """The peers a run measures, in the tables' order: those asked for (every one in PEERS
    without --peers; main adds the baseline to PEERS and to what is asked for)."""
    known = [*PEERS, *RPC_ONLY_PEERS]
    return [p for p in known if p in asked] if asked else list(PEERS)


def latency_peers(peers: list[str]) -> list[str]:
    """The latency part's servers: the reference where it runs, and the cluster where a
    nats-server can be started."""
    names = [n for n in LATENCY_PEERS if n != WSE_JS or WSE_JS in peers]
    if not cluster_available():
        names = [n for n in names if n not in CLUSTER_WORKERS]
    return names


def expected_results(
    asked: list[str] | None,
    parts: list[str] | None,
    full: bool = False,
    conns: int | None = None,
    size: int | None = None,
    baseline: bool = False,
) -> dict[str, int]:
    """How many result lines a run with these options prints after each part's header (see
    PART_HEADERS), by the loops of main: what the progress bars count to.
    Parts whose count is not known here (rpc-realistic) have no entry."""
    parts = list(parts or DEFAULT_PARTS)
    conns, size = conns or DEFAULT_CONNS, size or DEFAULT_SIZE
    extra = [BASELINE] if baseline else []  # where main puts it: last in PEERS
    known = [*PEERS, *extra, *RPC_ONLY_PEERS]
    if asked:
        peers = [p for p in known if p in [*asked, *extra]]
    else:
        peers = [p for p in known if p not in RPC_ONLY_PEERS]
    peers, _ = runnable(peers)
    expected: dict[str, int] = {}
    if "fanout" in parts or "latency" in parts:
        fan = [p for p in peers if p not in RPC_ONLY_PEERS]
        conn_counts, sizes = (FULL_CONNS, FULL_SIZES) if full else ((conns,), (size,))
        expected[PART_HEADERS["fanout"]] = sum(
            len(sizes) * len(MODES.get(p, ("burst", "paced")))
            for n in conn_counts
            for p in fan
            if p not in unfit(fan, n)
        )
        # latency runs at the rate of wse-fast's paced fan-out at --conns and --size
        if "latency" in parts and "wse-fast" in fan and conns in conn_counts and size in sizes:
            expected[PART_HEADERS["latency"]] = 3 * len(latency_peers(peers))  # three loads
    if "rpc" in parts:
        servers = rpc_order([p for p in peers if p in RPC_PEERS])
        expected[PART_HEADERS["rpc"]] = len(RPC_SHAPES) * len(servers)
    if "connections" in parts:
        measured = [p for p in CONNECTION_PEERS if p in peers]
        expected[PART_HEADERS["connections"]] = len(CONNECTION_COUNTS) * len(measured)
    return expected


async def main(args: argparse.Namespace) -> None:
    global PROGRESS
    PROGRESS = Progress(
        expected_results(
            args.peers, args.parts, args.full, args.conns, args.size, bool(args.baseline)
        )
    )
    try:
        await run_parts(args)
    finally:
        PROGRESS.end_part()  # the results of a part cut short by an error are still shown


async def run_parts(args: argparse.Namespace) -> None:
    global RESULTS
    os.sched_setaffinity(0, {LOADGEN_CORE})
    if args.out:
        RESULTS = Path(args.out)
    if args.baseline:
        # Another checkout of wse-fast (with its own `make bench-setup`), measured beside this
        # one in the same run: the before and after of a change to a hot path.
        base = Path(args.baseline).resolve()
        PEERS[BASELINE] = [
            str(base / ".venv/bin/python"),
            str(base / "benches/peers/wse_fast_server.py"),
        ]
        if args.peers:
            args.peers.append(BASELINE)
    if args.wse_js_dir:
        os.environ["WSE_JS_DIR"] = str(Path(args.wse_js_dir).resolve())
    peers, notes = runnable(chosen_peers(args.peers))
    for note in notes:
        say(note)
    if "go" in args.loadgen and not LOADGEN_GO.exists():
        raise SystemExit(f"no {LOADGEN_GO}: make setup builds the Go load generator")
    conn_counts = list(FULL_CONNS) if args.full else [args.conns]
    sizes = list(FULL_SIZES) if args.full else [args.size]
    fan: list[Row] = []
    if "fanout" not in args.parts and "latency" not in args.parts:
        conn_counts = []
    else:
        for conns in conn_counts:
            for name in unfit(peers, conns):
                say(
                    f"{name} left out at {conns:,} connections: it holds "
                    f"{FILES_PER_CONNECTION[name]} files per connection, over the limit of "
                    f"{file_limit():,}"
                )
        say(PART_HEADERS["fanout"])
    for conns in conn_counts:
        for size in sizes:
            fit = [p for p in peers if p in PEERS and p not in unfit(peers, conns)]
            fan += await fanout(fit, conns, size, args.runs)
    lat, rpcs, conns_rows, realistic = [], [], [], []
    paced = [
        r
        for r in fan
        if r.peer == "wse-fast"
        and r.mode == "paced"
        and r.conns == args.conns
        and r.size == args.size
    ]
    if paced and "latency" in args.parts:
        names = latency_peers(peers)
        if not cluster_available():
            say("the cluster's latency left out: no nats-server (pip install 'wse-fast[cluster]')")
        say(PART_HEADERS["latency"])
        lat = await latency(paced[0].median("per_second"), args.conns, args.size, args.runs, names)
    if "rpc-realistic" in args.parts:
        say(PART_HEADERS["rpc-realistic"])
        names = rpc_order([p for p in peers if p in RPC_PEERS])
        if not args.peers and shutil.which("node") is not None:
            names += RPC_ONLY_PEERS
        realistic = await rpc_realistic(args.runs, names, args.loadgen, args.rpc_seconds)
    if "rpc" in args.parts:
        say(PART_HEADERS["rpc"])
        rpcs = await rpc_bench(
            args.runs, rpc_order([p for p in peers if p in RPC_PEERS]), args.loadgen
        )
    if "connections" in args.parts:
        say(PART_HEADERS["connections"])
        names = [p for p in CONNECTION_PEERS if p in peers]
        conns_rows = await connections(list(CONNECTION_COUNTS), names)
    write_report(realistic, fan, lat, rpcs, conns_rows, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--full", action="store_true", help="the whole matrix of connections and sizes"
    )
    parser.add_argument("--conns", type=int, default=DEFAULT_CONNS)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    parser.add_argument(
        "--peers",
        nargs="*",
        choices=PEER_NAMES,
        metavar="PEER",
        help="a subset of: " + ", ".join(PEER_NAMES),
    )
    parser.add_argument(
        "--baseline",
        help="another wse-fast checkout (set up with make bench-setup) to measure beside",
    )
    parser.add_argument("--out", help="where to write the results (default: benches/results)")
    parser.add_argument(
        "--name", help="the results' file name, without suffix (default: suite, or matrix)"
    )
    parser.add_argument(
        "--parts",
        nargs="*",
        choices=PARTS,
        default=list(DEFAULT_PARTS),
        help="fanout latency rpc-realistic rpc connections (latency needs fanout; "
        "rpc-realistic: one write per call, beside the bare picows and Node.js servers)",
    )
    parser.add_argument(
        "--loadgen",
        nargs="+",
        choices=LOADGENS,
        default=["python"],
        help="the load generators of the RPC parts, each measured against every server in "
        "alternation (python: benches/loadgen.py; go: benches/loadgen_go, built by make setup)",
    )
    parser.add_argument(
        "--rpc-seconds",
        type=float,
        default=2.0,
        help="the window of each one-write-per-call RPC run (default 2)",
    )
    parser.add_argument(
        "--wse-js-dir",
        help="a checkout of JavaScript WSE 4.12.3 set up by make bench-setup WSE_JS_DIR=DIR "
        "(default: the WSE_JS_DIR environment variable; the peer is left out without one)",
    )
    uvloop.run(main(parser.parse_args()))
