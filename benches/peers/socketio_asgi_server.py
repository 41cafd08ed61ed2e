"""python-socketio's ASGI application (``socketio.ASGIApp``) under uvicorn, fanning out with
emit() to everyone."""

from __future__ import annotations

import sys

import socketio
import uvloop

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from asgi_site import serve
from socketio_bench import bench_sio


async def main(port: int) -> None:
    await serve(socketio.ASGIApp(bench_sio("asgi")), port)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
