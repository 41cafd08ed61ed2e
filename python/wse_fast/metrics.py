"""What one server counts, and how Prometheus reads it.

Where traffic flows, counting is one call per event to a meter (:class:`TypeMeter`,
:class:`ProcedureMeter`) resolved once for its label and found by a dict lookup, which adds
integers (a broadcast counts once, for every connection it reaches, not once per delivery; a
call is also timed), and nothing of ``prometheus_client`` runs there. Prometheus reads the
counters when it scrapes, through a collector that also takes the gauges (connections, users)
from the server's own tables at that moment. Messages, bytes and calls are counted while
``server.metrics.counting`` is true: by default, when ``prometheus_client`` (the ``metrics``
extra) is installed. Without it, the server pays one test per message and call (no meter is
looked up or called), and only ``/metrics`` is unavailable.

No label value comes from a peer unchecked (each value is a series, and a series is memory
here and in Prometheus): received types and procedures are those the application listens to
or registered, sent types the first :data:`MAX_TYPES`, and error codes those of the library
and those the application declared (:meth:`ServerMetrics.declare_error_codes`); the rest
share one label each (:data:`UNHANDLED`, :data:`UNREGISTERED`, :data:`OTHER`). A scrape
copies the counters on the event loop (a few hundred series at most) and writes the text in
a thread, one scrape at a time however many ask at once.

``server.metrics`` (:class:`ServerMetrics`) serves ``GET /metrics`` and ``GET /health``:
``await server.metrics.listen(host, port)`` on a port of its own (what
``wse-fast serve --metrics-port`` does), or mounted beside the WebSocket route as
``server.metrics.asgi`` or ``server.metrics.aiohttp_handler``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sized
from typing import TYPE_CHECKING, Any, Protocol

from .constants import WSE_ERROR
from .sansio import session as ev

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client.registry import Collector

    from .cluster.broker import Broker
    from .protocols import InternalTypes

log = logging.getLogger("wse_fast.metrics")

#: Upper bounds (seconds) of the RPC latency histogram's buckets: from a plain function's
#: tenth of a millisecond to a coroutine that waits on the network.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: The ``type`` of received messages that no handler takes: the types a client sends are its
#: own choice, and a label per type would let it grow the series without end.
UNHANDLED = "(unhandled)"
#: The ``procedure`` of calls to names that are not registered, for the same reason.
UNREGISTERED = "(unregistered)"
#: The ``type`` of messages beyond the first :data:`MAX_TYPES` types, the ``procedure`` of
#: calls beyond the first :data:`MAX_TYPES` procedures, and the ``code`` of calls answered
#: with an error code that was not declared (or past :data:`MAX_CALL_SERIES`).
OTHER = "(other)"
#: Types received, types sent and procedures that get a label of their own, each: an
#: application that sends a type per user (or relays the type a client chose) would otherwise
#: make a series per user.
MAX_TYPES = 256
#: Error codes an application may declare (:meth:`ServerMetrics.declare_error_codes`).
MAX_ERROR_CODES = 256
#: (procedure, code) histograms in all, beyond those of the ``ok`` and :data:`OTHER` codes:
#: the last bound, whatever the application declared.
MAX_CALL_SERIES = 1024
#: The codes this library answers calls with, labels of their own from the start: those of
#: :class:`~wse_fast.WSE_ERROR`, and the cluster's (``wse_fast.cluster.nats_cluster``'s
#: ``CLUSTER_UNAVAILABLE`` and ``CLUSTER_LOST``, spelt out here: that module needs nats-py).
BUILTIN_ERROR_CODES = frozenset(
    {
        *(value for name, value in vars(WSE_ERROR).items() if name.isupper()),
        "wse.cluster.unavailable",
        "wse.cluster.lost",
    }
)
#: The result code of a call answered with a result.
OK = "ok"
#: Close codes that mean a broken protocol (RFC 6455 §7.4.1): framing, data that is not what
#: its frame says, a message over the size limit.
PROTOCOL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1009})

#: The label of messages the server receives that are not a message or a call, by the class
#: of what the session made of them (wire types are filled in from the server's protocol).
_EVENT_LABELS: dict[object, str] = {
    ev.Violation: "(invalid)",
    ev.TooBig: "(too-big)",
    ev.Ignored: "(ignored)",
}
_CONTENT_TYPE_JSON = "application/json"
_NEEDS_EXTRA = (
    b"/metrics needs prometheus-client: pip install 'wse-fast[metrics]'\n",
    "text/plain; charset=utf-8",
)
#: What an HTTP request to the metrics listener may send before its request is understood.
_REQUEST_MAX = 8192
_REQUEST_TIMEOUT = 10.0


def prometheus_installed() -> bool:
    """Whether ``prometheus_client`` can be imported (it is not imported here)."""
    try:
        return importlib.util.find_spec("prometheus_client") is not None
    except (ImportError, ValueError):  # ValueError: blocked in sys.modules
        return False


_PROMETHEUS_INSTALLED = prometheus_installed()


class Histogram:
    """Counts per bucket of :data:`LATENCY_BUCKETS` (one more for the rest), and their sum.
    A time equal to a bound is counted in that bound's bucket: Prometheus's ``le`` (at most),
    hence ``bisect_left``."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds


