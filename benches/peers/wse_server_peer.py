"""wse-server (PyPI: a Rust/tokio WebSocket engine driven from Python), fanning out with its
own ``broadcast_all()``, in the way its documentation and its own fan-out benchmark use it.

It runs in its own virtualenv (benches/.venv-wse-server, made by wse_server_setup.sh): its
wheels need CPython >= 3.12. Only the standard library and wse-server are imported here.

- Drain mode (its recommended event API): one Python thread takes batches of inbound events
  with ``drain_inbound()``; the engine's tokio runtime does all socket I/O on its own threads.
  Under ``taskset -c 0`` tokio sizes its runtime to one worker thread; every thread, Python's
  and the engine's, inherits the pinning, and the suite counts CPU over all of them.
- No JWT (``jwt_secret=None``: the engine accepts every upgrade, as the other peers do); the
  client greets with wse-server's own ``client_hello``, which the engine answers in Rust
  (``server_hello``), and asks for a fan-out with ``{"t": "bench", "p": {...}}``.
- Keepalive off, as for every peer: its ping interval and idle timeout cannot be turned off
  (zero is refused), so both are set to a day; an unanswered ping would otherwise be counted
  as a delivery, and an idle receiver closed after a minute.
- Each tick is wse-server's own event shape, ``{"t": "tick", "p": "<size bytes>"}``; the engine
  adds its category field, so the receivers get ``{"c":"U","t":"tick","p":"..."}`` (the load
  generator's dialect expects exactly that frame; see loadgen.WSE_SERVER).

Fan-out modes, as the suite defines them for every peer:

- burst: ``count`` calls of ``broadcast_all()`` in a row; the engine queues the frames and its
  write tasks send whatever each connection has pending in one writev.
- paced: one broadcast at a time, the next only once the engine has written the previous one
  to every connection (its runtime threads all asleep again), as a server on an event loop
  flushes one broadcast per loop turn. ``broadcast_all()`` hands the frame to the runtime and
  returns at once, and the engine offers no completion signal, so this thread yields the core
  (``sched_yield``) until the kernel shows every runtime thread sleeping (``/proc``).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any

from wse_server import RustWSEServer

DAY = 86_400


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tick_text(size: int) -> str:
    """The event broadcast for a ``size``-byte payload (a JSON string, quotes included)."""
    return '{"t":"tick","p":"' + "x" * (size - 2) + '"}'


class EngineThreads:
    """The engine's runtime threads (every thread of this process but Python's own), read
    from ``/proc``; ``idle()`` is true when all of them are asleep, i.e. have no work left."""

    def __init__(self) -> None:
        me = os.getpid()
        main = threading.get_native_id()
        self.stats = [
            os.open(f"/proc/{me}/task/{tid}/stat", os.O_RDONLY)
            for tid in sorted(os.listdir(f"/proc/{me}/task"))
            if int(tid) != main
        ]
        if not self.stats:
            raise RuntimeError("wse-server started no threads of its own")

    def idle(self) -> bool:
        for fd in self.stats:
            stat = os.pread(fd, 512, 0)
            # "pid (comm) S ...": the state follows the last ")" (comm may hold one)
            if stat[stat.rindex(b")") + 2] != ord("S"):
                return False
        return True

    def wait_idle(self) -> None:
        while not self.idle():
            os.sched_yield()


def fanout(server: RustWSEServer, engine: EngineThreads, mode: str, count: int, size: int) -> None:
    text = tick_text(size)
    broadcast = server.broadcast_all
    if mode == "burst":
        for _ in range(count):
            broadcast(text)
    elif mode == "paced":
        wait_idle = engine.wait_idle
        for _ in range(count):
            broadcast(text)
            wait_idle()
    else:
        raise ValueError(f"unknown fan-out mode {mode!r}")


def serve(port: int) -> None:
    port = port or free_port()
    server = RustWSEServer(
        "127.0.0.1",
        port,
        max_connections=100_000,
        ping_interval=DAY,
        idle_timeout=2 * DAY,
    )
    server.enable_drain_mode()
    server.start()
    deadline = time.monotonic() + 10
    while not server.is_running():  # start() binds on the engine's thread; no event to await
        if time.monotonic() > deadline:
            raise RuntimeError("wse-server did not start listening")
        time.sleep(0.005)
    engine = EngineThreads()
    print("READY", port, flush=True)
    while True:
        for kind, _conn_id, data in server.drain_inbound(256, 1000):
            if kind == "msg" and data.get("t") == "bench":
                command: dict[str, Any] = data["p"]
                fanout(server, engine, command["mode"], command["count"], command["size"])


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
