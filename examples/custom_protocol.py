# examples/custom_protocol.py: MessagePack, and a protocol of your own.
import json

import uvloop
from wse_fast import MsgpackProtocol, WseClient, WseServer


class ObjectJson:
    """Each message a JSON object instead of an array; both sides must use it."""

    name = "object-json"  # the negotiated subprotocol
    internal_types = {"hi": "~obj:hi", "welcome": "~obj:welcome"}  # the rest keep defaults

    def pack(self, type, payload=None, stamp=None):
        return json.dumps({"t": type, "p": payload, "s": stamp})  # str: a text frame

    def unpack(self, data):
        message = json.loads(data)
        return message["t"], message["p"], message["s"]


async def run(protocol):
    server = WseServer(identify=lambda req: req.accept("u1"), port=0, protocol=protocol())
    server.register("echo", lambda conn, payload: payload)
    await server.start()
    client = WseClient(f"ws://127.0.0.1:{server.port}", protocol=protocol(), reconnect=None)
    await client.connect("anyone")
    print(
        protocol.name,
        "->",
        await client.call("echo", {"raw": b"\x00\x01"} if protocol is MsgpackProtocol else [1, 2]),
    )
    await client.close()
    await server.close()


async def main():
    await run(MsgpackProtocol)  # binary frames; bytes survive the round trip
    await run(ObjectJson)


uvloop.run(main())
