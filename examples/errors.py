# examples/errors.py: what fails, and how it looks to the caller.
import asyncio

import uvloop
from wse_fast import WSE_ERROR, WseClient, WseError, WseServer


async def main():
    server = WseServer(identify=lambda req: req.accept(req.identity), port=0, timeout=0.5)

    @server.register("divide")
    def divide(conn, payload):
        if payload["by"] == 0:
            raise WseError("app.division-by-zero", {"hint": "pick another number"})
        return payload["x"] / payload["by"]

    @server.register("crash")
    def crash(conn, payload):
        raise RuntimeError("something broke")  # callers get an error_id; the log has the rest

    @server.register("ask-client")
    async def ask_client(conn, payload):
        return await conn.call("client-side-rp", payload)  # the server calls the client

    server.when.error(lambda err, conn: print("server error event:", err.code))
    await server.start()

    client = WseClient(f"ws://127.0.0.1:{server.port}", timeout=0.5, reconnect=None)
    client.register("client-side-rp", lambda payload: payload * 10)
    await client.connect("alice")

    print("10 / 4 =", await client.call("divide", {"x": 10, "by": 4}))
    print("from the client, via the server:", await client.call("ask-client", 7))
    for name, payload in [("divide", {"x": 1, "by": 0}), ("crash", None), ("missing", None)]:
        try:
            await client.call(name, payload)
        except WseError as err:
            print(f"{name}: {err.code} {err.details}")

    @server.register("slow")
    async def slow(conn, payload):
        await asyncio.sleep(5)

    try:
        await client.call("slow", timeout=0.1)
    except WseError as err:
        assert err.code == WSE_ERROR.RP_TIMEOUT
        print("slow:", err.code)
    await client.close()
    await server.close()


uvloop.run(main())
