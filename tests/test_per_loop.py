"""``per_loop``, the one helper behind every object kept per event loop (the write flusher,
the keepalive sweep, the message-level turn end, the listener's read buffer)."""

from __future__ import annotations

import asyncio
import gc
import weakref

from wse_fast.transport.flush import Flusher, flusher_for
from wse_fast.transport.per_loop import per_loop
from wse_fast.transport.server_socket import READ_BUFFER_SIZE, shared_read_buffer


class Made:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop


def test_one_object_per_loop_made_on_first_use() -> None:
    calls: list[asyncio.AbstractEventLoop] = []

    @per_loop
    def made_for(loop: asyncio.AbstractEventLoop) -> Made:
        """The docstring stays."""
        calls.append(loop)
        return Made(loop)

    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert made_for(first) is made_for(first)
        assert made_for(second) is not made_for(first)
        assert made_for(second).loop is second
        assert calls == [first, second]  # each made once
        assert made_for.__name__ == "made_for" and made_for.__doc__ == "The docstring stays."
    finally:
        first.close()
        second.close()


def test_a_closed_loops_object_is_forgotten_when_another_loop_asks() -> None:
    made_for = per_loop(Made)
    old = asyncio.new_event_loop()
    gone = weakref.ref(made_for(old))
    old.close()
    gc.collect()
    assert gone() is not None  # kept until another loop's object is made
    new = asyncio.new_event_loop()
    try:
        made_for(new)
        gc.collect()
        assert gone() is None
    finally:
        new.close()


async def test_the_transports_singletons_are_per_loop() -> None:
    loop = asyncio.get_running_loop()
    flusher = flusher_for(loop)
    assert isinstance(flusher, Flusher) and flusher_for(loop) is flusher
    buffer = shared_read_buffer(loop)
    assert len(buffer) == READ_BUFFER_SIZE and shared_read_buffer(loop) is buffer
