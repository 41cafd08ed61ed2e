# examples/multi_device.py: one user on several devices, and the per-user limit.
import asyncio

import uvloop
from wse_fast import WSE_REASON, WseClient, WseServer


async def main():
    server = WseServer(identify=lambda req: req.accept(req.identity), port=0, conn_per_user=2)
    server.when.connected(lambda conn: print("connected:", conn.cid, conn.meta["device"]))
    await server.start()
    url = f"ws://127.0.0.1:{server.port}"

    devices = {}
    for device in ("phone", "desktop"):
        client = devices[device] = WseClient(url, reconnect=None)
        client.channel.on("sync", lambda payload, d=device: print(d, "got", payload))
        await client.connect("alice", {"device": device})

    server.send("alice", "sync", {"unread": 3})  # both devices get it
    print("alice's devices:", [c.meta["device"] for c in server.clients["alice"].conns.values()])

    dropped = asyncio.Event()
    devices["phone"].when.closed(
        lambda code, reason: (print("phone closed:", code, reason), dropped.set())
    )
    tablet = WseClient(url, reconnect=None)
    await tablet.connect("alice", {"device": "tablet"})  # a third device: the oldest goes
    await dropped.wait()
    assert devices["phone"].status == "OFFLINE"
    print("now:", [c.meta["device"] for c in server.clients["alice"].conns.values()])
    print("reason was", WSE_REASON.CLIENTS_CONCURRENCY)
    for client in (devices["desktop"], tablet):
        await client.close()
    await server.close()


uvloop.run(main())
