"""``wse-fast bench URL``: load on any WSE server (a wse-fast one, JavaScript WSE, ...), and
what it answered.

It opens ``--conns`` connections with :class:`~wse_fast.WseClient` (each authenticated with
the identity of the other client commands, ``{i}`` in it replaced by the connection's number),
then runs one workload for ``--duration`` seconds after ``--warmup`` seconds:

- ``rpc``: every connection keeps ``--in-flight`` calls of ``--procedure`` going, each sent
  when the one before it was answered;
- ``listen``: every connection counts the messages of ``--type`` it receives (a broadcast the
  server makes, on its own or on someone's request).

The report counts what happened inside the window only: a call counts when it was sent after
the warm-up, and the window of ``rpc`` ends when the last such call is answered (the calls in
flight when ``--duration`` is over are waited for), so every counted call lies inside the time
the rates divide by. The load runs in this one process on one core: ``client_cpu`` says how
busy that core was, and a figure measured near 100% is this tool's limit, not the server's.
"""

from __future__ import annotations

import array
import asyncio
import dataclasses
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

import click

from ..errors import ConnectionNotReady, RpcDisconnected, WseError
from ..protocols import JsonProtocol, MsgpackProtocol, WireProtocol
from .client import as_json, client_options, client_ssl_context, json_value, printable, ws_url
from .common import STOP_SIGNALS, shown_server_url

if TYPE_CHECKING:  # imported where it runs: `wse-fast serve` loads this module too
    from ..client import WseClient

WORKLOADS = ("rpc", "listen")
PROTOCOLS: dict[str, type[JsonProtocol] | type[MsgpackProtocol]] = {
    "json": JsonProtocol,
    "msgpack": MsgpackProtocol,
}
#: What every benchmark server of this project and the reference's bench app answer: the
#: examples' ``add`` (``payload["a"] + payload["b"]``), and benches/peers' ``tick`` broadcast.
DEFAULT_PROCEDURE, DEFAULT_PAYLOAD, DEFAULT_TYPE = "add", '{"a": 1, "b": 2}', "tick"
#: Connections authenticating at once: thousands of simultaneous handshakes would overflow a
#: server's listen backlog and time out on its authentication limit, measuring neither.
CONNECTING_AT_ONCE = 100
IDENTITY_NUMBER = "{i}"


@dataclasses.dataclass
class Window:
    """Where the run is: warming up (neither flag), measuring, or over (the workers stop)."""

    measuring: bool = False
    over: bool = False


@dataclasses.dataclass
class Tally:
    """What a run counts; calls, latencies and messages only inside the window."""

    opened: int = 0
    failed: int = 0
    lost: int = 0  # connections closed by the other side (or the network) during the run
    calls: int = 0
    failed_calls: int = 0
    warmup_calls: int = 0  # sent before the window, answered or failed: not in the figures
    messages: int = 0
    latencies_ns: array.array[int] = dataclasses.field(default_factory=lambda: array.array("q"))
    errors: Counter[str] = dataclasses.field(default_factory=Counter)


@dataclasses.dataclass(frozen=True)
class Workload:
    """What each connection does: ``kind`` is one of WORKLOADS; ``procedure``, ``payload``
    and ``in_flight`` are rpc's, ``message_type`` is listen's."""

    kind: str
    procedure: str
    payload: Any
    in_flight: int
    message_type: str


