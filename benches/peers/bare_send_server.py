"""The kernel's price: one blocking socket.send() per delivery, nothing in between.

Speaks just enough WebSocket for the load generator (upgrade, welcome, one command) and
then writes the prebuilt frame to every socket in a plain loop.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from wire import PROTOCOL, WELCOME, server_frame, tick_body

RESPONSE = (
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    f"Sec-WebSocket-Protocol: {PROTOCOL}\r\n\r\n"
).encode()


def unmask(frame: bytes) -> bytes:
    length = frame[1] & 0x7F
    at = 2 if length < 126 else 4
    key = frame[at : at + 4]
    body = frame[at + 4 :]
    return bytes(b ^ key[i % 4] for i, b in enumerate(body))


def main(port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=4096)
    print("READY", listener.getsockname()[1], flush=True)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    state: dict[socket.socket, int] = {}
    ready: list[socket.socket] = []
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                conn, _ = listener.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                selector.register(conn, selectors.EVENT_READ)
                state[conn] = 0
                continue
            data = sock.recv(65536)
            if not data:
                selector.unregister(sock)
                state.pop(sock, None)
                if sock in ready:
                    ready.remove(sock)
                sock.close()
            elif state[sock] == 0:  # the upgrade request
                sock.sendall(RESPONSE)
                state[sock] = 1
            elif state[sock] == 1:  # the hi
                sock.sendall(server_frame(WELCOME))
                state[sock] = 2
                ready.append(sock)
            else:  # the command
                _, cmd, _ = json.loads(unmask(data))
                frame = server_frame(tick_body(cmd["size"]))
                sends = [s.send for s in ready]
                for _ in range(cmd["count"]):
                    for send in sends:
                        send(frame)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
