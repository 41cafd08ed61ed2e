"""The close handshake on its own (``wse_fast.sansio.closing``): what happened in, the step
out, no socket or loop. Each test is one transition, and the step and state it must give;
the behaviour over real sockets is test_rfc6455.py's, test_transport.py's and
test_mounts.py's."""

from __future__ import annotations

from wse_fast.constants import (
    CLOSE_ABNORMAL,
    CLOSE_GOING_AWAY,
    CLOSE_INVALID_TEXT,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    SLOW_CONSUMER,
)
from wse_fast.sansio.closing import NOTHING, CloseHandshake, CloseState, CloseStep

TIMEOUT = 2.5


def server() -> CloseHandshake:
    return CloseHandshake(TIMEOUT)


def client() -> CloseHandshake:
    return CloseHandshake(TIMEOUT, client_side=True)


def test_a_new_handshake_is_open_takes_data_and_reports_an_abnormal_closure() -> None:
    closing = server()
    assert closing.state is CloseState.OPEN
    assert closing.takes_data
    assert closing.outcome == (CLOSE_ABNORMAL, "")


def test_close_sends_one_close_stops_data_and_arms_the_deadline() -> None:
    closing = server()
    step = closing.close(CLOSE_NORMAL, "bye")
    assert step == CloseStep(stop_data=True, send_close=(CLOSE_NORMAL, "bye"), deadline=TIMEOUT)
    assert closing.state is CloseState.CLOSE_SENT
    assert closing.outcome == (CLOSE_NORMAL, "bye")
    # data the peer sent before it saw our Close is still delivered (RFC 6455 §7.1.2)
    assert closing.takes_data


def test_close_again_sends_nothing_and_arms_no_second_deadline() -> None:
    closing = server()
    closing.close(CLOSE_NORMAL, "first")
    assert closing.close(CLOSE_GOING_AWAY, "second") == NOTHING
    assert closing.outcome == (CLOSE_NORMAL, "first")


def test_close_without_waiting_hangs_up_also_on_a_connection_already_closing() -> None:
    closing = server()
    assert closing.close(CLOSE_NORMAL, "", wait=False) == CloseStep(
        stop_data=True, send_close=(CLOSE_NORMAL, ""), hang_up=True, deadline=TIMEOUT
    )
    assert closing.hangs_up
    again = server()
    again.close(CLOSE_NORMAL)
    assert not again.hangs_up
    assert again.close(CLOSE_NORMAL, wait=False) == CloseStep(hang_up=True)
    assert again.hangs_up


def test_the_close_reason_is_cut_to_123_bytes_on_a_character_boundary() -> None:
    closing = server()
    step = closing.close(CLOSE_NORMAL, "é" * 100)  # 200 bytes of UTF-8
    assert step.send_close == (CLOSE_NORMAL, "é" * 61)  # 122 bytes: the 123rd splits one
    assert closing.outcome == (CLOSE_NORMAL, "é" * 61)  # reported as it was sent
    assert server().close(CLOSE_NORMAL, "x" * 200).send_close == (CLOSE_NORMAL, "x" * 123)


def test_fail_takes_no_more_data_and_closes_without_hanging_up() -> None:
    closing = server()
    step = closing.fail(CLOSE_INVALID_TEXT, "invalid UTF-8")
    assert step == CloseStep(
        stop_data=True, send_close=(CLOSE_INVALID_TEXT, "invalid UTF-8"), deadline=TIMEOUT
    )
    assert closing.failed
    assert not closing.takes_data
    assert closing.state is CloseState.CLOSE_SENT


def test_fail_after_a_close_sends_nothing_more_but_takes_no_more_data() -> None:
    closing = server()
    closing.close(CLOSE_NORMAL)
    assert closing.fail(CLOSE_PROTOCOL_ERROR, "bad frame") == NOTHING
    assert not closing.takes_data
    assert closing.outcome == (CLOSE_NORMAL, "")


def test_a_broken_close_frame_is_answered_and_tcp_closed_at_once() -> None:
    closing = server()
    step = closing.fail_in_close(CLOSE_PROTOCOL_ERROR, "close code 1005 may not be sent")
    assert step == CloseStep(
        stop_data=True,
        send_close=(CLOSE_PROTOCOL_ERROR, "close code 1005 may not be sent"),
        hang_up=True,
        deadline=TIMEOUT,
    )
    assert closing.failed


def test_the_peers_close_is_echoed_with_its_code_and_the_server_hangs_up() -> None:
    closing = server()
    step = closing.receive_close(CLOSE_GOING_AWAY, "leaving")
    assert step == CloseStep(
        stop_data=True, send_close=(CLOSE_GOING_AWAY, "leaving"), hang_up=True, deadline=TIMEOUT
    )
    assert closing.state is CloseState.CLOSED
    assert not closing.takes_data
    assert closing.outcome == (CLOSE_GOING_AWAY, "leaving")


