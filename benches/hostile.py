"""What hostile peers cost everyone else: event-loop stalls seen by a user, and server memory.

A probe (an authenticated raw client) calls ``echo`` back to back and times each round trip,
while attackers on raw sockets try what the hardening bounds:

- quiet: no attack (the probe's own figures);
- identify flood: 6 strangers send a hello that keeps identify busy, then six 1 MiB JSON
  messages each (the reference ignores them; a server that decodes them stalls);
- huge hellos: 6 strangers each send a 1 MB hello whose meta is 340 000 empty arrays;
- call flood: one authenticated connection sends 20 000 calls of a procedure that sleeps 5 s.

For each, the probe's p50, p99 and longest round trip during the attack, and the server's
RSS growth (peak minus start). The server (benches/peers/hostile_target.py) is pinned to core
0, probe and attackers to core 1; each figure is the median of the runs, servers alternated.

    python benches/hostile.py                      # this checkout
    python benches/hostile.py --baseline DIR       # and another checkout beside it

A baseline checkout needs its extension built in place (``make setup`` there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from wire import mask_frame, rss_bytes, upgrade_request  # noqa: E402

ATTACK_SECONDS = 3.0
MiB = 1 << 20


class Target:
    """The hostile_target server of one checkout, pinned to core 0."""

    def __init__(self, checkout: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(checkout / "python")}
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, str(HERE / "peers/hostile_target.py"), "0"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "READY":
            self.proc.kill()
            raise RuntimeError(f"{checkout}: server did not start")
        self.port = int(line[1])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return await reader.readexactly(length)


async def open_ws(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_request(port))
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


def message(type: str, payload: object, stamp: str | None = None) -> bytes:
    return mask_frame(json.dumps([type, payload, stamp], separators=(",", ":")).encode())


async def authenticated(
    port: int, identity: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await open_ws(port)
    writer.write(message("~wse:hi", {"identity": identity, "meta": {}}))
    await read_frame(reader)  # the welcome
    return reader, writer


async def probe(port: int, stop: asyncio.Event) -> list[float]:
    """Round trips of back-to-back calls until ``stop``, in milliseconds."""
    reader, writer = await authenticated(port, "probe")
    times = []
    while not stop.is_set():
        started = time.perf_counter()
        writer.write(message("echo", 1, "probe00001"))
        await read_frame(reader)
        times.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.002)
    writer.close()
    return times


async def identify_flood(port: int) -> None:
    body = "x" * (MiB - 64)

    async def one(i: int) -> None:
        reader, writer = await open_ws(port)
        writer.write(message("~wse:hi", {"identity": f"slow{i}", "meta": {}}))
        for _ in range(6):
            writer.write(message("chat", body))
        await drain_until_closed(reader, writer)

    await asyncio.gather(*(one(i) for i in range(6)))


async def huge_hellos(port: int) -> None:
    meta = {"a": [[]] * 340_000}  # 1 MB of JSON (under a 1 MiB limit), 340 000 lists decoded

    async def one(i: int) -> None:
        reader, writer = await open_ws(port)
        writer.write(message("~wse:hi", {"identity": f"bomb{i}", "meta": meta}))
        await drain_until_closed(reader, writer)

    await asyncio.gather(*(one(i) for i in range(6)))


async def call_flood(port: int) -> None:
    _, writer = await authenticated(port, "flooder")
    try:
        async with asyncio.timeout(ATTACK_SECONDS):
            for i in range(20_000):
                writer.write(message("nap", None, f"n{i:09d}"))
                if i % 1000 == 0:
                    await writer.drain()  # a server that stops reading holds us here
            await asyncio.sleep(ATTACK_SECONDS)
    except TimeoutError:
        pass
    writer.transport.abort()  # and vanishes with its calls running


async def drain_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads whatever the server says until it hangs up (or the attack window ends)."""
    try:
        async with asyncio.timeout(ATTACK_SECONDS):
            await writer.drain()
            while await reader.read(65536):
                pass
    except (TimeoutError, ConnectionError):
        pass
    writer.transport.abort()


async def quiet(port: int) -> None:
    await asyncio.sleep(ATTACK_SECONDS)


SCENARIOS: dict[str, Callable[[int], Awaitable[None]]] = {
    "quiet": quiet,
    "identify flood": identify_flood,
    "huge hellos": huge_hellos,
    "call flood": call_flood,
}


async def run_once(checkout: Path, scenario: str) -> tuple[list[float], int]:
    target = Target(checkout)
    try:
        start_rss = peak = rss_bytes(target.proc.pid)
        stop = asyncio.Event()
        probing = asyncio.ensure_future(probe(target.port, stop))
        await asyncio.sleep(0.2)  # the probe's first calls, before the attack
        attack = asyncio.ensure_future(SCENARIOS[scenario](target.port))
        deadline = time.monotonic() + ATTACK_SECONDS + 1
        while time.monotonic() < deadline:
            peak = max(peak, rss_bytes(target.proc.pid))
            await asyncio.sleep(0.02)
        stop.set()
        times = await asyncio.wait_for(probing, 30)
        await asyncio.wait_for(attack, 30)
        return times, peak - start_rss
    finally:
        target.stop()


async def main(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {1})
    checkouts = {"wse-fast": HERE.parent}
    if args.baseline:
        checkouts["baseline"] = Path(args.baseline).resolve()
    rows = []
    for scenario in SCENARIOS:
        results: dict[str, list[tuple[list[float], int]]] = {name: [] for name in checkouts}
        for _ in range(args.runs):
            for name, checkout in checkouts.items():
                results[name].append(await run_once(checkout, scenario))
        for name in checkouts:
            runs = results[name]
            p50 = statistics.median(statistics.median(t) for t, _ in runs)
            p99 = statistics.median(sorted(t)[int(0.99 * (len(t) - 1))] for t, _ in runs)
            worst = statistics.median(max(t) for t, _ in runs)
            growth = statistics.median(g for _, g in runs) / MiB
            rows.append((scenario, name, p50, p99, worst, growth))
            print(
                f"{scenario:15} {name:9} p50 {p50:7.2f} ms  p99 {p99:8.2f} ms  "
                f"longest {worst:8.2f} ms  RSS +{growth:6.1f} MiB",
                flush=True,
            )
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')}: server pinned to core 0, probe and attackers to "
        f"core 1; medians of {args.runs} runs, servers alternated; attack window "
        f"{ATTACK_SECONDS:.0f} s. Command: `python benches/hostile.py"
        + (" --baseline DIR`" if args.baseline else "`"),
        "",
        "| attack | server | probe p50 | probe p99 | longest round trip | server RSS growth |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for scenario, name, p50, p99, worst, growth in rows:
        lines.append(
            f"| {scenario} | {name} | {p50:.2f} ms | {p99:.2f} ms | {worst:.2f} ms | {growth:.1f} MiB |"
        )
    out = Path(args.out) if args.out else HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "hostile.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'hostile.md'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", help="another wse-fast checkout, built in place")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", help="where to write hostile.md (default: benches/results)")
    uvloop.run(main(parser.parse_args()))
