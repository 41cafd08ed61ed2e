"""The Python a server spends per call, without the kernel: a read's bytes handed straight to
the server's socket protocol (as uvloop hands them), read, answered, queued (no socket write).

    python benches/rpc_in_process.py            # metrics counting as installed (on with prometheus-client)
    python benches/rpc_in_process.py --no-counting
    python benches/rpc_in_process.py --failing  # calls answered with an error (rpc.py's path)

Runs the suite's server with one client connected, then feeds its socket 200 000 `add`
calls as uvloop would (one masked text frame per read, unique stamps), dropping the queued
answers between calls. Prints the best of 7 rounds, in ns per call. With ``--failing`` the procedure
raises a ``WseError`` instead: the codec hands the exception to Python, which answers it
(``rpc.py``) and counts it under its code.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from wse_fast import WseClient, WseError, codec
from wse_fast_bench import bench_server

CALLS = 200_000


def _refuse(conn: object, payload: object) -> None:
    raise WseError("app.refused")


async def main(counting: bool | None, failing: bool) -> None:
    server = bench_server(port=0)
    procedure = "add"
    if failing:
        procedure = "refuse"
        server.register(procedure, _refuse)
        server.metrics.declare_error_codes("app.refused")
    if counting is not None:
        server.metrics.counting = counting
    await server.start()
    client = WseClient(f"ws://127.0.0.1:{server.port}")
    await client.connect("x")
    [conn] = [c for user in server.clients.values() for c in user.conns.values()]
    endpoint = conn.endpoint
    assert endpoint is not None
    # what the client's socket would bring: one masked text frame per read (RFC 6455 §5.3)
    frames = [
        codec.build_frame(
            0x1, b'["%s",{"a":%d,"b":2},"%010d"]' % (procedure.encode(), i, i), mask=True
        )
        for i in range(1000)
    ]
    read = endpoint.transport.data_received  # the server socket's one step per read
    read(frames[0])  # the frames are read and answered (else the figure means nothing)
    assert endpoint.queue_head is not None and endpoint.open
    endpoint.queue_head = endpoint.queue_tail = None
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(CALLS // len(frames)):
            for frame in frames:
                read(frame)
                endpoint.queue_head = endpoint.queue_tail = None  # the answer, dropped unsent
        best = min(best, (time.perf_counter() - start) / CALLS)
        await asyncio.sleep(0)  # the flush runs, with nothing left to write
    counting_now = server.metrics.counting
    print(f"{best * 1e9:.0f} ns per {procedure} call, metrics counting {counting_now}")
    await client.close()
    await server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-counting", action="store_true", help="metrics counting off")
    parser.add_argument("--failing", action="store_true", help="a procedure that raises")
    args = parser.parse_args()
    uvloop.run(main(False if args.no_counting else None, args.failing))
