"""The drain benchmark: what a rolling deploy's SIGTERM does to calls in flight.

``wse-fast serve`` (benches/peers/drain_app.py) takes K clients, each with one call running
a procedure that works for a random 0-2 s; once every call has started, the process gets
SIGTERM. Counted per call: answered (during the drain, or before the signal took effect),
answered "cancelled" (the grace ran out), or lost (no answer: the connection closed first);
and the time from the signal until the process has exited. The default grace, 1 s (shorter
than some calls) and 0 (handlers cancelled at once, as before the drain existed, except that
a cancelled call is now answered "cancelled" instead of not at all) in the same run.

    python benches/drain.py                         # 1 000 clients, 1 run per grace
    python benches/drain.py --clients 200 --runs 3
    python benches/drain.py --baseline /path/to/checkout   # and the code there, before the drain

``--baseline`` serves with another checkout's package (its ``python/`` first on the path, built
in place), without ``--graceful-timeout``: the same workload on the code before the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import uvloop
from wse_fast import RpcError, WseClient
from wse_fast.server import DEFAULT_GRACE

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SERVING = re.compile(r"serving \S+ on ws://127\.0\.0\.1:(\d+)")
LONGEST_CALL = 2.0  # seconds a procedure works at most
CONNECT_AT_ONCE = 50  # clients connecting together (below uvloop's listen backlog of 100)


def say(*parts: object) -> None:
    print(*parts, flush=True)


#: The grace of a baseline run (the code before the drain has none).
BASELINE = -1.0


@dataclass
class Outcome:
    grace: float  # BASELINE: the baseline checkout
    clients: int
    answered_in_drain: int  # answered after the signal reached the server
    answered_before: int  # finished before the signal took effect
    cancelled: int  # answered "the call was cancelled" (the grace ran out)
    lost: int  # no answer at all
    closed_1012: int  # connections that ended with a Close 1012
    exit_seconds: float  # from SIGTERM until the process exited
    last_answer_seconds: float  # from SIGTERM until the last answer came

    @property
    def answered(self) -> int:
        return self.answered_in_drain + self.answered_before


async def serve(grace: float, baseline: Path | None) -> tuple[asyncio.subprocess.Process, int]:
    command = [sys.executable, "-m", "wse_fast", "serve", "drain_app:server", "--port", "0"]
    env = dict(os.environ)
    if grace == BASELINE:
        assert baseline is not None
        env["PYTHONPATH"] = str(baseline / "python")
    else:
        command += ["--graceful-timeout", str(grace)]
    proc = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        cwd=HERE / "peers",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        while line := (await proc.stdout.readline()).decode():
            if found := SERVING.search(line):
                return proc, int(found[1])
    raise RuntimeError("the server exited before serving")


async def one_run(grace: float, count: int, seed: int, baseline: Path | None) -> Outcome:
    proc, port = await serve(grace, baseline)
    url = f"ws://127.0.0.1:{port}"
    rng = random.Random(seed)
    started = 0
    all_started = asyncio.Event()
    codes: list[int] = []
    answer_times: list[float] = []

    def on_started(_: object) -> None:
        nonlocal started
        started += 1
        if started == count:
            all_started.set()

    clients = [WseClient(url, reconnect=None, timeout=30) for _ in range(count)]
    for client in clients:
        client.channel.on("started", on_started)
        client.when.closed(lambda code, reason: codes.append(code))
    for first in range(0, count, CONNECT_AT_ONCE):
        batch = clients[first : first + CONNECT_AT_ONCE]
        await asyncio.gather(*(c.connect(f"u{first + i}") for i, c in enumerate(batch)))

    async def call(client: WseClient) -> object:
        try:
            return await client.call("work", rng.uniform(0, LONGEST_CALL), timeout=0)
        except Exception as exc:
            return exc
        finally:
            answer_times.append(time.monotonic())

    calls = [asyncio.ensure_future(call(c)) for c in clients]
    async with asyncio.timeout(60):
        await all_started.wait()
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout is not None
    await proc.stdout.read()
    await proc.wait()
    exit_seconds = time.monotonic() - signalled
    results = await asyncio.gather(*calls)
    for client in clients:
        await client.close()
    cancelled = sum(
        isinstance(r, RpcError) and r.message == "the call was cancelled" for r in results
    )
    return Outcome(
        grace=grace,
        clients=count,
        answered_in_drain=sum(r is True for r in results),
        answered_before=sum(r is False for r in results),
        cancelled=cancelled,
        lost=sum(isinstance(r, Exception) for r in results) - cancelled,
        closed_1012=codes.count(1012),
        exit_seconds=exit_seconds,
        last_answer_seconds=max(answer_times) - signalled,
    )


def median_outcome(runs: list[Outcome]) -> Outcome:
    """Each figure's median over the runs (counts rounded)."""
    fields = asdict(runs[0])
    merged = {
        name: statistics.median(asdict(run)[name] for run in runs)
        for name in fields
        if name not in ("grace", "clients")
    }
    counts = {k: round(v) for k, v in merged.items() if not k.endswith("seconds")}
    seconds = {k: v for k, v in merged.items() if k.endswith("seconds")}
    return Outcome(grace=runs[0].grace, clients=runs[0].clients, **counts, **seconds)


