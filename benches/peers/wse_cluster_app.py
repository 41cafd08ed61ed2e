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
from typing import Any

import uvloop
from wse_fast import ClusterOptions, WseServer

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from wse_fast_bench import bench_server


def cluster_app(**transport: Any) -> WseServer:
    node = secrets.token_hex(4)  # this server's mark in its users' cids
    server = bench_server(lambda req: req.accept(f"{node}.{req.conn_id}"), **transport)

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
        server.join_cluster([url], ClusterOptions(node=node, prefix=prefix))
    await server.start()
    print("READY", server.port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1:] or ["0"]))
