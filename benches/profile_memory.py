"""What an idle authenticated wse-fast connection costs, by the module that allocated it.

    python benches/profile_memory.py

Runs a wse-fast server in this process under tracemalloc, opens 2 000 connections from a
load generator in another process, and prints the Python-heap bytes per connection by the
package that allocated them.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import tracemalloc
from pathlib import Path

import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from wire import rss_bytes  # noqa: E402
from wse_fast import ServerLimits, WseServer  # noqa: E402

N = 2000


CONNECT = """
import asyncio, sys, uvloop
sys.path.insert(0, {here!r})
from loadgen import LoadGen
async def main():
    gen = LoadGen({port}, 0)
    await gen.connect({n})
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
uvloop.run(main())
"""


async def connect(port: int, n: int) -> asyncio.subprocess.Process:
    """Opens ``n`` authenticated connections from another process, held until stdin closes."""
    code = CONNECT.format(here=str(HERE), port=port, n=n)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    assert (await proc.stdout.readline()).startswith(b"READY")
    return proc


RAW = """
import socket, sys
held = [socket.create_connection(("127.0.0.1", {port})) for _ in range({n})]
print("READY", flush=True)
sys.stdin.readline()
"""


class Idle(asyncio.Protocol):
    accepted = 0
    all_in: asyncio.Event

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        Idle.accepted += 1
        if Idle.accepted == N:
            Idle.all_in.set()


async def uvloop_alone() -> float:
    """RSS per connection of a uvloop server with a protocol that holds only its transport."""
    loop = asyncio.get_running_loop()
    Idle.all_in = asyncio.Event()
    server = await loop.create_server(Idle, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    rss0 = rss_bytes(os.getpid())
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RAW.format(port=port, n=N),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    await proc.stdout.readline()
    await Idle.all_in.wait()
    per_conn = (rss_bytes(os.getpid()) - rss0) / N
    proc.stdin.close()
    await proc.wait()
    server.close()
    return per_conn


async def main() -> None:
    baseline = await uvloop_alone()
    server = WseServer(
        lambda req: req.accept(req.conn_id), port=0, limits=ServerLimits(ping_interval=None)
    )
    all_joined = asyncio.Event()
    server.when.joined(lambda client, meta: len(server.clients) == N + 50 and all_joined.set())
    await server.start()
    warm = await connect(server.port, 50)
    tracemalloc.start(25)
    before = tracemalloc.take_snapshot()
    peers = await connect(server.port, N)
    await all_joined.wait()  # the welcome leaves before the server's bookkeeping ends
    after = tracemalloc.take_snapshot()
    by_owner: collections.Counter[str] = collections.Counter()
    for stat in after.compare_to(before, "traceback"):
        owner = "other"
        for f in reversed([frame.filename for frame in stat.traceback]):  # innermost first
            if "picows" in f:
                owner = "picows protocol factory (its read buffer)"
                break
            if "wse_fast" in f:
                owner = "wse-fast (connection, session, user)"
                break
            if "uvloop" in f or "asyncio" in f:
                # Cython code makes no Python frames: picows's handshake parsing and transport
                # object land here, beside uvloop's own transport (about 1 KiB alone).
                owner = "C code under the event loop (picows and uvloop transports)"
                break
        by_owner[owner] += stat.size_diff
    # RSS is not reported: tracemalloc's own records of every allocation would swamp it. The
    # suite (benches/run.py) measures RSS without tracemalloc.
    print(
        f"Python-heap bytes per idle authenticated connection, by who allocated them ({N:,} connections):"
    )
    for owner, size in by_owner.most_common():
        print(f"  {owner:60} {size / N:8.0f} B")
    print(f"  {'total':60} {sum(by_owner.values()) / N:8.0f} B")
    print(f"for scale, a bare uvloop server holding only the transport: {baseline:8.0f} B (RSS)")
    for proc in (peers, warm):
        assert proc.stdin is not None
        proc.stdin.close()
        await proc.wait()
    await server.close()


if __name__ == "__main__":
    uvloop.run(main())
