"""Where a call's time goes in the server under one-write-per-call RPC (py-spy, native frames).

    python benches/profile_rpc.py [SECONDS] [CONNS] [IN_FLIGHT] [SERVER]
    python benches/profile_rpc.py 10 800 1 wse-fast

Runs the suite's server (default wse-fast) pinned to core 0 under the realistic RPC load of
``benches/run.py --parts rpc-realistic`` from core 1, samples it with
``py-spy record --native`` for SECONDS, and prints the share of samples whose stack holds
each part of a call's path (inclusive, so parts nest), then the hottest leaf frames. The raw
stacks are kept in /tmp/profile_rpc.txt (py-spy's collapsed format) for a flame graph.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from pathlib import Path

import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from loadgen import rpc_one_write  # noqa: E402
from run import LOADGEN_CORE, Server  # noqa: E402

RAW = Path("/tmp/profile_rpc.txt")
PY_SPY = Path(sys.executable).parent / "py-spy"

#: Parts of a call's path, each a pattern over one frame's text ("function (file:line)" for
#: Python, "symbol (library)" for native code), in the order a call goes through them.
PARTS = [
    # system calls are leaves: these three match the innermost frame only
    ("event loop waiting (epoll_wait)", r"^epoll_p?wait \(libc"),
    ("read system calls", r"^(read|recv|recvfrom|recvmsg) \(libc"),
    ("write/send system calls", r"^(write|writev|send|sendto|sendmsg) \(libc"),
    ("picows (frame parsing, its transport; wse-fast code under it included)", r"\(picows/"),
    ("wse-fast: on_ws_frame and what it calls", r"Endpoint\.on_ws_frame"),
    ("wse-fast: session (sansio)", r"sansio/"),
    ("decode (codec unpack)", r"unpack|decode_message|MessageDecoder"),
    ("RPC dispatch (rpc.py)", r"rpc\.py"),
    ("handler (the add lambda)", r"wse_fast_bench\.py"),
    ("encode (codec pack)", r"\bpack_|pack_json|encode_frame|FrameEncoder"),
    ("flush (transport/flush.py)", r"flush\.py"),
    ("metrics", r"metrics\.py"),
    (
        "asyncio tasks (Task step, call_soon)",
        r"task_step|Task\.|_run_once|call_soon|TaskStepMethWrapper",
    ),
]


def summarise(raw: str) -> None:
    stacks: list[tuple[list[str], int]] = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    total = sum(n for _, n in stacks)
    if not total:
        print("no samples")
        return
    print(f"{total} samples; share of samples whose stack holds each part (inclusive):")
    for name, pattern in PARTS:
        rx = re.compile(pattern)
        leaf_only = pattern.startswith("^")
        hit = sum(
            n
            for frames, n in stacks
            if (rx.search(frames[-1]) if leaf_only else any(rx.search(f) for f in frames))
        )
        print(f"  {name:55} {hit / total:6.1%}")
    leaves: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        leaves[re.sub(r":\d+\)", ")", frames[-1])] += n
    print("hottest leaf frames (self time):")
    for frame, n in leaves.most_common(25):
        print(f"  {n / total:6.1%}  {frame[:110]}")


async def main(seconds: float, conns: int, depth: int, name: str) -> None:
    os.sched_setaffinity(0, {LOADGEN_CORE})
    with Server(name) as server:
        gen = server.loadgen()
        spy = subprocess.Popen(
            ["taskset", "-c", str(LOADGEN_CORE), str(PY_SPY), "record", "--native", "--format",
             "raw", "-o", str(RAW), "-d", str(round(seconds)), "-p", str(server.proc.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        result, _ = await rpc_one_write(gen, conns, depth, seconds + 1)
        gen.close()
        assert spy.stderr is not None
        if spy.wait() != 0:
            raise RuntimeError(spy.stderr.read().decode())
    print(
        f"{name}, {conns} conns x {depth} in flight, each call its own write: "
        f"{result.per_cpu_second:,.0f} calls per server CPU-second while sampled"
    )
    summarise(RAW.read_text())


if __name__ == "__main__":
    argv = sys.argv[1:]
    uvloop.run(
        main(
            float(argv[0]) if argv else 10.0,
            int(argv[1]) if len(argv) > 1 else 100,
            int(argv[2]) if len(argv) > 2 else 8,
            argv[3] if len(argv) > 3 else "wse-fast",
        )
    )