class TypeMeter:
    """The counters of one label of ``wse_messages_received`` (a message type, a procedure,
    or what the session made of a message) or of ``wse_messages_sent`` (a message type):
    ``messages`` and ``bytes``, plain integers that it adds itself. It reads as the
    ``[messages, bytes]`` pair it stands for (``meter[0]``, ``meter[1]``, unpacking).

    Two slots, not a list subclass: CPython specialises an attribute of a slot, and a
    subscript only on a list itself (a subclass costs about 100 ns more per counted call)."""

    __slots__ = ("bytes", "messages")

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0

    def received(self, data: str | bytes | bytearray | memoryview) -> None:
        """One message received: ``data``, a frame's payload as the transport handed it (a
        mounted transport hands text as ``str``: counted as its UTF-8 encoding)."""
        self.messages += 1
        self.bytes += (
            len(data) if data.__class__ is not str or data.isascii() else len(data.encode())  # type: ignore[union-attr]
        )

    def sent(self, size: int, connections: int = 1) -> None:
        """``connections`` messages of ``size`` bytes each, queued (a broadcast's one frame)."""
        self.messages += connections
        self.bytes += size * connections

    def __iter__(self) -> Iterator[int]:
        return iter((self.messages, self.bytes))

    def __getitem__(self, index: int) -> int:
        return (self.messages, self.bytes)[index]

    def __setitem__(self, index: int, value: int) -> None:
        if index == 0:
            self.messages = value
        elif index == 1:
            self.bytes = value
        else:
            raise IndexError(index)

    def __repr__(self) -> str:
        return f"[{self.messages}, {self.bytes}]"


class ErrorLabels:
    """Which error codes get a label of their own (``code`` of ``wse_rpc_duration_seconds``),
    and the histograms still allowed under one: shared by a server's
    procedures' meters, since :data:`MAX_CALL_SERIES` bounds them all together."""

    __slots__ = ("codes", "series_left")

    def __init__(self) -> None:
        self.codes = BUILTIN_ERROR_CODES  # and those declared: see declare_error_codes
        self.series_left = MAX_CALL_SERIES  # beyond those of ok and OTHER

    def label(self, code: object) -> str:
        """The label of an answer's error ``code``: itself if it is one of :attr:`codes`."""
        return code if isinstance(code, str) and code in self.codes else OTHER


