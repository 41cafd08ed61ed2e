"""The main demo: a real wse-fast server and one user on two devices, over real sockets.

Run with ``make demo``. Everything below goes through WebSocket frames on 127.0.0.1.
"""

import asyncio

import uvloop
from wse_fast import WSE_REASON, WseClient, WseError, WseServer, codec


def identify(req):
    users = {"phone-token": "alice", "desktop-token": "alice"}
    if req.identity in users:
        req.accept(users[req.identity], {"message": f"Welcome, {users[req.identity]}!"})
    else:
        req.refuse()


async def main():
    print(f"codec: {codec.IMPLEMENTATION}")
    server = WseServer(identify=identify, port=0, conn_per_user=2)
    server.when.joined(
        lambda client, meta: print(f"[server] {client.cid} joined from {meta['device']}")
    )
    server.when.connected(
        lambda conn: print(f"[server] device connected: {conn.meta['device']} {conn.remote_addr}")
    )
    server.when.left(
        lambda client, code, reason: print(f"[server] {client.cid} left ({code} {reason})")
    )

    @server.channel.on("chat")
    def chat(conn, payload):
        print(f"[server] chat from {conn.meta['device']}: {payload['text']}")
        conn.client.send(
            "chat", {"from": conn.meta["device"], **payload}
        )  # to all of alice's devices

    @server.register("add")
    def add(conn, payload):
        return payload["a"] + payload["b"]

    await server.start()
    url = f"ws://127.0.0.1:{server.port}"
    print(f"[server] listening on {url}")

    inbox = asyncio.Queue()
    devices = {}
    for device in ("phone", "desktop"):
        client = WseClient(url, reconnect=None)
        client.channel.on("chat", lambda p, d=device: inbox.put_nowait((d, p)))
        client.register(
            "battery", lambda p, d=device: {"device": d, "level": 87 if d == "phone" else 100}
        )
        welcome = await client.connect(f"{device}-token", {"device": device})
        print(f"[{device}] {welcome['message']}")
        devices[device] = client

    devices["phone"].send("chat", {"text": "hello from my phone"})
    for _ in range(2):
        device, payload = await inbox.get()
        print(f"[{device}] received chat {payload}")

    print(f"[desktop] add(5, 3) = {await devices['desktop'].call('add', {'a': 5, 'b': 3})}")
    for conn in server.clients["alice"].conns.values():
        print(f"[server] battery of {conn.meta['device']}: {await conn.call('battery')}")

    stranger = WseClient(url, reconnect=None)
    try:
        await stranger.connect("stolen-token")
    except WseError as err:
        print(f"[stranger] refused: {err.code}")

    for client in devices.values():
        await client.close(WSE_REASON.BY_CLIENT)
    await server.close()
    print("demo finished")


uvloop.run(main())
