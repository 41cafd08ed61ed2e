"""nats-py, as the cluster's modules import it: without aiohttp, unless a link needs it.

nats-py imports aiohttp, whenever it is installed, for one thing: its WebSocket transport
(``ws://`` and ``wss://`` NATS URLs). That is about 10 MB in every process that links to
NATS (aiohttp and what it brings: yarl, multidict, http.cookies...), 60 MB over the six
workers of ``wse-fast serve --workers 6``, whose links are TCP. So nats-py is imported here
with ``import aiohttp`` failing, as if it were not installed (unless the process imported
aiohttp already: then nothing is saved and nothing held back), and :func:`allow_websocket`
hands nats-py aiohttp when a link names a WebSocket URL. Every cluster module imports nats-py
through this one.

Likewise ``importlib.metadata`` (about 3 MB a process: it brings the email parser, zipfile and
csv), which nats-py imports only to read its own version for its CONNECT: the version is read
from the name of its ``dist-info`` directory instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: What nats-py imports only if it can, and needs for what these links do not use.
_HELD_BACK = ("aiohttp", "importlib.metadata")


def _import_nats_lean() -> None:
    if "nats" in sys.modules:
        return
    held = [name for name in _HELD_BACK if name not in sys.modules]
    # a None entry in sys.modules makes ``import NAME`` raise ImportError, which nats-py takes
    # as "not installed"; the entries go at once, so that the application may import them
    # later as usual
    for name in held:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        client = importlib.import_module("nats.aio.client")
    finally:
        for name in held:
            del sys.modules[name]
    if "aiohttp" in held:
        # nats-py's WebSocket transport reads these two module globals when it connects:
        # they import on first use, for this process's other nats-py users too
        transport = importlib.import_module("nats.aio.transport")
        if transport.aiohttp is None:
            transport.aiohttp = _OnFirstUse("aiohttp")  # type: ignore[attr-defined]
            transport.multidict = _OnFirstUse("multidict")  # type: ignore[attr-defined]
    if "importlib.metadata" in held:
        version = _dist_version(client.__file__)
        if version is not None:
            client.__version__ = version  # type: ignore[attr-defined]


class _OnFirstUse:
    """A module imported when something of it is first read. True when it can be imported,
    as nats-py tests its optional imports (``if not aiohttp``)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __bool__(self) -> bool:
        return importlib.util.find_spec(self.name) is not None

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self.name), attr)


def _dist_version(module_file: str | None) -> str | None:
    """nats-py's version, from its ``nats_py-VERSION.dist-info`` directory beside its package
    (None when it is not there: nats-py then says 0.0.0, as without importlib.metadata)."""
    if module_file is None:
        return None
    site = Path(module_file).resolve().parents[2]  # .../site-packages/nats/aio/client.py
    for info in site.glob("nats_py-*.dist-info"):
        return info.name.removeprefix("nats_py-").removesuffix(".dist-info")
    return None


_import_nats_lean()

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
    if isinstance(transport.aiohttp, _OnFirstUse) or transport.aiohttp is None:
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