class ProcedureMeter:
    """What one procedure's calls count (``procedure`` of ``wse_rpc_duration_seconds``),
    resolved once for the procedure and told each event by one call: :meth:`called`,
    :meth:`answered`, :meth:`failed`, or :meth:`served` for a call read and answered at once.

    ``by_code``: a histogram of answer times by result code (``ok`` for a result, else the
    label of the error code answered: see :class:`ErrorLabels`); ``received``: the
    procedure's :class:`TypeMeter` in :attr:`ServerMetrics.received`; ``answers``: the response
    type's in :attr:`ServerMetrics.sent` (the same objects: one look finds all that a call
    counts)."""

    __slots__ = ("answers", "by_code", "errors", "ok", "received")

    def __init__(self, received: TypeMeter, answers: TypeMeter, errors: ErrorLabels) -> None:
        self.ok = Histogram()
        self.by_code: dict[str, Histogram] = {OK: self.ok}
        self.received = received
        self.answers = answers
        self.errors = errors

    def called(self, data: str | bytes | bytearray | memoryview) -> None:
        """A call received: ``data``, its frame's payload (see :meth:`TypeMeter.received`)."""
        cell = self.received  # TypeMeter.received, inlined: once per call
        cell.messages += 1
        cell.bytes += (
            len(data) if data.__class__ is not str or data.isascii() else len(data.encode())  # type: ignore[union-attr]
        )

    def answered(self, seconds: float) -> None:
        """A call answered with a result ``seconds`` after it was read."""
        ok = self.ok  # Histogram.observe, inlined: once per call
        ok.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        ok.total += seconds

    def served(
        self, data: str | bytes | bytearray | memoryview, seconds: float, answer_size: int
    ) -> None:
        """A call read and answered with a result in one step (the codec's): received as
        ``data``, answered after ``seconds`` with a frame of ``answer_size`` bytes."""
        ok = self.ok  # answered, received and sent, inlined: the hottest path of all
        ok.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        ok.total += seconds
        cell = self.received
        cell.messages += 1
        cell.bytes += (
            len(data) if data.__class__ is not str or data.isascii() else len(data.encode())  # type: ignore[union-attr]
        )
        cell = self.answers
        cell.messages += 1
        cell.bytes += answer_size

    def failed(self, code: object, seconds: float) -> None:
        """A call answered with error ``code`` ``seconds`` after it was read: counted under
        ``code`` when it is a declared or built-in code, else under :data:`OTHER` (and under
        :data:`OTHER` too once the server has :data:`MAX_CALL_SERIES` such histograms)."""
        errors = self.errors
        label = errors.label(code)
        histogram = self.by_code.get(label)
        if histogram is None:
            if label != OTHER:
                if errors.series_left > 0:
                    errors.series_left -= 1
                else:
                    label = OTHER
                    histogram = self.by_code.get(label)
            if histogram is None:
                histogram = self.by_code[label] = Histogram()
        histogram.observe(seconds)


class HandlerNames(Protocol):
    """Which message types have handlers (the server's ``channel``)."""

    def listeners(self, type: str) -> tuple[Callable[..., Any], ...]: ...


class ProcedureNames(Protocol):
    """Which procedures are registered (the server's ``procedures``)."""

    @property
    def handlers(self) -> Mapping[str, Callable[..., Any]]: ...


class MetricsSource(Protocol):
    """What :class:`ServerMetrics` reads of the node it counts for, when asked (labels,
    gauges, ``/health``): the node's own tables, never written here."""

    @property
    def channel(self) -> HandlerNames: ...

    @property
    def procedures(self) -> ProcedureNames: ...

    @property
    def protocol_types(self) -> InternalTypes: ...

    @property
    def connections(self) -> Sized: ...

    @property
    def clients(self) -> Sized: ...

    @property
    def cluster(self) -> Broker | None: ...

    @property
    def closing(self) -> bool: ...

    @property
    def tasks_running(self) -> int: ...

    def accepted_connections(self) -> int: ...

    async def attach(self) -> None: ...