class Run:
    """One run: the connections, the workload's tasks, the window and what it counted."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.window = Window()
        self.tally = Tally()
        self.clients: list[WseClient] = []

    async def open(
        self,
        make_client: Callable[[], WseClient],
        identities: list[str],
        meta: dict[str, Any] | None,
    ) -> None:
        """Connects every client, CONNECTING_AT_ONCE at a time."""
        gate = asyncio.Semaphore(CONNECTING_AT_ONCE)

        async def one(identity: str) -> None:
            client: WseClient = make_client()
            if self.workload.kind == "listen":
                client.channel.on(self.workload.message_type, self.on_message)
            async with gate:
                try:
                    await client.connect(identity, meta)
                except WseError as err:
                    self.tally.failed += 1
                    self.tally.errors[err.code] += 1
                    await client.close()
                    return
            self.tally.opened += 1
            client.when.closed(self.on_closed)
            self.clients.append(client)

        await asyncio.gather(*(one(identity) for identity in identities))

    def on_message(self, payload: Any) -> None:
        if self.window.measuring and not self.window.over:
            self.tally.messages += 1

    def on_closed(self, code: int, reason: str) -> None:
        if not self.window.over:
            self.tally.lost += 1

    async def caller(self, client: WseClient) -> None:
        """Calls the procedure until the window is over, one call at a time."""
        tally, window, workload = self.tally, self.window, self.workload
        procedure, payload = workload.procedure, workload.payload
        while not window.over:
            counted = window.measuring  # sent inside the window
            started = time.perf_counter_ns()
            try:
                await client.call(procedure, payload)
            except ConnectionNotReady:
                return  # the connection is gone (counted as lost): nothing was sent
            except WseError as err:
                if counted:
                    tally.failed_calls += 1
                    tally.errors[err.code] += 1
                else:
                    tally.warmup_calls += 1
                if isinstance(err, RpcDisconnected):
                    return
                continue
            if counted:
                tally.calls += 1
                tally.latencies_ns.append(time.perf_counter_ns() - started)
            else:
                tally.warmup_calls += 1

    async def measure(
        self, warmup: float, duration: float, stop: asyncio.Event
    ) -> tuple[float, float]:
        """Runs the workload: the seconds measured and the process's CPU seconds in them."""
        callers = [
            asyncio.ensure_future(self.caller(client))
            for client in self.clients
            for _ in range(self.workload.in_flight if self.workload.kind == "rpc" else 0)
        ]
        try:
            if warmup > 0:
                say(f"warming up for {warmup:g} s")
                await until(stop, warmup)
            say(f"measuring for {duration:g} s")
            started, cpu_started = time.perf_counter(), time.process_time()
            self.window.measuring = True
            await until(stop, duration)
            self.window.over = True
            await asyncio.gather(*callers)  # the calls in flight: counted when answered
            return time.perf_counter() - started, time.process_time() - cpu_started
        finally:
            self.window.over = True
            for task in callers:
                task.cancel()

    async def close(self) -> None:
        self.window.over = True
        await asyncio.gather(*(client.close() for client in self.clients))


