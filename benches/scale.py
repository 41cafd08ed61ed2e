"""Scale on one machine: 100 000 authenticated connections through ``wse-fast serve --workers 6``.

    python benches/scale.py --out benches/results/scale       # make bench-scale
    python benches/scale.py --conns 2000 --generators 2       # a quick look

``wse-fast serve wse_scale_app:scale_app --workers W`` (benches/peers/wse_scale_app.py: the
defaults, keepalive pings on, each connection its own user; the command starts its own
nats-server for the workers) holds ``--conns`` connections opened by ``--generators``
processes of the compiled load generator (benches/loadgen_go, ``-hold``), each connection from
one of ``--addresses`` loopback addresses 127.3.x.y bound before the connect. Every process
here, the server's and the load generator's, may hold 20 000 files (RLIMIT_NOFILE, set here
for all of them), so a generator holds at most ~19 000 connections and a worker a W-th of all.
The server admits ``max_unauthenticated_per_ip`` (256) strangers per address: with 100 000
connections over 500 addresses, 200 per address, that limit cannot refuse anyone.

Measured, in this order:

- the ramp: from the start of the generators until every one has connected and authenticated
  (welcomed) all its connections, ``--parallel`` handshakes in flight per generator;
- memory of every server process (the supervisor, the workers, nats-server), as PSS from
  /proc/PID/smaps_rollup (a page shared by forked processes, or by several processes mapping
  one file, is split between them: it counts once in the sum) and as a sum of RSS;
- idle CPU: the server processes' CPU time (the scheduler's, every thread) over ``--idle`` s,
  as a percentage of one core;
- ``--broadcasts`` times, one broadcast: a connection of the first generator sends
  ``["broadcast",null,null]``, the worker that receives it broadcasts a tick carrying its
  CLOCK_MONOTONIC time (through NATS to the other workers), and each generator times every
  receipt on the same clock: the last receipt of all is the figure.

Then the floor: the same generators against a bare server (``loadgen_go -floor``, W Go
processes sharing the port with SO_REUSEPORT as the workers do: gorilla's upgrade, the hi
answered by the welcome, and a broadcast that writes one prebuilt frame to every connection,
one write system call each, from one goroutine per CPU), the broadcast started by a line on
their stdin carrying the time taken just before it (so the floor's time includes waking W
processes, where wse-fast's starts in the worker that got the command). The floor is what the
kernel and the load generator cost for a broadcast to everyone with next to no server work;
the goal is wse-fast's last receipt within 2x it. It is not a strict lower bound: a server that
hands the kernel its writes in batches (wse-fast's io_uring path) spends less system time per
connection than one system call each, and may finish first. So the CPU seconds the server's
processes and the load generators spent over each broadcast are given too: with both CPUs busy
throughout, the machine is the limit, not either program.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from wire import cpu_seconds  # noqa: E402

LOADGEN = HERE / ".bin" / "loadgen_go"
FILES_PER_PROCESS = 20_000
BROADCAST = '["broadcast",null,null]'
REPORT_TIMEOUT = 60.0  # seconds a generator waits for every receipt of one broadcast
#: Lines of the workers' log that say the cluster struggled under the ramp, by what they mean:
#: the registry queue dropped and the whole state re-synced, a live node taken for dead (its
#: key expired), a node's entries swept by another, a heartbeat late or failed.
CLUSTER_EVENTS = {
    "re-syncs": "their changes are dropped",
    "taken for dead": "was taken for dead",
    "sweeps": "swept the entries of",
    "unhealthy": ": unhealthy",
}


def source_addresses(count: int) -> list[str]:
    """``count`` loopback addresses (all of 127.0.0.0/8 routes to lo)."""
    return [f"127.3.{k // 250}.{k % 250 + 1}" for k in range(count)]


def descendants(pid: int) -> list[int]:
    """``pid``'s children, their children and so on (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            # the command name (field 2) may hold spaces: the parent's pid follows its ")"
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def memory(pid: int) -> tuple[int, int]:
    """PSS and RSS of ``pid`` in bytes, from /proc/PID/smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) * 1024
    return fields["Pss"], fields["Rss"]


def command_name(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


@dataclass
class Broadcast:
    """One broadcast to every connection: milliseconds from it to the receipts."""

    receipts: int
    lost: int
    first_ms: float
    last_ms: float
    # every generator's receipt delays at 0, 1, ... 100 %: pooled, an approximate distribution
    quantiles_ms: list[float]
    # CPU seconds (user, system) from the trigger until every generator had reported: of the
    # server's processes and of the load generators' (which share the machine's CPUs)
    server_cpu: tuple[float, float]
    generator_cpu: tuple[float, float]
    window_s: float  # from that trigger until the reports: the CPU seconds' wall time
    machine_busy: float  # CPU seconds of every process on the machine (/proc/stat) over it


@dataclass
class Outcome:
    server: str
    conns: int
    connected: int = 0
    failed: int = 0
    lost: int = 0  # welcomed, then ended before the ramp was over
    first_error: str = ""
    ramp_s: float = 0.0
    pss: dict[str, int] = field(default_factory=dict)  # bytes, by role
    rss: dict[str, int] = field(default_factory=dict)
    idle_cpu_percent: float = 0.0
    broadcasts: list[Broadcast] = field(default_factory=list)
    generator_rss: int = 0  # the load generators' own memory (not the server's)
    # what the cluster's log said over the run (wse-fast only): see CLUSTER_EVENTS
    cluster_events: dict[str, int] = field(default_factory=dict)

    @property
    def median(self) -> Broadcast:
        """The broadcast whose last receipt is the median's."""
        return sorted(self.broadcasts, key=lambda b: b.last_ms)[len(self.broadcasts) // 2]

    @property
    def last_ms(self) -> float:
        return self.median.last_ms


class Generator:
    """One ``loadgen_go -hold`` process, driven through its stdin, a JSON line per answer."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, port: int, conns: int, sources: list[str], parallel: int) -> Generator:
        proc = await asyncio.create_subprocess_exec(
            str(LOADGEN),
            *("-hold", "-port", str(port), "-conns", str(conns), "-parallel", str(parallel)),
            *("-sources", ",".join(sources)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator {self.proc.pid} ended: {await self.proc.wait()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def tell(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n".encode())

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


def spread(conns: int, generators: int) -> list[int]:
    return [conns // generators + (g < conns % generators) for g in range(generators)]


async def hold(outcome: Outcome, port: int, args: argparse.Namespace) -> list[Generator]:
    """Starts the generators; returns once every one has connected all it could."""
    addresses = source_addresses(args.addresses)
    counts = spread(args.conns, args.generators)
    start = time.perf_counter()
    generators = [
        await Generator.start(port, count, addresses[g :: args.generators], args.parallel)
        for g, count in enumerate(counts)
    ]
    for generator in generators:
        opened = await generator.answer()
        outcome.connected += opened["connected"]
        outcome.failed += opened["failed"]
        outcome.lost += opened["lost"]
        outcome.first_error = outcome.first_error or opened["first_error"]
    outcome.ramp_s = time.perf_counter() - start
    print(
        f"  {outcome.server}: {outcome.connected:,} connected, {outcome.failed:,} failed, "
        f"{outcome.lost:,} lost in {outcome.ramp_s:.1f} s {outcome.first_error}",
        flush=True,
    )
    return generators


def machine_busy() -> float:
    """CPU seconds every CPU of the machine has spent busy so far (not idle, not waiting for
    a disk): this benchmark's processes and any other's on a shared machine."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = ticks[3], ticks[4]
    return (sum(ticks[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds of ``pids`` so far, every thread (/proc/PID/stat)."""
    user = system = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user, system = user + int(fields[11]), system + int(fields[12])  # utime, stime
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


async def broadcast_once(
    generators: list[Generator], server_pids: list[int], trigger: Callable[[], None]
) -> Broadcast:
    """Arms every generator, fires ``trigger()``, and gathers the receipts."""
    for generator in generators:
        generator.tell("arm")
    for generator in generators:
        await generator.answer()
    generator_pids = [generator.proc.pid for generator in generators]
    server0, generators0 = cpu_times(server_pids), cpu_times(generator_pids)
    start, busy0 = time.perf_counter(), machine_busy()
    trigger()
    for generator in generators:
        generator.tell(f"report {REPORT_TIMEOUT}")
    reports = [await generator.answer() for generator in generators]
    server1, generators1 = cpu_times(server_pids), cpu_times(generator_pids)
    window, busy1 = time.perf_counter() - start, machine_busy()
    return Broadcast(
        window_s=window,
        machine_busy=busy1 - busy0,
        server_cpu=(server1[0] - server0[0], server1[1] - server0[1]),
        generator_cpu=(generators1[0] - generators0[0], generators1[1] - generators0[1]),
        receipts=sum(r["receipts"] for r in reports),
        lost=sum(r["lost"] for r in reports),
        first_ms=min(r["first_ms"] for r in reports if r["receipts"]),
        last_ms=max(r["last_ms"] for r in reports),
        quantiles_ms=sorted(q for r in reports for q in r["quantiles_ms"]),
    )


async def measure(
    outcome: Outcome,
    server_pids: dict[str, list[int]],
    generators: list[Generator],
    trigger: Callable[[], None],
    args: argparse.Namespace,
) -> None:
    """Memory, idle CPU and the broadcasts, once the connections are all held."""
    await asyncio.sleep(args.settle)
    for role, pids in server_pids.items():
        outcome.pss[role] = outcome.rss[role] = 0
        for pid in pids:
            pss, rss = memory(pid)
            outcome.pss[role] += pss
            outcome.rss[role] += rss
    outcome.generator_rss = sum(memory(g.proc.pid)[1] for g in generators)
    everyone = [pid for pids in server_pids.values() for pid in pids]
    cpu0, t0 = sum(map(cpu_seconds, everyone)), time.perf_counter()
    await asyncio.sleep(args.idle)
    cpu1, t1 = sum(map(cpu_seconds, everyone)), time.perf_counter()
    outcome.idle_cpu_percent = 100 * (cpu1 - cpu0) / (t1 - t0)
    for _ in range(args.broadcasts):
        b = await broadcast_once(generators, everyone, trigger)
        outcome.broadcasts.append(b)
        print(
            f"  {outcome.server}: broadcast to {b.receipts:,} ({b.lost} lost), first receipt "
            f"{b.first_ms:.0f} ms, last {b.last_ms:.0f} ms; CPU s (user, system): server "
            f"{b.server_cpu[0]:.2f}, {b.server_cpu[1]:.2f}, load generators "
            f"{b.generator_cpu[0]:.2f}, {b.generator_cpu[1]:.2f}",
            flush=True,
        )
        await asyncio.sleep(1.0)
    print(
        f"  {outcome.server}: PSS {sum(outcome.pss.values()) / 1e6:.0f} MB "
        f"{ {k: round(v / 1e6) for k, v in outcome.pss.items()} }, "
        f"RSS {sum(outcome.rss.values()) / 1e6:.0f} MB, idle CPU {outcome.idle_cpu_percent:.1f} %",
        flush=True,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def wse_fast(args: argparse.Namespace) -> Outcome:
    outcome = Outcome(f"wse-fast serve --workers {args.workers}", args.conns)
    port = free_port()
    serve = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wse_fast",
        "serve",
        "wse_scale_app:scale_app",
        *("--workers", str(args.workers), "--host", "127.0.0.1", "--port", str(port)),
        cwd=HERE / "peers",
        stderr=asyncio.subprocess.PIPE,
    )
    assert serve.stderr is not None
    log: list[str] = []
    while "workers (pids" not in (log[-1] if log else ""):
        line = await asyncio.wait_for(serve.stderr.readline(), 120)
        if not line:
            raise RuntimeError("wse-fast serve ended:\n" + "".join(log))
        log.append(line.decode())

    async def drain_log() -> None:  # the pipe must not fill; the log is shown if it fails
        assert serve.stderr is not None
        async for line in serve.stderr:
            log.append(line.decode())

    draining = asyncio.ensure_future(drain_log())
    children = descendants(serve.pid)
    server_pids = {
        "workers": [pid for pid in children if command_name(pid) != "nats-server"],
        "supervisor": [serve.pid],
        "nats-server": [pid for pid in children if command_name(pid) == "nats-server"],
    }
    assert len(server_pids["workers"]) == args.workers, (server_pids, log)
    assert len(server_pids["nats-server"]) == 1, (server_pids, log)
    generators = await hold(outcome, port, args)
    try:
        await measure(
            outcome,
            server_pids,
            generators,
            lambda: generators[0].tell(f"trigger {BROADCAST}"),
            args,
        )
    finally:
        for generator in generators:
            await generator.stop()
        serve.send_signal(signal.SIGTERM)
        if await serve.wait() != 0:
            print("".join(log[-20:]), file=sys.stderr)
        await draining
        outcome.cluster_events = {
            event: sum(phrase in line for line in log) for event, phrase in CLUSTER_EVENTS.items()
        }
    return outcome


async def floor(args: argparse.Namespace) -> Outcome:
    outcome = Outcome(f"floor: bare Go server, {args.workers} processes", args.conns)
    port = free_port()
    servers = []
    for _ in range(args.workers):
        proc = await asyncio.create_subprocess_exec(
            str(LOADGEN),
            "-floor",
            "-port",
            str(port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).split() == [b"READY", str(port).encode()]
        servers.append(proc)

    def trigger() -> None:
        line = f"broadcast {time.monotonic_ns():019d}\n".encode()
        for proc in servers:
            assert proc.stdin is not None
            proc.stdin.write(line)

    generators = await hold(outcome, port, args)
    try:
        await measure(outcome, {"servers": [p.pid for p in servers]}, generators, trigger, args)
    finally:
        for generator in generators:
            await generator.stop()
        for proc in servers:
            proc.kill()
            await proc.wait()
    return outcome


def mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def cpu(times: tuple[float, float]) -> str:
    return f"{times[0]:.2f} + {times[1]:.2f}"


def busy(b: Broadcast) -> float:
    """CPU seconds of the server and the load generators per second of the broadcast."""
    return (sum(b.server_cpu) + sum(b.generator_cpu)) / b.window_s


def write_report(
    outcomes: list[Outcome],
    out: Path,
    command: str,
    args: argparse.Namespace,
    load_average: str,
) -> None:
    served, bare = outcomes
    pss, rss = sum(served.pss.values()), sum(served.rss.values())
    ratio = served.last_ms / bare.last_ms
    lines = [
        f"# Scale: {served.conns:,} authenticated connections on one machine",
        "",
        f"`{command}`",
        "",
        f"{os.cpu_count()} CPUs (load average {load_average} when the run began); every process holds at most {FILES_PER_PROCESS:,} files; the "
        f"clients are {args.generators} processes of benches/loadgen_go -hold from "
        f"{args.addresses} addresses 127.3.x.y, {args.parallel} handshakes in flight each. Broadcast times are the median of "
        f"{len(served.broadcasts)} broadcasts, each to every connection, from the broadcast "
        "to the last receipt (CLOCK_MONOTONIC on both sides); the CPU rows are that broadcast's.",
        "",
        f"| | {served.server} | {bare.server} |",
        "| --- | ---: | ---: |",
        f"| connected (failed, lost during the ramp) "
        f"| {served.connected:,} ({served.failed:,}, {served.lost:,}) "
        f"| {bare.connected:,} ({bare.failed:,}, {bare.lost:,}) |",
        f"| time to connect and authenticate all | {served.ramp_s:.1f} s | {bare.ramp_s:.1f} s |",
        f"| memory, PSS of all server processes | **{mb(pss)}** | {mb(sum(bare.pss.values()))} |",
        "| ... of which | "
        + ", ".join(f"{role} {mb(v)}" for role, v in served.pss.items())
        + " | |",
        f"| memory, sum of RSS | {mb(rss)} | {mb(sum(bare.rss.values()))} |",
        f"| idle CPU of the server processes ({args.idle:g} s) | "
        f"{served.idle_cpu_percent:.1f} % of a core | {bare.idle_cpu_percent:.1f} % of a core |",
        f"| broadcast: first receipt | {statistics.median(b.first_ms for b in served.broadcasts):.0f} ms "
        f"| {statistics.median(b.first_ms for b in bare.broadcasts):.0f} ms |",
        f"| broadcast: last receipt | **{served.last_ms:.0f} ms** ({ratio:.2f}x the floor) "
        f"| {bare.last_ms:.0f} ms |",
        "| ... each broadcast's last receipt | "
        + ", ".join(f"{b.last_ms:.0f}" for b in served.broadcasts)
        + " ms | "
        + ", ".join(f"{b.last_ms:.0f}" for b in bare.broadcasts)
        + " ms |",
        "| receipts of each broadcast (lost connections) | "
        + ", ".join(f"{b.receipts:,} ({b.lost})" for b in served.broadcasts)
        + " | "
        + ", ".join(f"{b.receipts:,} ({b.lost})" for b in bare.broadcasts)
        + " |",
        "| CPU seconds over that broadcast, user + system: the server's processes "
        f"| {cpu(served.median.server_cpu)} | {cpu(bare.median.server_cpu)} |",
        "| ... the load generators' "
        f"| {cpu(served.median.generator_cpu)} | {cpu(bare.median.generator_cpu)} |",
        "| CPUs kept busy by both over that broadcast (of "
        f"{os.cpu_count()}) | {busy(served.median):.2f} | {busy(bare.median):.2f} |",
        "| ... by every process on the machine (others' included) "
        f"| {served.median.machine_busy / served.median.window_s:.2f} "
        f"| {bare.median.machine_busy / bare.median.window_s:.2f} |",
        f"| the load generators' own RSS | {mb(served.generator_rss)} | {mb(bare.generator_rss)} |",
        "| the cluster's log over the run: "
        + ", ".join(served.cluster_events)
        + " | "
        + ", ".join(str(n) for n in served.cluster_events.values())
        + " | |",
        "",
        f"Goals: at most 500 MB PSS in all: {mb(pss)} "
        f"({'met' if pss <= 500e6 else 'not met'}); the last receipt within 2x the floor: "
        f"{ratio:.2f}x ({'met' if ratio <= 2 else 'not met'}"
        + ("; the floor is no lower bound here: see the CPU rows" if ratio < 1 else "")
        + ").",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "command": command,
                "load_average": load_average,
                "outcomes": [asdict(o) for o in outcomes],
            },
            indent=1,
        )
    )
    plot(outcomes, out.with_suffix(".png"))
    print("\n".join(lines))


def plot(outcomes: list[Outcome], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served = outcomes[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    bottom = {"PSS": 0.0, "RSS": 0.0}
    for role in served.pss:
        values = [served.pss[role] / 1e6, served.rss[role] / 1e6]
        left.bar(["PSS", "RSS (sum)"], values, bottom=list(bottom.values()), label=role)
        bottom = {"PSS": bottom["PSS"] + values[0], "RSS": bottom["RSS"] + values[1]}
    left.axhline(500, color="black", linestyle=":", linewidth=1, label="goal: 500 MB PSS")
    left.set_ylabel("MB")
    left.set_title(f"{served.server}: memory, {served.connected:,} connections", fontsize=9)
    left.legend(fontsize=8)
    for outcome in outcomes:
        b = outcome.median  # its receipts, pooled from every generator's percentiles
        share = [i / (len(b.quantiles_ms) - 1) for i in range(len(b.quantiles_ms))]
        right.plot(b.quantiles_ms, share, label=f"{outcome.server}: last {b.last_ms:.0f} ms")
    right.set_xlabel("ms from the broadcast")
    right.set_ylabel("share of the connections that received it")
    right.set_title("one broadcast to every connection", fontsize=9)
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def main(args: argparse.Namespace) -> None:
    per_generator = max(spread(args.conns, args.generators))
    if per_generator > FILES_PER_PROCESS - 1000:
        raise SystemExit(f"{per_generator} connections per generator: use more --generators")
    if not LOADGEN.exists():
        raise SystemExit(f"{LOADGEN} is missing: make setup builds it")
    # every process started here inherits it, the server's workers and nats-server included
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = FILES_PER_PROCESS if hard == resource.RLIM_INFINITY else min(hard, FILES_PER_PROCESS)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    load_average = Path("/proc/loadavg").read_text().split()[0]  # a shared machine's load
    outcomes = [await wse_fast(args), await floor(args)]
    if args.out is not None:
        command = "python benches/scale.py " + " ".join(sys.argv[1:])
        write_report(outcomes, Path(args.out), command.strip(), args, load_average)


if __name__ == "__main__":
    import uvloop

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conns", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--generators", type=int, default=8, help="load generator processes")
    parser.add_argument("--addresses", type=int, default=500, help="source addresses 127.3.x.y")
    parser.add_argument("--parallel", type=int, default=32, help="handshakes in flight each")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the ramp")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measured")
    parser.add_argument("--broadcasts", type=int, default=3)
    parser.add_argument("--out", help="results, without suffix (.md, .json, .png)")
    uvloop.run(main(parser.parse_args()))
