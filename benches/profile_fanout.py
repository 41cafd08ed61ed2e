"""Where a wse-fast server spends paced fan-out time: py-spy samples of the server process.

    python benches/profile_fanout.py [rate-fraction] ["wse-fast send() loop"]

Starts the wse-fast bench server on core 0, 1 000 connections from the load generator on
core 1, a fixed-rate fan-out (default: 50 % of a measured paced maximum), and py-spy on the
server with native frames. Prints the share of busy samples inside the send() system calls
(the kernel's work per delivery) and in everything else.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from loadgen import LoadGen  # noqa: E402
from run import Server  # noqa: E402


async def main(fraction: float, variant: str) -> None:
    os.sched_setaffinity(0, {1})
    with Server(variant) as server:
        gen = LoadGen(server.port, server.proc.pid)
        await gen.connect(1000)
        paced = await gen.fanout("paced", 200, 64)
        rate = fraction * paced.per_second / 1000
        out = Path("/tmp/wse-fast-profile.txt")
        spy = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--native", "--format", "raw",
             "-r", "500", "-d", "4", "-o", str(out), "--pid", str(server.proc.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        await gen.fanout("rate", int(rate * 5), 64, rate=rate)
        spy.wait()
        gen.close()
    buckets: collections.Counter[str] = collections.Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "send_to_all" in stack or "__send" in stack or "__libc_send" in stack:
            buckets["sends (io_uring or send(), kernel)"] += int(count)
        elif "epoll_wait" in stack:
            buckets["waiting for the next tick (idle)"] += int(count)
        else:
            buckets["Python and the event loop"] += int(count)
    total = sum(buckets.values())
    busy = total - buckets["waiting for the next tick (idle)"]
    print(
        f"paced maximum {paced.per_second:,.0f}/s; profiled at {fraction:.0%} ({rate * 1000:,.0f}/s)"
    )
    for name, count in buckets.most_common():
        share = count / busy if "idle" not in name else count / total
        base = "of busy time" if "idle" not in name else "of all samples"
        print(f"  {name:36} {share:6.1%} {base}")


if __name__ == "__main__":
    fraction = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
    variant = sys.argv[2] if len(sys.argv) > 2 else "wse-fast"  # or "wse-fast send() loop"
    uvloop.run(main(fraction, variant))
