"""``wse-fast bench``: the benchmark suite of a checkout (``benches/run.py``), run with a
progress bar per part.

The suite is not in the package, and what it measures is its own business: this command
knows nothing of its peers or parts. It loads ``run.py`` without running it (its ``main``
runs only as ``__main__``) and asks it, through the names :class:`Suite` lists, which parts
and peers it takes and how many result lines each part's header is followed by; then it
runs it in a process of its own and draws a bar per header.
"""

from __future__ import annotations

import contextlib
import dataclasses
import runpy
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from .common import describe_status


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


@dataclasses.dataclass(frozen=True)
class Suite:
    """What a suite tells this command, from the module-level names of its run.py:
    ``PARTS`` (what its --parts takes), ``PEER_NAMES`` (what its --peers takes) and
    ``expected_results(peers, parts, full, conns, size, baseline)``, the number of result
    lines (indented) that follow each header line it prints, by header, for a run with
    those options (None or empty for those left out: the suite's defaults)."""

    parts: tuple[str, ...]
    peers: tuple[str, ...]
    expected_results: Callable[..., dict[str, int]]


def load_suite(run_py: Path) -> Suite | None:
    """The suite's answers, read without running it; None when run.py cannot be loaded here
    or lacks one of the names (then it runs without checks or bars)."""
    saved_path = list(sys.path)  # run.py puts its own directory first
    try:
        tables = runpy.run_path(str(run_py), run_name="wse_fast_bench_suite")
    except Exception:
        return None
    finally:
        sys.path[:] = saved_path
    try:
        return Suite(
            tuple(tables["PARTS"]), tuple(tables["PEER_NAMES"]), tables["expected_results"]
        )
    except (KeyError, TypeError):
        return None


class SuiteProgress:
    """Turns run.py's output into a progress bar (on stderr) per header line it said it
    would print (``expected``: how many results follow each): each indented line after a
    header is one result, shown on stdout when the part is done; other lines pass through."""

    def __init__(self, expected: dict[str, int]) -> None:
        self.expected = expected
        self.bar: contextlib.ExitStack | None = None
        self.update: Callable[[int], None] | None = None
        self.results: list[str] = []

    def line(self, text: str) -> None:
        if text in self.expected:
            self.end_part()
            self.begin_part(text)
        elif text.startswith("  ") and self.update is not None:
            self.results.append(text)
            self.update(1)
        else:
            self.end_part()
            click.echo(text)

    def begin_part(self, header: str) -> None:
        click.echo(header)
        label = "  " + header.removesuffix(":")
        self.bar = contextlib.ExitStack()
        bar = self.bar.enter_context(
            click.progressbar(
                length=self.expected[header], label=label, show_pos=True, file=sys.stderr
            )
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
    help="Only these parts (comma-separated or repeated; names as in benches/run.py --help)  "
    "[default: the suite's].",
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
    parts = comma_list(part_values)
    peers = comma_list(peer_values)
    loaded = load_suite(run_py)
    if loaded is not None:
        for values, known, option in (
            (parts, loaded.parts, "parts"),
            (peers, loaded.peers, "peers"),
        ):
            unknown = [v for v in values if v not in known]
            if unknown:
                raise click.BadParameter(
                    f"{', '.join(unknown)}: the {option} are {', '.join(known)}",
                    param_hint=f"'--{option}'",
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
    if parts:
        command += ["--parts", *parts]
    expected = (
        {}
        if loaded is None
        else loaded.expected_results(peers, parts, full, conns, size, baseline is not None)
    )
    status = run_suite(command, expected)
    if status != 0:
        raise click.ClickException(f"the benchmark suite failed ({describe_status(status)})")
