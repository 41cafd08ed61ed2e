"""``wse-fast bench``: the benchmark suite of a checkout (``benches/run.py``), run with a
progress bar per part."""

from __future__ import annotations

import contextlib
import runpy
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from .common import describe_status

BENCH_PARTS = ("fanout", "latency", "rpc", "connections")
#: The line benches/run.py begins each part's results with, and the part's label.
SUITE_SECTIONS = {
    "fan-out:": "fan-out",
    "latency:": "latency",
    "rpc:": "rpc",
    "connections:": "connections",
}
#: The peers whose connection costs run.py measures (in its main), when they run.
CONNECTION_PEERS = ("wse-fast", "minimal picows", "websockets broadcast()", "Node.js ws")


def find_suite(path: str | None) -> Path:
    """The suite's entry point: ``path`` itself, or run.py or benches/run.py in it (a
    directory); without ``path``, benches/run.py under the current directory."""
    if path is None:
        candidates = [Path("benches", "run.py")]
    elif Path(path).is_dir():
        candidates = [Path(path, "run.py"), Path(path, "benches", "run.py")]
    else:
        candidates = [Path(path)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    where = " or ".join(str(c) for c in candidates)
    raise click.ClickException(
        f"no benchmark suite at {where}: the suite (benches/) is in a checkout of wse-fast, "
        "not in the installed package; run this from the checkout's top directory, or give "
        "--suite PATH"
    )


def comma_list(values: Sequence[str]) -> list[str]:
    """Repeated options that may also hold comma-separated values."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def suite_tables(run_py: Path) -> dict[str, Any] | None:
    """run.py's module-level tables (its peers, their modes, which peers do RPC and latency),
    read without running the suite; None when run.py cannot be loaded here."""
    saved_path = list(sys.path)  # run.py puts its own directory first
    try:
        tables = runpy.run_path(str(run_py), run_name="wse_fast_bench_suite")
    except Exception:
        return None
    finally:
        sys.path[:] = saved_path
    needed = ("PEERS", "MODES", "RPC_PEERS", "LATENCY_PEERS", "BASELINE")
    return tables if all(name in tables for name in needed) else None


def expected_results(
    tables: dict[str, Any], peers: list[str], parts: list[str], full: bool, baseline: bool
) -> dict[str, int]:
    """How many result lines run.py prints in each part, by the loops of its main: what the
    progress bars count to (a part that prints more fills its bar and goes on)."""
    names = [p for p in tables["PEERS"] if not peers or p in peers]
    if baseline:
        names.append(tables["BASELINE"])
    if shutil.which("node") is None:
        names = [p for p in names if p != "Node.js ws"]
    configs = 12 if full else 1  # 10 .. 10 000 connections times 64 B .. 16 KiB
    expected: dict[str, int] = {}
    if "fanout" in parts or "latency" in parts:
        modes = sum(len(tables["MODES"].get(p, ("burst", "paced"))) for p in names)
        expected["fan-out"] = configs * modes
    if "latency" in parts and "wse-fast" in names:
        expected["latency"] = 3 * len(tables["LATENCY_PEERS"])  # three loads
    if "rpc" in parts:
        others = [p for p in names if p in tables["RPC_PEERS"] and p != "wse-fast"]
        expected["rpc"] = 3 * (1 + len(others))  # three loads
    if "connections" in parts:
        measured = [*CONNECTION_PEERS, tables["BASELINE"]]
        expected["connections"] = 2 * sum(p in names for p in measured)  # 1 000 and 10 000
    return expected


class SuiteProgress:
    """Turns run.py's output into a progress bar per part (on stderr): each indented line of
    a part is one result, shown on stdout when the part is done; other lines pass through."""

    def __init__(self, expected: dict[str, int]) -> None:
        self.expected = expected
        self.bar: contextlib.ExitStack | None = None
        self.update: Callable[[int], None] | None = None
        self.results: list[str] = []

    def line(self, text: str) -> None:
        if text in SUITE_SECTIONS:
            self.end_part()
            self.begin_part(SUITE_SECTIONS[text])
        elif text.startswith("  ") and self.update is not None:
            self.results.append(text)
            self.update(1)
        else:
            self.end_part()
            click.echo(text)

    def begin_part(self, label: str) -> None:
        click.echo(f"{label}:")
        length = self.expected.get(label)
        if length is None:  # nothing to count against: the results as they come
            return
        self.bar = contextlib.ExitStack()
        bar = self.bar.enter_context(
            click.progressbar(length=length, label=f"  {label}", show_pos=True, file=sys.stderr)
        )
        self.update = bar.update

    def end_part(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = self.update = None
        for text in self.results:
            click.echo(text)
        self.results.clear()


def run_suite(command: list[str], expected: dict[str, int]) -> int:
    """Runs the suite, showing its progress; its exit status."""
    progress = SuiteProgress(expected)
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        try:
            for text in proc.stdout:
                progress.line(text.rstrip("\n"))
        except KeyboardInterrupt:
            # Ctrl-C reached the suite too (one process group): let it stop its servers
            proc.send_signal(signal.SIGINT)
            proc.wait()
            raise
        finally:
            progress.end_part()
        return proc.wait()


@click.command(short_help="Run the benchmark suite of a checkout, with progress bars.")
@click.option(
    "--suite",
    metavar="PATH",
    help="The suite's benches/run.py, or a directory holding it (benches/, or a checkout)  "
    "[default: benches/run.py under the current directory].",
)
@click.option(
    "--full", is_flag=True, help="The whole matrix: 10 .. 10 000 connections, 64 B .. 16 KiB."
)
@click.option("--conns", type=click.IntRange(min=1), help="Connections  [default: 1000].")
@click.option("--size", type=click.IntRange(min=1), help="Payload bytes  [default: 64].")
@click.option(
    "--runs", type=click.IntRange(min=1), help="Runs per figure (the median is kept)  [default: 5]."
)
@click.option(
    "--peers",
    "peer_values",
    multiple=True,
    metavar="NAMES",
    help="Only these servers (comma-separated or repeated; names as in benches/run.py --help)  "
    "[default: all].",
)
@click.option(
    "--parts",
    "part_values",
    multiple=True,
    metavar="PARTS",
    help=f"Only these parts, of {', '.join(BENCH_PARTS)} (comma-separated or repeated; latency "
    "needs fan-out, which it runs)  [default: all].",
)
@click.option(
    "--baseline",
    type=click.Path(exists=True, file_okay=False),
    help="Another wse-fast checkout (set up with make bench-setup) to measure beside this one.",
)
@click.option("--out", metavar="DIR", help="Where the results go  [default: benches/results].")
@click.option("--name", help="The results' file name, without suffix  [default: suite, or matrix].")
def bench(
    suite: str | None,
    full: bool,
    conns: int | None,
    size: int | None,
    runs: int | None,
    peer_values: tuple[str, ...],
    part_values: tuple[str, ...],
    baseline: str | None,
    out: str | None,
    name: str | None,
) -> None:
    """Runs the benchmark suite (benches/run.py: fan-out, latency, RPC and connections,
    wse-fast beside other servers) with a progress bar per part, then writes its tables
    (NAME.md, NAME.json) and plots (NAME.png, NAME-latency.png) to --out.

    The suite is not in the installed package: run this from a checkout of wse-fast (after
    make bench-setup, which installs the other servers and taskset), or give --suite. It
    runs with this command's Python, each server pinned to core 0 and the load to core 1.
    The default run (1 000 connections, 64 B) takes several minutes.

    \b
        wse-fast bench                                  # what the README reports
        wse-fast bench --parts rpc --runs 1 --peers wse-fast --out /tmp/bench
    """
    run_py = find_suite(suite)
    parts = comma_list(part_values) or list(BENCH_PARTS)
    unknown = [p for p in parts if p not in BENCH_PARTS]
    if unknown:
        raise click.BadParameter(
            f"{', '.join(unknown)}: the parts are {', '.join(BENCH_PARTS)}",
            param_hint="'--parts'",
        )
    peers = comma_list(peer_values)
    tables = suite_tables(run_py)
    if tables is not None and peers:
        unknown = [p for p in peers if p not in tables["PEERS"]]
        if unknown:
            raise click.BadParameter(
                f"{', '.join(unknown)}: the peers are {', '.join(tables['PEERS'])}",
                param_hint="'--peers'",
            )
    command = [sys.executable, str(run_py)]
    if full:
        command.append("--full")
    for option, value in (
        ("--conns", conns),
        ("--size", size),
        ("--runs", runs),
        ("--baseline", baseline),
        ("--out", out),
        ("--name", name),
    ):
        if value is not None:
            command += [option, str(value)]
    if peers:
        command += ["--peers", *peers]
    command += ["--parts", *parts]
    expected = (
        {} if tables is None else expected_results(tables, peers, parts, full, baseline is not None)
    )
    status = run_suite(command, expected)
    if status != 0:
        raise click.ClickException(f"the benchmark suite failed ({describe_status(status)})")
