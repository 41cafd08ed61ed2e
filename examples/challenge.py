# examples/challenge.py: challenge-response authentication with a shared key (HMAC-SHA256).
import uvloop
from wse_fast import WSE_ERROR, WseClient, WseError, WseServer
from wse_fast.hmac_challenge import HmacChallenge, hmac_solver

KEYS = {"alice": b"alice's key"}  # the server's copy of each user's key
auth = HmacChallenge(KEYS.get)  # single-use nonces, expiry, no user enumeration


async def identify(req):
    if await auth.verify(req):
        req.accept(req.identity, {"hello": req.identity})
    else:
        req.refuse()


async def connect(port, user, key):
    client = WseClient(f"ws://127.0.0.1:{port}", reconnect=None)
    client.challenge(hmac_solver(key))
    try:
        print(user, "->", await client.connect(user))
    except WseError as err:
        assert err.code == WSE_ERROR.NOT_AUTHORIZED
        print(user, "-> refused:", err.code)
    await client.close()


async def main():
    server = WseServer(identify=identify, port=0)
    server.use_challenge(auth)
    await server.start()
    await connect(server.port, "alice", b"alice's key")
    await connect(server.port, "alice", b"a wrong key")
    await connect(server.port, "mallory", b"anything")  # gets a quest too, then is refused
    await server.close()


uvloop.run(main())
