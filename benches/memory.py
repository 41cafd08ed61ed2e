"""Server RSS per idle authenticated connection, at the options users get.

    python benches/memory.py                # wse-fast at its defaults and with each option off
    python benches/memory.py --runs 3 --out benches/results/memory.md

Each server starts in a fresh process pinned to core 0, with its file limit raised to the
hard limit. Load generators on core 1 open the connections in steps of 5 000, each step from
a process of its own (so no process nears its own file limit); each connection says ``hi``
with its own identity and a small ``meta``, becomes its own user, answers pings, and then
stays idle. The server's RSS is read before the first connection and after each step:

- the average at 15 000 is (RSS at 15 000 - RSS before the first) / 15 000: what a process
  that serves only these connections pays for each, start-up growth of its heaps included;
- the slope from 5 000 to 10 000 is (RSS at 10 000 - RSS at 5 000) / 5 000: the marginal
  cost of one more connection once the process has warmed up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from loadgen import frame_end  # noqa: E402
from wire import PROTOCOL, mask_frame, rss_bytes, upgrade_request  # noqa: E402

SERVER_CORE, LOADGEN_CORE = "0", "1"
STEP = 5_000  # connections per load-generator process (--step)
STEPS = 3  # how many of them (--steps)
BASELINE = "wse-fast baseline, defaults"
META = {"device": "phone", "app": "4.2.0", "lang": "en"}  # a small meta, as apps send

#: wse-fast with each keepalive and write-limit choice, in this process's ``--serve`` mode.
WSE_FAST_CONFIGS: dict[str, dict[str, Any]] = {
    "wse-fast, defaults (ping on, max_pending_bytes 4 MiB)": {},
    "wse-fast, ping_interval=None": {"ping_interval": None},
    "wse-fast, max_pending_bytes=None": {"max_pending_bytes": None},
    "wse-fast, both off": {"ping_interval": None, "max_pending_bytes": None},
}
#: Servers with no framework, for scale (they keep no user, meta or session).
OTHERS: dict[str, list[str]] = {
    "minimal picows (no framework)": [sys.executable, str(HERE / "peers/picows_server.py"), "0"],
    "Node.js ws (no framework)": ["node", str(HERE / "peers/node_ws_server.mjs"), "0"],
}


def raise_file_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(limits: dict[str, Any], port: int = 0) -> None:
    """A wse-fast server at the default options but ``limits``: each connection its own user;
    on a free port, or ``port`` (benches/reconnect_storm.py restarts it on the same one)."""
    from wse_fast import ServerLimits, WseServer

    server = WseServer(
        lambda req: req.accept(req.conn_id), port=port, limits=ServerLimits(**limits)
    )
    await server.start()
    print("READY", server.port, flush=True)
    await asyncio.Event().wait()


class Holder(asyncio.Protocol):
    """One idle client: upgrade, ``hi`` with its own identity, the welcome, then only pongs."""

    def __init__(self, port: int, identity: str, ready: Callable[[Holder, str | None], None]):
        self.port, self.identity, self.ready = port, identity, ready
        self.buffer = b""
        self.upgraded = self.welcomed = False
        self.transport: asyncio.Transport | None = None
        self.ponged: asyncio.Future[None] | None = None  # waits for the pong after a message

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(upgrade_request(self.port, "/", PROTOCOL))

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        if not self.upgraded:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.ready(self, f"upgrade refused: {head[:80]!r}")
                return
            self.upgraded, self.buffer = True, rest
            hi = ["~wse:hi", {"identity": self.identity, "meta": META}, None]
            self.transport.write(mask_frame(json.dumps(hi).encode()))
        while (end := frame_end(self.buffer)) is not None:
            frame, self.buffer = self.buffer[:end], self.buffer[end:]
            body = frame[2:] if frame[1] & 0x7F < 126 else frame[4:]  # unmasked, < 64 KiB
            if frame[0] == 0x8A and self.ponged is not None and not self.ponged.done():
                self.ponged.set_result(None)  # everything sent before the ping was read
            elif frame[0] == 0x89:  # ping: a masked pong with the same body (RFC 6455, 5.5.3)
                key = os.urandom(4)
                masked = bytes(b ^ key[i % 4] for i, b in enumerate(body))
                self.transport.write(bytes([0x8A, 0x80 | len(body)]) + key + masked)
            elif not self.welcomed and body.startswith(b'["~wse:welcome"'):
                self.welcomed = True
                self.ready(self, None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.welcomed:
            self.ready(self, "closed before the welcome")
        else:
            print(f"LOST {self.identity}", file=sys.stderr, flush=True)


async def hold(port: int, n: int, first: int) -> None:
    """Opens ``n`` idle authenticated connections (identities from ``first`` on), says READY,
    and holds them until standard input closes."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(200)  # under the server's 256 strangers per address
    held: list[Holder] = []

    async def one(i: int) -> None:
        async with sem:
            done: asyncio.Future[None] = loop.create_future()

            def ready(holder: Holder, error: str | None) -> None:
                if done.done():
                    return
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(RuntimeError(error))

            _, holder = await loop.create_connection(
                lambda: Holder(port, f"user-{i}", ready), "127.0.0.1", port
            )
            await asyncio.wait_for(done, 60)
            held.append(holder)

    await asyncio.gather(*(one(first + i) for i in range(n)))
    print("READY", flush=True)
    command = (await loop.run_in_executor(None, sys.stdin.readline)).split()
    if command and command[0] == "SEND":
        # each connection sends one message of a type nobody listens to, then a ping: its
        # pong comes once the server has read the message
        size = int(command[1])
        body = json.dumps(["nobody-listens", "m" * (size - 21)]).encode()
        frame = mask_frame(body)  # one masking for all: the server unmasks each anyway
        ping = bytes([0x89, 0x80]) + os.urandom(4)
        for holder in held:
            holder.ponged = loop.create_future()
        for batch in range(0, len(held), 50):  # a few at a time: loopback buffers are finite
            waiting = []
            for holder in held[batch : batch + 50]:
                assert holder.transport is not None and holder.ponged is not None
                holder.transport.write(frame + ping)
                waiting.append(holder.ponged)
            await asyncio.wait_for(asyncio.gather(*waiting), 120)
        print("SENT", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)


