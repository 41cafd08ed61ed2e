"""One object per event loop: what every connection on a loop shares (a write flusher, a
keepalive sweep, a read buffer), made by the first connection that asks for it.

The objects are kept by their loop, not in a ``WeakKeyDictionary``: a loop is never collected
while it runs, and a closed loop's object is forgotten as soon as another loop's is made, so a
process that runs many loops in turn (tests, ``asyncio.run`` called repeatedly) keeps only the
live ones.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def per_loop(
    make: Callable[[asyncio.AbstractEventLoop], T],
) -> Callable[[asyncio.AbstractEventLoop], T]:
    """``make`` as a function that returns one ``make(loop)`` per event loop: made on the
    first call for ``loop``, the same object after. ``make`` must not answer None."""
    made: dict[asyncio.AbstractEventLoop, T] = {}

    def one_per_loop(loop: asyncio.AbstractEventLoop) -> T:
        value = made.get(loop)
        if value is None:
            for closed in [other for other in made if other.is_closed()]:
                del made[closed]  # forget what closed loops had
            value = made[loop] = make(loop)
        return value

    functools.update_wrapper(one_per_loop, make, updated=())  # its name and docstring
    return one_per_loop
