"""wse-fast itself, as the benchmark sees it, on its own listener (picows)."""

from __future__ import annotations

import asyncio
import sys

import uvloop

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from wse_fast_bench import bench_server


async def main(port: int) -> None:
    server = bench_server(port=port)
    await server.start()
    print("READY", server.port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
