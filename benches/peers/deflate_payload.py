"""The JSON messages of the compression benchmark, the same bytes for every server: market
rows with varied numbers (integers and ASCII only, so that every JSON encoder writes them
alike), a distinct message for each index."""

from __future__ import annotations

import functools
import json
import random
from typing import Any

#: Distinct messages per size; a run cycles through them.
DISTINCT = 64
_SYMBOLS = ("AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "ORCL")


#: The sizes the benchmark uses; servers make their messages before they say READY.
SIZES = (1024, 4096, 16384)


@functools.cache
def payloads(size: int) -> list[dict[str, Any]]:
    """``DISTINCT`` payloads whose envelope ``["tick",payload,null]`` is about ``size`` bytes
    (made once per size)."""
    rng = random.Random(size)
    out = []
    for seq in range(DISTINCT):
        rows: list[dict[str, Any]] = []
        payload = {"seq": seq, "rows": rows}
        while len(envelope(payload)) < size - 90:
            rows.append(
                {
                    "id": rng.randrange(10**9),
                    "sym": rng.choice(_SYMBOLS),
                    "px": rng.randrange(1000, 500_000),
                    "qty": rng.randrange(1, 5000),
                    "side": rng.choice(("buy", "sell")),
                    "ts": 1_764_000_000_000 + rng.randrange(10**7),
                }
            )
        out.append(payload)
    return out


def envelope(payload: dict[str, Any]) -> bytes:
    """The message as every server sends it (wse-fast's codec writes these bytes too)."""
    return json.dumps(["tick", payload, None], separators=(",", ":")).encode()