class ServerMetrics:
    """The counters of one :class:`~wse_fast.WseServer` (``server.metrics``), and its
    ``/metrics`` and ``/health`` endpoints.

    The server's parts count through meters, each resolved once for its label and kept in
    a table here (the table is the cache: a dict lookup finds it), and told each event by one
    call; the counters are plain integers, read only when Prometheus scrapes:

    - ``received``: message type (or the session's event class) to its :class:`TypeMeter`
      (``[messages, bytes]``); calls are counted under their procedure's name;
    - ``sent``: message type to its :class:`TypeMeter`, a message counted once per connection
      it was queued for;
    - ``procedures``: procedure name (None: any unregistered name) to its
      :class:`ProcedureMeter` (calls received, answer times by result code);
    - ``refused``: close reason to connections refused before they were accepted;
    - ``protocol_errors``: close code to connections closed for a broken protocol;
    - ``slow_consumers``, ``opened``, ``accepted``: connections.

    ``counting``: whether messages, bytes and calls (the first three) are counted; by default
    when ``prometheus_client`` is installed. The application may set it either way (a
    connection's calls already under way when it is set are not timed).

    ``worker``: which worker of a group this process is, shown as ``"worker"`` in ``/health``;
    ``wse-fast serve --workers`` sets it to the worker's ``slot`` (0 .. N-1), ``restarts``
    (how many processes held the slot before this one) and ``pid``. None: not a worker.
    """

    __slots__ = (
        "_asgi",
        "_collector",
        "_errors",
        "_registry",
        "_scrape",
        "_server",
        "accepted",
        "counting",
        "opened",
        "procedures",
        "protocol_errors",
        "received",
        "refused",
        "sent",
        "slow_consumers",
        "worker",
    )

    def __init__(self, server: MetricsSource) -> None:
        self._server = server
        self.counting = _PROMETHEUS_INSTALLED
        self.received: dict[object, TypeMeter] = {}
        self.sent: dict[str, TypeMeter] = {}
        self.procedures: dict[str | None, ProcedureMeter] = {}
        self.refused: dict[str, int] = {}
        self.protocol_errors: dict[int, int] = {}
        self.slow_consumers = 0
        self.opened = 0
        self.accepted = 0
        self._errors = ErrorLabels()  # the procedures' meters share it
        self._registry: Any = None  # prometheus_client's CollectorRegistry, made on first use
        self._collector: Collector | None = None
        self._scrape: asyncio.Future[tuple[bytes, str]] | None = None  # the text being written
        self._asgi: MetricsAsgiApp | None = None
        self.worker: dict[str, int] | None = None

    # ---- what the application says ---------------------------------------------------------

    @property
    def error_codes(self) -> frozenset[str]:
        """The error codes counted under their own label (``code`` of
        ``wse_rpc_duration_seconds``): :data:`BUILTIN_ERROR_CODES` and those declared."""
        return self._errors.codes

    def declare_error_codes(self, *codes: str) -> None:
        """Counts calls answered with one of ``codes`` under that code, not :data:`OTHER`:
        the codes the application's procedures raise (``WseError("app.out-of-stock")``).
        A code it did not declare may come from elsewhere (a device's answer relayed, a
        client's payload) and is counted as :data:`OTHER`. At most :data:`MAX_ERROR_CODES`
        codes in all (ValueError past that, or for a code that is not a string or is ``ok``
        or :data:`OTHER`)."""
        for code in codes:
            if not isinstance(code, str) or code in (OK, OTHER):
                raise ValueError(f"not an error code to count: {code!r}")
        known = self._errors.codes
        declared = known - BUILTIN_ERROR_CODES
        added = frozenset(codes) - known
        if len(declared) + len(added) > MAX_ERROR_CODES:
            raise ValueError(f"at most {MAX_ERROR_CODES} error codes may be declared")
        self._errors.codes = known | added

    # ---- where a key is seen for the first time (off the hot paths) -------------------------

    def received_cell(self, key: object, kind: type) -> TypeMeter:
        """The meter of received messages under ``key``: a message's type, a call's
        procedure, or else the ``kind`` of event the session made of it. A type that no
        listener takes, or a procedure that is not registered, is counted as
        :data:`UNHANDLED`, and is not remembered."""
        server = self._server
        if isinstance(key, str) and (
            (kind is ev.Message and not server.channel.listeners(key))
            or (kind is ev.Call and key not in server.procedures.handlers)
        ):
            key = UNHANDLED
        return _cell(self.received, key)

    def sent_cell(self, type: str) -> TypeMeter:
        """The meter of sent messages of ``type`` (:data:`OTHER` past :data:`MAX_TYPES`)."""
        return _cell(self.sent, type)

    def procedure(self, name: str) -> ProcedureMeter:
        """The meter of calls to ``name`` (shared by every unregistered name, and by the
        registered ones past the first :data:`MAX_TYPES`, as :data:`OTHER`)."""
        key: str | None = name if name in self._server.procedures.handlers else None
        meter = self.procedures.get(key)
        if meter is None:
            if key is not None and len(self.procedures) >= MAX_TYPES:
                key = OTHER
                meter = self.procedures.get(key)
                received = _cell(self.received, OTHER)
            else:
                received = self.received_cell(name, ev.Call)
            if meter is None:
                answers = self.sent_cell(self._server.protocol_types.response)
                meter = self.procedures[key] = ProcedureMeter(received, answers, self._errors)
        return meter

    def count_error(self, meter: ProcedureMeter, code: object, seconds: float) -> None:
        """A call to ``meter``'s procedure answered with error ``code`` after ``seconds``
        (:meth:`ProcedureMeter.failed`)."""
        meter.failed(code, seconds)

    def count_sent(self, type: str, size: int, connections: int = 1) -> None:
        """``connections`` messages of ``type``, ``size`` bytes each, queued."""
        (self.sent.get(type) or self.sent_cell(type)).sent(size, connections)

    def count_refused(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def count_protocol_error(self, code: int) -> None:
        self.protocol_errors[code] = self.protocol_errors.get(code, 0) + 1

    # ---- reading -----------------------------------------------------------------------------

    def received_totals(self) -> dict[str, tuple[int, int]]:
        """Received messages and bytes by label (wire types named by the server's protocol)."""
        types = self._server.protocol_types
        labels: dict[object, str] = {
            **_EVENT_LABELS,
            ev.Hello: types.hi,
            ev.ChallengeAnswer: types.challenge,
            ev.Response: types.response,
            ev.ResponseError: types.response_error,
        }
        totals: dict[str, tuple[int, int]] = {}
        for key, (count, size) in list(self.received.items()):
            label = key if isinstance(key, str) else labels.get(key, repr(key))
            was = totals.get(label, (0, 0))
            totals[label] = (was[0] + count, was[1] + size)
        return totals

    def calls(self) -> Iterator[tuple[str, str, Histogram]]:
        """(procedure, code, histogram) of every answered call so far."""
        for name, stats in list(self.procedures.items()):
            for code, histogram in list(stats.by_code.items()):
                if sum(histogram.counts):
                    yield UNREGISTERED if name is None else name, code, histogram

    def collector(self) -> Collector:
        """A ``prometheus_client`` collector of this server's series (needs the ``metrics``
        extra): to register in a registry of the application's own, e.g.
        ``prometheus_client.REGISTRY.register(server.metrics.collector())``. The endpoints
        here need none of that."""
        return _make_collector(self, self._server)

    @property
    def registry(self) -> Any:
        """A ``prometheus_client.CollectorRegistry`` holding this server's collector only."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry(auto_describe=True)
            registry.register(self.collector())
            self._registry = registry
        return self._registry

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text of ``/metrics`` and its content type: this server's series, then
        those of ``prometheus_client``'s default registry (the process's CPU, memory, file
        descriptors and garbage collector, and any metrics the application registered there).
        Made on the calling thread (:meth:`scrape` makes it off the event loop). Raises
        ImportError without ``prometheus_client``."""
        return _write_text(self._families())

    async def scrape(self) -> tuple[bytes, str]:
        """What :meth:`render` returns, without holding the event loop: this server's series
        are collected on the loop (copies of bounded counters), and the text, with the default
        registry's series, is written in the loop's default executor. Scrapes that come while
        one is being written share it. Raises ImportError without ``prometheus_client``."""
        loop = asyncio.get_running_loop()
        if self._collector is None:  # the first scrape: prometheus_client is imported off it
            await loop.run_in_executor(None, importlib.import_module, "prometheus_client.core")
        running = self._scrape
        if running is None:
            families = self._families()  # on the loop: the counters change only there
            running = self._scrape = loop.run_in_executor(None, _write_text, families)
            running.add_done_callback(self._scraped)
        # shielded: a scraper that goes away does not cancel the text the others wait for
        return await asyncio.shield(running)

    def _scraped(self, future: asyncio.Future[tuple[bytes, str]]) -> None:
        self._scrape = None

    def _families(self) -> list[Any]:
        """This server's metric families at this moment (needs ``prometheus_client``)."""
        if self._collector is None:
            self._collector = self.collector()
        return list(self._collector.collect())

    async def health(self) -> tuple[int, dict[str, Any]]:
        """``/health``: 200 while the server serves; 503 once it is closing, or while its
        cluster link is down. A mounted server links to its cluster on its first connection or
        its first health check, whichever comes first."""
        server = self._server
        if server.closing:
            return 503, {"status": "closing"}
        try:
            await server.attach()
        except Exception as exc:
            return 503, {"status": "cluster unavailable", "error": repr(exc)}
        if server.closing:  # closed while the cluster link was being made
            return 503, {"status": "closing"}
        report: dict[str, Any] = {
            "status": "ok",
            "connections": len(server.connections),
            "users": len(server.clients),
        }
        if self.worker is not None:
            report["worker"] = self.worker
        cluster = server.cluster
        if cluster is not None:
            report["cluster"] = {"node": cluster.node, "healthy": cluster.healthy}
            if not cluster.healthy:
                report["status"] = "cluster down"
                return 503, report
        return 200, report

    async def respond(self, path: str) -> tuple[int, bytes, str]:
        """The answer to ``GET path``: status, body and content type. ``/metrics`` and
        ``/health`` are told by the end of the path, whatever the application mounts them
        under."""
        if path.endswith("/metrics"):
            try:
                body, content_type = await self.scrape()
            except ImportError:
                return 501, *_NEEDS_EXTRA
            return 200, body, content_type
        if path.endswith("/health"):
            status, report = await self.health()
            return status, json.dumps(report).encode() + b"\n", _CONTENT_TYPE_JSON
        return 404, b"not found: /metrics or /health\n", "text/plain; charset=utf-8"

    # ---- serving -------------------------------------------------------------------------------

    @property
    def asgi(self) -> MetricsAsgiApp:
        """``/metrics`` and ``/health`` as an ASGI 3 application, to route beside the WebSocket
        (Starlette: ``Route("/metrics", server.metrics.asgi)`` and the same for
        ``/health``; or ``Mount("/ops", server.metrics.asgi)``)."""
        if self._asgi is None:
            self._asgi = MetricsAsgiApp(self)
        return self._asgi

    async def aiohttp_handler(self, request: web.Request) -> web.Response:
        """``/metrics`` and ``/health`` as an aiohttp handler:
        ``app.router.add_get("/metrics", server.metrics.aiohttp_handler)``, and the same for
        ``/health``."""
        from aiohttp import web

        status, body, content_type = await self.respond(request.path)
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
        """Serves ``GET /metrics`` and ``GET /health`` on ``host:port`` (HTTP/1.1, one request
        per connection); the bound port is ``server.sockets[0].getsockname()[1]``. Closing the
        returned server stops it."""
        return await asyncio.start_server(self._serve_http, host, port, limit=_REQUEST_MAX)

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            request_line = head.split(b"\r\n", 1)[0].split(b" ")
            if len(request_line) != 3 or not request_line[2].startswith(b"HTTP/1."):
                status, body, content_type = 400, b"bad request\n", "text/plain; charset=utf-8"
            elif request_line[0] not in (b"GET", b"HEAD"):
                status, body, content_type = 405, b"GET only\n", "text/plain; charset=utf-8"
            else:
                path = request_line[1].split(b"?", 1)[0].decode("latin-1")
                status, body, content_type = await self.respond(path)
            header = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            writer.write(header if request_line[0] == b"HEAD" else header + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    501: "Not Implemented",
    503: "Service Unavailable",
}

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class MetricsAsgiApp:
    """``/metrics`` and ``/health`` of one server as an ASGI 3 application."""

    __slots__ = ("_metrics",)

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served alone: nothing to start or stop
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            status, body, content_type = 405, b"GET only\n", "text/plain; charset=utf-8"
        else:
            status, body, content_type = await self._metrics.respond(scope["path"])
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )


