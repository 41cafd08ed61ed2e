"""metrics.py's meters, without a socket: what one call to a meter counts, where a latency
falls, how an answer's error code is labelled, and the bounds of the labels (a server made
but never started is the meters' source of names)."""

from __future__ import annotations

import pytest
from wse_fast import WseServer
from wse_fast.metrics import (
    LATENCY_BUCKETS,
    MAX_CALL_SERIES,
    MAX_TYPES,
    OK,
    OTHER,
    UNHANDLED,
    UNREGISTERED,
    ErrorLabels,
    ProcedureMeter,
    TypeMeter,
)
from wse_fast.sansio import session as ev


def meter(errors: ErrorLabels | None = None) -> ProcedureMeter:
    return ProcedureMeter(TypeMeter(), TypeMeter(), errors or ErrorLabels())


def bucket(seconds: float) -> int:
    """The index of the first bound a latency of ``seconds`` is at most (``le``)."""
    return next(
        (i for i, bound in enumerate(LATENCY_BUCKETS) if seconds <= bound), len(LATENCY_BUCKETS)
    )


def test_a_type_meter_counts_messages_and_their_bytes() -> None:
    counted = TypeMeter()
    assert list(counted) == [0, 0] and (counted.messages, counted.bytes) == (0, 0)
    counted.received(b"12345")
    counted.received(memoryview(b"123"))
    counted.received("abc")  # text from a mounted transport: its UTF-8 encoding
    counted.received("é€")  # 2 + 3 bytes, 2 characters
    assert list(counted) == [4, 5 + 3 + 3 + 5]
    sent = TypeMeter()
    sent.sent(10)
    sent.sent(64, connections=1000)  # a broadcast: one frame, counted for each connection
    assert (sent.messages, sent.bytes) == (1001, 10 + 64_000)
    assert (sent[0], sent[1], repr(sent)) == (1001, 64_010, "[1001, 64010]")


@pytest.mark.parametrize("seconds", [0.00005, 0.0001, 0.0003, 0.001, 0.0011, 29.0, 30.0, 31.0])
def test_an_answer_falls_in_the_first_bucket_it_is_at_most(seconds: float) -> None:
    # Prometheus's buckets are cumulative "le": a latency equal to a bound is within it
    timed = meter()
    timed.answered(seconds)
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    counts[bucket(seconds)] = 1
    assert timed.ok.counts == counts and timed.ok.total == seconds
    assert timed.by_code == {OK: timed.ok}


def test_a_call_served_at_once_counts_its_call_its_time_and_its_answer() -> None:
    served = meter()
    served.served(b'["add",{"a":1},"s1"]', 0.0002, 40)
    served.served("é", 0.0002, 10)
    assert list(served.received) == [2, 20 + 2] and list(served.answers) == [2, 50]
    assert sum(served.ok.counts) == 2 and served.ok.counts[bucket(0.0002)] == 2
    called = meter()
    called.called(b"abc")
    assert list(called.received) == [1, 3] and sum(called.ok.counts) == 0  # timed when answered


def test_an_error_is_counted_under_its_code_only_when_it_is_known() -> None:
    errors = ErrorLabels()
    errors.codes |= {"app.out-of-stock"}
    failed = meter(errors)
    failed.failed("app.out-of-stock", 0.01)
    failed.failed("wse.server.rp.failed", 0.01)  # the library's own
    failed.failed("device.secret-code", 0.02)  # relayed from elsewhere: not a label
    failed.failed({"code": "x"}, 0.03)  # not a string
    failed.failed(None, 0.04)
    assert {code: sum(h.counts) for code, h in failed.by_code.items()} == {
        OK: 0,
        "app.out-of-stock": 1,
        "wse.server.rp.failed": 1,
        OTHER: 3,
    }
    assert failed.by_code[OTHER].total == pytest.approx(0.09)
    assert errors.series_left == MAX_CALL_SERIES - 2


def test_the_histograms_of_error_codes_are_bounded_across_procedures() -> None:
    errors = ErrorLabels()
    errors.codes |= {"app.a", "app.b"}
    errors.series_left = 3  # as if the server had made all but three
    first, second = meter(errors), meter(errors)
    first.failed("app.a", 0.001)
    first.failed("app.b", 0.001)
    first.failed("app.a", 0.001)  # its histogram exists: no new series
    second.failed("app.a", 0.001)  # the last one
    second.failed("app.b", 0.001)  # none left: counted as OTHER
    assert set(first.by_code) == {OK, "app.a", "app.b"}
    assert set(second.by_code) == {OK, "app.a", OTHER}
    assert errors.series_left == 0


async def test_a_servers_meters_are_resolved_once_and_bounded() -> None:
    server = WseServer(lambda request: request.accept(request.identity), port=0)
    server.register("add", lambda conn, p: p)
    metrics = server.metrics
    add = metrics.procedure("add")
    assert metrics.procedure("add") is add  # resolved once, then found
    assert add.received is metrics.received["add"]  # one object: two series fed by one call
    assert add.answers is metrics.sent[server.protocol_types.response]
    add.served(b"x", 0.001, 2)
    assert list(metrics.received["add"]) == [1, 1]
    assert list(metrics.sent["~wse:response"]) == [1, 2]
    # names the application did not register or listen to share one label
    stranger = metrics.procedure("not-registered")
    assert metrics.procedure("another") is stranger and metrics.procedures[None] is stranger
    assert stranger.received is metrics.received[UNHANDLED]
    stranger.failed("wse.server.rp.not-registered", 0.001)
    assert {(name, code) for name, code, _ in metrics.calls()} == {
        ("add", OK),
        (UNREGISTERED, "wse.server.rp.not-registered"),
    }
    assert metrics.received_cell("chat", ev.Message) is metrics.received[UNHANDLED]
    server.channel.on("chat", lambda conn, p: None)
    assert metrics.received_cell("chat", ev.Message) is metrics.received["chat"]
    # past MAX_TYPES procedures (or types), the rest are OTHER
    for i in range(MAX_TYPES + 5):
        server.register(f"p{i}", lambda conn, p: p)
        metrics.procedure(f"p{i}")
    assert len(metrics.procedures) == MAX_TYPES + 1
    assert metrics.procedure(f"p{MAX_TYPES + 4}") is metrics.procedures[OTHER]
    assert metrics.procedures[OTHER].received is metrics.received[OTHER]
    for i in range(MAX_TYPES + 5):
        metrics.count_sent(f"t{i}", 10)
    assert len(metrics.sent) == MAX_TYPES + 1 and list(metrics.sent[OTHER]) == [6, 60]
