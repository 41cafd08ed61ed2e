# examples/challenge.py: challenge-response authentication with a shared secret.
import hashlib
import hmac
import secrets

import uvloop
from wse_fast import WSE_ERROR, WseClient, WseError, WseServer

SECRETS = {"alice": b"alice's key"}  # the server's copy of each user's key


def answer(key, nonce):
    return hmac.new(key, nonce.encode(), hashlib.sha256).hexdigest()


def challenge(identity, meta, quest, refuse):
    if identity in SECRETS:
        quest({"nonce": secrets.token_hex(16)})
    else:
        refuse()  # unknown user: no quest at all


def identify(req):
    quest, response = req.challenge.quest, req.challenge.response
    expected = answer(SECRETS[req.identity], quest["nonce"])
    if isinstance(response, str) and hmac.compare_digest(response, expected):
        req.accept(req.identity, {"hello": req.identity})
    else:
        req.refuse()


async def connect(port, user, key):
    client = WseClient(f"ws://127.0.0.1:{port}", reconnect=False)
    client.challenge(lambda quest, solve: solve(answer(key, quest["nonce"])))
    try:
        print(user, "->", await client.connect(user))
    except WseError as err:
        assert err.code == WSE_ERROR.NOT_AUTHORIZED
        print(user, "-> refused:", err.code)
    await client.close()


async def main():
    server = WseServer(identify=identify, port=0)
    server.use_challenge(challenge)
    await server.start()
    await connect(server.port, "alice", b"alice's key")
    await connect(server.port, "alice", b"a wrong key")
    await connect(server.port, "mallory", b"anything")
    await server.close()


uvloop.run(main())
