# examples/echo_server.py: a plain WebSocket echo on wse-fast's transport, for conformance suites.
#
# Usage: python examples/echo_server.py PORT [HOST] [--deflate]   (HOST defaults to 127.0.0.1)
#
# No WSE envelope and no subprotocol: every text or binary message (up to 16 MiB) comes back
# as it was sent. Sockets are WseServer's own (the upgrade and the frames read by wse-fast's
# ServerSocket and FrameReader, behind the same read guard) and frames go through the same
# Endpoint and RFC 6455 checks as WseServer's connections, so the Autobahn fuzzing client run
# against this server judges the framing, ping and close handling that WSE traffic gets
# (tests/autobahn/run.py). ``--deflate``: permessage-deflate is agreed when offered, with a
# compression context per connection (takeover), as WseServer's
# ``compression=Compression(takeover=True)``.
from __future__ import annotations

import sys
from typing import Any

import uvloop
from wse_fast import codec
from wse_fast.constants import OP_BINARY, OP_TEXT
from wse_fast.sansio.deflate import Compression, PerMessageDeflate
from wse_fast.transport.admission import Admission, ReadGuard
from wse_fast.transport.endpoint import DeflateEndpoint, Endpoint
from wse_fast.transport.server_socket import ListenerOptions, listen

MAX_MESSAGE = 16 << 20


class Echo:
    """The endpoint's handler: sends every message back on the same connection."""

    def __init__(self, guard: ReadGuard) -> None:
        self.guard = guard
        self.endpoint: Endpoint | None = None

    def on_open(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.guard.release()  # accepted at once: no stranger's budget

    def on_message(self, binary: bool, data: Any) -> None:
        assert self.endpoint is not None
        self.endpoint.write(codec.build_frame(OP_BINARY if binary else OP_TEXT, data))

    def on_close(self, code: int, reason: str) -> None:
        pass

    def on_overflow(self) -> None:
        pass


async def serve(host: str, port: int, deflate: PerMessageDeflate | None) -> None:
    def upgrade(
        target: str, headers: Any, guard: ReadGuard
    ) -> tuple[Endpoint, list[tuple[str, str]]]:
        # Any subprotocol offer, or none, is accepted by answering without one.
        options: dict[str, Any] = {
            "close_timeout": 5.0,
            "max_pending_bytes": 4 * MAX_MESSAGE,
        }
        agreement = None
        if deflate is not None:
            agreement = deflate.negotiate(headers.getall("Sec-WebSocket-Extensions", []))
        if agreement is None:
            return Endpoint(Echo(guard), MAX_MESSAGE, False, **options), []
        endpoint = DeflateEndpoint(
            Echo(guard),
            MAX_MESSAGE,
            False,
            **options,
            compressor=deflate.compressor(agreement, client_side=False),  # type: ignore[union-attr]
            inflater=deflate.inflater(agreement, client_side=False),  # type: ignore[union-attr]
            inflate_limit=MAX_MESSAGE,
        )
        return endpoint, [("Sec-WebSocket-Extensions", agreement.header())]

    options = ListenerOptions(
        handshake_timeout=10.0,
        ping_interval=None,
        ping_timeout=10.0,
        stranger_budget=1 << 62,
        backlog=128,
    )
    admission = Admission(1 << 20, 1 << 20, lambda host: False)
    server = await listen(upgrade, admission, options, host=host, port=port)
    print(f"echo server on ws://{host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    args = [arg for arg in sys.argv[1:] if arg != "--deflate"]
    if len(args) not in (1, 2):
        sys.exit("usage: python examples/echo_server.py PORT [HOST] [--deflate]")
    host = args[1] if len(args) == 2 else "127.0.0.1"
    deflate = None
    if "--deflate" in sys.argv:
        deflate = PerMessageDeflate(Compression(takeover=True, window_bits=15, threshold=0))
    uvloop.run(serve(host, int(args[0]), deflate))


if __name__ == "__main__":
    main()
