"""The benchmarked wse-fast server as one node of a cluster (benches/cluster.py).

It is the suite's server (benches/peers/wse_fast_bench.py: each connection its own user, the
``bench`` fan-out command), except that a user's cid is made unique across the cluster: a
connection id is unique only within its process, and two nodes' connection "1" taken as one
user would drop each other (``conn_per_user``). Two commands more, for send-to-user latency:

- ``whoami``: the connection is sent ``["me", <its cid>]``, so that a load generator learns
  which user to address;
- ``relay`` ``{"to": cid, "n": int}``: the server sends ``["relayed", n]`` to user ``cid``
  through ``server.send``, wherever that user's connection lives in the cluster.

As a process of its own (a node started by the benchmark)::

    python wse_cluster_app.py PORT [NATS_URL PREFIX NODE]

it prints ``READY <port>`` once it listens (and, with a NATS URL, has joined the cluster).
``wse-fast serve wse_cluster_app:cluster_app`` (run in this directory) serves the same server.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from typing import Any

import uvloop
from wse_fast import ServerLimits, WseServer


def cluster_app(**transport: Any) -> WseServer:
    node = secrets.token_hex(4)  # this server's mark in its users' cids
    server = WseServer(
        lambda req: req.accept(f"{node}.{req.conn_id}"),
        # as in wse_fast_bench: the load generator reads as fast as it can, and
        # authenticates thousands at once
        limits=ServerLimits(ping_interval=None, auth_timeout=120, max_pending_bytes=None),
        **transport,
    )

    @server.channel.on("bench")
    async def bench(conn: Any, cmd: dict[str, Any]) -> None:
        # the fan-out of wse_fast_bench.bench_server, byte for byte
        mode, count, size = cmd["mode"], cmd["count"], cmd["size"]
        payload = "x" * (size - 2)
        broadcast = server.broadcast
        if mode == "burst":
            for _ in range(count):
                broadcast("tick", payload)
        elif mode == "paced":
            for _ in range(count):
                broadcast("tick", payload)
                await asyncio.sleep(0)
        elif mode == "rate":
            loop = asyncio.get_running_loop()
            interval, due = 1.0 / cmd["rate"], loop.time()
            filler = "x" * (size - 2 - 19)
            for _ in range(count):
                broadcast("tick", f"{time.monotonic_ns():019d}{filler}")
                due += interval
                await asyncio.sleep(max(0.0, due - loop.time()))

    @server.channel.on("whoami")
    async def whoami(conn: Any, _: Any) -> None:
        conn.send("me", conn.cid)

    @server.channel.on("relay")
    async def relay(conn: Any, cmd: dict[str, Any]) -> None:
        server.send(cmd["to"], "relayed", cmd["n"])

    return server


async def main(argv: list[str]) -> None:
    server = cluster_app(port=int(argv[0]))
    if len(argv) > 1:
        url, prefix, node = argv[1:4]
        server.join_cluster([url], node=node, prefix=prefix)
    await server.start()
    print("READY", server.port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1:] or ["0"]))
