"""Outgoing calls of one connection, without I/O: stamps, and who waits for each answer.

A stamp pairs an answer with its call on one connection (PROTOCOL.md, "RPC"): 10 characters
of ``[A-Za-z0-9]``, like the reference's, unique among the connection's open calls. They need
to be unlikely to collide, not unguessable: a peer answering a call it was not sent only
answers its own connection's calls.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from typing import Generic, TypeVar

_STAMP_CHARS = string.ascii_letters + string.digits
W = TypeVar("W")


def make_stamp() -> str:
    return "".join(random.choices(_STAMP_CHARS, k=10))


class CallTable(Generic[W]):
    """Open calls, stamp to ``W`` (whatever waits for the answer: a future and its timer)."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[str, W] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._calls))

    def open(self, waiter: W) -> str:
        """A new call: its stamp, unique among the open ones."""
        stamp = make_stamp()
        while stamp in self._calls:
            stamp = make_stamp()
        self._calls[stamp] = waiter
        return stamp

    def settle(self, stamp: str) -> W | None:
        """The answer (or the deadline) for ``stamp`` came: its waiter, once; None for a stamp
        that is not open (answered already, never sent, or made up by the peer)."""
        return self._calls.pop(stamp, None)