def _cell(table: dict[Any, TypeMeter], key: object) -> TypeMeter:
    """The meter of ``key`` in ``table``: made on first use, but shared as :data:`OTHER` once
    the table holds :data:`MAX_TYPES` keys."""
    cell = table.get(key)
    if cell is None:
        if len(table) >= MAX_TYPES:
            key = OTHER
            cell = table.get(key)
        if cell is None:
            cell = table[key] = TypeMeter()
    return cell


def _write_text(families: list[Any]) -> tuple[bytes, str]:
    """The text of ``/metrics``: ``families`` (one server's, collected), then the default
    registry's; safe on any thread (``prometheus_client`` locks its own metrics)."""
    from prometheus_client import REGISTRY, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
    from prometheus_client.registry import Collector

    class Collected(Collector):
        def collect(self) -> Iterator[Any]:
            return iter(families)

    return generate_latest(Collected()) + generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def _make_collector(metrics: ServerMetrics, server: MetricsSource) -> Collector:
    """The collector of one server's series, built on ``prometheus_client`` (imported here:
    it is optional)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.registry import Collector

    bounds = [repr(b) for b in LATENCY_BUCKETS] + ["+Inf"]

    class ServerCollector(Collector):
        def collect(self) -> Iterator[Any]:
            total = len(server.connections)
            accepted = server.accepted_connections()
            yield GaugeMetricFamily(
                "wse_connections", "Open WebSocket connections, accepted (authenticated)", accepted
            )
            yield GaugeMetricFamily(
                "wse_connections_authenticating",
                "Open WebSocket connections not accepted yet (authenticating)",
                max(0, total - accepted),
            )
            yield GaugeMetricFamily(
                "wse_users", "Users with at least one open connection here", len(server.clients)
            )
            yield GaugeMetricFamily(
                "wse_handler_tasks",
                "Handler tasks running (coroutine handlers and procedures)",
                server.tasks_running,
            )
            yield CounterMetricFamily(
                "wse_connections_opened", "WebSocket connections opened", metrics.opened
            )
            yield CounterMetricFamily(
                "wse_connections_accepted", "Connections accepted as a user", metrics.accepted
            )
            received_messages = CounterMetricFamily(
                "wse_messages_received",
                "Messages received, by type (a call: its procedure)",
                labels=["type"],
            )
            received_bytes = CounterMetricFamily(
                "wse_received_bytes",
                "Bytes of messages received (payload of the WebSocket message), by type",
                labels=["type"],
            )
            for label, (count, size) in metrics.received_totals().items():
                received_messages.add_metric([label], count)
                received_bytes.add_metric([label], size)
            yield received_messages
            yield received_bytes
            sent_messages = CounterMetricFamily(
                "wse_messages_sent",
                "Messages sent, by type, once per connection they were queued for",
                labels=["type"],
            )
            sent_bytes = CounterMetricFamily(
                "wse_sent_bytes",
                "Bytes of frames sent (WebSocket header included), by type",
                labels=["type"],
            )
            for type, (count, size) in list(metrics.sent.items()):
                sent_messages.add_metric([type], count)
                sent_bytes.add_metric([type], size)
            yield sent_messages
            yield sent_bytes
            latency = HistogramMetricFamily(
                "wse_rpc_duration_seconds",
                "Calls answered by this server: from the call read to its answer queued, by "
                "procedure and result code (ok, or the error code sent); _count counts calls",
                labels=["procedure", "code"],
            )
            for name, code, histogram in metrics.calls():
                cumulative, buckets = 0, []
                for bound, count in zip(bounds, histogram.counts, strict=True):
                    cumulative += count
                    buckets.append((bound, float(cumulative)))
                latency.add_metric([name, code], buckets, histogram.total)
            yield latency
            refused = CounterMetricFamily(
                "wse_auth_refusals",
                "Connections refused before they were accepted, by close reason",
                labels=["reason"],
            )
            for reason, count in list(metrics.refused.items()):
                refused.add_metric([reason], count)
            yield refused
            yield CounterMetricFamily(
                "wse_slow_consumer_drops",
                "Connections dropped for reading slower than they were sent to",
                metrics.slow_consumers,
            )
            protocol = CounterMetricFamily(
                "wse_protocol_errors",
                "Connections closed for a broken protocol, by close code",
                labels=["code"],
            )
            for close_code, count in sorted(metrics.protocol_errors.items()):
                protocol.add_metric([str(close_code)], count)
            yield protocol
            cluster = server.cluster
            if cluster is not None:
                yield GaugeMetricFamily(
                    "wse_cluster_up",
                    "1 while the link to the cluster (NATS) is healthy, else 0",
                    1 if cluster.healthy else 0,
                )
                yield CounterMetricFamily(
                    "wse_cluster_lost_messages",
                    "Messages for other nodes lost because the cluster link was down or behind",
                    cluster.lost,
                )
                yield CounterMetricFamily(
                    "wse_cluster_refused_frames",
                    "Messages from NATS not written to clients: not one well-formed server frame",
                    cluster.refused,
                )

    return ServerCollector()
