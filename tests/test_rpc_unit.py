"""rpc.py's answering of a call, without a socket: a side's :class:`Answering` and the
:class:`Call` it makes per call, answered through a reply that encodes with the real wire
encoder (what a connection's reply does, short of writing) and decodes the frame back."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from wse_fast import WSE_ERROR, WseClient, WseError
from wse_fast.rpc import CANCELLED, FAILED, Answering, Call
from wse_fast.sansio.framing import unframe
from wse_fast.sansio.session import Wire

WIRE = Wire()
TYPES = WIRE.types
STAMP = "s1"


class Connection:
    """The connection side of a call: its reply encodes the answer as a frame (raising as the
    real one does for what cannot be encoded) and keeps it decoded; its track keeps tasks."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, Any, str | None]] = []
        self.tasks: list[asyncio.Future[Any]] = []

    def reply(self, type: str, payload: Any, stamp: str) -> None:
        binary, data = unframe(WIRE.encode(type, payload, stamp))
        self.answers.append(WIRE.decode(binary, bytes(data)))

    def track(self, task: asyncio.Future[Any]) -> None:
        self.tasks.append(task)

    def log_fields(self) -> dict[str, Any]:
        return {"cid": "alice", "conn_id": "c1"}


class Failures:
    """An :class:`Answering`'s ``failed``: what it heard."""

    def __init__(self) -> None:
        self.heard: list[tuple[Any, ...]] = []

    def __call__(self, *reported: Any) -> None:
        self.heard.append(reported)


def run(fn: Any, payload: Any = 1, debug: bool = False) -> tuple[Connection, Failures]:
    conn, failures = Connection(), Failures()
    Answering(TYPES, debug, failures).run(
        fn, (conn, payload), "proc", STAMP, conn.reply, conn.track
    )
    return conn, failures


def test_a_plain_result_is_answered_at_once() -> None:
    conn, failures = run(lambda conn, payload: payload + 1, 41)
    assert conn.answers == [(TYPES.response, 42, STAMP)]
    assert conn.tasks == [] and failures.heard == []


async def test_an_awaitable_result_is_answered_when_its_task_is_done() -> None:
    release = asyncio.Event()

    async def later(conn: Any, payload: Any) -> Any:
        await release.wait()
        return {"doubled": payload * 2}

    conn, failures = run(later, 21)
    [task] = conn.tasks  # handed to the connection's track, not answered yet
    assert conn.answers == []
    release.set()
    await task
    await asyncio.sleep(0)  # the done callback runs on the next turn
    assert conn.answers == [(TYPES.response, {"doubled": 42}, STAMP)]
    assert failures.heard == []


def test_an_exception_is_answered_as_an_error_then_failed_hears_of_it() -> None:
    raised = WseError("app.out-of-stock", {"item": 7})

    def refuse(conn: Any, payload: Any) -> Any:
        raise raised

    conn, failures = run(refuse, {"want": 7})
    error = {
        "code": "app.out-of-stock",
        "details": {"item": 7, "rpc": "proc", "payload": {"want": 7}},
    }
    assert conn.answers == [(TYPES.response_error, error, STAMP)]
    [(args, name, payload, stamp, answered, exc)] = failures.heard
    assert (args[0], name, payload, stamp) == (conn, "proc", {"want": 7}, STAMP)
    assert answered == error and exc is raised


def test_an_unexpected_exception_says_only_that_the_call_failed_unless_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(conn: Any, payload: Any) -> Any:
        raise KeyError("secret_table")

    with caplog.at_level(logging.ERROR, "wse_fast"):
        conn, _ = run(broken)
    [(type, error, _)] = conn.answers
    assert type == TYPES.response_error and error["message"] == FAILED
    assert "secret_table" not in repr(error)
    [record] = caplog.records  # the details stay in the log, under the error_id answered
    assert error["details"]["error_id"] in record.getMessage()
    assert (record.cid, record.conn_id) == ("alice", "c1")  # type: ignore[attr-defined]
    conn, _ = run(broken, debug=True)
    [(_, error, _)] = conn.answers
    assert error["details"]["origin"]["name"] == "KeyError"
    assert "secret_table" in error["details"]["origin"]["stack"]


async def test_a_result_that_cannot_be_encoded_is_answered_as_an_error() -> None:
    async def opaque(conn: Any, payload: Any) -> Any:
        return object()

    conn, failures = run(lambda conn, payload: object())
    [(type, error, stamp)] = conn.answers
    assert (type, error["code"], stamp) == (
        TYPES.response_error,
        WSE_ERROR.RP_EXECUTION_FAILED,
        STAMP,
    )
    assert len(failures.heard) == 1  # the procedure failed to give an answer
    conn, failures = run(opaque)  # the same from a task
    await conn.tasks[0]
    await asyncio.sleep(0)
    [(type, error, _)] = conn.answers
    assert (type, error["code"]) == (TYPES.response_error, WSE_ERROR.RP_EXECUTION_FAILED)


def test_an_error_whose_details_cannot_be_encoded_is_answered_with_its_code_alone() -> None:
    def refuse(conn: Any, payload: Any) -> Any:
        raise WseError("app.odd", {"what": object()})

    conn, failures = run(refuse)
    assert conn.answers == [
        (
            TYPES.response_error,
            {"code": "app.odd", "message": "the error could not be encoded"},
            STAMP,
        )
    ]
    assert failures.heard[0][4]["code"] == "app.odd"  # failed hears of the error as made


async def test_a_cancelled_task_is_answered_cancelled_and_failed_hears_nothing() -> None:
    async def forever(conn: Any, payload: Any) -> Any:
        await asyncio.Event().wait()

    conn, failures = run(forever)
    [task] = conn.tasks
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert conn.answers == [(TYPES.response_error, CANCELLED, STAMP)]
    assert failures.heard == []


async def test_a_call_answers_from_what_it_kept_when_its_task_ends() -> None:
    conn = Connection()
    answering = Answering(TYPES, False)  # no failed: nobody hears, the caller still does
    call = Call(answering, (conn, {"x": 1}), "proc", STAMP, conn.reply)
    assert (call.name, call.payload, call.stamp) == ("proc", {"x": 1}, STAMP)
    loop = asyncio.get_running_loop()
    ended = [loop.create_future() for _ in range(4)]
    ended[0].set_result([1, 2])
    ended[1].set_exception(WseError("app.late"))
    ended[2].set_result({1, 2})  # a set: not JSON
    ended[3].cancel()
    for future in ended:
        call.task_done(future)
    ok, late, unencodable, cancelled = conn.answers
    assert ok == (TYPES.response, [1, 2], STAMP)
    assert late == (
        TYPES.response_error,
        {"code": "app.late", "details": {"rpc": "proc", "payload": {"x": 1}}},
        STAMP,
    )
    assert unencodable[:1] == (TYPES.response_error,)
    assert unencodable[1]["code"] == WSE_ERROR.RP_EXECUTION_FAILED
    assert cancelled == (TYPES.response_error, CANCELLED, STAMP)


async def test_a_sides_debug_is_its_answerings() -> None:
    client = WseClient("ws://127.0.0.1:9")
    assert client.debug is False and client.answering.debug is False
    client.debug = True  # set after it was made: the calls answered from now on describe
    assert client.answering.debug is True and client.debug is True
