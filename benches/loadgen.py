"""The load generator: raw WebSocket connections on uvloop that count what they receive.

It parses nothing on the hot path: every delivery in a run is the same frame, so deliveries
are received bytes divided by the frame's size, and one core keeps up with millions a second.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from wire import (
    PROTOCOL,
    WELCOME,
    bench_command,
    cpu_seconds,
    frame_header,
    mask_frame,
    server_frame,
    tick_body,
    upgrade_request,
)

HI = mask_frame(json.dumps(["~wse:hi", {"identity": "bench", "meta": {}}, None]).encode())
WELCOME_FRAME = server_frame(WELCOME)


@dataclass(frozen=True)
class Dialect:
    """How one family of servers is greeted and commanded; ticks are counted alike."""

    path: str
    subprotocol: str | None
    first: bytes | None  # sent right after the upgrade
    greeting: tuple[tuple[bytes | None, bytes | None], ...]  # (exact frame or any, reply)
    tick_body: Callable[[int], bytes]
    command: Callable[[str, int, int, float], bytes]


WSE = Dialect(
    "/",
    PROTOCOL,
    HI,
    ((WELCOME_FRAME, None),),
    tick_body,
    lambda mode, count, size, rate: mask_frame(bench_command(mode, count, size, rate)),
)
# python-socketio: Engine.IO v4 over a WebSocket; the open packet and the namespace answer
# carry a random sid, so any complete frame is accepted there.
SOCKETIO = Dialect(
    "/socket.io/?EIO=4&transport=websocket",
    None,
    None,
    ((None, mask_frame(b"40")), (None, None)),
    lambda size: b'42["tick","' + b"x" * (size - 2) + b'"]',
    lambda mode, count, size, rate: mask_frame(
        b'42["bench",' + json.dumps({"mode": mode, "count": count, "size": size}).encode() + b"]"
    ),
)

# wse-server (PyPI; benches/peers/wse_server_peer.py): its own protocol, JSON objects with a
# type "t" and payload "p". The greeting is its protocol negotiation, client_hello answered
# by server_hello (connection id and time inside: any one frame is accepted); no subprotocol
# is negotiated. It adds a category "c" to every event it broadcasts, so a tick arrives as
# {"c":"U","t":"tick","p":"xx..."}, the payload a JSON string of ``size`` bytes as elsewhere.
WSE_SERVER = Dialect(
    "/",
    None,
    mask_frame(
        b'{"t":"client_hello","p":{"client_version":"wse-fast-bench","protocol_version":1}}'
    ),
    ((None, None),),
    lambda size: b'{"c":"U","t":"tick","p":"' + b"x" * (size - 2) + b'"}',
    lambda mode, count, size, rate: mask_frame(
        json.dumps(
            {"t": "bench", "p": {"mode": mode, "count": count, "size": size, "rate": rate}}
        ).encode()
    ),
)


def frame_end(buffer: bytes) -> int | None:
    """Where the first (unmasked, server-sent) frame in ``buffer`` ends, if it is complete."""
    if len(buffer) < 2:
        return None
    length, at = buffer[1] & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        length, at = int.from_bytes(buffer[2:4], "big"), 4
    return at + length if len(buffer) >= at + length else None


UPGRADING, GREETING, COUNTING = range(3)


class Receiver(asyncio.Protocol):
    """One connection: upgrade, hi, welcome, then count bytes."""

    def __init__(self, gen: LoadGen, port: int) -> None:
        self.gen = gen
        self.port = port
        self.state = UPGRADING
        self.greeted = 0
        self.buffer = b""
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        dialect = self.gen.dialect
        self.transport.write(upgrade_request(self.port, dialect.path, dialect.subprotocol))

    def data_received(self, data: bytes) -> None:
        if self.state == COUNTING:
            gen = self.gen
            gen.received += len(data)
            if gen.latency is not None:
                gen.latency.feed(self, data)
            if gen.received >= gen.expected and gen.done is not None and not gen.done.done():
                gen.done.set_result(None)
            return
        self.buffer += data
        dialect = self.gen.dialect
        assert self.transport is not None
        if self.state == UPGRADING:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self._fail(f"upgrade refused: {head[:100]!r}")
                return
            if dialect.first is not None:
                self.transport.write(dialect.first)
            self.buffer = rest
            self.state = GREETING
        while self.greeted < len(dialect.greeting):
            end = frame_end(self.buffer)
            if end is None:
                return
            expected, reply = dialect.greeting[self.greeted]
            if expected is not None and self.buffer[:end] != expected:
                self._fail(f"unexpected greeting {self.buffer[:80]!r}")
                return
            self.buffer = self.buffer[end:]
            self.greeted += 1
            if reply is not None:
                self.transport.write(reply)
        extra, self.buffer = self.buffer, b""
        self.state = COUNTING
        self.ready.set_result(None)
        if extra:
            self.data_received(extra)

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(why))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("closed before the welcome")
        self.gen.lost_connections += 1


class Latency:
    """Send timestamps (monotonic ns, 19 digits at the start of the payload) to receipt.

    Only every ``every``-th connection is sampled: parsing every frame of every connection
    would make the load generator itself the delay it measures.
    """

    def __init__(
        self, frame_size: int, offset: int, receivers: list[Receiver], every: int = 10
    ) -> None:
        self.frame_size = frame_size
        self.offset = offset
        self.sampled = set(receivers[::every])
        self.samples: list[int] = []
        self.partial: dict[Receiver, bytes] = {}

    def feed(self, receiver: Receiver, data: bytes) -> None:
        now = time.monotonic_ns()
        if receiver not in self.sampled:
            return
        data = self.partial.pop(receiver, b"") + data
        size, off = self.frame_size, self.offset
        whole = len(data) - len(data) % size
        for start in range(0, whole, size):
            self.samples.append(now - int(data[start + off : start + off + 19]))
        if whole < len(data):
            self.partial[receiver] = data[whole:]


@dataclass
class Result:
    deliveries: int
    wall: float
    cpu: float

    @property
    def per_cpu_second(self) -> float:
        return self.deliveries / self.cpu if self.cpu else float("nan")

    @property
    def per_second(self) -> float:
        return self.deliveries / self.wall


class LoadGen:
    """Connections to one server; ``server_pids``: the processes whose CPU is the server's
    (several for a server of several processes, such as workers and their broker)."""

    def __init__(
        self, port: int, server_pid: int, dialect: Dialect = WSE, *server_pids: int
    ) -> None:
        self.port = port
        self.dialect = dialect
        self.pid = server_pid
        self.pids = (server_pid, *server_pids)
        self.receivers: list[Receiver] = []
        self.received = 0
        self.expected = 0
        self.done: asyncio.Future[None] | None = None
        self.latency: Latency | None = None
        self.lost_connections = 0
        self.answered = 0
        self.rpc_samples: list[int] = []
        self.callers_idle = 0
        self.drained: asyncio.Future[None] | None = None
        self.next_stamp = 0
        self.failure: str | None = None

    def server_cpu(self) -> float:
        """CPU seconds of every thread of the server's processes so far."""
        return sum(cpu_seconds(pid) for pid in self.pids)

    def fail(self, why: str) -> None:
        """Ends the run in progress: a wrong answer."""
        self.failure = why
        if self.drained is not None and not self.drained.done():
            self.drained.set_exception(RuntimeError(why))

    async def connect(
        self,
        n: int,
        parallel: int = 200,
        factory: Callable[[], Receiver] | None = None,
    ) -> float:
        """Opens and authenticates ``n`` connections (``factory`` makes each one's protocol,
        a plain :class:`Receiver` by default); returns the wall time it took."""
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        sem = asyncio.Semaphore(parallel)
        make = factory or (lambda: Receiver(self, self.port))

        async def one() -> None:
            async with sem:
                _, receiver = await loop.create_connection(make, "127.0.0.1", self.port)
                await asyncio.wait_for(receiver.ready, 30)
                self.receivers.append(receiver)

        await asyncio.gather(*(one() for _ in range(n)))
        return time.perf_counter() - start

    async def fanout(
        self, mode: str, count: int, size: int, rate: float = 0.0, timeout: float = 120
    ) -> Result:
        frame_size = len(server_frame(self.dialect.tick_body(size)))
        n = len(self.receivers)
        self.received = 0
        self.expected = n * count * frame_size
        self.done = asyncio.get_running_loop().create_future()
        cpu0 = self.server_cpu()
        start = time.perf_counter()
        controller = self.receivers[0].transport
        assert controller is not None
        controller.write(self.dialect.command(mode, count, size, rate))
        try:
            await asyncio.wait_for(self.done, timeout)
        except TimeoutError:
            raise RuntimeError(
                f"lost deliveries: got {self.received // frame_size} of {n * count} ({mode}, {n} conns)"
            ) from None
        wall = time.perf_counter() - start
        cpu = self.server_cpu() - cpu0
        if self.received != self.expected:
            raise RuntimeError(f"received {self.received} bytes, expected {self.expected}")
        return Result(n * count, wall, cpu)

    def close(self) -> None:
        for r in self.receivers:
            if r.transport is not None:
                r.transport.close()
        self.receivers.clear()


