"""wse-fast mounted in a Starlette application (``WebSocketRoute``, ``server.asgi``) under
uvicorn: the same server as on its own listener, at /ws."""

from __future__ import annotations

import sys

import uvloop
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from asgi_site import serve
from wse_fast_bench import bench_server

PATH = "/ws"


async def main(port: int) -> None:
    server = bench_server()
    app = Starlette(routes=[WebSocketRoute(PATH, server.asgi)])
    await serve(app, port, PATH)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
