"""python-socketio on aiohttp, fanning out with emit() to everyone."""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from aiohttp_site import serve
from socketio_bench import bench_sio


async def main(port: int) -> None:
    app = web.Application()
    bench_sio("aiohttp").attach(app)
    await serve(app, port)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
