"""wse-fast mounted in an aiohttp application (``router.add_get``, ``server.aiohttp_handler``):
the same server as on its own listener, at /ws."""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from aiohttp_site import serve
from wse_fast_bench import bench_server

PATH = "/ws"


async def main(port: int) -> None:
    server = bench_server()
    app = web.Application()
    app.router.add_get(PATH, server.aiohttp_handler)
    await serve(app, port, PATH)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