CALL = b'["add",{"a":1,"b":2},"S000000000"]'
RESPONSE_FRAME = server_frame(b'["~wse:response",3,"S000000000"]')


class Caller(Receiver):
    """A connection that keeps ``depth`` calls in flight and times each (answers come in order)."""

    def __init__(self, gen: LoadGen, port: int, depth: int) -> None:
        super().__init__(gen, port)
        self.depth = depth
        self.call = mask_frame(CALL)
        self.sent: deque[int] = deque()
        self.pending_bytes = 0
        self.running = False

    def start(self) -> None:
        self.running = True
        now = time.monotonic_ns()
        self.sent.extend([now] * self.depth)
        assert self.transport is not None
        self.transport.write(self.call * self.depth)

    def data_received(self, data: bytes) -> None:
        if self.state != COUNTING:
            super().data_received(data)
            return
        size = len(RESPONSE_FRAME)
        total = self.pending_bytes + len(data)
        answered, self.pending_bytes = divmod(total, size)
        if not answered:
            return
        now = time.monotonic_ns()
        gen = self.gen
        samples = gen.rpc_samples
        for _ in range(answered):
            samples.append(now - self.sent.popleft())
        gen.answered += answered
        if self.running:
            self.sent.extend([now] * answered)
            assert self.transport is not None
            self.transport.write(self.call * answered)
        elif not self.sent and gen.drained is not None:
            gen.callers_idle += 1
            if gen.callers_idle == len(gen.receivers) and not gen.drained.done():
                gen.drained.set_result(None)


