"""A TCP proxy in front of a real nats-server that can make a JetStream consumer's info
overtake the messages the consumer already sent, as a busy nats-server does now and then: the
consumer's deliveries and the API's answers leave the server from different goroutines.

Armed for a stream and a number of messages, it holds the client's next consumer-info request
for that stream until the stream's consumer has sent that many messages (so the server answers
it with nothing pending), holds those messages back, and hands the client the answer first and
the messages after it: what nats-py's KV watch sees when the race goes the unlucky way
(nats-io/nats.py#842), every time instead of one run in several.

It reads the NATS client protocol (``PUB``/``HPUB`` from the client, ``MSG``/``HMSG`` from the
server, every other operation one line) only as far as needed to find each message's end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

# The operations that carry a payload, and the sizes that end their line (the payload's; with
# headers, the headers' and the whole payload's). Between the subject and the sizes: the
# server's subscription id (MSG, HMSG), then the reply subject if there is one.
_PAYLOAD_OPS = {b"PUB": 1, b"HPUB": 2, b"MSG": 1, b"HMSG": 2}
_SID = {b"PUB": 0, b"HPUB": 0, b"MSG": 1, b"HMSG": 1}


class Frame:
    """One protocol operation: its line, its payload (with the payload's CRLF), and for a
    message its subject and reply subject."""

    __slots__ = ("raw", "reply", "subject")

    def __init__(self, raw: bytes, subject: str = "", reply: str = "") -> None:
        self.raw = raw
        self.subject = subject
        self.reply = reply


async def read_frame(reader: asyncio.StreamReader) -> Frame | None:
    """The next operation, or None at the end of the stream."""
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError:
        return None
    fields = line.split()
    op = fields[0].upper() if fields else b""
    sizes = _PAYLOAD_OPS.get(op)
    if sizes is None:
        return Frame(line)
    args = fields[1:]
    total = int(args[-1])
    payload = await reader.readexactly(total + 2)
    subject = args[0].decode()
    named = args[1 : len(args) - sizes]  # sid (server side) and the reply, if any
    reply = named[_SID[op]].decode() if len(named) > _SID[op] else ""
    return Frame(line + payload, subject, reply)


class ReorderingProxy:
    """Listens on 127.0.0.1; each connection goes on to ``upstream`` (host, port)."""

    def __init__(self, upstream_url: str) -> None:
        self._upstream = urlsplit(upstream_url)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stream: str | None = None  # armed for this stream's consumers
        self._count = 0  # messages to hold back before the consumer info goes on
        self._held: list[bytes] = []
        self._enough = asyncio.Event()
        self._answer_to: str | None = None  # the reply subject of the held consumer info
        self._release_to: asyncio.StreamWriter | None = None  # the client the answer went to
        self.done = asyncio.Event()  # the consumer info was answered before its messages

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        """The upstream URL (credentials included) with the proxy's address instead."""
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        netloc = self._upstream.netloc.rpartition("@")
        userinfo = netloc[0] + "@" if netloc[0] else ""
        return urlunsplit(self._upstream._replace(netloc=f"{userinfo}127.0.0.1:{port}"))

    def arm(self, stream: str, count: int) -> None:
        """The next consumer info of ``stream`` overtakes its consumer's first ``count``
        messages."""
        self._stream, self._count = stream, count
        self._held.clear()
        self._enough.clear()
        self._answer_to = None
        self._release_to = None
        self.done.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        host, port = self._upstream.hostname, self._upstream.port
        assert host is not None and port is not None
        server_r, server_w = await asyncio.open_connection(host, port)
        pumps = [
            self._spawn(self._pump(client_r, server_w, self._to_server)),
            self._spawn(self._pump(server_r, client_w, self._to_client)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for writer in (client_w, server_w):
            writer.close()

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        passes: Callable[[Frame, asyncio.StreamWriter], Awaitable[list[bytes]]],
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while (frame := await read_frame(reader)) is not None:
                for raw in await passes(frame, writer):
                    writer.write(raw)
                await writer.drain()

    async def _to_server(self, frame: Frame, writer: asyncio.StreamWriter) -> list[bytes]:
        if self._release_to is not None:
            # the client acted on the answer (the watch's end: UNSUB; else a PING or a write
            # of its heartbeat): what the consumer sent before the answer comes now
            release_to, self._release_to = self._release_to, None
            held, self._held = self._held, []
            release_to.write(b"".join(held))
        stream = self._stream
        if (
            stream is not None
            and self._answer_to is None
            and frame.subject.startswith(f"$JS.API.CONSUMER.INFO.{stream}.")
        ):
            # asked only once the consumer has sent them all: the answer says none pending
            await self._enough.wait()
            self._answer_to = frame.reply
        return [frame.raw]

    async def _to_client(self, frame: Frame, writer: asyncio.StreamWriter) -> list[bytes]:
        stream = self._stream
        if stream is None:
            return [frame.raw]
        if frame.reply.startswith(f"$JS.ACK.{stream}."):  # a consumer's message
            self._held.append(frame.raw)
            if len(self._held) >= self._count:
                self._enough.set()
            return []
        if self._answer_to is not None and frame.subject == self._answer_to:
            # the answer alone; the rest once the client has acted on it (disarmed)
            self._stream = None
            self._release_to = writer
            self.done.set()
        return [frame.raw]
