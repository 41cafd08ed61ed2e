"""The kernel's price: one blocking socket.send() per delivery, nothing in between.

Speaks just enough WebSocket for the load generator (upgrade, welcome, one command) and
then writes the prebuilt frame to every socket in a plain loop.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time
from collections.abc import Callable

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
                sends = [s.send for s in ready]
                if cmd["mode"] == "rate":  # fixed schedule; the payload starts with the send time
                    rate_loop(sends, cmd["count"], cmd["size"], cmd["rate"])
                    continue
                frame = server_frame(tick_body(cmd["size"]))
                for _ in range(cmd["count"]):
                    for send in sends:
                        send(frame)


def rate_loop(sends: list[Callable[[bytes], int]], count: int, size: int, rate: float) -> None:
    filler = b"x" * (size - 2 - 19)
    interval, due = 1.0 / rate, time.monotonic()
    for _ in range(count):
        frame = server_frame(b'["tick","%019d%s",null]' % (time.monotonic_ns(), filler))
        for send in sends:
            send(frame)
        due += interval
        time.sleep(max(0.0, due - time.monotonic()))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