async def rpc(gen: LoadGen, conns: int, depth: int, seconds: float) -> tuple[Result, list[int]]:
    """Calls ``add`` through ``conns`` connections with ``depth`` calls in flight each."""
    loop = asyncio.get_running_loop()
    for _ in range(conns):
        _, caller = await loop.create_connection(
            lambda: Caller(gen, gen.port, depth), "127.0.0.1", gen.port
        )
        await asyncio.wait_for(caller.ready, 30)
        gen.receivers.append(caller)
    gen.answered, gen.rpc_samples, gen.callers_idle = 0, [], 0
    gen.drained = loop.create_future()
    cpu0, start = gen.server_cpu(), time.perf_counter()
    callers = [r for r in gen.receivers if isinstance(r, Caller)]
    for caller in callers:
        caller.start()
    await asyncio.sleep(seconds)  # the measurement window itself, not a synchronisation
    for caller in callers:
        caller.running = False
    await asyncio.wait_for(gen.drained, 30)  # every call answered: none lost
    wall, cpu = time.perf_counter() - start, gen.server_cpu() - cpu0
    return Result(gen.answered, wall, cpu), gen.rpc_samples


# One call per write, as independent clients send them: each call carries its own stamp (ten
# digits, unique across the run, as long as the reference's random ones) and leaves in its own
# write; a new call is written for each answer as it arrives, so ``depth`` stay in flight.
ADD_PREFIX = b'["add",{"a":1,"b":2},"'
ADD_SUFFIX = b'"]'
STAMP_SIZE = 10
ANSWER_HEAD = server_frame(b'["~wse:response",3,"' + b"0" * STAMP_SIZE + b'"]')[:-12]
ANSWER_SIZE = len(ANSWER_HEAD) + STAMP_SIZE + len(b'"]')


