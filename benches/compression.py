"""permessage-deflate: bytes on the wire and deliveries per server CPU-second, for JSON
broadcasts of 1 to 16 KiB, wse-fast (compressed once per broadcast, no context takeover)
beside the websockets library with its default compression (context takeover per
connection) and wse-fast without compression.

    python benches/compression.py --conns 200 --count 200 --runs 3

Each server runs pinned to core 0, this load generator to core 1. The load generator offers
``permessage-deflate; client_max_window_bits`` (what browsers and Node.js ws send), reads
every frame's header, counts its bytes as they crossed the socket, and on one connection
inflates every message and checks it against the bytes the server was told to send. Server
CPU comes from the scheduler's per-thread counters, over the fan-out only (not the
handshakes); each figure is the median of ``--runs`` runs, peers interleaved run by run.
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
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

import uvloop

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))
from deflate_payload import SIZES, envelope, payloads  # noqa: E402
from wire import cpu_seconds, mask_frame, upgrade_request  # noqa: E402

SERVER_CORE, LOADGEN_CORE = 0, 1
OFFER = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
PEERS = {
    "wse-fast, compression on": [sys.executable, str(HERE / "peers/deflate_wse_fast.py"), "0", "on"],
    "websockets, compression on": [sys.executable, str(HERE / "peers/deflate_websockets.py"), "0"],
    "wse-fast, compression off": [sys.executable, str(HERE / "peers/deflate_wse_fast.py"), "0", "off"],
}  # fmt: skip
HI = mask_frame(json.dumps(["~wse:hi", {"identity": "bench", "meta": {}}, None]).encode())
SYNC_TAIL = b"\x00\x00\xff\xff"


class Connection(asyncio.Protocol):
    """One raw WebSocket connection that counts the frames and bytes it receives."""

    def __init__(self, run: Run, check: bool) -> None:
        self.run = run
        self.buffer = bytearray()
        self.head: bytes | None = None
        self.welcomed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.frames = 0
        self.bytes = 0
        # one connection inflates everything: one context across messages inflates both
        # kinds of stream (with or without takeover), at the largest window
        self.inflate = zlib.decompressobj(-15) if check else None
        self.seen: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if self.head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = bytes(buffer[: end + 4])
            del buffer[: end + 4]
            assert self.transport is not None
            self.transport.write(HI)
        at, size = 0, len(buffer)
        while size - at >= 2:
            first, length = buffer[at], buffer[at + 1] & 0x7F
            start = at + 2
            if length == 126:
                if size - at < 4:
                    break
                length, start = int.from_bytes(buffer[at + 2 : at + 4], "big"), at + 4
            elif length == 127:
                if size - at < 10:
                    break
                length, start = int.from_bytes(buffer[at + 2 : at + 10], "big"), at + 10
            end = start + length
            if end > size:
                break
            self.frame(first, buffer, start, end, end - at)
            at = end
        del buffer[:at]

    def frame(self, first: int, buffer: bytearray, start: int, end: int, wire: int) -> None:
        if not self.welcomed.done():
            self.welcomed.set_result(None)
            if self.inflate is not None and first & 0x40:
                self.inflate.decompress(bytes(buffer[start:end]) + SYNC_TAIL)
            return
        self.frames += 1
        self.bytes += wire
        if self.inflate is not None:
            body = bytes(buffer[start:end])
            if first & 0x40:
                body = self.inflate.decompress(body + SYNC_TAIL)
            self.seen.append(body)
        if self.frames == self.run.count:
            self.run.finished()


@dataclass
class Result:
    peer: str
    size: int
    wire_bytes: float  # per delivery
    body_bytes: int  # the JSON message, uncompressed
    per_cpu: float  # deliveries per server CPU-second
    per_wall: float
    cpu: float


class Run:
    def __init__(self, count: int, conns: int) -> None:
        self.count = count
        self.left = conns
        self.done = asyncio.get_running_loop().create_future()

    def finished(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set_result(None)


class Server:
    def __init__(self, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(PEERS[name], stdout=subprocess.PIPE, text=True)
        os.sched_setaffinity(self.proc.pid, {SERVER_CORE})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "READY", line
        self.port = int(line[1])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def measure(server: Server, conns: int, count: int, size: int) -> Result:
    loop = asyncio.get_running_loop()
    run = Run(count, conns)
    peers = []
    for index in range(conns):
        transport, peer = await loop.create_connection(
            partial(Connection, run, index == 0), "127.0.0.1", server.port
        )
        peer.transport = transport
        request = upgrade_request(server.port)
        transport.write(request[:-2] + OFFER + b"\r\n")
        peers.append(peer)
    await asyncio.wait_for(asyncio.gather(*(p.welcomed for p in peers)), 60)
    head = peers[0].head or b""
    agreed = b"permessage-deflate" in head.lower()
    before, started = cpu_seconds(server.proc.pid), time.perf_counter()
    command = json.dumps(["bench", {"count": count, "size": size}, None]).encode()
    assert peers[0].transport is not None
    peers[0].transport.write(mask_frame(command))
    await asyncio.wait_for(run.done, 300)
    wall = time.perf_counter() - started
    cpu = cpu_seconds(server.proc.pid) - before
    expected = [envelope(p) for p in payloads(size)]
    checked = peers[0].seen
    assert len(checked) == count
    assert all(body == expected[i % len(expected)] for i, body in enumerate(checked)), server.name
    deliveries = conns * count
    wire = sum(p.bytes for p in peers) / deliveries
    for peer in peers:
        assert peer.transport is not None
        peer.transport.close()
    if server.name.endswith("compression on"):
        assert agreed, f"{server.name} did not agree to compression: {head!r}"
    body = sum(len(e) for e in expected) // len(expected)
    return Result(server.name, size, wire, body, deliveries / cpu, deliveries / wall, cpu)


def table(results: list[Result], runs: int) -> str:
    lines = [
        "| server | message | bytes on the wire per delivery | ratio | deliveries per server"
        " CPU-second | deliveries per second (wall) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows: dict[tuple[str, int], list[Result]] = {}
    for result in results:
        rows.setdefault((result.peer, result.size), []).append(result)
    for (peer, _size), group in sorted(rows.items(), key=lambda item: (item[0][1], item[0][0])):
        wire = statistics.median(r.wire_bytes for r in group)
        body = group[0].body_bytes
        lines.append(
            f"| {peer} | {body:,} B | {wire:,.0f} | {body / wire:.2f}x |"
            f" {statistics.median(r.per_cpu for r in group):,.0f} |"
            f" {statistics.median(r.per_wall for r in group):,.0f} |"
        )
    return "\n".join(lines) + f"\n\nMedian of {runs} runs.\n"


def plot(results: list[Result], path: Path) -> None:
    """Two panels per message size: bytes on the wire per delivery, and deliveries per server
    CPU-second (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r.size for r in results})
    fig, axes = plt.subplots(len(sizes), 2, figsize=(11, 2.2 * len(sizes)), squeeze=False)
    for row, size in enumerate(sizes):
        names = list(PEERS)
        group = [[r for r in results if (r.peer, r.size) == (name, size)] for name in names]
        wire = [statistics.median(r.wire_bytes for r in runs) for runs in group]
        per_cpu = [statistics.median(r.per_cpu for r in runs) for runs in group]
        body = group[0][0].body_bytes
        for column, values, label in (
            (0, wire, "bytes on the wire per delivery"),
            (1, per_cpu, "deliveries per server CPU-second (log)"),
        ):
            ax = axes[row][column]
            ax.barh(names, values, color="tab:blue")
            ax.set_title(f"{body:,} B of JSON per message", fontsize=9)
            ax.set_xlabel(label, fontsize=8)
            ax.tick_params(labelsize=8)
            if column == 1:
                ax.set_xscale("log")
                ax.set_xlim(left=min(values) / 3)  # the smallest bar stays visible
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def main(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {LOADGEN_CORE})
    results: list[Result] = []
    servers = {name: Server(name) for name in PEERS}
    try:
        for size in args.sizes:
            for _ in range(args.runs):
                for server in servers.values():
                    result = await measure(server, args.conns, args.count, size)
                    print(
                        f"{result.peer:28} {size:6} B  {result.wire_bytes:9,.0f} B/delivery"
                        f"  {result.per_cpu:12,.0f}/CPU-s",
                        flush=True,
                    )
                    results.append(result)
    finally:
        for server in servers.values():
            server.stop()
    header = (
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, Python "
        f"{sys.version.split()[0]}, zlib {zlib.ZLIB_RUNTIME_VERSION}: {args.conns} connections,"
        f" {args.count} distinct JSON broadcasts per run, one per loop turn. Server on core 0,"
        f" load generator on core 1. Command: `python benches/compression.py"
        f" --conns {args.conns} --count {args.count} --runs {args.runs}`.\n\n"
    )
    text = header + table(results, args.runs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps([r.__dict__ for r in results], indent=1))
    plot(results, out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, default=200)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--out", default=str(HERE / "results" / "compression"))
    uvloop.run(main(parser.parse_args()))
