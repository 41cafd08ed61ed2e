"""The cluster benchmarks: wse-fast nodes on one nats-server, and ``wse-fast serve --workers``.

1. Broadcast through the cluster: N nodes (2 and 3) on one nats-server, the connections spread
   evenly, a broadcast from node 0; deliveries per server CPU-second summed over the nodes,
   against one node without NATS holding all the connections (burst and paced as in
   benches/run.py). nats-server's own CPU is counted apart.
2. Send-to-user latency: a request to node A makes it ``send(cid)`` to a user on node B (or on
   A itself); the load generator times request to receipt in its own process.
3. ``wse-fast serve --workers 2`` against one process: (a) connections held before the servers
   refuse, from several load-generator processes; (b) paced fan-out per wall-second.

Pinning: every node and nats-server on core 0, this load generator on core 1 (parts 1, 2, and
the one-process side of 3). Two workers need both cores: worker 1 is pinned to core 0, worker 2
to core 1, and their nats-server and the load generator are left to the scheduler.

    python benches/cluster.py                 # all parts, about 4 minutes
    python benches/cluster.py --parts broadcast latency
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from loadgen import COUNTING, LoadGen, Receiver, frame_end  # noqa: E402
from wire import cpu_seconds, mask_frame, server_frame, tick_body  # noqa: E402
from wse_fast.cluster.local_nats import LocalNats  # noqa: E402

RESULTS = HERE / "results"
PEERS_DIR = HERE / "peers"
APP = PEERS_DIR / "wse_cluster_app.py"
SERVER_CORE, LOADGEN_CORE = 0, 1
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux 4.2
BOTH_CORES = {0, 1}


def say(*parts: object) -> None:
    print(*parts, flush=True)


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of ``pid`` onto ``cores`` (threads made later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cores)


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---- part 1 and 2: nodes started one by one ------------------------------------------------


class Node:
    """One wse-fast node process (benches/peers/wse_cluster_app.py) pinned to the server core."""

    def __init__(self, nats: LocalNats | None, prefix: str, index: int) -> None:
        args = [] if nats is None else [nats.url, prefix, f"{prefix}-{index}"]
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(SERVER_CORE), sys.executable, str(APP), "0", *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "READY":
            self.stop()
            raise RuntimeError(f"node {prefix}-{index} did not start")
        self.port = int(line[1])
        self.pid = self.proc.pid

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@dataclass
class Run:
    deliveries: int
    wall: float
    cpu: float  # the wse-fast processes, summed
    nats_cpu: float  # nats-server's (0 without one)

    @property
    def per_cpu_second(self) -> float:
        return self.deliveries / self.cpu

    @property
    def per_cpu_second_with_nats(self) -> float:
        return self.deliveries / (self.cpu + self.nats_cpu)

    @property
    def per_second(self) -> float:
        return self.deliveries / self.wall


def median(runs: list[Run], attr: str) -> float:
    return float(statistics.median(getattr(r, attr) for r in runs))


class Fan:
    """Receivers on several ports (nodes), counted together; the first connects to
    ``ports[0]`` and sends the ``bench`` command, so the broadcast starts on that node."""

    def __init__(self, ports: list[int], pids: list[int], nats_pid: int | None) -> None:
        self.ports = ports
        self.pids = pids
        self.nats_pid = nats_pid
        self.gen = LoadGen(ports[0], pids[0])

    def server_cpu(self) -> tuple[float, float]:
        nats = cpu_seconds(self.nats_pid) if self.nats_pid is not None else 0.0
        return sum(cpu_seconds(pid) for pid in self.pids), nats

    async def connect(self, total: int, parallel: int = 200) -> None:
        """``total`` connections spread evenly over the ports (the first port first)."""
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(parallel)
        gen = self.gen

        async def one(port: int) -> Receiver:
            async with sem:
                _, receiver = await loop.create_connection(
                    lambda: Receiver(gen, port), "127.0.0.1", port
                )
                await asyncio.wait_for(receiver.ready, 30)
                return receiver

        n = len(self.ports)
        for i, port in enumerate(self.ports):
            share = total // n + (i < total % n)
            gen.receivers += await asyncio.gather(*(one(port) for _ in range(share)))

    async def fanout(self, mode: str, count: int, size: int, timeout: float = 120) -> Run:
        """One broadcast run, as LoadGen.fanout, with the CPU of every server process."""
        gen = self.gen
        frame_size = len(server_frame(tick_body(size)))
        n = len(gen.receivers)
        gen.received, gen.expected = 0, n * count * frame_size
        gen.done = asyncio.get_running_loop().create_future()
        cpu0, nats0 = self.server_cpu()
        start = time.perf_counter()
        controller = gen.receivers[0].transport
        assert controller is not None
        controller.write(gen.dialect.command(mode, count, size, 0.0))
        try:
            await asyncio.wait_for(gen.done, timeout)
        except TimeoutError:
            raise RuntimeError(
                f"lost deliveries: got {gen.received // frame_size} of {n * count} ({mode})"
            ) from None
        wall = time.perf_counter() - start
        cpu1, nats1 = self.server_cpu()
        if gen.received != gen.expected:
            raise RuntimeError(f"received {gen.received} bytes, expected {gen.expected}")
        return Run(n * count, wall, cpu1 - cpu0, nats1 - nats0)

    async def calibrate(self, mode: str, size: int) -> int:
        """Messages per run for about half a second of work, at most ~64 MB per run."""
        conns = len(self.gen.receivers)
        frame = len(server_frame(tick_body(size)))
        rounds = max(2, 50_000 // conns)
        probe = await self.fanout(mode, rounds, size)
        per_round = probe.wall / rounds
        return max(1, int(min(0.5 / max(per_round, 1e-9), 64e6 / (conns * frame))))

    def close(self) -> None:
        self.gen.close()


@dataclass
class Setup:
    """One configuration of part 1: its nodes and, for a cluster, its nats-server."""

    name: str
    nodes: list[Node]
    nats: LocalNats | None
    fan: Fan | None = None


async def start_setup(n: int) -> Setup:
    if n == 1:
        return Setup("1 node, no NATS", [Node(None, "solo", 0)], None)
    nats = LocalNats()
    await nats.start()
    assert nats.pid is not None
    pin(nats.pid, {SERVER_CORE})
    nodes = [Node(nats, f"c{n}", i) for i in range(n)]
    return Setup(f"{n} nodes + NATS", nodes, nats)


async def stop_setup(setup: Setup) -> None:
    if setup.fan is not None:
        setup.fan.close()
    for node in setup.nodes:
        node.stop()
    if setup.nats is not None:
        await setup.nats.close()


@dataclass
class BroadcastRow:
    setup: str
    mode: str
    conns: int
    count: int
    runs: list[Run] = field(default_factory=list)


async def broadcast(setups: list[Setup], conns: int, size: int, runs: int) -> list[BroadcastRow]:
    """Every setup holds ``conns`` connections; they are measured in alternation, run by
    run, with the same number of broadcasts (calibrated on the single node)."""
    for setup in setups:
        nats_pid = setup.nats.pid if setup.nats is not None else None
        setup.fan = Fan([n.port for n in setup.nodes], [n.pid for n in setup.nodes], nats_pid)
        await setup.fan.connect(conns)
    single = setups[0].fan
    assert single is not None
    counts = {mode: await single.calibrate(mode, size) for mode in ("burst", "paced")}
    rows = {
        (s.name, mode): BroadcastRow(s.name, mode, conns, counts[mode])
        for s in setups
        for mode in counts
    }
    for _ in range(runs):
        for setup in setups:
            assert setup.fan is not None
            for mode, count in counts.items():
                rows[setup.name, mode].runs.append(await setup.fan.fanout(mode, count, size))
    out = list(rows.values())
    base = {r.mode: median(r.runs, "per_cpu_second") for r in out if r.setup == setups[0].name}
    for r in out:
        per_cpu = median(r.runs, "per_cpu_second")
        say(
            f"  {r.setup:16} {r.mode:6}: {per_cpu:>12,.0f} /CPU-s ({per_cpu / base[r.mode]:.0%}), "
            f"with nats-server {median(r.runs, 'per_cpu_second_with_nats'):>12,.0f} /CPU-s, "
            f"{median(r.runs, 'per_second'):>12,.0f} /s  ({r.count} msgs x {runs} runs)"
        )
    return out


# ---- part 2: send-to-user latency ----------------------------------------------------------


class Probe(Receiver):
    """A connection that hands each whole frame it receives (body, receipt time in ns) to
    the future in ``waiter``."""

    def __init__(self, gen: LoadGen, port: int) -> None:
        super().__init__(gen, port)
        self.waiter: asyncio.Future[tuple[bytes, int]] | None = None
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        if self.state != COUNTING:
            super().data_received(data)
            return
        self.pending += data
        while (end := frame_end(self.pending)) is not None:
            frame, self.pending = self.pending[:end], self.pending[end:]
            body = frame[4:] if frame[1] & 0x7F == 126 else frame[2:]
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result((body, now))


async def probe(port: int, pid: int) -> tuple[Probe, str]:
    """A connection to ``port`` and the cid its server gave it."""
    loop = asyncio.get_running_loop()
    gen = LoadGen(port, pid)
    _, conn = await loop.create_connection(lambda: Probe(gen, port), "127.0.0.1", port)
    await asyncio.wait_for(conn.ready, 30)
    conn.waiter = loop.create_future()
    assert conn.transport is not None
    conn.transport.write(mask_frame(b'["whoami",null,null]'))
    body, _ = await asyncio.wait_for(conn.waiter, 10)
    kind, cid, _ = json.loads(body)
    assert kind == "me", body
    return conn, cid


async def latency(setup: Setup, samples: int, runs: int) -> dict[str, list[list[float]]]:
    """p50/p99/max (ms) of request to receipt: to a user on the node the request reaches
    ("same node") and to a user on the next node ("across nodes"), alternated request by
    request. One request is in flight at a time."""
    a, b = setup.nodes[0], setup.nodes[1]
    requester, _ = await probe(a.port, a.pid)
    same, same_cid = await probe(a.port, a.pid)
    other, other_cid = await probe(b.port, b.pid)
    loop = asyncio.get_running_loop()
    out: dict[str, list[list[float]]] = {"same node": [], "across nodes": []}
    assert requester.transport is not None
    for _ in range(runs):
        times: dict[str, list[int]] = {"same node": [], "across nodes": []}
        for i in range(samples + 50):  # the first 50 warm up
            pairs = [("same node", same, same_cid), ("across nodes", other, other_cid)]
            for label, target, cid in pairs if i % 2 else pairs[::-1]:
                request = mask_frame(json.dumps(["relay", {"to": cid, "n": i}, None]).encode())
                target.waiter = loop.create_future()
                start = time.perf_counter_ns()
                requester.transport.write(request)
                body, at = await asyncio.wait_for(target.waiter, 10)
                if json.loads(body)[1] != i:
                    raise RuntimeError(f"unexpected delivery {body!r}")
                if i >= 50:
                    times[label].append(at - start)
        for label, values in times.items():
            values.sort()
            quantiles = [values[len(values) // 2], values[int(0.99 * (len(values) - 1))]]
            out[label].append([q / 1e6 for q in quantiles] + [values[-1] / 1e6])
    for conn in (requester, same, other):
        assert conn.transport is not None
        conn.transport.close()
    for label, per_run in out.items():
        p50, p99, pmax = (statistics.median(r[i] for r in per_run) for i in range(3))
        say(f"  send(cid) {label:12}: p50 {p50:.3f} ms p99 {p99:.3f} ms max {pmax:.3f} ms")
    return out


# ---- part 3: wse-fast serve, one process and two workers -----------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Serve:
    """``wse-fast serve wse_cluster_app:cluster_app`` with ``workers`` workers; one process is
    pinned to the server core, two workers one to each core."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.port = free_port()
        self.pids: list[int] = []
        self.nats_pid: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return "1 process" if self.workers == 1 else f"{self.workers} workers + NATS"

    async def start(self) -> None:
        serve = str(Path(sys.executable).parent / "wse-fast")
        command = [serve, "serve", "wse_cluster_app:cluster_app", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--shutdown-timeout", "5"]
        if self.workers == 1:
            command = ["taskset", "-c", str(SERVER_CORE), *command]
        else:
            command += ["--workers", str(self.workers)]
        self.proc = await asyncio.create_subprocess_exec(
            *command, cwd=PEERS_DIR, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert self.proc.stderr is not None
        while line := (await self.proc.stderr.readline()).decode():
            self.log.append(line)
            if found := re.search(r"started nats-server \(pid (\d+)\)", line):
                self.nats_pid = int(found[1])
            if self.workers == 1 and "serving " in line:
                self.pids = [self.proc.pid]
                break
            if found := re.search(r"with \d+ workers \(pids ([\d, ]+)\)", line):
                self.pids = [int(p) for p in found[1].split(",")]
                break
        else:
            raise RuntimeError(f"wse-fast serve did not start: {''.join(self.log)}")
        self._reader = asyncio.ensure_future(self._drain())
        if self.workers > 1:
            for core, pid in enumerate(self.pids):
                pin(pid, {core % len(BOTH_CORES)})

    async def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := (await self.proc.stderr.readline()).decode():
            self.log.append(line)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader


async def paced(serves: list[Serve], conns: int, size: int, runs: int) -> dict[str, Any]:
    """Paced fan-out from one connection's server to ``conns`` connections on the shared
    port, one process against the workers, alternated run by run."""
    fans = []
    for serve in serves:
        fan = Fan([serve.port], serve.pids, serve.nats_pid)
        before = [open_files(pid) for pid in serve.pids]
        await fan.connect(conns)
        split = [open_files(pid) - b for pid, b in zip(serve.pids, before, strict=True)]
        fans.append((serve, fan, split))
    os.sched_setaffinity(0, {LOADGEN_CORE})
    count = await fans[0][1].calibrate("paced", size)
    results: dict[str, list[Run]] = {serve.name: [] for serve in serves}
    loadgen_cpu: dict[str, list[float]] = {serve.name: [] for serve in serves}
    worker_busy: dict[str, list[list[float]]] = {serve.name: [] for serve in serves}
    for _ in range(runs):
        for serve, fan, _ in fans:
            os.sched_setaffinity(0, {LOADGEN_CORE} if serve.workers == 1 else BOTH_CORES)
            own0 = cpu_seconds(os.getpid())
            each0 = [cpu_seconds(pid) for pid in serve.pids]
            run = await fan.fanout("paced", count, size)
            loadgen_cpu[serve.name].append((cpu_seconds(os.getpid()) - own0) / run.wall)
            each = [cpu_seconds(pid) - c for pid, c in zip(serve.pids, each0, strict=True)]
            worker_busy[serve.name].append([c / run.wall for c in each])
            results[serve.name].append(run)
    os.sched_setaffinity(0, {LOADGEN_CORE})
    out = {}
    for serve, fan, split in fans:
        rs = results[serve.name]
        row: dict[str, Any] = {
            "setup": serve.name,
            "conns": conns,
            "split": split,
            "count": count,
            "per_second": median(rs, "per_second"),
            "per_cpu_second": median(rs, "per_cpu_second"),
            "per_cpu_second_with_nats": median(rs, "per_cpu_second_with_nats"),
            "server_cores_busy": statistics.median(r.cpu / r.wall for r in rs),
            "each_server_busy": [
                statistics.median(b[i] for b in worker_busy[serve.name])
                for i in range(len(serve.pids))
            ],
            "nats_core_share": statistics.median(r.nats_cpu / r.wall for r in rs),
            "loadgen_core_share": statistics.median(loadgen_cpu[serve.name]),
        }
        out[serve.name] = row
        fan.close()
        say(
            f"  paced {serve.name:18} {conns} conns (per worker {split}): "
            f"{row['per_second']:>10,.0f} /s wall, {row['per_cpu_second']:>10,.0f} /CPU-s; "
            f"servers {' + '.join(f'{b:.2f}' for b in row['each_server_busy'])} cores, nats {row['nats_core_share']:.2f}, "
            f"load generator {row['loadgen_core_share']:.2f}"
        )
    return out


async def hold(serve: Serve, procs: int, per_proc: int) -> dict[str, Any]:
    """Connections held by ``serve`` from ``procs`` load-generator processes (each from its
    own 127.0.0.x address, up to ``per_proc`` connections or until the server refuses)."""
    start = time.perf_counter()
    cpu0 = sum(cpu_seconds(pid) for pid in serve.pids)
    nats0 = cpu_seconds(serve.nats_pid) if serve.nats_pid is not None else 0.0
    gens = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--hold",
            str(serve.port),
            f"127.0.0.{2 + i}",
            str(per_proc),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for i in range(procs)
    ]
    reports = []
    for gen in gens:
        assert gen.stdout is not None
        line = await gen.stdout.readline()
        reports.append(json.loads(line))
    wall = time.perf_counter() - start
    cpu = sum(cpu_seconds(pid) for pid in serve.pids) - cpu0
    nats = (cpu_seconds(serve.nats_pid) if serve.nats_pid is not None else 0.0) - nats0
    files = [open_files(pid) for pid in serve.pids]
    limits = [_nofile(pid) for pid in serve.pids]
    held = sum(r["held"] for r in reports)
    failures: collections.Counter[str] = collections.Counter()
    for r in reports:
        failures.update(r["failures"])
    lost = sum(r["lost"] for r in reports)
    for gen in gens:
        assert gen.stdin is not None
        gen.stdin.close()
        await gen.wait()
    row = {
        "setup": serve.name,
        "held": held - lost,
        "attempted": sum(r["attempted"] for r in reports),
        "failures": dict(failures),
        "lost_after_accept": lost,
        "server_open_files": files,
        "server_file_limits": limits,
        "loadgen_file_limits": [r["nofile"] for r in reports],
        "wall": wall,
        "connects_per_second": held / wall,
        "connects_per_cpu_second": held / cpu,
        "server_cores_busy": cpu / wall,
        "nats_core_share": nats / wall,
        "loadgen_core_share": sum(r["cpu"] for r in reports) / wall,
    }
    say(
        f"  held {serve.name:18}: {held - lost:,} connections ({held / wall:,.0f}/s wall, "
        f"{held / cpu:,.0f} per server CPU-s; cores busy: servers {cpu / wall:.2f}, "
        f"nats-server {nats / wall:.2f}, load generators {row['loadgen_core_share']:.2f}); "
        f"server open files {files} of {limits}; "
        f"failures {dict(failures)}"
    )
    return row


def _nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise RuntimeError("no Max open files")


async def hold_worker(port: int, address: str, target: int) -> None:
    """One load-generator process of :func:`hold`: opens up to ``target`` authenticated
    connections from ``address``, stops after 200 failures, prints a JSON report and keeps
    the connections until its standard input closes."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    gen = LoadGen(port, 0)
    held: list[Receiver] = []
    failures: collections.Counter[str] = collections.Counter()
    attempted = 0

    async def one() -> None:
        sock = socket.socket()
        try:
            # The port is chosen at connect() for the whole 4-tuple: a bind() to port 0
            # would search the kernel's bind table for a port free on every destination,
            # which grows with each connection and made this process the bottleneck.
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((address, 0))
            sock.setblocking(False)
            async with asyncio.timeout(10):
                await loop.sock_connect(sock, ("127.0.0.1", port))
                _, conn = await loop.create_connection(lambda: Receiver(gen, port), sock=sock)
        except TimeoutError:
            sock.close()
            failures["no TCP connection within 10 s"] += 1
            return
        except OSError as exc:
            sock.close()
            failures[str(exc)[:80]] += 1
            return
        # waited for, not cancelled: the receiver completes its future itself
        await asyncio.wait([conn.ready], timeout=10)
        if not conn.ready.done():
            failures["no welcome within 10 s"] += 1
            conn.ready.cancel()  # what the receiver learns later is of no interest
            assert conn.transport is not None
            conn.transport.close()
        elif conn.ready.exception() is not None:
            failures[str(conn.ready.exception())[:80]] += 1
        else:
            held.append(conn)

    async def worker() -> None:
        nonlocal attempted
        while attempted < target and sum(failures.values()) < 200:
            attempted += 1
            await one()

    await asyncio.gather(*(worker() for _ in range(64)))
    lost = sum(1 for r in held if r.transport is None or r.transport.is_closing())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = {
        "cpu": usage.ru_utime + usage.ru_stime,
        "held": len(held),
        "lost": lost,
        "attempted": attempted,
        "failures": dict(failures),
        "nofile": hard,
    }
    print(json.dumps(report), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    gen.close()


# ---- the report ----------------------------------------------------------------------------


def write_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    RESULTS.mkdir(exist_ok=True)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} shared cores (Linux "
        f"{platform.release()}), Python {platform.python_version()}, "
        f"`{' '.join(['python benches/cluster.py', *sys.argv[1:]])}`. Median of {args.runs} runs, "
        "configurations alternated run by run; deliveries counted by the receivers. Nodes "
        "and nats-server pinned to core 0, load generator to core 1, except for 2 workers "
        "(one per core; nats-server and the load generator unpinned).",
    ]
    if "broadcast" in results:
        rows = results["broadcast"]
        base = {r["mode"]: r["per_cpu_second"] for r in rows if r["nodes"] == 1}
        lines += [
            "",
            f"### Broadcast through the cluster ({args.conns:,} connections, {args.size} B)",
            "",
            "| setup | mode | deliveries per server CPU-second (nodes) | vs one node | "
            "counting nats-server too | vs one node | deliveries per second (wall) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            lines.append(
                f"| {r['setup']} | {r['mode']} | {r['per_cpu_second']:,.0f} | "
                f"{r['per_cpu_second'] / base[r['mode']]:.0%} | "
                f"{r['per_cpu_second_with_nats']:,.0f} | "
                f"{r['per_cpu_second_with_nats'] / base[r['mode']]:.0%} | "
                f"{r['per_second']:,.0f} |"
            )
    if "latency" in results:
        lines += [
            "",
            "### Send-to-user latency (request to node A, `send(cid)`, receipt; 2 nodes)",
            "",
            "| user on | p50 | p99 | max |",
            "| --- | ---: | ---: | ---: |",
        ]
        for label, (p50, p99, pmax) in results["latency"].items():
            lines.append(f"| {label} | {p50:.3f} ms | {p99:.3f} ms | {pmax:.3f} ms |")
    if "paced" in results:
        lines += [
            "",
            f"### Paced fan-out, `wse-fast serve`: 2 workers against 1 ({args.conns:,} connections, {args.size} B)",
            "",
            "| setup | connections per worker | deliveries per second (wall) | per server CPU-second | "
            "server cores busy | nats-server core share | load generator core share |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in results["paced"].values():
            lines.append(
                f"| {r['setup']} | {' + '.join(map(str, r['split']))} | {r['per_second']:,.0f} | "
                f"{r['per_cpu_second']:,.0f} | {' + '.join(f'{b:.2f}' for b in r['each_server_busy'])} | "
                f"{r['nats_core_share']:.2f} | {r['loadgen_core_share']:.2f} |"
            )
    if "hold" in results:
        lines += [
            "",
            f"### Connections held, `wse-fast serve` ({args.hold_procs} load-generator processes)",
            "",
            "Each load-generator process (its file limit raised to the hard limit) connects "
            f"from its own 127.0.0.x address, up to {args.hold_per_proc:,} connections or 200 "
            "failures. A server at its file limit (open files = limit) still completes TCP "
            "handshakes in the kernel; libuv accepts and closes what it cannot keep, which the "
            "load generator sees as 'closed before the welcome'.",
            "",
            "| setup | held | server open files (limit) | connects per second | per server CPU-second | "
            "cores busy: servers, nats-server, load generators | why it stopped |",
            "| --- | ---: | --- | ---: | ---: | --- | --- |",
        ]
        for r in results["hold"]:
            files = ", ".join(
                f"{f:,} ({lim:,})"
                for f, lim in zip(r["server_open_files"], r["server_file_limits"], strict=True)
            )
            why = "; ".join(f"{n} x {reason}" for reason, n in r["failures"].items()) or (
                "every load generator reached its quota"
            )
            lines.append(
                f"| {r['setup']} | {r['held']:,} | {files} | {r['connects_per_second']:,.0f} | "
                f"{r['connects_per_cpu_second']:,.0f} | {r['server_cores_busy']:.2f}, "
                f"{r['nats_core_share']:.2f}, {r['loadgen_core_share']:.2f} | {why} |"
            )
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    plot(results, RESULTS / f"{args.name}.png")
    say(f"wrote {RESULTS / args.name}.md, .json and .png")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in ("broadcast", "latency", "paced", "hold") if p in results]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "broadcast":
            rows = results["broadcast"]
            setups = list(dict.fromkeys(r["setup"] for r in rows))
            for j, mode in enumerate(("burst", "paced")):
                base = next(
                    r["per_cpu_second"] for r in rows if r["mode"] == mode and r["nodes"] == 1
                )
                values = [
                    next(r["per_cpu_second"] for r in rows if (r["setup"], r["mode"]) == (s, mode))
                    / base
                    for s in setups
                ]
                xs = [i + 0.4 * j for i in range(len(setups))]
                ax.bar(xs, [v * 100 for v in values], width=0.4, label=mode)
            ax.axhline(80, color="grey", linestyle="--", linewidth=1)
            ax.set_xticks([i + 0.2 for i in range(len(setups))], setups, fontsize=7)
            ax.set_ylabel("% of one node's deliveries per CPU-s", fontsize=8)
            ax.set_title("broadcast through the cluster", fontsize=9)
            ax.legend(fontsize=7)
        elif panel == "latency":
            for j, (label, quantiles) in enumerate(results["latency"].items()):
                ax.bar([i + 0.4 * j for i in range(3)], quantiles, width=0.4, label=label)
            ax.set_xticks([0.2, 1.2, 2.2], ["p50", "p99", "max"], fontsize=8)
            ax.set_ylabel("request to receipt (ms)", fontsize=8)
            ax.set_title("send(cid) latency", fontsize=9)
            ax.legend(fontsize=7)
        elif panel == "paced":
            rows = list(results["paced"].values())
            ax.bar([r["setup"] for r in rows], [r["per_second"] for r in rows])
            ax.set_ylabel("deliveries per wall-second", fontsize=8)
            ax.set_title("paced fan-out, wse-fast serve", fontsize=9)
        else:
            rows = results["hold"]
            ax.bar([r["setup"] for r in rows], [r["held"] for r in rows])
            ax.axhline(40_000, color="grey", linestyle="--", linewidth=1)
            ax.set_ylabel("connections held", fontsize=8)
            ax.set_title("connections held (goal: 2 x 20 000 files)", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ---- main ----------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    global RESULTS
    if args.out:
        RESULTS = Path(args.out)
    os.sched_setaffinity(0, {LOADGEN_CORE})
    results: dict[str, Any] = {}
    if "broadcast" in args.parts or "latency" in args.parts:
        setups = [await start_setup(n) for n in [1, *args.nodes]]
        try:
            if "broadcast" in args.parts:
                say("broadcast through the cluster:")
                rows = await broadcast(setups, args.conns, args.size, args.runs)
                nodes = {s.name: len(s.nodes) for s in setups}
                results["broadcast"] = [
                    {
                        "setup": r.setup,
                        "nodes": nodes[r.setup],
                        "mode": r.mode,
                        "conns": r.conns,
                        "count": r.count,
                        "per_cpu_second": median(r.runs, "per_cpu_second"),
                        "per_cpu_second_with_nats": median(r.runs, "per_cpu_second_with_nats"),
                        "per_second": median(r.runs, "per_second"),
                        "nats_cpu_share": statistics.median(
                            x.nats_cpu / (x.cpu + x.nats_cpu) for x in r.runs
                        ),
                    }
                    for r in rows
                ]
            if "latency" in args.parts:
                say("send-to-user latency:")
                two = next(s for s in setups if len(s.nodes) == 2)
                lat = await latency(two, args.samples, args.runs)
                results["latency"] = {
                    label: [statistics.median(r[i] for r in runs) for i in range(3)]
                    for label, runs in lat.items()
                }
        finally:
            for setup in setups:
                await stop_setup(setup)
    if "paced" in args.parts or "hold" in args.parts:
        serves = [Serve(1), Serve(2)]
        try:
            for serve in serves:
                await serve.start()
            if "paced" in args.parts:
                say("wse-fast serve, paced fan-out:")
                results["paced"] = await paced(serves, args.conns, args.size, args.runs)
            if "hold" in args.parts:
                say("wse-fast serve, connections held:")
                results["hold"] = []
                for serve in serves:
                    results["hold"].append(await hold(serve, args.hold_procs, args.hold_per_proc))
                    await serve.stop()
        finally:
            for serve in serves:
                await serve.stop()
    write_report(results, args)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--hold":
        uvloop.run(hold_worker(int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
        sys.exit()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conns", type=int, default=1000, help="parts 1 and 3b")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, nargs="*", default=[2, 3], help="cluster sizes")
    parser.add_argument("--samples", type=int, default=1000, help="latency samples per run")
    parser.add_argument("--hold-procs", type=int, default=4)
    parser.add_argument("--hold-per-proc", type=int, default=12_000)
    parser.add_argument("--out", help="where to write the results (default: benches/results)")
    parser.add_argument("--name", default="cluster", help="the results' file name")
    parser.add_argument(
        "--parts",
        nargs="*",
        default=["broadcast", "latency", "paced", "hold"],
        help="broadcast latency paced hold",
    )
    uvloop.run(main(parser.parse_args()))