def label(grace: float) -> str:
    if grace == BASELINE:
        return "before the drain (baseline)"
    return f"grace {grace:g} s (default)" if grace == DEFAULT_GRACE else f"grace {grace:g} s"


def table(outcomes: list[Outcome], runs: int, command: str, baseline: str = "") -> str:
    when = time.strftime("%Y-%m-%d")
    lines = [
        f"Measured {when} on a shared 2-core machine (other jobs running: timings are noisy); "
        f"{outcomes[0].clients} clients, one call each to a procedure working 0-2 s (uniform), "
        f"SIGTERM once every call had started; {'median of ' + str(runs) + ' runs' if runs > 1 else 'one run'} "
        f"per grace. Python {platform.python_version()}.{baseline} Command: `{command}`",
        "",
        "| shutdown | answered (in the drain) | answered before the signal | answered "
        '"cancelled" | lost (no answer) | closed 1012 | last answer after SIGTERM | '
        "exit after SIGTERM |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o in outcomes:
        lines.append(
            f"| {label(o.grace)} | {o.answered_in_drain} | {o.answered_before} | "
            f"{o.cancelled} | {o.lost} | {o.closed_1012} | {o.last_answer_seconds:.2f} s | "
            f"{o.exit_seconds:.2f} s |"
        )
    lines += [
        "",
        "Before the drain (issue 17, finding 3: 1 100 of 1 100 calls lost) every handler was "
        "cancelled and no call answered. Grace 0 cancels at once as then, but a cancelled call "
        'is now answered (`wse.server.rp.failed`, "the call was cancelled") before the Close, '
        "so its caller knows it did not complete; a lost call may have run.",
    ]
    return "\n".join(lines) + "\n"


def plot(outcomes: list[Outcome], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (counts, times) = plt.subplots(1, 2, figsize=(11, 3.6), width_ratios=[2, 1])
    names = [label(o.grace) for o in outcomes]
    left = [0] * len(outcomes)
    parts = [
        ("answered", [o.answered for o in outcomes], "tab:green"),
        ('answered "cancelled"', [o.cancelled for o in outcomes], "tab:orange"),
        ("lost", [o.lost for o in outcomes], "tab:red"),
    ]
    for name, values, color in parts:
        counts.barh(names, values, left=left, label=name, color=color)
        left = [a + b for a, b in zip(left, values, strict=True)]
    counts.set_xlabel(f"calls in flight at SIGTERM (of {outcomes[0].clients})")
    counts.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, fontsize=8)
    counts.invert_yaxis()
    times.barh(names, [o.exit_seconds for o in outcomes], color="tab:blue")
    times.set_xlabel("seconds from SIGTERM to exit")
    times.set_yticks([])
    times.invert_yaxis()
    fig.suptitle("wse-fast serve: SIGTERM with calls in flight (0-2 s each)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--graces", type=float, nargs="+", default=[DEFAULT_GRACE, 1.0, 0.0])
    parser.add_argument("--baseline", type=Path, help="a checkout of the code before the drain")
    parser.add_argument("--out", type=Path, default=RESULTS / "drain.md")
    args = parser.parse_args()
    graces = ([BASELINE] if args.baseline is not None else []) + args.graces
    outcomes = []
    for grace in graces:
        runs = []
        for run in range(args.runs):
            outcome = await one_run(grace, args.clients, run, args.baseline)
            say(label(grace), f"run {run + 1}:", outcome)
            runs.append(outcome)
        outcomes.append(median_outcome(runs))
    command = "python benches/drain.py " + " ".join(sys.argv[1:])
    baseline = ""
    if args.baseline is not None:
        commit = subprocess.run(
            ["git", "-C", str(args.baseline), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        baseline = f" Baseline: commit {commit or '?'}, the code before the drain."
    args.out.write_text(table(outcomes, args.runs, command.strip(), baseline))
    args.out.with_suffix(".json").write_text(
        json.dumps([asdict(o) for o in outcomes], indent=2) + "\n"
    )
    plot(outcomes, args.out.with_suffix(".png"))
    say(args.out.read_text())


if __name__ == "__main__":
    uvloop.run(main())
