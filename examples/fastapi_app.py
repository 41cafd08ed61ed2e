# examples/fastapi_app.py: a WSE server mounted in a FastAPI app, beside its HTTP routes.
#
# Run:  uvicorn examples.fastapi_app:app --host 127.0.0.1 --port 8000
#  or:  python examples/fastapi_app.py --port 8000
#
# POST /login {"user": "alice", "password": "alice's password"} sets a session cookie; the
# WebSocket at /ws (subprotocol wse-default-json) accepts only connections that bring it.
# GET /health and POST /announce are ordinary routes that read the WSE server's state and
# broadcast to its users. uvicorn does the HTTP and WebSocket protocol; the WSE server needs no
# start(), and the lifespan closes it at shutdown.
from __future__ import annotations

import argparse
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import uvicorn
from fastapi import Cookie, FastAPI, HTTPException, Response
from pydantic import BaseModel
from starlette.routing import WebSocketRoute
from wse_fast import Connection, IdentifyRequest, WseServer

PASSWORDS = {"alice": b"alice's password", "bob": b"bob's password"}  # a real app keeps hashes
SESSIONS: dict[str, str] = {}  # session cookie -> user


# --8<-- [start:identify]
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
# --8<-- [end:identify]


@server.register("whoami")
def whoami(conn: Connection, payload: Any) -> dict[str, Any]:
    return {"user": conn.cid, "device": conn.meta.get("device")}


server.when.joined(lambda client, meta: print("joined:", client.cid, flush=True))
server.when.left(lambda client, code, reason: print("left:", client.cid, code, reason, flush=True))


# --8<-- [start:app]
@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await server.close()  # closes every WSE connection (1012: clients that reconnect come back)
    print("WSE server closed", flush=True)


app = FastAPI(lifespan=lifespan, routes=[WebSocketRoute("/ws", server.asgi)])
# --8<-- [end:app]


class Login(BaseModel):
    user: str
    password: str


@app.post("/login")
def login(body: Login, response: Response) -> dict[str, str]:
    expected = PASSWORDS.get(body.user, b"")
    if not (expected and secrets.compare_digest(expected, body.password.encode())):
        raise HTTPException(401, "wrong user or password")
    token = secrets.token_urlsafe(32)
    SESSIONS[token] = body.user
    response.set_cookie("session", token, httponly=True, samesite="strict")
    return {"user": body.user}


@app.get("/health")
def health() -> dict[str, Any]:
    return {"status": "ok", "users": len(server.clients), "connections": len(server.connections)}


class Announcement(BaseModel):
    text: str


@app.post("/announce")
def announce(body: Announcement, session: Annotated[str, Cookie()] = "") -> dict[str, int]:
    user = SESSIONS.get(session)
    if user is None:
        raise HTTPException(401, "log in first")
    server.broadcast("announcement", {"from": user, "text": body.text})
    return {"users": len(server.clients)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port)