def test_a_client_echoes_the_peers_close_and_waits_for_the_server_to_hang_up() -> None:
    closing = client()
    step = closing.receive_close(CLOSE_NORMAL, "")
    assert step == CloseStep(stop_data=True, send_close=(CLOSE_NORMAL, ""), deadline=TIMEOUT)
    assert closing.state is CloseState.CLOSED


def test_the_peers_answer_to_our_close_is_not_echoed_and_ends_the_connection() -> None:
    closing = server()
    closing.close(CLOSE_NORMAL, "bye")
    step = closing.receive_close(CLOSE_NORMAL, "ok")
    assert step == CloseStep(hang_up=True)  # no second Close, no second deadline
    assert closing.state is CloseState.CLOSED
    assert closing.outcome == (CLOSE_NORMAL, "ok")  # the peer's Close names the closure


def test_a_close_after_the_peers_has_a_server_hang_up_even_when_waiting() -> None:
    closing = CloseHandshake(TIMEOUT, answers_close=False)  # the host answers the peer
    assert closing.receive_close(CLOSE_NORMAL, "").send_close is None
    assert closing.state is CloseState.CLOSE_RECEIVED
    step = closing.close(CLOSE_GOING_AWAY, "late")
    assert step == CloseStep(stop_data=True, send_close=(CLOSE_GOING_AWAY, "late"), hang_up=True)
    assert closing.state is CloseState.CLOSED
    on_client = CloseHandshake(TIMEOUT, client_side=True, answers_close=False)
    on_client.receive_close(CLOSE_NORMAL, "")
    assert not on_client.close(CLOSE_NORMAL).hang_up  # the client waits for the server


def test_overflow_drops_what_waits_reports_it_and_fails_with_1008_slow_consumer() -> None:
    closing = server()
    step = closing.overflow()
    assert step == CloseStep(
        stop_data=True,
        drop_pending=True,
        report_overflow=True,
        send_close=(CLOSE_POLICY_VIOLATION, SLOW_CONSUMER),
        deadline=TIMEOUT,
    )
    assert closing.failed
    assert closing.overflow() == NOTHING  # reported once


def test_no_overflow_after_a_close() -> None:
    closing = server()
    closing.close(CLOSE_NORMAL)
    assert closing.overflow() == NOTHING
    assert not closing.failed


def test_the_transports_own_close_stops_data_drops_what_waits_and_arms_the_deadline() -> None:
    closing = server()
    step = closing.transport_sent_close()
    assert step == CloseStep(stop_data=True, drop_pending=True, deadline=TIMEOUT)
    assert closing.state is CloseState.CLOSE_SENT
    # nothing of ours after the transport's Close, also not the echo of the peer's
    assert closing.close(CLOSE_NORMAL, "") == NOTHING
    assert closing.receive_close(CLOSE_NORMAL, "") == NOTHING
    assert closing.outcome == (CLOSE_NORMAL, "")


def test_the_transports_close_after_ours_only_drops_what_waits() -> None:
    closing = server()
    closing.close(CLOSE_NORMAL)
    assert closing.transport_sent_close() == CloseStep(stop_data=True, drop_pending=True)
    assert closing.outcome == (CLOSE_NORMAL, "")


def test_a_gone_transport_sends_nothing_but_a_failure_and_the_peers_close_are_recorded() -> None:
    closing = server()
    closing.transport_gone()
    assert closing.close(CLOSE_NORMAL, "") == NOTHING
    assert closing.outcome == (CLOSE_ABNORMAL, "")  # no Close went out
    assert closing.fail(CLOSE_PROTOCOL_ERROR, "") == NOTHING
    assert closing.failed
    assert closing.overflow() == NOTHING
    assert closing.receive_close(CLOSE_GOING_AWAY, "bye") == NOTHING
    assert closing.outcome == (CLOSE_GOING_AWAY, "bye")


def test_the_deadline_is_armed_once_whichever_way_the_handshake_began() -> None:
    for first in (
        lambda c: c.close(CLOSE_NORMAL),
        lambda c: c.fail(CLOSE_PROTOCOL_ERROR, ""),
        lambda c: c.receive_close(CLOSE_NORMAL, ""),
        lambda c: c.overflow(),
        lambda c: c.transport_sent_close(),
    ):
        closing = server()
        assert first(closing).deadline == TIMEOUT
        assert closing.deadline_armed
        for then in (
            closing.close(CLOSE_NORMAL, wait=False),
            closing.fail(CLOSE_PROTOCOL_ERROR, ""),
            closing.receive_close(CLOSE_NORMAL, ""),
            closing.overflow(),
            closing.transport_sent_close(),
        ):
            assert then.deadline is None
