"""The python-socketio server every socketio peer runs: ``bench`` fans out with emit() to
everyone."""

from __future__ import annotations

import asyncio
from typing import Any

import socketio


def bench_sio(async_mode: str) -> socketio.AsyncServer:
    # Pings would land between the counted ticks; the runs are far shorter than an hour.
    sio = socketio.AsyncServer(async_mode=async_mode, ping_interval=3600, ping_timeout=3600)

    @sio.on("bench")
    async def bench(sid: str, cmd: dict[str, Any]) -> None:
        payload = "x" * (cmd["size"] - 2)
        for _ in range(cmd["count"]):
            await sio.emit("tick", payload)
            if cmd["mode"] == "paced":
                await asyncio.sleep(0)

    return sio
