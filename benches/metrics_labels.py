"""What error codes chosen by a peer cost /metrics: series, page size and event-loop stalls.

A device answers each call with an error code of its own choosing, and a procedure of the
server relays its calls to the device (so the device's code is what the server answers with).
After N such calls, /metrics is scraped over HTTP three times while a ticker on the event loop
records the longest gap between its 1 ms sleeps (the stall a scrape causes to everyone on the
loop). The first scrape also imports prometheus_client.

    python benches/metrics_labels.py [N]        # N codes, 2000 by default
"""

from __future__ import annotations

import asyncio
import sys
import time

import uvloop
from wse_fast import IdentifyRequest, WseClient, WseError, WseServer


def identify(req: IdentifyRequest) -> None:
    req.accept(req.identity)


async def scrape_with_stall(port: int) -> tuple[int, float, float]:
    """One GET /metrics: the body's size, how long it took, and the longest loop stall."""
    stall = 0.0
    done = False

    async def ticker() -> None:
        nonlocal stall
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stall = max(stall, now - last)
            last = now

    ticking = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.05)
    stall = 0.0
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    body = await reader.read()
    took = time.perf_counter() - start
    writer.close()
    done = True
    await ticking
    return len(body), took, stall


async def main(codes: int) -> None:
    server = WseServer(identify, port=0)

    async def relay(conn: object, n: int) -> object:
        return await server.call("device", "work", n)

    server.register("relay", relay)
    await server.start()
    listener = await server.metrics.listen("127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    device = WseClient(f"ws://127.0.0.1:{server.port}", reconnect=None)

    def work(n: int) -> None:
        raise WseError(f"device.code-{n}")

    device.register("work", work)
    await device.connect("device")
    caller = WseClient(f"ws://127.0.0.1:{server.port}", reconnect=None)
    await caller.connect("alice")
    for first in range(0, codes, 250):
        batch = range(first, min(codes, first + 250))
        await asyncio.gather(*(caller.call("relay", n) for n in batch), return_exceptions=True)
    histograms = sum(len(stats.by_code) for stats in server.metrics.procedures.values())
    print(f"{codes} codes relayed: {histograms} histograms")
    for attempt in range(1, 4):
        size, took, stall = await scrape_with_stall(port)
        print(
            f"scrape {attempt}: {size / 1e6:.3f} MB in {took * 1000:.0f} ms, "
            f"longest loop stall {stall * 1000:.1f} ms"
        )
    await caller.close()
    await device.close()
    await server.close()
    listener.close()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