async def until(stop: asyncio.Event, seconds: float) -> None:
    """Waits ``seconds``, or less when a stop signal comes."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass


def say(text: str) -> None:
    """Progress on stderr (the report is stdout's)."""
    click.echo(text, err=True)


def percentile(sorted_ns: list[int], fraction: float) -> float:
    """The nearest-rank percentile of sorted nanoseconds, in milliseconds."""
    rank = max(1, math.ceil(fraction * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1e6


def report(
    url: str,
    workload: Workload,
    protocol: WireProtocol,
    conns: int,
    warmup: float,
    seconds: float,
    cpu_seconds: float,
    tally: Tally,
) -> dict[str, Any]:
    """The run's figures, as ``--json`` prints them."""

    def per_second(count: int) -> float:
        return count / seconds if seconds > 0 else 0.0

    latency = None
    if tally.latencies_ns:
        ordered = sorted(tally.latencies_ns)
        latency = {
            "p50": percentile(ordered, 0.50),
            "p90": percentile(ordered, 0.90),
            "p99": percentile(ordered, 0.99),
            "max": ordered[-1] / 1e6,
        }
    rpc = workload.kind == "rpc"
    return {
        "url": shown_server_url(url),
        "workload": workload.kind,
        "protocol": protocol.name,
        "procedure": workload.procedure if rpc else None,
        "in_flight": workload.in_flight if rpc else None,
        "type": None if rpc else workload.message_type,
        "connections": {
            "asked": conns,
            "opened": tally.opened,
            "failed": tally.failed,
            "lost": tally.lost,
        },
        "warmup_seconds": warmup,
        "seconds": seconds,
        "calls": {
            "completed": tally.calls,
            "failed": tally.failed_calls,
            "in_warmup": tally.warmup_calls,
            "per_second": per_second(tally.calls),
        }
        if rpc
        else None,
        "latency_ms": latency,
        "messages": None
        if rpc
        else {"received": tally.messages, "per_second": per_second(tally.messages)},
        "errors": dict(tally.errors.most_common()),
        "client_cpu": cpu_seconds / seconds if seconds > 0 else 0.0,
    }


def table(figures: dict[str, Any]) -> str:
    """The report as a plain two-column table."""
    conns = figures["connections"]
    if figures["workload"] == "rpc":
        what = f"rpc {figures['procedure']}, {figures['in_flight']} in flight per connection"
    else:
        what = f"listen to {figures['type']}"
    rows = [
        ("server", printable(figures["url"])),
        ("workload", f"{printable(what)} ({figures['protocol']})"),
        ("window", f"{figures['seconds']:.2f} s after {figures['warmup_seconds']:g} s warm-up"),
        (
            "connections",
            f"{conns['opened']:,} opened, {conns['failed']:,} failed, {conns['lost']:,} lost",
        ),
    ]
    calls, latency, messages = figures["calls"], figures["latency_ms"], figures["messages"]
    if calls is not None:
        rows += [
            ("calls", f"{calls['completed']:,} completed, {calls['failed']:,} failed"),
            ("calls/s", f"{calls['per_second']:,.1f}"),
        ]
        if latency is not None:
            rows.append(
                (
                    "latency",
                    "  ".join(f"{k} {latency[k]:.3f} ms" for k in ("p50", "p90", "p99", "max")),
                )
            )
    if messages is not None:
        rows += [
            ("messages", f"{messages['received']:,} received"),
            ("messages/s", f"{messages['per_second']:,.1f}"),
        ]
    rows.append(("client CPU", f"{figures['client_cpu']:.0%} of one core"))
    for code, count in figures["errors"].items():
        rows.append(("error", f"{printable(code)}: {count:,}"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def failure(figures: dict[str, Any], max_failed_conns: int) -> str | None:
    """Why the run failed (exit status 1), or None."""
    conns = figures["connections"]
    if conns["opened"] == 0:
        return "no connection opened"
    if conns["failed"] > max_failed_conns:
        return (
            f"{conns['failed']} of {conns['asked']} connections failed "
            f"(more than --max-failed-conns {max_failed_conns})"
        )
    if figures["calls"] is not None and figures["calls"]["completed"] == 0:
        return "no call succeeded"
    if figures["messages"] is not None and figures["messages"]["received"] == 0:
        return f"no {printable(figures['type'])} message arrived"
    return None


@click.command(short_help="Put load on a WSE server: RPC calls or listening, and the figures.")
@click.argument("url", callback=ws_url)
@client_options
@click.option(
    "--workload",
    type=click.Choice(WORKLOADS),
    default="rpc",
    show_default=True,
    help="rpc: call --procedure; listen: count the --type messages the server sends.",
)
@click.option(
    "--conns",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Connections, each authenticated with the identity ({i} in it: the connection's "
    "number, 0 .. N-1, for distinct users).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds measured.",
)
@click.option(
    "--warmup",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds of load before the measuring starts (not in the figures).",
)
@click.option(
    "--procedure",
    default=DEFAULT_PROCEDURE,
    show_default=True,
    help="rpc: the procedure called (the examples' and the benchmark servers' add).",
)
@click.option(
    "--payload",
    callback=json_value,
    default=DEFAULT_PAYLOAD,
    show_default=True,
    metavar="JSON",
    help="rpc: the payload of each call.",
)
@click.option(
    "--in-flight",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="rpc: calls each connection keeps waiting for an answer.",
)
@click.option(
    "--type",
    "message_type",
    default=DEFAULT_TYPE,
    show_default=True,
    help="listen: the message type counted (the benchmark servers broadcast tick).",
)
@click.option(
    "--protocol",
    type=click.Choice(tuple(PROTOCOLS)),
    default="json",
    show_default=True,
    help="The WSE protocol spoken (the server must speak it): json is wse-default-json, "
    "msgpack is wse-msgpack.",
)
@click.option(
    "--max-failed-conns",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Connections that may fail to open (refused, timed out) before the run fails.",
)
@click.option("--json", "as_json_report", is_flag=True, help="Print the report as JSON.")
def bench(
    url: str,
    identity: str,
    meta: dict[str, Any] | None,
    timeout: float,
    cafile: str | None,
    workload: str,
    conns: int,
    duration: float,
    warmup: float,
    procedure: str,
    payload: Any,
    in_flight: int,
    message_type: str,
    protocol: str,
    max_failed_conns: int,
    as_json_report: bool,
) -> None:
    """Opens --conns connections to the WSE server at URL (ws:// or wss://), any WSE server
    (wse-fast, JavaScript WSE, ...), each authenticated as --identity, then runs one workload
    for --duration seconds after --warmup seconds, and reports what the server answered:
    connections opened, failed and lost, calls completed and failed, calls per second,
    latency p50/p90/p99/max, messages per second, and how busy this process's core was.

    rpc keeps --in-flight calls of --procedure (with --payload) going on every connection;
    calls sent before the window are not counted, and those in flight when it ends are
    waited for. listen counts the --type messages every connection receives: the server
    broadcasts them on its own, or on a request (wse-fast send) from elsewhere. Progress
    goes to stderr; Ctrl-C (SIGINT) or SIGTERM ends the window early and reports.

    \b
        wse-fast bench ws://127.0.0.1:4200 --identity 'user-{i}' --conns 100 --in-flight 8
        wse-fast bench ws://127.0.0.1:4200 --identity alice --procedure echo --payload '"hi"'
        wse-fast bench ws://127.0.0.1:4200 --identity alice --workload listen --json

    Exit status: 0; 1 when no connection opened, more than --max-failed-conns failed, no
    call succeeded (rpc) or no message arrived (listen), with the reason on stderr after
    the report; 2 for a wrong argument.
    """
    context = client_ssl_context(url, cafile)
    chosen = Workload(workload, procedure, payload, in_flight, message_type)
    wire = PROTOCOLS[protocol]()
    identities = [identity.replace(IDENTITY_NUMBER, str(i)) for i in range(conns)]

    from ..client import WseClient

    def make_client() -> WseClient:
        return WseClient(url, protocol=wire, timeout=timeout, reconnect=None, ssl=context)

    async def main() -> tuple[float, float, Tally]:
        run = Run(chosen)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, stop.set)
        try:
            say(f"opening {conns:,} connections to {printable(shown_server_url(url))}")
            await run.open(make_client, identities, meta)
            say(f"opened {run.tally.opened:,}, {run.tally.failed:,} failed")
            if run.tally.opened == 0:
                return 0.0, 0.0, run.tally
            seconds, cpu_seconds = await run.measure(warmup, duration, stop)
            return seconds, cpu_seconds, run.tally
        finally:
            await run.close()
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)

    import uvloop

    seconds, cpu_seconds, tally = uvloop.run(main())
    figures = report(url, chosen, wire, conns, warmup, seconds, cpu_seconds, tally)
    out: IO[str] = sys.stdout
    out.write((as_json(figures) if as_json_report else table(figures)) + "\n")
    out.flush()
    why = failure(figures, max_failed_conns)
    if why is not None:
        click.echo(f"wse-fast bench: {why}", err=True)
        sys.exit(1)