@dataclass
class Measure:
    server: str
    rss: list[int]  # before the first connection, then after each step
    connect_seconds: float
    after_message: int | None = None  # RSS once each connection has sent one message

    def average(self, at: int) -> float:
        return (self.rss[at // STEP] - self.rss[0]) / at

    def slope(self, low: int, high: int) -> float:
        return (self.rss[high // STEP] - self.rss[low // STEP]) / (high - low)


def measure(name: str, command: list[str], message: int = 0) -> Measure:
    """One fresh server; connections in steps, one load-generator process per step; with
    ``message``, then one message of that many bytes from every connection, and the RSS 3 s
    after the last was read."""
    server = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, *command], stdout=subprocess.PIPE, text=True
    )
    holders: list[subprocess.Popen[str]] = []
    try:
        assert server.stdout is not None
        line = server.stdout.readline().split()
        if not line or line[0] != "READY":
            raise RuntimeError(f"{name} did not start")
        port = line[1]
        rss = [rss_bytes(server.pid)]
        start = time.perf_counter()
        for step in range(STEPS):
            holder = subprocess.Popen(
                ["taskset", "-c", LOADGEN_CORE, sys.executable, __file__, "--hold", port,
                 str(STEP), str(step * STEP)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            holders.append(holder)
            assert holder.stdout is not None
            if holder.stdout.readline().strip() != "READY":
                raise RuntimeError(f"{name}: step {step + 1} did not connect")
            rss.append(rss_bytes(server.pid))
        took = time.perf_counter() - start
        after = None
        if message:
            for holder in holders:
                assert holder.stdin is not None and holder.stdout is not None
                holder.stdin.write(f"SEND {message}\n")
                holder.stdin.flush()
                if holder.stdout.readline().strip() != "SENT":
                    raise RuntimeError(f"{name}: the messages were not all read")
            time.sleep(3)  # as measured for the issue: 3 s after
            after = rss_bytes(server.pid)
        return Measure(name, rss, took, after)
    finally:
        for holder in holders:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait()
        server.kill()
        server.wait()


def main(args: argparse.Namespace) -> None:
    servers: dict[str, list[str]] = {
        name: [sys.executable, __file__, "--serve", json.dumps(limits)]
        for name, limits in WSE_FAST_CONFIGS.items()
    }
    if args.baseline:
        # another checkout of wse-fast (set up with make setup), at its defaults, measured
        # beside this one in the same run: the before and after of a change
        base = Path(args.baseline).resolve()
        servers[BASELINE] = [
            str(base / ".venv/bin/python"), str(base / "benches/memory.py"), "--serve", "{}"
        ]  # fmt: skip
    servers.update(OTHERS)
    if args.only:
        servers = {k: v for k, v in servers.items() if any(o in k for o in args.only)}
    rows: dict[str, list[Measure]] = {name: [] for name in servers}
    for _ in range(args.runs):  # servers alternate run by run
        for name, command in servers.items():
            m = measure(name, command, args.message)
            rows[name].append(m)
            total = STEP * STEPS
            line = (
                f"  {name:55} average at {total:,} {m.average(total) / 1024:5.2f} KiB, "
                f"slope {STEP:,} -> {2 * STEP:,} {m.slope(STEP, 2 * STEP) / 1024:5.2f} KiB"
            )
            if STEPS > 2:
                line += f", {2 * STEP:,} -> {total:,} {m.slope(2 * STEP, total) / 1024:5.2f} KiB"
            if m.after_message is not None:
                after = (m.after_message - m.rss[0]) / total
                line += f"; after a {args.message:,} B message each {after / 1024:5.2f} KiB"
            print(f"{line} (start {m.rss[0] / 2**20:.1f} MiB)", flush=True)
    if args.out is None:
        return
    command = " ".join(
        [f"--runs {args.runs}"]
        + ([f"--only {' '.join(args.only)}"] if args.only else [])
        + (["--baseline DIR"] if args.baseline else [])
        + [f"--step {STEP}", f"--steps {STEPS}"]
        + ([f"--message {args.message}"] if args.message else [])
    )
    total = STEP * STEPS
    later = STEPS > 2  # a second slope needs a third step
    after_head = f" after a {args.message:,} B message from each |" if args.message else ""
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `python benches/memory.py {command}`"
        f" on {os.cpu_count()} shared cores; server pinned to core 0, load generators to core 1; "
        f"median of {args.runs} fresh server processes. Each connection says hi with its own "
        f"identity and the meta {json.dumps(META)}, is its own user, answers pings, and idles.",
        "",
        f"| server | average per connection at {total:,} | slope {STEP:,} → {2 * STEP:,} |"
        + (f" slope {2 * STEP:,} → {total:,} |" if later else "")
        + after_head
        + " RSS before the first connection |",
        "| --- | ---: | ---: |"
        + (" ---: |" if later else "")
        + (" ---: |" if after_head else "")
        + " ---: |",
    ]
    for name, ms in rows.items():
        avg = statistics.median(m.average(total) for m in ms)
        s1 = statistics.median(m.slope(STEP, 2 * STEP) for m in ms)
        start = statistics.median(m.rss[0] for m in ms)
        row = f"| {name} | {avg / 1024:.2f} KiB ({avg / 1000:.1f} KB) | {s1 / 1024:.2f} KiB ({s1 / 1000:.1f} KB) |"
        if later:
            row += f" {statistics.median(m.slope(2 * STEP, total) for m in ms) / 1024:.2f} KiB |"
        if after_head:
            afters = [(m.after_message or 0) - m.rss[0] for m in ms]
            row += f" {statistics.median(afters) / total / 1024:.2f} KiB per connection |"
        lines.append(f"{row} {start / 2**20:.1f} MiB |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(
        json.dumps(
            {name: [{"rss": m.rss, "step": STEP} for m in ms] for name, ms in rows.items()},
            indent=1,
        )
    )
    print(f"wrote {args.out} and its .json")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", help="a Markdown file for the table (and .json beside it)")
    parser.add_argument("--only", nargs="*", help="servers whose name contains any of these")
    parser.add_argument("--baseline", help="another wse-fast checkout to measure beside")
    parser.add_argument("--step", type=int, default=STEP, help="connections per step")
    parser.add_argument("--steps", type=int, default=STEPS, help="how many steps")
    parser.add_argument(
        "--message",
        type=int,
        default=0,
        help="then one message of this many bytes from each connection, and the RSS after",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # JSON of ServerLimits overrides
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)  # of --serve
    parser.add_argument("--hold", nargs=3, help=argparse.SUPPRESS)  # port count first-identity
    args = parser.parse_args()
    STEP, STEPS = args.step, args.steps
    if args.serve is not None:
        raise_file_limit()
        uvloop.run(serve(json.loads(args.serve), args.port))
    elif args.hold is not None:
        raise_file_limit()
        port, count, first = (int(x) for x in args.hold)
        uvloop.run(hold(port, count, first))
    else:
        main(args)
