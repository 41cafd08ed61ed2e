"""The application the CLI tests serve (``wse-fast serve tests.cli_app:server``): every
connection is the user its identity names, and procedures tell which process answers."""

from __future__ import annotations

import os
from typing import Any

from wse_fast import Connection, IdentifyRequest, WseServer


def identify(req: IdentifyRequest) -> None:
    req.accept(str(req.identity))


server = WseServer(identify)


@server.register("pid")
def pid(conn: Connection, payload: Any) -> int:
    """The worker process that holds this connection."""
    return os.getpid()


@server.register("tell")
def tell(conn: Connection, payload: Any) -> bool:
    """Sends ``told`` to user ``payload["cid"]``: on this worker alone, or wherever the user
    is once the workers form a cluster."""
    return server.send(payload["cid"], "told", payload["text"])


def make_server() -> WseServer:
    """A factory, for ``wse-fast serve tests.cli_app:make_server``."""
    return server
