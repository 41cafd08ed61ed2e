"""nats-py, as the cluster's modules import it: without aiohttp, unless a link needs it.

nats-py imports aiohttp, whenever it is installed, for one thing: its WebSocket transport
(``ws://`` and ``wss://`` NATS URLs). That is about 10 MB in every process that links to
NATS (aiohttp and what it brings: yarl, multidict, email, http.cookies...), 60 MB over the six
workers of ``wse-fast serve --workers 6``, whose links are TCP. So nats-py is imported here
with ``import aiohttp`` failing, as if it were not installed (unless the process imported
aiohttp already: then nothing is saved and nothing held back), and :func:`allow_websocket`
hands nats-py aiohttp when a link names a WebSocket URL. Every cluster module imports nats-py
through this one.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence


def _import_nats_without_aiohttp() -> None:
    if "nats" in sys.modules or "aiohttp" in sys.modules:
        return
    # a None entry in sys.modules makes ``import aiohttp`` raise ImportError, which nats-py's
    # transport module takes as "not installed"; the entry goes at once, so that the
    # application may import aiohttp later as usual
    sys.modules["aiohttp"] = None  # type: ignore[assignment]
    try:
        importlib.import_module("nats.aio.transport")
    finally:
        del sys.modules["aiohttp"]


_import_nats_without_aiohttp()

from nats import connect  # noqa: E402
from nats.aio.client import Client as Nats  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402
from nats.js.errors import (  # noqa: E402
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue  # noqa: E402


def allow_websocket(urls: Sequence[str]) -> None:
    """Gives nats-py its WebSocket transport (aiohttp, held back at import) when one of
    ``urls`` needs it. Without aiohttp installed this raises ImportError, as nats-py would."""
    if not any(url.lower().startswith(("ws://", "wss://")) for url in urls):
        return
    transport = importlib.import_module("nats.aio.transport")
    if getattr(transport, "aiohttp", None) is None:
        # the two module globals its WebSocketTransport reads when it connects
        transport.aiohttp = importlib.import_module("aiohttp")  # type: ignore[attr-defined]
        transport.multidict = importlib.import_module("multidict")  # type: ignore[attr-defined]


__all__ = [
    "KeyDeletedError",
    "KeyNotFoundError",
    "KeyValue",
    "KeyWrongLastSequenceError",
    "Msg",
    "Nats",
    "NoKeysError",
    "allow_websocket",
    "connect",
]
