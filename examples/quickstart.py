# examples/quickstart.py: authentication, messages, broadcast, RPC and events.
import asyncio

import uvloop
from wse_fast import WseClient, WseServer


def identify(req):  # req.identity, req.meta, req.challenge, req.conn_id
    if req.identity == "secret":
        req.accept("user-123", {"message": "Welcome!"})
    else:
        req.refuse()


async def main():
    server = WseServer(identify=identify, host="127.0.0.1", port=0)

    @server.channel.on("hello")
    async def hello(conn, data):
        conn.send("welcome", {"message": "Hello back!", "you said": data["message"]})

    @server.register("add")
    async def add(conn, payload):
        return payload["a"] + payload["b"]

    server.when.joined(lambda client, meta: print("joined:", client.cid, meta))
    server.when.left(lambda client, code, reason: print("left:", client.cid, code, reason))
    await server.start()

    client = WseClient(f"ws://127.0.0.1:{server.port}")
    got, announced = asyncio.Event(), asyncio.Event()
    client.channel.on("welcome", lambda payload: (print("server says:", payload), got.set()))
    client.channel.on(
        "announcement", lambda payload: (print("announcement:", payload), announced.set())
    )

    print("welcome:", await client.connect("secret", {"device": "phone"}))
    client.send("hello", {"message": "Hello server!"})
    await got.wait()
    print("5 + 3 =", await client.call("add", {"a": 5, "b": 3}))
    server.broadcast("announcement", {"text": "to everyone"})
    server.send("user-123", "sync", {"version": 2})  # every device of one user
    await announced.wait()
    await client.close()
    await server.close()


uvloop.run(main())