def xor(data: bytes, pad: bytes) -> bytes:
    n = len(data)
    return (int.from_bytes(data, "big") ^ int.from_bytes(pad, "big")).to_bytes(n, "big")


class OneWriteCaller(Receiver):
    """A connection whose calls each leave in a TCP write of their own with a unique stamp.

    Answers are matched to calls by stamp (in any order); an answer that is not the expected
    ``add`` response, or whose stamp is not in flight, fails the run.
    """

    def __init__(self, gen: LoadGen, port: int, depth: int) -> None:
        super().__init__(gen, port)
        self.depth = depth
        self.sent: dict[bytes, int] = {}
        self.pending = b""
        self.running = False
        # One masking key per connection, applied once to the parts every call shares; the
        # stamp is masked per call with an integer XOR (the server unmasks every byte anyway).
        key = os.urandom(4)
        body = len(ADD_PREFIX) + STAMP_SIZE + len(ADD_SUFFIX)
        pad = (key * (body // 4 + 1))[:body]
        head = frame_header(body)
        at = len(ADD_PREFIX)
        self.head = bytes([head[0], head[1] | 0x80]) + head[2:] + key + xor(ADD_PREFIX, pad[:at])
        self.stamp_pad = int.from_bytes(pad[at : at + STAMP_SIZE], "big")
        self.tail = xor(ADD_SUFFIX, pad[at + STAMP_SIZE :])

    def call(self, now: int) -> None:
        stamp = b"%010d" % self.gen.next_stamp
        self.gen.next_stamp += 1
        self.sent[stamp] = now
        masked = (int.from_bytes(stamp, "big") ^ self.stamp_pad).to_bytes(STAMP_SIZE, "big")
        assert self.transport is not None
        self.transport.write(self.head + masked + self.tail)

    def start(self) -> None:
        self.running = True
        now = time.monotonic_ns()
        for _ in range(self.depth):
            self.call(now)

    def data_received(self, data: bytes) -> None:
        if self.state != COUNTING:
            super().data_received(data)
            return
        data = self.pending + data if self.pending else data
        whole = len(data) - len(data) % ANSWER_SIZE
        self.pending = data[whole:]
        if not whole:
            return
        now = time.monotonic_ns()
        gen = self.gen
        samples, sent, head_size = gen.rpc_samples, self.sent, len(ANSWER_HEAD)
        for start in range(0, whole, ANSWER_SIZE):
            stamp = data[start + head_size : start + head_size + STAMP_SIZE]
            sent_at = sent.pop(stamp, None)
            if sent_at is None or data[start : start + head_size] != ANSWER_HEAD:
                gen.fail(f"unexpected answer {data[start : start + ANSWER_SIZE]!r}")
                return
            samples.append(now - sent_at)
            gen.answered += 1
            if self.running:
                self.call(now)
        if not self.running and not sent and gen.drained is not None:
            gen.callers_idle += 1
            if gen.callers_idle == len(gen.receivers) and not gen.drained.done():
                gen.drained.set_result(None)


@dataclass
class RpcResult(Result):
    """A window of calls, with the load generator's own CPU time over it (near one CPU-second
    per second: the generator bounds the rate) and, when counted, the server's system calls."""

    loadgen_cpu: float = 0.0
    syscalls: dict[str, int] | None = None


async def rpc_one_write(
    gen: LoadGen, conns: int, depth: int, seconds: float, syscalls: SyscallCount | None = None
) -> tuple[RpcResult, list[int]]:
    """Calls ``add`` through ``conns`` connections, ``depth`` in flight each, each call its
    own write with its own stamp, for ``seconds``; then waits until every call is answered.
    With ``syscalls``, the server's system calls over the window are counted (the tracepoints
    cost the server some CPU: such a run is not a measured one)."""
    loop = asyncio.get_running_loop()
    await gen.connect(conns, factory=lambda: OneWriteCaller(gen, gen.port, depth))
    callers = [r for r in gen.receivers if isinstance(r, OneWriteCaller)]
    gen.answered, gen.rpc_samples, gen.callers_idle = 0, [], 0
    gen.drained = loop.create_future()
    if syscalls is not None:
        await syscalls.enable()
    me = os.getpid()
    cpu0, own0 = gen.server_cpu(), cpu_seconds(me)
    start = time.perf_counter()
    for caller in callers:
        caller.start()
    await asyncio.sleep(seconds)  # the measurement window itself, not a synchronisation
    for caller in callers:
        caller.running = False
    await asyncio.wait_for(gen.drained, 30)  # every call answered: none lost
    wall, cpu = time.perf_counter() - start, gen.server_cpu() - cpu0
    own = cpu_seconds(me) - own0
    if gen.failure is not None:
        raise RuntimeError(gen.failure)
    result = RpcResult(gen.answered, wall, cpu, own)
    if syscalls is not None:
        result.syscalls = await syscalls.disable()
    return result, gen.rpc_samples


#: The system calls told apart in a count: tracepoints, summed per family.
SYSCALL_FAMILIES = {
    "read": ("read", "recvfrom", "recvmsg"),
    "write": ("write", "writev", "sendto", "sendmsg"),
    "epoll_wait": ("epoll_wait", "epoll_pwait"),
    "io_uring_enter": ("io_uring_enter",),
}


class SyscallCount:
    """Counts a process's system calls between :meth:`enable` and :meth:`disable` with
    ``perf stat`` on the kernel's tracepoints (counting only: no samples are recorded). perf
    starts disabled and acknowledges each switch on a FIFO, so the count covers exactly the
    window in between."""

    def __init__(self, pid: int, workdir: Path) -> None:
        self.pid = pid
        self.ctl, self.ack = workdir / "perf-ctl", workdir / "perf-ack"
        for fifo in (self.ctl, self.ack):
            fifo.unlink(missing_ok=True)
            os.mkfifo(fifo)
        self.proc: asyncio.subprocess.Process | None = None
        self.ctl_fd = self.ack_fd = -1

    async def enable(self) -> None:
        events = ["raw_syscalls:sys_enter"] + [
            f"syscalls:sys_enter_{name}" for names in SYSCALL_FAMILIES.values() for name in names
        ]
        self.proc = await asyncio.create_subprocess_exec(
            "perf", "stat", "-x,", "-D", "-1", "--control", f"fifo:{self.ctl},{self.ack}",
            *(arg for event in events for arg in ("-e", event)), "-p", str(self.pid),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        # perf opens both FIFOs once it is attached; these opens wait for it
        self.ctl_fd = await loop.run_in_executor(None, os.open, self.ctl, os.O_WRONLY)
        self.ack_fd = await loop.run_in_executor(None, os.open, self.ack, os.O_RDONLY)
        await self._switch(b"enable\n")

    async def _switch(self, command: bytes) -> None:
        os.write(self.ctl_fd, command)
        loop = asyncio.get_running_loop()
        ack = await loop.run_in_executor(None, os.read, self.ack_fd, 16)
        if not ack.startswith(b"ack"):
            raise RuntimeError(f"perf answered {ack!r}")

    async def disable(self) -> dict[str, int]:
        """Stops counting; returns the calls per family, and ``all`` of them."""
        await self._switch(b"disable\n")
        assert self.proc is not None and self.proc.stderr is not None
        self.proc.send_signal(2)  # SIGINT: perf prints its counts and exits
        text = (await self.proc.stderr.read()).decode()
        await self.proc.wait()
        for fd in (self.ctl_fd, self.ack_fd):
            os.close(fd)
        counts: dict[str, int] = {}
        for line in text.splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[0].isdigit():
                counts[parts[2].rsplit("sys_enter_", 1)[-1].replace("raw_syscalls:", "")] = int(
                    parts[0]
                )
        out = {"all": counts["sys_enter"]}
        for family, names in SYSCALL_FAMILIES.items():
            out[family] = sum(counts.get(name, 0) for name in names)
        return out
