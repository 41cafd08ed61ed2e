# examples/aiohttp_app.py: a WSE server mounted in an aiohttp app, beside its HTTP routes.
#
# Run:  python examples/aiohttp_app.py --host 127.0.0.1 --port 8080
#
# POST /login {"user": "alice", "password": "alice's password"} sets a session cookie; the
# WebSocket at /ws (subprotocol wse-default-json) accepts only connections that bring it.
# GET /health and POST /announce are ordinary routes that read the WSE server's state and
# broadcast to its users. aiohttp does the HTTP and WebSocket protocol; the WSE server needs no
# start(), and on_shutdown closes it.
from __future__ import annotations

import argparse
import secrets
from typing import Any

from aiohttp import web
from wse_fast import Connection, IdentifyRequest, WseServer

PASSWORDS = {"alice": b"alice's password", "bob": b"bob's password"}  # a real app keeps hashes
SESSIONS: dict[str, str] = {}  # session cookie -> user


def identify(req: IdentifyRequest) -> None:
    """The user is whoever the session cookie names; the hi's identity is not believed."""
    handshake = req.request  # the HTTP upgrade request
    user = SESSIONS.get(handshake.cookies.get("session", "")) if handshake else None
    if user is None:
        req.refuse()  # closes with wse.not-authorized
    else:
        req.accept(user, {"hello": user})


# Behind browsers, also pass origins=["https://your.site"]: a cookie rides along with
# WebSocket upgrades that other sites' pages start (cross-site WebSocket hijacking).
server = WseServer(identify=identify, conn_per_user=4)


@server.register("whoami")
def whoami(conn: Connection, payload: Any) -> dict[str, Any]:
    return {"user": conn.cid, "device": conn.meta.get("device")}


server.when.joined(lambda client, meta: print("joined:", client.cid, flush=True))
server.when.left(lambda client, code, reason: print("left:", client.cid, code, reason, flush=True))


async def fields(request: web.Request, *names: str) -> list[str]:
    try:
        body = await request.json()
        return [str(body[name]) for name in names]
    except (ValueError, KeyError, TypeError):
        raise web.HTTPBadRequest(text=f"expected a JSON object with {', '.join(names)}") from None


async def login(request: web.Request) -> web.Response:
    user, password = await fields(request, "user", "password")
    expected = PASSWORDS.get(user, b"")
    if not (expected and secrets.compare_digest(expected, password.encode())):
        raise web.HTTPUnauthorized(text="wrong user or password")
    token = secrets.token_urlsafe(32)
    SESSIONS[token] = user
    response = web.json_response({"user": user})
    response.set_cookie("session", token, httponly=True, samesite="Strict")
    return response


async def health(request: web.Request) -> web.Response:
    return web.json_response(
        {"status": "ok", "users": len(server.clients), "connections": len(server.connections)}
    )


async def announce(request: web.Request) -> web.Response:
    user = SESSIONS.get(request.cookies.get("session", ""))
    if user is None:
        raise web.HTTPUnauthorized(text="log in first")
    [text] = await fields(request, "text")
    server.broadcast("announcement", {"from": user, "text": text})
    return web.json_response({"users": len(server.clients)})


# --8<-- [start:app]
async def close_wse(app: web.Application) -> None:
    await server.close()  # closes every WSE connection (1012: clients that reconnect come back)
    print("WSE server closed", flush=True)


app = web.Application()
app.router.add_post("/login", login)
app.router.add_get("/health", health)
app.router.add_post("/announce", announce)
app.router.add_get("/ws", server.aiohttp_handler)
app.on_shutdown.append(close_wse)  # before aiohttp waits for its handlers to return
# --8<-- [end:app]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    web.run_app(app, host=args.host, port=args.port)
