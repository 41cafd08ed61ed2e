"""The server that benches/hostile.py attacks: wse-fast with its default limits.

Identities starting with "slow" keep identify busy for two seconds and are then refused;
anyone else is accepted. ``echo`` answers at once; ``nap`` sleeps five seconds.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvloop
from wse_fast import ServerLimits, WseServer


async def identify(req: Any) -> None:
    if str(req.identity).startswith("slow"):
        await asyncio.sleep(2)
        req.refuse()
    else:
        req.accept(req.identity)


async def nap(conn: Any, payload: Any) -> None:
    await asyncio.sleep(5)


async def main(port: int) -> None:
    server = WseServer(identify, port=port, limits=ServerLimits(ping_interval=None))
    server.register("echo", lambda conn, payload: payload)
    server.register("nap", nap)
    await server.start()
    print("READY", server.port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
