"""The server of benches/scale.py, as ``wse-fast serve wse_scale_app:scale_app --workers N``
runs it (in this directory): wse-fast at its default options, as an operator would run it
(keepalive pings on, every limit at its default), each connection a user of its own, and one
command:

- ``broadcast`` (any payload): the server broadcasts ``["tick", "<NS>"]`` to every connection
  of the cluster, NS the 19-digit ``time.monotonic_ns()`` (CLOCK_MONOTONIC) taken just before,
  from which the load generator (benches/loadgen_go, -hold) times each receipt.

A connection id is unique only within its worker; the cid adds the worker's mark, so that two
workers' connection "1" are two users (one user would be one connection: ``conn_per_user``).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from wse_fast import WseServer


def scale_app() -> WseServer:
    worker = secrets.token_hex(4)
    server = WseServer(lambda req: req.accept(f"{worker}.{req.conn_id}"))

    @server.channel.on("broadcast")
    async def broadcast(conn: Any, _: Any) -> None:
        server.broadcast("tick", f"{time.monotonic_ns():019d}")

    return server
