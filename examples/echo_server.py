# examples/echo_server.py: a plain WebSocket echo on wse-fast's transport, for conformance suites.
#
# Usage: python examples/echo_server.py PORT [HOST]   (HOST defaults to 127.0.0.1)
#
# No WSE envelope and no subprotocol: every text or binary message (up to 16 MiB) comes back
# as it was sent. Frames go through the same Endpoint, picows options and RFC 6455 checks as
# WseServer's connections, so the Autobahn fuzzing client run against this server judges the
# framing, ping and close handling that WSE traffic gets (tests/autobahn/run.py).
from __future__ import annotations

import logging
import sys
from typing import Any

import uvloop
from picows import WSUpgradeRequest, ws_create_server
from wse_fast import codec
from wse_fast.constants import OP_BINARY, OP_TEXT
from wse_fast.transport.picows_endpoint import Endpoint

MAX_MESSAGE = 16 << 20
RECEIVE_BUFFER = 256 << 10  # SO_RCVBUF: bounds picows's read buffer under floods


class Echo:
    """The endpoint's handler: sends every message back on the same connection."""

    def __init__(self) -> None:
        self.endpoint: Endpoint | None = None

    def on_open(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def on_message(self, binary: bool, data: Any) -> None:
        assert self.endpoint is not None
        # data may be a view into picows's read buffer: build_frame copies it
        self.endpoint.write(codec.build_frame(OP_BINARY if binary else OP_TEXT, data))

    def on_close(self, code: int, reason: str) -> None:
        pass

    def on_overflow(self) -> None:
        pass


def upgrade(request: WSUpgradeRequest) -> Endpoint:
    # Any subprotocol offer, or none, is accepted by answering without one.
    return Endpoint(
        Echo(),
        MAX_MESSAGE,
        False,
        close_timeout=5.0,
        max_pending_bytes=4 * MAX_MESSAGE,
        receive_buffer=RECEIVE_BUFFER,
    )


async def serve(host: str, port: int) -> None:
    server = await ws_create_server(
        upgrade,
        host,
        port,
        max_frame_size=MAX_MESSAGE,
        enable_auto_pong=False,  # pings are answered by the Endpoint, as on WseServer
        use_aiofastnet=False,
        logger_name=logging.LoggerAdapter(logging.getLogger("picows.server")),
    )
    print(f"echo server on ws://{host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python examples/echo_server.py PORT [HOST]")
    host = sys.argv[2] if len(sys.argv) == 3 else "127.0.0.1"
    uvloop.run(serve(host, int(sys.argv[1])))


if __name__ == "__main__":
    main()
